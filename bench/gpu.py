"""Sampler and evaluation throughput on one CUDA GPU (not a test; run by bench/gpu.sh).

Measures, on a dense 200+200 RBM with chains and generator on the device:
* `gibbs_sweeps` spin updates per second at 1k, 10k and 100k chains (40 sweeps per call),
  with TF32 matmuls off (the library's setting: PyTorch's default) and, for the record, on;
* the training step's negative phase through the sampler (`gibbs`, 1000 chains × 40 sweeps);
* evaluation: AIS with 1000 temperatures × 1024 chains and the AIS + RAISE bracket;
* what capturing the 40-sweep loop in a CUDA graph would save at 1k chains (an experiment on
  the default CUDA generator; the library does not capture graphs).
Device time comes from CUDA events around each call, after a warm-up call.

    python bench/gpu.py [--out bench/results/gpu.json] [--tests-exit-status N]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import results_json  # bench/ is on sys.path when run as a script
import torch

import samplers
from dvae_q.evaluation.logz import ais_log_z, bracket
from samplers.gibbs import gibbs_sweeps

SWEEPS = 40


def device_ms(fn, repeat=5) -> float:
    """Best device time of `fn` in milliseconds, timed with CUDA events after a warm-up."""
    fn()
    torch.cuda.synchronize()
    best = math.inf
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def dense_model(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return samplers.BipartiteModel(torch.randn(n, generator=g) * 0.5,
                                   torch.randn(n, generator=g) * 0.5,
                                   torch.randn(n, n, generator=g) * 0.1).to(device="cuda")


def kernel_rates(model, chains_list) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for chains in chains_list:
        z = torch.randint(0, 2, (chains, model.num_units), device="cuda", generator=gen).float()
        zl, zr = z[:, : model.num_left].contiguous(), z[:, model.num_left :].contiguous()
        args = (model.a_left, model.a_right, model.W, 1.0, SWEEPS, gen)
        row = {}
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            ms = device_ms(lambda: gibbs_sweeps(zl, zr, *args))
            key = "tf32" if tf32 else "fp32"
            row[f"{key}_ms"] = ms
            row[f"{key}_spin_updates_per_s"] = chains * model.num_units * SWEEPS / (ms / 1e3)
        torch.backends.cuda.matmul.allow_tf32 = False
        out[str(chains)] = row
        print(f"gibbs_sweeps 200+200, {chains} chains x {SWEEPS} sweeps: {row['fp32_ms']:.2f} ms, "
              f"{row['fp32_spin_updates_per_s']:.3g} spin updates/s "
              f"(TF32: {row['tf32_spin_updates_per_s']:.3g})", flush=True)
    return out


def cuda_graph_experiment(model, chains=1000) -> dict:
    """Eager 40 sweeps against the same 40 sweeps replayed from a captured CUDA graph."""
    try:
        gen = torch.cuda.default_generators[torch.cuda.current_device()]
        zl = torch.zeros(chains, model.num_left, device="cuda")
        zr = torch.zeros(chains, model.num_right, device="cuda")
        args = (model.a_left, model.a_right, model.W, 1.0, SWEEPS, gen)
        eager = device_ms(lambda: gibbs_sweeps(zl, zr, *args))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            gibbs_sweeps(zl, zr, *args)  # warm-up on a side stream, as capture requires
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            gibbs_sweeps(zl, zr, *args)
        replay = device_ms(graph.replay)
        return {"chains": chains, "eager_ms": eager, "graph_ms": replay, "speedup": eager / replay}
    except Exception as exc:  # an experiment: report why it could not run
        return {"error": f"{type(exc).__name__}: {exc}"}


def negative_phase(model) -> dict:
    sampler = samplers.get("gibbs", num_chains=1000, sweeps=SWEEPS, seed=0, device="cuda")
    ms = device_ms(lambda: sampler.sample(model, 1000))
    return {"ms": ms, "chains": 1000, "sweeps": SWEEPS}


def evaluation(model, phase_ms) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.synchronize()
    start = time.perf_counter()
    est = ais_log_z(model, 1000, 1024, generator=gen)
    ais_s = time.perf_counter() - start  # ais_log_z reads its result back: synchronised
    start = time.perf_counter()
    br = bracket(model, 1000, 1024, generator=gen)
    bracket_s = time.perf_counter() - start
    return {"num_temps": 1000, "num_chains": 1024, "ais_s": ais_s, "bracket_s": bracket_s,
            "ais_log_z": est.log_z, "ais_stderr": est.stderr,
            "bracket": [br.lower.log_z, br.upper.log_z],
            "ais_over_negative_phase": ais_s * 1e3 / phase_ms}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/gpu.json")
    ap.add_argument("--tests-exit-status", type=int, default=None,
                    help="exit status of the CUDA tests, recorded in the JSON")
    ap.add_argument("--train-step", default=None,
                    help="JSON written by bench/train_step.py --device cuda, merged in if present")
    args = ap.parse_args()
    out = {"machine": {"platform": platform.platform(), "torch": torch.__version__},
           "cuda_tests_exit_status": args.tests_exit_status}
    if not torch.cuda.is_available():
        out["cuda"] = False
        out["note"] = "no CUDA device: nothing measured (the CPU figures are in negative_phase.json)"
        print(out["note"])
    else:
        out["cuda"] = True
        out["machine"]["device"] = torch.cuda.get_device_name()
        model = dense_model(200)
        out["gibbs_kernel"] = kernel_rates(model, (1_000, 10_000, 100_000))
        out["negative_phase"] = negative_phase(model)
        out["cuda_graph_experiment"] = cuda_graph_experiment(model)
        out["evaluation"] = evaluation(model, out["negative_phase"]["ms"])
        print(f"negative phase (gibbs 1000 x 40 via sampler.sample): "
              f"{out['negative_phase']['ms']:.2f} ms; CUDA graph experiment: "
              f"{out['cuda_graph_experiment']}; AIS 1000 x 1024: {out['evaluation']['ais_s']:.2f} s, "
              f"bracket {out['evaluation']['bracket_s']:.2f} s", flush=True)
    train = Path(args.train_step) if args.train_step else None
    if train and train.is_file() and train.stat().st_size:
        out["train_step"] = json.loads(train.read_text())
    else:
        reason = ("no CUDA device" if not out["cuda"] else
                  "bench/train_step.py --device cuda did not finish in its time limit")
        out["train_step"] = {"measured": False, "reason": reason}
    results_json.save(out, args.out)


if __name__ == "__main__":
    main()
