"""Smoothing families r(ζ|z) that relax binary latents z to continuous ζ (spec §1).

One contract, elementwise over any shape (rows × units):

    log_r0(ζ), log_r1(ζ)   log densities of r(ζ|z=0), r(ζ|z=1)
    cdf0(ζ), cdf1(ζ)       their CDFs
    rsample(logits, generator=None) -> ζ    reparameterised draw from the mixture
                           q(ζ) = (1 − q)·r(ζ|0) + q·r(ζ|1), q = σ(logits)
    log_q(ζ, logits)       log of that mixture density, in log space
    b(ζ), c(ζ)             r(ζ|z) = exp(c(ζ) + b(ζ)·z): c = log r0, b = log r1 − log r0

The overlapping families (exp, power, gauss, unif_exp) parameterise only r0; r1(ζ) = r0(1 − ζ)
(spec §0). Their ζ is drawn ancestrally (z ~ Bernoulli(q), ζ0 ~ r0, ζ = ζ0 or 1 − ζ0) and its
gradient to q comes from implicit differentiation of the mixture CDF (spec §1.0):
∂ζ/∂q = (R0(ζ) − R1(ζ)) / ((1 − q)·r0(ζ) + q·r1(ζ)), injected as a straight-through value.
Spike-and-exponential (DVAE) has a closed-form inverse CDF and no density; callers check the
`has_density` and `overlapping` flags, never the type. β is fixed (never learned).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

POWER_EPS = 1e-7  # part of the power-function model (spec §1.3, pitfall 3): do not change
UNIF_EPS = 0.05  # uniform mixing weight of the uniform+exponential family (spec §1.5)
SPIKE_Q_CLIP = 1e-7  # spike-and-exp clips q to [1e-7, 1 − 1e-7] (spec §1.1)


def _uniform(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)


class Relaxation:
    """Base class. Families override the `_r0` pieces; the mixture machinery is shared."""

    name = ""
    has_density = True
    overlapping = True

    def __init__(self, beta: float):
        if isinstance(beta, bool) or not (isinstance(beta, (int, float)) and beta > 0 and math.isfinite(beta)):
            raise ValueError(f"relaxation '{self.name}': beta must be a positive number, got {beta!r}")
        self.beta = float(beta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta})"

    # --- what a family defines: r0 and its CDF and sampler ---
    def _log_r0(self, zeta):
        raise NotImplementedError

    def _cdf0(self, zeta):
        raise NotImplementedError

    def _sample0(self, like, generator):
        raise NotImplementedError

    # the implicit gradient uses these; the power family's exact variant overrides them
    def _grad_cdf0(self, zeta):
        return self._cdf0(zeta)

    def _grad_log_r0(self, zeta):
        return self._log_r0(zeta)

    # --- the contract ---
    def log_r0(self, zeta):
        """log r(ζ|z=0), elementwise."""
        return self._log_r0(zeta)

    def log_r1(self, zeta):
        """log r(ζ|z=1) = log r0(1 − ζ) (symmetry convention, spec §0)."""
        return self._log_r0(1.0 - zeta)

    def cdf0(self, zeta):
        """R0(ζ), the CDF of r(ζ|z=0)."""
        return self._cdf0(zeta)

    def cdf1(self, zeta):
        """R1(ζ) = 1 − R0(1 − ζ)."""
        return 1.0 - self._cdf0(1.0 - zeta)

    def b(self, zeta):
        """Log-ratio b(ζ) = log r0(1 − ζ) − log r0(ζ) (pitfall 2); σ(l + b(ζ)) is P(z=1 | ζ)."""
        return self._log_r0(1.0 - zeta) - self._log_r0(zeta)

    def c(self, zeta):
        """c(ζ) = log r0(ζ), so that r(ζ|z) = exp(c(ζ) + b(ζ)·z)."""
        return self._log_r0(zeta)

    def log_q(self, zeta, logits):
        """log((1 − q)·r0(ζ) + q·r1(ζ)) with q = σ(logits), as a logaddexp (pitfall 21)."""
        return torch.logaddexp(
            -F.softplus(-logits) + self.log_r1(zeta), -F.softplus(logits) + self.log_r0(zeta)
        )

    def implicit_dzeta_dq(self, zeta, q):
        """∂ζ/∂q = (R0(ζ) − R1(ζ)) / ((1 − q)·r0(ζ) + q·r1(ζ)), the denominator in log space."""
        num = self._grad_cdf0(zeta) - (1.0 - self._grad_cdf0(1.0 - zeta))
        log_den = torch.logaddexp(
            torch.log1p(-q) + self._grad_log_r0(zeta), torch.log(q) + self._grad_log_r0(1.0 - zeta)
        )
        return num * torch.exp(-log_den)

    def rsample(self, logits: torch.Tensor, generator: torch.Generator | None = None):
        """ζ from the mixture, ancestrally, with the implicit gradient to the logits (§1.0)."""
        q = torch.sigmoid(logits)
        with torch.no_grad():
            z = _uniform(logits, generator) < q
            zeta0 = self._sample0(logits, generator)
            zeta = torch.where(z, 1.0 - zeta0, zeta0)
            dq = self.implicit_dzeta_dq(zeta, q)
        return zeta + dq * (q - q.detach())


class SpikeExp(Relaxation):
    """Spike-and-exponential (DVAE): r0 = δ(ζ), r1 = β e^{β(ζ−1)}/(1 − e^{−β}) on [0, 1]."""

    name = "spike_exp"
    has_density = False
    overlapping = False
    _NO_DENSITY = (
        "spike-and-exponential has no density (r(ζ|0) is a point mass); DVAE computes its KL "
        "in discrete space"
    )

    def log_r0(self, zeta):
        raise NotImplementedError(self._NO_DENSITY)

    def log_r1(self, zeta):
        return math.log(self.beta) + self.beta * (zeta - 1.0) - math.log(-math.expm1(-self.beta))

    def cdf0(self, zeta):
        return (zeta >= 0).to(zeta.dtype)

    def cdf1(self, zeta):
        z = zeta.clamp(0.0, 1.0)
        return torch.expm1(self.beta * z) / math.expm1(self.beta)

    def b(self, zeta):
        raise NotImplementedError(self._NO_DENSITY)

    def c(self, zeta):
        raise NotImplementedError(self._NO_DENSITY)

    def log_q(self, zeta, logits):
        raise NotImplementedError(self._NO_DENSITY)

    def rsample(self, logits, generator=None):
        """Closed-form inverse CDF, differentiable in q (spec §1.1)."""
        q = torch.sigmoid(logits).clamp(SPIKE_Q_CLIP, 1.0 - SPIKE_Q_CLIP)
        rho = _uniform(logits, generator)
        active = rho > 1.0 - q
        # inside the branch ρ + q − 1 > 0; elsewhere a harmless placeholder keeps log finite
        arg = torch.where(active, (rho + q - 1.0) / q, torch.zeros_like(q))
        zeta = torch.log1p(math.expm1(self.beta) * arg) / self.beta
        return torch.where(active, zeta, torch.zeros_like(zeta))


class Exponential(Relaxation):
    """Mixture of exponentials (DVAE++/DVAE# exp): r0 = β e^{−βζ}/(1 − e^{−β}) on [0, 1]."""

    name = "exp"

    def _log_r0(self, zeta):
        return math.log(self.beta) - self.beta * zeta - math.log(-math.expm1(-self.beta))

    def _cdf0(self, zeta):
        return torch.expm1(-self.beta * zeta) / math.expm1(-self.beta)

    def _sample0(self, like, generator):
        u = _uniform(like, generator)
        return -torch.log1p(u * math.expm1(-self.beta)) / self.beta

    def b(self, zeta):
        return self.beta * (2.0 * zeta - 1.0)  # linear, |b| ≤ β (spec §1.2)


class Power(Relaxation):
    """Power-function (DVAE++/DVAE# power): r0 = λ ζ^{λ−1}, R0 = ζ^λ, λ = 1/β (spec §1.3).

    pdf, CDF and log-pdf are evaluated at ζ + ε with ε = 1e−7: that floor is part of the model
    the published numbers belong to. `exact_gradient=True` builds the implicit gradient from the
    exact CDF and density instead (floors only where a logarithm would be −∞).
    """

    name = "power"

    def __init__(self, beta: float, exact_gradient: bool = False):
        super().__init__(beta)
        self.lam = 1.0 / self.beta
        self.exact_gradient = bool(exact_gradient)

    def _log_r0(self, zeta):
        return math.log(self.lam) + (self.lam - 1.0) * torch.log(zeta + POWER_EPS)

    def _cdf0(self, zeta):
        return (zeta + POWER_EPS) ** self.lam

    def _sample0(self, like, generator):
        return _uniform(like, generator) ** self.beta

    def _grad_cdf0(self, zeta):
        if not self.exact_gradient:
            return self._cdf0(zeta)
        return zeta.clamp_min(0.0) ** self.lam

    def _grad_log_r0(self, zeta):
        if not self.exact_gradient:
            return self._log_r0(zeta)
        tiny = torch.finfo(zeta.dtype).tiny
        return math.log(self.lam) + (self.lam - 1.0) * torch.log(zeta.clamp_min(tiny))


class Gaussian(Relaxation):
    """Overlapping Gaussians (DVAE# Gauss): r0 = N(0, 1/β), r1 = N(1, 1/β) (β a precision)."""

    name = "gauss"

    def __init__(self, beta: float):
        super().__init__(beta)
        self.sigma = 1.0 / math.sqrt(self.beta)

    def _log_r0(self, zeta):
        return -0.5 * self.beta * zeta * zeta - 0.5 * math.log(2 * math.pi) - math.log(self.sigma)

    def _cdf0(self, zeta):
        return 0.5 * (1.0 + torch.erf(zeta / (self.sigma * math.sqrt(2.0))))

    def _sample0(self, like, generator):
        noise = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
        return self.sigma * noise

    def b(self, zeta):
        return 0.5 * self.beta * (2.0 * zeta - 1.0)


class UniformExponential(Relaxation):
    """Uniform + exponential (DVAE# un+exp): r0 = (1 − ε)·β e^{−βζ}/(1 − e^{−β}) + ε, ε = 0.05.

    Its log-ratio b is bounded (about ±5.7 at β = 16, ±6.6 at β = 40): the point of the family.
    """

    name = "unif_exp"

    def _log_r0(self, zeta):
        log_exp = math.log(self.beta) - self.beta * zeta - math.log(-math.expm1(-self.beta))
        return torch.logaddexp(math.log1p(-UNIF_EPS) + log_exp, torch.full_like(zeta, math.log(UNIF_EPS)))

    def _cdf0(self, zeta):
        exp_cdf = torch.expm1(-self.beta * zeta) / math.expm1(-self.beta)
        return (1.0 - UNIF_EPS) * exp_cdf + UNIF_EPS * zeta

    def _sample0(self, like, generator):
        pick_uniform = _uniform(like, generator) < UNIF_EPS
        u = _uniform(like, generator)
        exp_draw = -torch.log1p(u * math.expm1(-self.beta)) / self.beta
        return torch.where(pick_uniform, u, exp_draw)


FAMILIES = {cls.name: cls for cls in (SpikeExp, Exponential, Power, Gaussian, UniformExponential)}


def make(name: str, beta: float, **options) -> Relaxation:
    """The smoothing family `name` at β; options: `exact_gradient` for `power`.

    An unknown name or option is a ValueError naming the accepted ones.
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown relaxation '{name}'; known: {', '.join(FAMILIES)}")
    cls = FAMILIES[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "beta")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"relaxation '{name}' got unknown options {unknown}; accepted: {accepted or 'none'}"
        )
    return cls(beta, **options)
