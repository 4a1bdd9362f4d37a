"""The dataset store: round trip of real env data, window sampling, verify, export, bad input."""

import json
import pickle

import numpy as np
import pytest
import zarr

from lompo_bench.errors import UserError
from lompo_bench.store import Dataset, DatasetWriter, WindowDataset, verify
from lompo_bench.store.exporters import export

ATTRS = {"env": {"name": "synthetic", "image_size": 8}, "split": "random", "collector": {"algorithm": "test"}}


def synthetic_episode(index: int, steps: int, rng) -> dict:
    """Rows tagged with their episode and row number, so any mix-up shows."""
    n = steps + 1
    image = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    image[:, 0, 0, 0] = index
    image[:, 0, 0, 1] = np.arange(n)
    return {
        "image": image, "state": rng.normal(size=(n, 4)).astype(np.float32),
        "physics": rng.normal(size=(n, 6)), "action": np.r_[np.zeros((1, 2)), rng.uniform(-1, 1, (steps, 2))],
        "reward": np.r_[0.0, rng.normal(size=steps)], "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1,
        "is_terminal": (np.arange(n) == n - 1) & (index % 3 == 0),
    }


def write_synthetic(path, lengths, *, chunk_len=4, finalize=True, codec="lz4hc-5"):
    rng = np.random.default_rng(0)
    episodes = [synthetic_episode(i, t, rng) for i, t in enumerate(lengths)]
    writer = DatasetWriter.open(path, ATTRS, chunk_len=chunk_len, codec=codec)
    for ep in episodes:
        writer.add_episode(ep)
    if finalize:
        writer.finalize()
    return episodes


@pytest.fixture(scope="module")
def walker_store(tmp_path_factory):
    """A real walker random-split store (smoke profile: 40-step episodes, 32 px)."""
    from lompo_bench.collectors.random_policy import collect_random

    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOMPO_BENCH_HOME", str(home))  # the random-return cache goes here
        yield collect_random("walker", profile="smoke", seed=3, episodes=3, out=home / "walker.zarr",
                             image_size=32, progress=False)


def smoke_horizon():
    from lompo_bench.collectors.config import budget
    from lompo_bench.collectors.sac import horizon_of

    return horizon_of("walker", budget("walker", "smoke"))


def test_round_trip_of_real_env_data(walker_store):
    from lompo_bench.collectors.random_policy import make_env, random_episode

    h = smoke_horizon()
    ds = Dataset.open(walker_store)
    assert (ds.env, ds.split, ds.num_episodes, ds.num_transitions) == ("walker", "random", 3, 3 * h)
    assert ds.shape("image") == (3 * (h + 1), 32, 32, 3) and ds.reference_returns[0] is not None
    assert ds.attrs["env"]["horizon"] == h and verify(walker_store) == []
    sim = make_env("walker", 32, h)
    for i in (0, 2):
        expected = random_episode(sim, 3, i)
        got = ds.episode(i)
        assert set(got) == set(expected)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key].astype(got[key].dtype), err_msg=key)
    sim.close()


def test_synthetic_round_trip_codecs_and_chunks(tmp_path):
    for codec in ("none", "zstd-3-bitshuffle"):
        path = tmp_path / f"{codec}.zarr"
        episodes = write_synthetic(path, [5, 9, 1, 13], chunk_len=3, codec=codec)
        ds = Dataset.open(path, cache_bytes=1000, decode_threads=1)
        for i, ep in enumerate(episodes):
            for key, value in ds.episode(i).items():
                np.testing.assert_array_equal(value, ep[key].astype(value.dtype))
        assert ds.cache.nbytes <= 1000
        assert ds.read("image", 2, 12).shape == (10, 8, 8, 3)


def test_windows_never_cross_episodes_and_match_the_data(tmp_path):
    lengths = [3, 20, 7, 40, 2, 11]
    episodes = write_synthetic(tmp_path / "s.zarr", lengths, chunk_len=4)
    flat = {k: np.concatenate([ep[k] for ep in episodes]) for k in episodes[0]}
    # room for 3 image chunks; 3 threads decode the chunks a batch misses
    ds = Dataset.open(tmp_path / "s.zarr", cache_bytes=3 * 4 * 8 * 8 * 3, decode_threads=3)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(30):
        starts = ds.sample_starts(16, 8, np.random.default_rng(rng.integers(1 << 30)))
        batch = ds._gather("image", starts, 8)
        for b, a in enumerate(starts):
            np.testing.assert_array_equal(batch[b], flat["image"][a:a + 8])
        ep_ids = batch[:, :, 0, 0, 0]
        assert (ep_ids == ep_ids[:, :1]).all(), "a window crossed an episode boundary"
        assert (np.diff(batch[:, :, 0, 0, 1].astype(int), axis=1) == 1).all()
        seen.update(ep_ids[:, 0].tolist())
        assert ds.cache.nbytes <= ds.cache.max_bytes
    assert seen == {1, 2, 3, 5}  # exactly the episodes with >= 8 rows (steps + 1)
    w = ds.sample_windows(4, 21, rng, keys=["reward", "is_first"])
    assert w["reward"].shape == (4, 21) and not w["is_first"][:, 1:].any()
    shipped = pickle.loads(pickle.dumps(ds))  # e.g. to a DataLoader worker: metadata only
    assert shipped.cache.nbytes == 0 and len(pickle.dumps(ds)) < 10_000
    a, b = (d.sample_windows(8, 8, np.random.default_rng(9)) for d in (ds, shipped))
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_sample_transitions_is_rows_t_minus_1_to_t(tmp_path):
    write_synthetic(tmp_path / "s.zarr", [6, 6, 6])
    ds = Dataset.open(tmp_path / "s.zarr")
    tr = ds.sample_transitions(200, np.random.default_rng(0))
    obs, nxt = tr["obs"]["image"], tr["next_obs"]["image"]
    assert obs.shape == (200, 8, 8, 3) and tr["action"].shape == (200, 2)
    assert (obs[:, 0, 0, 0] == nxt[:, 0, 0, 0]).all() and (nxt[:, 0, 0, 1] - obs[:, 0, 0, 1] == 1).all()
    last = nxt[:, 0, 0, 1] == 6
    assert ((tr["terminal"] | tr["timeout"]) == last).all()
    assert (tr["terminal"] == (last & (nxt[:, 0, 0, 0] == 0))).all()  # episode 0 ends in a terminal


def test_window_dataset_workers_are_reproducible(tmp_path):
    import torch
    from torch.utils.data import DataLoader

    write_synthetic(tmp_path / "s.zarr", [30, 30, 30])

    def batches(seed):
        ds = WindowDataset(tmp_path / "s.zarr", length=5, batch_size=3, seed=seed, keys=["image"], num_batches=6)
        return [b["image"] for b in DataLoader(ds, batch_size=None, num_workers=2)]

    first, again, other = batches(7), batches(7), batches(8)
    assert len(first) == 6 and first[0].shape == (3, 5, 8, 8, 3) and first[0].dtype == torch.uint8
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert not torch.equal(first[0], first[1])  # the two workers draw different streams


def test_killed_writer_resumes_from_last_whole_episode(tmp_path):
    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(5)
    episodes = [synthetic_episode(i, 6 + i, rng) for i in range(4)]
    writer = DatasetWriter.open(path, ATTRS, chunk_len=4)
    for ep in episodes[:2]:
        writer.add_episode(ep)
    # What a SIGKILL in the middle of the third episode leaves: rows written, no commit.
    group = zarr.open_group(str(path), mode="r+")
    for key in ("image", "reward"):
        arr = group[f"data/{key}"]
        arr.resize((arr.shape[0] + 5,) + arr.shape[1:])
        arr[-5:] = 99
    with pytest.raises(UserError, match="incomplete"):
        Dataset.open(path)
    partial = Dataset.open(path, allow_incomplete=True)
    assert partial.num_episodes == 2
    writer = DatasetWriter.open(path, ATTRS)
    assert writer.num_episodes == 2
    for ep in episodes[2:]:
        writer.add_episode(ep)
    writer.finalize()
    assert verify(path) == []
    ds = Dataset.open(path)
    np.testing.assert_array_equal(ds.episode(2)["image"], episodes[2]["image"])
    clean = tmp_path / "clean.zarr"
    writer = DatasetWriter.open(clean, ATTRS, chunk_len=4)
    for ep in episodes:
        writer.add_episode(ep)
    assert writer.finalize() == ds.checksum


def test_flipped_byte_fails_verify_naming_the_array(tmp_path):
    from click.testing import CliRunner

    from lompo_bench.datasets_cli import datasets

    path = tmp_path / "s.zarr"
    write_synthetic(path, [20, 20], chunk_len=8)
    chunk = path / "data" / "image" / "c" / "2" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    problems = verify(path)
    assert problems and all(p.startswith("data/image:") for p in problems), problems
    result = CliRunner().invoke(datasets, ["verify", str(path)])
    assert result.exit_code == 1 and "data/image" in result.output


def test_export_has_d4rl_keys_and_shapes(walker_store, tmp_path):
    import h5py

    ds = Dataset.open(walker_store)
    n = ds.num_transitions
    want = {"observations": (n, 32, 32, 3), "next_observations": (n, 32, 32, 3), "actions": (n, 6),
            "rewards": (n,), "terminals": (n,), "timeouts": (n,), "infos/state": (n, 24)}
    npz = np.load(export(walker_store, "npz", tmp_path / "w.npz"))
    with h5py.File(export(walker_store, "hdf5", tmp_path / "w.hdf5")) as f:
        for data in (npz, f):
            for key, shape in want.items():
                assert data[key].shape == shape, key
            assert data["terminals"].dtype == bool and data["timeouts"][:].sum() == ds.num_episodes
            ep1, lo, hi = ds.episode(1), ds.episode_starts[1] - 1, ds.episode_ends[1] - 2  # transitions of episode 1
            np.testing.assert_array_equal(data["observations"][lo:hi], ep1["image"][:-1])
            np.testing.assert_array_equal(data["next_observations"][lo:hi], ep1["image"][1:])
            np.testing.assert_array_equal(data["actions"][lo:hi], ep1["action"][1:])
            np.testing.assert_array_equal(data["rewards"][lo:hi], ep1["reward"][1:])
    with pytest.raises(UserError, match="exists"):
        export(walker_store, "npz", tmp_path / "w.npz")


def one_line_error(fn, match):
    with pytest.raises(UserError, match=match) as info:
        fn()
    assert "\n" not in info.value.format_message()


def test_bad_input_gives_one_line_errors(tmp_path):
    one_line_error(lambda: Dataset.open(tmp_path / "missing.zarr"), "does not exist")
    (tmp_path / "plain").mkdir()
    one_line_error(lambda: Dataset.open(tmp_path / "plain"), "not a Zarr store")
    path = tmp_path / "s.zarr"
    write_synthetic(path, [5, 5], finalize=False)
    one_line_error(lambda: Dataset.open(path), "incomplete")
    DatasetWriter.open(path, ATTRS).finalize()
    one_line_error(lambda: Dataset.open(path).sample_windows(2, 7, np.random.default_rng(0)),
                   "longer than every episode")
    one_line_error(lambda: DatasetWriter.open(path, {**ATTRS, "env": {"name": "walker"}}), "different env")
    one_line_error(lambda: DatasetWriter.open(path, ATTRS, codec="gzip-9"), "unknown codec")
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (path / "zarr.json").write_text(json.dumps(meta))
    one_line_error(lambda: Dataset.open(path), "format version 99")
    one_line_error(lambda: export(path, "csv"), "unknown export format")
