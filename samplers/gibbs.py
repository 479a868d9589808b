"""`gibbs`: block Gibbs sampling with persistent chains (PCD), in torch on CPU or CUDA.

Each call advances `num_chains` persistent chains by `sweeps` sweeps at the model's β (a sweep
samples the right block given the left, then the left given the right), then reads them out.
Asking for fewer samples than chains returns the first `num_samples` chains; asking for more
keeps sweeping and takes successive states every `thin` sweeps (successive states of a chain are
correlated: that is honest MCMC output, not independent draws). Chains are reinitialised
uniformly at random when the model's size changes.
"""

from __future__ import annotations

import math

import torch

from samplers.base import SEED, Option, Sampler, positive, seeded_generator
from samplers.model import BipartiteModel


def gibbs_sweeps(
    z_left: torch.Tensor,
    z_right: torch.Tensor,
    a_left: torch.Tensor,
    a_right: torch.Tensor,
    W: torch.Tensor,
    beta: float,
    sweeps: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel: `sweeps` block-Gibbs sweeps of (chains, n) states; flat tensors only."""
    bw, bl, br = beta * W, beta * a_left, beta * a_right
    for _ in range(sweeps):
        u = torch.rand(z_right.shape, generator=generator, device=W.device, dtype=W.dtype)
        z_right = (u < torch.sigmoid(torch.addmm(br, z_left, bw))).to(W.dtype)
        u = torch.rand(z_left.shape, generator=generator, device=W.device, dtype=W.dtype)
        z_left = (u < torch.sigmoid(torch.addmm(bl, z_right, bw.T))).to(W.dtype)
    return z_left, z_right


class GibbsSampler(Sampler):
    name = "gibbs"
    parameters = {
        "num_chains": Option(1000, (int,), positive, "persistent chains, > 0"),
        "sweeps": Option(40, (int,), positive, "sweeps per call before reading, > 0"),
        "thin": Option(1, (int,), positive, "sweeps between successive read-outs, > 0"),
        "seed": SEED,
        "device": Option(None, (str,), None, "where chains live; null: the model's device",
                         nullable=True),
    }

    def __init__(self, **options):
        super().__init__(**options)
        self._chains: torch.Tensor | None = None
        self._generator: torch.Generator | None = None

    def _device(self, model: BipartiteModel) -> torch.device:
        dev = self.options["device"]
        if dev is None:
            return model.device
        # canonical form ('cuda' -> 'cuda:0'), so the chains' device compares equal to it and
        # persistent chains are not mistaken for stale ones on every call
        return torch.empty(0, device=dev).device

    def _ensure(self, model: BipartiteModel, device: torch.device) -> None:
        if self._generator is None or self._generator.device.type != device.type:
            self._generator = seeded_generator(device, self.options["seed"])
        c = self.options["num_chains"]
        if (
            self._chains is None
            or self._chains.shape != (c, model.num_units)
            or self._chains.device != device
            or self._chains.dtype != model.dtype
        ):
            self._chains = torch.randint(
                0, 2, (c, model.num_units), generator=self._generator, device=device
            ).to(model.dtype)

    def _sample(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        device = self._device(model)
        model = model.to(device=device)
        self._ensure(model, device)
        n_l, gen = model.num_left, self._generator
        zl, zr = self._chains[:, :n_l], self._chains[:, n_l:]
        args = (model.a_left, model.a_right, model.W, float(model.beta))
        zl, zr = gibbs_sweeps(zl, zr, *args, self.options["sweeps"], gen)
        reads = [torch.cat([zl, zr], 1)]
        c = self.options["num_chains"]
        for _ in range(math.ceil(num_samples / c) - 1):
            zl, zr = gibbs_sweeps(zl, zr, *args, self.options["thin"], gen)
            reads.append(torch.cat([zl, zr], 1))
        self._chains = reads[-1]
        sweeps = self.options["sweeps"] + self.options["thin"] * (len(reads) - 1)
        return torch.cat(reads)[:num_samples], {"chain_sweeps": sweeps * c, "num_chains": c}

    def state_dict(self) -> dict:
        if self._chains is None:
            return {}
        return {"chains": self._chains.cpu(), "generator": self._generator.get_state(),
                "generator_device": self._generator.device.type}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self._chains, self._generator = None, None
            return
        device = torch.device(self.options["device"] or state["generator_device"])
        gen = torch.Generator(device=device)
        gen.set_state(state["generator"])
        self._generator = gen
        self._chains = state["chains"].to(device)
