"""Samples per second of QPU access time, untiled against tiled, and a paper run's QPU time.

For each native RBM (Pegasus P16 100+100 and 200+200, Zephyr Z12 200+200) this reports the copies
of the RBM that fit on a perfect chip (`tiles: auto`), the QPU access time of one training step's
1,000 prior samples by Ocean's timing model (Advantage4.1 parameters from dwave.cloud's mocks,
with the topology file's solver parameters: 20 µs anneal, 1,000 µs programming thermalization),
the samples per second of QPU access time, and the projected QPU access time of the paper's
1M-step run (1,000 samples per step), untiled and tiled. Network latency and queueing are in
neither figure.

The same draws are then made through the qpu sampler with a child that answers instantly, which
checks that the sampler's own per-draw estimate (`info['estimated_qpu_access_time_us']`) is the
projection, and measures the client-side time per draw (building the tiled problem, decoding;
best of the repeats) beside the access time it buys.

    .venv/bin/python bench/qpu_throughput.py [--samples 1000] [--steps 1000000] [--out FILE]

Prints and writes JSON (default bench/results/qpu_throughput.json).

With `--packing`, it measures instead what packing QPU requests of several sessions buys: four
sessions of one sampling service (its asyncio core, no Ray) with different Pegasus P16 native
100+100 models draw together for a few steps, with packing off (one QPU call per session and
step) and on (`QPUSampler.draw_tiled`: one call for all four), untiled and tiled. The child
answers instantly and counts the calls it receives; access time is Ocean's timing model of
those calls, beside the sum of the sessions' shares from their info.

    .venv/bin/python bench/qpu_throughput.py --packing [--out bench/results/qpu_packing.json]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time
from pathlib import Path

import results_json  # bench/ is on sys.path when run as a script
import torch
from qpu_overhead import InstantQPU  # noqa: E402  (bench/ is the script's own folder)

import samplers
import topologies
from samplers.qpu import estimate_access_time_us, tiling
from samplers.qpu.timing import project
from samplers.service.core import SamplingService, ServiceSpec
from samplers.service.wire import encode_model

CASES = [("pegasus_p16", 100, 100), ("pegasus_p16", 200, 200), ("zephyr_z12", 200, 200)]


def _model(topology: str, n_l: int, n_r: int, seed: int = 0) -> samplers.BipartiteModel:
    mask = topologies.load(topology).coupling_mask(n_l, n_r)
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    return samplers.BipartiteModel(r(n_l), r(n_r), r(n_l, n_r), mask)


def _through_sampler(topology: str, n_l: int, n_r: int, tiles, samples: int, repeats: int) -> dict:
    """Draws through the qpu sampler with an instant child: the info of a draw, and the
    client-side time of the backend alone (`_sample`: build and scale the tiled problem, range
    check, decode; the draw's wall time minus the child's) and of the whole protocol call
    (`draw`, adding the base class's mean-energy diagnostic), best of `repeats` (the least
    disturbed by other work on a shared machine)."""
    child = InstantQPU(topology)
    sampler = samplers.get("qpu", topology=topology, child_sampler=child, beta_eff=5.0, tiles=tiles)
    model = _model(topology, n_l, n_r)
    info = sampler.draw(model, samples).info  # first call: plan (layout, structure checks)
    backend, protocol = [], []
    for _ in range(repeats):
        for call, times in ((sampler._sample, backend), (sampler.draw, protocol)):
            child.elapsed.clear()
            start = time.perf_counter()
            call(model, samples)
            times.append(time.perf_counter() - start - sum(child.elapsed))
    return {"info": info, "backend_s": min(backend), "protocol_s": min(protocol)}


def _case(topology: str, n_l: int, n_r: int, samples: int, steps: int, repeats: int) -> dict:
    start = time.perf_counter()
    copies = len(tiling.native_tiles(topologies.load(topology), n_l, n_r))
    layout_s = time.perf_counter() - start
    row = {"topology": topology, "rbm": [n_l, n_r], "tiles": copies, "layout_time_s": layout_s,
           "chip_qubits": len(topologies.load(topology).graph()),
           "tiles_upper_bound": len(topologies.load(topology).graph()) // (n_l + n_r)}
    for name, tiles in (("untiled", 1), ("tiled", "auto")):
        p = project(topology, n_l, n_r, samples, steps, tiles=tiles)
        drawn = _through_sampler(topology, n_l, n_r, tiles, samples, repeats)
        info = drawn["info"]
        assert info["tiles"] == p.tiles
        assert abs(info["estimated_qpu_access_time_us"] - p.access_time_per_step_us) < 1e-6
        row[name] = {"tiles": p.tiles, "qubits_per_call": p.qubits_per_call,
                     "calls_per_step": p.calls_per_step, "reads_per_step": p.reads_per_step,
                     "access_time_per_step_ms": p.access_time_per_step_us / 1e3,
                     "samples_per_access_second": p.samples_per_access_second,
                     "projected_run_access_time_h": p.total_s / 3600,
                     "backend_client_time_per_step_ms": drawn["backend_s"] * 1e3,
                     "protocol_client_time_per_step_ms": drawn["protocol_s"] * 1e3,
                     "backend_overhead_fraction": drawn["backend_s"] * 1e6
                     / p.access_time_per_step_us}
    row["gain"] = row["tiled"]["samples_per_access_second"] / row["untiled"]["samples_per_access_second"]
    return row


PARAMS = {"annealing_time": 20, "programming_thermalization": 1000, "readout_thermalization": 0}


async def _sessions_draw(spec: ServiceSpec, models: list, samples: int, steps: int) -> list:
    """Every session draws `samples` of its model at each step, all at once: the replies' info."""
    service = SamplingService(spec)
    try:
        ids = [(await service.open_session({"v": 1, "seed": i}))["session"]
               for i in range(len(models))]
        infos = []
        for _ in range(steps):
            replies = await asyncio.gather(*[
                service.draw(sid, {"model": encode_model(m), "num_samples": samples})
                for sid, m in zip(ids, models)])
            assert all(r["ok"] for r in replies), replies
            infos.append([r["info"] for r in replies])
        return infos
    finally:
        await service.close()


def _packing_case(topology: str, n: int, sessions: int, samples: int, steps: int, packing: bool,
                  tiles) -> dict:
    # different parameters and β per session; every call asks for the samples of one step
    models = [_model(topology, n, n, seed=k).with_beta(1.0 + 0.1 * k) for k in range(sessions)]
    spec = ServiceSpec("bench-qpu", "qpu", {"child_sampler": "qpu_overhead:InstantQPU",
                                            "child_kwargs": {"topology": topology},
                                            "beta_eff": 5.0, "tiles": tiles,
                                            "num_reads": samples},
                       topology=topology, packing=packing)
    InstantQPU.sent.clear()
    infos = asyncio.run(_sessions_draw(spec, models, samples, steps))
    sent = list(InstantQPU.sent)
    model_us = sum(estimate_access_time_us(topology, q, r, **PARAMS) for q, r in sent)
    shares_us = sum(i["estimated_qpu_access_time_us"] for step in infos for i in step)
    last = infos[-1]
    return {"packing": packing, "tiles": tiles, "qpu_calls_per_step": len(sent) / steps,
            "reads_per_step": sum(r for _, r in sent) / steps,
            "qubits_per_call": sorted({q for q, _ in sent}),
            "copies_per_session": [i["tiles"] for i in last],
            "sessions_per_call": [i.get("packed_models", 1) for i in last],
            "access_time_per_step_ms": model_us / steps / 1e3,
            "sessions_shares_per_step_ms": shares_us / steps / 1e3,
            "session_share_per_step_ms": [i["estimated_qpu_access_time_us"] / 1e3 for i in last],
            "samples_per_access_second": sessions * samples * steps / (model_us / 1e6)}


def packing_bench(out: Path, steps: int = 3) -> None:
    rows = []
    for samples in (1000, 100):
        for packing, tiles in ((False, 1), (False, "auto"), (True, "auto")):
            row = _packing_case("pegasus_p16", 100, 4, samples, steps, packing, tiles)
            row["samples_per_session_step"] = samples
            rows.append(row)
            print(f"4 sessions x {samples} samples, P16 100+100, tiles {tiles}, packing "
                  f"{'on ' if packing else 'off'}: {row['qpu_calls_per_step']:.0f} QPU calls, "
                  f"{row['reads_per_step']:.0f} reads, {row['access_time_per_step_ms']:.1f} ms "
                  f"of access per step (shares sum to {row['sessions_shares_per_step_ms']:.1f})",
                  flush=True)
    result = {"topology": "pegasus_p16", "rbm": [100, 100], "sessions": 4, "steps": steps,
              "timing_model": "Advantage4.1 (dwave.cloud.testing.mocks), perfect chip",
              "solver_parameters": PARAMS, "cases": rows}
    results_json.save(result, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000, help="prior samples per step")
    parser.add_argument("--steps", type=int, default=1_000_000, help="training steps projected")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default=None)
    parser.add_argument("--packing", action="store_true",
                        help="measure packing several sessions' requests into one QPU call")
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    if args.packing:
        packing_bench(Path(args.out or results / "qpu_packing.json"))
        return
    rows = [_case(*case, args.samples, args.steps, args.repeats) for case in CASES]
    result = {"samples_per_step": args.samples, "steps": args.steps,
              "timing_model": "Advantage4.1 (dwave.cloud.testing.mocks), perfect chip",
              "solver_parameters": {"annealing_time": 20, "programming_thermalization": 1000,
                                    "readout_thermalization": 0},
              "cases": rows, "torch_threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine()}
    for r in rows:
        u, t = r["untiled"], r["tiled"]
        print(f"{r['topology']} {r['rbm'][0]}+{r['rbm'][1]}: {r['tiles']} tiles; "
              f"{u['samples_per_access_second']:,.0f} -> {t['samples_per_access_second']:,.0f} "
              f"samples/s of QPU access (x{r['gain']:.2f}); 1M steps: "
              f"{u['projected_run_access_time_h']:.1f} h -> {t['projected_run_access_time_h']:.1f} h")
    results_json.save(result, args.out or results / "qpu_throughput.json")


if __name__ == "__main__":
    main()
