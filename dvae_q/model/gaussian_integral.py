"""The Gaussian-integral relaxation's posterior: a mixture of two shifted Gaussians.

Per unit, with q = σ(l), δμ = 0.5·(σ(h) − 0.5) ∈ (−0.25, 0.25) from a second encoder head h,
and a learned per-unit scale s = |0.2·v| + 0.05 (v starts at 1, so s starts at 0.25):

    q(ζ) = (1 − q)·N(ζ; δμ, s²) + q·N(ζ; 1 + δμ, s²)

ζ = z + δμ + s·ε with z ~ Bernoulli(q), ε ~ N(0, 1). Gradients by implicit differentiation of
the mixture CDF, with μ0 = δμ, μ1 = 1 + δμ, N_k = N(ζ; μ_k, s²), Φ_k the CDFs, f the density:

    ∂ζ/∂q = (Φ0 − Φ1)/f,   ∂ζ/∂δμ = 1,
    ∂ζ/∂s = [(1 − q)·N0·(ζ − μ0) + q·N1·(ζ − μ1)] / (s·f)

The last one subtracts the shift: the original DVAE# code used ζ and ζ − 1 there, a gradient
off by exactly δμ/s (0.8 at δμ = 0.2, s = 0.25). v is a model parameter (one tensor of U values
per latent group, initialised to ones, no weight decay) that broadcasts against the (rows, U)
logits. Shapes are elementwise: logits, shift_logits and ζ share one shape. Works in float32
and float64. `dvae_q.model.relaxations.GaussianIntegral` puts these functions behind the relaxation
contract; the GI *prior* density is `dvae_q.model.prior.RBMPrior.gaussian_integral_log_prob`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SCALE_FLOOR = 0.05
SCALE_FACTOR = 0.2
# the published model evaluates log(1 − q) at q ≤ 1 − 1e−4; above logit ≈ 9.2 that leaves the
# density unnormalised (`log_q(..., exact=True)` is the exact alternative)
GI_Q_CLIP = 1e-4
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def shift(shift_logits: torch.Tensor) -> torch.Tensor:
    """δμ = 0.5·(σ(h) − 0.5) ∈ (−0.25, 0.25)."""
    return 0.5 * (torch.sigmoid(shift_logits) - 0.5)


def scale(scale_param: torch.Tensor) -> torch.Tensor:
    """s = |0.2·v| + 0.05 ≥ 0.05."""
    return (SCALE_FACTOR * scale_param).abs() + SCALE_FLOOR


def _log_normal(x, mu, s):
    return -0.5 * ((x - mu) / s) ** 2 - torch.log(s) - _LOG_SQRT_2PI


def _normal_cdf(x, mu, s):
    return 0.5 * (1.0 + torch.erf((x - mu) / (s * math.sqrt(2.0))))


def implicit_gradients(zeta, q, dmu, s):
    """(∂ζ/∂q, ∂ζ/∂s) at a sample ζ of the mixture, every density term in log space."""
    mu0, mu1 = dmu, 1.0 + dmu
    log_n0, log_n1 = _log_normal(zeta, mu0, s), _log_normal(zeta, mu1, s)
    log_a0, log_a1 = torch.log1p(-q) + log_n0, torch.log(q) + log_n1
    log_f = torch.logaddexp(log_a0, log_a1)
    d_q = (_normal_cdf(zeta, mu0, s) - _normal_cdf(zeta, mu1, s)) * torch.exp(-log_f)
    w0, w1 = torch.exp(log_a0 - log_f), torch.exp(log_a1 - log_f)
    d_s = (w0 * (zeta - mu0) + w1 * (zeta - mu1)) / s
    return d_q, d_s


def rsample(logits, shift_logits, scale_param, generator=None):
    """ζ from the shifted-Gaussian mixture with gradients to logits, shift head and scale."""
    q = torch.sigmoid(logits)
    dmu = shift(shift_logits)
    s = scale(scale_param).expand_as(logits)
    with torch.no_grad():
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        eps = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        zeta = (u < q).to(logits.dtype) + dmu + s * eps
        d_q, d_s = implicit_gradients(zeta, q, dmu, s)
    return zeta + d_q * (q - q.detach()) + (dmu - dmu.detach()) + d_s * (s - s.detach())


def log_q(zeta, logits, shift_logits, scale_param, exact: bool = False):
    """log q(ζ) = log(1 − q) + log N(ζ; μ0, s²) + softplus(l + [2ζ(μ1 − μ0) + μ0² − μ1²]/(2s²)).

    Default (the published model): log(1 − q) is evaluated at min(q, 1 − 1e−4) while the
    softplus keeps the true logit, so for l > log(1e4 − 1) ≈ 9.2 the density integrates to
    1e−4·(1 + e^l) instead of 1. `exact=True` uses log(1 − q) = −softplus(l), which is exact
    for every logit and agrees with the default to rounding where the clip is inactive.
    """
    dmu = shift(shift_logits)
    s = scale(scale_param)
    mu0, mu1 = dmu, 1.0 + dmu
    if exact:
        log_one_minus_q = -F.softplus(logits)
    else:
        log_one_minus_q = torch.log1p(-torch.sigmoid(logits).clamp_max(1.0 - GI_Q_CLIP))
    ratio = (2.0 * zeta * (mu1 - mu0) + mu0 * mu0 - mu1 * mu1) / (2.0 * s * s)
    return log_one_minus_q + _log_normal(zeta, mu0, s) + F.softplus(logits + ratio)
