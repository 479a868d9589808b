"""Reference distributions and bounds the tests of several rooms compare samplers against:
exact enumeration of small RBMs and the total-variation distance an iid sampler would reach.

Two TV bounds: `tv_bound` is the normal approximation of E[TV] plus 6 sd and a systematic
allowance (see tests/samplers/test_samplers.py); `tv_mcdiarmid` holds with probability >= 1 − δ
for any n (Cauchy–Schwarz on E[TV], McDiarmid for the deviation).
"""

import itertools
import math

import torch

import samplers
import topologies
from samplers import BipartiteModel


def rbm(n_left, n_right, seed, scale=0.5, masked=False, beta=1.0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n_left, n_right, generator=gen) * scale
    mask = (torch.rand(n_left, n_right, generator=gen) < 0.5).float() if masked else None
    a_l = torch.randn(n_left, generator=gen) * scale
    a_r = torch.randn(n_right, generator=gen) * scale
    return BipartiteModel(a_l, a_r, w, mask, beta)


def brute_force(model):
    """All states and their exact probabilities, straight from E(z) (no sampler code)."""
    n_l = model.num_left
    states = torch.tensor(list(itertools.product([0, 1], repeat=model.num_units)), dtype=torch.float64)
    a_l, a_r = model.a_left.double(), model.a_right.double()
    w = model.W.double() if model.mask is None else (model.W * model.mask).double()
    zl, zr = states[:, :n_l], states[:, n_l:]
    neg_e = zl @ a_l + zr @ a_r + ((zl @ w) * zr).sum(1)
    return states, torch.softmax(model.beta * neg_e, 0)


def empirical(z, n_units):
    idx = (z.long() * (2 ** torch.arange(n_units - 1, -1, -1))).sum(1)
    counts = torch.bincount(idx, minlength=2**n_units).double()
    return counts / counts.sum()


def tv_bound(p, n, systematic):
    mean = 0.5 * float(torch.sqrt(2 * p * (1 - p) / (math.pi * n)).sum())
    sd = 0.5 * math.sqrt((1 - 2 / math.pi) * float((p * (1 - p)).sum()) / n)
    return mean + 6 * sd + systematic


def native_model(topology, n_l, n_r, seed=0, scale=1.0):
    topo = topologies.load(topology)
    mask = topo.coupling_mask(n_l, n_r).double()
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64) * scale  # noqa: E731
    return samplers.BipartiteModel(r(n_l), r(n_r), r(n_l, n_r), mask)


def exact_distribution(model):
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=model.num_units)),
                          dtype=torch.float64)
    return states, torch.softmax(-model.beta * model.energy(states), 0)


def empirical_distribution(states, z):
    weights = 2 ** torch.arange(z.shape[1] - 1, -1, -1, dtype=torch.float64)
    codes = (z.double() @ weights).long()
    counts = torch.bincount(codes, minlength=len(states)).double()
    return counts / counts.sum()


def tv_mcdiarmid(p, n, delta):
    """A bound on the TV distance between the empirical distribution of n iid samples and p that
    fails with probability <= delta: E[TV] <= ½ Σ sqrt(p(1−p)/n) (Cauchy–Schwarz per state), and
    TV moves by <= 1/n when one sample changes, so McDiarmid adds sqrt(ln(1/δ)/(2n))."""
    return (0.5 * torch.sqrt(p * (1 - p) / n).sum()).item() + math.sqrt(math.log(1 / delta) / (2 * n))


class Recording:
    """A structured QPU child that keeps a copy of every problem it is sent."""

    def __init__(self, child):
        self.child, self.problems = child, []

    def __getattr__(self, name):
        return getattr(self.child, name)

    def sample(self, bqm, **kwargs):
        self.problems.append(bqm.copy())
        return self.child.sample(bqm, **kwargs)
