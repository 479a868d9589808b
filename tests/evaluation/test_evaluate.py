"""Discrete-model NLL against exact log p(x) of models small enough to enumerate."""

import itertools

import pytest
import torch
import torch.nn as nn

from dvae_q.evaluation.nll import evaluate_nll, log_weights
from dvae_q.model.dvae import DVAE


def x_mean(seed=0):
    return torch.rand(784, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.05


def states(n):
    return torch.tensor(list(itertools.product([0, 1], repeat=n)), dtype=torch.float64)


def tiny_model(method="dvaes_power", seed=4):
    torch.manual_seed(0)  # network init draws from the global generator: fix it for this test
    model = DVAE("1-layer-lin", method, beta=40.0, x_mean=x_mean(3), num_latent=8).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (model.prior.a_left, model.prior.a_right, model.prior.W):
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        # a gentle decoder keeps the true posterior broad, so a few thousand draws of q resolve it
        model.decoder.net[0].weight.mul_(0.1)
    return model.eval()


@torch.no_grad()
def exact_log_px(model, x):
    """log p(x) = logsumexp_z [−E(z) − log Z + log p(x|z)] over all 2^8 states, and log Z."""
    z = states(8)
    log_z = torch.logsumexp(-model.prior.energy(z), 0)
    dec = model.decode(z)
    log_px_z = -nn.functional.binary_cross_entropy_with_logits(
        dec.unsqueeze(0).expand(x.shape[0], -1, -1), x.unsqueeze(1).expand(-1, 256, -1),
        reduction="none").sum(-1)
    return torch.logsumexp(-model.prior.energy(z) - log_z + log_px_z, 1), float(log_z)


@torch.no_grad()
def test_nll_estimator_converges_to_exact_log_likelihood():
    model = tiny_model()
    x = (torch.rand(4, 784, generator=torch.Generator().manual_seed(5)) < 0.3).double()
    exact, log_z = exact_log_px(model, x)
    # fixed seed; the per-point spread of the weights gives the standard error of the estimate
    lw = log_weights(model, x, 20_000, log_z, sample_chunk=5000, generator=torch.Generator().manual_seed(6))
    assert lw.dtype == torch.float64 and lw.shape == (4, 20_000)
    w = torch.exp(lw - exact.unsqueeze(1))  # E_q[w] = 1 exactly
    stderr = w.std(1) / 20_000 ** 0.5
    est = torch.log(w.mean(1))
    assert (est.abs() < 4 * stderr + 1e-9).all()  # 4 standard errors (delta method: log(1+e) ≈ e)
    full = evaluate_nll(model, x, log_z, num_samples=5000, batch_size=3, sample_chunk=1000,
                        generator=torch.Generator().manual_seed(7))
    assert full.nll == pytest.approx(float(-exact.mean()), abs=0.05) and full.num_points == 4
    few = evaluate_nll(model, x, log_z, num_samples=2, generator=torch.Generator().manual_seed(8))
    # Jensen: the estimate of log p(x) is biased low, E[ℓ] ≤ log E[e^ℓ]; ELBO ≤ −NLL
    assert few.nll > float(-exact.mean()) - 0.05
    assert full.elbo < -full.nll and full.elbo < float(exact.mean())


@torch.no_grad()
def test_deterministic_posterior_gives_exact_values_with_partial_batches():
    model = tiny_model(method="dvaepp_power")
    # saturated encoder: q(z|x) puts mass 1 on z* = [1,0,1,0,1,0,1,0], so every weight is exact
    enc = model.encoder.groups[0][-1]
    enc.weight.zero_()
    z_star = torch.tensor([1.0, 0, 1, 0, 1, 0, 1, 0], dtype=torch.float64)
    enc.bias.copy_((2 * z_star - 1) * 60)
    x = (torch.rand(7, 784, generator=torch.Generator().manual_seed(9)) < 0.4).double()
    log_z = 3.25  # any number: it shifts every log-weight by the same amount
    log_px_z = -nn.functional.binary_cross_entropy_with_logits(
        model.decode(z_star.unsqueeze(0)).expand(7, -1), x, reduction="none").sum(1)
    want = -(-model.prior.energy(z_star.unsqueeze(0)) - log_z + log_px_z)  # −log q(z*) ≈ 0
    res = evaluate_nll(model, x, log_z, num_samples=5, batch_size=3, sample_chunk=2,
                       generator=torch.Generator().manual_seed(10))
    # batches of 3, 3 and 1 points: a size-weighted mean equals the plain mean over 7 points
    assert res.nll == pytest.approx(float(want.mean()), abs=1e-9)
    assert res.elbo == pytest.approx(-float(want.mean()), abs=1e-9)
    assert (res.num_points, res.num_samples) == (7, 5)


@torch.no_grad()
def test_analytic_and_sampled_entropy_elbo_agree():
    x = (torch.rand(3, 784, generator=torch.Generator().manual_seed(11)) < 0.3).double()
    ref = tiny_model(method="dvaepp_power")  # analytic entropy
    sampled = tiny_model(method="dvaes_power")  # same weights (same seeds), sample-based entropy
    a = evaluate_nll(ref, x, 0.0, num_samples=1000, generator=torch.Generator().manual_seed(12))
    b = evaluate_nll(sampled, x, 0.0, num_samples=1000, generator=torch.Generator().manual_seed(12))
    # fixed seed; identical draws, so only the entropy estimator differs (both unbiased for the
    # same ELBO). The tolerance is 5 standard errors of the sample-based mean over 3,000 draws,
    # from the measured spread of the log-weights (which bounds the spread of −log q(z|x) terms)
    lw = log_weights(sampled, x, 1000, 0.0, generator=torch.Generator().manual_seed(12))
    stderr = float(lw.std(1).mean()) / (3 * 1000) ** 0.5
    assert a.elbo == pytest.approx(b.elbo, abs=5 * stderr)
    assert a.nll == b.nll  # the NLL never uses the analytic entropy


def test_bad_sizes_are_rejected():
    model = tiny_model()
    with pytest.raises(ValueError):
        evaluate_nll(model, torch.zeros(0, 784, dtype=torch.float64), 0.0)
    with pytest.raises(ValueError):
        evaluate_nll(model, torch.zeros(2, 784, dtype=torch.float64), 0.0, num_samples=0)
