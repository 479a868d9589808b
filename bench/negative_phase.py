"""The training step's negative phase against this machine's bound, and evaluation's cost (not a test).

The negative phase is `gibbs` with 1000 chains × 40 sweeps on a dense RBM. A sweep needs two
(chains × n × n) matmuls, one uniform per unit, and one elementwise pass (sigmoid, compare,
write the state). The bound is the sum of those parts measured here, with the uniforms at the
rate of the *fastest* source of random bits measured in this run (16-bit uniforms; every source
below is timed side by side, producing the workload's uniforms in per-sweep batches):

    bound per sweep = t(matmul left→right) + t(matmul right→left)
                      + (units × chains) / fastest 16-bit uniform rate
                      + t(sigmoid in place) + t(compare into the state tensor)

"before" is the original kernel (torch.rand float32 uniforms, allocating per half-sweep),
"after" the current `samplers.gibbs.gibbs_sweeps` with its default CPU source. Both, and every
part of the bound, are timed over the whole workload (40 sweeps) in interleaved rounds and the
best round of each is kept, so a shared, noisy machine shifts them together. Evaluation: AIS with 1000 temperatures × 1024
chains, the bracket (AIS + RAISE) and the original float64 AIS, in units of one negative phase.

    python bench/negative_phase.py [--out bench/results/negative_phase.json] [--quick]
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import results_json  # bench/ is on sys.path when run as a script
import torch
import torch.nn.functional as F

import samplers
from dvae_q.evaluation.logz import ais_log_z, bracket
from samplers.gibbs import gibbs_sweeps
from samplers.uniforms import WordStream


def legacy_gibbs_sweeps(z_left, z_right, a_left, a_right, W, beta, sweeps, generator):
    """The kernel before the fast source (torch.rand uniforms), kept here as the baseline."""
    bw, bl, br = beta * W, beta * a_left, beta * a_right
    for _ in range(sweeps):
        u = torch.rand(z_right.shape, generator=generator, device=W.device, dtype=W.dtype)
        z_right = (u < torch.sigmoid(torch.addmm(br, z_left, bw))).to(W.dtype)
        u = torch.rand(z_left.shape, generator=generator, device=W.device, dtype=W.dtype)
        z_left = (u < torch.sigmoid(torch.addmm(bl, z_right, bw.T))).to(W.dtype)
    return z_left, z_right


def legacy_ais(a_v, a_h, w, num_temps, num_chains, gen):
    """The float64 AIS before it ran on the sampler kernels (four matmuls per temperature)."""
    def log_f(v, beta):
        return beta * (v @ a_v) + F.softplus(beta * (a_h + v @ w)).sum(-1)

    a_v, a_h, w = a_v.double(), a_h.double(), w.double()
    betas = torch.linspace(0.0, 1.0, num_temps, dtype=torch.float64).tolist()
    v = (torch.rand((num_chains, a_v.shape[0]), generator=gen, dtype=torch.float64) < 0.5).double()
    log_w = torch.zeros(num_chains, dtype=torch.float64)
    for prev, beta in zip(betas[:-1], betas[1:]):
        log_w += log_f(v, beta) - log_f(v, prev)
        p_h = torch.sigmoid(beta * (a_h + v @ w))
        h = (torch.rand(p_h.shape, generator=gen, dtype=torch.float64) < p_h).double()
        p_v = torch.sigmoid(beta * (a_v + h @ w.T))
        v = (torch.rand(p_v.shape, generator=gen, dtype=torch.float64) < p_v).double()
    return float(torch.logsumexp(log_w, 0)) - math.log(num_chains) + a_v.shape[0] * math.log(2) \
        + a_h.shape[0] * math.log(2)


def uniform_sources(count: int, repeat: int) -> dict:
    """Callables that each produce `repeat` batches of `count` 16-bit uniforms, by source."""
    gen = torch.Generator().manual_seed(0)
    words = torch.empty(-(-count // 4), dtype=torch.int64)
    out = {
        "torch.rand float32 (one uniform per draw)": lambda: torch.rand(count, generator=gen),
        "torch int64 random_ (4 x 16 bits)": lambda: words.random_(generator=gen),
    }
    for name in ("SFC64", "PCG64", "PCG64DXSM", "Philox", "MT19937"):
        bits = getattr(np.random, name)(0)
        out[f"numpy {name} random_raw (4 x 16 bits)"] = (
            lambda bits=bits: bits.random_raw(-(-count // 4)))
    float_gen = np.random.Generator(np.random.SFC64(0))
    buf = np.empty(count, np.float32)
    out["numpy SFC64 random float32 (one uniform per draw)"] = (
        lambda: float_gen.random(out=buf, dtype=np.float32))
    return {k: repeated(f, repeat) for k, f in out.items()}


def repeated(fn, times):
    def run():
        for _ in range(times):
            fn()
    return run


def best_of(fns: dict, rounds: int) -> dict:
    """Best time of each callable over `rounds` interleaved rounds."""
    best = {k: math.inf for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return best


def dense_model(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return samplers.BipartiteModel(torch.randn(n, generator=g) * 0.5,
                                   torch.randn(n, generator=g) * 0.5,
                                   torch.randn(n, n, generator=g) * 0.1)


def bound_parts(model, chains, sweeps) -> dict:
    """Callables timing each part of the bound over `sweeps` sweeps of `chains` chains."""
    n_l, n_r = model.num_left, model.num_right
    zl, zr = torch.zeros(chains, n_l), torch.zeros(chains, n_r)
    fr, fl = torch.empty(chains, n_r), torch.empty(chains, n_l)
    x, z = torch.rand(chains, n_l + n_r), torch.empty(chains, n_l + n_r)
    u16 = torch.from_numpy(np.random.default_rng(0).integers(0, 2**16, x.shape, dtype=np.uint16))
    w, wt = model.W, model.W.T
    parts = {
        "matmul_lr": lambda: torch.addmm(model.a_right, zl, w, out=fr),
        "matmul_rl": lambda: torch.addmm(model.a_left, zr, wt, out=fl),
        "sigmoid": lambda: x.sigmoid_(),
        "compare": lambda: torch.lt(u16, x, out=z),
    }
    return {k: repeated(f, sweeps) for k, f in parts.items()}


def negative_phase(model, chains, sweeps, rounds) -> dict:
    """Before, after and every part of the bound, each timed over the whole workload."""
    n = model.num_units
    gen, stream = torch.Generator().manual_seed(0), WordStream(0)
    z = (torch.rand(chains, n, generator=gen) < 0.5).float()
    zl, zr = z[:, : model.num_left].contiguous(), z[:, model.num_left :].contiguous()
    args = (model.a_left, model.a_right, model.W, 1.0, sweeps)
    sampler = samplers.get("gibbs", num_chains=chains, sweeps=sweeps, seed=0)
    sampler.sample(model, chains)
    fns = {
        "before": lambda: legacy_gibbs_sweeps(zl, zr, *args, gen),
        "after": lambda: gibbs_sweeps(zl, zr, *args, stream),
        "sampler.sample": lambda: sampler.sample(model, chains),
        **{f"part:{k}": f for k, f in bound_parts(model, chains, sweeps).items()},
        **{f"rng:{k}": f for k, f in uniform_sources(chains * n, sweeps).items()},
    }
    t = best_of(fns, rounds)
    rates = {k[4:]: sweeps * chains * n / v for k, v in t.items() if k.startswith("rng:")}
    fastest = max(rates, key=rates.get)
    bound = (t["part:matmul_lr"] + t["part:matmul_rl"] + sweeps * chains * n / rates[fastest]
             + t["part:sigmoid"] + t["part:compare"])
    gflops = 2 * chains * model.num_left * model.num_right * sweeps / t["part:matmul_lr"] / 1e9
    return {
        "chains": chains, "sweeps": sweeps,
        "uniform16_per_s": rates, "fastest_source": fastest,
        "matmul_gflops": gflops,
        "bound_ms": bound * 1e3,
        "bound_parts_ms": {k[5:]: v * 1e3 for k, v in t.items() if k.startswith("part:")},
        "before_ms": t["before"] * 1e3, "after_ms": t["after"] * 1e3,
        "sampler_sample_ms": t["sampler.sample"] * 1e3,
        "before_over_bound": t["before"] / bound, "after_over_bound": t["after"] / bound,
        "sampler_over_bound": t["sampler.sample"] / bound,
        "speedup": t["before"] / t["after"],
    }


def evaluation(model, temps, chains, phase_ms, legacy: bool, rounds: int = 3) -> dict:
    """Wall time of AIS, the bracket and (optionally) the original AIS: best of `rounds`
    interleaved rounds, as for the negative phase."""
    gen = torch.Generator().manual_seed(0)
    runs = {"ais": lambda: ais_log_z(model, temps, chains, generator=gen).log_z,
            "bracket": lambda: (lambda b: [b.lower.log_z, b.upper.log_z])(
                bracket(model, temps, chains, generator=gen))}
    if legacy:
        runs["legacy_ais"] = lambda: legacy_ais(model.a_left, model.a_right, model.W, temps,
                                                chains, gen)
    out = {"num_temps": temps, "num_chains": chains}
    best = {name: math.inf for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            out[f"{name}_log_z"] = run()
            best[name] = min(best[name], time.perf_counter() - start)
    for name, t in best.items():
        out[f"{name}_s"] = t
        out[f"{name}_over_negative_phase"] = t * 1e3 / phase_ms
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/negative_phase.json")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and temperatures (smoke)")
    args = ap.parse_args()
    rounds = 3 if args.quick else 9
    out = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                       "numpy": np.__version__, "threads": torch.get_num_threads()}, "models": {}}
    for n in (100, 200):
        model = dense_model(n)
        row = negative_phase(model, 1000, 40, rounds)
        temps = 100 if args.quick else 1000
        row["evaluation"] = evaluation(model, temps, 1024, row["after_ms"], legacy=(n == 200))
        out["models"][f"dense {n}+{n}"] = row
        ev = row["evaluation"]
        print(f"dense {n}+{n}, 1000 chains x 40 sweeps: before {row['before_ms']:.1f} ms "
              f"({row['before_over_bound']:.2f} x bound), after {row['after_ms']:.1f} ms "
              f"({row['after_over_bound']:.2f} x bound; sampler.sample "
              f"{row['sampler_over_bound']:.2f}), bound {row['bound_ms']:.1f} ms "
              f"(matmul {row['matmul_gflops']:.0f} GFLOP/s, fastest uniforms "
              f"{row['uniform16_per_s'][row['fastest_source']]:.3g}/s: {row['fastest_source']}); "
              f"AIS {temps}x1024 {ev['ais_s']:.2f} s = {ev['ais_over_negative_phase']:.0f} "
              f"negative phases, bracket {ev['bracket_s']:.2f} s"
              + (f", original AIS {ev['legacy_ais_s']:.2f} s" if "legacy_ais_s" in ev else ""),
              flush=True)
    results_json.save(out, args.out)


if __name__ == "__main__":
    main()
