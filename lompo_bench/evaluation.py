"""Evaluation of a policy in the real environment, from images (plus proprio where present).

`evaluate` runs N episodes with deterministic seeds (episode i resets with `seed + i`), so
two evaluations of the same policy see the same start states and the numbers of different
runs and algorithms are comparable. The policy sees only what a robot would: the `image`
and, where the task has it, `proprio`; the ground-truth `state` never reaches it.
Methods that filter an observation history (LOMPO, SLAC) keep their own latent state
between `act` calls; `policy.reset()` starts each episode. A `BatchPolicy` (every built-in
one) runs its episodes side by side, one env each, with `reset(n)` and `act_batch`.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import UserError

POLICY_KEYS = ("image", "proprio")  # what a policy may look at; `state` is the simulator's secret
# Episodes a `BatchPolicy` runs side by side: a 64 px policy step costs ~1 ms for one frame, ~0.3 ms
# a frame for ten; the envs' own stepping and rendering (~2 ms a step) does not batch.
EVAL_BATCH = 10


def policy_view(obs: dict) -> dict[str, np.ndarray]:
    return {k: obs[k] for k in POLICY_KEYS if k in obs}


def make_eval_env(env: str, *, image_size: int | None = None, horizon: int | None = None, seed: int | None = None):
    """The env a dataset's policy is evaluated in: the dataset's image size and horizon.

    Smoke datasets shorten episodes (their `env.horizon` attribute); the evaluation episodes
    must be as long as those the dataset's reference returns were measured on."""
    import gymnasium as gym

    from lompo_bench import envs

    made = envs.make(env, image_size=image_size, seed=seed)
    if horizon is not None and horizon < envs.SPECS[env].horizon:
        made = gym.wrappers.TimeLimit(made, max_episode_steps=int(horizon))
    return made


def side_by_side(policy, episodes: int, batch: int = EVAL_BATCH) -> int:
    """How many envs `evaluate` steps together for `policy`: up to `batch` for a `BatchPolicy`, else 1."""
    from lompo_bench.algorithms.base import BatchPolicy

    return max(1, min(episodes, batch)) if isinstance(policy, BatchPolicy) else 1


def evaluate(policy, env, *, episodes: int = 10, seed: int = 0, image_size: int | None = None,
             batch: int = EVAL_BATCH) -> dict:
    """Run `episodes` episodes of `policy` (a `lompo_bench.algorithms.base.Policy`) in `env`.

    `env` is an env name (made here with `image_size`, the dataset's, and the env's own
    horizon, `batch` copies of it), a made env (see `make_eval_env`), or a list of made envs.
    A `BatchPolicy` runs as many episodes side by side as there are envs (one forward pass a
    step for all of them); any other policy runs them one at a time in the first env.
    Returns `returns`, `lengths` (per episode), `mean_return`, `std_return` and
    `success_rate` (fraction of episodes with `info["success"]` at any step; None where the
    task does not define success)."""
    from lompo_bench.algorithms.base import BatchPolicy

    if episodes < 1:
        raise UserError(f"evaluation episodes must be >= 1, got {episodes}")
    own_env = isinstance(env, str)
    if own_env:
        width = side_by_side(policy, episodes, batch)
        env = [make_eval_env(env, image_size=image_size, seed=seed) for _ in range(width)]
    made = list(env) if isinstance(env, (list, tuple)) else [env]
    if not made:
        raise UserError("evaluate got an empty list of envs; pass an env name, a made env or a list of them")
    if not isinstance(policy, BatchPolicy):
        made = made[:1]
    import torch

    results = []
    # Small forwards: OpenMP's thread wake-ups cost more than they save (measured: 3x the
    # wall time with 2 threads on a 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for first in range(0, episodes, len(made)):
                seeds = [seed + i for i in range(first, min(episodes, first + len(made)))]
                if isinstance(policy, BatchPolicy):
                    results += _episodes_side_by_side(policy, made[: len(seeds)], seeds)
                else:
                    results.append(_episode(policy, made[0], seeds[0]))
    finally:
        torch.set_num_threads(threads)
        if own_env:
            for e in made:
                e.close()
    returns = [r["return"] for r in results]
    known = [r["success"] for r in results if r["success"] is not None]
    return {
        "returns": returns,
        "lengths": [r["length"] for r in results],
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "success_rate": float(np.mean(known)) if known else None,
    }


class _Tally:
    """One episode's return, length and success (None where the task has no success signal)."""

    def __init__(self, info: dict):
        self.total, self.length, self.success, self.has_success = 0.0, 0, False, "success" in info

    def add(self, reward, info: dict) -> None:
        self.total += float(reward)
        self.length += 1
        if "success" in info:
            self.has_success = True
            self.success = self.success or bool(info["success"])

    def result(self) -> dict:
        return {"return": self.total, "length": self.length, "success": self.success if self.has_success else None}


def _start(env, seed: int):
    obs, info = env.reset(seed=seed)
    env.action_space.seed(seed)
    return obs, _Tally(info)


def _episode(policy, env, seed: int) -> dict:
    obs, tally = _start(env, seed)
    policy.reset()
    done = False
    while not done:
        action = np.asarray(policy.act(policy_view(obs)), dtype=np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        tally.add(reward, info)
        done = terminated or truncated
    return tally.result()


def _episodes_side_by_side(policy, envs: list, seeds: list[int]) -> list[dict]:
    """One episode per env, stepped together. An env whose episode has ended keeps showing its
    last observation to its row (rows never mix, so the others are unaffected) and is not stepped."""
    started = [_start(env, s) for env, s in zip(envs, seeds)]
    obs = [o for o, _ in started]
    tallies = [t for _, t in started]
    policy.reset(len(envs))
    running = [True] * len(envs)
    while any(running):
        views = [policy_view(o) for o in obs]
        actions = np.asarray(policy.act_batch({k: np.stack([v[k] for v in views]) for k in views[0]}),
                             dtype=np.float32)
        for i, env in enumerate(envs):
            if running[i]:
                obs[i], reward, terminated, truncated, info = env.step(actions[i])
                tallies[i].add(reward, info)
                running[i] = not (terminated or truncated)
    return [t.result() for t in tallies]


def finite_or_none(x):
    """JSON has no NaN: map non-finite floats to None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
