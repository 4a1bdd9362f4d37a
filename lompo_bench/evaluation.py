"""Evaluation of a policy in the real environment, from images (plus proprio where present).

`evaluate` runs N episodes with deterministic seeds (episode i resets with `seed + i`), so
two evaluations of the same policy see the same start states and the numbers of different
runs and algorithms are comparable. The policy sees only what a robot would: the `image`
and, where the task has it, `proprio`; the ground-truth `state` never reaches it.
Methods that filter an observation history (LOMPO, SLAC) keep their own latent state
between `act` calls; `policy.reset()` starts each episode.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import UserError

POLICY_KEYS = ("image", "proprio")  # what a policy may look at; `state` is the simulator's secret


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


def evaluate(policy, env, *, episodes: int = 10, seed: int = 0, image_size: int | None = None) -> dict:
    """Run `episodes` episodes of `policy` (a `lompo_bench.algorithms.base.Policy`) in `env`.

    `env` is an env name (made here with `image_size`, the dataset's, and the env's own
    horizon) or a made env (see `make_eval_env`).
    Returns `returns`, `lengths` (per episode), `mean_return`, `std_return` and
    `success_rate` (fraction of episodes with `info["success"]` at any step; None where the
    task does not define success)."""
    if episodes < 1:
        raise UserError(f"evaluation episodes must be >= 1, got {episodes}")
    own_env = isinstance(env, str)
    if own_env:
        env = make_eval_env(env, image_size=image_size, seed=seed)
    import torch

    returns, lengths, successes = [], [], []
    # One observation at a time: OpenMP's thread wake-ups cost more than they save on such
    # small forwards (measured: 3x the wall time with 2 threads on a 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for i in range(episodes):
                obs, info = env.reset(seed=seed + i)
                env.action_space.seed(seed + i)
                policy.reset()
                total, length, success, has_success = 0.0, 0, False, "success" in info
                done = False
                while not done:
                    action = np.asarray(policy.act(policy_view(obs)), dtype=np.float32)
                    obs, reward, terminated, truncated, info = env.step(action)
                    total += float(reward)
                    length += 1
                    if "success" in info:
                        has_success = True
                        success = success or bool(info["success"])
                    done = terminated or truncated
                returns.append(total)
                lengths.append(length)
                successes.append(success if has_success else None)
    finally:
        torch.set_num_threads(threads)
        if own_env:
            env.close()
    known = [s for s in successes if s is not None]
    return {
        "returns": returns,
        "lengths": lengths,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "success_rate": float(np.mean(known)) if known else None,
    }


def finite_or_none(x):
    """JSON has no NaN: map non-finite floats to None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None
