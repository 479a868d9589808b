"""Training step time with a slow QPU, with and without `prefetch` (not a test).

The QPU is `samplers.testing:latency_mock` (a thermal MockDWaveSampler answering `latency_s`
after each call, as a remote QPU would). Four runs side by side in one process: latency 0 (the
step's own compute c), and latency L without and with prefetch. Without prefetch a step waits
for its draw, so it costs about c + L; with prefetch the draw for the next step is in flight
while this one computes, so it should approach max(c, L).

    python bench/prefetch.py [--latency 0.05] [--steps 30] [--out bench/results/prefetch.json]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import results_json  # bench/ is on sys.path when run as a script
import torch

from dvae_q.training import loop as train
from dvae_q.training import metrics
from dvae_q.training.config import load_config


def step_time(latency: float, prefetch: bool, steps: int, folder: Path) -> float:
    kwargs = f"{{topology: chimera_c4, beta: 5.0, seed: 0, latency_s: {latency}, num_sweeps: 20}}"
    cfg = load_config("smoke", [
        "structure=1-layer-nonlin", "num_latent=16", "k=5", "batch_size=100", "train_limit=5000",
        f"steps={steps}", "eval_every=100000", "log_every=1", "checkpoint_every=100000",
        "sampler=qpu", "topology=chimera_c4", "tensorboard=false", f"prefetch={str(prefetch).lower()}",
        "sampler_options.qpu.child_sampler=samplers.testing:latency_mock",
        f"sampler_options.qpu.child_kwargs={kwargs}", "sampler_options.qpu.beta_eff=5.0",
        "sampler_options.qpu.num_reads=64", "num_negative_samples=64",
        "eval_limit=10", "eval_iw_samples=2", "final_iw_samples=2", "ais_num_temps=2",
        "ais_num_chains=2"])
    run = folder / f"l{latency}-p{prefetch}"
    train.train(cfg, run, quiet=True)
    walls = [float(r["wall_time_s"]) for r in metrics.read(run / "metrics.csv")]
    # skip the first steps (warm-up, and the prefetch pipeline filling)
    return (walls[-1] - walls[4]) / (len(walls) - 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.05, help="seconds per QPU call")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--out", default="bench/results/prefetch.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        compute = step_time(0.0, False, args.steps, folder)
        serial = step_time(args.latency, False, args.steps, folder)
        overlapped = step_time(args.latency, True, args.steps, folder)
    lat = args.latency
    result = {
        "machine": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "latency_s": lat, "compute_s": compute, "step_without_prefetch_s": serial,
        "step_with_prefetch_s": overlapped, "sum_s": compute + lat, "max_s": max(compute, lat),
        "with_prefetch_over_max": overlapped / max(compute, lat),
        "without_prefetch_over_sum": serial / (compute + lat),
    }
    for key, value in result.items():
        print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    results_json.save(result, args.out)


if __name__ == "__main__":
    main()
