"""Effective inverse temperature of a sampler's samples by maximum pseudo-likelihood (MPL).

For each sample s and unit i let Δ_i(s) = E(s with unit i flipped) − E(s). If s ~ exp(−β·E),
then p(s_i | s_−i) = σ(β·Δ_i(s)), and the pseudo-log-likelihood Σ_s Σ_i log σ(β·Δ_i(s)) is
concave in β with stationarity condition

    g(β) = Σ_s Σ_i Δ_i(s) · σ(−β·Δ_i(s)) = 0,

which is monotone decreasing in β (g' = −Σ Δ²σ(βΔ)σ(−βΔ) < 0), so the root is unique when it
exists. This is the condition `dwave.system.temperatures.maximum_pseudolikelihood_temperature`
solves (with T = 1/β); tests cross-check the two. Here it is solved by safeguarded Newton steps
in log β over arrays of Δ. The error bar is the standard deviation of bootstrap replicates (rows
resampled with replacement), each solved by one Newton step from β̂ — one pass over Δ for all
replicates, so recalibrating a 5,640-qubit problem costs tens of milliseconds.

**Units.** For a `BipartiteModel` the estimate is β̂ with samples ≈ exp(−β̂·E(z)), E the model's
energy *without* its own `beta` (so exact samples of a model with beta=b give β̂ ≈ b). For a dimod
BQM it is β̂ with samples ≈ exp(−β̂·E_bqm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.special import expit

from samplers.model import BipartiteModel

LOG_BETA_MIN, LOG_BETA_MAX = math.log(1e-3), math.log(1e3)  # Ocean's T_bracket (0.001, 1000)

# An error bar needs enough samples to mean something: the standard error estimated from n
# samples has itself a relative error of about 1/sqrt(2(n − 1)) (13 % at n = 30), and a bootstrap
# of a single sample is identically 0. Below these counts calibrate refuses rather than print a
# number that looks like an error bar.
MIN_SAMPLES = 30


class TemperatureEstimationError(ValueError):
    """The samples do not determine a finite β (e.g. all are local minima, or all anti-thermal)."""


@dataclass(frozen=True)
class BetaEstimate:
    beta: float
    stderr: float                    # bootstrap std; nan with < 2 replicates or < MIN_SAMPLES rows
    num_samples: int
    bootstrap: tuple = field(default=(), repr=False)


def flip_costs(model_or_bqm, samples, labels=None) -> np.ndarray:
    """Δ_i(s) = E(flip_i s) − E(s) for every sample (rows) and unit (columns), float64.

    `samples`: for a BipartiteModel, (n, n_left + n_right) values in {0, 1} (tensor or array).
    For a dimod BQM: a SampleSet, a (array, labels) pair, or an array whose columns follow
    `labels` (default: bqm.variables); values in the BQM's vartype.
    """
    if isinstance(model_or_bqm, BipartiteModel):
        m = model_or_bqm
        z = torch.as_tensor(samples).detach().to("cpu", torch.float64)
        w = m.W.detach().to("cpu", torch.float64)
        zl, zr = z[:, : m.num_left], z[:, m.num_left :]
        field_l = m.a_left.detach().cpu().double() + zr @ w.T
        field_r = m.a_right.detach().cpu().double() + zl @ w
        fields = torch.cat([field_l, field_r], dim=1)
        return (-(1 - 2 * z) * fields).numpy()
    return _bqm_flip_costs(model_or_bqm, samples, labels)


def _bqm_flip_costs(bqm, samples, labels):
    import dimod
    import scipy.sparse as sp

    if isinstance(samples, dimod.SampleSet):
        if np.any(samples.record.num_occurrences != 1):
            raise ValueError("flip_costs needs raw samples (answer_mode='raw'), not a histogram")
        samples, labels = samples.record.sample, list(samples.variables)
    elif isinstance(samples, tuple):
        samples, labels = samples
    arr = np.asarray(samples, dtype=np.float64)
    labels = list(bqm.variables) if labels is None else list(labels)
    if arr.ndim != 2 or arr.shape[1] != len(labels) or set(labels) != set(bqm.variables):
        raise ValueError("samples' columns must be exactly the BQM's variables")
    h, (row, col, quad), _ = bqm.to_numpy_vectors(variable_order=labels)
    n = len(labels)
    coupling = sp.coo_matrix((np.concatenate([quad, quad]),
                              (np.concatenate([row, col]), np.concatenate([col, row]))),
                             shape=(n, n)).tocsr()
    fields = h[None, :] + (coupling @ arr.T).T
    if bqm.vartype is dimod.SPIN:
        return -2.0 * arr * fields
    return -(1.0 - 2.0 * arr) * fields


def _score(delta: np.ndarray, weights: np.ndarray, beta: np.ndarray):
    """g(β_b) and dg/dβ_b for each replicate b (weights (B, n) over sample rows)."""
    g = np.empty(len(beta))
    dg = np.empty(len(beta))
    for b, bt in enumerate(beta):
        s = expit(-bt * delta)
        g[b] = weights[b] @ (delta * s).sum(1)
        dg[b] = -(weights[b] @ (delta * delta * s * (1 - s)).sum(1))
    return g, dg


def _solve(delta: np.ndarray, weights: np.ndarray, beta0: float) -> np.ndarray:
    """Root of g per replicate by Newton steps in x = log β, bisecting when a step leaves the
    current bracket; returns nan where the root is outside [1e-3, 1e3]."""
    count = len(weights)
    lo = np.full(count, LOG_BETA_MIN)
    hi = np.full(count, LOG_BETA_MAX)
    x = np.full(count, math.log(min(max(beta0, 1.01e-3), 0.99e3)))
    for _ in range(100):
        beta = np.exp(x)
        g, dg = _score(delta, weights, beta)
        lo = np.where(g > 0, x, lo)   # g decreasing: a positive score means the root is larger
        hi = np.where(g <= 0, x, hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(dg != 0, x - g / (dg * beta), np.nan)
        # at the root g is rounding noise and the step tiny: accept it even if it touches
        # the bracket, rather than bisecting away from a converged value
        done = np.isfinite(step) & (np.abs(step - x) < 1e-10)
        bad = ~done & (~np.isfinite(step) | (step <= lo) | (step >= hi))
        x = np.where(bad, 0.5 * (lo + hi), step)
        if done.all():
            break
    out = np.exp(x)
    edge = (x - LOG_BETA_MIN < 1e-6) | (LOG_BETA_MAX - x < 1e-6)
    return np.where(edge, np.nan, out)


def bootstrap_weights(num_samples: int, num_bootstrap: int, seed: int | None) -> np.ndarray:
    """(num_bootstrap, num_samples) multiplicities of rows resampled with replacement."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, num_samples, size=(num_bootstrap, num_samples))
    weights = np.zeros((num_bootstrap, num_samples))
    np.add.at(weights, (np.arange(num_bootstrap)[:, None], idx), 1.0)
    return weights


def _bootstrap(delta: np.ndarray, beta: float, weights: np.ndarray) -> np.ndarray:
    """Bootstrap replicates of β̂ by one Newton step from the full-sample root (a linearised
    bootstrap): g_b(β) ≈ g_b(β̂) + g_b'(β̂)(β − β̂), with g_b, g_b' weighted sums of per-sample
    terms computed in one pass. The step's error is O((β_b − β̂)²), i.e. about stderr², far
    below the spread it measures; tests compare it with fully re-solved replicates."""
    s = expit(-beta * delta)
    per_g = (delta * s).sum(1)
    per_dg = -(delta * delta * s * (1 - s)).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return beta - (weights @ per_g) / (weights @ per_dg)


def estimate_beta(model_or_bqm, samples, labels=None, *, num_bootstrap: int = 100,
                  seed: int | None = 0, beta_guess: float = 1.0) -> BetaEstimate:
    """β̂ of `samples` for a BipartiteModel or dimod BQM by maximum pseudo-likelihood.

    See the module docstring for units. `num_bootstrap` replicates (row resampling with a
    numpy Generator seeded by `seed`) give `stderr`; with fewer than MIN_SAMPLES samples there is
    no meaningful error bar and `stderr` is nan (a bootstrap of one sample is identically 0). Raises TemperatureEstimationError when no
    root lies in β ∈ [1e-3, 1e3] (e.g. every sample is a local minimum: β̂ = ∞).
    """
    delta = flip_costs(model_or_bqm, samples, labels)
    n = delta.shape[0]
    if n < 1:
        raise ValueError("estimate_beta needs at least one sample")
    # a root in (0, ∞) needs g(0) = ΣΔ/2 > 0 and some Δ < 0 (else g > 0 for every β: β̂ = ∞)
    possible = delta.sum() > 0 and (delta < 0).any()
    beta = float(_solve(delta, np.ones((1, n)), beta_guess)[0]) if possible else math.nan
    if not math.isfinite(beta):
        raise TemperatureEstimationError(
            f"no pseudo-likelihood β in [1e-3, 1e3] for these {n} samples "
            "(all local minima, or anti-thermal); the sampler is not near equilibrium"
        )
    boot = np.empty(0)
    if num_bootstrap > 0 and n >= MIN_SAMPLES:
        boot = _bootstrap(delta, beta, bootstrap_weights(n, num_bootstrap, seed))
    finite = boot[np.isfinite(boot)]
    stderr = float(np.std(finite, ddof=1)) if len(finite) >= 2 else math.nan
    return BetaEstimate(beta=beta, stderr=stderr, num_samples=n, bootstrap=tuple(boot.tolist()))

