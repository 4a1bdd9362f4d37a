"""CQL from pixels, on real env frames in real dataset stores (smoke-sized networks).

`write_behaviour_store` (also used by test_slac.py) writes a small store whose actions come
from a narrow behaviour policy (a fixed action per dimension plus small noise), so uniform
random actions are genuinely out of the dataset's distribution, the situation CQL is for.
"""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lompo_bench.algorithms.base import DataSpec
from lompo_bench.algorithms.cql import CQL, CQLConfig, q_for_actions
from lompo_bench.errors import UserError
from lompo_bench.evaluation import policy_view

torch.set_num_threads(1)


def write_behaviour_store(path, env_name: str = "walker", image_size: int = 32, episodes: int = 2, steps: int = 30,
                          seed: int = 0):
    """A finalized store of `episodes` episodes of a narrow behaviour policy in the real env."""
    from lompo_bench import envs
    from lompo_bench.store import Dataset, DatasetWriter

    env = envs.make(env_name, image_size=image_size, seed=seed)
    writer = DatasetWriter.open(path, {"env": envs.env_attrs(env_name, image_size), "split": "medium",
                                       "collector": {"algorithm": "narrow-behaviour", "seed": seed}})
    rng = np.random.default_rng(seed)
    action_dim = env.action_space.shape[0]
    center = rng.uniform(-0.5, 0.5, action_dim)
    for e in range(episodes):
        obs, info = env.reset(seed=seed + e)
        rows = {k: [v] for k, v in obs.items()}
        rows.update(physics=[info["physics"]], action=[np.zeros(action_dim, np.float32)], reward=[0.0],
                    is_terminal=[False])
        for _ in range(steps):
            action = np.clip(center + 0.1 * rng.standard_normal(action_dim), -1, 1).astype(np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            for k, v in obs.items():
                rows[k].append(v)
            rows["physics"].append(info["physics"])
            rows["action"].append(action)
            rows["reward"].append(reward)
            rows["is_terminal"].append(terminated)
            if terminated or truncated:
                break
        arrays = {k: np.stack(v) for k, v in rows.items()}
        n = len(rows["reward"])
        arrays["reward"] = arrays["reward"].astype(np.float32)
        arrays["is_first"] = np.arange(n) == 0
        arrays["is_last"] = np.arange(n) == n - 1
        writer.add_episode(arrays)
    writer.update_attrs(reference_returns={"random": 0.0, "expert": 100.0, "episodes": episodes,
                                           "definition": "test values"})
    writer.finalize()
    env.close()
    return Dataset.open(path)


@pytest.fixture(scope="module")
def walker_store(tmp_path_factory):
    return write_behaviour_store(tmp_path_factory.mktemp("store") / "walker.zarr", "walker")


def smoke_cql(dataset, seed: int = 0, **overrides) -> CQL:
    spec = DataSpec.from_dataset(dataset)
    config = dataclasses.replace(CQL.config_for("smoke", spec), **overrides)
    return CQL(config, spec, device="cpu", seed=seed)


def test_q_for_actions_equals_critic_on_repeated_features():
    from lompo_bench.algorithms.networks import TwinQ

    critic = TwinQ(20, 3, hidden=16, layers=2)
    features, actions = torch.randn(5, 20), torch.rand(5, 4, 3) * 2 - 1
    q1, q2 = q_for_actions(critic, features, actions)
    r1, r2 = critic(features[:, None].expand(5, 4, 20), actions)
    assert q1.shape == (5, 4)
    torch.testing.assert_close(q1, r1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q2, r2, rtol=1e-5, atol=1e-5)


def test_penalty_pushes_out_of_dataset_q_below_dataset_q(walker_store):
    """After 30 updates, Q of dataset actions exceeds Q of uniform random actions in (nearly)
    every state with the conservative term, and not without it (alpha 0: plain SAC)."""
    probe = walker_store.sample_transitions(64, np.random.default_rng(123))
    action_dim = probe["action"].shape[-1]
    uniform = np.random.default_rng(5).uniform(-1, 1, (64, 10, action_dim)).astype(np.float32)
    gaps, fractions = {}, {}
    for alpha in (5.0, 0.0):
        torch.manual_seed(0)
        algo = smoke_cql(walker_store, cql_alpha=alpha, augment_pad=0, batch_size=32, critic_lr=1e-3)
        for step in range(30):
            metrics = algo.train_step(walker_store, step)
        assert all(np.isfinite(v) for v in metrics.values())
        q_data = algo.q_values(probe["obs"], probe["action"][:, None])[:, 0]
        q_uniform = algo.q_values(probe["obs"], uniform)
        gaps[alpha] = float(q_data.mean() - q_uniform.mean())
        fractions[alpha] = float((q_data > q_uniform.mean(1)).mean())
    assert gaps[5.0] > 0.02 and fractions[5.0] > 0.9, (gaps, fractions)
    assert gaps[5.0] > gaps[0.0] + 0.02, gaps


def test_lagrangian_alpha_tracks_target_gap(walker_store):
    """alpha' grows while the weighted gap exceeds the target and shrinks when it is below."""
    low = smoke_cql(walker_store, cql_auto_alpha=True, cql_target_gap=-100.0, cql_alpha_lr=0.05)
    high = smoke_cql(walker_store, cql_auto_alpha=True, cql_target_gap=100.0, cql_alpha_lr=0.05)
    for step in range(3):
        m_low, m_high = low.train_step(walker_store, step), high.train_step(walker_store, step)
    assert m_low["cql_alpha_prime"] > 1.05 and m_high["cql_alpha_prime"] < 0.95
    fixed = smoke_cql(walker_store)
    assert "cql_alpha_prime" not in fixed.train_step(walker_store, 0)


def test_smoke_training_and_policy_acts_in_real_env(walker_store):
    from lompo_bench import envs

    algo = smoke_cql(walker_store)
    for step in range(algo.total_steps()):
        metrics = algo.train_step(walker_store, step)
    assert algo.gradient_steps() == algo.total_steps()
    assert {"critic_loss", "cql_loss", "actor_loss", "alpha"} <= set(metrics)
    env = envs.make("walker", image_size=32, seed=0)
    policy = algo.policy()
    obs, _ = env.reset(seed=0)
    policy.reset()
    first = policy.act(policy_view(obs))
    for _ in range(3):
        action = policy.act(policy_view(obs))
        assert action.shape == env.action_space.shape and action.dtype == np.float32
        assert np.all(np.abs(action) <= 1.0)
        obs, *_ = env.step(action)
    env.close()
    np.testing.assert_allclose(policy.act(policy_view(env.reset(seed=0)[0])), first)  # deterministic mode


def test_state_dict_round_trip_resumes_exactly(walker_store):
    a = smoke_cql(walker_store, seed=1)
    for step in range(2):
        a.train_step(walker_store, step)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = smoke_cql(walker_store, seed=2)
    b.load_state_dict(torch.load(buffer, weights_only=False))
    assert b.gradient_steps() == 2
    torch.manual_seed(7)
    m_a = a.train_step(walker_store, 2)
    torch.manual_seed(7)
    m_b = b.train_step(walker_store, 2)
    assert m_a == m_b
    for (name, p), q in zip(a.encoder.state_dict().items(), b.encoder.state_dict().values()):
        torch.testing.assert_close(p, q, msg=name)


def test_bad_settings_are_one_line_user_errors():
    from lompo_bench.runner import apply_overrides

    with pytest.raises(UserError, match="cql_num_actions must be >= 1"):
        apply_overrides(CQLConfig(), {"cql_num_actions": "0"}, "cql")
    with pytest.raises(UserError, match="unknown setting 'alpha_cql'"):
        apply_overrides(CQLConfig(), {"alpha_cql": "5"}, "cql")


def test_profiles_scale_down_from_paper_defaults(walker_store):
    spec = DataSpec.from_dataset(walker_store)
    paper, cpu, smoke = (CQL.config_for(p, spec) for p in ("paper", "cpu", "smoke"))
    assert (paper.cql_alpha, paper.cql_num_actions, paper.actor_lr, paper.critic_lr, paper.batch_size) == (5.0, 10, 1e-4, 3e-4, 256)
    assert smoke.steps < cpu.steps < paper.steps and cpu.batch_size < paper.batch_size


def test_cli_smoke_run_end_to_end(walker_store, tmp_path):
    from lompo_bench.cli import cli

    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", "cql", "--env", "walker", "--profile", "smoke", "--data",
                                      str(walker_store.path), "--out", str(out), "--eval-episodes", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "result.json").read_text())
    assert summary["algorithm"] == "cql" and summary["gradient_steps"] == CQL.config_for("smoke", None).steps
    assert np.isfinite(summary["raw_return"])


@pytest.mark.slow
@pytest.mark.parametrize("env_name", ["dclaw-screw", "adroit-pen", "sawyer-door"])
def test_cli_smoke_run_other_envs(env_name, tmp_path):
    from lompo_bench.cli import cli

    store = write_behaviour_store(tmp_path / f"{env_name}.zarr", env_name, episodes=2, steps=12)
    result = CliRunner().invoke(cli, ["run", "cql", "--env", env_name, "--profile", "smoke", "--data", str(store.path),
                                      "--out", str(tmp_path / "run"), "--eval-episodes", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "result.json").read_text())["algorithm"] == "cql"
