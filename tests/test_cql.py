"""CQL from pixels, on real env frames in real dataset stores (smoke-sized networks).

The conservative-penalty test needs a dataset whose actions are narrow (a fixed action per
dimension plus small noise, `narrow_policy`), so uniform random actions are genuinely out of
its distribution, the situation CQL is for; the other tests use the session's smoke dataset.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from conftest import write_scripted_store

from lompo_bench.algorithms.base import DataSpec
from lompo_bench.algorithms.cql import CQL, CQLConfig, q_for_actions
from lompo_bench.errors import UserError
from lompo_bench.evaluation import policy_view
from lompo_bench.store import Dataset

torch.set_num_threads(1)
WALKER_ACTION_DIM = 6


def narrow_policy(action_dim: int, seed: int = 0):
    """A behaviour policy for `write_scripted_store`: one fixed action plus N(0, 0.1^2) noise."""
    center = np.random.default_rng(seed).uniform(-0.5, 0.5, action_dim)
    return lambda obs, rng: np.clip(center + 0.1 * rng.standard_normal(action_dim), -1, 1)


@pytest.fixture(scope="module")
def narrow_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "walker.zarr"
    return Dataset.open(write_scripted_store(path, "walker", narrow_policy(WALKER_ACTION_DIM), episodes=2, steps=30))


@pytest.fixture(scope="module")
def walker_store(smoke_dataset):
    return Dataset.open(smoke_dataset("walker"))


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


def test_penalty_pushes_out_of_dataset_q_below_dataset_q(narrow_store):
    """After 30 updates, Q of dataset actions exceeds Q of uniform random actions in (nearly)
    every state with the conservative term, and not without it (alpha 0: plain SAC)."""
    probe = narrow_store.sample_transitions(64, np.random.default_rng(123))
    action_dim = probe["action"].shape[-1]
    uniform = np.random.default_rng(5).uniform(-1, 1, (64, 10, action_dim)).astype(np.float32)
    gaps, fractions = {}, {}
    for alpha in (5.0, 0.0):
        torch.manual_seed(0)
        algo = smoke_cql(narrow_store, cql_alpha=alpha, augment_pad=0, batch_size=32, critic_lr=1e-3)
        for step in range(30):
            metrics = algo.train_step(narrow_store, step)
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
