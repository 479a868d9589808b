"""The RBM prior: energy, snapshot, negative-phase surrogate, mean field, Gaussian integral."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

import samplers
from dvae_q.model import relaxations
from dvae_q.model.prior import RBMPrior


def all_states(n):
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)


def random_prior(n_l, n_r, seed, scale=0.5, mask=None):
    g = torch.Generator().manual_seed(seed)
    prior = RBMPrior(n_l, n_r, mask=mask).double()
    with torch.no_grad():
        prior.a_left.copy_(torch.randn(n_l, generator=g) * scale)
        prior.a_right.copy_(torch.randn(n_r, generator=g) * scale)
        prior.W.copy_(torch.randn(n_l, n_r, generator=g) * scale)
    return prior


def test_zero_init_energy_mask_and_snapshot():
    fresh = RBMPrior(3, 4)
    assert all(float(p.detach().abs().sum()) == 0 for p in fresh.parameters())
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.float32)
    prior = random_prior(3, 4, seed=0, mask=mask)
    z = all_states(7)
    a_l, a_r, w = prior.a_left, prior.a_right, prior.W * mask.double()
    by_hand = torch.stack([-(s[:3] @ a_l) - (s[3:] @ a_r) - s[:3] @ w @ s[3:] for s in z])
    torch.testing.assert_close(prior.energy(z), by_hand)
    snap = prior.snapshot(beta=2.0)
    assert isinstance(snap, samplers.BipartiteModel) and snap.beta == 2.0
    assert not snap.W.requires_grad
    torch.testing.assert_close(snap.W, w.detach())
    torch.testing.assert_close(snap.energy(z), by_hand.detach())
    with pytest.raises(ValueError, match="mask"):
        RBMPrior(3, 4, mask=torch.ones(4, 3))


def test_log_z_surrogate_gradient_is_the_exact_negative_phase():
    prior = random_prior(4, 5, seed=1)
    z = all_states(9)
    log_z = torch.logsumexp(-prior.energy(z), 0)
    exact = torch.autograd.grad(log_z, list(prior.parameters()))
    # fixed seed: 200k exact samples put the Monte Carlo error near 1e-3
    draws = samplers.get("exact", seed=0).sample(prior.snapshot(), 200_000)
    sur = prior.log_z_surrogate(draws, value=12.5)
    assert float(sur.detach()) == 12.5  # its value is whatever the caller says log Z is
    got = torch.autograd.grad(sur, list(prior.parameters()))
    for g_exact, g_got in zip(exact, got):
        assert float((g_exact - g_got).abs().max()) < 6e-3
    assert float(prior.log_z_surrogate(draws).detach()) == 0.0


def brute_log_z_zeta(prior, b, c):
    z = all_states(prior.num_units)
    return torch.logsumexp(-prior.energy(z) + z @ b, 0) + c.sum()


def test_mean_field_lower_bounds_exact_log_z_of_zeta():
    prior = random_prior(5, 5, seed=2, scale=0.8)
    rel = relaxations.make("power", 40.0)
    g = torch.Generator().manual_seed(3)
    zeta = rel.rsample(torch.randn(6, 10, generator=g, dtype=torch.float64), generator=g)
    zero = torch.zeros((), dtype=torch.float64)
    log_p, residual = prior.mean_field_log_prob(zeta, rel, zero)
    for row in range(6):
        exact = brute_log_z_zeta(prior, rel.b(zeta[row]), rel.c(zeta[row])).detach()
        # the 1e-7 entropy clip can add up to −ε·log ε ≈ 1.7e-6 nats per saturated unit
        assert float(log_p[row].detach()) <= float(exact) + 10 * 1.7e-6
        assert float(exact) - float(log_p[row].detach()) < 0.5  # 5 sweeps get close on a 5+5 RBM
    assert 0 <= residual < 1


def test_mean_field_gradient_semantics():
    prior = random_prior(4, 6, seed=4)
    rel = relaxations.make("exp", 8.0)
    g = torch.Generator().manual_seed(5)
    zeta = rel.rsample(torch.randn(3, 10, generator=g, dtype=torch.float64), generator=g)
    zeta = zeta.detach().requires_grad_(True)
    samples = samplers.get("exact", seed=1).sample(prior.snapshot(), 500).double()
    sur = prior.log_z_surrogate(samples)
    log_p, residual = prior.mean_field_log_prob(zeta, rel, sur, num_sweeps=5)
    log_p.sum().backward()
    # the mean-field fixed point, recomputed here: 5 sweeps from 0.5, right block first
    b = rel.b(zeta.detach())
    m_l, m_r = torch.full((3, 4), 0.5, dtype=torch.float64), torch.full((3, 6), 0.5, dtype=torch.float64)
    for _ in range(5):
        m_r = torch.sigmoid(m_l @ prior.W.detach() + prior.a_right.detach() + b[:, 4:])
        m_l = torch.sigmoid(m_r @ prior.W.detach().T + prior.a_left.detach() + b[:, :4])
    # the residual: how far either block is from its own update at the final m
    w, a_l, a_r = prior.W.detach(), prior.a_left.detach(), prior.a_right.detach()
    off_r = (m_r - torch.sigmoid(m_l @ w + a_r + b[:, 4:])).abs().max()
    off_l = (m_l - torch.sigmoid(m_r @ w.T + a_l + b[:, :4])).abs().max()
    assert residual == pytest.approx(float(max(off_r, off_l)), rel=1e-12) and residual > 0
    # the value: −E_aug(m, ζ) + H(m) − log Z_sur at that m, with the 1e−7 entropy clip
    m = torch.cat([m_l, m_r], 1).clamp(1e-7, 1 - 1e-7)
    entropy = -(m * m.log() + (1 - m) * (1 - m).log()).sum(1)
    m = torch.cat([m_l, m_r], 1)
    zd = zeta.detach()
    neg_e_aug = m_l @ a_l + m_r @ a_r + ((m_l @ w) * m_r).sum(1) + (rel.b(zd) * m + rel.c(zd)).sum(1)
    torch.testing.assert_close(log_p.detach(), neg_e_aug + entropy - float(sur.detach()), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least one sweep"):
        prior.mean_field_log_prob(zeta, rel, sur, num_sweeps=0)
    rows = 3
    torch.testing.assert_close(prior.a_left.grad, m_l.sum(0) - rows * samples[:, :4].mean(0))
    torch.testing.assert_close(prior.a_right.grad, m_r.sum(0) - rows * samples[:, 4:].mean(0))
    torch.testing.assert_close(
        prior.W.grad, m_l.T @ m_r - rows * samples[:, :4].T @ samples[:, 4:] / len(samples)
    )
    z = zeta.detach().requires_grad_(True)
    db = torch.autograd.grad(rel.b(z).sum(), z)[0]
    dc = torch.autograd.grad(rel.c(z).sum(), z)[0]
    torch.testing.assert_close(zeta.grad, db * torch.cat([m_l, m_r], 1) + dc)


def test_gaussian_integral_equals_brute_force_mixture_of_gaussians():
    prior = random_prior(3, 3, seed=6, scale=0.7)
    lam_floor = 4.0
    lam = prior.gi_lambda(lam_floor)
    w = prior.W.detach()
    m = torch.zeros(6, 6, dtype=torch.float64)
    m[:3, 3:], m[3:, :3] = w, w.T
    m += lam * torch.eye(6, dtype=torch.float64)
    cov = torch.linalg.inv(m).numpy()
    z = all_states(6)
    log_pz = (-prior.energy(z) - torch.logsumexp(-prior.energy(z), 0)).detach().numpy()
    log_z = float(torch.logsumexp(-prior.energy(z), 0).detach())
    g = torch.Generator().manual_seed(7)
    zeta = torch.rand(5, 6, generator=g, dtype=torch.float64) * 1.4 - 0.2
    got = prior.gaussian_integral_log_prob(zeta, lam_floor, torch.tensor(log_z, dtype=torch.float64))
    for row in range(5):
        comps = [lp + stats.multivariate_normal.logpdf(zeta[row].numpy(), mean=zz.numpy(), cov=cov)
                 for lp, zz in zip(log_pz, z)]
        want = float(np.logaddexp.reduce(comps))
        assert float(got[row].detach()) == pytest.approx(want, abs=1e-8)


def test_gi_lambda_tracks_the_largest_singular_value():
    prior = random_prior(4, 7, seed=8, scale=3.0)
    sigma = float(torch.linalg.svdvals(prior.W.detach()).max())
    assert prior.gi_lambda(1.0) == pytest.approx(sigma + 5.0)
    assert prior.gi_lambda(100.0) == 100.0
    # λ is a constant: no gradient flows into it, and W still gets one through the density
    zeta = torch.rand(2, 11, dtype=torch.float64)
    prior.gaussian_integral_log_prob(zeta, 1.0, torch.zeros((), dtype=torch.float64)).sum().backward()
    assert prior.W.grad is not None and torch.isfinite(prior.W.grad).all()


def test_relaxed_log_prob_is_the_density_the_relaxation_names():
    # mean field for the smoothing families (with its residual), the closed-form Gaussian
    # integral with the relaxation's λ floor for GI (no mean field, so no residual)
    prior = random_prior(3, 3, seed=9, scale=0.7)
    zeta = torch.rand(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sur = torch.tensor(0.3, dtype=torch.float64)
    power = relaxations.make("power", 40.0)
    got, residual = prior.relaxed_log_prob(zeta, power, sur, mean_field_sweeps=3)
    want, want_residual = prior.mean_field_log_prob(zeta, power, sur, num_sweeps=3)
    assert torch.equal(got, want) and residual == want_residual
    got, residual = prior.relaxed_log_prob(zeta, relaxations.make("gi", 4.0), sur)
    assert residual is None
    assert torch.equal(got, prior.gaussian_integral_log_prob(zeta, 4.0, sur))
