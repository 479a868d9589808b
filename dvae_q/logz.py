"""log Z of a bipartite RBM: exact enumeration, AIS, and reverse AIS (RAISE) (spec §7, D9).

All three marginalise one side analytically. With v the smaller side and h the larger,
    log f_β(v) = β·a_vᵀv + Σ_j softplus(β·(a_h + vW)_j),    Z(β) = Σ_v f_β(v),
and f_0(v) = 2^{n_h}, so the uniform base has log Z_0 = (n_v + n_h)·log 2.

* `exact_log_z`: logsumexp of log f_1 over all 2^{n_v} states, in chunks, float64 (n_v ≤ 26).
* `ais_log_z`: annealed importance sampling (Neal 2001; for RBMs Salakhutdinov & Murray 2008)
  from the uniform base along β ∈ linspace(0, 1, num_temps), one block-Gibbs transition per
  temperature; weights use the marginal f_β(v), which has lower variance than the joint. Its
  estimate is a stochastic lower bound of log Z (Jensen): E[log Ẑ] ≤ log Z.
* `raise_log_z`: reverse AIS (Burda, Grosse & Salakhutdinov 2015): start from samples of the
  model and anneal back to the base; log Ẑ = log Z_0 − logmeanexp(log w). With exact model
  samples it is a stochastic upper bound, so [AIS, RAISE] brackets log Z; with approximate
  samples (the default: long block-Gibbs chains) the upper side holds only as well as they mix.

Standard errors are delta-method: sd of the normalised weights / sqrt(num_chains).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

MAX_EXACT_UNITS = 26


class LogZEstimate(NamedTuple):
    log_z: float
    stderr: float
    log_weights: torch.Tensor | None = None

    @property
    def ess(self) -> float:
        """Effective sample size of the importance weights."""
        if self.log_weights is None:
            return float("nan")
        w = torch.softmax(self.log_weights, 0)
        return float(1.0 / (w * w).sum())


def _as_f64(*arrays):
    return [torch.as_tensor(a).detach().to(torch.float64) for a in arrays]


def _orient(a_left, a_right, W):
    """(a_v, a_h, W_vh) with v the smaller side."""
    a_l, a_r, w = _as_f64(a_left, a_right, W)
    if a_l.shape[0] <= a_r.shape[0]:
        return a_l, a_r, w
    return a_r, a_l, w.T


def _log_f(v, beta, a_v, a_h, w):
    return beta * (v @ a_v) + F.softplus(beta * (a_h + v @ w)).sum(-1)


def exact_log_z(a_left, a_right, W, chunk: int = 1 << 16) -> float:
    """Exact log Z, summing the smaller side over all its states (≤ 26 units), float64."""
    a_v, a_h, w = _orient(a_left, a_right, W)
    n = a_v.shape[0]
    if n > MAX_EXACT_UNITS:
        raise ValueError(
            f"exact_log_z: the smaller side has {n} units; enumeration is limited to "
            f"{MAX_EXACT_UNITS} — use ais_log_z"
        )
    shifts = torch.arange(n - 1, -1, -1, device=w.device)
    total = torch.tensor(-math.inf, dtype=torch.float64, device=w.device)
    for start in range(0, 2**n, chunk):
        codes = torch.arange(start, min(start + chunk, 2**n), device=w.device)
        v = ((codes.unsqueeze(1) >> shifts) & 1).to(torch.float64)
        total = torch.logaddexp(total, torch.logsumexp(_log_f(v, 1.0, a_v, a_h, w), 0))
    return float(total)


def _estimate(log_w: torch.Tensor, base: float, sign: float) -> LogZEstimate:
    n = log_w.shape[0]
    lme = float(torch.logsumexp(log_w, 0)) - math.log(n)
    r = torch.exp(log_w - log_w.max())
    stderr = float(r.std(unbiased=True) / r.mean()) / math.sqrt(n) if n > 1 else float("inf")
    return LogZEstimate(base + sign * lme, stderr, log_w)


def _gibbs(v, beta, a_v, a_h, w, gen):
    p_h = torch.sigmoid(beta * (a_h + v @ w))
    h = (torch.rand(p_h.shape, generator=gen, dtype=p_h.dtype, device=p_h.device) < p_h).double()
    p_v = torch.sigmoid(beta * (a_v + h @ w.T))
    return (torch.rand(p_v.shape, generator=gen, dtype=p_v.dtype, device=p_v.device) < p_v).double()


def _generator(gen, device):
    if gen is None:
        gen = torch.Generator(device=device)
        gen.seed()
    return gen


def ais_log_z(a_left, a_right, W, num_temps: int = 1000, num_chains: int = 1024,
              generator: torch.Generator | None = None) -> LogZEstimate:
    """AIS estimate of log Z with its standard error (uniform base, linear β schedule)."""
    a_v, a_h, w = _orient(a_left, a_right, W)
    gen = _generator(generator, w.device)
    betas = torch.linspace(0.0, 1.0, num_temps, dtype=torch.float64).tolist()
    v = (torch.rand((num_chains, a_v.shape[0]), generator=gen, dtype=torch.float64,
                    device=w.device) < 0.5).double()
    log_w = torch.zeros(num_chains, dtype=torch.float64, device=w.device)
    for prev, beta in zip(betas[:-1], betas[1:]):
        log_w += _log_f(v, beta, a_v, a_h, w) - _log_f(v, prev, a_v, a_h, w)
        v = _gibbs(v, beta, a_v, a_h, w, gen)
    base = (a_v.shape[0] + a_h.shape[0]) * math.log(2.0)
    return _estimate(log_w, base, +1.0)


def raise_log_z(a_left, a_right, W, num_temps: int = 1000, num_chains: int = 1024,
                generator: torch.Generator | None = None, init_samples: torch.Tensor | None = None,
                burn_in: int = 1000) -> LogZEstimate:
    """Reverse AIS: from model samples (given as full states, left|right, or drawn by
    `burn_in` block-Gibbs sweeps from uniform) back to the uniform base."""
    a_v, a_h, w = _orient(a_left, a_right, W)
    gen = _generator(generator, w.device)
    n_left = torch.as_tensor(a_left).shape[0]
    left_is_v = n_left <= torch.as_tensor(a_right).shape[0]
    if init_samples is not None:
        z = torch.as_tensor(init_samples).to(device=w.device, dtype=torch.float64)
        v = z[:, :n_left] if left_is_v else z[:, n_left:]
        num_chains = v.shape[0]
    else:
        v = (torch.rand((num_chains, a_v.shape[0]), generator=gen, dtype=torch.float64,
                        device=w.device) < 0.5).double()
        for _ in range(burn_in):
            v = _gibbs(v, 1.0, a_v, a_h, w, gen)
    betas = torch.linspace(1.0, 0.0, num_temps, dtype=torch.float64).tolist()
    log_w = torch.zeros(v.shape[0], dtype=torch.float64, device=w.device)
    for prev, beta in zip(betas[:-1], betas[1:]):
        log_w += _log_f(v, beta, a_v, a_h, w) - _log_f(v, prev, a_v, a_h, w)
        if beta > 0:
            v = _gibbs(v, beta, a_v, a_h, w, gen)
    base = (a_v.shape[0] + a_h.shape[0]) * math.log(2.0)
    return _estimate(log_w, base, -1.0)
