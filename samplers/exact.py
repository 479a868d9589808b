"""`exact`: exact samples of small bipartite models, the ground truth of the test suite.

The smaller side v (at most 20 units) is drawn from its exact marginal, enumerated:
log p(v) ∝ β·a_vᵀv + Σ_j softplus(β·(a_h + vW)_j); the other side is then drawn from its exact
conditional Bernoulli(σ(β·(a_h + vW))). This is exact for any size of the larger side.

`log_partition` sums the same marginal over every state of the smaller side, chunk by chunk
without holding them all, for an exact log Z of models whose smaller side has ≤ 26 units.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from samplers.base import SEED, Sampler, seeded_generator
from samplers.model import BipartiteModel

MAX_ENUMERATED = 20
MAX_LOG_PARTITION = 26  # 2^26 states: about a minute of float64 work on one core


def all_states(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """The 2^n binary states of n units as rows, in binary counting order."""
    return states_range(n, 0, 2**n, device, dtype)


def states_range(n: int, start: int, stop: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """Rows start..stop−1 of `all_states(n)`, without building the others."""
    codes = torch.arange(start, stop, device=device)
    bits = (codes.unsqueeze(1) >> torch.arange(n - 1, -1, -1, device=device)) & 1
    return bits.to(dtype)


def oriented(model: BipartiteModel):
    """(a_v, a_h, W_vh, left_is_v) with v the smaller side (the left one on a tie)."""
    if model.num_left <= model.num_right:
        return model.a_left, model.a_right, model.W, True
    return model.a_right, model.a_left, model.W.T, False


def side_log_marginal(v: torch.Tensor, a_v: torch.Tensor, a_h: torch.Tensor,
                      W_vh: torch.Tensor, beta: float) -> torch.Tensor:
    """log Σ_h exp(−β·E(v, h)) of each row of v: β·a_vᵀv + Σ_j softplus(β·(a_h + vW)_j)."""
    field = torch.addmm(a_h, v, W_vh, beta=beta, alpha=beta)
    return beta * (v @ a_v) + F.softplus(field).sum(-1)


def _check_enumerable(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise ValueError(f"{what}: the smaller side has {n} units; enumeration is limited to {limit}")


def side_marginal_logits(model: BipartiteModel, chunk: int = 1 << 12):
    """(states of the smaller side, their unnormalised log-probabilities, which side it is)."""
    a_v, a_h, w, left_small = oriented(model.to(dtype=torch.float64))
    n = a_v.shape[0]
    _check_enumerable(n, MAX_ENUMERATED, "exact sampler")
    states = all_states(n, device=w.device)
    logits = torch.empty(states.shape[0], dtype=torch.float64, device=w.device)
    for start in range(0, states.shape[0], chunk):
        v = states[start : start + chunk]
        logits[start : start + chunk] = side_log_marginal(v, a_v, a_h, w, float(model.beta))
    return states, logits, left_small


def log_partition(model: BipartiteModel, chunk: int = 1 << 12,
                  max_units: int = MAX_LOG_PARTITION) -> float:
    """Exact log Z at the model's β, in float64, summing the smaller side's 2^n states."""
    a_v, a_h, w, _ = oriented(model.to(dtype=torch.float64))
    n = a_v.shape[0]
    _check_enumerable(n, max_units, "log_partition")
    total = torch.tensor(-math.inf, dtype=torch.float64, device=w.device)
    for start in range(0, 2**n, chunk):
        v = states_range(n, start, min(start + chunk, 2**n), device=w.device)
        logits = side_log_marginal(v, a_v, a_h, w, float(model.beta))
        total = torch.logaddexp(total, torch.logsumexp(logits, 0))
    return float(total)


class ExactSampler(Sampler):
    name = "exact"
    parameters = {
        "seed": SEED,
    }

    def __init__(self, **options):
        super().__init__(**options)
        self._generator = seeded_generator("cpu", self.options["seed"])

    def _sample(self, model: BipartiteModel, num_samples: int) -> torch.Tensor:
        states, logits, left_small = side_marginal_logits(model.to(device="cpu"))
        probs = torch.softmax(logits, 0)
        idx = torch.multinomial(probs, num_samples, replacement=True, generator=self._generator)
        v = states[idx]
        m = model.to(device="cpu", dtype=torch.float64)
        a_h, w = (m.a_right, m.W) if left_small else (m.a_left, m.W.T)
        p_h = torch.sigmoid(float(m.beta) * (a_h + v @ w))
        h = (torch.rand(p_h.shape, generator=self._generator, dtype=torch.float64) < p_h).double()
        z = torch.cat([v, h], 1) if left_small else torch.cat([h, v], 1)
        return z, {"log_z": float(torch.logsumexp(logits, 0))}

    def state_dict(self) -> dict:
        return {"generator": self._generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._generator.set_state(state["generator"])
