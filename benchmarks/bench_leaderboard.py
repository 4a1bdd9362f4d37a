"""How long the leaderboard takes on a full board: publishing runs and rendering Table I.

A synthetic board in a temporary directory (never the real leaderboard.csv): every paper cell
x 5 algorithms x 5 seeds = 275 runs, published with --no-verify (dataset verification costs
whatever reading the dataset costs, measured by the store's own benchmark). Then the Table I
render (stratified bootstrap, 50,000 replicates per algorithm) and the plot.

    python benchmarks/bench_leaderboard.py        # prints a table, writes bench-output/leaderboard.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lompo_bench import provenance
from lompo_bench.leaderboard import csv_store, scoring, table
from lompo_bench.leaderboard.plot import plot

SEEDS = 5


def synthetic_runs(root: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    runs = []
    for (env, split) in table.load_paper_table():
        for algo in table.ALGORITHMS:
            for seed in range(SEEDS):
                ret = float(rng.uniform(0, 1000))
                result = {
                    "algorithm": algo, "env": env, "split": split, "seed": seed, "profile": "cpu",
                    "raw_return": ret, "return_std": 1.0, "normalized_score": scoring.normalized_score(ret, 0.0, 1000.0),
                    "success_rate": None, "eval_episodes": 10, "gradient_steps": 1000, "train_steps": 1000,
                    "wall_time_s": 1.0, "dataset_path": "/absent.zarr", "dataset_id": f"{env}/{split}@cpu",
                    "dataset_checksum": "x", "random_return": 0.0, "expert_return": 1000.0, "commit": "bench",
                    "package_version": "0", "hardware": "bench", "device": "cpu",
                    "timestamp": "2026-01-01T00:00:00+00:00", "config": {},
                }
                run = root / f"{algo}-{env}-{split}-{seed}"
                run.mkdir()
                (run / "result.json").write_text(json.dumps(result))
                runs.append(run)
    return runs


def main():
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = synthetic_runs(root)
        out = root / "leaderboard.csv"
        t = time.perf_counter()
        report = csv_store.publish(runs, out, verify=False)
        figures["publish_s"] = time.perf_counter() - t
        assert len(report.published) == len(runs), report.refused[:3]
        t = time.perf_counter()
        csv_store.publish(runs[:1], out, verify=False)  # duplicate check against the full CSV
        figures["refuse_duplicate_s"] = time.perf_counter() - t
        rows = csv_store.read_rows(out)
        t = time.perf_counter()
        table.render(rows, "md")
        figures["table_md_s"] = time.perf_counter() - t
        t = time.perf_counter()
        plot(table.build(rows), root / "board.png")
        figures["plot_s"] = time.perf_counter() - t
    figures["runs"] = len(runs)

    print(f"{'measure':<22}{'value':>10}")
    print(f"{'runs on the board':<22}{figures['runs']:>10d}")
    for key in ("publish_s", "refuse_duplicate_s", "table_md_s", "plot_s"):
        print(f"{key:<22}{figures[key]:>10.3f}")
    bench_dir = Path(__file__).resolve().parent.parent / "bench-output"
    bench_dir.mkdir(exist_ok=True)
    (bench_dir / "leaderboard.json").write_text(json.dumps(
        {**figures, "hardware": provenance.hardware(), "commit": provenance.git_commit(),
         "created": provenance.now()}, indent=2))


if __name__ == "__main__":
    main()
