"""reproduction.png: our test NLL per cell beside the poster's, one panel per dataset and
structure (a * after a column letter marks a variant)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

from dvae_q.table import paper as paper_table
from dvae_q.table.collect import CellSummary, dataset_label


def save_figure(summaries: Sequence[CellSummary], path: Path) -> None:
    """One panel per dataset, structure and K: our NLL (mean ± sd) and the poster's, per column."""
    from matplotlib.figure import Figure

    groups: dict[tuple, list[CellSummary]] = {}
    for s in summaries:
        groups.setdefault((s.dataset, s.structure, s.k), []).append(s)
    cols = min(3, max(1, len(groups)))
    rows = max(1, math.ceil(len(groups) / cols))
    fig = Figure(figsize=(5.2 * cols, 3.8 * rows + 0.6), dpi=100)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (key, cells) in zip(axes, groups.items()):
        _panel(ax, key, cells)
    for ax in axes[len(groups):]:
        ax.axis("off")
    if not groups:
        axes[0].text(0.5, 0.5, "no cell has finished yet", ha="center", va="center")
    caption = textwrap.fill("ours: test NLL of the discrete model, mean ± sd over seeds (* a "
                            "variant); poster: DVAE# (NeurIPS 2018), the bar for "
                            f"{paper_table.POSTER_STRUCTURE}", width=int(13 * 5.2 * cols))
    fig.text(0.01, 0.01, caption, fontsize=9)
    fig.tight_layout(rect=(0, 0.03 * (caption.count("\n") + 1) / rows, 1, 1))
    fig.savefig(path)


def _panel(ax, key, cells: list[CellSummary]) -> None:
    dataset, structure, k = key
    xs = range(len(cells))
    ax.errorbar(list(xs), [c.mean for c in cells], yerr=[c.sd or 0 for c in cells], fmt="o",
                capsize=3, label="ours")
    poster = [(x, c.published) for x, c in zip(xs, cells) if c.published is not None]
    if poster:
        ax.plot([p[0] for p in poster], [p[1] for p in poster], "s", mfc="none",
                label="poster" if structure == paper_table.POSTER_STRUCTURE else
                f"poster ({paper_table.POSTER_STRUCTURE} bar)")
    ax.set_xticks(list(xs), [paper_table.LETTERS.get(c.method, "?") + ("*" if c.variant else "")
                             for c in cells])
    ax.set_xlim(-0.5, len(cells) - 0.5)
    ax.set_title(f"{dataset_label(cells[0])}, {structure}, K = {k}", fontsize=10)
    ax.set_ylabel("test NLL (nats)")
    ax.legend(fontsize=8)
