"""`lompo-bench collect ENV --split random`: a real walker dataset, killed with SIGKILL and resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from lompo_bench.cli import cli
from lompo_bench.errors import UserError
from lompo_bench.store import Dataset, verify

EPISODES = 8


def collect_cmd(out, *extra):
    return [sys.executable, "-m", "lompo_bench.cli", "collect", "walker", "--split", "random", "--episodes",
            str(EPISODES), "--seed", "1", "--profile", "smoke", "--image-size", "32", "--out", str(out), *extra]


def committed_episodes(store) -> int:
    try:
        meta = json.loads((store / "zarr.json").read_text())
    except (OSError, ValueError):
        return 0
    return meta.get("attributes", {}).get("progress", {}).get("episodes", 0)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "LOMPO_BENCH_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}


def test_sigkill_mid_write_then_rerun_equals_uninterrupted_run(tmp_path, env):
    clean, killed = tmp_path / "clean.zarr", tmp_path / "killed.zarr"
    subprocess.run(collect_cmd(clean), env=env, check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(collect_cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while committed_episodes(killed) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= committed_episodes(killed) < EPISODES, "the writer was not killed mid-collection"
    with pytest.raises(UserError, match="incomplete"):
        Dataset.open(killed)
    assert any("incomplete" in p for p in verify(killed))

    resumed = subprocess.run(collect_cmd(killed), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert verify(killed) == []
    a, b = Dataset.open(clean), Dataset.open(killed)
    assert b.num_episodes == EPISODES and a.checksum == b.checksum
    assert a.attrs["checksums"] == b.attrs["checksums"]
    np.testing.assert_array_equal(a.array("image"), b.array("image"))

    again = subprocess.run(collect_cmd(killed), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr and again.stderr.count("\n") == 1


def test_random_episodes_depend_on_seed_and_index_only():
    from lompo_bench.collectors.random_policy import make_env, random_episode

    sim = make_env("walker", 32, 5)
    first = random_episode(sim, 4, 1)
    random_episode(sim, 4, 0)
    again = random_episode(sim, 4, 1)
    other = random_episode(sim, 5, 1)
    sim.close()
    assert first["image"].shape == (6, 32, 32, 3) and first["is_first"][0] and first["is_last"][-1]
    assert not first["action"][0].any() and first["reward"][0] == 0
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["action"], other["action"])


@pytest.mark.parametrize("args, message", [
    (["collect", "cheetah", "--split", "random"], "unknown env 'cheetah'"),
    (["collect", "walker", "--split", "bogus"], "unknown split 'bogus'"),
    (["collect", "walker", "--split", "random", "--profile", "huge"], "unknown profile 'huge'"),
    (["collect", "walker", "--split", "random", "--episodes", "0", "--profile", "smoke"], "--episodes must be"),
    (["datasets", "info", "/nonexistent/x.zarr"], "does not exist"),
])
def test_bad_cli_input_is_one_line_error(args, message, tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.strip().count("\n") == 0, result.output
