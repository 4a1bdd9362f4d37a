"""Shared fixtures: a throwaway LOMPO_BENCH_HOME and real smoke datasets, made once per session.

- `lompo_home`: a temporary `$LOMPO_BENCH_HOME` for the rest of the session, so tests never
  read or write the user's `~/.lompo-bench`.
- `smoke_dataset(env, split="random")`: the path of a real smoke-profile dataset store of
  `env` at its default location under `lompo_home` (so `lompo-bench run ... --profile smoke
  --split random` finds it). `random` is written by the real random collector in seconds;
  the SAC splits run the real smoke SAC collection (tens of seconds: use in `slow` tests).
- `write_scripted_store(path, env, policy, ...)`: a store of episodes acted by
  `policy(obs, rng) -> action`, with made-up reference returns; for tests that need actions
  that depend on what the observation shows (e.g. behaviour cloning).
"""

from __future__ import annotations

import os
from pathlib import Path

# Tests use tiny networks: one BLAS/OpenMP thread is fastest, and two threads on a 2-core
# machine that is doing anything else slow small ops ~100x. Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

SMOKE_EPISODES = 4  # random-split episodes of the smoke horizon (40 agent steps)


@pytest.fixture(scope="session")
def lompo_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("lompo-bench-home")
    patch = pytest.MonkeyPatch()
    patch.setenv("LOMPO_BENCH_HOME", str(home))
    yield home
    patch.undo()


@pytest.fixture(scope="session")
def smoke_dataset(lompo_home):
    """Factory: `smoke_dataset("walker") -> Path` of a finished smoke store (made once)."""
    from lompo_bench import paths

    def make(env: str = "walker", split: str = "random") -> Path:
        path = paths.dataset_path(env, split, "smoke")
        if not (path / "zarr.json").exists():
            if split == "random":
                from lompo_bench.collectors.random_policy import collect_random

                collect_random(env, profile="smoke", seed=0, episodes=SMOKE_EPISODES, progress=False)
            else:
                from lompo_bench.collectors.collect import collect_sac_split

                collect_sac_split(env, split, profile="smoke", seed=0, progress=False)
        return path

    return make


def write_scripted_store(path, env_name: str, policy, *, episodes: int = 4, steps: int = 40, image_size: int = 32,
                         seed: int = 0, split: str = "scripted", reference_returns=(0.0, 100.0)) -> Path:
    """A finished store of `episodes` episodes (at most `steps` agent steps each) in the real
    env, acted by `policy(obs, rng) -> action`, where `obs` includes the ground-truth `state`."""
    from lompo_bench import envs
    from lompo_bench.store import DatasetWriter

    env = envs.make(env_name, image_size=image_size, seed=seed)
    attrs = dict(envs.env_attrs(env_name, image_size))
    attrs["horizon"] = min(steps, envs.SPECS[env_name].horizon)
    writer = DatasetWriter.open(path, {"env": attrs, "split": split,
                                       "collector": {"algorithm": "scripted test policy", "seed": seed}})
    rng = np.random.default_rng(seed)
    action_dim = env.action_space.shape[0]
    for episode in range(episodes):
        obs, info = env.reset(seed=seed + episode)
        rows = [(obs, info, np.zeros(action_dim, np.float32), 0.0, False)]
        for _ in range(steps):
            action = np.asarray(policy(obs, rng), dtype=np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            rows.append((obs, info, action, reward, terminated))
            if terminated or truncated:
                break
        n = len(rows)
        arrays = {k: np.stack([r[0][k] for r in rows]) for k in rows[0][0]}
        arrays.update(physics=np.stack([r[1]["physics"] for r in rows]),
                      action=np.stack([r[2] for r in rows]),
                      reward=np.array([r[3] for r in rows], np.float32),
                      is_terminal=np.array([r[4] for r in rows]),
                      is_first=np.arange(n) == 0, is_last=np.arange(n) == n - 1)
        writer.add_episode(arrays)
    random_return, expert_return = reference_returns
    writer.update_attrs(reference_returns={"random": random_return, "expert": expert_return, "episodes": episodes,
                                           "definition": "made-up test values"})
    writer.finalize()
    env.close()
    return Path(path)
