"""Objective terms against autograd of the bound they stand for and brute force."""

import itertools
import math

import pytest
import torch

from dvae_q.model import objectives
from dvae_q.model.prior import RBMPrior


def states(n):
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)


def random_prior(n_left, n_right, seed, scale=0.8):
    prior = RBMPrior(n_left, n_right).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (prior.a_left, prior.a_right, prior.W):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
    return prior


def test_iw_loss_has_the_gradient_of_log_mean_exp():
    g = torch.Generator().manual_seed(0)
    ell = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    loss, ess = objectives.iw_loss(ell)
    (grad,) = torch.autograd.grad(loss, ell)
    ref = -(torch.logsumexp(ell, 1) - math.log(5)).mean()
    (want,) = torch.autograd.grad(ref, ell)
    torch.testing.assert_close(grad, want)
    assert float(loss.detach()) != pytest.approx(float(ref.detach()))  # same gradient, other value
    assert float(objectives.iw_bound(ell)) == pytest.approx(float(ref.detach()), abs=1e-12)
    w = torch.softmax(ell.detach(), 1)
    assert float(ess) == pytest.approx(float((1 / (w * w).sum(1)).mean()))
    assert 1 <= float(ess) <= 5


def test_iw_ess_extremes():
    assert float(objectives.iw_loss(torch.zeros(3, 7))[1]) == pytest.approx(7.0)
    assert float(objectives.iw_loss(torch.tensor([[0.0, -1e4, -1e4]]))[1]) == pytest.approx(1.0)


def test_reconstruction_and_entropy_closed_forms():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 10, generator=g, dtype=torch.float64) * 3
    x = (torch.rand(4, 10, generator=g) < 0.5).double()
    p = torch.sigmoid(logits)
    want = -(x * torch.log(p) + (1 - x) * torch.log(1 - p)).sum(1)
    torch.testing.assert_close(objectives.reconstruction_nll(logits, x), want)
    torch.testing.assert_close(objectives.bernoulli_entropy(logits),
                               -(p * torch.log(p) + (1 - p) * torch.log(1 - p)).sum(1))


def test_dvaepp_kl_equals_brute_force_kl():
    prior = random_prior(4, 4, seed=1)
    z = states(8)
    log_z = torch.logsumexp(-prior.energy(z), 0).detach()
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sur = prior.log_z_surrogate(z[:5], value=float(log_z))
    got = objectives.dvaepp_kl(logits, logits, prior, sur)
    for row in range(3):
        q = torch.sigmoid(logits[row])
        log_qz = (z * torch.log(q) + (1 - z) * torch.log1p(-q)).sum(1)
        log_pz = -prior.energy(z) - log_z
        want = (log_qz.exp() * (log_qz - log_pz)).sum()
        assert float(got[row].detach()) == pytest.approx(float(want.detach()), abs=1e-10)


def test_dvaepp_kl_uses_nu_on_the_left_half_only():
    prior = random_prior(3, 3, seed=5)
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 6, generator=g, dtype=torch.float64)
    shift = torch.randn(2, 6, generator=g, dtype=torch.float64)
    sur = torch.zeros((), dtype=torch.float64)
    q = torch.sigmoid(logits)
    nu_l = torch.sigmoid(logits[:, :3] + shift[:, :3])
    want = (-(q[:, :3] @ prior.a_left) - q[:, 3:] @ prior.a_right
            - ((nu_l @ prior.W) * q[:, 3:]).sum(1) - objectives.bernoulli_entropy(logits))
    torch.testing.assert_close(objectives.dvaepp_kl(logits, logits + shift, prior, sur), want)


def test_rolfe_surrogate_gradient():
    prior = random_prior(4, 4, seed=3, scale=0.5)
    g = torch.Generator().manual_seed(4)
    logits = [torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    zetas = [torch.where(torch.rand(2, 4, generator=g, dtype=torch.float64) < 0.5, 0.0, 0.3)
             for _ in range(2)]
    neg = (torch.rand(30, 8, generator=g) < 0.5).double()
    objectives.rolfe_surrogate(logits, zetas, prior, neg).sum().backward()
    l = torch.cat([x.detach() for x in logits], 1)
    q = torch.sigmoid(l)
    s = torch.cat([(zetas[0] > 0).double(), torch.sigmoid(logits[1].detach())], 1)
    a = torch.cat([prior.a_left, prior.a_right]).detach()
    w = prior.W.detach()
    field = torch.cat([s[:, 4:] @ w.T, s[:, :4] @ w], 1)
    scaling = torch.cat([(1 - s[:, :4]) / (1 - q[:, :4]), torch.ones(2, 4, dtype=torch.float64)], 1)
    want = (l - a - field * scaling) * q * (1 - q)
    torch.testing.assert_close(torch.cat([x.grad for x in logits], 1), want)
    # prior part: positive phase from s (two rows, averaged then summed over 2 rows), negative
    # phase from the sampler states
    s_l, s_r = s[:, :4], s[:, 4:]
    torch.testing.assert_close(prior.W.grad, -(s_l.T @ s_r) + 2 * (neg[:, :4].T @ neg[:, 4:]) / 30)
    torch.testing.assert_close(prior.a_left.grad, -q[:, :4].sum(0) + 2 * neg[:, :4].mean(0))
