"""The leaderboard as a picture: per-cell bars and the aggregate, one row of panels per profile.

Left: for each (env, split) cell, one bar per algorithm at its mean normalized score over
seeds, with the sample std as an error bar, and the paper's value as a diamond in the algorithm's colour on the
same slot (so the gap to the paper reads at a glance; a marker without a bar is a cell we
have no runs for). Right: each algorithm's interquartile mean over cells and seeds with its
95% stratified-bootstrap interval, and the paper's IQM over the same cells as a marker.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .table import ENV_TITLES, Block, title

COLORS = {"lompo": "#1f77b4", "lmbrl": "#ff7f0e", "slac": "#2ca02c", "cql": "#d62728", "bc": "#9467bd"}
SHORT_ENV = {"walker": "Walker", "dclaw-screw": "D'Claw", "adroit-pen": "Adroit", "sawyer-door": "Door"}
SHORT_SPLIT = {"medium-replay": "med-replay", "medium-expert": "med-expert", "expert": "expert"}


def plot(blocks: list[Block], out: Path | str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # headless; never opens a window
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    out = Path(out)
    fig, axes = plt.subplots(len(blocks), 2, figsize=(17, 4.6 * len(blocks)), squeeze=False,
                             gridspec_kw={"width_ratios": [4.2, 1]})
    fallback = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"][5:] * 10)
    colors = {}
    for block in blocks:
        for algo in block.algorithms:
            colors.setdefault(algo, COLORS.get(algo) or next(fallback))

    for (ax_cells, ax_agg), block in zip(axes, blocks):
        k = len(block.algorithms)
        width = 0.8 / k
        x = np.arange(len(block.cells))
        for i, algo in enumerate(block.algorithms):
            pos = x - 0.4 + width * (i + 0.5)
            cells = [block.ours.get((algo, env, split)) for env, split in block.cells]
            means = [c.mean if c else np.nan for c in cells]
            stds = [c.std if c and c.std is not None else np.nan for c in cells]  # one seed: no bar
            ax_cells.bar(pos, means, width, yerr=stds, color=colors[algo], capsize=2,
                         error_kw={"elinewidth": 0.8})
            paper = [block.paper.get(cell, {}).get(algo, np.nan) for cell in block.cells]
            ax_cells.scatter(pos, paper, marker="D", s=18, color=colors[algo], edgecolors="black",
                             linewidths=0.9, zorder=3)
        ax_cells.set_xticks(x, [f"{SHORT_ENV.get(e, ENV_TITLES.get(e, e))}\n{SHORT_SPLIT.get(s, s)}"
                                for e, s in block.cells], fontsize=8)
        ax_cells.axhline(0, color="grey", lw=0.6)
        ax_cells.axhline(100, color="grey", lw=0.6, ls=":")
        for boundary in range(1, len(block.cells)):
            if block.cells[boundary][0] != block.cells[boundary - 1][0]:
                ax_cells.axvline(boundary - 0.5, color="lightgrey", lw=0.8)
        ax_cells.set_ylabel("normalized score")
        label = f"profile: {block.profile}" if block.profile else "no runs published yet (paper values only)"
        ax_cells.set_title(f"Table I regenerated ({label}): bars = ours, mean ± std over seeds; "
                           "◆ = paper", fontsize=10)

        # aggregate panel
        names = [a for a in block.algorithms]
        y = np.arange(len(names))[::-1]
        for yi, algo in zip(y, names):
            agg = block.aggregates.get(algo)
            if agg is not None:
                ax_agg.barh(yi, agg.iqm, color=colors[algo], height=0.6,
                            xerr=[[agg.iqm - agg.ci_low], [agg.ci_high - agg.iqm]], capsize=3)
            if algo in block.paper_iqm:
                ax_agg.scatter(block.paper_iqm[algo], yi, marker="D", s=26, color=colors[algo],
                               edgecolors="black", linewidths=0.9, zorder=3)
        ax_agg.set_yticks(y, [title(a) for a in names], fontsize=9)
        ax_agg.set_ylim(-0.6, len(names) - 0.4)
        ax_agg.axvline(0, color="grey", lw=0.6)
        ax_agg.set_xlabel("IQM normalized score")
        ax_agg.set_title("Aggregate: IQM, 95% stratified-bootstrap CI\n◆ = paper's IQM on the same cells",
                         fontsize=9)
        if not block.aggregates:
            ax_agg.text(0.5, 0.5, "no runs", transform=ax_agg.transAxes, ha="center", color="grey")
            ax_agg.set_xlim(0, 100)

    handles = [Patch(color=colors[a], label=title(a)) for a in colors]
    handles.append(Line2D([], [], marker="D", color="white", markeredgecolor="black", ls="", markersize=6,
                          label="paper (Table I), in the algorithm's colour"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
