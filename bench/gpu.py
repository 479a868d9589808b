"""The device's one call (run by bench/gpu.sh): what a GPU step costs against what the device
allows, inside one time budget. Not a test: it prints and writes JSON.

In this order, the JSON saved after each part (a call cut short keeps what it measured):
1. `gibbs` on a dense 200+200 RBM at 1k, 10k and 100k chains x 40 sweeps: spin updates/s of
   the eager kernel and of its CUDA-graph replay (`samplers.gibbs.SweepGraph`, the sampler's
   default on CUDA; TF32 off, as the library leaves it; TF32 on, eager, for the record),
   against the device's memory-bandwidth and FP32 bounds (`bounds`); what one kernel launch
   costs eager and inside a graph; the negative phase through the sampler, AIS and the bracket;
2. the training step of every structure at K = 1, 5, 25 (all K = 1 cells first), eager /
   compiled / graphed (`bench/train_step.py`'s `time_variant`), and each cell's projected
   1M-step time;
3. a real 1-layer-nonlin K = 1 cell through the training loop (`dvae_q.training.loop.train`,
   the library's defaults for the device): 1M steps if the projection fits in the time left,
   else the most steps that fit, with one reduced final evaluation (the JSON says so).

Without CUDA it measures nothing and writes "cuda": false, so a missing GPU is never taken for
a measurement, unless `--quick`: the same code, small (1k and 10k chains, 1-layer-nonlin at
K = 1, eager and compiled, a 20-step cell) on the CPU, to check the script end to end. Those
are CPU figures: the H200 bounds are recorded beside them but do not apply.

    python bench/gpu.py [--quick] [--budget-s 420] [--out bench/results/gpu.json]
                        [--tests-exit-status N]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import results_json  # bench/ is on sys.path when run as a script
import torch
import train_step

import samplers
from dvae_q.errors import BadInput, RunFailure
from dvae_q.evaluation.logz import ais_log_z, bracket
from dvae_q.model.networks import STRUCTURES
from samplers.gibbs import SweepGraph, gibbs_sweeps
from samplers.uniforms import fair_states, make_source

SWEEPS = 40
# NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200), H200 SXM column:
# HBM3e 4.8 TB/s, FP32 67 TFLOPS (the non-tensor rate: the library keeps TF32 off)
H200 = {"name": "H200 SXM", "memory_bytes_per_s": 4.8e12, "fp32_flops_per_s": 67e12,
        "source": "NVIDIA H200 datasheet, H200 SXM: 4.8 TB/s HBM3e, 67 TFLOPS FP32"}
# the 4-byte float32 transfers of one spin update in `gibbs_sweeps` as written, per half-sweep
# and unit: the product reads the other side's state (n_other/n_side = 1 value at 200+200) and
# writes the field; sigmoid_ reads and writes it; rand writes a uniform; lt reads uniform and
# probability and writes the state. W (160 kB) and the biases stay in cache.
BYTES_PER_UPDATE_AS_WRITTEN = 4 * (1 + 1 + 2 + 1 + 2 + 1)
# a kernel that fused a half-sweep would move only the states: read one, write one
BYTES_PER_UPDATE_FUSED = 4 * 2


def bounds(n_left: int, n_right: int, peak: dict) -> dict:
    """Spin updates/s `peak` allows the 200+200 sweep. FLOPs: the field of each of the n_side
    units of a side is a dot product over n_other units (2 FLOPs each), so a sweep of
    n_L + n_R updates costs 2·(2·n_L·n_R) FLOPs: 4·n_L·n_R/(n_L + n_R) per update (400)."""
    flops = 4 * n_left * n_right / (n_left + n_right)
    return {"device": peak["name"], "source": peak["source"], "flops_per_update": flops,
            "bytes_per_update_as_written": BYTES_PER_UPDATE_AS_WRITTEN,
            "fp32_bound_updates_per_s": peak["fp32_flops_per_s"] / flops,
            "memory_bound_updates_per_s": peak["memory_bytes_per_s"] / BYTES_PER_UPDATE_AS_WRITTEN,
            "memory_bound_fused_updates_per_s": peak["memory_bytes_per_s"] / BYTES_PER_UPDATE_FUSED}


def timed_ms(fn, device, repeat=5) -> float:
    """Best time of `fn` in milliseconds after a warm-up call: CUDA events on a GPU (device
    time), the wall clock on the CPU."""
    fn()
    best = math.inf
    for _ in range(repeat):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - t) * 1e3)
    return best


def dense_model(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return samplers.BipartiteModel(torch.randn(n, generator=g) * 0.5,
                                   torch.randn(n, generator=g) * 0.5,
                                   torch.randn(n, n, generator=g) * 0.1).to(device=device)


def kernel_rates(model, chains_list, device, bound: dict) -> dict:
    """Spin updates/s of 40 sweeps, eager and (on CUDA) replayed from a graph."""
    gen = make_source(device, 0)
    out = {}
    for chains in chains_list:
        z = fair_states(gen, (chains, model.num_units), device, model.dtype)
        zl, zr = z[:, : model.num_left], z[:, model.num_left:]
        updates = chains * model.num_units * SWEEPS
        eager = timed_ms(lambda: gibbs_sweeps(zl, zr, model.a_left, model.a_right, model.W, 1.0,
                                              SWEEPS, gen), device)
        row = {"eager_ms": eager, "eager_updates_per_s": updates / (eager / 1e3)}
        if device.type == "cuda":
            graph = SweepGraph(zl, zr, model, SWEEPS, gen)
            replay = timed_ms(lambda: graph(zl, model, 1.0), device)
            row.update(graph_ms=replay, graph_updates_per_s=updates / (replay / 1e3))
            torch.backends.cuda.matmul.allow_tf32 = True
            tf32 = timed_ms(lambda: gibbs_sweeps(zl, zr, model.a_left, model.a_right, model.W,
                                                 1.0, SWEEPS, gen), device)
            torch.backends.cuda.matmul.allow_tf32 = False
            row["tf32_eager_updates_per_s"] = updates / (tf32 / 1e3)
        best = max(row.get("graph_updates_per_s", 0.0), row["eager_updates_per_s"])
        row["best_over_memory_bound"] = best / bound["memory_bound_updates_per_s"]
        row["best_over_fp32_bound"] = best / bound["fp32_bound_updates_per_s"]
        out[str(chains)] = row
        print(f"gibbs 200+200, {chains} chains x {SWEEPS} sweeps: eager {row['eager_ms']:.2f} ms "
              f"({row['eager_updates_per_s']:.3g} updates/s)"
              + (f", graph {row['graph_ms']:.2f} ms ({row['graph_updates_per_s']:.3g})"
                 if "graph_ms" in row else ""), flush=True)
    return out


def launch_costs(n=1000) -> dict:
    """Microseconds per launch of a one-element kernel, eager and as a node of a graph: what a
    step made of many small kernels pays per kernel at the launch bound."""
    x = torch.zeros(1, device="cuda")

    def launches():
        for _ in range(n):
            x.add_(1.0)

    eager = timed_ms(launches, torch.device("cuda"))
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        launches()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launches()
    replay = timed_ms(graph.replay, torch.device("cuda"))
    # a gibbs call launches about 8 kernels per sweep (a product, sigmoid, rand and compare per
    # side) and 3 for the β scaling
    kernels = 8 * SWEEPS + 3
    return {"eager_us_per_launch": eager * 1e3 / n, "graph_us_per_node": replay * 1e3 / n,
            "gibbs_kernels_per_call": kernels,
            "gibbs_launch_bound_eager_ms": kernels * eager / n,
            "gibbs_launch_bound_graph_ms": kernels * replay / n}


def negative_phase_and_evaluation(model, device) -> dict:
    """The training step's negative phase through the sampler (eager and graphed), AIS with
    1000 temperatures x 1024 chains and the AIS + RAISE bracket."""
    out = {}
    for graphed in (False, True) if device.type == "cuda" else (False,):
        sampler = samplers.get("gibbs", num_chains=1000, sweeps=SWEEPS, seed=0,
                               device=str(device), cuda_graph=graphed)
        out["negative_phase_graph_ms" if graphed else "negative_phase_eager_ms"] = timed_ms(
            lambda: sampler.sample(model, 1000), device)
    gen = torch.Generator(device=device).manual_seed(0)
    start = time.perf_counter()
    est = ais_log_z(model, 1000, 1024, generator=gen)  # reads its result back: synchronised
    out["ais_s"] = time.perf_counter() - start
    start = time.perf_counter()
    br = bracket(model, 1000, 1024, generator=gen)
    out.update(bracket_s=time.perf_counter() - start, ais_log_z=est.log_z,
               bracket=[br.lower.log_z, br.upper.log_z])
    return out


def step_table(plan, device, steps, deadline, reserve_s) -> dict:
    """ms per step of each (structure, K, variant) of `plan` while at least `reserve_s` is
    left before `deadline` (a first step compiles: tens of seconds); the rest are marked as not
    measured. Each (structure, K) compiles from scratch, as a run of that cell would: its
    shapes static, and no earlier cell's graphs counted against dynamo's recompile limit
    (past which it would run eager without a word)."""
    table = {}
    for structure, k, variant in plan:
        if f"{structure} K={k}" not in table:
            torch._dynamo.reset()
        cell = table.setdefault(f"{structure} K={k}", {})
        if variant == "graphed" and device.type != "cuda":
            cell[variant] = {"measured": False, "reason": "needs a CUDA device"}
        elif deadline - time.monotonic() < reserve_s:
            cell[variant] = {"measured": False, "reason": "out of time in this call"}
        else:
            cell[variant] = train_step.time_variant(structure, k, variant, device, steps)
            print(f"step {structure} K={k} {variant}: {cell[variant]['ms_per_step']:.2f} ms "
                  f"(first step {cell[variant]['first_step_s']:.1f} s), 1M steps "
                  f"{cell[variant]['projected_1M_steps_h']:.2f} h", flush=True)
    for cell in table.values():
        timed = [v["ms_per_step"] for v in cell.values() if "ms_per_step" in v]
        if timed:
            cell["best_projected_1M_steps_h"] = min(timed) * 1e6 / 1e3 / 3600
    return table


def real_cell(device, ms_per_step, seconds, max_steps) -> dict:
    """The 1-layer-nonlin K = 1 cell through the training loop for as many steps as
    `seconds` allows at `ms_per_step` (with room for the loop's logging, checkpoints and the
    final evaluation), at most `max_steps`."""
    from dvae_q.training import loop
    from dvae_q.training.build import compiles
    from dvae_q.training.config import load_config

    steps = min(max_steps, int(seconds / (1.5 * ms_per_step / 1e3)))
    if steps < 20:
        return {"measured": False, "reason": f"{seconds:.0f} s left: too little for a cell"}
    reduced = ["eval_limit=1000", "final_iw_samples=100", "eval_iw_samples=100"]
    if device.type == "cpu":  # --quick: seconds, not minutes, of evaluation
        reduced = ["eval_limit=100", "final_iw_samples=10", "eval_iw_samples=10",
                   "ais_num_temps=50", "ais_num_chains=64", "eval_batch_size=50"]
    overrides = [f"device={device}", "k=1", f"steps={steps}", f"eval_every={steps}",
                 f"checkpoint_every={max(1000, steps // 10)}", *reduced]
    run = Path(tempfile.mkdtemp(prefix="dvaeq-gpu-cell-")) / "run"
    try:
        cfg = load_config("binarized_mnist/1-layer-nonlin", overrides)
        start = time.perf_counter()
        results = loop.train(cfg, run, quiet=True)
        total = time.perf_counter() - start
    except (BadInput, RunFailure) as exc:  # e.g. the dataset is not on this machine
        return {"measured": False, "reason": f"{type(exc).__name__}: {exc}"}
    finally:
        shutil.rmtree(run.parent, ignore_errors=True)
    per = results["wall_time_s"] / steps
    return {"structure": "1-layer-nonlin", "k": 1, "steps": steps, "full_budget": steps >= 1e6,
            "overrides": overrides, "compile": compiles(cfg),
            "cuda_graph": device.type == "cuda", "training_wall_s": results["wall_time_s"],
            "total_s_with_evaluation": total, "ms_per_step": per * 1e3,
            "projected_1M_steps_h": per * 1e6 / 3600, "test_nll": results.get("test_nll"),
            "evaluation": "the protocol's" if steps >= 1e6 else "one reduced final evaluation"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None,
                    help="default bench/results/gpu.json (--quick: gpu_quick_<device>.json)")
    ap.add_argument("--quick", action="store_true", help="small run, also on the CPU")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="seconds this script may take (default 420; --quick: 240)")
    ap.add_argument("--tests-exit-status", type=int, default=None,
                    help="exit status of the CUDA tests, recorded in the JSON")
    args = ap.parse_args()
    start = time.monotonic()
    deadline = start + (args.budget_s or (240 if args.quick else 420))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    path = args.out or ("bench/results/gpu.json" if not args.quick
                        else f"bench/results/gpu_quick_{device.type}.json")
    out = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(),
                       "load_average_at_start": os.getloadavg()[0]},
           "cuda": cuda, "quick": args.quick, "cuda_tests_exit_status": args.tests_exit_status}
    if not cuda and not args.quick:
        out["note"] = "no CUDA device: nothing measured (the CPU figures are in negative_phase.json)"
        print(out["note"])
        results_json.save(out, path)
        return
    if cuda:
        out["machine"]["device"] = torch.cuda.get_device_name()
    else:
        out["note"] = "--quick on the CPU: CPU figures; the H200 bounds do not apply to them"
    bound = bounds(200, 200, H200)
    bound["applies"] = cuda and "H200" in out["machine"].get("device", "")
    out["bounds"] = bound
    model = dense_model(200, device)
    out["gibbs_kernel"] = kernel_rates(model, (1_000, 10_000) if args.quick
                                       else (1_000, 10_000, 100_000), device, bound)
    if cuda:
        out["launch"] = launch_costs()
    out["negative_phase_and_evaluation"] = negative_phase_and_evaluation(model, device)
    results_json.save(out, path)

    structures = ["1-layer-nonlin"] if args.quick else list(STRUCTURES)
    ks = [1] if args.quick else [1, 5, 25]
    variants = ["eager", "compiled"] if args.quick else list(train_step.VARIANTS)
    plan = [(s, k, v) for k in ks for s in structures for v in variants]
    # the real cell keeps its share of the call: 40 s (quick) or 100 s at least
    cell_share = 40 if args.quick else 100
    out["train_step"] = step_table(plan, device, 3 if args.quick else 50, deadline - cell_share,
                                   reserve_s=15 if args.quick else 30)
    results_json.save(out, path)

    # the real cell runs with the library's defaults for the device: on CUDA compiled networks
    # and a graphed negative phase, on the CPU eager; planned by that variant's step time
    default = "graphed" if cuda else "eager"
    planned = out["train_step"].get("1-layer-nonlin K=1", {}).get(default, {})
    left = deadline - time.monotonic() - (20 if args.quick else 60)  # its final evaluation
    if "ms_per_step" in planned:
        out["real_cell"] = real_cell(device, planned["ms_per_step"], left,
                                     20 if args.quick else 1_000_000)
    else:
        out["real_cell"] = {"measured": False,
                            "reason": f"no {default} step time of 1-layer-nonlin K=1 to plan by"}
    out["wall_s"] = time.monotonic() - start
    results_json.save(out, path)


if __name__ == "__main__":
    main()
