"""Whether the methods run here rank as on the poster: Kendall's τ, Spearman's ρ and every pair
in the other order, per dataset, structure and K; a pair whose two cells' seed spreads overlap
is reported as not resolved rather than as an inversion."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from dvae_q.table import paper as paper_table
from dvae_q.table.collect import CellSummary


@dataclass
class Inversion:
    better: str  # better (lower NLL) on the poster
    worse: str
    poster_gap: float  # poster[worse] − poster[better] > 0
    our_gap: float  # ours[better] − ours[worse] > 0: we have them the other way round
    within_spread: bool | None  # our gap under two standard errors of the difference; None: one seed


@dataclass
class RankCheck:
    methods: list[str]
    kendall_tau: float
    spearman_rho: float
    inversions: list[Inversion]
    our_order: list[str]
    poster_order: list[str]

    @property
    def matches(self) -> bool:
        return not self.inversions


def rank_check(ours: dict[str, float], poster: dict[str, float],
               spread: dict[str, tuple[float | None, int]] | None = None) -> RankCheck | None:
    """How the methods in both `ours` and `poster` ({method: NLL}) rank; None for fewer than two.
    `spread` ({method: (sd, seeds)}) marks inversions inside two standard errors."""
    from scipy import stats

    methods = [m for m in paper_table.COLUMNS if m in ours and m in poster]
    if len(methods) < 2:
        return None
    a, b = [ours[m] for m in methods], [poster[m] for m in methods]
    inversions = []
    for i, m in enumerate(methods):
        for n in methods[i + 1:]:
            better, worse = (m, n) if poster[m] < poster[n] else (n, m)
            if poster[m] != poster[n] and ours[better] > ours[worse]:
                inversions.append(Inversion(better, worse, poster[worse] - poster[better],
                                            ours[better] - ours[worse],
                                            _within(spread, better, worse, ours)))
    return RankCheck(methods, float(stats.kendalltau(a, b).statistic),
                     float(stats.spearmanr(a, b).statistic), inversions,
                     sorted(methods, key=ours.get), sorted(methods, key=poster.get))


def _within(spread, m, n, ours) -> bool | None:
    if not spread or spread[m][0] is None or spread[n][0] is None:
        return None
    (sd_m, k_m), (sd_n, k_n) = spread[m], spread[n]
    # two standard errors of a difference of two independent means: about a 95 % band
    return abs(ours[m] - ours[n]) < 2 * math.sqrt(sd_m**2 / k_m + sd_n**2 / k_n)


def ranking_groups(summaries: Sequence[CellSummary]) -> list[tuple[tuple, RankCheck]]:
    """A RankCheck per (dataset, structure, K) among the cells without a variant."""
    groups: dict[tuple, list[CellSummary]] = {}
    for s in summaries:
        if s.variant is None and s.published is not None:
            groups.setdefault((s.dataset, s.structure, s.k), []).append(s)
    checks = []
    for key, cells in groups.items():
        ours = {s.method: s.mean for s in cells}
        spread = {s.method: (s.sd, len(s.runs)) for s in cells}
        check = rank_check(ours, paper_table.row(key[0], key[2]), spread)
        if check:
            checks.append((key, check))
    return checks
