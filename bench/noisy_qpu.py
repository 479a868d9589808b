"""How far the qpu sampler's samples are from the model on the noisy device model, with and
without each correction, against exact enumeration.

For small native RBMs on Chimera C4 and Pegasus P4 (3+3 up to 8+8 units, at most 65,536 states,
enumerated exactly), each case draws `--samples` samples through the qpu sampler (`tiles: auto`)
from `samplers.testing:noisy_qpu` and reports their total-variation distance to the model's
exact distribution, beside the iid expectation: the mean TV of the same number of exact samples
(simulated from the exact distribution, `--iid-reps` times). Noise levels: `off` (every magnitude
0: the thermal mock), `published` (the defaults, docs/noisy_qpu.md) and `5x` (five times each
published magnitude, drift included). Corrections: `none`, `srt` (spin_reversal_transforms 16),
`shim` (flux_bias_shim), `fit` (learn_device_hamiltonian) and `all` (the three together); the
learning ones first draw `--warmup` draws of `--warmup-samples` samples (their QPU time is
counted apart: `warmup_access_us`). β_eff is the device's own at the programmed problem's scale
(the freeze-out model's fixed point β_eff = beta − freeze_out·σ₁, σ₁ the scale of the unscaled
Ising problem), so that what remains is the non-thermal part of the distortion, not a
temperature error. Each row also gives the QPU access time of a 1,000-sample training step
with that correction, by the sampler's own timing model (`estimated_access_time_us`), and the
client-side seconds of the measured draw.

Each row also gives the measured draw's exact TV (`tv_exact`): the device model samples every
call exactly from the Boltzmann distribution of a known distorted problem, so recording each
call's problem (gauge undone) gives the exact distribution of the draw's samples. Its TV to the
model is what the draw would show with infinitely many samples, free of sampling noise, and
`tv_at_more_samples` samples it at 10×, 100× and 1000× `--samples` (beside exact samples of as
many), to say where the distortion shows above the iid TV. With every magnitude 0 it is 0 (the
`off` rows check the recording), with and without transforms.

    .venv/bin/python bench/noisy_qpu.py [--samples 20000] [--iid-reps 20] [--out FILE]
        [--topologies pegasus_p4] [--sizes 8+8] [--noise published] [--corrections none,all]
        [--warmup 10] [--warmup-samples 20000] [--gain 0.1] [--append]

Prints a table and writes JSON (default bench/results/noisy_qpu.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

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
from samplers.qpu import gauges
from samplers.temperature import random_native_model
from samplers.testing import noisy_qpu, thermal_mock

TOPOLOGIES = ("chimera_c4", "pegasus_p4")
SIZES = ((3, 3), (4, 4), (6, 6), (8, 8))
PUBLISHED = {"field_noise": FIELD_NOISE, "coupler_noise": COUPLER_NOISE,
             "beta_spread": BETA_SPREAD, "drift": DRIFT, "freeze_out": FREEZE_OUT}
NOISE = {"off": {k: 0.0 for k in PUBLISHED}, "published": PUBLISHED,
         "5x": {k: 5 * v for k, v in PUBLISHED.items()}}
SRT = {"spin_reversal_transforms": 16}
SHIM = {"flux_bias_shim": True}
FIT = {"learn_device_hamiltonian": True}
CORRECTIONS = {"none": {}, "srt": SRT, "shim": SHIM, "fit": FIT, "all": {**SRT, **SHIM, **FIT}}


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


class DeviceRecorder:
    """Every call's problem as the device samples it, in the sampler's frame: the device model's
    distorted problem D of the gauged problem it was sent, un-gauged (a sample s' of D becomes
    g∘s', which is Boltzmann in D with the gauge undone), with its β_eff and reads. Calls are
    synchronous on the mock, so each device call follows its own composite's call."""

    def __init__(self, child):
        from dwave.preprocessing import SpinReversalTransformComposite

        self.calls: list[tuple] = []
        self._flips = None
        device, composite = child.substitute_sampler, SpinReversalTransformComposite
        device_sample, composite_sample = device.sample, composite.sample

        def on_device(bqm, num_reads=1, **kwargs):
            answer = device_sample(bqm, num_reads=num_reads, **kwargs)
            d = device.last_distortion
            frame = d.bqm if self._flips is None else gauges.undo(d.bqm, *self._flips)
            self.calls.append((frame, d.beta, num_reads))
            self._flips = None
            return answer

        def on_composite(this, bqm, *, srts=None, **kwargs):
            self._flips = (list(bqm.variables), np.asarray(srts).ravel())
            return composite_sample(this, bqm, srts=srts, **kwargs)

        device.sample = on_device
        self._undo = lambda: setattr(composite, "sample", composite_sample)
        composite.sample = on_composite

    def close(self) -> None:
        self._undo()

    def distribution(self, copies: list, num_units: int) -> np.ndarray:
        """The exact distribution of the samples of the calls recorded since the last
        `clear`: per call and copy, the Boltzmann distribution of D on that copy's qubits (no
        coupler joins two copies), in the model's state order, weighted by the call's reads."""
        states = np.array(list(itertools.product([-1.0, 1.0], repeat=num_units)))
        order = [v for qubits in copies for v in qubits]
        q = np.zeros(len(states))
        for bqm, beta, reads in self.calls:
            h, (row, col, quad), _ = bqm.to_numpy_vectors(variable_order=order)
            tile = row // num_units
            for t in range(len(copies)):
                j = np.zeros((num_units, num_units))
                inside = (tile == t) & (col // num_units == t)
                np.add.at(j, (row[inside] % num_units, col[inside] % num_units), quad[inside])
                energy = states @ h[t * num_units:(t + 1) * num_units] + (
                    (states @ j) * states).sum(1)
                w = np.exp(-beta * (energy - energy.min()))
                q += reads * w / w.sum()
        return q / q.sum()

    def clear(self) -> None:
        self.calls = []


def simulated_tv(q: np.ndarray, p: np.ndarray, n: int, reps: int, seed: int) -> float:
    """Mean TV to p of n samples drawn from q (q = p: the iid expectation)."""
    rng = np.random.default_rng(seed)
    return float(np.mean([0.5 * np.abs(rng.multinomial(n, q) / n - p).sum()
                          for _ in range(reps)]))


def oracle_beta_eff(model, topology: str, freeze_out: float) -> float:
    """The device's β_eff at the scale it would be programmed at: β_eff·(1 + γ σ₁/β_eff) = β."""
    probe = samplers.get("qpu", topology=topology, beta_eff=1.0,
                         child_sampler=thermal_mock(topology))
    h, (row, col, quad), _ = probe.programmed_bqm(model).to_numpy_vectors()
    return BETA - freeze_out * problem_scale(h, row, col, quad)


def run_case(topology, size, noise, correction, n, reps, warmup=0, warmup_samples=0,
             gain=None) -> dict:
    model = random_native_model(topologies.load(topology), *size, seed=0)
    magnitudes = NOISE[noise]
    beta_eff = oracle_beta_eff(model, topology, magnitudes["freeze_out"])
    child = noisy_qpu(topology, beta=BETA, seed=1, **magnitudes)
    options = dict(CORRECTIONS[correction])
    # the learning corrections' step size (each option's default: 0.5)
    if gain is not None and "flux_bias_shim" in options:
        options["flux_bias_gain"] = gain
    if gain is not None and "learn_device_hamiltonian" in options:
        options["hamiltonian_gain"] = gain
    sampler = samplers.get("qpu", topology=topology, beta_eff=beta_eff, seed=0,
                           child_sampler=child, **options)
    learning = "flux_bias_shim" in options or "learn_device_hamiltonian" in options
    recorder = DeviceRecorder(child)
    try:
        warmup_us = 0.0
        for _ in range(warmup if learning else 0):
            warmup_us += sampler.draw(model, warmup_samples).info["estimated_qpu_access_time_us"]
        recorder.clear()
        start = time.perf_counter()
        z, info = sampler.draw(model, n)
        wall = time.perf_counter() - start
    finally:
        recorder.close()
    p = exact(model)
    mean, p95 = iid_tv(p, n, reps, seed=2)
    # the measured draw's exact distribution: its TV is what infinitely many draws like it
    # would give, and sampling it at larger n says where its distortion shows above the iid TV
    q = recorder.distribution(sampler._plan(model).copies, model.num_units)
    larger = {str(m * n): {"device": simulated_tv(q, p, m * n, 5, seed=3),
                           "iid": simulated_tv(p, p, m * n, 5, seed=4)} for m in (10, 100, 1000)}
    return {"topology": topology, "size": f"{size[0]}+{size[1]}", "noise": noise,
            "magnitudes": magnitudes, "correction": correction, "beta_eff": beta_eff,
            "tv": float(0.5 * np.abs(empirical(z) - p).sum()), "iid_tv_mean": mean,
            "iid_tv_p95": p95, "tv_exact": float(0.5 * np.abs(q - p).sum()),
            "tv_at_more_samples": larger, "samples": n, "tiles": info["tiles"],
            "qpu_calls": info["num_qpu_calls"], "wall_s": wall,
            "gain": gain, "warmup_draws": warmup if learning else 0, "warmup_samples": warmup_samples,
            "warmup_access_us": warmup_us,
            "step_access_us": sampler.estimated_access_time_us(model, 1000),
            "magnetisation_error": info.get("flux_bias_magnetisation_error"),
            "hamiltonian_rms_residual_h": info.get("hamiltonian_rms_residual_h"),
            "hamiltonian_rms_residual_j": info.get("hamiltonian_rms_residual_j")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--iid-reps", type=int, default=20)
    parser.add_argument("--out", default="bench/results/noisy_qpu.json")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--sizes", default=",".join(f"{a}+{b}" for a, b in SIZES))
    parser.add_argument("--noise", default=",".join(NOISE))
    parser.add_argument("--corrections", default=",".join(CORRECTIONS))
    parser.add_argument("--warmup", type=int, default=10, help="learning draws before measuring")
    parser.add_argument("--warmup-samples", type=int, default=20000)
    parser.add_argument("--gain", type=float, help="flux_bias_gain and hamiltonian_gain of the "
                        "learning corrections (default: the options' own)")
    parser.add_argument("--append", action="store_true",
                        help="add the cases to those already in --out")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("+")) for s in args.sizes.split(",")]
    rows = json.loads(Path(args.out).read_text())["cases"] if args.append else []
    print("| topology | RBM | noise | correction | copies | calls | TV | iid E[TV] | iid 95 % | "
          "exact TV | step access (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for topology, size, noise, correction in itertools.product(
            args.topologies.split(","), sizes, args.noise.split(","),
            args.corrections.split(",")):
        row = run_case(topology, size, noise, correction, args.samples, args.iid_reps,
                       args.warmup, args.warmup_samples, args.gain)
        rows.append(row)
        print(f"| {topology} | {row['size']} | {noise} | {correction} | {row['tiles']} | "
              f"{row['qpu_calls']} | {row['tv']:.4f} | {row['iid_tv_mean']:.4f} | "
              f"{row['iid_tv_p95']:.4f} | {row['tv_exact']:.4f} | "
              f"{row['step_access_us'] / 1e3:.1f} |", flush=True)
        # saved after every case, so that a long run that stops keeps what it measured
        results_json.save({"machine": platform.platform(), "samples": args.samples,
                           "iid_reps": args.iid_reps, "beta": BETA, "cases": rows}, args.out)


if __name__ == "__main__":
    main()
