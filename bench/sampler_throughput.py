"""Sampler throughput, side by side, with this machine's own bound (not a test).

For dense 100+100 and 200+200 RBMs and a sparse hardware-like mask (a 200+200 native region of
Chimera C16), measures:
* gibbs: the 1000 chains × 40 sweeps negative phase before (torch.rand uniforms) and after (the
  fast word stream of `samplers.uniforms`), against this machine's bound: two measured
  (C × n × n) matmuls, C·(n_L + n_R) uniforms at the rate of the fastest random-bit source
  measured here, and a sigmoid and a compare pass (see bench/negative_phase.py, which this
  reuses); chain-sweeps per second are those of the sampler's own `sample()`;
* neal: spin updates per second;
* effective samples per second for every backend from the integrated autocorrelation time τ of
  the energy: gibbs from a long run of its chains; neal's reads are independent anneals (τ = 1
  across reads); pa's population is correlated by resampling, so its effective size is the
  smallest relative ESS of the weights times the population (reported as such).

    python bench/sampler_throughput.py [--out bench/results/sampler_throughput.json] [--quick]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import results_json  # bench/ is on sys.path when run as a script
import torch
from negative_phase import negative_phase  # bench/ is on sys.path when run as a script

import samplers


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def integrated_autocorrelation_time(series: np.ndarray) -> float:
    """τ = 1 + 2 Σ ρ(t), summed until the first negative autocorrelation (per chain, averaged)."""
    x = series - series.mean(0, keepdims=True)
    var = (x * x).mean()
    if var == 0:
        return 1.0
    tau = 1.0
    for lag in range(1, x.shape[0] // 2):
        rho = (x[:-lag] * x[lag:]).mean() / var
        if rho <= 0:
            break
        tau += 2 * rho
    return float(tau)


def model_for(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "dense 100+100":
        n_l = n_r = 100
        mask = None
    elif kind == "dense 200+200":
        n_l = n_r = 200
        mask = None
    else:
        import topologies

        n_l = n_r = 200
        mask = topologies.load("chimera_c16").coupling_mask(n_l, n_r)
    # weights of trained size (spec: |W| ≈ 0.3–1 for strong couplings, most small)
    w = torch.randn(n_l, n_r, generator=g) * 0.1
    return samplers.BipartiteModel(torch.randn(n_l, generator=g) * 0.5,
                                   torch.randn(n_r, generator=g) * 0.5, w, mask)


def bench_gibbs(model, sweeps, rounds):
    out = negative_phase(model, 1000, sweeps, rounds)
    rate = 1000 * sweeps / (out["sampler_sample_ms"] / 1e3)
    # energy trace of every chain over successive single sweeps, for τ
    trace_sampler = samplers.get("gibbs", num_chains=1000, sweeps=1, seed=1)
    trace_sampler.sample(model, 1000)
    for _ in range(200):
        trace_sampler.sample(model, 1000)
    energies = []
    start = time.perf_counter()
    for _ in range(400):
        z = trace_sampler.sample(model, 1000)
        energies.append(model.energy(z).numpy())
    elapsed = time.perf_counter() - start
    tau = integrated_autocorrelation_time(np.stack(energies))
    out.update(chain_sweeps_per_s=rate, energy_tau_sweeps=tau,
               effective_samples_per_s=1000 * 400 / tau / elapsed)
    return out


def bench_neal(model, sweeps, reads):
    s = samplers.get("neal", num_sweeps=sweeps, seed=0)
    t = timed(lambda: s.sample(model, reads), repeat=2)
    return {"spin_updates_per_s": reads * sweeps * model.num_units / t,
            "num_sweeps": sweeps, "energy_tau_reads": 1.0,
            "effective_samples_per_s": reads / t}


def bench_pa(model, particles, betas):
    s = samplers.get("pa", num_particles=particles, num_betas=betas, seed=0)
    t = timed(lambda: s.sample(model, particles), repeat=2)
    min_ess = s.draw(model, particles).info["ess"]
    ess = min_ess * particles
    return {"particle_sweeps_per_s": particles * betas / t, "min_relative_ess": min_ess,
            "effective_samples_per_s": ess / t}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/sampler_throughput.json")
    ap.add_argument("--quick", action="store_true", help="fewer sweeps (smoke run)")
    args = ap.parse_args()
    sweeps = 10 if args.quick else 40
    out = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                       "threads": torch.get_num_threads()}, "models": {}}
    for kind in ("dense 100+100", "dense 200+200", "chimera-c16 native 200+200"):
        model = model_for(kind)
        gibbs = bench_gibbs(model, sweeps, 3 if args.quick else 7)
        row = {
            "gibbs": gibbs,
            "neal": bench_neal(model, sweeps, 200 if args.quick else 1000),
            "pa": bench_pa(model, 1000, sweeps),
            "exact": "not applicable: the smaller side has > 20 units",
        }
        out["models"][kind] = row
        fastest = gibbs["uniform16_per_s"][gibbs["fastest_source"]]
        print(f"{kind}: gibbs 1000 x {sweeps}: before {gibbs['before_ms']:.1f} ms "
              f"({gibbs['before_over_bound']:.2f} x bound), after {gibbs['after_ms']:.1f} ms "
              f"({gibbs['after_over_bound']:.2f} x bound), sampler {gibbs['sampler_sample_ms']:.1f} ms "
              f"({gibbs['chain_sweeps_per_s']:.3g} chain-sweeps/s), bound {gibbs['bound_ms']:.1f} ms "
              f"(matmul {gibbs['matmul_gflops']:.0f} GFLOP/s, uniforms {fastest:.3g}/s), "
              f"τ_E {gibbs['energy_tau_sweeps']:.1f} sweeps, ESS/s {gibbs['effective_samples_per_s']:.3g} | "
              f"neal {row['neal']['spin_updates_per_s']:.3g} spin-updates/s, "
              f"ESS/s {row['neal']['effective_samples_per_s']:.3g} | "
              f"pa ESS/s {row['pa']['effective_samples_per_s']:.3g} "
              f"(min rel. ESS {row['pa']['min_relative_ess']:.2f})", flush=True)
    results_json.save(out, args.out)


if __name__ == "__main__":
    main()
