"""LOMPO and LMBRL at the smoke profile, trained on real dataset stores of real env frames."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from test_latent_model import write_random_store

from lompo_bench import registry
from lompo_bench.algorithms.base import DataSpec
from lompo_bench.algorithms.lompo import FIGURE_LABEL_WIDTH, LMBRL, LOMPO, LOMPOConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def walker_store(tmp_path_factory):
    return write_random_store(tmp_path_factory.mktemp("lompo") / "walker.zarr", "walker", episodes=3, steps=30)


@pytest.fixture(scope="module")
def dclaw_store(tmp_path_factory):  # a task with proprio
    return write_random_store(tmp_path_factory.mktemp("lompo") / "dclaw.zarr", "dclaw-screw", episodes=2, steps=20)


def smoke_agent(dataset, cls=LOMPO, seed=0, **overrides):
    spec = DataSpec.from_dataset(dataset)
    config = dataclasses.replace(cls.config_for("smoke", spec), **overrides)
    return cls(config, spec, device="cpu", seed=seed)


def phase_of(agent, step):
    return int(np.searchsorted(agent.phase_ends, step, side="right"))


@pytest.mark.parametrize("store", ["walker_store", "dclaw_store"])
def test_smoke_run_goes_through_every_phase_and_acts_in_the_real_env(store, request):
    from lompo_bench import envs

    dataset = request.getfixturevalue(store)
    agent = smoke_agent(dataset)
    seen = {phase: set() for phase in range(4)}
    for step in range(agent.total_steps()):
        metrics = agent.train_step(dataset, step)
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        seen[phase_of(agent, step)].update(metrics)
    assert {"model_loss", "elbo", "kl", "image_ll"} <= seen[0]
    assert "real_buffer" in seen[1] and "latent_buffer" in seen[2] and "latent_penalty" in seen[2]
    assert {"critic_loss", "actor_loss", "alpha"} <= seen[3]
    assert "latent_penalty" in seen[3]  # the epoch refresh rolled out the current policy
    c = agent.config
    assert agent.real_buffer.size >= c.real_init_transitions and agent.latent_buffer.size >= c.latent_init_transitions
    assert agent.gradient_steps() == c.model_steps + c.agent_steps

    spec = agent.spec
    env = envs.make(spec.env, image_size=spec.image_shape[0], seed=5)
    policy = agent.policy()
    for episode in range(2):
        policy.reset()
        obs, _ = env.reset(seed=episode)
        actions = []
        for _ in range(5):
            action = policy.act(obs)
            assert action.dtype == np.float32 and action.shape == env.action_space.shape
            assert np.all(np.abs(action) <= 1) and np.all(np.isfinite(action))
            actions.append(action)
            obs, *_ = env.step(action)
        assert not all(np.array_equal(actions[0], a) for a in actions[1:])  # it reacts to what it sees


def test_policy_is_deterministic_per_episode(walker_store):
    from lompo_bench import envs

    agent = smoke_agent(walker_store)
    env = envs.make("walker", image_size=32, seed=0)

    def episode_actions():
        policy = agent.policy()
        obs, _ = env.reset(seed=11)
        out = []
        for _ in range(4):
            out.append(policy.act(obs))
            obs, *_ = env.step(out[-1])
        return np.stack(out)

    assert np.array_equal(episode_actions(), episode_actions())


def test_state_dict_round_trip_resumes_identically(walker_store):
    torch.manual_seed(0)
    agent = smoke_agent(walker_store)
    total = agent.total_steps()
    split = 2  # inside the model phase, so the resumed part crosses every phase boundary
    for step in range(split):
        agent.train_step(walker_store, step)
    state = copy.deepcopy(agent.state_dict())
    tail = [agent.train_step(walker_store, step) for step in range(split, total)]

    resumed = smoke_agent(walker_store, seed=0)
    torch.manual_seed(999)  # whatever the global RNG holds, the checkpoint's stream is restored
    resumed.load_state_dict(state)
    resumed_tail = [resumed.train_step(walker_store, step) for step in range(split, total)]
    drop_timing = lambda rows: [{k: v for k, v in row.items() if k != "data_wait_s"} for row in rows]
    assert drop_timing(resumed_tail) == drop_timing(tail)
    for (name, a), b in zip(agent.sac.state_dict().items(), resumed.sac.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(agent.latent_buffer.data["reward"], resumed.latent_buffer.data["reward"])
    assert resumed.gradient_steps() == agent.gradient_steps()


def test_lmbrl_is_lompo_without_the_penalty(walker_store):
    spec = DataSpec.from_dataset(walker_store)
    assert registry.get("lmbrl") is LMBRL and registry.get("lompo") is LOMPO and issubclass(LMBRL, LOMPO)
    for profile in ("smoke", "cpu", "paper"):
        lompo, lmbrl = LOMPO.config_for(profile, spec), LMBRL.config_for(profile, spec)
        assert lompo.penalty_scale == 5.0 and lmbrl.penalty_scale == 0.0
        assert dataclasses.asdict(dataclasses.replace(lompo, penalty_scale=0.0)) == dataclasses.asdict(lmbrl)
    # Same seed, same data: LMBRL's latent rewards are LOMPO's plus lambda * penalty.
    runs = {}
    for cls in (LOMPO, LMBRL):
        torch.manual_seed(0)
        agent = smoke_agent(walker_store, cls=cls)
        for step in range(int(agent.phase_ends[2])):
            metrics = agent.train_step(walker_store, step)
        runs[cls.name] = metrics
    assert runs["lmbrl"]["latent_penalty"] == pytest.approx(runs["lompo"]["latent_penalty"])
    assert runs["lmbrl"]["latent_reward"] == pytest.approx(runs["lompo"]["latent_reward"] + 5.0 * runs["lompo"]["latent_penalty"], rel=1e-4)
    assert runs["lompo"]["latent_penalty"] > 0


def test_paper_defaults_and_profiles():
    config = LOMPOConfig()
    assert (config.model_steps, config.model_batch, config.model_length, config.model_lr) == (25_000, 64, 50, 6e-4)
    assert (config.heads, config.horizon, config.penalty, config.penalty_scale) == (7, 5, "log_prob", 5.0)
    assert (config.agent_steps, config.agent_batch, config.tau, config.grad_clip) == (100_000, 256, 5e-3, 100.0)
    adroit = DataSpec("adroit-pen", (128, 128, 3), 24, 24, 50, 4)
    assert LOMPO.config_for("paper", adroit).deter == 512 and LOMPO.config_for("cpu", adroit).deter < 512
    with pytest.raises(ValueError, match="penalty must be one of"):
        LOMPOConfig(penalty="variance")
    with pytest.raises(ValueError, match="model_length"):
        LOMPOConfig(model_length=1)


def test_sample_figures_write_observed_reconstructed_predicted_png(walker_store, tmp_path):
    from PIL import Image

    agent = smoke_agent(walker_store)
    rng_before = torch.get_rng_state()
    paths = agent.sample_figures(walker_store, tmp_path)
    assert torch.equal(rng_before, torch.get_rng_state())  # figures do not perturb training
    image = np.asarray(Image.open(paths[0]))
    frames = min(agent.config.model_length, 30)
    columns = len(range(0, frames, max(1, frames // 10))[:10])
    assert image.shape == (2 * 3 * (3 * 32 + 4), FIGURE_LABEL_WIDTH + 2 * 32 * columns, 3)
    left, frames_part = image[:, :FIGURE_LABEL_WIDTH], image[:, FIGURE_LABEL_WIDTH:]
    assert (left < 128).any()  # row labels are drawn
    window = walker_store.sample_windows(3, frames, np.random.default_rng([0, 7_777]), keys=["image"])["image"]
    assert np.array_equal(frames_part[: 2 * 32: 2, : 2 * 32: 2], window[0, 0])  # first row: the observed frames


def test_prefetching_does_not_change_what_the_model_sees(walker_store):
    runs = []
    for depth in (0, 3):
        torch.manual_seed(0)
        agent = smoke_agent(walker_store)
        agent.prefetch_depth = depth
        rows = [agent.train_step(walker_store, step) for step in range(agent.config.model_steps)]
        runs.append([{k: v for k, v in row.items() if k != "data_wait_s"} for row in rows])
    assert runs[0] == runs[1]
