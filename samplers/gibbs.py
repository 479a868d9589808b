"""`gibbs`: block Gibbs sampling with persistent chains (PCD), in torch on CPU or CUDA.

Each call advances `num_chains` persistent chains by `sweeps` sweeps at the model's β (a sweep
samples the right block given the left, then the left given the right), then reads them out.
Asking for fewer samples than chains returns the first `num_samples` chains; asking for more
keeps sweeping and takes successive states every `thin` sweeps (successive states of a chain are
correlated: that is honest MCMC output, not independent draws). Chains are reinitialised
uniformly at random when the model's size changes.

Randomness comes from `samplers.uniforms`: on the CPU a seeded SFC64 word stream split into
16-bit uniforms (the fast path), on CUDA a torch.Generator on the device; chains and generator
state stay on the sampler's device and the sweep loop never reads a device value back.

On CUDA (option `cuda_graph`, on by default) the sweeps of a call are captured once as a CUDA
graph (`SweepGraph`, one per chain layout, dtype and sweep count) and replayed: one launch per
call instead of about six per sweep, which is what bounds a small sampler on a GPU. The graph
draws from the sampler's own generator, registered with it, so a replay gives the eager
kernel's samples bit for bit from the same state and checkpoints resume either path exactly.
On the CPU there is nothing to capture: the option has no effect there (the samples are the
same either way) and each call's `info["cuda_graph"]` says which path ran.

The kernels are functions of flat tensors and a random source, so that benchmarks time them
and `torch.compile` could see them:
* `gibbs_sweeps`: block-Gibbs sweeps of (chains, n) states, or of (batch, chains, n) states of a
  batch of models (W (batch, n_L, n_R), biases (batch, n));
* `annealed_sweeps`: one sweep per inverse temperature of a schedule, accumulating the annealed
  importance weights of the one-side marginal (AIS and reverse AIS in `dvae_q.evaluation.logz`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from samplers.base import SEED, Option, Sampler, positive
from samplers.model import BipartiteModel
from samplers.uniforms import bernoulli_, fair_states, make_source, restore_source, source_state

# annealing steps up to this size use the cancellation-free weight increment (see
# `_log_marginal_step`); coarser steps (a schedule of < 65 temperatures) use plain softplus
FINE_STEP = 1.0 / 64


def _field(bias: torch.Tensor, z: torch.Tensor, w: torch.Tensor, out: torch.Tensor,
           scale: float = 1.0) -> torch.Tensor:
    """out ← scale·bias + z @ (scale·w), for (chains, n) states or a (batch, chains, n) batch."""
    if w.dim() == 2:
        return torch.addmm(bias, z, w, beta=scale, alpha=scale, out=out)
    return torch.baddbmm(bias.unsqueeze(-2), z, w, beta=scale, alpha=scale, out=out)


def gibbs_sweeps(
    z_left: torch.Tensor,
    z_right: torch.Tensor,
    a_left: torch.Tensor,
    a_right: torch.Tensor,
    W: torch.Tensor,
    beta: float,
    sweeps: int,
    generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel: `sweeps` block-Gibbs sweeps (right | left, then left | right) at β.

    States are (chains, n) 0/1 tensors in W's dtype, or (batch, chains, n) with W
    (batch, n_L, n_R) and biases (batch, n). `generator` is a `samplers.uniforms` source (a
    `WordStream`, a `torch.Generator`, or one per batch element). `z_right` is only read for its
    shape: the first half-sweep overwrites it. Inputs are never modified; new tensors return.
    """
    if sweeps == 0:
        return z_left, z_right
    bw, bl, br = beta * W, beta * a_left, beta * a_right
    bwt = bw.transpose(-1, -2)
    zl = torch.empty(z_left.shape, dtype=W.dtype, device=W.device)
    zr = torch.empty(z_right.shape, dtype=W.dtype, device=W.device)
    fl, fr = torch.empty_like(zl), torch.empty_like(zr)
    source = z_left
    for _ in range(sweeps):
        bernoulli_(_field(br, source, bw, fr).sigmoid_(), generator, zr)
        bernoulli_(_field(bl, zr, bwt, fl).sigmoid_(), generator, zl)
        source = zl
    return zl, zr


def _log_marginal_step(g: torch.Tensor, p1: torch.Tensor, b0: float, b1: float,
                       buf: torch.Tensor) -> torch.Tensor:
    """Σ_j softplus(b1·g_j) − softplus(b0·g_j) per row, in float64; p1 = σ(b1·g).

    Small steps use softplus(y) − softplus(x) = −log1p(σ(y)·expm1(x − y)), which has no
    cancellation: subtracting two float32 softplus values of size ~|g| leaves up to |g|·6e-8
    per unit, which over hundreds of units and a thousand steps can reach 1e-2 nat, while this
    form is exact to float32 rounding of the (small) increment itself. It stays accurate while
    |(b1 − b0)·g| ≲ 14, i.e. |g| up to ~900 at the fine steps it is used for.
    """
    if abs(b1 - b0) <= FINE_STEP:
        torch.mul(g, b0 - b1, out=buf).expm1_().mul_(p1).log1p_()
        return -buf.sum(-1, dtype=torch.float64)
    diff = F.softplus(b1 * g) - F.softplus(b0 * g)
    return diff.sum(-1, dtype=torch.float64)


def annealed_sweeps(
    v: torch.Tensor,
    a_v: torch.Tensor,
    a_h: torch.Tensor,
    W_vh: torch.Tensor,
    betas: list[float],
    generator,
    progress=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Annealed importance sampling transitions on the v side, with h summed out.

    log f_b(v) = b·a_vᵀv + Σ_j softplus(b·(a_h + vW)_j) is the unnormalised marginal of v at
    inverse temperature b. For each consecutive (b0, b1) of `betas` (increasing for AIS,
    decreasing for reverse AIS): log_w += log f_b1(v) − log f_b0(v) at the current v, then one
    block-Gibbs sweep at b1 (h | v, then v | h), reusing the field a_h + vW for both.
    Returns (v, h, log_w): final states of both sides and float64 log-weights per chain.
    `progress` (anything with `update(n)`, e.g. a dvae_q progress task) counts temperatures.
    """
    chains = v.shape[0]
    v = v.clone()  # updated in place below; the caller's tensor is left alone
    g = torch.empty(chains, a_h.shape[0], dtype=W_vh.dtype, device=W_vh.device)
    p, buf, h = torch.empty_like(g), torch.empty_like(g), torch.zeros_like(g)
    fv = torch.empty_like(v)
    log_w = torch.zeros(chains, dtype=torch.float64, device=W_vh.device)
    w_hv = W_vh.T
    for b0, b1 in zip(betas[:-1], betas[1:]):
        _field(a_h, v, W_vh, g)
        torch.mul(g, b1, out=p).sigmoid_()
        log_w += _log_marginal_step(g, p, b0, b1, buf)
        log_w.add_((v @ a_v).to(torch.float64), alpha=b1 - b0)
        bernoulli_(p, generator, h)
        bernoulli_(_field(a_v, h, w_hv, fv, scale=b1).sigmoid_(), generator, v)
        if progress is not None:
            progress.update(1)
    return v, h, log_w


class SweepGraph:
    """`sweeps` block-Gibbs sweeps of one chain layout, captured once as a CUDA graph.

    Static buffers hold the inputs (the chains' left half, laid out like the tensor the graph
    was made for, so the products see the same strides as the eager kernel's, and the β-scaled
    fields and couplings, scaled by the same multiplication `gibbs_sweeps` does) and the
    outputs. A call copies its inputs in, replays, and returns copies of the outputs, so no
    tensor it hands out is overwritten by the next replay. `generator` is registered with the
    graph: each replay reads its seed and offset as they are at that moment and advances the
    offset by what the eager calls would, so `get_state`/`set_state` keep working across
    replays. The generator's state is put back after the warm-up and the capture: making the
    graph draws no random numbers of any call.
    """

    def __init__(self, z_left: torch.Tensor, z_right: torch.Tensor, model: BipartiteModel,
                 sweeps: int, generator: torch.Generator):
        self.generator = generator
        with torch.cuda.device(z_left.device):
            self.z_left, self.z_right = _static_like(z_left), _static_like(z_right)
            self.a_left, self.a_right = _static_like(model.a_left), _static_like(model.a_right)
            self.W = _static_like(model.W)
            inputs = (self.z_left, self.z_right, self.a_left, self.a_right, self.W, 1.0, sweeps,
                      generator)
            state = generator.get_state()
            # warm-up on a side stream, as capture requires: lazy initialisations (cuBLAS
            # handles and workspaces) must not happen inside the capture
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                gibbs_sweeps(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            generator.set_state(state)
            self.graph = torch.cuda.CUDAGraph()
            self.graph.register_generator_state(generator)
            with torch.cuda.graph(self.graph):
                self.out_left, self.out_right = gibbs_sweeps(*inputs)
            generator.set_state(state)

    def __call__(self, z_left: torch.Tensor, model: BipartiteModel,
                 beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """`gibbs_sweeps(z_left, z_right, model's fields, β, sweeps, generator)`, replayed."""
        self.z_left.copy_(z_left)
        torch.mul(model.a_left, beta, out=self.a_left)  # = `beta * a_left` in gibbs_sweeps
        torch.mul(model.a_right, beta, out=self.a_right)
        torch.mul(model.W, beta, out=self.W)
        self.graph.replay()
        return self.out_left.clone(), self.out_right.clone()


def _static_like(t: torch.Tensor) -> torch.Tensor:
    """A zeroed buffer with `t`'s shape and strides, also those of a view (a column slice of
    the chains), where `zeros_like` would return a contiguous tensor."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device).zero_()


def graph_key(z_left: torch.Tensor, z_right: torch.Tensor, model: BipartiteModel,
              sweeps: int) -> tuple:
    """What a `SweepGraph` is specific to: the layouts of its inputs and the sweep count."""
    return (tuple(z_left.shape), z_left.stride(), z_right.shape[-1], model.W.stride(),
            model.W.dtype, sweeps)


def chain_state(chains: torch.Tensor | None, generator) -> dict:
    """Persistent chains and their random source, on the CPU: {} before the first draw."""
    if chains is None:
        return {}
    return {"chains": chains.cpu(), "generator": source_state(generator),
            "generator_device": generator.device.type}


def restore_chain_state(state: dict, device: str | None):
    """(chains, generator) from `chain_state`'s dict, on `device` or where they were saved."""
    if not state:
        return None, None
    where = torch.device(device or state["generator_device"])
    return state["chains"].to(where), restore_source(state["generator"], where)


class GibbsSampler(Sampler):
    name = "gibbs"
    parameters = {
        "num_chains": Option(1000, (int,), positive, "persistent chains, > 0"),
        "sweeps": Option(40, (int,), positive, "sweeps per call before reading, > 0"),
        "thin": Option(1, (int,), positive, "sweeps between successive read-outs, > 0"),
        "seed": SEED,
        "device": Option(None, (str,), None, "where chains live; null: the model's device",
                         nullable=True),
        "cuda_graph": Option(True, (bool,), None, "chains on CUDA: replay each call's sweeps "
                             "from a captured CUDA graph (the same samples, bit for bit); no "
                             "effect on the CPU"),
    }

    def __init__(self, **options):
        super().__init__(**options)
        self._chains: torch.Tensor | None = None
        self._generator = None  # a samplers.uniforms source, made on first use
        self._graphs: dict[tuple, SweepGraph] = {}  # by graph_key, for this generator only

    def _device(self, model: BipartiteModel) -> torch.device:
        dev = self.options["device"]
        if dev is None:
            return model.device
        # canonical form ('cuda' -> 'cuda:0'), so the chains' device compares equal to it and
        # persistent chains are not mistaken for stale ones on every call
        return torch.empty(0, device=dev).device

    def _ensure(self, model: BipartiteModel, device: torch.device) -> None:
        if self._generator is None or self._generator.device.type != device.type:
            self._generator = make_source(device, self.options["seed"])
            self._graphs.clear()  # graphs hold the generator they were captured with
        c = self.options["num_chains"]
        if (
            self._chains is None
            or self._chains.shape != (c, model.num_units)
            or self._chains.device != device
            or self._chains.dtype != model.dtype
        ):
            self._chains = fair_states(self._generator, (c, model.num_units), device, model.dtype)

    def _sample(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        device = self._device(model)
        model = model.to(device=device)
        self._ensure(model, device)
        n_l = model.num_left
        graphed = self.options["cuda_graph"] and device.type == "cuda"
        zl, zr = self._chains[:, :n_l], self._chains[:, n_l:]
        zl, zr = self._sweeps(zl, zr, model, self.options["sweeps"], graphed)
        reads = [torch.cat([zl, zr], 1)]
        c = self.options["num_chains"]
        for _ in range(math.ceil(num_samples / c) - 1):
            zl, zr = self._sweeps(zl, zr, model, self.options["thin"], graphed)
            reads.append(torch.cat([zl, zr], 1))
        self._chains = reads[-1]
        sweeps = self.options["sweeps"] + self.options["thin"] * (len(reads) - 1)
        return torch.cat(reads)[:num_samples], {"chain_sweeps": sweeps * c, "num_chains": c,
                                                "cuda_graph": graphed}

    def _sweeps(self, zl, zr, model: BipartiteModel, sweeps: int, graphed: bool):
        """`gibbs_sweeps` at the model's β: eager, or replayed from this layout's graph."""
        beta = float(model.beta)
        if not graphed:
            return gibbs_sweeps(zl, zr, model.a_left, model.a_right, model.W, beta, sweeps,
                                self._generator)
        key = graph_key(zl, zr, model, sweeps)
        if key not in self._graphs:
            self._graphs[key] = SweepGraph(zl, zr, model, sweeps, self._generator)
        return self._graphs[key](zl, model, beta)

    def state_dict(self) -> dict:
        return chain_state(self._chains, self._generator)

    def load_state_dict(self, state: dict) -> None:
        self._chains, self._generator = restore_chain_state(state, self.options["device"])
        self._graphs.clear()  # captured with the generator just replaced
