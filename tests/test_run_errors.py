"""Bad values and signals on `lompo-bench run` and `collect`, through the real CLI: each is a
one-line `error:` with exit 2 (130 for a signal), and no run is trained by a refused command
(no checkpoint, no result). Explicit zeros are validated, not replaced by the defaults."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from lompo_bench.cli import cli
from cli_checks import assert_one_line_error, checkpoint_step, wait_for_checkpoint

SMOKE = ["--env", "walker", "--profile", "smoke", "--split", "random", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))




def assert_nothing_trained(out):
    assert not (out / "checkpoint.pt").exists() and not (out / "result.json").exists()
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("args,fragments", [
    (["--eval-episodes", "0"], ["--eval-episodes must be an integer >= 1, got 0"]),
    (["--eval-every", "0"], ["--eval-every must be an integer >= 1, got 0"]),
    (["--checkpoint-every", "0"], ["--checkpoint-every must be an integer >= 1, got 0"]),
    (["--eval-every", "-5"], ["--eval-every must be an integer >= 1, got -5"]),
    (["--seed", "-1"], ["--seed must be an integer from 0 to 2**31-1, got -1"]),
    (["--threads", "0"], ["--threads must be an integer >= 1, got 0"]),
    # Values the config accepts but the optimizer rejects when the algorithm is built.
    (["--set", "lr=-1"], ["--set lr=-1 (default 0.0003) rejected by bc", "Invalid learning rate",
                          "accepted: a learning rate > 0"]),
    (["--set", "weight_decay=-0.5", "--set", "lr=1e-3"],
     ["--set weight_decay=-0.5 (default 0.0) rejected by bc", "accepted: a number >= 0"]),
])
def test_bad_run_values_are_one_line_errors_and_train_nothing(args, fragments, smoke_dataset, tmp_path):
    smoke_dataset("walker")
    out = tmp_path / "run"
    result = invoke("run", "bc", *SMOKE, "--out", str(out), *args)
    assert_one_line_error(result, *fragments)
    assert_nothing_trained(out)


def test_an_optimizer_rejection_names_the_setting_of_a_multi_network_algorithm(smoke_dataset, tmp_path):
    smoke_dataset("walker")
    out = tmp_path / "run"
    result = invoke("run", "cql", *SMOKE, "--out", str(out), "--set", "actor_lr=-1", "--set", "critic_lr=1e-3")
    assert_one_line_error(result, "--set actor_lr=-1 (default", "rejected by cql", "a learning rate > 0")
    assert "critic_lr" not in result.output  # the valid setting is not blamed
    assert_nothing_trained(out)


def test_out_that_is_a_file_is_a_one_line_error(smoke_dataset, tmp_path):
    smoke_dataset("walker")
    out = tmp_path / "a-file"
    out.write_text("not a run")
    assert_one_line_error(invoke("run", "bc", *SMOKE, "--out", str(out)), f"--out {out} is a file")
    nested = out / "run"
    assert_one_line_error(invoke("run", "bc", *SMOKE, "--out", str(nested)), f"cannot make the run folder {nested}")
    assert out.read_text() == "not a run"


@pytest.mark.parametrize("args,fragments", [
    (["--seed", "-1"], ["--seed must be an integer from 0 to 2**31-1, got -1"]),
    (["--threads", "0"], ["--threads must be an integer >= 1, got 0"]),
])
def test_bad_collect_values_are_one_line_errors_and_write_nothing(args, fragments, tmp_path):
    out = tmp_path / "random.zarr"
    result = invoke("collect", "walker", "--split", "random", "--profile", "smoke", "--episodes", "1",
                    "--out", str(out), *args)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_threads_reach_torch_and_the_run_records_them(smoke_dataset, tmp_path):
    import json

    smoke_dataset("walker")
    before = torch.get_num_threads()
    try:
        result = invoke("run", "bc", *SMOKE, "--out", str(tmp_path / "run"), "--steps", "2", "--threads", "2")
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 2
        assert json.loads((tmp_path / "run" / "result.json").read_text())["threads"] == 2
    finally:
        torch.set_num_threads(before)
    help_text = " ".join((invoke("run", "--help").output + invoke("collect", "--help").output).split())
    assert help_text.count("--threads") == 2 and help_text.count("~100x slower") == 2


def test_sigint_exits_130_and_keeps_the_checkpoint(smoke_dataset, tmp_path):
    smoke_dataset("walker")
    out, steps = tmp_path / "run", 3000
    command = [sys.executable, "-m", "lompo_bench.cli", "run", "bc", *SMOKE, "--steps", str(steps),
               "--checkpoint-every", "25", "--eval-every", str(steps), "--out", str(out)]
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=log)
        wait_for_checkpoint(proc, out / "checkpoint.pt", log=tmp_path / "log")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    message = (tmp_path / "log").read_text().strip().splitlines()[-1]
    stopped_at = checkpoint_step(out / "checkpoint.pt")
    assert code == 130, message
    assert message.startswith(f"error: SIGINT at step {stopped_at}/{steps}: checkpoint saved"), message
    assert 0 < stopped_at < steps and not (out / "result.json").exists()
    assert not (out / ".lock").exists()  # the lock is given back on the way out


def test_a_full_disk_is_a_one_line_error_and_leaves_no_half_written_file(smoke_dataset, tmp_path):
    smoke_dataset("walker")
    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full filesystem needs root to mount a small tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        out = small / "run"
        result = invoke("run", "bc", *SMOKE, "--out", str(out), "--steps", "20", "--checkpoint-every", "5")
        # The run started (its messages come first) and stops at the first checkpoint, which does not fit.
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        message = result.output.strip().splitlines()[-1]
        assert message.startswith(f"error: cannot write {out / 'checkpoint.pt'}: No space left on device"), message
        assert "run the same command again to resume" in message
        assert (out / "config.json").exists() and not (out / "result.json").exists()
        assert not list(out.glob("*.tmp")) and not (out / ".lock").exists()
    finally:
        subprocess.run(["umount", str(small)], check=True)


class SignalAt:
    """Sends this process `count` SIGINTs after step `step`, as a user pressing Ctrl-C would."""

    def __init__(self, step, count):
        self.step, self.count = step, count

    def on_step(self, trainer, step, metrics):
        if step == self.step:
            for _ in range(self.count):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # Python runs the handler between bytecodes: let each one land


@pytest.mark.parametrize("count,message", [
    (1, "SIGINT at step 3/8: checkpoint saved in"),
    (2, "stopped at once at step 3/8 (a second signal); the checkpoint of step 2 is kept"),
])
def test_ctrl_c_stops_with_exit_130_and_keeps_the_checkpoint(count, message, smoke_dataset, tmp_path):
    from lompo_bench.runner import Callback, Interrupted, run

    class CtrlC(SignalAt, Callback):
        pass

    smoke_dataset("walker")
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background (nohup, CI)
    with pytest.raises(Interrupted, match=message.replace("(", r"\(").replace(")", r"\)")) as stopped:
        run("bc", "walker", "random", profile="smoke", steps=8, checkpoint_every=2, out=out,
            callbacks=[CtrlC(3, count)])
    assert stopped.value.exit_code == 130
    saved = checkpoint_step(out / "checkpoint.pt")
    assert saved == (3 if count == 1 else 2) and not (out / "result.json").exists()
    assert signal.getsignal(signal.SIGINT) is before  # handlers given back
