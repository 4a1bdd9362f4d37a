"""The ``random`` split: episodes of a uniform-random policy, written to a dataset store.

Episode ``i`` of a collection with seed ``s`` is reset with ``episode_seed(s, i, stream=2)``
and draws its actions uniformly from [-1, 1] with ``numpy.random.default_rng`` of the same
number, so every episode depends on ``(s, i)`` only: a collection killed at any moment and
re-run resumes at the store's last whole episode and ends equal to an uninterrupted one.

Sizes follow the profile's collection budget (``config.py``): ``dataset_size`` transitions
in whole episodes of the profile's horizon, at the profile's image size, unless
``episodes`` / ``image_size`` say otherwise. Rows follow DESIGN.md's convention; extra
per-row arrays are ``success`` (where the task defines it) and ``shaped_reward`` (Sawyer).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from lompo_bench import paths
from lompo_bench.errors import UserError

from .config import budget as get_budget, check_env

RANDOM_STREAM = 2  # reset-seed stream of random episodes (0 and 1 are the SAC run's)
POLICY = "uniform random actions in [-1, 1]; episode i reset with episode_seed(seed, i, stream=2), " \
         "actions from numpy default_rng of the same seed"


def episode_seed(seed: int, index: int) -> int:
    from .sac import episode_seed as _episode_seed

    return _episode_seed(seed, index, stream=RANDOM_STREAM)


def make_env(env: str, image_size: int, horizon: int):
    """The image env, cut to ``horizon`` agent steps when that is shorter than the task's."""
    import gymnasium as gym

    from lompo_bench import envs

    sim = envs.make(env, image_size=image_size)
    if horizon < envs.SPECS[env].horizon:
        sim = gym.wrappers.TimeLimit(sim, max_episode_steps=horizon)
    return sim


def random_episode(sim, seed: int, index: int) -> dict[str, np.ndarray]:
    """Episode ``index`` of the random policy: T+1 rows per array (DESIGN.md)."""
    s = episode_seed(seed, index)
    rng = np.random.default_rng(s)
    obs, info = sim.reset(seed=s)
    shape = sim.action_space.shape
    rows = [_row(obs, info, np.zeros(shape, np.float32), 0.0, first=True)]
    done = False
    while not done:
        action = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
        obs, reward, terminated, truncated, info = sim.step(action)
        done = terminated or truncated
        rows.append(_row(obs, info, action, reward, terminal=terminated, last=done))
    # The reset row lacks step-only info keys (Sawyer's shaped_reward): it gets their zero.
    keys = dict.fromkeys(k for r in rows for k in r)
    zero = {k: np.zeros_like(next(r[k] for r in rows if k in r)) for k in keys}
    return {k: np.stack([r.get(k, zero[k]) for r in rows]) for k in keys}


def _row(obs, info, action, reward, *, first=False, terminal=False, last=False) -> dict:
    row = {k: obs[k] for k in ("image", "proprio", "state") if k in obs}
    row.update(physics=info["physics"], action=action, reward=np.float32(reward),
               is_first=first, is_last=last, is_terminal=terminal)
    if "success" in info:
        row["success"] = bool(info["success"])
    if "shaped_reward" in info:
        row["shaped_reward"] = np.float32(info["shaped_reward"])
    return row


def default_episodes(env: str, profile: str) -> int:
    from .sac import horizon_of

    b = get_budget(env, profile)
    return math.ceil(b.dataset_size / horizon_of(env, b))


def collect_random(env: str, *, profile: str = "paper", seed: int = 0, episodes: int | None = None,
                   out: Path | None = None, image_size: int | None = None, overwrite: bool = False,
                   codec: str | None = None, progress: bool = True) -> Path:
    """Write (or resume) the random split of ``env``; returns the store path."""
    from lompo_bench import envs
    from lompo_bench.store import DEFAULT_CODEC, DatasetWriter

    from .reference import definition, random_returns
    from .sac import horizon_of, load_result

    check_env(env)
    b = get_budget(env, profile)
    horizon = horizon_of(env, b)
    episodes = default_episodes(env, profile) if episodes is None else episodes
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise UserError(f"--episodes must be a positive integer, got {episodes!r}")
    if image_size is None:
        image_size = b.image_size or envs.SPECS[env].image_size
    out = Path(out) if out is not None else paths.dataset_path(env, "random", profile)
    _refuse_complete(out, overwrite)

    env_block = dict(envs.env_attrs(env, image_size))
    env_block["horizon"] = horizon
    attrs = {"env": env_block, "split": "random", "profile": profile,
             "collector": {"algorithm": "random", "policy": POLICY, "seed": seed}}
    writer = DatasetWriter.open(out, attrs, overwrite=overwrite, codec=codec or DEFAULT_CODEC)
    writer.update_attrs(target_episodes=episodes)
    sim = make_env(env, image_size, horizon)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=episodes, initial=min(writer.num_episodes, episodes), unit="episode",
                   desc=f"{env} random", dynamic_ncols=True)
    try:
        for i in range(writer.num_episodes, episodes):
            writer.add_episode(random_episode(sim, seed, i))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        sim.close()

    ref = random_returns(env, profile)
    sac = load_result(env, seed, profile)  # the expert of the same (env, seed, profile) SAC run
    writer.update_attrs(reference_returns={
        "random": ref["mean_return"], "expert": sac["expert_return"] if sac else None,
        "episodes": ref["episodes"], "definition": definition(env, profile)})
    writer.finalize()
    return out


def _refuse_complete(path: Path, overwrite: bool) -> None:
    """A finished store is never appended to or replaced without ``overwrite``; an unfinished one resumes."""
    from lompo_bench.store import read_attrs

    if overwrite or not (path / "zarr.json").is_file():
        return
    try:
        complete = read_attrs(path).get("complete")
    except UserError:
        return  # the writer says what is wrong with it
    if complete:
        raise UserError(f"{path} already holds a finished dataset; pass --overwrite to replace it, "
                        f"or choose another --out")
