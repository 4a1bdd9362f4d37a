"""The split protocol (paper, Appendix A, after D4RL): which recorded episodes make which dataset.

One SAC run (``sac.py``) serves all three SAC splits. Definitions, with ``E`` the run's
evaluation episodes and returns measured in the reward SAC trains on (``*_train_return``;
the dataset reward except for sawyer-door, where it is Meta-World's shaped reward):

- **expert return**: mean return of the *final* SAC policy acting deterministically over
  the ``E`` fixed-seed episodes of the run's last evaluation.
- **random return**: mean return of the uniform-random policy (``reference.py``).
- **half-expert threshold** = random + 0.5 * (expert - random).
- **medium point**: the agent step of the *first* evaluation whose mean return reaches the
  threshold, among evaluations after the first training episode has ended and at least
  one episode before the end of training (so that both replay splits are non-empty). If
  none qualifies (a run too short to learn, e.g. ``smoke``), the medium point falls back
  to the middle of training and the attributes say ``reached: false``.
- **medium-replay**: the training episodes (as SAC collected them, with its exploration
  noise and the uniform warm-up) that ended at or before the medium point: the replay
  buffer from the start up to half-expert performance.
- **medium-expert**: the training episodes after those, from the medium point to the end
  of training: the "second half" of the replay buffer, split at the medium point, a mixture
  of medium and expert-level behaviour.
- **expert**: fresh episodes of the final *stochastic* SAC policy (actions sampled from the
  tanh-Gaussian), episode ``i`` reset with a seed derived from ``(seed, 1, i)`` and torch
  seeded with it, so the split is reproducible and resumable.

Sizes: each split holds whole episodes, as few as reach the profile's ``dataset_size``
transitions (an episode of T agent steps is T transitions, T+1 rows). A replay split with
more episodes than that keeps evenly spaced episodes across its whole span (episode
``floor((k + 0.5) * n / m)`` for k < m), so it still covers the start-to-medium (or
medium-to-end) range; one with fewer keeps them all and records the smaller size. The
incomplete episode a run may end in is never used.
"""

from __future__ import annotations

import math

import numpy as np

MEDIUM_DEFINITION = (
    "half-expert threshold = random + 0.5 * (expert - random) in the training reward; medium point = agent step "
    "of the first evaluation (deterministic policy, fixed-seed episodes) reaching it, after the first training "
    "episode and before the last; fallback: the middle of training"
)
SPLIT_DEFINITIONS = {
    "medium-replay": "training episodes of the SAC replay log that ended at or before the medium point",
    "medium-expert": "training episodes of the SAC replay log after the medium point, up to the end of training",
    "expert": "fresh episodes of the final SAC policy acting stochastically (sampled actions)",
}
SELECTION_DEFINITION = (
    "whole episodes, the fewest reaching the dataset size in transitions; a longer span keeps evenly spaced "
    "episodes floor((k+0.5)*n/m)"
)


def medium_point(curve: list[dict], random_return: float, expert_return: float, *, min_step: int,
                 max_step: int) -> dict:
    """The medium point of an evaluation curve (rows with ``step`` and ``mean_train_return``)."""
    threshold = random_return + 0.5 * (expert_return - random_return)
    for row in curve:
        if min_step <= row["step"] <= max_step and row["mean_train_return"] >= threshold:
            return {"step": int(row["step"]), "threshold": float(threshold), "reached": True,
                    "eval_return": float(row["mean_train_return"]), "definition": MEDIUM_DEFINITION}
    last = curve[-1]["step"] if curve else 0
    return {"step": int(last // 2), "threshold": float(threshold), "reached": False, "eval_return": None,
            "definition": MEDIUM_DEFINITION}


def episode_table(log: dict[str, np.ndarray], reward_key: str = "reward") -> list[dict]:
    """The complete episodes of a replay log: rows [start, end), agent steps, returns."""
    firsts = np.flatnonzero(log["is_first"])
    lasts = set(np.flatnonzero(log["is_last"]).tolist())
    table = []
    for k, start in enumerate(firsts):
        end = int(firsts[k + 1]) if k + 1 < len(firsts) else len(log["is_first"])
        if end - 1 not in lasts or end - start < 2:
            continue  # the run ended (or was cut) inside this episode
        rewards = log[reward_key][start + 1:end]
        table.append({"start": int(start), "end": int(end), "episode": int(log["episode"][start]),
                      "start_step": int(log["step"][start]), "end_step": int(log["step"][end - 1]),
                      "transitions": int(end - start - 1), "return": float(np.sum(rewards, dtype=np.float64))})
    return table


def replay_split(table: list[dict], split: str, medium_step: int) -> list[dict]:
    """Episodes of ``medium-replay`` or ``medium-expert`` before size selection."""
    if split == "medium-replay":
        return [e for e in table if e["end_step"] <= medium_step]
    if split == "medium-expert":
        return [e for e in table if e["end_step"] > medium_step]
    raise ValueError(split)


def select(episodes: list, size: int, lengths=None) -> list:
    """The fewest evenly spaced whole episodes reaching ``size`` transitions (all if they do not)."""
    lengths = [e["transitions"] for e in episodes] if lengths is None else list(lengths)
    n = len(episodes)
    if n == 0 or sum(lengths) <= size:
        return list(episodes)
    m = max(1, min(n, math.ceil(size / (sum(lengths) / n))))
    while True:
        idx = [int((k + 0.5) * n / m) for k in range(m)]
        if sum(lengths[i] for i in idx) >= size or m == n:
            return [episodes[i] for i in idx]
        m += 1


def expert_episode_count(size: int, horizon: int) -> int:
    """Episodes of the expert split (every episode lasts the full horizon: no task terminates)."""
    return max(1, math.ceil(size / horizon))
