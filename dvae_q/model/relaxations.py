"""Relaxations: how a posterior turns binary latents z into continuous ζ, behind one contract.

Every relaxation, elementwise over any shape (rows × units):

    rsample(*params, generator=None) -> ζ   reparameterised draw from the relaxed posterior
    log_q(ζ, *params)                        its log-density (where `has_density`)
    posterior_params(raw, learned) -> params the arguments above after ζ, from the encoder's
                                             raw output (rows, heads·U) and the learned
                                             per-unit tensors of that group; params[0] is
                                             always the logits l, q = σ(l)

and these flags, which callers check instead of the type or the name:

    has_density      log_q exists (spike-and-exp has none: r(ζ|0) is a point mass)
    overlapping      r(ζ|0) and r(ζ|1) overlap, so b(ζ) is finite
    heads            encoder outputs per latent unit (2 for the Gaussian integral: l and shift)
    unit_parameters  learned per-unit tensors the model must own, name → initial value; one
                     tensor of U values per latent group, never weight-decayed
    prior_density    the relaxed prior log p̂(ζ) the DVAE# objective uses: a key of
                     `dvae_q.model.prior.RELAXED_DENSITIES` ("mean_field" or "gaussian_integral")

The smoothing families (spike_exp, exp, power, gauss, unif_exp) have one head and no learned
parameters: params = (logits,). They also expose the smoothing kernel itself:

    log_r0(ζ), log_r1(ζ)   log densities of r(ζ|z=0), r(ζ|z=1); cdf0(ζ), cdf1(ζ) their CDFs
    b(ζ), c(ζ)             r(ζ|z) = exp(c(ζ) + b(ζ)·z): c = log r0, b = log r1 − log r0
    q(ζ) = (1 − q)·r(ζ|0) + q·r(ζ|1)

The overlapping families (exp, power, gauss, unif_exp) parameterise only r0; r1(ζ) = r0(1 − ζ).
Their ζ is drawn ancestrally (z ~ Bernoulli(q), ζ0 ~ r0, ζ = ζ0 or 1 − ζ0) and its gradient to
q comes from implicit differentiation of the mixture CDF:
∂ζ/∂q = (R0(ζ) − R1(ζ)) / ((1 − q)·r0(ζ) + q·r1(ζ)), injected as a straight-through value.
Spike-and-exponential (DVAE) has a closed-form inverse CDF and no density. The Gaussian
integral (`gi`, DVAE# column D) is a mixture of two Gaussians with a data-dependent shift and a
learned scale (`dvae_q.model.gaussian_integral`); its β is the floor of the prior's diagonal shift λ.
β is fixed (never learned).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from dvae_q.model import gaussian_integral as gi

# floor inside the power family's pdf, CDF and log: it keeps b(ζ) finite (|b| ≤ 15.7 at β = 40)
# when 1 − ζ rounds to 1 in float32, and it is part of the model the published numbers
# belong to, so changing it changes the model
POWER_EPS = 1e-7
UNIF_EPS = 0.05  # uniform mixing weight of the uniform+exponential family
SPIKE_Q_CLIP = 1e-7  # spike-and-exp clips q to [1e-7, 1 − 1e-7] so the inverse CDF stays finite


def _uniform(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype)


class Relaxation:
    """Base class. Families override the `_r0` pieces; the mixture machinery is shared."""

    name = ""
    has_density = True
    overlapping = True
    heads = 1
    unit_parameters: dict[str, float] = {}
    prior_density = "mean_field"

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
    def posterior_params(self, raw: torch.Tensor, learned) -> tuple:
        """(logits,): one head per unit and no learned per-unit parameters."""
        return (raw,)

    def log_r0(self, zeta):
        """log r(ζ|z=0), elementwise."""
        return self._log_r0(zeta)

    def log_r1(self, zeta):
        """log r(ζ|z=1) = log r0(1 − ζ) (only r0 is parameterised; r1 is its mirror image)."""
        return self._log_r0(1.0 - zeta)

    def cdf0(self, zeta):
        """R0(ζ), the CDF of r(ζ|z=0)."""
        return self._cdf0(zeta)

    def cdf1(self, zeta):
        """R1(ζ) = 1 − R0(1 − ζ)."""
        return 1.0 - self._cdf0(1.0 - zeta)

    def b(self, zeta):
        """Log-ratio b(ζ) = log r0(1 − ζ) − log r0(ζ), not the reverse; σ(l + b(ζ)) is P(z=1 | ζ)."""
        return self._log_r0(1.0 - zeta) - self._log_r0(zeta)

    def c(self, zeta):
        """c(ζ) = log r0(ζ), so that r(ζ|z) = exp(c(ζ) + b(ζ)·z)."""
        return self._log_r0(zeta)

    def b_and_c(self, zeta):
        """(b(ζ), c(ζ)) with log r0(ζ) evaluated once: the same values as b and c (the mean field
        needs both); gradients equal to rounding (one backward pass through log r0, not two)."""
        c = self._log_r0(zeta)
        return self._log_r0(1.0 - zeta) - c, c

    def log_q(self, zeta, logits):
        """log((1 − q)·r0(ζ) + q·r1(ζ)) with q = σ(logits), as a logaddexp of the log-components
        (the log of the sum underflows where both densities are tiny)."""
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
        """ζ from the mixture, ancestrally, with the implicit gradient to the logits."""
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

    def b_and_c(self, zeta):
        raise NotImplementedError(self._NO_DENSITY)

    def log_q(self, zeta, logits):
        raise NotImplementedError(self._NO_DENSITY)

    def rsample(self, logits, generator=None):
        """Closed-form inverse CDF, differentiable in q."""
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
        return self.beta * (2.0 * zeta - 1.0)  # linear, |b| ≤ β

    def b_and_c(self, zeta):
        return self.b(zeta), self.c(zeta)


class Power(Relaxation):
    """Power-function (DVAE++/DVAE# power): r0 = λ ζ^{λ−1}, R0 = ζ^λ, λ = 1/β.

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

    def b_and_c(self, zeta):
        return self.b(zeta), self.c(zeta)


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


class GaussianIntegral(Relaxation):
    """Gaussian integral (DVAE# GI): per unit (1 − q)·N(ζ; δμ, s²) + q·N(ζ; 1 + δμ, s²).

    Two encoder heads per unit (logits l and shift logits h, δμ = 0.5·(σ(h) − 0.5)) and one
    learned per-unit scale v (s = |0.2·v| + 0.05, v starts at 1); the formulas and gradients are
    in `dvae_q.model.gaussian_integral`. Its prior density is the closed-form Gaussian integral, whose
    diagonal shift is λ = max(λ floor, σ_max(W) + 5): the registry's β is that floor.
    `exact_log_q=True` evaluates log(1 − q) exactly instead of at min(q, 1 − 1e−4).
    """

    name = "gi"
    heads = 2
    unit_parameters = {"scale": 1.0}
    prior_density = "gaussian_integral"
    _NO_KERNEL = (
        "the Gaussian integral's smoothing depends on the encoder's shift and the learned scale; "
        "use rsample/log_q with posterior_params (its prior density is the closed form, not "
        "mean field)"
    )

    def __init__(self, beta: float, exact_log_q: bool = False):
        super().__init__(beta)
        self.lambda_floor = self.beta
        self.exact_log_q = bool(exact_log_q)

    def __repr__(self) -> str:
        return f"GaussianIntegral(lambda_floor={self.lambda_floor}, exact_log_q={self.exact_log_q})"

    def posterior_params(self, raw, learned):
        """(logits, shift logits, v): the two halves of the raw output and the group's scale."""
        units = raw.shape[-1] // self.heads
        return raw[:, :units], raw[:, units:], learned["scale"]

    def rsample(self, logits, shift_logits, scale_param, generator=None):
        return gi.rsample(logits, shift_logits, scale_param, generator=generator)

    def log_q(self, zeta, logits, shift_logits, scale_param):
        return gi.log_q(zeta, logits, shift_logits, scale_param, exact=self.exact_log_q)

    def _log_r0(self, zeta):
        raise NotImplementedError(self._NO_KERNEL)

    def _cdf0(self, zeta):
        raise NotImplementedError(self._NO_KERNEL)

    def _sample0(self, like, generator):
        raise NotImplementedError(self._NO_KERNEL)


FAMILIES = {
    cls.name: cls
    for cls in (SpikeExp, Exponential, Power, Gaussian, UniformExponential, GaussianIntegral)
}


def accepted_options(name: str) -> list[str]:
    """The keyword options relaxation `name` accepts besides β."""
    if name not in FAMILIES:
        raise ValueError(f"unknown relaxation '{name}'; known: {', '.join(FAMILIES)}")
    init = FAMILIES[name].__init__
    return [p for p in inspect.signature(init).parameters if p not in ("self", "beta")]


def make(name: str, beta: float, **options) -> Relaxation:
    """The relaxation `name` at β; options: `exact_gradient` for `power`, `exact_log_q` for
    `gi`. An unknown name or option is a ValueError naming the accepted ones.
    """
    accepted = accepted_options(name)
    cls = FAMILIES[name]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"relaxation '{name}' got unknown options {unknown}; accepted: {accepted or 'none'}"
        )
    return cls(beta, **options)
