"""Exchange formats, read and written by the real libraries: Minari, V-D4RL's npz and hdf5
layouts (written here exactly as V-D4RL's loaders expect them), d3rlpy's MDPDataset arrays,
and the one-line errors of unusable export targets."""

import datetime
import io
import os
import signal
import subprocess
import sys
import time
import uuid

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from lompo_bench.interop_cli import export as export_cmd
from lompo_bench.interop_cli import import_ as import_cmd
from lompo_bench.store import Dataset, DatasetWriter, verify
from lompo_bench.store.exporters import d3rlpy_episode
from cli_checks import assert_one_line_error

ROW_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")


@pytest.fixture
def walker_store(smoke_dataset):
    """The session's real walker smoke store (random split, 32 px frames); only read here."""
    return smoke_dataset("walker")


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def invoke(command, args):
    result = CliRunner().invoke(command, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result




def synthetic_store(path, episodes=3, steps=6, size=8, terminal_every=0):
    """A small store of an env lompo-bench does not have (no env spec can be made for it)."""
    rng = np.random.default_rng(1)
    writer = DatasetWriter.open(path, {"env": {"name": "synthetic", "image_size": size, "horizon": steps},
                                       "split": "test", "collector": {"algorithm": "test"}})
    for e in range(episodes):
        n = steps + 1
        writer.add_episode({
            "image": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
            "action": np.r_[np.zeros((1, 2)), rng.uniform(-1, 1, (steps, 2))], "reward": np.r_[0.0, rng.normal(size=steps)],
            "is_first": np.arange(n) == 0, "is_last": np.arange(n) == n - 1,
            "is_terminal": (np.arange(n) == n - 1) & bool(terminal_every and e % terminal_every == 0)})
    writer.finalize()
    return path


# -- Minari -------------------------------------------------------------------------------
def test_minari_round_trip_is_exact_and_recovers_the_env(walker_store, minari_root):
    import minari

    result = invoke(export_cmd, [walker_store, "--format", "minari", "--out", "lompo-bench/walker-test-v0"])
    assert result.exit_code == 0, result.output
    assert "lossless" in result.output
    data = minari.load_dataset("lompo-bench/walker-test-v0")
    ds = Dataset.open(walker_store)
    assert data.total_episodes == ds.num_episodes and data.total_steps == ds.num_transitions
    assert data.storage.metadata["jpeg_encoding"] is False
    for i, episode in enumerate(data.iterate_episodes()):
        ep = ds.episode(i)
        for key in ("image", "state"):
            np.testing.assert_array_equal(episode.observations[key], ep[key], err_msg=key)  # bit-exact
        np.testing.assert_array_equal(episode.actions, ep["action"][1:])
        np.testing.assert_array_equal(episode.rewards, ep["reward"][1:])
        np.testing.assert_array_equal(episode.terminations, ep["is_terminal"][1:])
        np.testing.assert_array_equal(episode.truncations, ep["is_last"][1:] & ~ep["is_terminal"][1:])
    random_return, expert_return = ds.reference_returns
    assert data.storage.metadata.get("ref_min_score") == (random_return if expert_return is not None else None)
    env = data.recover_environment()
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3) and env.spec.max_episode_steps == ds.attrs["env"]["horizon"]
    env.close()

    lossy = invoke(export_cmd, [walker_store, "--format", "minari", "--out", "lompo-bench/walker-jpeg-v0", "--jpeg"])
    assert lossy.exit_code == 0 and "lossy" in lossy.output
    assert minari.load_dataset("lompo-bench/walker-jpeg-v0").storage.metadata["jpeg_encoding"] is True


def test_minari_failures_leave_nothing_and_overwrite_replaces(walker_store, minari_root, tmp_path):
    import minari

    # A real missing backend: h5py cannot be imported in this process; checked before anything is written.
    blocked = ("import sys; sys.modules['h5py'] = None; from lompo_bench.cli import main; "
               f"sys.argv = ['lompo-bench', 'datasets', 'export', {str(walker_store)!r}, '--format', 'minari']; main()")
    proc = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True,
                          env={**os.environ, "MINARI_DATASETS_PATH": str(minari_root)})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "pip install 'lompo-bench[minari]'" in lines[0], proc.stderr
    assert not minari_root.exists() or not any(minari_root.rglob("*.hdf5"))
    assert not list(minari_root.parent.glob(".minari.lompo-bench-partial-*"))

    # SIGKILL while minari writes: the dataset id never appears; the next export removes the leftover.
    dataset_id = "lompo-bench/walker-random-v0"
    command = [sys.executable, "-c", "from lompo_bench.cli import main; main()",
               "datasets", "export", str(walker_store), "--format", "minari"]
    killed = subprocess.Popen(command, env={**os.environ, "MINARI_DATASETS_PATH": str(minari_root)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while killed.poll() is None and not list(minari_root.parent.glob(".minari.lompo-bench-partial-*")):
        time.sleep(0.005)
    if killed.poll() is not None:
        pytest.skip("the export finished before it could be killed")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (minari_root / dataset_id).exists() and list(minari_root.parent.glob(".minari.lompo-bench-partial-*"))

    # The re-run works (and clears the leftover); a second export to the same id is refused without --overwrite.
    assert invoke(export_cmd, [walker_store, "--format", "minari"]).exit_code == 0
    assert not list(minari_root.parent.glob(".minari.lompo-bench-partial-*"))
    assert_one_line_error(invoke(export_cmd, [walker_store, "--format", "minari"]), "exists", "--overwrite")
    assert minari.load_dataset(dataset_id).total_episodes == Dataset.open(walker_store).num_episodes

    # --overwrite really replaces: another store (an env without an env spec) takes the id.
    other = synthetic_store(tmp_path / "synthetic.zarr", episodes=3)
    result = invoke(export_cmd, [other, "--format", "minari", "--out", dataset_id, "--overwrite"])
    assert result.exit_code == 0 and "recover_environment() is unavailable" in result.output
    replaced = minari.load_dataset(dataset_id)
    assert replaced.total_episodes == 3
    np.testing.assert_array_equal(next(replaced.iterate_episodes()).observations["image"],
                                  Dataset.open(other).episode(0)["image"])
    assert not list(minari_root.parent.glob(".minari.lompo-bench-partial-*"))


# -- V-D4RL -------------------------------------------------------------------------------
def assert_store_rows_equal(imported, source, keys=ROW_KEYS):
    a, b = Dataset.open(imported), Dataset.open(source)
    assert verify(imported) == []
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    for key in keys:
        np.testing.assert_array_equal(a.array(key), b.array(key).astype(a.reader(key).dtype), err_msg=key)


def test_vd4rl_npz_export_and_import_round_trip(walker_store, tmp_path):
    out = tmp_path / "vd4rl-npz"
    assert invoke(export_cmd, [walker_store, "--format", "vd4rl-npz", "--out", out, "--image-size", "32"]).exit_code == 0
    files = sorted(out.glob("*.npz"))
    ds = Dataset.open(walker_store)
    assert len(files) == ds.num_episodes
    for e, path in enumerate(files):  # Offline DV2 reads sorted names; its capacity count parses the last field
        rows = int(ds.episode_ends[e] - ds.episode_starts[e])
        assert int(str(path).split("-")[-1][:-4]) == rows
        with np.load(path) as z:
            assert set(z.files) == {"image", "action", "reward", "discount", "is_first", "is_last", "is_terminal"}
            assert z["image"].shape == (rows, 32, 32, 3) and z["image"].dtype == np.uint8
            assert not z["action"][0].any() and z["is_first"][0] and z["is_last"][-1] and (z["discount"] == 1).all()

    store = tmp_path / "back.zarr"
    result = invoke(import_cmd, [out, "--format", "vd4rl-npz", "--env", "walker", "--out", store,
                                 "--random-return", "1.5", "--expert-return", "900"])
    assert result.exit_code == 0, result.output
    assert_store_rows_equal(store, walker_store, ROW_KEYS + ("image",))
    back = Dataset.open(store)
    assert back.reference_returns == (1.5, 900.0) and back.attrs["env"]["horizon"] == ds.attrs["env"]["horizon"]
    assert back.attrs["env"]["name"] == "walker" and back.attrs["env"]["image_size"] == 32
    assert_one_line_error(invoke(import_cmd, [out, "--format", "vd4rl-npz", "--env", "walker", "--out", store]),
                          "exists", "--overwrite")


def test_vd4rl_hdf5_export_rerenders_to_84px_and_imports_back(walker_store, tmp_path):
    out = tmp_path / "vd4rl-hdf5"
    result = invoke(export_cmd, [walker_store, "--format", "vd4rl-hdf5", "--out", out])
    assert result.exit_code == 0 and "32 px -> 84 px" in result.output, result.output
    ds = Dataset.open(walker_store)
    (shard,) = sorted(out.glob("*.hdf5"))
    with h5py.File(shard) as f:
        assert set(f) == {"observation", "action", "reward", "discount", "step_type"}
        assert f["observation"].shape == (ds.num_rows, 3, 84, 84) and f["observation"].dtype == np.uint8
        step = f["step_type"][:]
        assert (step[ds.episode_starts] == 0).all() and (step[ds.episode_ends - 1] == 2).all()
        assert (step == 1).sum() == ds.num_rows - 2 * ds.num_episodes
        frames = f["observation"][:].transpose(0, 2, 3, 1)
    assert not list(tmp_path.glob(".rerender-*"))  # the 84 px working copy is gone

    store = tmp_path / "back.zarr"
    assert invoke(import_cmd, [out, "--format", "vd4rl-hdf5", "--env", "walker", "--out", store]).exit_code == 0
    assert_store_rows_equal(store, walker_store)
    back = Dataset.open(store)
    np.testing.assert_array_equal(back.array("image"), frames)
    assert back.reference_returns == (None, None) and back.attrs["env"]["image_size"] == 84


def vd4rl_episode(rng, rows, size, action_dim=6):
    """One episode as V-D4RL's own collection writes it (row 0: reset, zero action, zero reward)."""
    return {"image": rng.integers(0, 256, (rows, size, size, 3), dtype=np.uint8),
            "action": np.r_[np.zeros((1, action_dim)), rng.uniform(-1, 1, (rows - 1, action_dim))].astype(np.float32),
            "reward": np.r_[0.0, rng.uniform(0, 1, rows - 1)].astype(np.float32),
            "discount": np.ones(rows, np.float32)}


def test_import_reads_files_laid_out_as_vd4rl_loaders_expect(tmp_path):
    rng = np.random.default_rng(7)
    rows = 11
    episodes = [vd4rl_episode(rng, rows, 64) for _ in range(3)]

    # Offline DV2: <timestamp>-<uuid hex>-<length>.npz, savez_compressed, flags as bool arrays.
    npz_dir = tmp_path / "walker_walk" / "medium_replay" / "64px"
    npz_dir.mkdir(parents=True)
    stamp = datetime.datetime(2022, 6, 1).strftime("%Y%m%dT%H%M%S")
    for i, ep in enumerate(episodes):
        flags = {"is_first": np.arange(rows) == 0, "is_last": np.arange(rows) == rows - 1,
                 "is_terminal": np.zeros(rows, bool)}
        with io.BytesIO() as buf:
            np.savez_compressed(buf, **ep, **flags)
            (npz_dir / f"{stamp}{i}-{uuid.uuid4().hex}-{rows}.npz").write_bytes(buf.getvalue())
    store = tmp_path / "dv2.zarr"
    assert invoke(import_cmd, [npz_dir, "--format", "vd4rl-npz", "--env", "walker", "--out", store]).exit_code == 0
    ds = Dataset.open(store)
    assert ds.num_episodes == 3 and ds.reference_returns == (None, None)
    for i, ep in enumerate(episodes):
        got = ds.episode(i)
        for key in ("image", "action", "reward"):
            np.testing.assert_array_equal(got[key], ep[key], err_msg=key)

    # DrQ+BC: 84 px channel-first rows, step_type float64 as V-D4RL's npz_to_hdf5 writes it, and the
    # stream cut into two shards in the middle of an episode (as split_hdf5_shards leaves it).
    big = [vd4rl_episode(rng, rows, 84) for _ in range(2)]
    step_type = np.ones(rows)
    step_type[0], step_type[-1] = 0, 2
    stream = {"observation": np.concatenate([e["image"].transpose(0, 3, 1, 2) for e in big]),
              "action": np.concatenate([e["action"] for e in big]), "reward": np.concatenate([e["reward"] for e in big]),
              "discount": np.concatenate([e["discount"] for e in big]), "step_type": np.concatenate([step_type] * 2)}
    shards = tmp_path / "84px"
    shards.mkdir()
    for index, cut in enumerate(np.array_split(np.arange(2 * rows), 2)):
        with h5py.File(shards / f"{index}.hdf5", "w") as f:
            for key, value in stream.items():
                f.create_dataset(key, data=value[cut], compression="gzip")
    store = tmp_path / "drqbc.zarr"
    assert invoke(import_cmd, [shards, "--format", "vd4rl-hdf5", "--env", "walker", "--out", store,
                               "--random-return", "0", "--expert-return", "10"]).exit_code == 0
    ds = Dataset.open(store)
    assert ds.num_episodes == 2 and ds.attrs["env"]["horizon"] == rows - 1
    for i, ep in enumerate(big):
        got = ds.episode(i)
        for key in ("image", "action", "reward"):
            np.testing.assert_array_equal(got[key], ep[key], err_msg=key)

    # The authors' LOMPO layout: image/action/reward/discount (+ state) only; a discount of 0 ends in a terminal.
    generic = tmp_path / "lompo"
    generic.mkdir()
    ep = vd4rl_episode(rng, rows, 64)
    ep["discount"][-1] = 0.0
    np.savez_compressed(generic / f"{stamp}-{uuid.uuid4().hex}-{rows}.npz", **ep, state=rng.normal(size=(rows, 24)),
                        image_128=np.zeros((rows, 1), np.uint8))
    store = tmp_path / "lompo.zarr"
    result = invoke(import_cmd, [generic, "--format", "npz-episodes", "--env", "walker", "--out", store])
    assert result.exit_code == 0 and "ignored keys" in result.output and "image_128" in result.output
    got = Dataset.open(store).episode(0)
    assert got["is_terminal"][-1] and "state" in got and got["state"].shape == (rows, 24)

    # Bad source data: one line, exit 2, and no store left behind.
    ep = vd4rl_episode(rng, rows, 64)
    ep["action"][0] = 0.5
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez_compressed(bad / "x-1-11.npz", **ep)
    result = invoke(import_cmd, [bad, "--format", "npz-episodes", "--env", "walker", "--out", tmp_path / "bad.zarr"])
    assert_one_line_error(result, "row 0 has a non-zero action")
    assert not (tmp_path / "bad.zarr").exists()
    assert_one_line_error(invoke(import_cmd, [bad, "--format", "npz-episodes", "--env", "walker", "--out",
                                              tmp_path / "b.zarr", "--random-return", "1"]), "--expert-return")
    assert_one_line_error(invoke(import_cmd, [shards, "--format", "vd4rl-npz", "--env", "walker", "--out",
                                              tmp_path / "c.zarr"]), "no *.npz files")


# -- d3rlpy -------------------------------------------------------------------------------
def test_d3rlpy_export_keeps_whole_episodes_channel_first(walker_store, tmp_path):
    out = tmp_path / "w.d3rlpy.npz"
    assert invoke(export_cmd, [walker_store, "--format", "d3rlpy", "--out", out]).exit_code == 0
    ds = Dataset.open(walker_store)
    with np.load(out) as z:
        assert set(z.files) == {"observations", "actions", "rewards", "terminals", "timeouts"}
        obs, actions, rewards, timeouts = z["observations"], z["actions"], z["rewards"], z["timeouts"]
        assert obs.shape == (ds.num_rows, 3, 32, 32) and obs.dtype == np.uint8
        assert timeouts.sum() == ds.num_episodes and not z["terminals"].any()
    ends = np.flatnonzero(timeouts) + 1  # d3rlpy's episode boundaries
    np.testing.assert_array_equal(ends, ds.episode_ends)
    for e in range(ds.num_episodes):
        ep, lo, hi = ds.episode(e), ds.episode_starts[e], ds.episode_ends[e]
        np.testing.assert_array_equal(obs[lo:hi], ep["image"].transpose(0, 3, 1, 2))  # o_0 ... o_T, all kept
        np.testing.assert_array_equal(actions[lo:hi - 1], ep["action"][1:])  # a_t taken at o_t
        np.testing.assert_array_equal(rewards[lo:hi - 1], ep["reward"][1:])
        assert not actions[hi - 1].any() and rewards[hi - 1] == 0

    # An episode ended by the task: T rows, the last one terminal (d3rlpy then zeroes the next observation).
    path = synthetic_store(tmp_path / "t.zarr", episodes=2, steps=4, terminal_every=1)
    rows = d3rlpy_episode(Dataset.open(path).episode(0))
    assert rows["observations"].shape == (4, 3, 8, 8) and rows["terminals"].tolist() == [0, 0, 0, 1]
    assert not rows["timeouts"].any()


# -- unusable export targets (#16) --------------------------------------------------------
def test_unusable_export_targets_are_one_line_errors(walker_store, tmp_path, monkeypatch):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert_one_line_error(invoke(export_cmd, [walker_store, "--format", "vd4rl-npz", "--out", a_file]),
                          "existing file")
    assert_one_line_error(invoke(export_cmd, [walker_store, "--format", "npz", "--out", a_file / "x.npz"]),
                          "is a file, not a folder")
    assert_one_line_error(invoke(export_cmd, [walker_store, "--format", "hdf5", "--out", a_file]), "exists")
    if os.geteuid() == 0:  # root writes through permission bits; /proc refuses new entries even to root
        unwritable = "/proc/lompo-bench-test/w.npz"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        unwritable = locked / "w.npz"
    result = invoke(export_cmd, [walker_store, "--format", "npz", "--out", unwritable])
    assert_one_line_error(result, "cannot write")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(a_file / "minari"))
    assert_one_line_error(invoke(export_cmd, [walker_store, "--format", "minari"]), "is a file, not a folder")
    assert a_file.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] + (
        [] if os.geteuid() == 0 else ["locked"])
