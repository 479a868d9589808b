"""Time per training step, broken down, against its matmul bound, for every structure and K.

Each step is the training loop's: negative phase (`gibbs`, 1000 chains × 40 sweeps), forward,
backward, Adam step, for DVAE# power at batch 100. Two paths of the same model, stepped in
alternation in one run so that they see the same machine load: `reference` (every encoder
row computed in full) and `optimised` (the default: the first layer's data part computed once
per data point, `DVAE(share_data_layer=True)`). The forward is split by timing the model's own
pieces in place (encoder MLPs, relaxation sampling, relaxed prior density, decoder, the rest);
backward and optimiser are timed whole.

The bound: the matrix products of one forward+backward are recorded (shapes, strides) and
replayed back to back on random data inside the same loop, so the matmul rate is this
machine's, for these very shapes, under the same load. FLOPs are counted by
torch.utils.flop_counter.FlopCounterMode over one forward+backward (matrix-matrix products;
matrix-vector products and elementwise work are not counted). ratio = step time / (matmul
replay time + negative phase time), against the path's own products and against the
reference path's (the model's arithmetic as written). The projection of a 1M-step cell counts training steps
only (the protocol's 50 evaluations with AIS come on top).

`--variants eager compiled graphed` times whole steps instead, back to back as the training
loop runs them (one synchronisation at the end, none between phases) for each way the library
can run a step: `eager`; `compiled`, the networks through torch.compile (the `compile` config
key); `graphed`, compiled networks and the negative phase replayed from a CUDA graph (the
`gibbs` option `cuda_graph`; CUDA only). The first step, which compiles and captures, is timed
apart. bench/gpu.py calls `time_variant` for its table.

    python bench/train_step.py [--device cpu|cuda] [--structures ...] [--ks 1 5 25] [--steps 8]
                               [--threads N] [--variants eager compiled graphed]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict

import results_json  # bench/ is on sys.path when run as a script
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import samplers
from dvae_q.model.dvae import DVAE, parameter_groups
from dvae_q.model.methods import default_beta
from dvae_q.model.networks import STRUCTURES
from dvae_q.training.build import compile_networks
from dvae_q.training.schedule import torch_adam_eps

FULL_RUN_STEPS = 1_000_000
PATHS = {"reference": False, "optimised": True}  # name → share_data_layer
PIECES = ("encoder", "relaxation_sampling", "prior_density", "decoder")
VARIANTS = ("eager", "compiled", "graphed")
GEMMS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
         torch.ops.aten.baddbmm.default}


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so that wall-clock intervals cover the work (CUDA is async)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timers:
    """Accumulates the wall time of wrapped methods of one model instance."""

    def __init__(self, device):
        self.total = defaultdict(float)
        self.device = device

    def wrap(self, obj, name, label):
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            sync(self.device)
            start = time.perf_counter()
            out = original(*args, **kwargs)
            sync(self.device)
            self.total[label] += time.perf_counter() - start
            return out

        setattr(obj, name, timed)


class GemmRecorder(TorchDispatchMode):
    """Records every matrix product that runs inside it: the op and its arguments' layouts."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in GEMMS:
            layout = [(tuple(a.shape), a.stride()) if isinstance(a, torch.Tensor) else a for a in args]
            self.calls.append((func, layout, kwargs))
        return func(*args, **kwargs)


def replay_args(calls, device, dtype):
    """Random operands laid out as recorded, made before timing; one buffer per distinct layout
    (data values do not change a product's speed)."""
    buffers, prepared = {}, []
    for func, layout, kwargs in calls:
        args = []
        for a in layout:
            if isinstance(a, tuple):
                if a not in buffers:
                    shape, stride = a
                    span = 1 + sum((n - 1) * s for n, s in zip(shape, stride)) if all(shape) else 0
                    buffers[a] = torch.randn(span, device=device, dtype=dtype).as_strided(shape, stride)
                a = buffers[a]
            args.append(a)
        prepared.append((func, args, kwargs))
    return prepared


def replay(prepared) -> None:
    """Run the recorded products once, back to back."""
    for func, args, kwargs in prepared:
        func(*args, **kwargs)


def build(structure, k, method, device, share):
    """One path: model (same init for every path), optimiser, sampler, data, generator."""
    torch.manual_seed(0)
    beta = default_beta("binarized_mnist", structure, method)
    model = DVAE(structure, method, beta=beta, x_mean=torch.full((784,), 0.13),
                 share_data_layer=share).to(device)
    opt = torch.optim.Adam(parameter_groups(model, 1e-4), lr=3e-4, eps=torch_adam_eps(1e-3, 1))
    sampler = samplers.get("gibbs", num_chains=1000, sweeps=40, seed=0)
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(100, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float().to(device)
    timers = Timers(device)
    for name in ("group_output", "group_output_shared"):
        timers.wrap(model.encoder, name, "encoder")
    timers.wrap(model.relaxation, "rsample", "relaxation_sampling")
    timers.wrap(model.prior, "relaxed_log_prob", "prior_density")
    timers.wrap(model, "decode", "decoder")
    return dict(model=model, opt=opt, sampler=sampler, gen=gen, x=x, k=k, timers=timers,
                phases=defaultdict(float), device=device)


def step(p) -> None:
    """One training step, each phase timed between synchronisations."""
    model, device, phases = p["model"], p["device"], p["phases"]
    sync(device)
    t0 = time.perf_counter()
    neg = p["sampler"].sample(model.prior.snapshot(), 1000)
    sync(device)
    t1 = time.perf_counter()
    out = model(p["x"], neg, k=p["k"], kappa=0.5, generator=p["gen"])
    sync(device)
    t2 = time.perf_counter()
    p["opt"].zero_grad(set_to_none=True)
    out.loss.backward()
    sync(device)
    t3 = time.perf_counter()
    p["opt"].step()
    sync(device)
    t4 = time.perf_counter()
    for key, dt in (("negative_phase", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2),
                    ("optimiser", t4 - t3)):
        phases[key] += dt


def gemm_profile(p):
    """(FLOPs, recorded products) of one forward+backward, its effects on the model undone."""
    model = p["model"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    neg = (torch.rand(1000, model.num_latent, device=p["device"]) < 0.5).float()
    counter, recorder = FlopCounterMode(display=False), GemmRecorder()
    with counter, recorder:
        model(p["x"], neg, k=p["k"], kappa=0.5, generator=torch.Generator(p["device"]).manual_seed(1)
              ).loss.backward()
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)  # BatchNorm running statistics
    return counter.get_total_flops(), replay_args(recorder.calls, p["device"], torch.float32)


def measure(structure, k, method, steps, device, warmup=2):
    """Both paths stepped in alternation, each followed by a replay of its matrix products."""
    paths = {name: build(structure, k, method, device, share) for name, share in PATHS.items()}
    profiles = {name: gemm_profile(p) for name, p in paths.items()}
    replays = defaultdict(float)
    for i in range(warmup + steps):
        if i == warmup:
            for p in paths.values():
                p["timers"].total.clear()
                p["phases"].clear()
            replays.clear()
        for name, p in paths.items():
            step(p)
            sync(device)
            start = time.perf_counter()
            replay(profiles[name][1])
            sync(device)
            replays[name] += time.perf_counter() - start
    cell = {name: summarise(p, profiles[name][0], replays[name], steps) for name, p in paths.items()}
    reference_replay = cell["reference"]["matmul_replay"]
    for per in cell.values():
        # against the bound of the computation as written (every row in full): the optimised
        # path skips some of those products, so this ratio can in principle fall below 1
        per["ratio_to_reference_bound"] = per["total"] / (reference_replay + per["negative_phase"])
    return cell


def summarise(p, flops, replay_s, steps) -> dict:
    per = {key: v / steps for key, v in {**p["phases"], **p["timers"].total}.items()}
    per["forward_other"] = per["forward"] - sum(per.get(key, 0.0) for key in PIECES)
    per["total"] = sum(per[key] for key in ("negative_phase", "forward", "backward", "optimiser"))
    per["flops_forward_backward"] = flops
    per["matmul_replay"] = replay_s / steps
    per["matmul_rate_flops_per_s"] = flops / per["matmul_replay"]
    per["bound"] = per["matmul_replay"] + per["negative_phase"]
    per["ratio_to_bound"] = per["total"] / per["bound"]
    per["projected_1M_steps_hours"] = per["total"] * FULL_RUN_STEPS / 3600
    return per


COLUMNS = ("total", "negative_phase", "encoder", "relaxation_sampling", "prior_density", "decoder",
           "forward_other", "backward", "optimiser", "matmul_replay", "bound")


def row_text(structure, k, name, per) -> str:
    times = " ".join(f"{per.get(c, 0) * 1e3:8.1f}" for c in COLUMNS)
    return (f"{structure:15s} {k:3d} {name:9s} {times} {per['flops_forward_backward'] / 1e9:7.2f} "
            f"{per['matmul_rate_flops_per_s'] / 1e9:6.1f} {per['ratio_to_bound']:5.2f} "
            f"{per['ratio_to_reference_bound']:5.2f} {per['projected_1M_steps_hours']:7.1f}")


def resolve_device(name: str) -> torch.device:
    """The requested device, or SystemExit: a CUDA request without CUDA never runs on the CPU."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"--device {name}: not a torch device") from None
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: this benchmark times cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return device


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="dvaes_power")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (no fallback)")
    ap.add_argument("--structures", nargs="+", default=list(STRUCTURES), choices=list(STRUCTURES))
    ap.add_argument("--ks", nargs="+", type=int, default=[1, 5, 25])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=None,
                    help="time whole steps of these variants instead of the breakdown")
    ap.add_argument("--out", default=None, help="default bench/results/train_step[_<device>].json")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variants:
        variants_main(args, device)
        return
    rows = {}
    head = " ".join(f"{c[:8]:>8s}" for c in COLUMNS)
    print(f"{'structure':15s} {'K':>3s} {'path':9s} {head}  GFLOP GFLOP/s ratio r.ref 1M-h  (ms per step)")
    for structure in args.structures:
        for k in args.ks:
            cell = measure(structure, k, args.method, args.steps, device)
            for name, per in cell.items():
                print(row_text(structure, k, name, per), flush=True)
            cell["speedup"] = cell["reference"]["total"] / cell["optimised"]["total"]
            rows[f"{structure} K={k}"] = cell
    write(args, device, rows)


def variant_step(structure, k, variant, device, method="dvaes_power"):
    """One training step of `variant` as a function of no arguments: negative phase (gibbs,
    1000 chains x 40 sweeps), forward, backward and Adam, on a fixed batch of 100."""
    if variant == "graphed" and device.type != "cuda":
        raise ValueError("the graphed variant needs a CUDA device")
    torch.manual_seed(0)
    beta = default_beta("binarized_mnist", structure, method)
    model = DVAE(structure, method, beta=beta, x_mean=torch.full((784,), 0.13)).to(device)
    if variant != "eager":
        compile_networks(model)
    opt = torch.optim.Adam(parameter_groups(model, 1e-4), lr=3e-4, eps=torch_adam_eps(1e-3, 1))
    sampler = samplers.get("gibbs", num_chains=1000, sweeps=40, seed=0,
                           cuda_graph=variant == "graphed")
    gen = torch.Generator(device=device).manual_seed(0)
    x = (torch.rand(100, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float().to(device)

    def one():
        negatives = sampler.sample(model.prior.snapshot(), 1000)
        out = model(x, negatives, k=k, kappa=0.5, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    return one


def time_variant(structure, k, variant, device, steps, warmup=2) -> dict:
    """Seconds of the first step (compile, capture) and milliseconds per later step, timed
    over `steps` steps run back to back with one synchronisation at the end."""
    one = variant_step(structure, k, variant, device)
    sync(device)
    start = time.perf_counter()
    one()
    sync(device)
    first = time.perf_counter() - start
    for _ in range(warmup):
        one()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    per = (time.perf_counter() - start) / steps
    return {"first_step_s": first, "ms_per_step": per * 1e3, "steps_timed": steps,
            "projected_1M_steps_h": per * FULL_RUN_STEPS / 3600}


def variants_main(args, device) -> None:
    rows = {}
    for structure in args.structures:
        for k in args.ks:
            cell = {}
            for variant in args.variants:
                if variant == "graphed" and device.type != "cuda":
                    cell[variant] = {"measured": False, "reason": "needs a CUDA device"}
                    continue
                cell[variant] = time_variant(structure, k, variant, device, args.steps)
                print(f"{structure:15s} K={k:<3d} {variant:9s} "
                      f"{cell[variant]['ms_per_step']:9.2f} ms/step (first step "
                      f"{cell[variant]['first_step_s']:.1f} s)", flush=True)
            rows[f"{structure} K={k}"] = cell
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    out = {"machine": machine_record(device), "method": args.method,
           "sampler": "gibbs 1000 chains x 40 sweeps", "batch": 100, "variants": rows}
    results_json.save(out, args.out or f"bench/results/train_step_variants{suffix}.json")


def machine_record(device) -> dict:
    machine = {"platform": platform.platform(), "torch": torch.__version__, "device": str(device),
               "threads": torch.get_num_threads()}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
        machine["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return machine


def write(args, device, rows) -> None:
    out = {"machine": machine_record(device), "method": args.method, "sampler": "gibbs 1000 chains x 40 sweeps",
           "batch": 100, "flops": "FlopCounterMode, matrix-matrix products of one forward+backward",
           "seconds_per_step": rows}
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    results_json.save(out, args.out or f"bench/results/train_step{suffix}.json")


if __name__ == "__main__":
    main()
