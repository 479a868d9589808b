"""`exact`: exact samples of small bipartite models, the ground truth of the test suite.

The smaller side v (at most 20 units) is drawn from its exact marginal, enumerated:
log p(v) ∝ β·a_vᵀv + Σ_j softplus(β·(a_h + vW)_j); the other side is then drawn from its exact
conditional Bernoulli(σ(β·(a_h + vW))). This is exact for any size of the larger side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from samplers.base import SEED, Sampler, seeded_generator
from samplers.model import BipartiteModel

MAX_ENUMERATED = 20


def all_states(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    """The 2^n binary states of n units as rows, in binary counting order."""
    codes = torch.arange(2**n, device=device)
    bits = (codes.unsqueeze(1) >> torch.arange(n - 1, -1, -1, device=device)) & 1
    return bits.to(dtype)


def side_marginal_logits(model: BipartiteModel, chunk: int = 1 << 14):
    """(states of the smaller side, their unnormalised log-probabilities, which side it is)."""
    left_small = model.num_left <= model.num_right
    m = model.to(dtype=torch.float64)
    a_v, a_h = (m.a_left, m.a_right) if left_small else (m.a_right, m.a_left)
    w = m.W if left_small else m.W.T
    n = a_v.shape[0]
    if n > MAX_ENUMERATED:
        raise ValueError(
            f"exact sampler: the smaller side has {n} units; enumeration is limited to "
            f"{MAX_ENUMERATED}"
        )
    beta = float(m.beta)
    states = all_states(n, device=m.device)
    logits = torch.empty(states.shape[0], dtype=torch.float64, device=m.device)
    for start in range(0, states.shape[0], chunk):
        v = states[start : start + chunk]
        logits[start : start + chunk] = beta * (v @ a_v) + F.softplus(beta * (a_h + v @ w)).sum(1)
    return states, logits, left_small


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
