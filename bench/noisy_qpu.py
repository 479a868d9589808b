"""How far the qpu sampler's samples are from the model on the noisy device model, with and
without each correction, against exact enumeration.

For small native RBMs on Chimera C4 and Pegasus P4 (3+3 up to 8+8 units, at most 65,536 states,
enumerated exactly), each case draws `--samples` samples through the qpu sampler (`tiles: auto`)
from `samplers.testing:noisy_qpu` and reports their total-variation distance to the model's
exact distribution, beside the iid expectation: the mean TV of the same number of exact samples
(simulated from the exact distribution, `--iid-reps` times). Noise levels: `off` (every magnitude
0: the thermal mock), `published` (the defaults, docs/noisy_qpu.md) and `5x` (five times each
published magnitude, drift included). Corrections: `none` and `srt` (spin_reversal_transforms 16).
β_eff is the device's own at the programmed problem's scale (the freeze-out model's fixed point
β_eff = beta − freeze_out·σ₁, σ₁ the scale of the unscaled Ising problem), so that what remains is
the non-thermal part of the distortion, not a temperature error.

    .venv/bin/python bench/noisy_qpu.py [--samples 20000] [--iid-reps 20] [--out FILE]

Prints a table and writes JSON (default bench/results/noisy_qpu.json).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import time

import numpy as np
import results_json  # bench/ is on sys.path when run as a script
import torch

import samplers
import topologies
from samplers.noisy_device import (
    BETA,
    BETA_SPREAD,
    COUPLER_NOISE,
    DRIFT,
    FIELD_NOISE,
    FREEZE_OUT,
    problem_scale,
)
from samplers.temperature import random_native_model
from samplers.testing import noisy_qpu, thermal_mock

TOPOLOGIES = ("chimera_c4", "pegasus_p4")
SIZES = ((3, 3), (4, 4), (6, 6), (8, 8))
PUBLISHED = {"field_noise": FIELD_NOISE, "coupler_noise": COUPLER_NOISE,
             "beta_spread": BETA_SPREAD, "drift": DRIFT, "freeze_out": FREEZE_OUT}
NOISE = {"off": {k: 0.0 for k in PUBLISHED}, "published": PUBLISHED,
         "5x": {k: 5 * v for k, v in PUBLISHED.items()}}
CORRECTIONS = {"none": {}, "srt": {"spin_reversal_transforms": 16}}


def exact(model) -> np.ndarray:
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=model.num_units)),
                          dtype=torch.float64)
    return torch.softmax(-model.energy(states), 0).numpy()


def empirical(z: torch.Tensor) -> np.ndarray:
    weights = 2 ** torch.arange(z.shape[1] - 1, -1, -1, dtype=torch.float64)
    codes = (z.double() @ weights).long().numpy()
    return np.bincount(codes, minlength=2 ** z.shape[1]) / len(z)


def iid_tv(p: np.ndarray, n: int, reps: int, seed: int) -> tuple[float, float]:
    """Mean and 95th percentile of the TV of n exact samples, over `reps` simulated draws."""
    rng = np.random.default_rng(seed)
    tvs = [0.5 * np.abs(rng.multinomial(n, p) / n - p).sum() for _ in range(reps)]
    return float(np.mean(tvs)), float(np.percentile(tvs, 95))


def oracle_beta_eff(model, topology: str, freeze_out: float) -> float:
    """The device's β_eff at the scale it would be programmed at: β_eff·(1 + γ σ₁/β_eff) = β."""
    probe = samplers.get("qpu", topology=topology, beta_eff=1.0,
                         child_sampler=thermal_mock(topology))
    h, (row, col, quad), _ = probe.programmed_bqm(model).to_numpy_vectors()
    return BETA - freeze_out * problem_scale(h, row, col, quad)


def run_case(topology, size, noise, correction, n, reps) -> dict:
    model = random_native_model(topologies.load(topology), *size, seed=0)
    magnitudes = NOISE[noise]
    beta_eff = oracle_beta_eff(model, topology, magnitudes["freeze_out"])
    child = noisy_qpu(topology, beta=BETA, seed=1, **magnitudes)
    sampler = samplers.get("qpu", topology=topology, beta_eff=beta_eff, seed=0,
                           child_sampler=child, **CORRECTIONS[correction])
    start = time.perf_counter()
    z, info = sampler.draw(model, n)
    wall = time.perf_counter() - start
    p = exact(model)
    mean, p95 = iid_tv(p, n, reps, seed=2)
    return {"topology": topology, "size": f"{size[0]}+{size[1]}", "noise": noise,
            "magnitudes": magnitudes, "correction": correction, "beta_eff": beta_eff,
            "tv": float(0.5 * np.abs(empirical(z) - p).sum()), "iid_tv_mean": mean,
            "iid_tv_p95": p95, "samples": n, "tiles": info["tiles"],
            "qpu_calls": info["num_qpu_calls"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--iid-reps", type=int, default=20)
    parser.add_argument("--out", default="bench/results/noisy_qpu.json")
    args = parser.parse_args()
    rows = []
    print("| topology | RBM | noise | correction | copies | calls | TV | iid E[TV] | iid 95 % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for topology, size, noise, correction in itertools.product(TOPOLOGIES, SIZES, NOISE,
                                                               CORRECTIONS):
        row = run_case(topology, size, noise, correction, args.samples, args.iid_reps)
        rows.append(row)
        print(f"| {topology} | {row['size']} | {noise} | {correction} | {row['tiles']} | "
              f"{row['qpu_calls']} | {row['tv']:.4f} | {row['iid_tv_mean']:.4f} | "
              f"{row['iid_tv_p95']:.4f} |", flush=True)
    results_json.save({"machine": platform.platform(), "samples": args.samples,
                       "iid_reps": args.iid_reps, "beta": BETA, "cases": rows}, args.out)


if __name__ == "__main__":
    main()
