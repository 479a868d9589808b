"""Block Gibbs (PCD) for several sessions at once: one batched kernel over stacked chains.

`PackedGibbsSampler` has the `gibbs` sampler's options and semantics (persistent chains, `sweeps`
per call, successive read-outs every `thin` sweeps, chains reinitialised when the model's size
changes) and its state format (chains, random-source state, device), so a checkpoint moves
between a packed and an unpacked service. `draw_packed` advances the chains of S such samplers,
each under its own model, in one call of the batched `samplers.gibbs.gibbs_sweeps`: per
half-sweep one `torch.baddbmm` over the stacked (S, chains, n) states and the stacked β·W.

What stays a session's own when it is packed (see docs/service.md):
* its chains: rows of its own slice of the stacked tensors, updated from its own W, biases, β;
  a batched matrix product never mixes slices;
* its random stream: every uniform it consumes comes from its own `samplers.uniforms` source
  (the `gibbs` sampler's: a word stream on the CPU, a torch.Generator on CUDA), one (chains, n_R)
  draw then one (chains, n_L) draw per sweep, the calls, shapes and order of the unpacked
  kernel, so its source advances exactly as if it had run alone.
Hence a session's samples do not depend on which sessions it was packed with (bit for bit on
CPU, where each batch slice is its own product; a GPU may pick another GEMM kernel for another
batch size). Against the unpacked `gibbs` backend only the rounding of the fields may differ
(baddbmm against addmm), which flips a comparison u < σ(x) only when u falls within rounding
of σ(x); the distribution is the same, as the fidelity tests check against enumeration.
"""

from __future__ import annotations

import math

import torch

from samplers.base import MEAN_ENERGY_SAMPLES, Sampler
from samplers.gibbs import GibbsSampler, chain_state, gibbs_sweeps, restore_chain_state
from samplers.model import BipartiteModel
from samplers.uniforms import fair_states, make_source


class PackedGibbsSampler(Sampler):
    """The `gibbs` sampler run through the packed kernel (alone, it is a pack of one)."""

    name = "gibbs"
    parameters = GibbsSampler.parameters

    def __init__(self, **options):
        super().__init__(**options)
        self.chains: torch.Tensor | None = None
        self.generator = None  # a samplers.uniforms source, as the gibbs sampler's

    def device_for(self, model: BipartiteModel) -> torch.device:
        dev = self.options["device"]
        # canonical form ('cuda' -> 'cuda:0') so that persistent chains compare equal to it
        return model.device if dev is None else torch.empty(0, device=dev).device

    def prepare(self, model: BipartiteModel) -> BipartiteModel:
        """The model on this sampler's device, with chains and generator ready for it."""
        device = self.device_for(model)
        model = model.to(device=device)
        if self.generator is None or self.generator.device.type != device.type:
            self.generator = make_source(device, self.options["seed"])
        shape = (self.options["num_chains"], model.num_units)
        c = self.chains
        if c is None or c.shape != shape or c.device != device or c.dtype != model.dtype:
            self.chains = fair_states(self.generator, shape, device, model.dtype)
        return model

    def _sample(self, model: BipartiteModel, num_samples: int):
        return draw_packed([self], [model], num_samples)[0]

    def state_dict(self) -> dict:
        return chain_state(self.chains, self.generator)

    def load_state_dict(self, state: dict) -> None:
        self.chains, self.generator = restore_chain_state(state, self.options["device"])


def draw_packed(members: list[PackedGibbsSampler], models: list[BipartiteModel],
                num_samples: int) -> list[tuple[torch.Tensor, dict]]:
    """(samples, info) for each member, advanced together; the members share their options,
    device, dtype and model shape (the packing key)."""
    models = [m.prepare(model) for m, model in zip(members, models)]
    opts, n_l = members[0].options, models[0].num_left
    c = opts["num_chains"]
    stack = lambda f: torch.stack([f(m) for m in models])  # noqa: E731
    # each session's β is folded into its parameters, so the kernel runs at β = 1
    params = (stack(lambda m: float(m.beta) * m.a_left), stack(lambda m: float(m.beta) * m.a_right),
              stack(lambda m: float(m.beta) * m.W), 1.0)
    chains = torch.stack([m.chains for m in members])
    zl, zr = chains[..., :n_l], chains[..., n_l:]
    gens = [m.generator for m in members]
    zl, zr = gibbs_sweeps(zl, zr, *params, opts["sweeps"], gens)
    reads = [torch.cat([zl, zr], 2)]
    for _ in range(math.ceil(num_samples / c) - 1):
        zl, zr = gibbs_sweeps(zl, zr, *params, opts["thin"], gens)
        reads.append(torch.cat([zl, zr], 2))
    sweeps = opts["sweeps"] + opts["thin"] * (len(reads) - 1)
    samples = torch.cat(reads, 1)[:, :num_samples]
    out = []
    for s, (member, model) in enumerate(zip(members, models)):
        member.chains = reads[-1][s]
        z = samples[s]
        with torch.no_grad():
            energy = float(model.energy(z[:MEAN_ENERGY_SAMPLES]).mean())
        out.append((z, {"chain_sweeps": sweeps * c, "num_chains": c, "mean_energy": energy,
                        "beta": float(model.beta), "num_samples": num_samples}))
    return out
