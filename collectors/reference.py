"""Reference returns for normalized scores: a uniform-random policy and the SAC expert.

- **random return**: the mean return of the uniform-random policy over ``random_episodes``
  episodes (profile budget: paper 50, cpu 20, smoke 3); episode ``j`` is reset with seed
  ``RANDOM_SEED_BASE + j`` and draws its actions uniformly from [-1, 1] with
  ``numpy.random.default_rng(RANDOM_SEED_BASE + j)``. It depends on the env and the profile's
  episode length only, so it is computed once per (profile, env) and cached under
  ``$LOMPO_BENCH_HOME/runs/reference/<profile>/<env>.json``.
- **expert return**: the mean return of the final SAC policy of the run, acting
  deterministically, over the ``eval_episodes`` fixed-seed evaluation episodes of the run's
  last evaluation (``sac.py``).

Returns are sums of the dataset's ``reward`` (for sawyer-door the sparse success reward);
the ``*_train_return`` fields use the reward SAC learns from (sawyer-door: the shaped one),
which is what the medium point is measured in.
"""

from __future__ import annotations

import json
import os

import numpy as np

from lompo_bench import paths

from .config import budget as get_budget, check_env

RANDOM_SEED_BASE = 20_000

DEFINITION = (
    "random: mean return of a uniform-random policy over {random_episodes} episodes, episode j reset with "
    "seed {random_seed_base}+j and actions drawn from numpy default_rng({random_seed_base}+j); "
    "expert: mean return of the final SAC policy (deterministic, the mean action) over the {eval_episodes} "
    "evaluation episodes of its last evaluation, episode j reset with seed {eval_seed_base}+j; "
    "returns are sums of the dataset's reward over {horizon}-step episodes"
)


def random_returns(env: str, profile: str) -> dict:
    """``{"mean_return", "mean_train_return", "returns", "episodes"}`` of the uniform-random policy (cached)."""
    from .sac import episode_returns, make_env

    check_env(env)
    budget = get_budget(env, profile)
    cache = paths.runs_dir() / "reference" / profile / f"{env}.json"
    if cache.exists():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("episodes") == budget.random_episodes:
                return cached
        except ValueError:
            pass  # recompute a damaged cache
    sim = make_env(env, budget)
    shape = sim.action_space.shape
    result = episode_returns(sim, [RANDOM_SEED_BASE + j for j in range(budget.random_episodes)],
                             lambda obs, rng: rng.uniform(-1.0, 1.0, shape).astype(np.float32))
    sim.close()
    result["episodes"] = budget.random_episodes
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, cache)
    return result


def definition(env: str, profile: str) -> str:
    from .sac import EVAL_SEED_BASE, horizon_of

    budget = get_budget(env, profile)
    return DEFINITION.format(random_episodes=budget.random_episodes, random_seed_base=RANDOM_SEED_BASE,
                             eval_episodes=budget.eval_episodes, eval_seed_base=EVAL_SEED_BASE,
                             horizon=horizon_of(env, budget))


def reference_returns(run_result: dict) -> dict:
    """The ``reference_returns`` attribute of every dataset of a run (interfaces.md)."""
    env, profile = run_result["env"], run_result["profile"]
    return {"random": run_result["random_return"], "expert": run_result["expert_return"],
            "episodes": run_result["eval_episodes"], "random_episodes": run_result["random_episodes"],
            "definition": definition(env, profile)}
