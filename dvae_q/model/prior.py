"""The RBM prior and its relaxed log-densities (mean field, Gaussian integral).

E(z) = −a_Lᵀz_L − a_Rᵀz_R − z_Lᵀ W z_R (no ½), p(z) = e^{−E(z)}/Z, z = [z_L; z_R] with the
positional split: left = the first N_L columns, right = the last N_R. Parameters start at
exactly zero; an optional fixed coupling mask (from a hardware topology) zeroes couplings that
do not exist. Rows of ζ are (batch × K) samples; every log-density returns one value per row.
Which relaxed density a model uses is its relaxation's `prior_density`, a key of
`RELAXED_DENSITIES`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

import samplers

ENTROPY_CLIP = 1e-7  # m clipped to [1e-7, 1 − 1e-7] inside the entropy's logs: finite at m ∈ {0, 1}
SCHUR_LOGDET_FLOOR = 1e-20  # added to the Cholesky diagonal inside the log: finite log det
# λ = max(floor, σ_max(W) + 5) keeps M = [[0, W], [Wᵀ, 0]] + λI positive definite by a margin
# (its eigenvalues are λ ± the singular values of W)
GI_LAMBDA_MARGIN = 5.0


class RBMPrior(nn.Module):
    def __init__(self, num_left: int, num_right: int, mask: torch.Tensor | None = None):
        super().__init__()
        self.num_left, self.num_right = num_left, num_right
        self.a_left = nn.Parameter(torch.zeros(num_left))
        self.a_right = nn.Parameter(torch.zeros(num_right))
        self.W = nn.Parameter(torch.zeros(num_left, num_right))
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.float32)
            if mask.shape != (num_left, num_right):
                raise ValueError(f"coupling mask has shape {tuple(mask.shape)}, expected "
                                 f"({num_left}, {num_right})")
        self.register_buffer("mask", mask)

    @property
    def num_units(self) -> int:
        return self.num_left + self.num_right

    def weight(self) -> torch.Tensor:
        """W with absent couplings zeroed."""
        return self.W if self.mask is None else self.W * self.mask

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[..., : self.num_left], z[..., self.num_left :]

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        zl, zr = self.split(z)
        return -(zl @ self.a_left) - (zr @ self.a_right) - ((zl @ self.weight()) * zr).sum(-1)

    def snapshot(self, beta: float = 1.0) -> samplers.BipartiteModel:
        """A detached copy of the parameters for samplers (no gradient flows back)."""
        with torch.no_grad():
            return samplers.BipartiteModel(
                self.a_left.detach().clone(),
                self.a_right.detach().clone(),
                self.weight().detach().clone(),
                None if self.mask is None else self.mask.clone(),
                beta,
            )

    def log_z_surrogate(self, samples: torch.Tensor, value: float | None = None) -> torch.Tensor:
        """Scalar whose gradient is ∇ log Z estimated from sampler samples.

        Gradient: mean_s ∂(−E(z_s))/∂θ, the negative phase. Value: `value` (e.g. the latest AIS
        log Z) or 0 — otherwise meaningless, and never reported as part of a bound.
        """
        x = -self.energy(samples.detach().to(self.W.dtype)).mean()
        return x - x.detach() + (0.0 if value is None else float(value))

    def mean_field_log_prob(self, zeta, relaxation, log_z_sur, num_sweeps: int = 5):
        """Relaxed prior log p̂(ζ) with log Z(ζ) replaced by its naive mean-field bound.

        m starts at 0.5; each sweep updates the right block, then the left, under no_grad.
        Value: log Ẑ(ζ) − log_z_sur (with log Ẑ = −E_aug(m, ζ) + H(m)). Gradient: that of
        −E_aug(sg(m), ζ) − log_z_sur, so ∂/∂a = m − E_s[z], ∂/∂W = m_L m_Rᵀ − E_s[z_L z_Rᵀ] and
        ∂/∂ζ = b′(ζ)m + c′(ζ). Returns (log p̂ per row, mean-field residual max |m − σ(field)|, a detached 0-d tensor).
        """
        if num_sweeps < 1:
            raise ValueError(f"mean field needs at least one sweep, got {num_sweeps}")
        b, c = relaxation.b_and_c(zeta)
        b_l, b_r = self.split(b)
        w = self.weight()
        with torch.no_grad():
            # the fields' constant parts, added once and fused into each sweep's product
            bias_l, bias_r = self.a_left + b_l, self.a_right + b_r
            m_l = torch.full_like(b_l, 0.5)
            m_r = torch.full_like(b_r, 0.5)
            for _ in range(num_sweeps):
                m_r = torch.sigmoid(torch.addmm(bias_r, m_l, w))
                m_l = torch.sigmoid(torch.addmm(bias_l, m_r, w.T))
        # m_L W is both the energy's product (with its gradient to W) and the right block's
        # residual field; the left block's residual is 0, the last sweep having just set m_L to
        # its update from this very m_R
        ml_w = m_l @ w
        with torch.no_grad():
            residual = (m_r - torch.sigmoid(ml_w + bias_r)).abs().amax()
            m = torch.cat([m_l, m_r], -1)
            mc = m.clamp(ENTROPY_CLIP, 1 - ENTROPY_CLIP)
            entropy = -(mc * torch.log(mc) + (1 - mc) * torch.log(1 - mc)).sum(-1)
        neg_e_aug = (
            m_l @ self.a_left
            + m_r @ self.a_right
            + (ml_w * m_r).sum(-1)
            + (b * m + c).sum(-1)
        )
        x = neg_e_aug - log_z_sur
        value = (neg_e_aug + entropy).detach() - log_z_sur.detach()
        return value + (x - x.detach()), residual

    def gi_lambda(self, lam_floor: float) -> float:
        """λ = max(floor, σ_max(W) + 5) from the current W at every call, detached: a constant,
        never trained (a cached σ_max goes stale as W trains and can leave M indefinite)."""
        with torch.no_grad():
            sigma_max = float(torch.linalg.matrix_norm(self.weight().double(), ord=2))
        return max(float(lam_floor), sigma_max + GI_LAMBDA_MARGIN)

    def gaussian_integral_log_prob(self, zeta, lam_floor: float, log_z_sur):
        """Closed-form GI relaxed prior, value and gradient both through it (no mean field):

        log p(ζ) = −½ζᵀMζ + Σ softplus((Mζ)_i + a_i − λ/2) − (N/2)·log(2π/λ) + ½·log det S − log Z
        with M = [[0, W], [Wᵀ, 0]] + λI and S = I − λ⁻² WᵀW (Schur complement, smaller side).
        """
        lam = self.gi_lambda(lam_floor)
        w = self.weight()
        zl, zr = self.split(zeta)
        m_zl = zr @ w.T + lam * zl
        m_zr = zl @ w + lam * zr
        quad = -0.5 * ((zl * m_zl).sum(-1) + (zr * m_zr).sum(-1))
        soft = (
            nn.functional.softplus(m_zl + self.a_left - lam / 2).sum(-1)
            + nn.functional.softplus(m_zr + self.a_right - lam / 2).sum(-1)
        )
        small = w.T @ w if self.num_right <= self.num_left else w @ w.T
        s = torch.eye(small.shape[0], dtype=w.dtype, device=w.device) - small / lam**2
        chol = torch.linalg.cholesky(s)
        logdet_s = 2.0 * torch.log(torch.diagonal(chol) + SCHUR_LOGDET_FLOOR).sum()
        const = -0.5 * self.num_units * math.log(2 * math.pi / lam) + 0.5 * logdet_s
        return quad + soft + const - log_z_sur

    def relaxed_log_prob(self, zeta, relaxation, log_z_sur, mean_field_sweeps: int = 5):
        """log p̂(ζ) per row of the relaxed prior that `relaxation.prior_density` names, and the
        mean-field residual (None where no mean field runs)."""
        density = RELAXED_DENSITIES[relaxation.prior_density]
        return density(self, zeta, relaxation, log_z_sur, mean_field_sweeps)


def _mean_field(prior, zeta, relaxation, log_z_sur, sweeps):
    return prior.mean_field_log_prob(zeta, relaxation, log_z_sur, sweeps)


def _gaussian_integral(prior, zeta, relaxation, log_z_sur, sweeps):
    return prior.gaussian_integral_log_prob(zeta, relaxation.lambda_floor, log_z_sur), None


RELAXED_DENSITIES = {"mean_field": _mean_field, "gaussian_integral": _gaussian_integral}
