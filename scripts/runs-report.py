#!/usr/bin/env python
"""Seeds of finished runs side by side: scores, noise, and LOMPO's penalty contrast at the end.

    python scripts/runs-report.py ~/.lompo-bench/runs/lompo/cpu/walker/*/seed* \
        ~/.lompo-bench/runs/lmbrl/cpu/walker/*/seed*

Reads each run directory's ``result.json`` (and ``metrics.csv``) as the run wrote them. Prints
one markdown row per run (final normalized score, what the leaderboard publishes; best and
mean of the last three evaluations; wall time; commit) and then one row per (algorithm, env,
split, profile): mean +- sample std of the final normalized score over its seeds. For runs that
log it (LOMPO and LMBRL), the penalty contrast of the last logged row: the mean ensemble
penalty of one imagined step from the same posterior states with the dataset's actions, the
policy's and uniform random actions (a working penalty rises from left to right).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

CONTRAST = ("penalty_data", "penalty_policy", "penalty_random")


def last_contrast(run_dir: Path) -> dict[str, float] | None:
    """The last metrics.csv row that has the three contrast columns filled."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    found = None
    with path.open() as f:
        for row in csv.DictReader(f):
            if all(row.get(k) not in (None, "") for k in CONTRAST):
                found = {"step": int(float(row["step"])), **{k: float(row[k]) for k in CONTRAST}}
    return found


def fmt(x, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with result.json)")
    args = parser.parse_args(argv)
    rows, unfinished = [], []
    for run_dir in args.runs:
        result_path = run_dir / "result.json"
        if not result_path.exists():
            unfinished.append(run_dir)
            continue
        r = json.loads(result_path.read_text())
        rows.append((run_dir, r, last_contrast(run_dir)))

    print("| algorithm | env | split | profile | seed | normalized (final) | best | last-3 mean | "
          "penalty data / policy / random | wall | commit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    cells = defaultdict(list)
    for run_dir, r, contrast in sorted(rows, key=lambda x: (x[1]["algorithm"], x[1]["split"], x[1]["seed"])):
        score = r.get("normalized_score")
        cells[(r["algorithm"], r["env"], r["split"], r["profile"])].append(score)
        pen = ("–" if contrast is None else
               " / ".join(f"{contrast[k]:.3f}" for k in CONTRAST) + f" (step {contrast['step']})")
        print(f"| {r['algorithm']} | {r['env']} | {r['split']} | {r['profile']} | {r['seed']} | {fmt(score)} "
              f"| {fmt((r.get('best') or {}).get('normalized_score'))} "
              f"| {fmt((r.get('last3_mean') or {}).get('normalized_score'))} | {pen} "
              f"| {r.get('wall_time_s', 0) / 60:.0f} min | {str(r.get('commit', '?'))[:7]} |")
    print("\n| algorithm | env | split | profile | seeds | normalized mean +- std |")
    print("|---|---|---|---|---|---|")
    for (algo, env, split, profile), scores in sorted(cells.items()):
        known = [s for s in scores if s is not None]
        mean = statistics.mean(known) if known else None
        std = statistics.stdev(known) if len(known) > 1 else None
        print(f"| {algo} | {env} | {split} | {profile} | {len(known)} | {fmt(mean)} +- {fmt(std)} |")
    for run_dir in unfinished:
        print(f"\nnot finished (no result.json): {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
