"""SAC collectors: `lompo-bench collect ENV --split {medium-replay,medium-expert,expert,all}`,
kill-and-resume of the SAC run, `datasets rerender`, the split protocol, bad input.

Everything runs the real pipeline at the smoke profile (real envs, real SB3 SAC, real
stores). The smoke run is too short to learn, so the split return ordering is checked on
the committed record of a real short run (tests/fixtures/walker_sac_short.json).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lompo_bench import paths
from lompo_bench.cli import cli
from lompo_bench.collectors import sac, splits
from lompo_bench.store import Dataset, verify

FIXTURE = Path(__file__).parent / "fixtures" / "walker_sac_short.json"
SAC_SPLITS = ("medium-replay", "medium-expert", "expert")


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def walker_home(tmp_path_factory):
    """One smoke `collect walker --split all`, shared by the tests that read its stores.

    One torch thread, as in the subprocesses of the kill test, whose result must equal this
    run bit for bit (floating-point reductions may differ between thread counts)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("LOMPO_BENCH_HOME", str(home))
    result = invoke("collect", "walker", "--split", "all", "--profile", "smoke")
    assert result.exit_code == 0, result.output
    yield home
    mp.undo()
    torch.set_num_threads(threads)


def store(env, split):
    return paths.dataset_path(env, split, "smoke")


def test_collect_all_writes_four_verified_stores_with_one_reference(walker_home):
    run = json.loads((sac.run_dir("walker", 0, "smoke") / "result.json").read_text())
    assert (sac.run_dir("walker", 0, "smoke") / "eval.png").stat().st_size > 0
    assert run["sac_steps"] == 300 and run["curve"][0]["step"] == 0 and run["curve"][-1]["step"] == 300
    for split in SAC_SPLITS + ("random",):
        path = store("walker", split)
        assert verify(path) == [], split
        ds = Dataset.open(path)
        assert ds.split == split and ds.attrs["complete"] is True
        assert ds.reference_returns == (run["random_return"], run["expert_return"])
        assert ds.num_transitions >= 50 and ds.shape("image")[1:] == (32, 32, 3)
        assert ds.attrs["env"]["horizon"] == 25
        if split != "random":
            c = ds.attrs["collector"]
            assert c["algorithm"] == "sac" and c["seed"] == 0 and c["sac_steps"] == 300
            assert c["medium_point"]["step"] == run["medium"]["step"]
            assert "half-expert threshold" in c["medium_point"]["definition"]
            assert "final SAC policy" in ds.attrs["reference_returns"]["definition"]
            ep = ds.episode(0)
            assert ep["is_first"][0] and not ep["is_first"][1:].any() and ep["is_last"][-1]
            assert not ep["action"][0].any() and ep["reward"][0] == 0


def test_replay_splits_cut_the_log_at_the_medium_point(walker_home):
    medium = json.loads((sac.run_dir("walker", 0, "smoke") / "result.json").read_text())["medium"]["step"]
    log = sac.load_log(sac.run_dir("walker", 0, "smoke") / "log")
    ends = {e["episode"]: e["end_step"] for e in splits.episode_table(log)}
    replay = Dataset.open(store("walker", "medium-replay"))
    later = Dataset.open(store("walker", "medium-expert"))
    assert all(ends[i] <= medium for i in replay.attrs["collector"]["training_episodes"])
    assert all(ends[i] > medium for i in later.attrs["collector"]["training_episodes"])
    # the stored rows are the recorded rows
    first = replay.attrs["collector"]["training_episodes"][0]
    rows = np.flatnonzero(log["episode"] == first)
    np.testing.assert_array_equal(replay.episode(0)["physics"], log["physics"][rows])
    np.testing.assert_array_equal(replay.episode(0)["action"], log["action"][rows])


def test_second_split_reuses_the_run_and_is_reproducible(walker_home):
    result_json = sac.run_dir("walker", 0, "smoke") / "result.json"
    before = (result_json.stat().st_mtime_ns, Dataset.open(store("walker", "expert")).checksum)
    result = invoke("collect", "walker", "--split", "expert", "--profile", "smoke", "--overwrite")
    assert result.exit_code == 0, result.output
    assert result_json.stat().st_mtime_ns == before[0]  # no retraining
    assert Dataset.open(store("walker", "expert")).checksum == before[1]  # same episodes again


def test_rerender_at_84_equals_a_fresh_render(walker_home, tmp_path):
    from lompo_bench import envs

    src = store("walker", "medium-replay")
    out = tmp_path / "mr84.zarr"
    result = invoke("datasets", "rerender", str(src), "--image-size", "84", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert verify(out) == []
    old, new = Dataset.open(src), Dataset.open(out)
    assert new.attrs["env"]["image_size"] == 84 and new.attrs["rerendered_from"]["dataset_id"] == old.checksum
    assert new.attrs["collector"] == old.attrs["collector"] and new.reference_returns == old.reference_returns
    for i in range(old.num_episodes):
        a, b = old.episode(i), new.episode(i)
        assert b["image"].shape[1:] == (84, 84, 3)
        np.testing.assert_array_equal(b["image"], envs.render_states("walker", a["physics"], 84))
        for key in a:
            if key != "image":
                np.testing.assert_array_equal(a[key], b[key])
    again = invoke("datasets", "rerender", str(src), "--image-size", "84", "--out", str(out))
    assert again.exit_code == 2 and "--overwrite" in again.output


def _cmd(split):
    return [sys.executable, "-m", "lompo_bench.cli", "collect", "walker", "--split", split, "--profile", "smoke"]


def test_sigkill_mid_training_then_rerun_equals_an_uninterrupted_run(walker_home, tmp_path):
    killed_env = {**os.environ, "OMP_NUM_THREADS": "1", "LOMPO_BENCH_HOME": str(tmp_path / "killed")}
    run = tmp_path / "killed" / "runs" / "sac" / "smoke" / "walker" / "seed0"
    proc = subprocess.Popen(_cmd("medium-expert"), env=killed_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoints" / "latest.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL  # killed while training, not finished
    assert not (run / "result.json").exists()
    resumed = subprocess.run(_cmd("medium-expert"), env=killed_env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    killed = tmp_path / "killed" / "datasets" / "smoke" / "walker" / "medium-expert.zarr"
    assert verify(killed) == []
    # identical arrays to the uninterrupted run of the module fixture: a bit-exact resume
    assert Dataset.open(store("walker", "medium-expert")).checksum == Dataset.open(killed).checksum
    ra = json.loads((sac.run_dir("walker", 0, "smoke") / "result.json").read_text())
    rb = json.loads((run / "result.json").read_text())
    assert ra["curve"] == rb["curve"] and ra["expert_return"] == rb["expert_return"]


def test_split_returns_are_ordered_on_a_real_run():
    rec = json.loads(FIXTURE.read_text())
    medium = splits.medium_point(rec["curve"], rec["random_train_return"], rec["expert_train_return"],
                                 min_step=500, max_step=rec["curve"][-1]["step"] - 500)  # walker: 500-step episodes
    assert medium["reached"] and medium["step"] == rec["medium"]["step"]
    replay = splits.replay_split(rec["episodes"], "medium-replay", medium["step"])
    later = splits.replay_split(rec["episodes"], "medium-expert", medium["step"])
    assert replay and later and len(replay) + len(later) == len(rec["episodes"])
    mean = lambda eps: float(np.mean([e["return"] for e in eps]))  # noqa: E731
    expert = float(np.mean(rec["expert_split_returns"]))
    scale = rec["expert_return"] - rec["random_return"]
    assert mean(replay) < mean(later)
    assert mean(later) < expert + 0.1 * scale  # below or near the expert
    assert rec["random_return"] < medium["threshold"] < rec["expert_train_return"]


def test_protocol_pieces():
    eps = [{"transitions": 10, "i": i} for i in range(10)]
    chosen = splits.select(eps, 35)
    assert [e["i"] for e in chosen] == [1, 3, 6, 8] and sum(e["transitions"] for e in chosen) >= 35
    assert splits.select(eps, 1000) == eps and splits.select(eps, 10) == [eps[5]]
    curve = [{"step": s, "mean_train_return": r} for s, r in [(0, 1.0), (100, 6.0), (200, 9.0), (300, 11.0)]]
    hit = splits.medium_point(curve, 1.0, 11.0, min_step=50, max_step=250)
    assert hit["step"] == 100 and hit["threshold"] == 6.0 and hit["reached"]
    miss = splits.medium_point(curve, 1.0, 11.0, min_step=150, max_step=150)
    assert miss == {**miss, "step": 150, "reached": False}
    log = {"is_first": np.array([1, 0, 0, 1, 0, 0, 1, 0], bool), "is_last": np.array([0, 0, 1, 0, 0, 1, 0, 0], bool),
           "reward": np.arange(8, dtype=np.float32), "episode": np.array([0, 0, 0, 1, 1, 1, 2, 2]),
           "step": np.array([0, 1, 2, 2, 3, 4, 4, 5])}
    table = splits.episode_table(log)  # the run's last, unfinished episode is dropped
    assert [(e["start"], e["end"], e["return"]) for e in table] == [(0, 3, 3.0), (3, 6, 9.0)]


@pytest.mark.parametrize("env", ["sawyer-door", pytest.param("dclaw-screw", marks=pytest.mark.slow),
                                 pytest.param("adroit-pen", marks=pytest.mark.slow)])
def test_collect_all_other_envs(env, tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    result = invoke("collect", env, "--split", "all", "--profile", "smoke", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    for split in SAC_SPLITS + ("random",):
        path = tmp_path / "out" / f"{split}.zarr"
        assert verify(path) == []
        ds = Dataset.open(path)
        assert ds.reference_returns[1] is not None
        if env == "sawyer-door" and split != "random":
            assert "shaped_reward" in ds.keys  # SAC's dense reward, next to the sparse one
            assert set(np.unique(ds.array("reward"))) <= {0.0, 1.0, 2.0, 3.0, 4.0}
        if env in ("dclaw-screw", "adroit-pen"):
            assert "proprio" in ds.keys
    run = json.loads((sac.run_dir(env, 0, "smoke") / "result.json").read_text())
    assert run["trained_on"] == ("shaped_reward" if env == "sawyer-door" else "reward")


@pytest.mark.parametrize("args, message", [
    (["collect", "walker", "--split", "medium", "--profile", "smoke"], "unknown split 'medium'"),
    (["collect", "hopper", "--split", "expert", "--profile", "smoke"], "unknown env 'hopper'"),
    (["collect", "walker", "--split", "expert", "--profile", "smoke", "--episodes", "0"], "--episodes must be"),
    (["collect", "walker", "--split", "all", "--profile", "smoke", "--out", "x.zarr"], "--out is a folder"),
    (["collect", "walker", "--split", "expert", "--profile", "smoke", "--image-size", "8"], "image size 8"),
    (["collect", "walker", "--split", "expert", "--profile", "smoke", "--seed", "-3"], "seed must be"),
])
def test_bad_input_is_one_line(args, message, tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.strip().count("\n") == 0, result.output
    assert not (tmp_path / "runs" / "sac").exists()  # refused before any training


def test_existing_store_is_kept_without_overwrite(walker_home):
    before = Dataset.open(store("walker", "medium-replay")).checksum
    result = invoke("collect", "walker", "--split", "medium-replay", "--profile", "smoke")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert Dataset.open(store("walker", "medium-replay")).checksum == before


def test_rerun_of_split_all_keeps_the_finished_stores(walker_home):
    """The command printed as resumable resumes: `--split all` run again after an interruption
    keeps each finished split (the same checksum) and goes on; a finished store from another
    SAC budget is refused with an error line, never kept silently."""
    before = {s: Dataset.open(store("walker", s)).checksum for s in SAC_SPLITS + ("random",)}
    result = invoke("collect", "walker", "--split", "all", "--profile", "smoke")
    assert result.exit_code == 0, result.output
    for s, checksum in before.items():
        assert f"kept {store('walker', s)} (finished)" in result.output
        assert Dataset.open(store("walker", s)).checksum == checksum
    import zarr

    group = zarr.open_group(str(store("walker", "expert")), mode="r+")
    collector = dict(group.attrs["collector"])
    steps = collector["sac_steps"]
    group.attrs["collector"] = {**collector, "sac_steps": steps - 100}
    try:
        result = invoke("collect", "walker", "--split", "all", "--profile", "smoke")
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        last = result.output.strip().splitlines()[-1]  # after the "kept" lines of the splits before it
        assert last.startswith(f"error: {store('walker', 'expert')} was made from a {steps - 100}-step SAC run")
        assert "--overwrite" in last
    finally:
        group.attrs["collector"] = collector


def test_sac_learns_from_the_scaled_reward_and_logs_the_reward():
    """SACConfig.reward_scale: SAC's reward is the training reward times the scale, the replay
    log keeps the env's reward. Every env collects at scale 1 (Adroit's 0.05 was measured worse)."""
    from lompo_bench.collectors import config

    assert {config.sac_config(e).reward_scale for e in config.ENV_NAMES} == {1.0}
    rows = []
    log = type("Log", (), {"append": staticmethod(rows.append)})()
    env = sac.RecordingStateEnv(sac.make_env("adroit-pen", config.budget("adroit-pen", "smoke")), 0, log,
                                reward_scale=0.05)
    env.reset()
    _, scaled, _, _, info = env.step(env.action_space.sample())
    env.close()
    assert scaled == pytest.approx(0.05 * float(rows[-1]["reward"]), rel=1e-6) and scaled != 0.0


def test_a_finished_run_with_other_sac_settings_is_not_reused(tmp_path, monkeypatch):
    """A run trained with another setting (9c6ecd9's Adroit Pen reward scale 0.05) is refused in one line."""
    from cli_checks import assert_one_line_error

    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    budget = sac.get_budget("adroit-pen", "smoke")
    folder = sac.run_dir("adroit-pen", 0, "smoke")
    folder.mkdir(parents=True)
    cfg = sac._asdict(sac.effective_config("adroit-pen", budget))
    cfg["reward_scale"] = 0.05
    (folder / "result.json").write_text(json.dumps({"env": "adroit-pen", "seed": 0, "sac_steps": budget.sac_steps,
                                                    "sac_config": cfg}))
    result = invoke("collect", "adroit-pen", "--split", "expert", "--profile", "smoke")
    assert_one_line_error(result, "trained with other settings (reward_scale)", f"move {folder}")
    assert not (tmp_path / "datasets" / "smoke" / "adroit-pen" / "expert.zarr").exists()


@pytest.mark.parametrize("damage", ["pointer", "model"])
def test_corrupt_checkpoint_is_one_line_and_kept(damage, tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    ckpts = sac.run_dir("walker", 0, "smoke") / "checkpoints"
    (ckpts / "step_000000000100").mkdir(parents=True)
    for name in ("model.zip", "replay_buffer.pkl", "state.pt"):
        (ckpts / "step_000000000100" / name).write_bytes(b"not what it should be")
    (ckpts / "latest.json").write_text("{oops" if damage == "pointer" else '{"checkpoint": "step_000000000100"}')
    result = invoke("collect", "walker", "--split", "expert", "--profile", "smoke")
    assert result.exit_code == 2 and "corrupt checkpoint" in result.output, result.output
    assert result.output.strip().count("\n") == 0
    assert (ckpts / "step_000000000100" / "model.zip").read_bytes() == b"not what it should be"


def test_a_run_being_trained_is_not_trained_twice(tmp_path, monkeypatch):
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    folder = sac.run_dir("walker", 0, "smoke")
    folder.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)",
                               str(folder / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = invoke("collect", "walker", "--split", "expert", "--profile", "smoke")
        assert result.exit_code == 2 and "another process is training" in result.output, result.output
        assert not (folder / "log").exists()
    finally:
        holder.kill()
        holder.wait()


def test_cpu_budgets_and_training_rewards_are_the_documented_ones():
    """collectors/config.py documents each env's measured cpu SAC budget and what SAC learns from."""
    from lompo_bench.collectors import config

    for env in config.ENV_NAMES:
        steps = config.budget(env, "cpu").sac_steps
        assert steps == config.CPU_SAC_STEPS[env]
        assert f"``{env}``, {steps // 1000}k steps" in config.__doc__
        # One real env step: SAC's training reward is the env's reward, except Door's dense shaped one.
        env_obj = sac.make_env(env, config.budget(env, "smoke"), seed=0)
        env_obj.reset(seed=0)
        _, reward, _, _, info = env_obj.step(env_obj.action_space.sample())
        env_obj.close()
        if env == "sawyer-door":
            assert reward in (0.0, 1.0) and sac.train_reward(reward, info) == info["shaped_reward"] != reward
        else:
            assert sac.train_reward(reward, info) == reward


def test_a_finished_run_shorter_than_the_budget_is_not_reused(tmp_path, monkeypatch):
    """A budget raised after a run finished (Door Open's 100k -> 300k): `collect` refuses the old
    expert in one line instead of writing datasets from it."""
    from cli_checks import assert_one_line_error

    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path))
    budget = sac.get_budget("walker", "smoke")
    folder = sac.run_dir("walker", 0, "smoke")
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"env": "walker", "seed": 0, "sac_steps": budget.sac_steps - 100}))
    result = invoke("collect", "walker", "--split", "expert", "--profile", "smoke")
    assert_one_line_error(result, f"trained for {budget.sac_steps - 100} steps", f"is now {budget.sac_steps}",
                          f"delete {folder}")
    assert not (tmp_path / "datasets" / "smoke" / "walker" / "expert.zarr").exists()


def test_bf16_collector_resumes_exactly_and_keeps_sac_outputs_fp32(tmp_path, monkeypatch):
    """Adroit Pen collects with the bf16 gradient step (collectors/config.py). A run stopped and
    resumed equals an uninterrupted one (the precision is restored from the checkpoint), the
    result records the precision, the saved policy is `CollectorSACPolicy`, and under bf16
    autocast its Q, mean and log-std layers return fp32 values within bf16 body rounding."""
    import torch

    from lompo_bench.algorithms.precision import autocast
    from lompo_bench.collectors.sac_policy import CollectorSACPolicy

    env = "adroit-pen"
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path / "whole"))
    whole = sac.train(env, 0, "smoke", progress=False)
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path / "resumed"))
    assert sac.train(env, 0, "smoke", progress=False, stop_after=100) == {"stopped_at": 100}
    resumed = sac.train(env, 0, "smoke", progress=False)
    assert whole["sac_config"]["precision"] == resumed["sac_config"]["precision"] == "bf16"
    assert resumed["curve"] == whole["curve"]
    policy = sac.load_final_policy(env, 0, "smoke").policy
    monkeypatch.setenv("LOMPO_BENCH_HOME", str(tmp_path / "whole"))
    for a, b in zip(policy.state_dict().values(), sac.load_final_policy(env, 0, "smoke").policy.state_dict().values()):
        assert torch.equal(a, b)
    assert isinstance(policy, CollectorSACPolicy)
    torch.manual_seed(0)
    obs = torch.randn(64, policy.observation_space.shape[0])
    action = torch.rand(64, policy.action_space.shape[0]) * 2 - 1
    with torch.no_grad():
        q32 = torch.cat(policy.critic(obs, action), 1)
        mean32, log_std32, _ = policy.actor.get_action_dist_params(obs)
        with autocast("bf16"):
            q16 = torch.cat(policy.critic(obs, action), 1)
            mean16, log_std16, _ = policy.actor.get_action_dist_params(obs)
    for exact, fast in ((q32, q16), (mean32, mean16), (log_std32, log_std16)):
        assert fast.dtype == torch.float32
        assert (fast - exact).abs().max() <= 0.05 * exact.abs().max() + 1e-3
    with autocast("bf16"):  # the bodies really run in bf16 (else the setting would do nothing)
        assert policy.critic.q_networks[0][0](torch.cat([obs, action], 1)).dtype == torch.bfloat16


def test_walker_and_dclaw_collect_in_fp32(walker_home):
    """Their published datasets were made in fp32 (collectors/config.py, "Precision")."""
    from lompo_bench.collectors import config

    result = json.loads((sac.run_dir("walker", 0, "smoke") / "result.json").read_text())
    assert result["sac_config"]["precision"] == "fp32"
    assert {env: config.sac_config(env).precision for env in config.ENV_NAMES} == {
        "walker": "fp32", "dclaw-screw": "fp32", "adroit-pen": "bf16", "sawyer-door": "bf16"}


def test_collector_policy_is_initialized_exactly_as_sb3s():
    """Swapping the output layers draws nothing from torch's RNG: with the same seed the policy's
    weights equal SB3's own `SACPolicy`'s, so an fp32 run (walker, D'Claw) rebuilds the datasets
    the SB3-policy collector made bit for bit."""
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3.sac.policies import SACPolicy

    from lompo_bench.collectors.sac_policy import CollectorSACPolicy

    spaces = (gym.spaces.Box(-1, 1, (7,), np.float32), gym.spaces.Box(-1, 1, (3,), np.float32), lambda _: 3e-4)
    weights = []
    for cls in (SACPolicy, CollectorSACPolicy):
        torch.manual_seed(0)
        weights.append(cls(*spaces, net_arch=[16, 16]).state_dict())
        weights.append(torch.rand(3))  # the RNG is where SB3's leaves it
    assert weights[0].keys() == weights[2].keys()
    assert all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
    assert torch.equal(weights[1], weights[3])
