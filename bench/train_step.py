"""Time per training step, broken down, for every structure at K = 1, 5, 25 (not a test).

Each step is the training loop's: negative phase (`gibbs`, 1000 chains × 40 sweeps), forward,
backward, Adam step. The forward is split by timing the model's own pieces in place:
encoder MLPs, relaxation sampling (rsample), mean field (the relaxed prior's log-density),
decoder, and the rest (objective arithmetic); backward and the optimiser are timed whole.
Prints a table, writes JSON, and projects the wall time of a full 1M-step run (training steps
only; the 50 evaluations of the protocol come on top).

    python bench/train_step.py [--method dvaes_power] [--steps 8] [--out bench/results/train_step.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch

import samplers
from dvae_q.methods import default_beta
from dvae_q.model import DVAE, parameter_groups
from dvae_q.networks import STRUCTURES
from dvae_q.schedule import torch_adam_eps

FULL_RUN_STEPS = 1_000_000


class Timers:
    def __init__(self):
        self.total = defaultdict(float)

    def wrap(self, obj, name, label):
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            self.total[label] += time.perf_counter() - start
            return out

        setattr(obj, name, timed)


def measure(structure, k, method, steps, warmup=2):
    torch.manual_seed(0)
    x_mean = torch.full((784,), 0.13)
    model = DVAE(structure, method, beta=default_beta("binarized_mnist", structure, method),
                 x_mean=x_mean)
    opt = torch.optim.Adam(parameter_groups(model, 1e-4), lr=3e-4, eps=torch_adam_eps(1e-3, 1))
    sampler = samplers.get("gibbs", num_chains=1000, sweeps=40, seed=0)
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(100, 784, generator=gen) < 0.13).float()
    timers = Timers()
    timers.wrap(model.encoder, "group_output", "encoder")
    timers.wrap(model.relaxation, "rsample", "relaxation_sampling")
    timers.wrap(model.prior, "mean_field_log_prob", "mean_field")
    timers.wrap(model.prior, "gaussian_integral_log_prob", "mean_field")
    timers.wrap(model, "decode", "decoder")
    phases = defaultdict(float)
    for step in range(warmup + steps):
        if step == warmup:
            timers.total.clear()
            phases.clear()
        t0 = time.perf_counter()
        neg = sampler.sample(model.prior.snapshot(), 1000)
        t1 = time.perf_counter()
        out = model(x, neg, k=k, kappa=0.5, generator=gen)
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        t3 = time.perf_counter()
        opt.step()
        t4 = time.perf_counter()
        phases["negative_phase_sampling"] += t1 - t0
        phases["forward"] += t2 - t1
        phases["backward"] += t3 - t2
        phases["optimiser"] += t4 - t3
    per = {key: v / steps for key, v in {**phases, **timers.total}.items()}
    per["forward_other"] = per["forward"] - sum(
        per.get(key, 0.0) for key in ("encoder", "relaxation_sampling", "mean_field", "decoder"))
    per["total"] = sum(per[key] for key in ("negative_phase_sampling", "forward", "backward", "optimiser"))
    per["projected_1M_steps_hours"] = per["total"] * FULL_RUN_STEPS / 3600
    return per


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="dvaes_power")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default="bench/results/train_step.json")
    args = ap.parse_args()
    rows = {}
    cols = ("total", "negative_phase_sampling", "encoder", "relaxation_sampling", "mean_field",
            "decoder", "forward_other", "backward", "optimiser")
    print(f"{'structure':16s} {'K':>3s} " + " ".join(f"{c[:10]:>10s}" for c in cols) + "  1M-steps(h)")
    for structure in STRUCTURES:
        for k in (1, 5, 25):
            per = measure(structure, k, args.method, args.steps)
            rows[f"{structure} K={k}"] = per
            print(f"{structure:16s} {k:3d} " + " ".join(f"{per.get(c, 0) * 1e3:9.1f}m" for c in cols)
                  + f"  {per['projected_1M_steps_hours']:10.1f}", flush=True)
    out = {"machine": {"platform": platform.platform(), "torch": torch.__version__,
                       "threads": torch.get_num_threads()},
           "method": args.method, "sampler": "gibbs 1000 chains x 40 sweeps", "batch": 100,
           "seconds_per_step": rows}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"(times in ms per step) wrote {path}")


if __name__ == "__main__":
    main()
