"""Effective inverse temperature by energy matching: a global, energy-level estimator.

**Idea.** Draw reference samples of the model p(z) ∝ exp(−β₀·E(z)) at its own β₀ (usually 1)
with a classical sampler known to be close to Boltzmann (exact enumeration for small models,
block Gibbs otherwise). The mean energy U(β) = ⟨E⟩_β is strictly decreasing in β
(dU/dβ = −Var_β(E)), so the mean energy Ē of samples from another sampler determines the one β at
which the model has that mean energy: β̂ = U⁻¹(Ē). A sampler that is Boltzmann at one temperature
gives the same β̂ here as the local pseudo-likelihood estimator (`samplers.temperature`); a sampler
that is not (freeze-out, per-qubit field offsets, different temperatures for fields and
couplers) generally does not, and that disagreement is the signal.

**The curve.** U(β) near β₀ comes from the reference samples reweighted by exp(−(β − β₀)·E)
(importance sampling). Reweighting is trusted only while the weights' effective sample size is
at least `MIN_ESS_FRACTION` of the reference; a target mean energy outside that range gives the
nearest trusted β and `clipped=True`, so a calibration loop takes a capped step and tries again.

**Error bar** (delta method): β̂ moves by δĒ/U'(β̂) when Ē moves by δĒ, so
stderr(β̂) = sqrt(se(Ē)² + se(U(β̂))²) / Var_β̂(E), with se(Ē) the standard error of the samples'
mean energy and se(U) that of the reweighted reference mean (its variance over its ESS).

**Units.** E is the model's energy without its own β, so exact samples of a model with beta=b
give β̂ ≈ b, as with `estimate_beta`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq

from samplers.model import BipartiteModel

# reweighted reference means are trusted while the weights keep 10 % of the reference's samples:
# beyond that, a handful of reference samples would decide the curve
MIN_ESS_FRACTION = 0.1
# the trusted β range is searched no further than this factor from β₀ on either side
MAX_BETA_FACTOR = 8.0
# reference sampling defaults: independent chains, one read each
REFERENCE_SAMPLES = 4000
REFERENCE_SWEEPS = 200


class EnergyMatchingError(ValueError):
    """The energies carry no temperature information (e.g. every sample has the same energy)."""


def model_energies(model: BipartiteModel, samples) -> np.ndarray:
    """E(z) (without the model's β) of every row of `samples`, as float64 numpy."""
    z = torch.as_tensor(samples).detach().to("cpu", torch.float64)
    return model.to(device="cpu", dtype=torch.float64).energy(z).numpy()


@dataclass(frozen=True)
class EnergyReference:
    """Energies of reference samples drawn at the model's β₀, and the mean-energy curve they
    give near β₀."""

    beta: float
    energies: np.ndarray
    sampler: str = ""

    @property
    def num_samples(self) -> int:
        return len(self.energies)

    def at(self, beta: float) -> tuple[float, float, float]:
        """(U(β), Var_β(E), standard error of U(β)) by reweighting to β."""
        e = self.energies
        logw = -(beta - self.beta) * (e - e.mean())
        w = np.exp(logw - logw.max())
        w /= w.sum()
        mean = float(w @ e)
        var = float(w @ (e - mean) ** 2)
        ess = 1.0 / float(w @ w)
        return mean, var, math.sqrt(var / ess)

    def ess_fraction(self, beta: float) -> float:
        e = self.energies
        logw = -(beta - self.beta) * (e - e.mean())
        w = np.exp(logw - logw.max())
        return float(w.sum() ** 2 / (w @ w)) / len(e)

    def trusted_range(self) -> tuple[float, float]:
        """The β interval around β₀ where the reweighting keeps MIN_ESS_FRACTION of the samples.
        The ESS falls monotonically with |β − β₀| (log ESS = 2K(t) − K(2t), K convex), so each
        edge is one root."""
        def edge(far):
            if self.ess_fraction(far) >= MIN_ESS_FRACTION:
                return far
            return brentq(lambda b: self.ess_fraction(b) - MIN_ESS_FRACTION, self.beta, far,
                          xtol=1e-9 * self.beta)
        return edge(self.beta / MAX_BETA_FACTOR), edge(self.beta * MAX_BETA_FACTOR)


def energy_reference(model: BipartiteModel, num_samples: int = REFERENCE_SAMPLES, *,
                     sampler=None, sweeps: int = REFERENCE_SWEEPS,
                     seed: int | None = 0) -> EnergyReference:
    """Reference energies of `model` at its own β from a classical sampler.

    `sampler` (a `samplers.Sampler`) defaults to `exact` when the model's smaller side can be
    enumerated, else `gibbs` with one independent chain per sample run for `sweeps` sweeps from
    a uniform start — adequate for weakly coupled probes; a strongly coupled (trained) prior needs
    a better-mixing reference passed in. Raises EnergyMatchingError when the energies do not vary.
    """
    import samplers
    from samplers.exact import MAX_ENUMERATED

    if sampler is None:
        if min(model.num_left, model.num_right) <= MAX_ENUMERATED:
            sampler = samplers.get("exact", seed=seed)
        else:
            sampler = samplers.get("gibbs", num_chains=num_samples, sweeps=sweeps, seed=seed)
    z = sampler.sample(model, num_samples, dtype=torch.float64)
    energies = model_energies(model, z)
    if np.ptp(energies) == 0:
        raise EnergyMatchingError("every reference sample has the same energy: the model carries "
                                  "no temperature information (all fields and couplings zero?)")
    return EnergyReference(float(model.beta), energies, getattr(sampler, "name", ""))


@dataclass(frozen=True)
class EnergyMatch:
    """β̂ = U⁻¹(Ē) of one set of samples, with its delta-method error, and the mean-energy gap
    to the reference at β₀ (what a calibration loop drives to zero)."""

    beta: float
    stderr: float
    mean_energy: float
    gap: float            # Ē − U(β₀)
    gap_stderr: float     # combined standard error of the two means
    num_samples: int
    clipped: bool         # Ē lies outside the trusted range: β̂ is that range's nearest edge


def match_energy(model: BipartiteModel, samples, reference: EnergyReference) -> EnergyMatch:
    """The energy-matching β̂ of `samples` (rows of {0, 1}) against `reference`."""
    e = model_energies(model, samples)
    n = len(e)
    if n < 2:
        raise EnergyMatchingError("energy matching needs at least two samples for a standard error")
    mean, se = float(e.mean()), float(e.std(ddof=1)) / math.sqrt(n)
    u0, _, se0 = reference.at(reference.beta)
    lo, hi = reference.trusted_range()
    curve = lambda b: reference.at(b)[0] - mean  # noqa: E731  (decreasing in b)
    if curve(lo) < 0:
        beta, clipped = lo, True
    elif curve(hi) > 0:
        beta, clipped = hi, True
    else:
        beta, clipped = brentq(curve, lo, hi, xtol=1e-12 * hi), False
    _, var, se_ref = reference.at(beta)
    return EnergyMatch(beta=float(beta), stderr=math.sqrt(se**2 + se_ref**2) / var,
                       mean_energy=mean, gap=mean - u0, gap_stderr=math.sqrt(se**2 + se0**2),
                       num_samples=n, clipped=clipped)
