"""Smoothing families against independent references: densities written here from the papers in
numpy, numerical integration and root finding with scipy, finite differences, KS tests."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats

from dvae_q.model import relaxations

EPS_POW = 1e-7


def ref_r0(name, beta, x):
    """r(ζ|z=0) straight from the papers' formulas (numpy, float64)."""
    if name == "exp":
        return beta * np.exp(-beta * x) / (1 - np.exp(-beta))
    if name == "power":
        lam = 1 / beta
        return lam * (x + EPS_POW) ** (lam - 1)
    if name == "gauss":
        return stats.norm.pdf(x, 0, 1 / math.sqrt(beta))
    if name == "unif_exp":
        return 0.95 * beta * np.exp(-beta * x) / (1 - np.exp(-beta)) + 0.05
    raise KeyError(name)


def _power_mass(beta, lo_u, hi_u):
    # ∫ r0(t) dt with t = u^β: smooth in u, so quadrature is accurate across the spike at 0
    g = lambda u: ref_r0("power", beta, u**beta) * beta * u ** (beta - 1)  # noqa: E731
    return integrate.quad(g, lo_u, hi_u, limit=400)[0]


def power_cdf0(beta, x):
    """∫_0^x of the floored reference density, plus the floor's offset ε^λ of the model CDF."""
    return _power_mass(beta, 0.0, x ** (1 / beta)) + EPS_POW ** (1 / beta)


def power_cdf1(beta, x):
    """∫_0^x r0(1 − t) dt, plus the floor's offset 1 − (1+ε)^λ of the model's R1."""
    mass = _power_mass(beta, (1 - x) ** (1 / beta), 1.0)
    return mass + 1 - (1 + EPS_POW) ** (1 / beta)


SUPPORT = {"exp": (0, 1), "power": (0, 1), "unif_exp": (0, 1), "gauss": (-np.inf, np.inf)}
FAMILIES = [("exp", 12.0), ("power", 30.0), ("gauss", 30.0), ("unif_exp", 16.0)]


def ref_mixture_cdf(name, beta, q, x):
    if name == "gauss":
        sd = 1 / math.sqrt(beta)
        return (1 - q) * stats.norm.cdf(x, 0, sd) + q * stats.norm.cdf(x, 1, sd)
    if name == "power":
        return (1 - q) * power_cdf0(beta, x) + q * power_cdf1(beta, x)
    lo = SUPPORT[name][0]
    r0 = lambda t: ref_r0(name, beta, t)  # noqa: E731
    r1 = lambda t: ref_r0(name, beta, 1 - t)  # noqa: E731
    pts = [1e-9, 1e-3] if name == "power" else None
    c0 = integrate.quad(r0, lo, x, limit=200, points=pts if pts and x > 1e-3 else None)[0]
    c1 = integrate.quad(r1, lo, x, limit=200)[0]
    return (1 - q) * c0 + q * c1


@pytest.mark.parametrize("name, beta", FAMILIES)
def test_densities_integrate_to_one_and_cdfs_match_quadrature(name, beta):
    rel = relaxations.make(name, beta)
    lo, hi = SUPPORT[name]
    f0 = lambda t: math.exp(float(rel.log_r0(torch.tensor(t, dtype=torch.float64))))  # noqa: E731
    f1 = lambda t: math.exp(float(rel.log_r1(torch.tensor(t, dtype=torch.float64))))  # noqa: E731
    for f in (f0, f1):
        if name == "power":
            # substitute ζ = u^β (the sampler's own transform) to integrate across the spike;
            # the ε floor is part of the model and removes mass ε^λ near the end point:
            # ∫ λ(ζ+ε)^{λ−1} dζ over [0, 1] = (1+ε)^λ − ε^λ ≈ 0.42 at β = 30
            g0 = lambda u: f0(u**beta) * beta * u ** (beta - 1)  # noqa: E731
            g1 = lambda u: f1(1 - u**beta) * beta * u ** (beta - 1)  # noqa: E731
            want = (1 + EPS_POW) ** (1 / beta) - EPS_POW ** (1 / beta)
            total = integrate.quad(g0 if f is f0 else g1, 0, 1, limit=400, points=[0.5, 0.9])[0]
            assert total == pytest.approx(want, abs=1e-6)
            exact = lambda u: (1 / beta) * (u**beta) ** (1 / beta - 1) * beta * u ** (beta - 1)  # noqa: E731
            assert integrate.quad(exact, 0, 1)[0] == pytest.approx(1.0, abs=1e-9)
            continue
        total = integrate.quad(f, lo, hi, limit=400)[0]
        assert total == pytest.approx(1.0, abs=1e-8)
    for x in (0.01, 0.2, 0.5, 0.8, 0.99):
        xt = torch.tensor(x, dtype=torch.float64)
        if name == "power":
            c0, c1 = power_cdf0(beta, x), power_cdf1(beta, x)
        else:
            c0 = ref_mixture_cdf(name, beta, 0.0, x)
            c1 = ref_mixture_cdf(name, beta, 1.0, x)
        assert float(rel.cdf0(xt)) == pytest.approx(c0, abs=1e-7)
        assert float(rel.cdf1(xt)) == pytest.approx(c1, abs=1e-7)


@pytest.mark.parametrize("name, beta", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samples_follow_the_mixture_cdf(name, beta, dtype):
    # fixed seed: the KS p-value is a deterministic function of it; 1e-3 leaves a wide margin
    gen = torch.Generator().manual_seed(1234)
    q = 0.3
    rel = relaxations.make(name, beta)
    logits = torch.full((20000,), math.log(q / (1 - q)), dtype=dtype)
    zeta = rel.rsample(logits, generator=gen)
    assert zeta.dtype == dtype
    x = zeta.double().numpy()
    if name == "power":
        # test the interior, where the ε floor changes nothing measurable
        inner = (x > 1e-3) & (x < 1 - 1e-3)
        lo = ref_mixture_cdf(name, beta, q, 1e-3)
        hi = ref_mixture_cdf(name, beta, q, 1 - 1e-3)
        cdf = lambda t: (np.array([ref_mixture_cdf(name, beta, q, v) for v in np.atleast_1d(t)]) - lo) / (hi - lo)  # noqa: E731
        sample = x[inner][:3000]
        mass = inner.mean()
        assert mass == pytest.approx(hi - lo, abs=4 * math.sqrt((hi - lo) * (1 - hi + lo) / len(x)))
    else:
        cdf = lambda t: np.array([ref_mixture_cdf(name, beta, q, v) for v in np.atleast_1d(t)])  # noqa: E731
        sample = x[:3000]
    assert stats.kstest(sample, cdf).pvalue > 1e-3


def _invert(name, beta, q, rho, exact=False):
    """ζ with F(ζ; q) = ρ by root finding on the reference mixture CDF."""
    if name == "power":
        lam = 1 / beta
        cdf0 = (lambda t: max(t, 0) ** lam) if exact else (lambda t: (t + EPS_POW) ** lam)
        cdf1 = (lambda t: 1 - max(1 - t, 0) ** lam) if exact else (lambda t: 1 - (1 - t + EPS_POW) ** lam)
        f = lambda t: (1 - q) * cdf0(t) + q * cdf1(t) - rho  # noqa: E731
    else:
        f = lambda t: ref_mixture_cdf(name, beta, q, t) - rho  # noqa: E731
    lo, hi = (-5.0, 6.0) if name == "gauss" else (0.0, 1.0)
    return optimize.brentq(f, lo, hi, xtol=1e-15, rtol=1e-15, maxiter=500)


@pytest.mark.parametrize("name, beta", FAMILIES)
def test_implicit_gradient_matches_finite_differences(name, beta):
    rel = relaxations.make(name, beta)
    for q, rho in [(0.3, 0.5), (0.7, 0.2), (0.45, 0.85)]:
        try:
            zeta = _invert(name, beta, q, rho)
        except ValueError:
            continue  # the floored power CDF starts at (1 − q)ε^λ: no root below that
        if name == "power" and not (1e-3 < zeta < 1 - 1e-3):
            continue
        h = 1e-6
        fd = (_invert(name, beta, q + h, rho) - _invert(name, beta, q - h, rho)) / (2 * h)
        got = float(rel.implicit_dzeta_dq(torch.tensor(zeta, dtype=torch.float64),
                                          torch.tensor(q, dtype=torch.float64)))
        assert got == pytest.approx(fd, rel=1e-4, abs=1e-9), (q, rho)


def _ref_cdf_at(name, beta, q, x, exact=False):
    """F(x; q) of the reference mixture; the power one floored unless `exact`."""
    if name == "power":
        lam = 1 / beta
        off = 0.0 if exact else EPS_POW
        return (1 - q) * (x + off) ** lam + q * (1 - (1 - x + off) ** lam)
    return ref_mixture_cdf(name, beta, q, x)


@pytest.mark.parametrize(
    "name, beta, exact",
    [("exp", 12.0, False), ("gauss", 30.0, False), ("unif_exp", 16.0, False),
     ("power", 30.0, False), ("power", 30.0, True)],
)
def test_rsample_autograd_matches_finite_differences_of_the_inverted_cdf(name, beta, exact):
    """End to end: d rsample/d logit equals q(1 − q)·∂F⁻¹(ρ; q)/∂q at ρ = F(ζ; q) of the draw."""
    # fixed seed: which ζ are drawn is then deterministic; every draw is checked
    gen = torch.Generator().manual_seed(2024)
    rel = relaxations.make(name, beta, exact_gradient=True) if exact else relaxations.make(name, beta)
    # power draws land in the interior only ~20 % of the time at β = 30, hence 32 draws
    qs = np.tile([0.2, 0.35, 0.5, 0.65, 0.8, 0.3, 0.6, 0.45], 4)
    logits = torch.tensor(np.log(qs / (1 - qs)), dtype=torch.float64, requires_grad=True)
    zeta = rel.rsample(logits, generator=gen)
    zeta.sum().backward()
    checked = 0
    for q, x, g in zip(qs, zeta.detach().numpy(), logits.grad.numpy()):
        if name == "power" and not (1e-3 < x < 1 - 1e-3):
            continue  # inside the ε floor the floored CDF is not the sampler's (ρ^β has no floor)
        rho = _ref_cdf_at(name, beta, q, x, exact)
        inv = lambda qq: _invert(name, beta, qq, rho, exact)  # noqa: E731
        assert inv(q) == pytest.approx(x, abs=1e-9)
        h = 1e-6
        fd = (inv(q + h) - inv(q - h)) / (2 * h)
        assert g == pytest.approx(fd * q * (1 - q), rel=1e-4, abs=1e-10), (q, x)
        checked += 1
        if checked == 6:
            break
    assert checked >= 3, "the seed must give enough interior draws to make the test meaningful"


@pytest.mark.parametrize("name, beta", FAMILIES + [("spike_exp", 5.0)])
def test_float32_draws_and_densities_are_finite(name, beta):
    # fixed seed: deterministic draws; extreme logits push q to 0 and 1 in float32
    gen = torch.Generator().manual_seed(5)
    rel = relaxations.make(name, beta)
    logits = torch.linspace(-30, 30, 4001, dtype=torch.float32).requires_grad_(True)
    zeta = rel.rsample(logits, generator=gen)
    assert zeta.dtype == torch.float32
    zeta.sum().backward()
    assert torch.isfinite(zeta).all() and torch.isfinite(logits.grad).all()
    if rel.has_density:
        z = zeta.detach()
        for value in (rel.log_q(z, logits.detach()), rel.b(z), rel.c(z)):
            assert value.dtype == torch.float32 and torch.isfinite(value).all()


def test_power_implicit_gradient_reference_value():
    """β = 40, q = 0.3, ρ = 0.5 give ∂ζ/∂q = 8.16281e−05 (exact CDF, an independently computed value)."""
    zeta = _invert("power", 40.0, 0.3, 0.5, exact=True)
    rel = relaxations.make("power", 40.0, exact_gradient=True)
    got = float(rel.implicit_dzeta_dq(torch.tensor(zeta, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)))
    assert got == pytest.approx(8.16281e-05, rel=1e-5)
    h = 1e-7
    fd = (_invert("power", 40.0, 0.3 + h, 0.5, True) - _invert("power", 40.0, 0.3 - h, 0.5, True)) / (2 * h)
    assert got == pytest.approx(fd, rel=1e-4)


def test_rsample_gradient_flows_to_logits_with_dq_dl():
    gen = torch.Generator().manual_seed(0)
    rel = relaxations.make("exp", 10.0)
    logits = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
    zeta = rel.rsample(logits, generator=gen)
    zeta.sum().backward()
    q = torch.sigmoid(logits.detach())
    want = rel.implicit_dzeta_dq(zeta.detach(), q) * q * (1 - q)
    torch.testing.assert_close(logits.grad, want)


def test_exp_mixture_closed_form_inverse_matches_root_finding():
    beta = 12.0
    s = math.exp(-beta)
    for q, rho in [(0.3, 0.5), (0.8, 0.1), (0.05, 0.97)]:
        b = (rho + s * (q - rho)) / (1 - q) - 1
        c = -q * s / (1 - q)
        closed = -math.log((-b + math.sqrt(b * b - 4 * c)) / 2) / beta
        assert closed == pytest.approx(_invert("exp", beta, q, rho), abs=1e-12)


def test_log_ratio_bounds():
    z = torch.linspace(0, 1, 100001, dtype=torch.float64)
    power = relaxations.make("power", 40.0)
    assert float(power.b(z).abs().max()) == pytest.approx(15.72, abs=0.01)
    one = torch.tensor([1.0], dtype=torch.float32)  # 1 − ζ rounds to 0 in float32: still finite
    assert torch.isfinite(power.b(one)).all()
    assert float(relaxations.make("unif_exp", 16.0).b(z).abs().max()) == pytest.approx(5.7, abs=0.05)
    assert float(relaxations.make("unif_exp", 40.0).b(z).abs().max()) == pytest.approx(6.6, abs=0.05)
    for name, beta in FAMILIES:
        rel = relaxations.make(name, beta)
        torch.testing.assert_close(rel.b(z), rel.log_r1(z) - rel.log_r0(z))
        torch.testing.assert_close(rel.c(z), rel.log_r0(z))
        # b(ζ) = log r0(1 − ζ) − log r0(ζ), not the reverse: check against the reference density
        ref = np.log(ref_r0(name, beta, 1 - z.numpy()[1:-1])) - np.log(ref_r0(name, beta, z.numpy()[1:-1]))
        np.testing.assert_allclose(rel.b(z[1:-1]).numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name, beta", FAMILIES)
def test_log_q_is_the_mixture_density(name, beta):
    rel = relaxations.make(name, beta)
    x = np.array([0.02, 0.3, 0.6, 0.97])
    for q in (0.1, 0.6):
        logits = torch.full((4,), math.log(q / (1 - q)), dtype=torch.float64)
        want = np.log((1 - q) * ref_r0(name, beta, x) + q * ref_r0(name, beta, 1 - x))
        np.testing.assert_allclose(rel.log_q(torch.tensor(x), logits).numpy(), want, rtol=1e-9)


def test_spike_exp_says_it_has_no_density_and_samples_correctly():
    rel = relaxations.make("spike_exp", 5.0)
    assert not rel.has_density and not rel.overlapping
    z = torch.tensor([0.5])
    for method in (rel.log_r0, rel.b, rel.c):
        with pytest.raises(NotImplementedError, match="no density"):
            method(z)
    with pytest.raises(NotImplementedError, match="no density"):
        rel.log_q(z, z)
    gen = torch.Generator().manual_seed(7)  # fixed seed: deterministic test statistics
    q = 0.35
    logits = torch.full((40000,), math.log(q / (1 - q)), dtype=torch.float64, requires_grad=True)
    zeta = rel.rsample(logits, generator=gen)
    zero = (zeta == 0).double().mean().item()
    assert zero == pytest.approx(1 - q, abs=5 * math.sqrt(q * (1 - q) / 40000))
    positive = zeta[zeta > 0].detach().numpy()[:4000]
    cdf1 = lambda t: np.expm1(5.0 * t) / np.expm1(5.0)  # noqa: E731
    assert stats.kstest(positive, cdf1).pvalue > 1e-3
    # closed-form inverse CDF is differentiable in q: compare with a finite difference
    qq, h = 0.4, 1e-6
    lg = torch.tensor([math.log(qq / (1 - qq))], dtype=torch.float64, requires_grad=True)
    # drive rsample with a generator whose first uniform is ρ: rsample draws exactly one
    draws = torch.rand(1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rho = float(draws)
    inv = lambda qv: math.log1p(math.expm1(5.0) * (rho + qv - 1) / qv) / 5.0  # noqa: E731
    assert rho > 1 - qq, "seed 0 must land in the exponential branch for this check"
    fd = (inv(qq + h) - inv(qq - h)) / (2 * h)
    zeta_q = rel.rsample(lg, generator=torch.Generator().manual_seed(0))
    assert float(zeta_q.detach()) == pytest.approx(inv(qq), rel=1e-12)
    zeta_q.sum().backward()
    assert float(lg.grad) == pytest.approx(fd * qq * (1 - qq), rel=1e-6)


def test_unknown_family_and_bad_beta():
    with pytest.raises(ValueError, match="unknown relaxation 'powr'.*power"):
        relaxations.make("powr", 3.0)
    with pytest.raises(ValueError, match="beta"):
        relaxations.make("exp", -1.0)
    with pytest.raises(ValueError, match="unknown options.*accepted: none"):
        relaxations.make("exp", 3.0, exact_gradient=True)
    with pytest.raises(ValueError, match="unknown options.*accepted:.*exact_gradient"):
        relaxations.make("power", 3.0, exact_grad=True)
    with pytest.raises(ValueError, match="beta"):
        relaxations.make("gauss", True)


def test_every_relaxation_declares_heads_learned_parameters_and_prior_density():
    for name, beta in FAMILIES + [("spike_exp", 5.0)]:
        rel = relaxations.make(name, beta)
        assert (rel.heads, rel.unit_parameters, rel.prior_density) == (1, {}, "mean_field")
        raw = torch.randn(3, 4)
        assert rel.posterior_params(raw, {}) == (raw,)
    gi = relaxations.make("gi", 30.0)
    # the Gaussian integral: logits and shift logits per unit, a learned scale v starting at 1,
    # the closed-form prior density, and β is the floor of that density's λ
    assert (gi.heads, gi.unit_parameters, gi.prior_density) == (2, {"scale": 1.0}, "gaussian_integral")
    assert gi.lambda_floor == 30.0 and gi.has_density and not gi.exact_log_q
    raw = torch.randn(5, 6)
    learned = {"scale": torch.full((3,), 0.5)}
    logits, shift_logits, v = gi.posterior_params(raw, learned)
    assert torch.equal(logits, raw[:, :3]) and torch.equal(shift_logits, raw[:, 3:])
    assert v is learned["scale"]
    # its smoothing kernel depends on the encoder: the fixed-kernel pieces say so, never guess
    for piece in (gi.b, gi.c, gi.log_r0, gi.cdf1):
        with pytest.raises(NotImplementedError, match="closed form"):
            piece(torch.zeros(2))
    with pytest.raises(ValueError, match="accepted:.*exact_log_q"):
        relaxations.make("gi", 3.0, exact_gradient=True)
    assert relaxations.make("gi", 3.0, exact_log_q=True).exact_log_q


def test_gaussian_integral_contract_samples_and_density_match_the_mixture():
    # through the contract (posterior_params → rsample/log_q) with q = 0.4, δμ = −0.15, s = 0.3
    q, dmu, s = 0.4, -0.15, 0.3
    gi = relaxations.make("gi", 10.0)
    col = [math.log(q / (1 - q)), math.log((2 * dmu + 0.5) / (1 - 2 * dmu - 0.5))]
    raw = torch.tensor([col] * 5000, dtype=torch.float64)
    params = gi.posterior_params(raw, {"scale": torch.tensor([(s - 0.05) / 0.2], dtype=torch.float64)})
    zeta = gi.rsample(*params, generator=torch.Generator().manual_seed(3))  # fixed seed: fixed KS
    cdf = lambda t: (1 - q) * stats.norm.cdf(t, dmu, s) + q * stats.norm.cdf(t, 1 + dmu, s)  # noqa: E731
    assert stats.kstest(zeta[:, 0].numpy(), cdf).pvalue > 1e-3
    x = np.array([-0.3, 0.2, 0.9])
    want = np.log((1 - q) * stats.norm.pdf(x, dmu, s) + q * stats.norm.pdf(x, 1 + dmu, s))
    got = gi.log_q(torch.tensor(x).unsqueeze(1), *(p[:3] for p in params[:2]), params[2])
    np.testing.assert_allclose(got[:, 0].numpy(), want, rtol=1e-10)


@pytest.mark.parametrize("name, beta", FAMILIES)
def test_b_and_c_in_one_pass_equal_b_and_c(name, beta):
    # the mean field takes both from one evaluation of log r0(ζ): the same values, and the
    # gradient to ζ of any combination equal to rounding
    rel = relaxations.make(name, beta)
    zeta = torch.rand(50, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    zeta = zeta.requires_grad_(True)
    b, c = rel.b_and_c(zeta)
    assert torch.equal(b, rel.b(zeta)) and torch.equal(c, rel.c(zeta))
    weights = torch.linspace(-1, 1, 50, dtype=torch.float64)
    got = torch.autograd.grad((weights * b + c).sum(), zeta)[0]
    want = torch.autograd.grad((weights * rel.b(zeta) + rel.c(zeta)).sum(), zeta)[0]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(NotImplementedError, match="no density"):
        relaxations.make("spike_exp", 5.0).b_and_c(zeta)
