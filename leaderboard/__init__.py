"""lompo_bench.leaderboard: normalized scores, the append-only CSV of runs, Table I regenerated.

    from lompo_bench.leaderboard import normalized_score, publish, read_rows, render
    publish(["~/.lompo-bench/runs/lompo/cpu/walker/expert/seed0"])   # -> PublishReport
    print(render(read_rows(), "md", profile="cpu"))

Files next to this module: ``leaderboard.csv`` (published runs, append-only),
``paper_table1.csv`` (the paper's Table I: reference data, not results of this code) and
``RESULTS.md`` (the table rendered by ``make table``).
"""

from .csv_store import COLUMNS, PublishReport, default_csv_path, publish, read_rows, run_id
from .scoring import aggregate, iqm, normalized_score, stratified_bootstrap_ci
from .table import build, load_paper_table, render

__all__ = ["COLUMNS", "PublishReport", "aggregate", "build", "default_csv_path", "iqm", "load_paper_table",
           "normalized_score", "publish", "read_rows", "render", "run_id", "stratified_bootstrap_ci"]
