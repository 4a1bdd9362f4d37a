"""Write the SAC datasets (medium-replay, medium-expert, expert) of one (env, seed, profile).

``collect_sac_split(env, split, ...)`` trains the SAC run if it is not done yet (resuming
from its last checkpoint after a kill; ``sac.py``), then selects the split's episodes
(``splits.py``), renders their images from the recorded physics states at the requested
size (``lompo_bench.envs.render_states``) and appends them episode by episode to a dataset
store. A second split of the same run reuses the trained run and its replay log. A killed
write resumes where the store's last whole episode ended (the store writer's commit record),
and the selection and the expert episodes are deterministic, so the result is the same.

Every store carries in its attributes: ``env`` (with the profile's horizon), ``split``,
``profile``, ``collector`` (algorithm, library version, seed, SAC steps, hyperparameters,
medium point and definitions, the chosen training episodes, run folder) and
``reference_returns`` (``reference.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lompo_bench import paths
from lompo_bench.errors import UserError

from . import sac, splits
from .config import SAC_SPLITS, budget as get_budget, check_env, check_positive
from .reference import reference_returns


def default_image_size(env: str, profile: str) -> int:
    from lompo_bench import envs

    size = get_budget(env, profile).image_size
    return envs.SPECS[env].image_size if size is None else size


def env_block(env: str, profile: str, image_size: int) -> dict:
    from lompo_bench import envs

    block = dict(envs.env_attrs(env, image_size))
    block["horizon"] = sac.horizon_of(env, get_budget(env, profile))
    return block


def finished_attrs(path: Path) -> dict | None:
    """The attributes of a finished (finalized) store at ``path``; None if there is none."""
    from lompo_bench.store.writer import is_store

    if not path.exists() or not is_store(path):
        return None
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return None
    return attrs if attrs.get("complete", False) else None


def check_target(path: Path, overwrite: bool) -> None:
    """An existing complete store is replaced only with ``overwrite``; an incomplete one resumes."""
    if not overwrite and finished_attrs(path) is not None:
        raise UserError(f"{path} already exists; pass --overwrite to replace it, or choose another --out")


def keep_finished(path: Path, env: str, split: str, profile: str) -> bool:
    """True if ``path`` is a finished store of this split made with the profile's SAC budget.

    ``collect ENV --split all`` re-run after an interruption keeps such stores and goes on
    with the rest; a finished store from another SAC budget is an error, never silently kept.
    """
    attrs = finished_attrs(path)
    if attrs is None:
        return False
    made = (attrs.get("split"), attrs.get("profile"), attrs.get("env", {}).get("name"))
    if made != (split, profile, env):
        raise UserError(f"{path} is a finished store of {'/'.join(map(str, made))}, not {split}/{profile}/{env}; "
                        f"pass --overwrite to replace it, or choose another --out")
    steps = attrs.get("collector", {}).get("sac_steps")
    if split in SAC_SPLITS and steps != get_budget(env, profile).sac_steps:
        raise UserError(f"{path} was made from a {steps}-step SAC run, the {profile} profile trains "
                        f"{get_budget(env, profile).sac_steps}; pass --overwrite to rewrite it")
    return True


def _rows_to_arrays(rows: dict[str, np.ndarray], env: str, image_size: int) -> dict[str, np.ndarray]:
    """Dataset arrays of one episode's recorded rows, images rendered from the physics states."""
    from lompo_bench import envs

    arrays = {k: rows[k] for k in ("proprio", "state", "physics", "action", "reward", "is_first", "is_last",
                                   "is_terminal", "shaped_reward") if k in rows}
    arrays["image"] = envs.render_states(env, rows["physics"], image_size)
    return arrays


def collect_sac_split(env: str, split: str, *, profile: str = "paper", seed: int = 0, out: Path | None = None,
                      image_size: int | None = None, overwrite: bool = False, size: int | None = None,
                      codec: str | None = None, progress: bool = True) -> Path:
    """Write one SAC split; returns the store path."""
    from lompo_bench.store import DEFAULT_CODEC, DatasetWriter

    check_env(env)
    sac.check_seed(seed)
    if split not in SAC_SPLITS:
        raise UserError(f"unknown SAC split {split!r}; accepted: {', '.join(SAC_SPLITS)}")
    budget = get_budget(env, profile)
    size = budget.dataset_size if size is None else check_positive("dataset size", size)
    image_size = default_image_size(env, profile) if image_size is None else image_size
    out = Path(out) if out is not None else paths.dataset_path(env, split, profile)
    check_target(out, overwrite)
    env_attrs = env_block(env, profile, image_size)  # validates image_size before any training

    result = sac.train(env, seed, profile, progress=progress)
    folder = sac.run_dir(env, seed, profile)
    horizon = result["horizon"]

    if split == "expert":
        n_episodes = splits.expert_episode_count(size, horizon)
        chosen = None
        log = None
    else:
        log = sac.load_log(folder / "log")
        table = splits.episode_table(log)
        candidates = splits.replay_split(table, split, result["medium"]["step"])
        chosen = splits.select(candidates, size)
        if not chosen:
            raise UserError(f"the SAC run {folder} has no complete episode for {split}; "
                            f"collect with a larger profile")
        n_episodes = len(chosen)
    transitions = n_episodes * horizon if chosen is None else sum(e["transitions"] for e in chosen)

    collector = {
        "algorithm": "sac", "library": f"stable-baselines3 {_sb3_version()}", "seed": seed, "profile": profile,
        "sac_steps": result["sac_steps"], "trained_on": result["trained_on"], "sac_config": result["sac_config"],
        "eval_episodes": result["eval_episodes"], "expert_return": result["expert_return"],
        "medium_point": result["medium"], "split_definition": splits.SPLIT_DEFINITIONS[split],
        "selection": splits.SELECTION_DEFINITION, "requested_size": size, "transitions": transitions,
        "episodes": n_episodes, "run": str(Path("runs") / folder.relative_to(paths.runs_dir())),
        "checkpoint": "final/model.zip",
    }
    if chosen is not None:
        collector["training_episodes"] = [e["episode"] for e in chosen]
    attrs = {"env": env_attrs, "split": split, "profile": profile, "collector": collector,
             "reference_returns": reference_returns(result)}
    writer = DatasetWriter.open(out, attrs, overwrite=overwrite, codec=codec or DEFAULT_CODEC)

    policy = sac.load_final_policy(env, seed, profile) if split == "expert" else None
    sim = sac.make_env(env, get_budget(env, profile)) if split == "expert" else None
    with tqdm(total=n_episodes, initial=writer.num_episodes, unit="episode", desc=f"{env} {split}",
              dynamic_ncols=True, disable=not progress) as bar:
        for i in range(writer.num_episodes, n_episodes):
            if split == "expert":
                rows = play_episode(policy, sim, seed, i, deterministic=False)
            else:
                e = chosen[i]
                rows = {k: v[e["start"]:e["end"]] for k, v in log.items()}
            writer.add_episode(_rows_to_arrays(rows, env, image_size))
            bar.update(1)
    writer.finalize()
    return out


def play_episode(policy, sim, seed: int, index: int, deterministic: bool) -> dict[str, np.ndarray]:
    """Episode ``index`` of the expert stream of a run, recorded like the replay log: reset
    with ``episode_seed(seed, index, stream=1)``, torch seeded with the same number so the
    sampled actions are reproducible."""
    recorded = _Rows()
    wrapper = sac.RecordingStateEnv(sim, seed, recorded, stream=1)
    wrapper.next_episode = index
    torch.manual_seed(sac.episode_seed(seed, index, stream=1))
    state, _ = wrapper.reset()
    done = False
    while not done:
        action, _ = policy.predict(state, deterministic=deterministic)
        state, _, terminated, truncated, _ = wrapper.step(action)
        done = terminated or truncated
    return {k: np.stack([r[k] for r in recorded.rows]) for k in recorded.rows[0]}


class _Rows:
    def __init__(self):
        self.rows = []

    def append(self, row):
        self.rows.append(row)


def _sb3_version() -> str:
    import stable_baselines3

    return stable_baselines3.__version__


def eta_seconds(env: str, profile: str, seed: int, splits_to_write, steps_per_s: float = 80.0,
                frames_per_s: float = 300.0) -> float:
    """A rough up-front estimate: SAC at ~80 agent steps/s on 2 CPU cores (nothing if the run
    is done), evaluation episodes at ~1000 steps/s, and rendering the datasets' frames."""
    b = get_budget(env, profile)
    horizon = sac.horizon_of(env, b)
    train = 0.0
    if sac.load_result(env, seed, profile) is None:
        evals = (b.sac_steps // b.eval_every + 1) * b.eval_episodes * horizon
        train = b.sac_steps / steps_per_s + evals / 1000.0
    frames = sum(b.dataset_size for s in splits_to_write if s in SAC_SPLITS)
    return train + frames / frames_per_s
