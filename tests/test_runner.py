"""The run path, end to end on real smoke datasets: `lompo-bench run`, `algos list`, one-line
errors, result.json, and resuming killed runs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from cli_checks import assert_one_line_error, checkpoint_step, wait_for_checkpoint
from conftest import write_scripted_store

from lompo_bench import envs, registry
from lompo_bench.cli import cli
from lompo_bench.errors import UserError
from lompo_bench.runner import apply_overrides, parse_settings, run, scale_steps
from lompo_bench.store import Dataset

torch.set_num_threads(1)

RESULT_FIELDS = ("algorithm env split seed profile raw_return return_std normalized_score success_rate eval_episodes "
                 "gradient_steps train_steps wall_time_s dataset_path dataset_id dataset_checksum random_return "
                 "expert_return commit package_version hardware device timestamp config").split()
SMOKE = ["--env", "walker", "--profile", "smoke", "--split", "random", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))




# --------------------------------------------------------------------------------------------
# End to end


def test_run_bc_writes_a_complete_run_directory(smoke_dataset, lompo_home):
    data = smoke_dataset("walker")
    result = invoke("run", "bc", *SMOKE)
    assert result.exit_code == 0, result.output
    run_dir = lompo_home / "runs" / "bc" / "smoke" / "walker" / "random" / "seed0"
    assert result.stdout.strip() == str(run_dir / "result.json")

    res = json.loads((run_dir / "result.json").read_text())
    assert set(RESULT_FIELDS) <= set(res)
    dataset = Dataset.open(data)
    assert (res["algorithm"], res["env"], res["split"], res["seed"], res["profile"]) == ("bc", "walker", "random", 0, "smoke")
    assert res["train_steps"] == res["gradient_steps"] == res["config"]["steps"] == 20
    assert res["eval_episodes"] == len(res["eval_returns"]) == 2
    assert res["dataset_checksum"] == dataset.checksum
    assert (res["random_return"], res["expert_return"]) == tuple(dataset.reference_returns)
    assert res["device"] == "cpu" and res["wall_time_s"] > 0 and res["commit"]

    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"] == res["config"] and config["dataset_checksum"] == dataset.checksum
    metrics = read_csv(run_dir / "metrics.csv")
    assert [int(r["step"]) for r in metrics] == list(range(1, 21))
    assert {"bc_loss", "action_mse", "gradient_steps"} <= set(metrics[0])
    evals = read_csv(run_dir / "eval.csv")
    assert [int(r["step"]) for r in evals] == [20]
    assert float(evals[0]["mean_return"]) == pytest.approx(res["raw_return"])
    assert (run_dir / "learning_curve.png").stat().st_size > 1000
    assert (run_dir / "checkpoint.pt").exists()

    # A finished run is never redone silently; --overwrite redoes it.
    again = invoke("run", "bc", *SMOKE)
    assert_one_line_error(again, "run already finished", str(run_dir / "result.json"), "--overwrite")
    redo = invoke("run", "bc", *SMOKE, "--overwrite", "--seed", "0")
    assert redo.exit_code == 0, redo.output
    assert json.loads((run_dir / "result.json").read_text())["raw_return"] == pytest.approx(res["raw_return"])


def test_normalized_score_settings_and_steps_reach_the_run(tmp_path):
    """--data, --set, --steps, --eval-episodes and the dataset's reference returns (0 and 100 here,
    so the normalized score equals the raw return)."""
    data = write_scripted_store(tmp_path / "scripted.zarr", "walker", lambda obs, rng: rng.uniform(-1, 1, 6),
                                episodes=2, steps=15, reference_returns=(0.0, 100.0))
    out = tmp_path / "run"
    result = invoke("run", "bc", "--env", "walker", "--profile", "smoke", "--data", str(data), "--out", str(out),
                    "--set", "lr=1e-3", "--set", "augment_pad=0", "--steps", "12", "--eval-episodes", "3",
                    "--eval-every", "5", "--no-progress")
    assert result.exit_code == 0, result.output
    res = json.loads((out / "result.json").read_text())
    assert res["split"] == "scripted" and res["dataset_path"] == str(data)
    assert res["config"]["lr"] == 1e-3 and res["config"]["augment_pad"] == 0 and res["train_steps"] == 12
    assert res["eval_episodes"] == 3
    assert res["normalized_score"] == pytest.approx(res["raw_return"]) and res["normalized_score_reason"] is None
    evals = read_csv(out / "eval.csv")
    assert [int(r["step"]) for r in evals] == [5, 10, 12]
    assert len(res["eval_returns"]) == 3
    # The final evaluation is the score; best and the mean of the last three show the noise.
    returns = [float(r["mean_return"]) for r in evals]
    assert res["raw_return"] == pytest.approx(returns[-1])
    best = max(range(3), key=returns.__getitem__)
    assert res["best"] == {"step": [5, 10, 12][best], "raw_return": pytest.approx(returns[best]),
                           "normalized_score": pytest.approx(returns[best])}
    assert res["last3_mean"]["steps"] == [5, 10, 12]
    assert res["last3_mean"]["raw_return"] == pytest.approx(sum(returns) / 3)
    assert res["last3_mean"]["normalized_score"] == pytest.approx(sum(returns) / 3)


@pytest.mark.parametrize("references", [(50.0, 20.0), (30.0, 30.0)])
def test_no_normalized_score_where_the_expert_is_not_above_random(references, tmp_path):
    """D4RL's scale needs expert > random (a smoke walker dataset's SAC expert is below its random
    policy; its runs used to write scores like 219.6)."""
    data = write_scripted_store(tmp_path / "scripted.zarr", "walker", lambda obs, rng: rng.uniform(-1, 1, 6),
                                episodes=2, steps=10, reference_returns=references)
    out = run("bc", "walker", profile="smoke", data=data, steps=4, eval_every=2, eval_episodes=1,
              out=tmp_path / "run", progress=False)
    res = json.loads((out / "result.json").read_text())
    assert res["normalized_score"] is None and res["best"]["normalized_score"] is None
    assert res["last3_mean"]["normalized_score"] is None and math.isfinite(res["last3_mean"]["raw_return"])
    assert res["normalized_score_reason"] == (f"the dataset's expert return ({references[1]:.4g}) is not above its "
                                              f"random return ({references[0]:.4g}), so the normalized score is undefined")
    assert [r["normalized_score"] for r in read_csv(out / "eval.csv")] == ["", ""]


@pytest.mark.parametrize("algo,env", [
    pytest.param(algo, env, marks=() if env == "walker" else pytest.mark.slow)
    for env in envs.ENV_NAMES for algo in ("lompo", "lmbrl", "slac", "cql", "bc")
])
def test_smoke_run_of_each_algorithm_on_each_env(algo, env, smoke_dataset, tmp_path):
    smoke_dataset(env)
    run_dir = run(algo, env, "random", profile="smoke", out=tmp_path / "run", progress=False)
    res = json.loads((run_dir / "result.json").read_text())
    assert set(RESULT_FIELDS) <= set(res)
    assert res["algorithm"] == algo and res["env"] == env and res["train_steps"] > 0
    assert res["gradient_steps"] > 0 and len(res["eval_returns"]) == 2
    assert math.isfinite(res["raw_return"])
    if algo in ("slac", "cql", "bc"):  # one update per step; LOMPO's fill phases take steps without one
        assert res["gradient_steps"] == res["train_steps"]
    if algo in ("cql", "bc"):  # single-phase methods run exactly their configured steps
        assert res["train_steps"] == res["config"]["steps"]
    if algo in ("lompo", "lmbrl", "slac"):  # a failing sample_figures only warns, so check it drew
        assert "model_samples.png" in res["figures"]
    for name in res["figures"]:
        assert (run_dir / name).stat().st_size > 0


def test_a_metric_reported_on_some_steps_is_averaged_over_those_steps(smoke_dataset, tmp_path, monkeypatch):
    """LOMPO reports its latent-rollout reward only on buffer-refresh steps; metrics.csv must show
    that mean, not the mean diluted by the steps that did not report it."""
    from lompo_bench.algorithms.bc import BC

    class SparseMetricBC(BC):
        name = "sparse-metric-bc"

        def train_step(self, dataset, step):
            metrics = super().train_step(dataset, step)
            if step % 5 == 0:
                metrics["refresh_value"] = 7.0
            return metrics

    registry.get("bc")  # load the built-ins before adding the test's own algorithm
    monkeypatch.setitem(registry._REGISTRY, SparseMetricBC.name, SparseMetricBC)
    smoke_dataset("walker")
    run_dir = run(SparseMetricBC.name, "walker", "random", profile="smoke", steps=400, overrides={"batch_size": 2},
                  eval_every=400, eval_episodes=1, out=tmp_path / "run", progress=False)
    rows = read_csv(run_dir / "metrics.csv")
    assert int(rows[1]["step"]) - int(rows[0]["step"]) > 1  # rows average several steps
    reported = [float(r["refresh_value"]) for r in rows if r["refresh_value"]]
    assert reported and all(v == pytest.approx(7.0) for v in reported)


# --------------------------------------------------------------------------------------------
# One-line errors


@pytest.mark.parametrize("args,fragments", [
    (["run", "nope", *SMOKE], ["unknown algorithm 'nope'", "accepted: lompo, lmbrl, slac, cql, bc"]),
    (["run", "bc", "--env", "moon", "--profile", "smoke"], ["unknown env 'moon'", "walker"]),
    (["run", "bc", "--env", "walker", "--profile", "huge"], ["unknown profile 'huge'", "smoke, cpu, paper"]),
    (["run", "bc", "--env", "walker", "--profile", "smoke", "--split", "expert"],
     ["no smoke dataset for walker/expert", "make it with: lompo-bench collect walker --split expert --profile smoke"]),
    (["run", "bc", *SMOKE, "--set", "nope=1"], ["unknown setting 'nope' for bc", "accepted: steps, batch_size, lr"]),
    (["run", "bc", *SMOKE, "--set", "lr=fast"], ["bad value for lr: 'fast'", "a number"]),
    (["run", "bc", *SMOKE, "--set", "steps=2.5"], ["bad value for steps", "an integer"]),
    (["run", "bc", *SMOKE, "--set", "lr"], ["bad --set 'lr'", "key=value"]),
    (["run", "bc", *SMOKE, "--steps", "0"], ["--steps must be >= 1"]),
    (["run", "bc", *SMOKE, "--device", "tpu"], ["unknown device 'tpu'", "cpu"]),
    (["run", "bc", *SMOKE, "--data", "/nonexistent/x.zarr"], ["/nonexistent/x.zarr does not exist"]),
    (["algos", "list", "--profile", "smoke"], ["--profile and --env go together"]),
])
def test_bad_input_is_a_one_line_error(args, fragments, smoke_dataset):
    smoke_dataset("walker")
    assert_one_line_error(invoke(*args), *fragments)


def test_dataset_of_another_env_is_refused(smoke_dataset):
    data = smoke_dataset("walker")
    result = invoke("run", "bc", "--env", "adroit-pen", "--profile", "smoke", "--data", str(data), "--no-progress")
    assert_one_line_error(result, "is for env 'walker', not 'adroit-pen'")


def test_algos_list_shows_every_algorithm_with_defaults_and_scaled_values(smoke_dataset):
    smoke_dataset("walker")
    plain = invoke("algos", "list")
    assert plain.exit_code == 0, plain.output
    for name in registry.available():
        assert name in plain.output
    assert "model_steps" in plain.output and "25000" in plain.output  # LOMPO's paper default
    scaled = invoke("algos", "list", "--profile", "smoke", "--env", "walker")
    assert scaled.exit_code == 0, scaled.output
    lines = scaled.output.splitlines()
    bc_start = next(i for i, line in enumerate(lines) if line.startswith("bc "))
    bc_row = next(line for line in lines[bc_start:] if line.startswith("steps "))
    assert bc_row.split()[-1] == "20"  # BC: paper 100000 steps, smoke 20


# --------------------------------------------------------------------------------------------
# Config plumbing


def test_overrides_are_typed_by_the_config_fields():
    lompo = registry.get("lompo")
    config = apply_overrides(lompo.Config(), parse_settings(["model_lr=1e-3", "heads=3", "model_steps=1e3",
                                                             "penalty=mean"]), "lompo")
    assert (config.model_lr, config.heads, config.model_steps, config.penalty) == (1e-3, 3, 1000, "mean")
    cql = registry.get("cql")
    config = apply_overrides(cql.Config(), {"cql_auto_alpha": "true", "target_entropy": "none"}, "cql")
    assert config.cql_auto_alpha is True and config.target_entropy is None
    assert apply_overrides(cql.Config(), {"target_entropy": "-3"}, "cql").target_entropy == -3.0
    with pytest.raises(UserError, match="true or false"):
        apply_overrides(cql.Config(), {"cql_auto_alpha": "maybe"}, "cql")


def test_steps_scale_the_phases_proportionally():
    lompo = registry.get("lompo")
    config = scale_steps(lompo, lompo.Config(), 1000)  # paper: 25k model + 100k agent steps
    assert (config.model_steps, config.agent_steps) == (200, 800)
    bc = registry.get("bc")
    assert scale_steps(bc, bc.Config(), 7).steps == 7
    slac = registry.get("slac")
    config = scale_steps(slac, slac.Config(), 501)
    assert config.model_pretrain_steps + config.joint_steps == 501


# --------------------------------------------------------------------------------------------
# Interruption and resume


def run_command(out, steps):
    return [sys.executable, "-m", "lompo_bench.cli", "run", "bc", *SMOKE, "--steps", str(steps),
            "--checkpoint-every", "25", "--out", str(out)]


def test_sigkilled_run_resumes_from_its_checkpoint(smoke_dataset, tmp_path, capsys):
    smoke_dataset("walker")
    out, steps = tmp_path / "run", 300
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(run_command(out, steps), env=env, stdout=log, stderr=log)
        wait_for_checkpoint(proc, out / "checkpoint.pt")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = checkpoint_step(out / "checkpoint.pt")
    assert 0 < killed_at < steps, f"the run was not killed mid-training ({killed_at})"
    assert not (out / "result.json").exists()

    capsys.readouterr()
    run("bc", "walker", "random", profile="smoke", steps=steps, out=out, checkpoint_every=25, progress=False)
    assert f"from step {killed_at}/{steps}" in capsys.readouterr().err
    res = json.loads((out / "result.json").read_text())
    assert res["train_steps"] == res["gradient_steps"] == steps  # the counter continued, nothing was redone
    logged = [int(r["step"]) for r in read_csv(out / "metrics.csv")]
    assert logged == list(range(1, steps + 1))  # rows past the checkpoint were written once, after resume


def test_sigterm_checkpoints_and_stops_then_the_same_command_resumes(smoke_dataset, tmp_path):
    smoke_dataset("walker")
    out, steps = tmp_path / "run", 300
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(run_command(out, steps), env=env, stdout=log, stderr=log)
        wait_for_checkpoint(proc, out / "checkpoint.pt")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    message = (tmp_path / "first.log").read_text().strip().splitlines()[-1]
    stopped_at = checkpoint_step(out / "checkpoint.pt")
    assert code == 130 and message.startswith(f"error: SIGTERM at step {stopped_at}/{steps}"), message
    assert "run the same command again to resume" in message

    # Same run dir, different settings: refused, not mixed.
    other = invoke("run", "bc", *SMOKE, "--steps", str(steps), "--out", str(out), "--set", "lr=0.1")
    assert_one_line_error(other, "holds a different run (config.lr: 0.0003 there, 0.1 now)", "--overwrite")
    resumed = run("bc", "walker", "random", profile="smoke", steps=steps, out=out, checkpoint_every=25, progress=False)
    res = json.loads((resumed / "result.json").read_text())
    assert res["gradient_steps"] == steps


def tensorboard_steps(tb_dir, purge: bool) -> dict[str, list[int]]:
    """Each scalar tag's steps as TensorBoard shows them (`purge`: honouring purge_step) or
    as the event files hold them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0}, purge_orphaned_data=purge)
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_resumed_run_has_strictly_increasing_tensorboard_steps(smoke_dataset, tmp_path):
    smoke_dataset("walker")
    out, steps = tmp_path / "run", 1500
    command = [sys.executable, "-m", "lompo_bench.cli", "run", "bc", *SMOKE, "--steps", str(steps),
               "--checkpoint-every", "500", "--eval-every", str(steps), "--out", str(out)]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=log)
        wait_for_checkpoint(proc, out / "checkpoint.pt")
        # Kill once the event file holds steps past the checkpoint, which the resumed run logs again.
        deadline = time.monotonic() + 240
        while proc.poll() is None and time.monotonic() < deadline:
            logged = max(tensorboard_steps(out / "tb", purge=False).get("train/bc_loss", [0]))
            if logged > checkpoint_step(out / "checkpoint.pt") + 10:
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = checkpoint_step(out / "checkpoint.pt")
    assert max(tensorboard_steps(out / "tb", purge=False)["train/bc_loss"]) > killed_at, "killed too early"
    assert killed_at < steps and not (out / "result.json").exists()

    run("bc", "walker", "random", profile="smoke", steps=steps, out=out, checkpoint_every=500, eval_every=steps,
        progress=False)
    raw = tensorboard_steps(out / "tb", purge=False)["train/bc_loss"]
    assert len(raw) > len(set(raw))  # the files do hold the killed run's steps past its checkpoint...
    shown = tensorboard_steps(out / "tb", purge=True)
    for tag, tag_steps in shown.items():  # ...and TensorBoard shows each step once, in order
        assert all(a < b for a, b in zip(tag_steps, tag_steps[1:])), tag
    assert shown["train/bc_loss"] == [int(r["step"]) for r in read_csv(out / "metrics.csv")]  # as metrics.csv
    assert shown["eval/mean_return"] == [steps]


# --------------------------------------------------------------------------------------------
# One trainer per run directory, across processes and machines


HOLD_LOCK = """
import sys, time
from pathlib import Path
from lompo_bench.run_lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_run_dir_is_trained_by_one_process_at_a_time(smoke_dataset, tmp_path):
    import socket

    smoke_dataset("walker")
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = invoke("run", "bc", *SMOKE, "--out", str(out))
        assert_one_line_error(busy, f"{out} is being trained by pid {holder.pid} on host {socket.gethostname()}",
                              str(out / ".lock"))
        assert not (out / "config.json").exists() and not (out / "checkpoint.pt").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The holder died without giving the lock back: its pid is gone on this host, so the lock is stale.
    assert (out / ".lock").exists()
    result = invoke("run", "bc", *SMOKE, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "result.json").exists() and not (out / ".lock").exists()


def test_a_lock_of_another_machine_holds_while_its_heartbeat_is_fresh(tmp_path):
    from lompo_bench.run_lock import LOCK_STALE_S, RunLock, RunLocked

    lock_file = tmp_path / ".lock"
    lock_file.write_text(json.dumps({"host": "other-machine", "boot_id": "x", "pid": os.getpid(),
                                     "started": "2026-01-01T00:00:00+00:00", "token": "theirs"}))
    with pytest.raises(RunLocked, match="pid .* on host other-machine since 2026-01-01"):
        RunLock(tmp_path).acquire()
    old = time.time() - LOCK_STALE_S - 5  # its holder stopped beating: a dead machine
    os.utime(lock_file, (old, old))
    lock = RunLock(tmp_path, heartbeat_s=0.05).acquire()
    try:
        assert lock.holds() and json.loads(lock_file.read_text())["host"] != "other-machine"
        os.utime(lock_file, (old, old))
        time.sleep(0.5)
        assert time.time() - lock_file.stat().st_mtime < 5  # the heartbeat keeps it fresh
        # Taken over by someone who found us stale: we notice and never delete their lock.
        lock_file.write_text(json.dumps({"host": "other-machine", "pid": 1, "token": "theirs"}))
        time.sleep(0.5)
        assert lock.lost
    finally:
        lock.release()
    assert json.loads(lock_file.read_text())["token"] == "theirs"


# --------------------------------------------------------------------------------------------
# Evaluation


def test_evaluate_is_deterministic_per_seed_and_shows_the_policy_only_pixels():
    import numpy as np

    from lompo_bench.algorithms.base import Policy
    from lompo_bench.evaluation import evaluate, make_eval_env

    class Brightness(Policy):
        """Acts on what it sees (mean pixel brightness), with a per-episode phase."""

        def reset(self):
            self.t = 0

        def act(self, obs):
            assert set(obs) == {"image"}, set(obs)  # walker: pixels only, never the simulator state
            self.t += 1
            return np.full(6, np.sin(self.t + obs["image"].mean() / 10.0), np.float32)

    env = make_eval_env("walker", image_size=32, horizon=20, seed=0)
    threads = torch.get_num_threads()
    first = evaluate(Brightness(), env, episodes=2, seed=7)
    again = evaluate(Brightness(), env, episodes=2, seed=7)
    other = evaluate(Brightness(), env, episodes=2, seed=8)
    env.close()
    assert torch.get_num_threads() == threads
    assert first["lengths"] == [20, 20] and first["success_rate"] is None
    assert first["returns"] == again["returns"] and first["returns"] != other["returns"]
    assert first["mean_return"] == pytest.approx(np.mean(first["returns"]))
