"""Damaged stores and a hostile environment: one-line errors, exit 2, nothing trained on bad data.

Each test damages a copy of a real smoke store on disk the way a bad disk or a careless edit
would (deleted, truncated and flipped chunk files, an edited attribute or stored shape, a
flipped byte in ``meta/episode_ends``), then runs the real CLI: ``datasets info`` and
``run`` refuse with one line naming the array, the chunk and ``datasets verify``, and the run
folder holds no trained state; ``datasets verify`` exits 1 naming the problem. Then the old
format (a real format 1 store and its migration), ``LOMPO_BENCH_HOME`` and ``--out`` that are
files, and collecting onto a full (small tmpfs) filesystem.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lompo_bench.cli import cli as cli_main
from lompo_bench.errors import UserError
from lompo_bench.store import Dataset, read_attrs, verify

FIXTURES = Path(__file__).parent / "fixtures"


def cli(*args, env=None):
    return CliRunner().invoke(cli_main, [str(a) for a in args], env=env)


def error_line(result) -> str:
    """The command failed as a user error: exit 2, no traceback, and its last line on stderr is
    the one `error: ...` line (a run announces itself first), which is returned."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.output, lines
    return errors[0]


def assert_refused(store: Path, tmp_path: Path, *phrases):
    """`datasets info` and a smoke `run` refuse the store naming `phrases`, and nothing is trained."""
    for args in (["datasets", "info", store],
                 ["run", "bc", "--env", "walker", "--data", store, "--profile", "smoke", "--no-progress", "--out", tmp_path / "run"]):
        line = error_line(cli(*args))
        for phrase in (*phrases, f"lompo-bench datasets verify {store}"):
            assert phrase in line, (phrase, line)
    trained = [p.name for p in (tmp_path / "run").glob("*")] if (tmp_path / "run").exists() else []
    assert not {"checkpoint.pt", "result.json", "metrics.csv"} & set(trained), trained


def assert_verify_names(store: Path, *phrases):
    result = cli("datasets", "verify", store)
    assert result.exit_code == 1, result.output
    for phrase in phrases:
        assert phrase in result.stderr, (phrase, result.stderr)


@pytest.fixture
def store(smoke_dataset, tmp_path) -> Path:
    """A private copy of the real walker smoke store (random split), to damage."""
    copy = tmp_path / "walker.zarr"
    shutil.copytree(smoke_dataset("walker"), copy)
    assert verify(copy) == []
    return copy


def chunk_file(store: Path, key: str, c: int = 0) -> Path:
    return Dataset.open(store, cache_bytes=0).reader(key).chunk_path(c)


def flip_byte(path: Path, at: float = 0.5):
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * at)] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_deleted_chunk_is_an_error_never_zeros(store, tmp_path):
    chunk_file(store, "image", 1).unlink()
    assert_refused(store, tmp_path, "data/image", "chunk 1", "missing")
    assert_verify_names(store, "data/image")
    # reading past the open check (as a long run would after the file vanished) fails too
    with pytest.raises(UserError, match=r"data/image: chunk 1 \(rows 32-63\) is missing"):
        Dataset(store, read_attrs(store), 0, False, check=False).read("image", 0, 64)


def test_a_truncated_chunk_is_refused_on_open(store, tmp_path):
    path = chunk_file(store, "action")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_refused(store, tmp_path, "data/action", "chunk 0", "bytes where its header says")
    assert_verify_names(store, "data/action")


def test_a_flipped_byte_in_a_chunk_fails_the_first_read(store, tmp_path):
    # The open check does not decode data chunks (it would cost a full read); every chunk
    # carries a CRC32C, so the first batch that touches the flipped one stops the run.
    flip_byte(chunk_file(store, "reward"))
    flip_byte(chunk_file(store, "image", 2))
    assert cli("datasets", "info", store).exit_code == 0
    line = error_line(cli("run", "bc", "--env", "walker", "--data", store, "--profile", "smoke", "--no-progress",
                          "--out", tmp_path / "run"))
    assert ("data/reward: chunk 0" in line or "data/image: chunk 2" in line) and "CRC32C" in line, line
    assert f"datasets verify {store}" in line, line
    assert not (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "result.json").exists()
    with pytest.raises(UserError, match=r"data/image: chunk 2 \(rows 64-95\) cannot be decoded"):
        Dataset.open(store).read("image", 64, 65)
    assert_verify_names(store, "data/image: chunk 2", "data/reward: chunk 0")


def test_a_flipped_byte_in_episode_ends_is_refused_on_open(store, tmp_path):
    flip_byte(store / "meta" / "episode_ends" / "c" / "0")
    assert_refused(store, tmp_path, "meta/episode_ends", "chunk 0")
    assert_verify_names(store, "meta/episode_ends")


def edit_json(path: Path, edit):
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_an_edited_stored_shape_is_refused_on_open(store, tmp_path):
    rows = read_attrs(store)["num_rows"]
    edit_json(store / "data" / "image" / "zarr.json", lambda m: m["shape"].__setitem__(0, rows - 5))
    assert_refused(store, tmp_path, "data/image", f"stored shape ({rows - 5}, 32, 32, 3)", f"expected ({rows}, 32, 32, 3)")
    assert_verify_names(store, "data/image")


def test_an_edited_attribute_fails_open_verify_and_publish(store, tmp_path):
    edit_json(store / "zarr.json", lambda m: m["attributes"]["reference_returns"].update(random=-50.0))
    assert_refused(store, tmp_path, "attributes reference_returns: changed after writing")
    assert_verify_names(store, "reference_returns")


def test_publish_refuses_a_run_whose_dataset_attribute_was_edited(tmp_path):
    from test_leaderboard import make_store, write_run

    from lompo_bench.leaderboard import csv_store

    store = tmp_path / "expert.zarr"
    checksum = make_store(store)
    run = write_run(tmp_path, "run", dataset_path=str(store), dataset_checksum=checksum)
    assert len(csv_store.publish([run], tmp_path / "before.csv", dry_run=True).published) == 1
    edit_json(store / "zarr.json", lambda m: m["attributes"]["collector"].update(seed=7))
    report = csv_store.publish([run], tmp_path / "lb.csv")
    assert report.published == [] and "collector" in report.refused[0][1], report.refused
    assert not (tmp_path / "lb.csv").exists() or csv_store.read_rows(tmp_path / "lb.csv") == []


def test_a_format_1_store_opens_with_a_note_and_migrates(tmp_path, capsys):
    store = tmp_path / "synthetic.zarr"
    shutil.copytree(FIXTURES / "store-v1" / "synthetic.zarr", store)
    attrs = read_attrs(store)
    assert attrs["format_version"] == 1 and not (store / "data" / "is_terminal" / "c").exists()
    ds = Dataset.open(store)
    note = capsys.readouterr().err.strip()
    assert note.startswith("note: ") and "\n" not in note and f"lompo-bench datasets migrate {store}" in note
    assert ds.num_episodes == 3 and not ds.read("is_terminal", 0, ds.num_rows).any()
    before = {k: ds.array(k) for k in ds.keys}
    assert_verify_names(store, "format 1", f"lompo-bench datasets migrate {store}")

    result = cli("datasets", "migrate", store)
    assert result.exit_code == 0 and "upgraded from format 1 to 2" in result.output, result.output
    upgraded = read_attrs(store)
    assert upgraded["format_version"] == 2 and upgraded["checksum"] == attrs["checksum"]  # the dataset id stays
    assert verify(store) == [] and cli("datasets", "verify", store).exit_code == 0
    after = Dataset.open(store)
    assert all(np.array_equal(after.array(k), v) for k, v in before.items())
    assert "already format 2" in cli("datasets", "migrate", store).output
    # now a missing chunk is damage, and an edit of an attribute is caught
    (store / "data" / "is_terminal" / "c" / "0").unlink()
    with pytest.raises(UserError, match="data/is_terminal: 1 of 1 chunk files damaged"):
        Dataset.open(store)


def test_a_format_1_store_with_damage_is_not_migrated(tmp_path):
    store = tmp_path / "synthetic.zarr"
    shutil.copytree(FIXTURES / "store-v1" / "synthetic.zarr", store)
    flip_byte(store / "data" / "state" / "c" / "0" / "0")
    line = error_line(cli("datasets", "migrate", store))
    assert "cannot be migrated" in line and "data/state" in line
    assert read_attrs(store)["format_version"] == 1


def test_home_that_is_a_file_is_a_one_line_error(tmp_path):
    home = tmp_path / "home-file"
    home.write_text("not a folder")
    env = {"LOMPO_BENCH_HOME": str(home)}
    for args in (["datasets", "list"], ["collect", "walker", "--split", "random", "--profile", "smoke"],
                 ["run", "bc", "--env", "walker", "--profile", "smoke"]):
        line = error_line(cli(*args, env=env))
        assert f"LOMPO_BENCH_HOME={home} is a file" in line, line
    line = error_line(cli("datasets", "list", env={"LOMPO_BENCH_HOME": str(home / "inside")}))
    assert f"is inside {home}, which is a file" in line


def test_out_that_is_a_file_is_a_one_line_error(store, tmp_path):
    a_file = tmp_path / "a-file.zarr"
    a_file.write_text("x")
    for out, phrase in ((a_file, "is an existing file"), (a_file / "new.zarr", f"its parent {a_file} is a file")):
        line = error_line(cli("datasets", "rerender", store, "--image-size", "48", "--out", out))
        assert phrase in line, line
        line = error_line(cli("collect", "walker", "--split", "random", "--profile", "smoke", "--episodes", "1",
                              "--out", out))
        assert phrase in line, line
    assert a_file.read_text() == "x"


# -- full disk ----------------------------------------------------------------------------------
def _root_can_mount() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs (runs as uid %d)" % os.geteuid()
    if shutil.which("mount") is None:
        return "no mount command"
    return None


@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs: a few smoke episodes fit, the whole collection does not."""
    why = _root_can_mount()
    if why:
        pytest.skip(why)
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_collecting_onto_a_full_disk_is_a_one_line_error_and_resumes(small_fs, lompo_home):
    out = small_fs / "walker.zarr"
    args = ["collect", "walker", "--split", "random", "--profile", "smoke", "--episodes", "12", "--out", out]
    line = error_line(cli(*args))
    assert f"cannot write {out}: no space left on the device" in line and "MiB free on" in line, line
    assert "re-run the same command to resume" in line
    attrs = read_attrs(out)
    written = attrs["progress"]["episodes"]
    assert not attrs["complete"] and 0 < written < 12, attrs["progress"]
    assert "incomplete" in verify(out)[0]
    assert "is incomplete" in error_line(cli("run", "bc", "--env", "walker", "--data", out, "--profile", "smoke"))
    partial = Dataset.open(out, allow_incomplete=True)  # what is committed reads back whole
    assert partial.num_episodes == written and partial.episode(written - 1)["image"].shape[1:] == (32, 32, 3)

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_fs)], check=True)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    ds = Dataset.open(out)
    assert ds.num_episodes == 12 and verify(out) == []
