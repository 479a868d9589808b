"""log Z of a bipartite RBM (a `samplers.BipartiteModel`): exact, AIS, RAISE, and a bracket.

Everything runs on the sampler kernels: enumeration is `samplers.exact.log_partition`, and the
annealing transitions are `samplers.gibbs.annealed_sweeps` (one block-Gibbs sweep per inverse
temperature, with the fast seeded random source of `samplers.uniforms`). The estimators work on
the marginal of the smaller side v, the larger side h summed out analytically:
    log f_β(v) = β·a_vᵀv + Σ_j softplus(β·(a_h + vW)_j),    Z(β) = Σ_v f_β(v),
and f_0(v) = 2^{n_h}, so the uniform base has log Z_0 = (n_v + n_h)·log 2.

All of them give log Z at the model's β (Z = Σ_z exp(−β·E(z)); a prior's snapshot has β = 1).

* `exact_log_z(model)`: enumeration of the smaller side (≤ 26 units), float64.
* `ais_log_z(model)`: annealed importance sampling (Neal 2001; for RBMs Salakhutdinov & Murray
  2008) from the uniform base along linspace(0, β, num_temps). Ẑ is unbiased for Z, so
  log Ẑ is a stochastic lower bound: E[log Ẑ] ≤ log Z, and P(log Ẑ > log Z + t) ≤ e^{−t}.
* `raise_log_z(model)`: reverse AIS (Burda, Grosse & Salakhutdinov 2015): chains start from
  states of the model and anneal back to the base; log Ẑ = log Z_0 − log mean(w).
* `bracket(model)`: both, as a `Bracket` (lower = AIS, upper = RAISE).

What RAISE's upper end rests on. Started from exact samples of p, the reverse weights have
E[w] = Z_0/Z, so E[log Ẑ_RAISE] ≥ log Z (Jensen). Started from states q instead, the same
argument gives E[log Ẑ_RAISE] ≥ log Z − log sup_x q(x)/p(x), and nothing bounds that ratio
for arbitrary starting states. Block-Gibbs chains run at β = 1 from uniform states settle in
modes in proportion to their basins, not their mass; on a multimodal RBM, RAISE from them falls below log Z by tens of nats and the
"bracket" inverts (tests/test_logz.py shows both). The AIS end states are not samples of p
either: they follow the annealing's allocation of chains to modes, which only their weights
correct. So by default RAISE starts from the AIS end states *resampled in proportion to their
weights* (systematic resampling, which keeps E[count_i] ∝ w_i), with fresh randomness for
the reverse chains. Averaged over the slots, a resampled start then has
    q_N(x) = N·E[w_1·1{x_1 = x} / (w_1 + S_{N−1})] ≤ p(x)·(N/(N−1))·E[Z/Ẑ_{N−1}],
with S_{N−1} the other chains' total weight and Ẑ_{N−1} their AIS estimate (AIS weights are
proper: E[w_1·1{x_1 = x}] ∝ p(x); dropping w_1 from the denominator gives the bound), so
    E[log Ẑ_RAISE] ≥ log Z − log(N/(N−1)) − log E[Z/Ẑ_{N−1}]:
an upper bound up to a term that vanishes as the AIS weights become reliable (many chains,
concentrated Ẑ). It is not a certificate: a mode that no AIS chain reaches is missing from
every start as well, and then both ends fall below log Z together; a small AIS ESS is the
warning. Given states (`init_samples`, e.g. a run's persistent chains) bound only as well as
they represent p.

Standard errors are delta-method: sd of the normalised weights / (mean·sqrt(n)). Resampled
starts repeat states, so RAISE's error is computed over the groups of chains sharing a start
(a cluster-robust ratio variance), not as if the chains were independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from dvae_q.progress import as_progress
from samplers import BipartiteModel
from samplers.exact import log_partition, oriented
from samplers.gibbs import annealed_sweeps
from samplers.population_annealing import systematic_resample
from samplers.uniforms import derive_source, fair_states

MAX_EXACT_UNITS = 26
# a bracket is inverted when RAISE lies below AIS by more than this many combined standard
# errors: both are one-sided bounds of the same number, so noise alone does that with odds ~1e-3
INVERSION_SIGMAS = 3.0


class LogZEstimate(NamedTuple):
    log_z: float
    stderr: float
    log_weights: torch.Tensor | None = None
    states: torch.Tensor | None = None  # final chain states (left | right columns)

    @property
    def ess(self) -> float:
        """Effective sample size of the importance weights."""
        if self.log_weights is None:
            return float("nan")
        w = torch.softmax(self.log_weights, 0)
        return float(1.0 / (w * w).sum())


@dataclass(frozen=True)
class Bracket:
    """log Z between a stochastic lower bound (AIS) and an upper end (RAISE)."""

    lower: LogZEstimate
    upper: LogZEstimate

    @property
    def inverted(self) -> bool:
        """RAISE below AIS beyond their combined errors: the upper end cannot be trusted."""
        combined = math.hypot(self.lower.stderr, self.upper.stderr)
        return self.upper.log_z < self.lower.log_z - INVERSION_SIGMAS * combined

    def interval(self, sigmas: float = 3.0) -> tuple[float, float]:
        """(AIS − sigmas·se, RAISE + sigmas·se): where log Z lies."""
        return (self.lower.log_z - sigmas * self.lower.stderr,
                self.upper.log_z + sigmas * self.upper.stderr)

    def nll_interval(self, nll: float, log_z: float, sigmas: float = 3.0) -> tuple[float, float]:
        """The interval of an NLL that was computed with log Z = `log_z`: NLL = −log p̃(x) +
        log Z moves one for one with log Z, so it spans `interval(sigmas)` shifted by nll."""
        low, high = self.interval(sigmas)
        return nll + (low - log_z), nll + (high - log_z)


def exact_log_z(model: BipartiteModel, chunk: int = 1 << 12) -> float:
    """Exact log Z, summing the smaller side over all its states (≤ 26 units), float64."""
    n = min(model.num_left, model.num_right)
    if n > MAX_EXACT_UNITS:
        raise ValueError(f"exact_log_z: the smaller side has {n} units; enumeration is limited "
                         f"to {MAX_EXACT_UNITS} — use ais_log_z")
    return log_partition(model, chunk=chunk, max_units=MAX_EXACT_UNITS)


def _estimate(log_w: torch.Tensor, base: float, sign: float, groups=None) -> tuple[float, float]:
    """(base + sign·log mean exp(log_w), delta-method stderr, clustered by `groups` if given)."""
    n = log_w.shape[0]
    lme = float(torch.logsumexp(log_w, 0)) - math.log(n)
    r = torch.exp(log_w - log_w.max())
    mean = r.mean()
    if groups is None:
        stderr = float(r.std(unbiased=True) / mean) / math.sqrt(n) if n > 1 else math.inf
        return base + sign * lme, stderr
    _, idx, sizes = torch.unique(groups, return_inverse=True, return_counts=True)
    totals = torch.zeros(sizes.shape[0], dtype=r.dtype, device=r.device).index_add_(0, idx, r)
    k = totals.shape[0]
    if k < 2:
        return base + sign * lme, math.inf
    resid = totals - mean * sizes.to(r.dtype)  # cluster totals about the ratio estimate
    var = float((resid * resid).sum()) * k / (k - 1) / n**2
    return base + sign * lme, math.sqrt(var) / float(mean)


def _base(model: BipartiteModel) -> float:
    return model.num_units * math.log(2.0)


def _anneal(model: BipartiteModel, v: torch.Tensor, betas: list[float], source, progress=None):
    a_v, a_h, w, left_is_v = oriented(model)
    v, h, log_w = annealed_sweeps(v, a_v, a_h, w, betas, source, progress)
    states = torch.cat([v, h], 1) if left_is_v else torch.cat([h, v], 1)
    return states, log_w


def ais_log_z(model: BipartiteModel, num_temps: int = 1000, num_chains: int = 1024,
              generator=None, progress=None) -> LogZEstimate:
    """AIS estimate of log Z (at the model's β) with its standard error: uniform base, linear
    schedule of `num_temps` inverse temperatures from 0 to β.

    `generator`: a torch.Generator (it seeds the kernel's fast source and advances), a
    `samplers.uniforms` source, or None (fresh entropy). The result's `states` are the chains'
    final states, to be read with their `log_weights`. `progress` (`dvae_q.progress`) counts
    temperatures.
    """
    progress = as_progress(progress)
    progress.set_total(num_temps - 1)
    source = derive_source(model.device, generator)
    n_v = min(model.num_left, model.num_right)
    v = fair_states(source, (num_chains, n_v), model.device, model.dtype)
    betas = torch.linspace(0.0, float(model.beta), num_temps, dtype=torch.float64).tolist()
    states, log_w = _anneal(model, v, betas, source, progress)
    log_z, stderr = _estimate(log_w, _base(model), +1.0)
    return LogZEstimate(log_z, stderr, log_w, states)


def _reverse(model: BipartiteModel, states: torch.Tensor, num_temps: int, source,
             groups=None, progress=None) -> LogZEstimate:
    _, _, _, left_is_v = oriented(model)
    z = torch.as_tensor(states).to(device=model.device, dtype=model.dtype)
    v = z[:, : model.num_left] if left_is_v else z[:, model.num_left :]
    betas = torch.linspace(float(model.beta), 0.0, num_temps, dtype=torch.float64).tolist()
    progress = as_progress(progress)
    progress.set_total(num_temps - 1)
    _, log_w = _anneal(model, v, betas, source, progress)
    log_z, stderr = _estimate(log_w, _base(model), -1.0, groups)
    return LogZEstimate(log_z, stderr, log_w)


def _resampled_starts(ais: LogZEstimate, source) -> tuple[torch.Tensor, torch.Tensor]:
    """AIS end states drawn in proportion to their weights, and the index each came from."""
    w = torch.softmax(ais.log_weights, 0)
    idx = systematic_resample(w, source)
    return ais.states[idx.to(ais.states.device)], idx


def raise_log_z(model: BipartiteModel, num_temps: int = 1000, num_chains: int = 1024,
                generator=None, init_samples: torch.Tensor | None = None,
                from_ais: LogZEstimate | None = None, progress=None) -> LogZEstimate:
    """Reverse AIS from states of the model back to the uniform base.

    Starts from `init_samples` (full states, left | right columns; their number sets the
    chains) when given; else from the end states of the AIS run `from_ais` (an `ais_log_z`
    result for this model), or of a fresh one (`num_temps`, `num_chains`), resampled by their
    weights (see the module docstring for what that bounds).
    """
    source = derive_source(model.device, generator)
    if init_samples is not None:
        return _reverse(model, init_samples, num_temps, source, progress=progress)
    ais = from_ais if from_ais is not None else ais_log_z(model, num_temps, num_chains, source)
    starts, groups = _resampled_starts(ais, source)
    return _reverse(model, starts, num_temps, source, groups, progress)


def bracket(model: BipartiteModel, num_temps: int = 1000, num_chains: int = 1024,
            generator=None, init_samples: torch.Tensor | None = None,
            progress: tuple = (None, None)) -> Bracket:
    """AIS (lower) and RAISE (upper) with one forward run: RAISE starts from the AIS end states
    resampled by their weights, or from `init_samples` when given. `progress`: one progress
    object for each run (forward, reverse)."""
    source = derive_source(model.device, generator)
    lower = ais_log_z(model, num_temps, num_chains, source, progress=progress[0])
    upper = raise_log_z(model, num_temps, generator=source, init_samples=init_samples,
                        from_ais=lower, progress=progress[1])
    return Bracket(lower, upper)
