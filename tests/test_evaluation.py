"""Evaluation episodes side by side: a `BatchPolicy` in N envs gives what it gives alone."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_latent_model import write_random_store

from lompo_bench import registry
from lompo_bench.algorithms.base import BatchPolicy, DataSpec, Policy
from lompo_bench.evaluation import evaluate, make_eval_env

torch.set_num_threads(1)
HORIZON = 12


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    return {env: write_random_store(root / f"{env}.zarr", env, episodes=2, steps=20)
            for env in ("walker", "dclaw-screw")}  # pixels only; pixels + proprio


def untrained(name: str, dataset):
    cls = registry.get(name)
    spec = DataSpec.from_dataset(dataset)
    return cls(cls.config_for("smoke", spec), spec, device="cpu", seed=3)


class EndsEarly(gym.Wrapper):
    """Terminates after 4, 5, 6, ... steps by reset seed, so the episodes side by side end apart."""

    def reset(self, *, seed=None, options=None):
        self.left = 4 + (seed or 0) % 5
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.left -= 1
        return obs, reward, terminated or self.left <= 0, truncated, info


def eval_envs(env: str, n: int, ends_early: bool = False) -> list:
    made = [make_eval_env(env, image_size=32, horizon=HORIZON, seed=0) for _ in range(n)]
    return [EndsEarly(e) for e in made] if ends_early else made


@pytest.mark.parametrize("name", ["lompo", "lmbrl", "slac", "cql", "bc"])
@pytest.mark.parametrize("env", ["walker", "dclaw-screw"])
def test_episodes_side_by_side_match_episodes_one_at_a_time(name, env, stores):
    algo = untrained(name, stores[env])
    assert isinstance(algo.policy(), BatchPolicy)
    alone, together = eval_envs(env, 1, ends_early=True), eval_envs(env, 3, ends_early=True)
    one = evaluate(algo.policy(), alone, episodes=5, seed=10)  # five episodes, one env: one at a time
    three = evaluate(algo.policy(), together, episodes=5, seed=10)  # rounds of three, then two
    for e in alone + together:
        e.close()
    assert one["lengths"] == three["lengths"] == [4 + (10 + i) % 5 for i in range(5)]
    assert np.allclose(three["returns"], one["returns"], rtol=1e-4, atol=1e-4), (one["returns"], three["returns"])
    assert len(set(np.round(one["returns"], 6))) > 1  # the episodes differ, so the rows were not mixed up


@pytest.mark.parametrize("name", ["lompo", "slac", "bc"])
def test_a_batch_row_acts_as_the_same_episode_alone(name, stores):
    """Row i of `act_batch` after `reset(n)` is the action `act` gives in that episode alone,
    per-episode state and (LOMPO's sampled posterior) per-episode noise included."""
    algo = untrained(name, stores["dclaw-screw"])
    envs = eval_envs("dclaw-screw", 2)
    observations = [[e.reset(seed=s)[0] for e, s in zip(envs, (0, 1))]]
    rng = np.random.default_rng(0)
    for _ in range(3):
        actions = rng.uniform(-1, 1, (2, envs[0].action_space.shape[0])).astype(np.float32)
        observations.append([e.step(a)[0] for e, a in zip(envs, actions)])
    for e in envs:
        e.close()
    view = [[{k: o[k] for k in ("image", "proprio")} for o in step] for step in observations]

    together = algo.policy()
    together.reset(2)  # episodes 1 and 2 of a fresh policy
    batched = [together.act_batch({k: np.stack([o[k] for o in step]) for k in step[0]}) for step in view]
    alone = algo.policy()
    for row in range(2):
        alone.reset()  # episodes 1, then 2
        actions = [alone.act(step[row]) for step in view]
        np.testing.assert_allclose(np.stack([b[row] for b in batched]), np.stack(actions), rtol=1e-5, atol=1e-5)


def test_a_plain_policy_runs_its_episodes_one_at_a_time_in_the_first_env():
    class Counter(Policy):
        """Not a BatchPolicy: one episode at a time, state reset per episode."""

        def reset(self):
            self.t = 0

        def act(self, obs):
            self.t += 1
            return np.full(6, np.cos(self.t + obs["image"].mean() / 10.0), np.float32)

    envs = eval_envs("walker", 2)
    one = evaluate(Counter(), envs[:1], episodes=3, seed=4)
    listed = evaluate(Counter(), envs, episodes=3, seed=4)
    for e in envs:
        e.close()
    assert one == listed and one["lengths"] == [HORIZON] * 3


def test_an_empty_list_of_envs_is_a_one_line_error(stores):
    from lompo_bench.errors import UserError

    with pytest.raises(UserError, match="empty list of envs"):
        evaluate(untrained("bc", stores["walker"]).policy(), [], episodes=2)


def test_act_batch_rejects_a_batch_of_another_size(stores):
    policy = untrained("lompo", stores["walker"]).policy()
    policy.reset(2)
    with pytest.raises(ValueError, match=r"3 observations after reset\(2\)"):
        policy.act_batch({"image": np.zeros((3, 32, 32, 3), np.uint8)})
