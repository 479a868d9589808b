"""The report of `dvae-q reproduce`: our numbers beside the poster's, and what they can show.

Reads the output folder (its `cells.json` says which run directory is which cell; each finished
run's `results.json` holds its numbers) and writes `reproduction.md` and `reproduction.png`:

* per cell (dataset, structure, method, K, variant): test NLL as mean ± sd over its seeds (or
  the single value), the AIS log Z with its standard error, the log Z bracket and NLL interval
  when the run recorded an upper estimate, the poster's number and the gap (ours − poster);
* per dataset, structure and K: whether the methods run here rank as on the poster (Kendall's
  τ, Spearman's ρ and every pair in the other order);
* a section, written from what the folder holds, on what these runs can and cannot show.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from dvae_q.progress import format_duration
from dvae_q.table import paper as paper_table
from dvae_q.table.collect import (
    CellSummary,
    RunRecord,
    dataset_label,
    load_runs,
    read_manifest,
    summarise,
)
from dvae_q.table.ranking import ranking_groups
from dvae_q.table.report_figure import save_figure
from storage.files import write_atomic

REPORT = "reproduction.md"
FIGURE = "reproduction.png"
FULL_STEPS = 1_000_000
FULL_IW = 4000


def _num(value, digits=2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _nll_cell(s: CellSummary) -> str:
    if s.sd is None:
        return f"{s.mean:.2f}"
    return f"{s.mean:.2f} ± {s.sd:.2f} (n={len(s.runs)})"


def _log_z_cell(s: CellSummary) -> str:
    zs = [r.results["log_z"] for r in s.runs]
    ses = [r.results["log_z_stderr"] for r in s.runs]
    if len(zs) == 1:
        return f"{zs[0]:.3f} ± {ses[0]:.3f}"
    return f"{statistics.fmean(zs):.3f} (seeds: {', '.join(f'{z:.2f}±{e:.2f}' for z, e in zip(zs, ses))})"


def bracket(results: dict) -> tuple[float, float, float] | None:
    """(log Z upper, NLL low, NLL high) when the run recorded an upper log Z estimate. NLL moves
    one for one with log Z, so the AIS (lower) end gives the low NLL and the upper the high."""
    upper = results.get("log_z_upper")
    if upper is None:
        return None
    interval = results.get("test_nll_interval")
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return upper, float(interval[0]), float(interval[1])
    return upper, results["test_nll"], results["test_nll"] + upper - results["log_z"]


def _bracket_cell(s: CellSummary) -> str:
    found = [bracket(r.results) for r in s.runs]
    if any(b is None for b in found):
        return "–"
    return "; ".join(f"log Z ≤ {u:.2f}, NLL [{lo:.2f}, {hi:.2f}]" for u, lo, hi in found)


def cells_table(summaries: Sequence[CellSummary]) -> list[str]:
    lines = ["| dataset | structure | method | K | steps | test NLL | log Z ± se (AIS) | "
             "bracket | poster | gap |", "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        steps = sorted({r.results["steps"] for r in s.runs})
        mark = "" if s.structure == paper_table.POSTER_STRUCTURE or s.published is None else " †"
        lines.append(
            f"| {dataset_label(s)} | {s.structure} | {s.label} | {s.k} | "
            f"{', '.join(f'{n:,}' for n in steps)} | {_nll_cell(s)} | {_log_z_cell(s)} | "
            f"{_bracket_cell(s)} | {_num(s.published)}{mark} | "
            f"{'–' if s.gap is None else f'{s.gap:+.2f}'} |")
    return lines


def ranking_section(checks) -> list[str]:
    if not checks:
        return ["No dataset, structure and K has two methods with a published number yet.", ""]
    lines = []
    for (dataset, structure, k), c in checks:
        lines += [f"### {dataset}, {structure}, K = {k}: {len(c.methods)} methods",
                  "", f"* ours: {_order(c.our_order)}", f"* poster: {_order(c.poster_order)}",
                  f"* Kendall τ = {c.kendall_tau:.3f}, Spearman ρ = {c.spearman_rho:.3f}; "
                  + ("the ranking matches." if c.matches else
                     f"{len(c.inversions)} of {len(c.methods) * (len(c.methods) - 1) // 2} "
                     "pairs in the other order:")]
        for inv in c.inversions:
            noise = {None: "one seed: no spread to judge it by", True: "within two standard "
                     "errors of our seeds", False: "outside two standard errors of our seeds"}
            lines.append(f"  * {_letter(inv.better)} before {_letter(inv.worse)} on the poster "
                         f"(by {inv.poster_gap:.2f}), after it here (by {inv.our_gap:.2f}; "
                         f"{noise[inv.within_spread]})")
        lines.append("")
    return lines


def _letter(method: str) -> str:
    return f"{paper_table.LETTERS[method]} ({method})"


def _order(methods: list[str]) -> str:
    return " < ".join(paper_table.LETTERS[m] for m in methods)


def caveats(summaries: Sequence[CellSummary]) -> list[str]:
    """What these runs can and cannot show, from what they are."""
    runs = [r for s in summaries for r in s.runs]
    steps = sorted({r.results["steps"] for r in runs})
    lines = ["* The poster's numbers are single runs at the paper's full budget (1M steps, test "
             "NLL with 4000 importance samples) with no error bars; many of its neighbouring "
             "columns differ by less than 0.3 nats, so an inversion between close columns is "
             "weak evidence either way."]
    if steps and steps[0] < FULL_STEPS:
        share = ", ".join(f"{n:,} ({100 * n / FULL_STEPS:g} %)" for n in steps)
        lines.append(f"* Budget: {share} of the paper's 1M steps (the same schedule, compressed). "
                     "At a short budget every NLL sits above the poster's and the gaps measure "
                     "mostly the budget; they cannot confirm or refute the published values. "
                     "A ranking that matches at this budget need not match at 1M steps.")
    others = sorted({s.structure for s in summaries} - {paper_table.POSTER_STRUCTURE})
    if others:
        lines.append(f"* Structure: the poster does not say which structure its rows use; we take "
                     f"them as the bar for {paper_table.POSTER_STRUCTURE}. Cells of "
                     f"{', '.join(others)} (marked †) are set beside that bar as a reference, "
                     "not a like-for-like comparison.")
    lines += _data_caveats(runs)
    if any(len(s.runs) == 1 for s in summaries):
        lines.append("* Seeds: cells with one seed have no spread; these runs cannot say how far "
                     "another seed would move them (use --seeds 0,1,2).")
    lines.append("* log Z is an AIS estimate; AIS tends to underestimate log Z, which makes the "
                 "NLL look better, and the importance-sampled −log p(x) overestimates it. "
                 + ("The bracket column gives the upper log Z estimate and the NLL interval."
                    if any(bracket(r.results) for r in runs) else
                    "These runs recorded no upper log Z estimate, so the NLL has no bracket."))
    return lines


def _data_caveats(runs: Sequence[RunRecord]) -> list[str]:
    lines = []
    variants = sorted({r.results.get("dataset_variant", "") for r in runs
                       if r.results["dataset"] == "omniglot"})
    if any("28" in v for v in variants):
        lines.append("* OMNIGLOT here is OMNIGLOT-28, a close substitute built from raw Omniglot, "
                     "not the poster's chardata.mat split: its numbers are close to, not the "
                     "same as, the published OMNIGLOT numbers.")
    iw = sorted({r.results["iw_samples"].get("test", 0) for r in runs})
    if iw and iw[0] < FULL_IW:
        lines.append(f"* Evaluation: test NLL with {', '.join(map(str, iw))} importance samples "
                     f"(the poster: {FULL_IW}); fewer samples give a looser (higher) estimate.")
    limits = sorted({r.results["eval_limit"] for r in runs if r.results.get("eval_limit")})
    if limits:
        lines.append(f"* Test set: only the first {', '.join(map(str, limits))} test images "
                     "(--set eval_limit); not the full test set.")
    trains = sorted({r.results["train_limit"] for r in runs if r.results.get("train_limit")})
    if trains:
        lines.append(f"* Training set: only the first {', '.join(map(str, trains))} rows.")
    return lines


def runs_table(records: Sequence[RunRecord]) -> list[str]:
    lines = ["| run directory | test NLL (K_eval) | valid NLL | log Z ± se | best step | "
             "training time |", "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: r.name):
        x = r.results
        lines.append(f"| {r.name} | {x['test_nll']:.2f} ({x['iw_samples'].get('test')}) | "
                     f"{_num(x.get('valid_nll'))} | {x['log_z']:.3f} ± {x['log_z_stderr']:.3f} | "
                     f"{x.get('best_step', '–')} | {format_duration(x.get('wall_time_s', 0))} |")
    return lines


def unfinished(out: Path, manifest: dict, outcomes) -> list[str]:
    errors = {o.cell.name: o.error for o in outcomes or () if o.status == "failed"}
    lines = []
    for name in manifest.get("cells", {}):
        if (out / name / "results.json").is_file():
            continue
        state = "failed: " + errors[name] if name in errors else (
            "not finished (rerun to resume)" if (out / name).is_dir() else "not started")
        lines.append(f"* {name}: {state}")
    return lines


def variants_section(summaries: Sequence[CellSummary]) -> list[str]:
    base = {(s.dataset, s.structure, s.method, s.k): s for s in summaries if s.variant is None}
    lines = []
    for s in summaries:
        ref = base.get((s.dataset, s.structure, s.method, s.k)) if s.variant else None
        if ref:
            lines.append(f"* {s.label}, {s.dataset} {s.structure} K={s.k}: {_nll_cell(s)} against "
                         f"{_nll_cell(ref)} without the variant ({s.mean - ref.mean:+.2f} nats)")
    return lines


def render(out: Path, manifest: dict, outcomes=None) -> str:
    summaries = summarise(load_runs(out, manifest))
    records = [r for s in summaries for r in s.runs]
    lines = ["# Reproduction of the DVAE# table", "",
             f"{len(records)} finished runs in `{out}`, against the {paper_table.SOURCE}.", ""]
    lines += [f"Command: `{c}`" for c in manifest.get("commands", [])[-3:]] + [""]
    lines += ["## What these runs can and cannot show", "", *caveats(summaries), ""]
    lines += ["## Cells", "", "test NLL in nats of the discrete model, mean ± sd over seeds; gap "
              "= ours − poster (positive: worse than published).", ""]
    lines += (cells_table(summaries) if summaries else ["No cell has finished yet."]) + [""]
    lines += ["## Method ranking against the poster", "", *ranking_section(ranking_groups(summaries))]
    extra = variants_section(summaries)
    if extra:
        shown = sorted({(c['variant'], ', '.join(c['variant_overrides']))
                        for c in manifest['cells'].values() if c.get('variant')})
        lines += ["## Variants", "", *[f"`{n}`: {o}" for n, o in shown], "", *extra, ""]
    lines += ["## Runs", "", *runs_table(records), ""] if records else []
    rest = unfinished(out, manifest, outcomes)
    lines += ["## Unfinished cells", "", *rest, ""] if rest else []
    lines.append(f"Figure: `{FIGURE}` (a * after a column letter marks a variant).")
    return "\n".join(lines) + "\n"


def write(out: str | Path, outcomes=None) -> Path:
    """Write reproduction.md and reproduction.png in `out`; the markdown's path."""
    out = Path(out)
    manifest = read_manifest(out)
    text = render(out, manifest, outcomes)
    save_figure(summarise(load_runs(out, manifest)), out / FIGURE)
    path = out / REPORT
    write_atomic(path, text)
    return path
