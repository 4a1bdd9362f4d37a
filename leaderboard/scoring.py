"""Scores: D4RL's normalized score, and rliable's aggregate (IQM with a stratified bootstrap).

- ``normalized_score(ret, random, expert) = 100 * (ret - random) / (expert - random)``: 0 is
  the random policy, 100 the SAC expert whose return the dataset stores (D4RL's definition).
- ``iqm(scores)``: interquartile mean, the mean of the middle 50% after dropping
  ``floor(0.25 * n)`` scores from each end, exactly as ``scipy.stats.trim_mean(x, 0.25)``
  (which rliable uses). Robust to a few outlier runs, less noisy than the median.
- ``stratified_bootstrap_ci(scores_by_cell)``: rliable's 95% interval: each replicate
  resamples, with replacement, the runs *within each cell* (task), pools them and recomputes
  the IQM; the interval is the 2.5th and 97.5th percentile of the replicates. Cells with more
  seeds weigh more, as in rliable; a cell with a single run contributes it unchanged.

rliable itself is not a dependency (it pulls in arch, pandas, seaborn); these few lines follow
its definitions and are tested against values worked out by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from lompo_bench.errors import UserError

TRIM = 0.25  # fraction cut from each end for the interquartile mean
DEFAULT_REPS = 50_000  # rliable's default number of bootstrap replicates
DEFAULT_CONFIDENCE = 0.95


def normalized_score(ret: float, random: float, expert: float) -> float:
    """100 * (ret - random) / (expert - random): 0 = random policy, 100 = the dataset's expert."""
    values = {"return": ret, "random return": random, "expert return": expert}
    for name, value in values.items():
        if value is None or not math.isfinite(float(value)):
            raise UserError(f"cannot normalize: {name} is {value!r}; accepted: a finite number")
    if float(expert) == float(random):
        raise UserError(f"cannot normalize: expert return equals random return ({expert}); "
                        "accepted: reference returns that differ")
    return 100.0 * (float(ret) - float(random)) / (float(expert) - float(random))


def iqm(scores) -> float:
    """Interquartile mean: ``scipy.stats.trim_mean(scores, 0.25)`` over all values."""
    x = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if x.size == 0:
        raise UserError("interquartile mean of no scores; accepted: at least one score")
    cut = int(TRIM * x.size)
    return float(x[cut:x.size - cut].mean())


def _iqm_rows(samples: np.ndarray) -> np.ndarray:
    """IQM of each row of a (reps, n) array."""
    n = samples.shape[1]
    cut = int(TRIM * n)
    return np.sort(samples, axis=1)[:, cut:n - cut].mean(axis=1)


def bootstrap_iqm_samples(scores_by_cell: Sequence[Sequence[float]], *, reps: int = DEFAULT_REPS,
                          seed: int = 0) -> np.ndarray:
    """``reps`` stratified-bootstrap replicates of the IQM (resampling runs within each cell)."""
    cells = [np.asarray(c, dtype=np.float64).ravel() for c in scores_by_cell]
    cells = [c for c in cells if c.size]
    if not cells:
        raise UserError("bootstrap of no scores; accepted: at least one cell with one run")
    rng = np.random.default_rng(seed)
    # Draw each cell's resample separately, then pool: (reps, total runs).
    pooled = np.concatenate([c[rng.integers(0, c.size, size=(reps, c.size))] for c in cells], axis=1)
    out = np.empty(reps)
    step = max(1, 4_000_000 // pooled.shape[1])  # bound the sort's temporary memory
    for start in range(0, reps, step):
        out[start:start + step] = _iqm_rows(pooled[start:start + step])
    return out


def stratified_bootstrap_ci(scores_by_cell: Sequence[Sequence[float]], *, reps: int = DEFAULT_REPS,
                            confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the stratified-bootstrap IQM, as rliable's `get_interval_estimates`."""
    samples = bootstrap_iqm_samples(scores_by_cell, reps=reps, seed=seed)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Aggregate:
    """One algorithm's aggregate over the cells it has runs in."""

    iqm: float
    ci_low: float
    ci_high: float
    runs: int
    cells: int


def aggregate(scores_by_cell: Mapping[object, Sequence[float]], *, reps: int = DEFAULT_REPS,
              seed: int = 0) -> Aggregate:
    """IQM over all runs of all cells, with its 95% stratified-bootstrap interval."""
    cells = [list(v) for v in scores_by_cell.values() if len(v)]
    pooled = [s for c in cells for s in c]
    low, high = stratified_bootstrap_ci(cells, reps=reps, seed=seed)
    return Aggregate(iqm=iqm(pooled), ci_low=low, ci_high=high, runs=len(pooled), cells=len(cells))
