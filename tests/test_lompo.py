"""LOMPO and LMBRL at the smoke profile, trained on real dataset stores of real env frames."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from test_latent_model import write_random_store

from lompo_bench import registry
from lompo_bench.errors import UserError
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
    assert {"critic_loss", "actor_loss", "q", "target_q"} <= seen[3]
    assert "alpha" not in seen[3]  # the authors' deterministic agent has no entropy temperature
    # The block refresh rolled out the current policy and measured the penalty contrast and Q values.
    assert {"latent_penalty", "latent_reward", "penalty_data", "penalty_policy", "penalty_random", "q_real",
            "q_latent"} <= seen[3]
    c = agent.config
    assert agent.real_buffer.size == dataset.num_transitions  # the whole dataset
    assert agent.latent_buffer.size == min(dataset.num_transitions, agent.latent_buffer.capacity)
    assert agent.latent_buffer.capacity == dataset.num_transitions  # the authors' capacity
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
    for (name, a), b in zip(agent.agent.state_dict().items(), resumed.agent.state_dict().values()):
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
    # The authors' code (rmrafailov/LOMPO): deterministic agent with ELU, noisy rollouts also in the
    # warm-up, reward at the chosen head's next state, plain KL, sampled posteriors, dataset-sized rings.
    assert (config.agent, config.agent_act, config.rollout_noise, config.warmup_actions) == ("deterministic", "elu", 0.2, "policy")
    assert (config.latent_reward, config.eval_posterior, config.burn_in) == ("chosen_head", "sample", 0)
    assert (config.kl_scale, config.kl_balance, config.free_nats) == (1.0, None, 0.0)
    assert (config.real_buffer_size, config.latent_buffer_size, config.epoch_real_episodes) == (0, 0, 1)
    assert (config.actor_layers, config.critic_layers, config.epoch_length) == (4, 3, 200)
    assert config.precision == "bf16"
    adroit = DataSpec("adroit-pen", (128, 128, 3), 24, 24, 50, 4)
    assert LOMPO.config_for("paper", adroit).deter == 512 and LOMPO.config_for("cpu", adroit).deter < 512
    with pytest.raises(ValueError, match="penalty must be one of"):
        LOMPOConfig(penalty="variance")
    for bad in (dict(agent="td3"), dict(latent_reward="max"), dict(eval_posterior="mode"), dict(warmup_actions="zero"),
                dict(agent_act="gelu2"), dict(kl_balance=1.5), dict(rollout_noise=-0.1), dict(latent_buffer_size=3)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LOMPOConfig(**bad)
    with pytest.raises(UserError, match="precision"):
        LOMPOConfig(precision="fp16")
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


def run_phases(agent, dataset, until_phase: int) -> dict:
    metrics = {}
    for step in range(int(agent.phase_ends[until_phase])):
        metrics = agent.train_step(dataset, step)
    return metrics


def test_real_buffer_is_the_whole_dataset_filtered_from_episode_starts(walker_store):
    agent = smoke_agent(walker_store)
    run_phases(agent, walker_store, 1)  # model, then the real-buffer fill
    buffer, ds = agent.real_buffer, walker_store
    assert buffer.size == buffer.capacity == ds.num_transitions
    data = {k: v[: buffer.size] for k, v in buffer.data.items()}
    row, firsts, first_rows = 0, [], []
    with torch.no_grad():
        first_state = agent.model.deter_step(agent.model.initial(1), torch.zeros(1, agent.spec.action_dim))[0]
    for e in range(ds.num_episodes):
        episode = ds.episode(e, keys=["action", "reward", "is_terminal"])
        T = len(episode["action"]) - 1
        rows = slice(row, row + T)
        # Transition t -> t + 1 takes the action and reward stored at row t + 1, for every row of the episode.
        assert torch.equal(data["action"][rows], torch.as_tensor(episode["action"][1:]))
        assert torch.allclose(data["reward"][rows], torch.as_tensor(episode["reward"][1:], dtype=torch.float32))
        assert torch.equal(data["not_done"][rows], torch.ones(T))
        # One filtered sequence per episode: each next state is the following transition's state ...
        assert torch.equal(data["next_obs"][row: row + T - 1], data["obs"][row + 1: row + T])
        # ... and it starts at the episode's first row from the zero state (the GRU's first output is the same
        # for every episode; only a window starting mid-episode would differ).
        firsts.append(data["obs"][row, agent.model.stoch_dim:])
        first_rows.append(row)
        row += T
    assert row == buffer.size
    for deter in firsts:
        assert torch.equal(deter, firsts[0])
        assert torch.allclose(deter, first_state, atol=2e-3)  # bf16 autocast in the fill
    later = torch.ones(buffer.size, dtype=torch.bool)
    later[first_rows] = False
    mid = data["obs"][later, agent.model.stoch_dim:]
    assert not torch.isclose(mid, first_state, atol=2e-3).all(-1).any()  # no other state looks like a start

    # A block later one more episode (the first, cycling in order) was re-filtered: it replaced its own
    # older copy, so the buffer is still exactly the dataset.
    first_actions = data["action"][: len(ds.episode(0, keys=["action"])["action"]) - 1].clone()
    old_obs = data["obs"][0].clone()
    for step in range(int(agent.phase_ends[1]), int(agent.phase_ends[2]) + agent.config.epoch_length + 1):
        agent.train_step(ds, step)
    assert agent.real_buffer.size == ds.num_transitions
    assert torch.equal(agent.real_buffer.data["action"][: len(first_actions)], first_actions)
    assert not torch.equal(agent.real_buffer.data["obs"][0], old_obs)  # a fresh posterior sample


@pytest.mark.parametrize("latent_reward", ["chosen_head", "mean_of_heads"])
def test_latent_reward_is_the_reward_head_at_the_chosen_heads_next_state(walker_store, latent_reward):
    # lambda 0: the raw reward is stored; fp32, so the stored and recomputed rewards compare closely.
    agent = smoke_agent(walker_store, cls=LMBRL, latent_reward=latent_reward, precision="fp32")
    run_phases(agent, walker_store, 2)
    buffer = agent.latent_buffer
    stored = buffer.data["reward"][: buffer.size]
    with torch.no_grad():
        at_next_state = agent.model.reward(buffer.data["next_obs"][: buffer.size])
    if latent_reward == "chosen_head":
        assert torch.allclose(stored, at_next_state, atol=1e-5)
    else:  # the mean over the K heads' samples is another number
        assert not torch.allclose(stored, at_next_state, atol=1e-3)


# The settings that switch the authors' choices off, one at a time and all together (the project's
# behaviour before the authors' code was read).
SETTINGS = [
    {},
    {"agent": "sac"},
    {"latent_reward": "mean_of_heads"},
    {"eval_posterior": "mean"},
    {"warmup_actions": "uniform", "rollout_noise": 0.0},
    {"kl_balance": 0.8, "free_nats": 3.0},
    {"precision": "fp32"},
    {"agent": "sac", "agent_act": "relu", "latent_reward": "mean_of_heads", "eval_posterior": "mean",
     "warmup_actions": "uniform", "kl_balance": 0.8, "free_nats": 3.0, "burn_in": 2, "rollout_starts": 16,
     "latent_buffer_size": 2_000_000},
]


@pytest.mark.parametrize("overrides", SETTINGS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "authors")
def test_smoke_run_of_each_setting(walker_store, overrides):
    from lompo_bench import envs

    agent = smoke_agent(walker_store, **overrides)
    seen = set()
    for step in range(agent.total_steps()):
        metrics = agent.train_step(walker_store, step)
        assert all(np.isfinite(v) for v in metrics.values()), (step, metrics)
        seen.update(metrics)
    assert ("alpha" in seen) == (agent.config.agent == "sac")
    assert {"penalty_data", "penalty_policy", "penalty_random", "latent_raw_reward"} <= seen
    env = envs.make("walker", image_size=32, seed=0)
    policy = agent.policy()
    obs, _ = env.reset(seed=3)
    for _ in range(3):
        action = policy.act(obs)
        assert action.shape == env.action_space.shape and np.all(np.abs(action) <= 1)
        obs, *_ = env.step(action)


def test_eval_posterior_sample_draws_from_its_own_generator(walker_store):
    from lompo_bench import envs

    agent = smoke_agent(walker_store)
    run_phases(agent, walker_store, 3)
    env = envs.make("walker", image_size=32, seed=0)

    def actions(policy, episodes=2):
        out = []
        for e in range(episodes):
            policy.reset()
            obs, _ = env.reset(seed=e)
            for _ in range(4):
                out.append(policy.act(obs))
                obs, *_ = env.step(out[-1])
        return np.stack(out)

    rng = torch.get_rng_state()
    sampled = actions(agent.policy())
    assert torch.equal(rng, torch.get_rng_state())  # evaluation never draws from the training stream
    assert np.array_equal(sampled, actions(agent.policy()))  # a fresh policy repeats its episodes
    mean = actions(smoke_agent(walker_store, eval_posterior="mean").policy())
    agent.config = dataclasses.replace(agent.config, eval_posterior="mean")
    assert not np.array_equal(sampled, actions(agent.policy()))  # sampling changes what the actor sees
    assert mean.shape == sampled.shape


def write_narrow_action_store(path, episodes: int = 3, steps: int = 30, seed: int = 0):
    """Walker episodes of one rhythmic gait (actions 0.4 sin(0.3 t) per joint plus N(0, 0.05)): a dataset
    whose actions cover a thin slice of [-1, 1]^6, so uniform random actions lie outside it."""
    from lompo_bench import envs
    from lompo_bench.store import Dataset, DatasetWriter

    env = envs.make("walker", image_size=32, seed=seed)
    writer = DatasetWriter.open(path, {"env": envs.env_attrs("walker", 32), "split": "medium-expert",
                                       "collector": {"algorithm": "fixed-gait", "seed": seed}})
    rng = np.random.default_rng(seed)
    amplitude = np.array([0.4, -0.4, 0.2, -0.2, 0.4, -0.4], np.float32)
    for e in range(episodes):
        obs, _ = env.reset(seed=seed + e)
        rows = {k: [v] for k, v in obs.items()}
        rows.update(action=[np.zeros(6, np.float32)], reward=[0.0])
        for t in range(steps):
            action = np.clip(amplitude * np.sin(0.3 * t) + rng.normal(0, 0.05, 6), -1, 1).astype(np.float32)
            obs, reward, *_ = env.step(action)
            for k, v in obs.items():
                rows[k].append(v)
            rows["action"].append(action)
            rows["reward"].append(reward)
        arrays = {k: np.stack(v) for k, v in rows.items()}
        n = steps + 1
        arrays.update(is_first=np.arange(n) == 0, is_last=np.arange(n) == n - 1, is_terminal=np.zeros(n, bool))
        writer.add_episode(arrays)
    writer.finalize()
    return Dataset.open(path)


def test_penalty_is_larger_for_random_actions_than_for_dataset_actions(tmp_path):
    """The penalty contrast on a model trained briefly on a small real dataset: from the same posterior
    states, one imagined step with uniform random actions makes the heads disagree more than with the
    dataset's own actions. Before training there is no contrast (the heads disagree everywhere)."""
    dataset = write_narrow_action_store(tmp_path / "gait.zarr")
    agent = smoke_agent(dataset, seed=0, model_steps=150, model_batch=8, model_length=10)
    batches = [agent._load_windows(dataset, 10_000 + i, stream=9) for i in range(4)]

    def contrast():
        rows = [agent.penalty_contrast(b) for b in batches]
        return {k: float(np.mean([float(r[k]) for r in rows])) for k in rows[0]}

    before = contrast()
    assert before["penalty_random"] == pytest.approx(before["penalty_data"], rel=0.05)
    for step in range(agent.config.model_steps):
        agent.train_step(dataset, step)
    after = contrast()
    assert after["penalty_data"] < 0.5 * before["penalty_data"]  # the heads agree on what the data shows ...
    assert after["penalty_random"] > 1.02 * after["penalty_data"]  # ... and less so off the data
