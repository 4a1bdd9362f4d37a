"""Offline SLAC on real env frames in the session's real smoke dataset stores (smoke-sized networks)."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from lompo_bench.algorithms.base import DataSpec
from lompo_bench.algorithms.slac import SLAC, SLACConfig, SLACPolicy, history_at
from lompo_bench.errors import UserError
from lompo_bench.evaluation import policy_view
from lompo_bench.store import Dataset

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def walker_store(smoke_dataset):
    return Dataset.open(smoke_dataset("walker"))


def smoke_slac(dataset, seed: int = 0, **overrides) -> SLAC:
    spec = DataSpec.from_dataset(dataset)
    config = dataclasses.replace(SLAC.config_for("smoke", spec), **overrides)
    return SLAC(config, spec, device="cpu", seed=seed)


def test_model_loss_falls(walker_store):
    torch.manual_seed(0)
    algo = smoke_slac(walker_store, model_lr=1e-3)
    probe = algo.sample(walker_store, 16)
    torch.manual_seed(1)
    before = algo.model_loss(probe)
    for _ in range(30):
        metrics = algo.update_model(algo.sample(walker_store, 8))
    torch.manual_seed(1)
    after = algo.model_loss(probe)
    assert np.isfinite(after) and after < 0.7 * before, (before, after)
    assert float(metrics["kl"]) >= 0


def test_posterior_shapes_and_agent_sees_the_last_transition(walker_store):
    algo = smoke_slac(walker_store)
    cfg, spec = algo.config, algo.spec
    batch = algo.sample(walker_store, 3)
    assert batch["image"].shape[:2] == (3, cfg.sequence_length + 1)
    features = algo.model.encoder({"image": batch["image"]})
    z, kl = algo.model.posterior(features, batch["action"])
    assert z.shape == (3, cfg.sequence_length + 1, cfg.z1_dim + cfg.z2_dim) and kl.shape == (3, cfg.sequence_length + 1)
    metrics = algo.update_agent(batch)
    assert {"critic_loss", "actor_loss", "alpha"} <= set(metrics)
    # The actor's input is tau frames' features and the tau - 1 actions between them.
    assert algo.sac.actor.net[0].in_features == cfg.sequence_length * features.shape[-1] + (cfg.sequence_length - 1) * spec.action_dim


def test_training_histories_match_what_the_policy_sees():
    """`history_at` (training) builds, for every step k of an episode, exactly the actor input
    `SLACPolicy` assembles online, padded start of the episode included."""
    tau, feature_dim, action_dim, length = 4, 5, 2, 7
    torch.manual_seed(0)
    features, actions = torch.randn(1, length, feature_dim), torch.randn(1, length, action_dim)
    actions[:, 0] = 0.0  # row 0's action (before the episode) is never used
    frames = iter(features[0])

    class RecordingActor:
        inputs: list = []

        def mode(self, x):  # acts with the dataset's next action, recording what it was given
            self.inputs.append(x.clone())
            step = len(self.inputs)
            return actions[:, step] if step < length else torch.zeros(1, action_dim)

    actor = RecordingActor()
    policy = SLACPolicy(lambda obs: next(frames)[None], actor, tau, action_dim, "cpu")
    for _ in range(length):
        policy.act({"image": np.zeros((2, 2, 3), np.uint8)})
    for k in range(length):
        torch.testing.assert_close(actor.inputs[k], history_at(features, actions, torch.tensor([k]), tau))


def test_agent_phase_leaves_the_model_alone(walker_store):
    algo = smoke_slac(walker_store)
    before = {k: v.clone() for k, v in algo.model.state_dict().items()}
    algo.update_agent(algo.sample(walker_store, 4))
    for k, v in algo.model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)


def test_smoke_training_phases_and_policy_acts_in_real_env(walker_store):
    from lompo_bench import envs

    algo = smoke_slac(walker_store)
    cfg = algo.config
    assert algo.total_steps() == cfg.model_pretrain_steps + cfg.joint_steps
    first = algo.train_step(walker_store, 0)
    assert "model_loss" in first and "critic_loss" not in first  # model pretraining: no agent update
    for step in range(1, algo.total_steps()):
        metrics = algo.train_step(walker_store, step)
    assert "critic_loss" in metrics and "model_loss" in metrics
    assert algo.gradient_steps() == algo.total_steps()

    env = envs.make("walker", image_size=32, seed=0)
    policy = algo.policy()
    assert isinstance(policy, SLACPolicy)
    obs, _ = env.reset(seed=0)
    policy.reset()
    actions = []
    for _ in range(cfg.sequence_length + 2):  # past the padded start: the history buffer rolls over
        action = policy.act(policy_view(obs))
        assert action.shape == env.action_space.shape and np.all(np.abs(action) <= 1.0)
        actions.append(action)
        obs, *_ = env.step(action)
    assert len(policy.features) == cfg.sequence_length and len(policy.actions) == cfg.sequence_length - 1
    policy.reset()
    np.testing.assert_allclose(policy.act(policy_view(env.reset(seed=0)[0])), actions[0])  # reset clears history
    env.close()


def test_state_dict_round_trip_resumes_exactly(walker_store):
    a = smoke_slac(walker_store, seed=1, model_pretrain_steps=1)
    for step in range(2):
        a.train_step(walker_store, step)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = smoke_slac(walker_store, seed=2, model_pretrain_steps=1)
    b.load_state_dict(torch.load(buffer, weights_only=False))
    torch.manual_seed(7)
    m_a = a.train_step(walker_store, 2)
    torch.manual_seed(7)
    m_b = b.train_step(walker_store, 2)
    assert m_a == m_b and b.gradient_steps() == 3


def test_bad_settings_are_one_line_user_errors(walker_store):
    from lompo_bench.runner import apply_overrides

    with pytest.raises(UserError, match="sequence_length must be >= 1"):
        apply_overrides(SLACConfig(), {"sequence_length": "0"}, "slac")
    spec = DataSpec.from_dataset(walker_store)
    longest = int(np.diff(np.concatenate([[0], walker_store.episode_ends])).max())
    algo = SLAC(dataclasses.replace(SLAC.config_for("smoke", spec), sequence_length=longest + 1), spec)
    with pytest.raises(UserError, match="window length"):
        algo.train_step(walker_store, 0)


def test_profiles_scale_down_from_paper_defaults(walker_store):
    spec = DataSpec.from_dataset(walker_store)
    paper, cpu, smoke = (SLAC.config_for(p, spec) for p in ("paper", "cpu", "smoke"))
    assert (paper.sequence_length, paper.z1_dim, paper.z2_dim, paper.model_lr, paper.actor_lr,
            paper.model_batch_size, paper.rl_batch_size) == (8, 32, 256, 1e-4, 3e-4, 32, 256)
    assert SLAC(smoke, spec).total_steps() < SLAC.config_for("cpu", spec).joint_steps
