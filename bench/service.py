"""The sampling service's cost and capacity, side by side in one run (not a test).

* Overhead: per-call time of `--sampler remote` against the same `gibbs` sampler in-process
  (1000 chains x 40 sweeps, 1000 samples of a dense 200+200 RBM), calls interleaved so both see
  the same machine load; the service reserves as many CPUs (torch threads) as this process uses.
  Goal: at most 10 %.
* Throughput: aggregate samples/s with 1, 2 and 4 clients (threads, one session each) sharing
  one service, with packing on and off.
* Load test: 8 clients x 200 calls of a pinned model (biases of ±800, so every sample is exactly
  the client's and call's bit pattern): no request lost, no reply mixed up, and the per-call
  latency percentiles.

It starts its own local Ray instance and shuts it down.

With `--nodes N` it measures instead the service on a simulated N+1-node cluster
(`ray.cluster_utils.Cluster` on loopback, token auth, a private RAY_TMPDIR): a packed gibbs
service pinned to its own node by a custom resource, and 1, 4 and 16 clients, each a Ray actor
(its own process) on one of N client nodes, drawing for a fixed number of calls. It records
per-call latency p50/p99 and aggregate samples/s, and the batching gain of the packed kernel
(in-process: S sessions in one draw_packed call against one), for the goal aggregate(16) >=
0.8 x single-client x gain(16), with p99 <= 3 x p50.

    python bench/service.py [--out bench/results/service.json] [--quick]
    python bench/service.py --nodes 2 [--out bench/results/service_nodes2.json] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time

import numpy as np
import ray
import results_json  # bench/ is on sys.path when run as a script
import torch

import samplers
from samplers import BipartiteModel
from samplers.service import actor
from samplers.service.core import ServiceSpec

GIBBS = {"num_chains": 1000, "sweeps": 40}


def rbm(n: int, seed: int) -> BipartiteModel:
    gen = torch.Generator().manual_seed(seed)
    return BipartiteModel(torch.randn(n, generator=gen) * 0.5, torch.randn(n, generator=gen) * 0.5,
                          torch.randn(n, n, generator=gen) * 0.1)


def serve(name: str, packing: bool, threads: int, options=GIBBS) -> None:
    actor.start(ServiceSpec(name=name, sampler="gibbs", options=dict(options), packing=packing,
                            num_cpus=threads))


def remote(name: str, **options):
    return samplers.get("remote", service=name, address=ray.get_runtime_context().gcs_address,
                        **options)


def overhead(calls: int, threads: int) -> dict:
    model = rbm(200, 0)
    serve("bench-overhead", packing=False, threads=threads)
    local = samplers.get("gibbs", seed=1, **GIBBS)
    far = remote("bench-overhead", seed=1)
    local.sample(model, 1000), far.sample(model, 1000)  # warm-up: allocations, first RPC
    t_local, t_remote, t_service = [], [], []
    for _ in range(calls):
        start = time.perf_counter()
        local.sample(model, 1000)
        t_local.append(time.perf_counter() - start)
        start = time.perf_counter()
        info = far.draw(model, 1000).info
        t_remote.append(time.perf_counter() - start)
        t_service.append(info["service_sampling_s"])
    far.close()
    actor.stop("bench-overhead")
    med = lambda xs: float(np.median(xs))  # noqa: E731
    return {"model": "dense 200+200", "chains": 1000, "sweeps": 40, "samples_per_call": 1000,
            "calls": calls, "local_s": med(t_local), "remote_s": med(t_remote),
            "service_sampling_s": med(t_service),
            "overhead_fraction": med(t_remote) / med(t_local) - 1,
            "wire_and_queue_s": med(np.array(t_remote) - np.array(t_service)),
            "goal_fraction": 0.10}


def clients_throughput(name: str, clients: int, calls: int) -> float:
    """Aggregate samples/s of `clients` threads drawing `calls` times each from `name`."""
    samplers_ = [remote(name, seed=c) for c in range(clients)]
    models = [rbm(200, c) for c in range(clients)]
    for s, m in zip(samplers_, models):
        s.sample(m, 1000)
    barrier = threading.Barrier(clients + 1)

    def run(s, m):
        barrier.wait()
        for _ in range(calls):
            s.sample(m, 1000)

    threads = [threading.Thread(target=run, args=pair) for pair in zip(samplers_, models)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    for s in samplers_:
        s.close()
    return clients * calls * 1000 / wall


def throughput(calls: int, threads: int) -> list[dict]:
    rows = []
    for packing in (True, False):
        name = f"bench-{'packed' if packing else 'plain'}"
        serve(name, packing, threads)
        for clients in (1, 2, 4):
            rate = clients_throughput(name, clients, calls)
            rows.append({"clients": clients, "packing": packing, "samples_per_s": rate,
                         "chain_sweeps_per_s": rate * GIBBS["sweeps"]})
            print(f"  {clients} clients, packing {'on ' if packing else 'off'}: "
                  f"{rate:,.0f} samples/s", flush=True)
        actor.stop(name)
    return rows


def pinned(client: int, call: int) -> BipartiteModel:
    bits = lambda v: torch.tensor([(v >> i) & 1 for i in range(16)], dtype=torch.float32)  # noqa: E731
    return BipartiteModel(bits(client * 4099 + 1) * 1600 - 800, bits(call) * 1600 - 800,
                          torch.zeros(16, 16))


def load_test(clients: int, calls: int) -> dict:
    serve("bench-load", packing=True, threads=1, options={"num_chains": 64, "sweeps": 2})
    latencies, wrong, errors = [], [], []

    def client(c):
        s = remote("bench-load", label=f"load-{c}")
        for k in range(calls):
            model = pinned(c, k)
            try:
                start = time.perf_counter()
                z = s.sample(model, 64)
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # counted as lost
                errors.append(repr(exc))
                continue
            want = torch.cat([model.a_left > 0, model.a_right > 0]).float()
            if not torch.equal(z, want.expand(64, -1)):
                wrong.append((c, k))
        s.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    status = actor.call(actor.find("bench-load"), "status")
    actor.stop("bench-load")
    q = np.percentile(np.array(latencies) * 1000, [50, 90, 99, 100])
    return {"clients": clients, "calls_per_client": calls, "answered": len(latencies),
            "lost": clients * calls - len(latencies), "mixed_up": len(wrong),
            "errors": errors[:3], "service_calls": status["total"]["calls"],
            "device_calls": status["counters"]["device_calls"],
            "latency_ms": {"p50": q[0], "p90": q[1], "p99": q[2], "max": q[3]},
            "wall_s": wall, "calls_per_s": len(latencies) / wall}


# ---- the service on a simulated multi-node cluster (--nodes) ---------------------------------

NODE_GIBBS = {"num_chains": 256, "sweeps": 10}
NODE_SAMPLES = 256
NODE_UNITS = 64


class LoadClient:
    """One client, in its own worker process on its node: a session, warmed up, then timed."""

    def __init__(self, service: str, seed: int):
        torch.set_num_threads(1)
        self.sampler = samplers.get("remote", service=service, seed=seed)
        self.model = rbm(NODE_UNITS, seed)
        self.sampler.sample(self.model, NODE_SAMPLES)  # session, first RPC, allocations

    def run(self, calls: int) -> dict:
        latencies = []
        start = time.time()  # one clock for every client: they share this machine
        for _ in range(calls):
            t = time.perf_counter()
            self.sampler.sample(self.model, NODE_SAMPLES)
            latencies.append(time.perf_counter() - t)
        end = time.time()
        self.sampler.close()
        return {"start": start, "end": end, "latencies": latencies}


def batching_gain(sessions: int, calls: int) -> float:
    """Samples/s of one packed kernel call over `sessions` sessions, against one session."""
    from samplers.service.packed_gibbs import PackedGibbsSampler, draw_packed

    def rate(n: int) -> float:
        members = [PackedGibbsSampler(seed=s, **NODE_GIBBS) for s in range(n)]
        models = [rbm(NODE_UNITS, s) for s in range(n)]
        draw_packed(members, models, NODE_SAMPLES)  # the chains' first draw, allocations
        start = time.perf_counter()
        for _ in range(calls):
            draw_packed(members, models, NODE_SAMPLES)
        return n * calls * NODE_SAMPLES / (time.perf_counter() - start)

    return rate(sessions) / rate(1)


def multinode(client_nodes: int, calls: int) -> dict:
    import shutil
    import tempfile

    from ray.cluster_utils import Cluster

    from samplers.service import NAMESPACE, head

    tmp = tempfile.mkdtemp(prefix="dqb", dir="/tmp")  # Ray's socket paths must stay short
    os.environ["RAY_TMPDIR"] = tmp
    os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(tmp, "auth_token")
    head.require_token_auth(create=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    rows = []
    try:
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level="ERROR")
        cluster.add_node(num_cpus=1, resources={"service_node": 1})
        for k in range(client_nodes):
            cluster.add_node(num_cpus=16, resources={f"clients_{k}": 16})
        actor.start(ServiceSpec(name="bench-nodes", sampler="gibbs", options=dict(NODE_GIBBS),
                                resources={"service_node": 1}))
        cls = ray.remote(num_cpus=1)(LoadClient)
        for clients in (1, 4, 16):
            pool = [cls.options(resources={f"clients_{c % client_nodes}": 1}).remote(
                "bench-nodes", c) for c in range(clients)]
            ray.get([p.__ray_ready__.remote() for p in pool], timeout=600)
            runs = ray.get([p.run.remote(calls) for p in pool], timeout=1800)
            for p in pool:
                ray.kill(p)
            wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
            lat = np.array([x for r in runs for x in r["latencies"]]) * 1000
            p50, p99 = (float(v) for v in np.percentile(lat, [50, 99]))
            rows.append({"clients": clients, "calls_per_client": calls,
                         "samples_per_s": clients * calls * NODE_SAMPLES / wall,
                         "latency_ms": {"p50": p50, "p99": p99}, "p99_over_p50": p99 / p50})
            print(f"  {clients:2d} clients: {rows[-1]['samples_per_s']:,.0f} samples/s, "
                  f"p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        status = actor.call(actor.find("bench-nodes"), "status")
        actor.stop("bench-nodes")
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    gain = batching_gain(16, max(3, calls // 4))
    single = rows[0]["samples_per_s"]
    goal = 0.8 * single * gain
    return {"client_nodes": client_nodes, "model": f"dense {NODE_UNITS}+{NODE_UNITS}",
            **NODE_GIBBS, "samples_per_call": NODE_SAMPLES, "packing": True, "rows": rows,
            "batching_gain_16": gain, "goal_samples_per_s_16": goal,
            "goal_met": rows[-1]["samples_per_s"] >= goal,
            "p99_goal_met": all(r["p99_over_p50"] <= 3 for r in rows),
            "service_counters": status["counters"]}


def table(result: dict) -> str:
    lines = ["| clients | samples/s | p50 ms | p99 ms | p99/p50 |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['clients']} | {r['samples_per_s']:,.0f} | {r['latency_ms']['p50']:.1f} "
                     f"| {r['latency_ms']['p99']:.1f} | {r['p99_over_p50']:.2f} |")
    lines.append(f"\nbatching gain of one packed call over 16 sessions: "
                 f"{result['batching_gain_16']:.2f}x; goal for 16 clients (0.8 x single x gain): "
                 f"{result['goal_samples_per_s_16']:,.0f} samples/s, "
                 f"{'met' if result['goal_met'] else 'not met'}; p99 <= 3 x p50: "
                 f"{'met' if result['p99_goal_met'] else 'not met'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="default bench/results/service.json, or "
                        "service_nodes<N>.json with --nodes")
    parser.add_argument("--nodes", type=int, default=0, help="client nodes of a simulated "
                        "cluster (0: the single-instance benchmarks)")
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke run)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads here and in the service (one each: on a small "
                             "machine two multi-threaded processes would fight for cores)")
    args = parser.parse_args()
    calls = 5 if args.quick else 60
    threads = args.threads
    torch.set_num_threads(threads)
    if args.nodes:
        print(f"the service on a simulated cluster: {args.nodes} client nodes", flush=True)
        result = multinode(args.nodes, 5 if args.quick else 40)
        print(table(result), flush=True)
        result.update(machine=platform.machine(), cpu_count=os.cpu_count(),
                      load_average_1min=os.getloadavg()[0], quick=args.quick)
        results_json.save(result, args.out or f"bench/results/service_nodes{args.nodes}.json")
        return
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="dvae-q",
             log_to_driver=False, logging_level="ERROR")
    time.sleep(5)  # let the workers Ray starts finish importing before anything is timed
    try:
        print("overhead (gibbs 1000 x 40, dense 200+200, 1000 samples per call)", flush=True)
        result = {"overhead": overhead(calls, threads)}
        o = result["overhead"]
        print(f"  in-process {o['local_s'] * 1000:.1f} ms, remote {o['remote_s'] * 1000:.1f} ms "
              f"per call: {o['overhead_fraction']:+.1%}", flush=True)
        print("throughput (clients sharing one service)", flush=True)
        result["throughput"] = throughput(max(3, calls // 6), threads)
        # one in-process sampler, the ceiling of one service thread
        result["in_process_samples_per_s"] = o["samples_per_call"] / o["local_s"]
        print("load test", flush=True)
        result["load_test"] = load_test(8, 20 if args.quick else 200)
        lt = result["load_test"]
        print(f"  {lt['clients']} x {lt['calls_per_client']}: lost {lt['lost']}, mixed up "
              f"{lt['mixed_up']}, latency p50 {lt['latency_ms']['p50']:.1f} ms, p90 "
              f"{lt['latency_ms']['p90']:.1f}, p99 {lt['latency_ms']['p99']:.1f}, max "
              f"{lt['latency_ms']['max']:.1f}", flush=True)
    finally:
        ray.shutdown()
    result.update(torch_threads=threads, machine=platform.machine(), cpu_count=os.cpu_count(),
                  load_average_1min=os.getloadavg()[0], quick=args.quick)
    results_json.save(result, args.out or "bench/results/service.json")


if __name__ == "__main__":
    main()
