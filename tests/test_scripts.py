"""The reporting scripts on a real finished smoke run: scripts/runs-report.py and
scripts/penalty-contrast.py, run as users run them (a subprocess on a run directory)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_latent_model import write_random_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lompo_runs(tmp_path_factory):
    """Two seeds of a smoke LOMPO run on a random walker store."""
    from lompo_bench.runner import run

    tmp = tmp_path_factory.mktemp("scripts")
    store = write_random_store(tmp / "walker.zarr", "walker", episodes=3, steps=30).path
    return [run("lompo", "walker", data=store, seed=seed, profile="smoke", out=tmp / f"seed{seed}", progress=False)
            for seed in (0, 1)]


def script(name: str, *args) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_runs_report_lists_each_seed_and_the_cell_mean(lompo_runs):
    results = [json.loads((r / "result.json").read_text()) for r in lompo_runs]
    out = script("runs-report.py", *lompo_runs)
    for r in results:
        assert f"| lompo | walker | random | smoke | {r['seed']} |" in out
    scores = [r["normalized_score"] for r in results]
    assert f"| lompo | walker | random | smoke | 2 | {sum(scores) / 2:.1f} +- " in out
    assert "penalty data / policy / random" in out and "(step " in out  # LOMPO logs the contrast


def test_penalty_contrast_reloads_the_model_and_measures_every_penalty(lompo_runs):
    out = script("penalty-contrast.py", lompo_runs[0], "--batches", "1", "--horizon", "3")
    assert "3-step rollouts; run's penalty: log_prob" in out
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "penalty |" not in line]
    assert sorted((r[0].strip(), r[1].strip()) for r in rows) == sorted(
        (kind, step) for kind in ("log_prob", "max_var", "mean") for step in ("1", "3"))
    for r in rows:
        values = [float(x) for x in r[2:7]]  # four action sets and the ratio: numbers, penalties >= 0
        assert all(v >= 0 for v in values[:4]) and values[4] > 0
        assert 0.0 <= float(r[7]) <= 1.0


def test_dataset_report_reads_adroit_success_as_gymnasium_robotics_does():
    """dataset-report's pen-at-goal test on the recorded `state` agrees with gymnasium-robotics'
    own `success` on every base step of a real episode that reaches the goal (the goal is set to
    the pen's own orientation, so the rollout spends steps at it and steps away from it)."""
    import importlib.util

    import mujoco
    import numpy as np

    from lompo_bench import envs  # noqa: F401  (picks the rendering backend before gymnasium-robotics)
    from gymnasium_robotics.envs.adroit_hand.adroit_pen import AdroitHandPenEnv

    path = Path(__file__).parent.parent / "scripts" / "dataset-report.py"
    spec = importlib.util.spec_from_file_location("dataset_report", path)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    env = AdroitHandPenEnv(reward_type="dense")
    env.reset(seed=0)
    env.model.body_quat[env.target_obj_body_id] = env.data.xquat[env.obj_body_id]
    mujoco.mj_forward(env.model, env.data)
    rng = np.random.default_rng(0)
    ours, theirs = [], []
    for _ in range(200):
        obs, _, _, _, info = env.step(rng.uniform(-0.05, 0.05, 24))
        ours.append(bool(report.pen_at_goal(obs[None].astype(np.float32))[0]))
        theirs.append(bool(info["success"]))
    env.close()
    assert ours == theirs
    assert 0 < sum(theirs) < len(theirs)  # both outcomes occur


def test_sac_report_bins_the_training_episodes_and_reads_the_evaluations(tmp_path, monkeypatch):
    """sac-report on a real smoke SAC run of Adroit Pen: every finished training episode of the
    replay log is counted once, with the pen-at-goal columns, and the evaluation line counts
    evaluations against --above."""
    import csv

    from lompo_bench.collectors import sac

    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    result = sac.train("adroit-pen", 0, "smoke", progress=False)
    run = sac.run_dir("adroit-pen", 0, "smoke")
    with open(run / "eval.csv") as f:
        curve = [float(r["mean_return"]) for r in csv.DictReader(f)]
    threshold = sorted(curve)[len(curve) // 2]
    out = script("sac-report.py", run, "--bin", "100", "--above", threshold)
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| ") and "episodes" not in line]
    assert [r[0].strip() for r in rows][:2] == ["0-100", "100-200"]
    episodes = sum(int(r[1]) for r in rows)
    budget = sac.get_budget("adroit-pen", "smoke")
    assert episodes == budget.sac_steps // budget.horizon  # 25-step smoke episodes, all finished
    assert all(r[3].strip().endswith("%") and r[4].strip().endswith("%") for r in rows)
    assert f"evaluations (deterministic): {len(curve)}" in out
    assert f"{sum(r >= threshold for r in curve)} at or above {threshold:g}" in out
    assert f"expert return {result['expert_return']:.1f}" in out
