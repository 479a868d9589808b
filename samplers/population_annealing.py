"""`pa`: population annealing in torch, with a log Z estimate as a by-product.

A population of `num_particles` starts uniform at β = 0 (exact) and is annealed through
`num_betas` linearly spaced inverse temperatures up to the model's β. At each step particle i is
reweighted by w_i = exp(−Δβ·E(z_i)), the population is resampled in proportion to w
(systematic resampling, every step), and `sweeps_per_beta` block-Gibbs sweeps at the new β
follow. The product of the mean weights estimates the partition-function ratio, so
log Z(β) ≈ N·log 2 + Σ_k log mean_i w_i (reported in `info['log_z']`), and the smallest relative
effective population size (1/Σ ŵ² over normalised weights, smallest over the steps) in
`info['ess']`. Populations are fresh at every call (no persistence; the state is the generator);
asking for more samples than particles runs independent populations, whose Z estimates are
averaged (log-mean-exp) into `info['log_z']`.

Randomness comes from `samplers.uniforms` (a fast seeded word stream on the CPU, a
torch.Generator on CUDA); the annealing loop keeps its running log Z and ESS on the device and
reads them back once per population.
"""

from __future__ import annotations

import math

import torch

from samplers.base import SEED, Option, Sampler, positive
from samplers.gibbs import gibbs_sweeps
from samplers.model import BipartiteModel
from samplers.uniforms import fair_states, make_source, restore_source, source_state, uniform


def systematic_resample(weights: torch.Tensor, generator) -> torch.Tensor:
    """Indices of a systematic resample of normalised `weights` (one uniform offset);
    `generator` is a `samplers.uniforms` source."""
    n = weights.shape[0]
    cdf = torch.cumsum(weights, 0)
    cdf[-1] = 1.0
    u = (uniform(generator, 1, weights.device, weights.dtype)
         + torch.arange(n, device=weights.device, dtype=weights.dtype)) / n
    return torch.searchsorted(cdf, u).clamp_max(n - 1)


class PopulationAnnealingSampler(Sampler):
    name = "pa"
    parameters = {
        "num_particles": Option(1000, (int,), positive, "population size, > 0"),
        "num_betas": Option(40, (int,), positive, "annealing steps from 0 to β, > 0"),
        "sweeps_per_beta": Option(1, (int,), positive, "Gibbs sweeps after each step, > 0"),
        "seed": SEED,
    }

    def __init__(self, **options):
        super().__init__(**options)
        self._generator = None  # a samplers.uniforms source, made on first use

    def _gen(self, device: torch.device):
        if self._generator is None or self._generator.device.type != device.type:
            self._generator = make_source(device, self.options["seed"])
        return self._generator

    def anneal(self, model: BipartiteModel) -> tuple[torch.Tensor, float, float]:
        """One population: (final states, log Z estimate, smallest relative ESS)."""
        gen = self._gen(model.device)
        r, n_l = self.options["num_particles"], model.num_left
        z = fair_states(gen, (r, model.num_units), model.device, model.dtype)
        zl, zr = z[:, :n_l], z[:, n_l:]
        betas = torch.linspace(0.0, float(model.beta), self.options["num_betas"] + 1)[1:]
        log_z = torch.zeros((), dtype=torch.float64, device=model.device)
        min_ess, prev = torch.ones((), dtype=torch.float64, device=model.device), 0.0
        for b in betas.tolist():
            energy = model.energy(torch.cat([zl, zr], 1))
            log_w = -(b - prev) * energy.double()
            log_z += torch.logsumexp(log_w, 0) - math.log(r)
            w = torch.softmax(log_w, 0)
            min_ess = torch.minimum(min_ess, 1.0 / (w * w).sum() / r)
            idx = systematic_resample(w, gen)
            zl, zr = zl[idx], zr[idx]
            zl, zr = gibbs_sweeps(zl, zr, model.a_left, model.a_right, model.W, b,
                                  self.options["sweeps_per_beta"], gen)
            prev = b
        log_z = model.num_units * math.log(2.0) + float(log_z)  # one read-back per population
        return torch.cat([zl, zr], 1), log_z, float(min_ess)

    def _sample(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        runs = [self.anneal(model) for _ in range(math.ceil(num_samples / self.options["num_particles"]))]
        # each population's exp(log Z) is an unbiased estimate of Z, so their mean is too
        log_zs = torch.tensor([r[1] for r in runs], dtype=torch.float64)
        log_z = float(torch.logsumexp(log_zs, 0)) - math.log(len(runs))
        info = {"log_z": log_z, "ess": min(r[2] for r in runs), "populations": len(runs)}
        return torch.cat([r[0] for r in runs])[:num_samples], info

    def state_dict(self) -> dict:
        if self._generator is None:
            return {}
        return {"generator": source_state(self._generator), "device": self._generator.device.type}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._generator = restore_source(state["generator"], state["device"])
