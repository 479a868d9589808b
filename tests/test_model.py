"""Networks, objectives and evaluation against brute force on models small enough to enumerate."""

import itertools
import math

import pytest
import torch
import torch.nn as nn

from dvae_q import objectives
from dvae_q.evaluate import evaluate_nll
from dvae_q.methods import METHODS, default_beta
from dvae_q.model import DVAE, parameter_groups
from dvae_q.networks import BN_EPS, BN_MOMENTUM, STRUCTURES


def x_mean(seed=0):
    return torch.rand(784, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.05


def states(n):
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)


def randomise_prior(model, seed, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (model.prior.a_left, model.prior.a_right, model.prior.W):
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def test_iw_loss_has_the_gradient_of_log_mean_exp():
    g = torch.Generator().manual_seed(0)
    ell = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    loss, ess = objectives.iw_loss(ell)
    (grad,) = torch.autograd.grad(loss, ell)
    ref = -(torch.logsumexp(ell, 1) - math.log(5)).mean()
    (want,) = torch.autograd.grad(ref, ell)
    torch.testing.assert_close(grad, want)
    assert float(loss) != pytest.approx(float(ref))  # same gradient, different value
    assert float(objectives.iw_bound(ell)) == pytest.approx(float(ref))
    assert 1 <= float(ess) <= 5


def test_dvaepp_kl_equals_brute_force_kl_for_one_group():
    model = DVAE("1-layer-lin", "dvaepp_exp", beta=10.0, x_mean=x_mean(), num_latent=8).double()
    randomise_prior(model, seed=1, scale=0.8)
    prior = model.prior
    z = states(8)
    log_z = torch.logsumexp(-prior.energy(z), 0)
    logits = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sur = torch.zeros((), dtype=torch.float64) + log_z.detach()
    got = objectives.dvaepp_kl(logits, logits, prior, sur)
    for row in range(3):
        q = torch.sigmoid(logits[row])
        log_qz = (z * torch.log(q) + (1 - z) * torch.log1p(-q)).sum(1)
        log_pz = -prior.energy(z) - log_z
        want = (log_qz.exp() * (log_qz - log_pz)).sum()
        assert float(got[row]) == pytest.approx(float(want), abs=1e-10)


@torch.no_grad()
def test_nll_estimator_converges_to_exact_log_likelihood():
    torch.manual_seed(0)  # network init draws from the global generator: fix it for this test
    model = DVAE("1-layer-lin", "dvaes_power", beta=40.0, x_mean=x_mean(3), num_latent=8).double()
    randomise_prior(model, seed=4)
    # a gentle decoder keeps the true posterior broad, so 20,000 draws of q resolve it
    model.decoder.net[0].weight.mul_(0.1)
    model.eval()
    z = states(8)
    log_z = float(torch.logsumexp(-model.prior.energy(z), 0))
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(4, 784, generator=g) < 0.3).double()
    dec = model.decode(z)
    log_px_z = -nn.functional.binary_cross_entropy_with_logits(
        dec.unsqueeze(0).expand(4, -1, -1), x.unsqueeze(1).expand(-1, 256, -1), reduction="none"
    ).sum(-1)
    exact = -(torch.logsumexp(-model.prior.energy(z) - log_z + log_px_z, 1)).mean()
    # fixed seed; with 20,000 importance samples over 256 states the estimate is within 0.05
    est = evaluate_nll(model, x, log_z, num_samples=20_000, batch_size=2, sample_chunk=5000,
                       generator=torch.Generator().manual_seed(6))
    assert est.nll == pytest.approx(float(exact), abs=0.05)
    few = evaluate_nll(model, x, log_z, num_samples=2, generator=torch.Generator().manual_seed(7))
    assert few.nll > float(exact) - 0.05  # the IW bound is loose with few samples, never tight
    assert est.elbo <= -est.nll + 1e-9 and est.num_points == 4


def test_k_copies_are_adjacent_rows():
    model = DVAE("1-layer-lin", "dvaes_power", beta=40.0, x_mean=x_mean(), num_latent=8)
    seen = []
    original = model.encoder.group_output
    model.encoder.group_output = lambda g, x, prev: seen.append(x.clone()) or original(g, x, prev)
    x = torch.rand(3, 784)
    model(x, torch.zeros(10, 8), k=4)
    rows = seen[0]
    assert rows.shape == (12, 784)
    for i in range(12):
        assert torch.equal(rows[i], x[i // 4])


def test_networks_follow_the_spec_conventions():
    model = DVAE("4-layer-nonlin", "dvaes_gi", beta=30.0, x_mean=x_mean())
    assert len(model.encoder.groups) == 4 and model.num_latent == 400
    first = model.encoder.groups[2][0]
    assert first.in_features == 784 + 2 * 100 and model.encoder.groups[2][-1].out_features == 200
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert bns and all(bn.momentum == BN_MOMENTUM == 0.2 and bn.eps == BN_EPS == 1e-2 for bn in bns)
    w = model.decoder.net[0].weight
    sigma = math.sqrt(2.6 / w.shape[1])
    assert float(w.abs().max()) <= 2 * sigma + 1e-6
    # a normal truncated at ±2σ has std 0.8796σ, i.e. about sqrt(2/fan_in)
    assert float(w.std()) == pytest.approx(0.8796 * sigma, rel=0.03)
    assert all(float(m.bias.abs().sum()) == 0 for m in model.modules() if isinstance(m, nn.Linear))
    assert all(float(p.abs().sum()) == 0 for p in model.prior.parameters())
    xm = x_mean()
    c = xm.clamp(1e-3, 1 - 1e-3)
    torch.testing.assert_close(model.decoder.x_bias, torch.log(c / (1 - c)))
    lin = DVAE("1-layer-lin", "dvaes_power", beta=40.0, x_mean=xm, num_latent=8)
    # the encoder sees x − x̄: the data mean maps to the (zero) bias
    assert float(lin.encoder.group_output(0, xm.unsqueeze(0), []).abs().max()) == 0.0
    assert torch.equal(model.gi_scale, torch.ones(4, 100))
    assert {s.num_latent for s in STRUCTURES.values()} == {200, 400}


def test_weight_decay_groups():
    model = DVAE("2-layer-nonlin", "dvaes_gi", beta=30.0, x_mean=x_mean(), num_latent=16)
    decayed, plain = parameter_groups(model, 1e-4)
    assert decayed["weight_decay"] == 1e-4 and plain["weight_decay"] == 0.0
    ids = {id(p) for p in decayed["params"]}
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.BatchNorm1d)):
            assert id(m.weight) in ids and id(m.bias) not in ids
    assert id(model.prior.W) in ids
    for p in (model.prior.a_left, model.prior.a_right, model.gi_scale):
        assert id(p) not in ids
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("structure", ["1-layer-nonlin", "2-layer-nonlin"])
def test_every_method_gives_finite_loss_and_gradients(method, structure):
    torch.manual_seed(0)
    model = DVAE(structure, method, beta=default_beta("binarized_mnist", structure, method),
                 x_mean=x_mean(), num_latent=16)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4, 784, generator=g) < 0.2).float()
    neg = (torch.rand(50, 16, generator=g) < 0.5).float()
    for k in (1, 3):
        out = model(x, neg, k=k, kappa=0.5, generator=g)
        model.zero_grad()
        out.loss.backward()
        assert torch.isfinite(out.loss)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)
        assert model.prior.W.grad is not None
        assert "kl" not in out.metrics and "approx_bound" not in out.metrics  # no log Z given
    out = model(x, neg, k=1, kappa=1.0, log_z_value=11.0, generator=g)
    if METHODS[method].kl != "dvae" or structure == "1-layer-nonlin":
        assert "approx_bound" in out.metrics


def test_rolfe_surrogate_gradient():
    model = DVAE("2-layer-nonlin", "dvae_spike_exp", beta=4.0, x_mean=x_mean(), num_latent=8).double()
    randomise_prior(model, seed=3)
    g = torch.Generator().manual_seed(4)
    logits = [torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    zetas = [torch.where(torch.rand(2, 4, generator=g, dtype=torch.float64) < 0.5, 0.0, 0.3) for _ in range(2)]
    neg = (torch.rand(30, 8, generator=g) < 0.5).double()
    out = objectives.rolfe_surrogate(logits, zetas, model.prior, neg).sum()
    out.backward()
    prior = model.prior
    l = torch.cat([x.detach() for x in logits], 1)
    q = torch.sigmoid(l)
    s = torch.cat([(zetas[0] > 0).double(), torch.sigmoid(logits[1].detach())], 1)
    a = torch.cat([prior.a_left, prior.a_right]).detach()
    w = prior.W.detach()
    field = torch.cat([s[:, 4:] @ w.T, s[:, :4] @ w], 1)
    scaling = torch.cat([(1 - s[:, :4]) / (1 - q[:, :4]), torch.ones(2, 4, dtype=torch.float64)], 1)
    want = (l - a - field * scaling) * q * (1 - q)
    torch.testing.assert_close(torch.cat([x.grad for x in logits], 1), want)
    # prior part: positive phase from s, negative phase from the sampler states
    s_l, s_r = s[:, :4], s[:, 4:]
    want_w = -(s_l.T @ s_r) + 2 * (neg[:, :4].T @ neg[:, 4:]) / 30
    torch.testing.assert_close(prior.W.grad, want_w)
