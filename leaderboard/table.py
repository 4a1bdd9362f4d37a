"""Table I regenerated from the leaderboard CSV, beside the paper's numbers.

Rows are (env, split) in the paper's order (a cell the paper lacks, such as Sawyer Door
medium-replay, appears in its place when it has runs); columns are LOMPO, LMBRL, Offline SLAC, CQL, BC
(then any third-party algorithm with rows). Each cell is ``mean ± std (n)`` of the normalized
score over seeds (sample std; ``n`` seeds), with the paper's value beside it.

Profiles are never mixed: the rows are grouped by profile (``paper``, then ``cpu``, then
``smoke``), and each block is labelled with its profile and has its own aggregate: per
algorithm, the interquartile mean of the normalized scores over all its cells and seeds with
a 95% stratified-bootstrap interval (`scoring`), and the paper's IQM over the same cells.

A cell marked ``†`` has runs published with ``--no-verify`` (dataset not re-verified).
Scores on different datasets never average: where a profile's (env, split) has runs on more than
one version of its dataset (different content checksums, e.g. collected by a collector that
rounds differently, so its SAC run diverged), each version is a row of its own, its split
labelled with the checksum (``medium-expert (data 853c5646)``).
A seed published more than once for the same (algorithm, env, split, profile) counts once,
with its latest row (by run timestamp), so re-running a seed replaces it in the table while
the CSV keeps every row.

With no rows the table shows the paper's numbers and empty cells for ours, saying so.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lompo_bench.errors import choice_error
from lompo_bench.profiles import PROFILES

from .scoring import Aggregate, aggregate, iqm

PAPER_TABLE = Path(__file__).with_name("paper_table1.csv")
ALGORITHMS = ("lompo", "lmbrl", "slac", "cql", "bc")  # the paper's column order
ALGORITHM_TITLES = {"lompo": "LOMPO", "lmbrl": "LMBRL", "slac": "Offline SLAC", "cql": "CQL", "bc": "BC"}
ENV_TITLES = {"walker": "Walker Walk", "dclaw-screw": "D'Claw Screw", "adroit-pen": "Adroit Pen",
              "sawyer-door": "Door Open"}
ENV_ORDER = tuple(ENV_TITLES)
SPLIT_ORDER = ("medium-replay", "medium-expert", "expert")
PROFILE_ORDER = ("paper", "cpu", "smoke")  # most meaningful block first
PROFILE_NOTES = {
    "paper": "the paper's dataset sizes and networks",
    "cpu": "reduced datasets and networks, 15-40 min a run on one CPU core; not comparable "
           "to the paper's numbers",
    "smoke": "seconds-long runs that check the pipeline works; the scores mean nothing (the smoke "
             "datasets' SAC 'expert' is barely trained, and the policies take a handful of steps)",
}
FORMATS = ("md", "csv", "latex")
EMPTY = "–"
UNVERIFIED = "†"


def title(algorithm: str) -> str:
    return ALGORITHM_TITLES.get(algorithm, algorithm)


def load_paper_table(path: Path = PAPER_TABLE) -> dict[tuple[str, str], dict[str, float]]:
    """{(env, split): {algorithm: score}} in the paper's row order (`#` lines are comments)."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    by_title = {v: k for k, v in ALGORITHM_TITLES.items()}
    table = {}
    for row in csv.DictReader(lines):
        table[(row["env"], row["split"])] = {by_title[k]: float(v) for k, v in row.items()
                                             if k in by_title}
    return table


@dataclass
class Cell:
    scores: list[float]
    unverified: int = 0  # runs published with --no-verify (dataset not re-checked)

    @property
    def n(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float | None:
        return float(np.std(self.scores, ddof=1)) if self.n > 1 else None


@dataclass
class Block:
    """The table of one profile (``profile=None``: no runs published yet)."""

    profile: str | None
    cells: list[tuple[str, str]]
    algorithms: list[str]
    ours: dict[tuple[str, str, str], Cell]  # (algorithm, env, split) -> scores over seeds
    paper: dict[tuple[str, str], dict[str, float]]
    aggregates: dict[str, Aggregate] = field(default_factory=dict)
    paper_iqm: dict[str, float] = field(default_factory=dict)  # over the cells we have runs in


def _when(timestamp: str) -> datetime:
    when = datetime.fromisoformat(timestamp)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)  # naive stamps are UTC


def latest_per_seed(rows: list[dict]) -> list[dict]:
    """One row per (profile, algorithm, env, split, seed): the one with the latest timestamp."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["profile"], row["algorithm"], row["env"], row["split"], row["seed"])
        if key not in best or _when(row["timestamp"]) >= _when(best[key]["timestamp"]):
            best[key] = row
    return list(best.values())


def _cell_order(cell: tuple[str, str]) -> tuple:
    """The paper's order: env by env, splits medium-replay, medium-expert, expert; unknown ones last."""
    env, split = cell
    env_rank = ENV_ORDER.index(env) if env in ENV_ORDER else len(ENV_ORDER)
    split_rank = SPLIT_ORDER.index(base_split(split)) if base_split(split) in SPLIT_ORDER else len(SPLIT_ORDER)
    return (env_rank, env, split_rank, split)


def split_label(split: str, checksum: str) -> str:
    return f"{split} (data {checksum[:8]})"


def base_split(label: str) -> str:
    """The split of a row label (`split_label` adds the dataset version)."""
    return label.split(" (data ", 1)[0]


def label_dataset_versions(rows: list[dict]) -> list[dict]:
    """Rows whose (profile, env, split) spans several dataset checksums get their split labelled
    with the checksum (copies; the others are returned as they are)."""
    versions: dict[tuple, list[str]] = {}
    for r in sorted(rows, key=lambda r: _when(r["timestamp"])):
        seen = versions.setdefault((r["profile"], r["env"], r["split"]), [])
        if r["dataset_checksum"] not in seen:
            seen.append(r["dataset_checksum"])
    return [r if len(versions[(r["profile"], r["env"], r["split"])]) == 1
            else {**r, "split": split_label(r["split"], r["dataset_checksum"])} for r in rows]


def build(rows: list[dict], profile: str | None = None, *, reps: int = 50_000) -> list[Block]:
    """Blocks of the table, one per profile present (or just ``profile``)."""
    if profile is not None and profile not in PROFILES:
        raise choice_error("profile", profile, PROFILES)
    paper = load_paper_table()
    paper_cells = list(paper)
    rows = latest_per_seed(label_dataset_versions(rows))
    profiles = [profile] if profile else [p for p in PROFILE_ORDER if any(r["profile"] == p for r in rows)]
    if not profiles:
        profiles = [None]
    blocks = []
    for prof in profiles:
        mine = [r for r in rows if r["profile"] == prof]
        ours: dict[tuple[str, str, str], Cell] = {}
        for r in sorted(mine, key=lambda r: r["seed"]):
            cell = ours.setdefault((r["algorithm"], r["env"], r["split"]), Cell([]))
            cell.scores.append(r["normalized_score"])
            cell.unverified += not r["dataset_verified"]
        versioned = {(e, s) for _, e, s in ours if base_split(s) != s}
        shown_paper = set(paper_cells) - {(e, base_split(s)) for e, s in versioned}
        cells = sorted(shown_paper | {(e, s) for _, e, s in ours}, key=_cell_order)
        extra = sorted({a for a, _, _ in ours} - set(ALGORITHMS))
        # A versioned row shows the paper's value of its split.
        block_paper = {**paper, **{(e, s): paper[(e, base_split(s))] for e, s in versioned if (e, base_split(s)) in paper}}
        block = Block(profile=prof, cells=cells, algorithms=list(ALGORITHMS) + extra, ours=ours, paper=block_paper)
        for algo in block.algorithms:
            by_cell = {(e, s): c.scores for (a, e, s), c in ours.items() if a == algo}
            if not by_cell:
                continue
            block.aggregates[algo] = aggregate(by_cell, reps=reps)
            paper_values = [block_paper[c][algo] for c in by_cell if c in block_paper and algo in block_paper[c]]
            if paper_values:
                block.paper_iqm[algo] = iqm(paper_values)
        blocks.append(block)
    return blocks


# ---------------------------------------------------------------------------------------------
# rendering


def _num(x: float | None) -> str:
    return EMPTY if x is None else f"{x:.1f}"


def cell_text(cell: Cell | None, pm: str = "±") -> str:
    if cell is None or cell.n == 0:
        return EMPTY
    mark = UNVERIFIED if cell.unverified else ""
    if cell.std is None:
        return f"{cell.mean:.1f} ({cell.n}){mark}"
    return f"{cell.mean:.1f} {pm} {cell.std:.1f} ({cell.n}){mark}"


def _block_heading(block: Block) -> str:
    if block.profile is None:
        return "No runs published yet: the 'ours' cells are empty; the paper columns are its Table I"
    return f"Profile `{block.profile}`: {PROFILE_NOTES.get(block.profile, '')}"


def _md_block(block: Block) -> list[str]:
    out = [f"## {_block_heading(block)}", ""]
    head = ["Environment", "Dataset"]
    for algo in block.algorithms:
        head += [title(algo), "paper"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * 2 + "---:|" * (2 * len(block.algorithms)))
    for env, split in block.cells:
        line = [ENV_TITLES.get(env, env), split]
        for algo in block.algorithms:
            line.append(cell_text(block.ours.get((algo, env, split))))
            line.append(_num(block.paper.get((env, split), {}).get(algo)))
        out.append("| " + " | ".join(line) + " |")
    out.append("")
    if block.aggregates:
        out += ["Aggregate over cells and seeds: interquartile mean (IQM) of the normalized score "
                "with a 95% stratified-bootstrap confidence interval (rliable's definition); the "
                "paper's IQM is over the same cells (those of them in the paper's table).", "",
                "| Algorithm | IQM | 95% CI | runs | cells | paper IQM (same cells) |",
                "|---|---:|---:|---:|---:|---:|"]
        for algo, agg in block.aggregates.items():
            out.append(f"| {title(algo)} | {agg.iqm:.1f} | [{agg.ci_low:.1f}, {agg.ci_high:.1f}] | "
                       f"{agg.runs} | {agg.cells} | {_num(block.paper_iqm.get(algo))} |")
        out.append("")
    return out


def render_md(blocks: list[Block], source: str = "leaderboard/leaderboard.csv") -> str:
    out = ["# Results: Table I of the LOMPO paper, regenerated", "",
           f"Generated by `make table` (`lompo-bench leaderboard table --format md`) from `{source}`; "
           "do not edit by hand. Only runs published with `lompo-bench leaderboard publish` appear.",
           "",
           "Normalized score = 100 * (return - random) / (expert - random), with the reference "
           "returns stored in each dataset (D4RL's definition). Each cell: mean ± sample std over "
           "seeds (number of seeds); the `paper` column beside it is the paper's Table I "
           "(`leaderboard/paper_table1.csv`: reference data, not results of this code). "
           f"{EMPTY} = no runs; {UNVERIFIED} = some of the cell's runs were published with `--no-verify` "
           "(their dataset was not re-verified at publish time).", ""]
    for block in blocks:
        out += _md_block(block)
    return "\n".join(out).rstrip() + "\n"


def render_csv(blocks: list[Block]) -> str:
    """Tidy: one line per (profile, cell, algorithm), then one aggregate line per algorithm
    (env ``*``, split ``IQM``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["profile", "env", "split", "algorithm", "n", "mean", "std", "ci_low", "ci_high", "paper"])
    fmt = lambda x: "" if x is None else repr(float(x))  # noqa: E731
    for block in blocks:
        prof = block.profile or ""
        for env, split in block.cells:
            for algo in block.algorithms:
                cell = block.ours.get((algo, env, split))
                writer.writerow([prof, env, split, algo, cell.n if cell else 0, fmt(cell.mean if cell else None),
                                 fmt(cell.std if cell else None), "", "",
                                 fmt(block.paper.get((env, split), {}).get(algo))])
        for algo, agg in block.aggregates.items():
            writer.writerow([prof, "*", "IQM", algo, agg.runs, fmt(agg.iqm), "", fmt(agg.ci_low),
                             fmt(agg.ci_high), fmt(block.paper_iqm.get(algo))])
    return buffer.getvalue()


def _tex(text: str) -> str:
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "$": r"\$",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(ch, ch) for ch in text)


def render_latex(blocks: list[Block]) -> str:
    out = ["% Table I of the LOMPO paper regenerated by lompo-bench; `paper` columns are the paper's",
           "% values (reference data), the others mean $\\pm$ std over seeds (n). Needs booktabs."]
    for block in blocks:
        k = len(block.algorithms)
        out += ["", f"% {_tex(_block_heading(block))}", "\\begin{tabular}{ll" + "rr" * k + "}", "\\toprule"]
        out.append("Environment & Dataset & " + " & ".join(
            f"\\multicolumn{{2}}{{c}}{{{_tex(title(a))}}}" for a in block.algorithms) + " \\\\")
        out.append(" & & " + " & ".join(["ours & paper"] * k) + " \\\\")
        out.append("\\midrule")
        for env, split in block.cells:
            line = [_tex(ENV_TITLES.get(env, env)), _tex(split)]
            for algo in block.algorithms:
                line.append(cell_text(block.ours.get((algo, env, split)), pm="$\\pm$"))
                line.append(_num(block.paper.get((env, split), {}).get(algo)))
            out.append(" & ".join(line).replace(EMPTY, "--") + " \\\\")
        if block.aggregates:
            out.append("\\midrule")
            line = ["IQM [95\\% CI]", ""]
            for algo in block.algorithms:
                agg = block.aggregates.get(algo)
                line.append(f"{agg.iqm:.1f} [{agg.ci_low:.1f}, {agg.ci_high:.1f}]" if agg else "--")
                line.append(_num(block.paper_iqm.get(algo)).replace(EMPTY, "--"))
            out.append(" & ".join(line) + " \\\\")
        out += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(out) + "\n"


def render(rows: list[dict], fmt: str = "md", profile: str | None = None, *,
           source: str = "leaderboard/leaderboard.csv", reps: int = 50_000) -> str:
    if fmt not in FORMATS:
        raise choice_error("format", fmt, FORMATS)
    blocks = build(rows, profile, reps=reps)
    if fmt == "md":
        return render_md(blocks, source)
    if fmt == "csv":
        return render_csv(blocks)
    return render_latex(blocks)
