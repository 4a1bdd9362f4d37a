#!/usr/bin/env python
"""How a SAC collector run learned: its deterministic evaluations and its stochastic training episodes.

    python scripts/sac-report.py $LOMPO_BENCH_HOME/runs/sac/cpu/adroit-pen/seed0 [--bin 10000] [--above 8000]

Prints, per bin of agent steps, the training episodes SAC recorded in its replay log (``log/``,
actions sampled from its policy, the uniform warm-up first): how many ended in the bin, their
mean return, and for Adroit Pen gymnasium-robotics' success criterion (the share of episodes
that end with the pen at the goal and the share that reach it at least once; the criterion is
``pen_at_goal`` of ``scripts/dataset-report.py``); then the evaluation curve (``eval.csv``):
how many evaluations reach ``--above`` (in all, and in the second half of training) and the last
five. An unfinished run can be read while it trains (the log chunks are written whole).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np


def _pen_at_goal():
    path = Path(__file__).with_name("dataset-report.py")
    spec = importlib.util.spec_from_file_location("dataset_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pen_at_goal


def read_log(run: Path) -> dict[str, np.ndarray]:
    chunks = [np.load(f) for f in sorted((run / "log").glob("chunk_*.npz"))]
    if not chunks:
        raise SystemExit(f"{run}/log holds no replay-log chunks: not a SAC collector run, or it has not logged yet")
    return {k: np.concatenate([c[k] for c in chunks]) for k in ("state", "reward", "episode", "step", "is_last")}


def _steps(n: int) -> str:
    return f"{n // 1000}k" if n and n % 1000 == 0 else str(n)


def training_episodes(log: dict, bin_steps: int, pen: bool) -> list[dict]:
    at_goal = _pen_at_goal()(log["state"]) if pen else None
    # Group rows by episode in one pass: a stable sort keeps each episode's rows in order.
    order = np.argsort(log["episode"], kind="stable")
    starts = np.flatnonzero(np.diff(log["episode"][order])) + 1
    bins: dict[int, list] = {}
    for rows in np.split(order, starts):
        if not log["is_last"][rows].any():
            continue  # the episode being collected when the log was read
        end = int(log["step"][rows].max())
        entry = [float(log["reward"][rows].sum())]
        if pen:
            entry += [bool(at_goal[rows][-1]), bool(at_goal[rows].any())]
        bins.setdefault(end // bin_steps, []).append(entry)
    out = []
    for b in sorted(bins):
        values = np.array(bins[b], float)
        row = {"steps": f"{_steps(b * bin_steps)}-{_steps((b + 1) * bin_steps)}", "episodes": len(values),
               "mean return": f"{values[:, 0].mean():.1f}"}
        if pen:
            row["end at goal"] = f"{100 * values[:, 1].mean():.0f}%"
            row["reach goal"] = f"{100 * values[:, 2].mean():.0f}%"
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a SAC run directory (runs/sac/<profile>/<env>/seed<N>)")
    parser.add_argument("--bin", type=int, default=10_000, help="agent steps per row (default 10000)")
    parser.add_argument("--above", type=float, default=None,
                        help="count the evaluations whose mean return reaches this (e.g. 8000: the pen held at the goal)")
    args = parser.parse_args()
    env = args.run.parent.name
    rows = training_episodes(read_log(args.run), args.bin, pen=env == "adroit-pen")
    print(f"{args.run}: training episodes (stochastic policy)\n")
    print("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    with open(args.run / "eval.csv") as f:
        curve = [(int(r["step"]), float(r["mean_return"])) for r in csv.DictReader(f)]
    result = args.run / "result.json"
    status = json.loads(result.read_text()) if result.exists() else {}
    above = ""
    if args.above is not None:
        reached = [step for step, r in curve if r >= args.above]
        late = sum(step >= curve[-1][0] // 2 for step in reached)
        above = f"; {len(reached)} at or above {args.above:g}, {late} of them in the second half"
    finished = f"; finished: expert return {status['expert_return']:.1f}" if "expert_return" in status else ""
    print(f"\nevaluations (deterministic): {len(curve)}, last at {curve[-1][0]} steps{above}; "
          f"last five: {', '.join(f'{r:.1f}' for _, r in curve[-5:])}{finished}")


if __name__ == "__main__":
    main()
