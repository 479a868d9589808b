"""What training DVAE# on an imperfect annealer costs in test NLL, and how much of it each QPU
correction wins back.

Every run is `dvae-q train --sampler qpu` (the path a user takes, each in its own process) on a
native Pegasus P4 prior, with the same seed throughout a group so that the runs differ only in
the device behind the sampler:

- `ideal`: `samplers.testing:noisy_qpu` with every magnitude 0 (the thermal mock, bit for bit),
  the sampler told its true β_eff;
- `<noise>/<correction>`: the noisy device at `published` magnitudes (docs/noisy_qpu.md), or
  `5x` or `20x` them, β_eff tracked as a user would (`recalibrate_every`, from the draws' own
  samples, no extra QPU calls), with no correction, spin-reversal transforms (16), the
  flux-bias shim, the device-Hamiltonian fit, or all three.

The gap of a noisy run is its test NLL minus the ideal run's of the same seed (paired: data
order, initialisation, posterior noise and the Gibbs engine's stream are shared), and a
correction recovers (gap_none − gap_correction) / gap_none of it. Evaluation does not touch the
sampler (AIS log Z on the trained model, importance-weighted bound on the test rows), so the
NLL measures the trained model only.

Configs (reduced budgets, 1,000 prior samples a step as in the paper): `smoke` (8+8 RBM, 16
latents) and `1-layer-nonlin` (16+16 RBM, `--nonlin-latent`), `--steps` steps each.

    .venv/bin/python bench/noisy_training.py [--configs smoke,1-layer-nonlin] [--seeds 0,1]
        [--steps 300] [--noise published,5x,20x] [--corrections none,srt,shim,fit,all]
        [--jobs 2] [--append]

Prints a table and writes JSON (default bench/results/noisy_training.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import results_json  # bench/ is on sys.path when run as a script
from noisy_qpu import CORRECTIONS, PUBLISHED  # the TV bench's noise levels and corrections

from samplers.noisy_device import BETA

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = "pegasus_p4"
NOISE = {"published": PUBLISHED, **{f"{m}x": {k: m * v for k, v in PUBLISHED.items()}
                                    for m in (5, 20)}}


def config_args(name: str, steps: int, nonlin_latent: int) -> list[str]:
    common = [f"steps={steps}", f"eval_every={steps}", "eval_limit=2000", "final_iw_samples=200",
              "eval_iw_samples=20", f"log_every={max(1, steps // 20)}",
              f"checkpoint_every={steps}", "tensorboard=false"]
    # the paper's 1,000 prior samples a step (smoke's own 64 are for CI's speed): fewer give
    # β_eff's recalibration, the shim and the fit too little to learn from
    common.append("num_negative_samples=1000")
    if name == "smoke":
        return ["--config", "smoke", *sum((["--set", s] for s in common), [])]
    budget = [*common, f"num_latent={nonlin_latent}"]
    return ["--config", str(ROOT / "configs/binarized_mnist/1-layer-nonlin.yaml"),
            *sum((["--set", s] for s in budget), [])]


# draws pooled per shim update and per Hamiltonian fit: 1,000 samples a step give each qubit
# ~110 (smoke's 8+8: 9 copies a call) or ~250 (1-layer-nonlin's 16+16: 4 copies)
POOL = {"smoke": 4, "1-layer-nonlin": 4}


def qpu_sets(config: str, noise: str | None, correction: str, seed: int) -> list[str]:
    # the child's seed is the run's, so that one seed fixes the device and its samples; a
    # trained prior outgrows the h/J ranges at β_eff ≈ 4, so every run clips (as on hardware)
    options = {"beta_eff": BETA, "range_policy": "clip"}
    if noise is None:
        kwargs = {**{k: 0.0 for k in PUBLISHED}, "seed": seed}
    else:
        kwargs = {**NOISE[noise], "seed": seed}
        # β_eff followed as a user would: re-measured from the draws' own samples
        options.update(recalibrate_every=10, calibration_bootstrap=0, **CORRECTIONS[correction],
                       flux_bias_every=POOL[config], hamiltonian_every=POOL[config])
        if "flux_bias_shim" in options:
            # the default limit (0.5) is 2.5 σ of the offsets at 20×: room for the device's own
            options["flux_bias_limit"] = max(0.5, 10 * kwargs["field_noise"])
    sets = ["sampler_options.qpu.child_sampler=samplers.testing:noisy_qpu"]
    sets.append("sampler_options.qpu.child_kwargs=" + json.dumps(kwargs))
    sets += [f"sampler_options.qpu.{k}={json.dumps(v)}" for k, v in options.items()]
    return sum((["--set", s] for s in sets), [])


def run(config: str, seed: int, noise: str | None, correction: str, args, scratch: Path) -> dict:
    label = "ideal" if noise is None else f"{noise}/{correction}"
    run_dir = scratch / f"{config}-{seed}-{label.replace('/', '-')}"
    argv = [str(ROOT / ".venv/bin/dvae-q"), "train", *config_args(config, args.steps,
                                                                 args.nonlin_latent),
            "--sampler", "qpu", "--topology", TOPOLOGY, "--seed", str(seed), "--quiet",
            "--run-dir", str(run_dir), *qpu_sets(config, noise, correction, seed)]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    row = {"config": config, "seed": seed, "device": label, "noise": noise,
           "correction": None if noise is None else correction, "wall_s": wall,
           "returncode": proc.returncode}
    if proc.returncode != 0:
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return row
    result = json.loads((run_dir / "results.json").read_text())
    row.update({k: result.get(k) for k in ("test_nll", "test_nll_low", "test_nll_high",
                                           "valid_nll", "test_elbo", "log_z", "log_z_stderr")})
    row["qpu_totals"] = result.get("qpu_totals")
    row["final_beta_eff"] = last_metric(run_dir, "sampler/beta_eff")
    row["final_clipped_fraction"] = last_metric(run_dir, "sampler/clipped_fraction")
    return row


def last_metric(run_dir: Path, column: str):
    import csv

    with open(run_dir / "metrics.csv") as f:
        values = [r[column] for r in csv.DictReader(f) if r.get(column) not in (None, "")]
    return float(values[-1]) if values else None


def summarise(rows: list[dict]) -> list[dict]:
    """Per config, noise and correction: the mean paired gap to ideal and the fraction recovered."""
    ideal = {(r["config"], r["seed"]): r["test_nll"] for r in rows
             if r["noise"] is None and r.get("test_nll") is not None}
    groups: dict = {}
    for r in rows:
        if r["noise"] is None or r.get("test_nll") is None or (r["config"], r["seed"]) not in ideal:
            continue
        gap = r["test_nll"] - ideal[(r["config"], r["seed"])]
        groups.setdefault((r["config"], r["noise"], r["correction"]), []).append(gap)
    table = []
    for (config, noise, correction), gaps in sorted(groups.items()):
        none = groups.get((config, noise, "none"))
        gap = float(np.mean(gaps))
        recovered = None
        if none is not None and correction != "none" and abs(np.mean(none)) > 0:
            recovered = float((np.mean(none) - gap) / np.mean(none))
        table.append({"config": config, "noise": noise, "correction": correction,
                      "seeds": len(gaps), "gap_mean": gap,
                      "gap_sem": float(np.std(gaps, ddof=1) / np.sqrt(len(gaps)))
                      if len(gaps) > 1 else None, "gaps": gaps, "recovered": recovered})
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="smoke,1-layer-nonlin")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--nonlin-latent", type=int, default=32)
    parser.add_argument("--noise", default=",".join(NOISE))
    parser.add_argument("--corrections", default=",".join(CORRECTIONS))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument("--out", default="bench/results/noisy_training.json")
    parser.add_argument("--append", action="store_true",
                        help="add the runs to those already in --out (same --steps), skipping "
                             "runs it holds")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[dict] = []
    if args.append:
        saved = json.loads(Path(args.out).read_text())
        if saved["steps"] != args.steps or saved["nonlin_latent"] != args.nonlin_latent:
            parser.error(f"{args.out} holds runs of another budget")
        rows = [r for r in saved["runs"] if r.get("test_nll") is not None]
    cases = [(c, s, None, "none") for c in args.configs.split(",") for s in seeds]
    cases += [(c, s, n, k) for c, s, n, k in itertools.product(
        args.configs.split(","), seeds, args.noise.split(","), args.corrections.split(","))]
    held = {(r["config"], r["seed"], r["noise"], r["correction"] or "none") for r in rows}
    cases = [case for case in cases if case not in held]
    scratch = Path(tempfile.mkdtemp(prefix="noisy-training-"))
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [pool.submit(run, *case, args, scratch) for case in cases]
            for future in futures:
                row = future.result()
                rows.append(row)
                nll = row.get("test_nll")
                print(f"{row['config']:>15} seed {row['seed']} {row['device']:>15}: "
                      + (f"test NLL {nll:.3f}" if nll is not None else row.get("error", "?"))
                      + f"  ({row['wall_s']:.0f} s)", flush=True)
                results_json.save({"machine": platform.platform(), "python": sys.version.split()[0],
                                   "topology": TOPOLOGY, "beta": BETA, "steps": args.steps,
                                   "nonlin_latent": args.nonlin_latent, "noise": NOISE,
                                   "corrections": CORRECTIONS, "runs": rows,
                                   "summary": summarise(rows)}, args.out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("\n| config | noise | correction | seeds | test-NLL gap to ideal (nats) | recovered |")
    print("|---|---|---|---|---|---|")
    for t in summarise(rows):
        sem = f" ± {t['gap_sem']:.3f}" if t["gap_sem"] is not None else ""
        rec = f"{100 * t['recovered']:.0f} %" if t["recovered"] is not None else "–"
        print(f"| {t['config']} | {t['noise']} | {t['correction']} | {t['seeds']} | "
              f"{t['gap_mean']:+.3f}{sem} | {rec} |")


if __name__ == "__main__":
    main()
