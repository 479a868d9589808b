"""Pseudo-likelihood against energy matching on thermal and deliberately non-thermal mock QPUs.

Each case calibrates a qpu sampler (Chimera C4, 64+64 native probe RBMs with seeds 0-3, 1,000
reads per call, β_eff starting at 4) with `calibrate(..., estimator="both")` and records both
estimates, their errors, the disagreement in combined standard errors, the sampler calls each
loop needed and the wall time. Mocks (samplers.testing): `thermal_mock` at β = 2, 5, 8 (Boltzmann
at one temperature: the estimators should agree with each other and with β), `field_offset_mock`
(every programmed field shifted by +0.05) and `two_temperature_mock` (fields at β 3, couplings at
β 6): not Boltzmann, where a disagreement is the expected signal.

    .venv/bin/python bench/temperature_estimators.py [--reads 1000] [--out FILE]

Prints one line per case and writes JSON (default bench/results/temperature_estimators.json).
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import results_json  # bench/ is on sys.path when run as a script

import samplers
import topologies
from samplers.temperature import calibrate, random_native_model

CASES = [
    ("thermal_mock", {"beta": 2.0}),
    ("thermal_mock", {"beta": 5.0}),
    ("thermal_mock", {"beta": 8.0}),
    ("field_offset_mock", {"beta": 5.0, "offset_mean": 0.05}),
    ("two_temperature_mock", {"beta_fields": 3.0, "beta_couplings": 6.0}),
]
PROBE_SEEDS = (0, 1, 2, 3)


def run_case(factory: str, kwargs: dict, probe_seed: int, reads: int) -> dict:
    sampler = samplers.get("qpu", topology="chimera_c4",
                           child_sampler=f"samplers.testing:{factory}",
                           child_kwargs={**kwargs, "seed": 1}, beta_eff=4.0, num_reads=reads,
                           seed=0)
    model = random_native_model(topologies.load("chimera_c4"), seed=probe_seed)
    start = time.perf_counter()
    result = calibrate(sampler, model, num_samples=reads, estimator="both")
    mpl, energy = result.mpl, result.energy
    return {
        "mock": factory, "mock_kwargs": kwargs, "probe_seed": probe_seed,
        "mpl": mpl.beta_eff, "mpl_stderr": mpl.stderr, "mpl_calls": mpl.iterations,
        "energy": energy.beta_eff, "energy_stderr": energy.stderr,
        "energy_calls": energy.iterations,
        "sigmas_apart": abs(mpl.beta_eff - energy.beta_eff) / math.hypot(mpl.stderr,
                                                                           energy.stderr),
        "disagree": result.disagree, "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=1000)
    parser.add_argument("--out", default="bench/results/temperature_estimators.json")
    args = parser.parse_args()
    rows = []
    for factory, kwargs in CASES:
        for seed in PROBE_SEEDS:
            row = run_case(factory, kwargs, seed, args.reads)
            rows.append(row)
            print(f"{factory} {kwargs} probe {seed}: mpl {row['mpl']:.3f} ± {row['mpl_stderr']:.3f}"
                  f" ({row['mpl_calls']} calls), energy {row['energy']:.3f} ± "
                  f"{row['energy_stderr']:.3f} ({row['energy_calls']} calls), "
                  f"{row['sigmas_apart']:.1f} sigma apart, disagree={row['disagree']}, "
                  f"{row['wall_s']:.1f} s", flush=True)
    results_json.save({"machine": platform.platform(), "reads": args.reads, "cases": rows},
                      args.out)


if __name__ == "__main__":
    main()
