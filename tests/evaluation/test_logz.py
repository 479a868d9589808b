"""log Z estimators against brute-force enumeration of every joint state."""

import functools
import itertools
import math

import pytest
import torch

import samplers
from dvae_q.evaluation.logz import (
    Bracket,
    LogZEstimate,
    ais_log_z,
    bracket,
    exact_log_z,
    raise_log_z,
)
from samplers import BipartiteModel


def brute_log_z(model):
    n_l = model.num_left
    z = torch.tensor(list(itertools.product([0, 1], repeat=model.num_units)), dtype=torch.float64)
    zl, zr = z[:, :n_l], z[:, n_l:]
    w = model.W.double()
    neg_e = zl @ model.a_left.double() + zr @ model.a_right.double() + ((zl @ w) * zr).sum(1)
    return float(torch.logsumexp(model.beta * neg_e, 0))


def rbm(n_l, n_r, seed, scale, beta=1.0):
    g = torch.Generator().manual_seed(seed)
    return BipartiteModel(torch.randn(n_l, generator=g) * 0.5, torch.randn(n_r, generator=g) * 0.5,
                          torch.randn(n_l, n_r, generator=g) * scale, beta=beta)


@pytest.mark.parametrize("n_l, n_r", [(5, 7), (8, 3), (6, 6)])
def test_exact_log_z_equals_enumeration(n_l, n_r):
    model = rbm(n_l, n_r, seed=n_l, scale=1.0)
    assert exact_log_z(model) == pytest.approx(brute_log_z(model), abs=1e-10)
    # chunking does not change the sum
    assert exact_log_z(model, chunk=7) == pytest.approx(brute_log_z(model), abs=1e-10)
    hot = model.with_beta(0.6)  # log Z at the model's own β
    assert exact_log_z(hot) == pytest.approx(brute_log_z(hot), abs=1e-10)


def test_exact_log_z_of_zero_parameters_and_limit():
    zero = BipartiteModel(torch.zeros(4), torch.zeros(9), torch.zeros(4, 9))
    assert exact_log_z(zero) == pytest.approx(13 * math.log(2))
    with pytest.raises(ValueError, match="limited to 26"):
        exact_log_z(BipartiteModel(torch.zeros(27), torch.zeros(30), torch.zeros(27, 30)))


@pytest.mark.parametrize("scale, seed", [(0.3, 0), (1.0, 1)])
def test_ais_within_three_standard_errors_of_exact(scale, seed):
    model = rbm(12, 20, seed=seed, scale=scale)
    exact = exact_log_z(model)
    # fixed seed: the estimate is a deterministic function of it; the bound is 3 stderr
    est = ais_log_z(model, generator=torch.Generator().manual_seed(seed))
    assert abs(est.log_z - exact) < 3 * est.stderr
    assert abs(est.log_z - exact) < 0.05
    assert 0 < est.ess <= 1024


def test_raise_brackets_with_exact_initial_samples():
    model = rbm(10, 14, seed=3, scale=1.0)
    exact = exact_log_z(model)
    init = samplers.get("exact", seed=0).sample(model, 1024)
    up = raise_log_z(model, num_temps=500, generator=torch.Generator().manual_seed(4),
                     init_samples=init)
    low = ais_log_z(model, num_temps=500, generator=torch.Generator().manual_seed(5))
    # AIS is a stochastic lower bound and RAISE (from exact samples) a stochastic upper bound
    assert low.log_z - 3 * low.stderr < exact < up.log_z + 3 * up.stderr
    assert abs(up.log_z - exact) < 0.05 and abs(low.log_z - exact) < 0.05
    # the default start: AIS end states resampled by their weights
    default = raise_log_z(model, num_temps=300, num_chains=256,
                          generator=torch.Generator().manual_seed(6))
    assert abs(default.log_z - exact) < 4 * default.stderr + 0.02


def test_ais_at_another_temperature():
    model = rbm(10, 16, seed=7, scale=0.8, beta=1.7)
    exact = exact_log_z(model)
    est = ais_log_z(model, num_temps=500, num_chains=512, generator=torch.Generator().manual_seed(1))
    # a missing β factor moves log Z by several nats; 3 stderr and 0.05 as for β = 1
    assert abs(est.log_z - exact) < 3 * est.stderr and abs(est.log_z - exact) < 0.05


# --- the bracket on multimodal RBMs ---------------------------------------------------------

def pattern_rbm(n_l, n_r, scale, seed, patterns=3):
    """Low-rank ±1 "pattern" couplings W = scale·Σ_k u_k v_kᵀ/√n_l, no biases: a few deep modes
    of unequal mass (each pattern and sign combination), whose basins under block Gibbs at
    β = 1 are not in proportion to their mass."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(0, 2, (patterns, n_l), generator=g).float() * 2 - 1
    v = torch.randint(0, 2, (patterns, n_r), generator=g).float() * 2 - 1
    w = scale * (u.T @ v) / math.sqrt(n_l)
    return BipartiteModel(torch.zeros(n_l), torch.zeros(n_r), w)


@functools.lru_cache(maxsize=None)
def pattern_case(scale):
    model = pattern_rbm(20, 200, scale, seed=0)
    return model, exact_log_z(model)  # enumerates the 20-unit side: 2^20 states


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.0])
def test_bracket_holds_on_pattern_rbms(scale):
    """lower ≤ exact ≤ upper within 3 stated errors, with the defaults (1000 × 1024).

    AIS is a stochastic lower bound, so only its noise can put it above log Z: 3 stderr leave
    odds ~1e-3. RAISE from weight-resampled AIS states is an upper bound up to a term that
    shrinks with the AIS weights' spread (module docstring); on these models, over 8 seeds at
    scales 1 and 2 both ends stayed within 2.2 stderr of exact (stderr 0.014–0.023 nat), while
    RAISE from Gibbs chains fell 33 and 122 nats below it (see the next test).
    """
    model, exact = pattern_case(scale)
    br = bracket(model, generator=torch.Generator().manual_seed(7))
    assert br.lower.log_z - 3 * br.lower.stderr <= exact <= br.upper.log_z + 3 * br.upper.stderr
    assert not br.inverted
    low, high = br.interval(sigmas=3.0)
    assert low <= exact <= high and high - low < 0.3  # and the bracket is informative
    assert br.lower.ess > 300  # measured 700–1024: the weights are not degenerate


@pytest.mark.parametrize("n_l, n_r, scale", [(12, 20, 1.0), (16, 64, 0.5)])
def test_bracket_holds_on_random_rbms(n_l, n_r, scale):
    model = rbm(n_l, n_r, seed=n_l, scale=scale)
    exact = exact_log_z(model)
    br = bracket(model, num_temps=500, num_chains=512, generator=torch.Generator().manual_seed(2))
    # the same 3-stderr argument as for the pattern RBMs; such models are unimodal enough that
    # both ends land within a few hundredths of a nat
    assert br.lower.log_z - 3 * br.lower.stderr <= exact <= br.upper.log_z + 3 * br.upper.stderr
    assert br.upper.log_z - br.lower.log_z < 0.1 and not br.inverted


def test_raise_from_gibbs_chains_falls_below_log_z_on_a_multimodal_rbm():
    """The old default and why it went: block-Gibbs chains burned in at β = 1 from uniform
    states sit in modes by basin, not by mass, and RAISE from them is not an upper bound."""
    model, exact = pattern_case(1.0)
    chains = samplers.get("gibbs", num_chains=256, sweeps=1000, seed=1).sample(model, 256)
    gen = torch.Generator().manual_seed(3)
    old = raise_log_z(model, num_temps=300, generator=gen, init_samples=chains)
    # measured 33 nats below exact with 1024 chains and 1000 temperatures; 5 nats is far
    # outside any noise (stderr ~0.6)
    assert old.log_z + 3 * old.stderr < exact - 5
    inverted = bracket(model, num_temps=300, num_chains=256, generator=gen, init_samples=chains)
    assert inverted.inverted  # the flag catches it: AIS sits at log Z, RAISE far below


def test_bracket_nll_interval_moves_one_for_one_with_log_z():
    br = Bracket(LogZEstimate(100.0, 0.1), LogZEstimate(100.5, 0.2))
    assert br.interval(sigmas=2.0) == pytest.approx((99.8, 100.9))
    # an NLL of 90 computed with log Z = 100.2 spans [90 − 0.4, 90 + 0.7]
    assert br.nll_interval(90.0, 100.2, sigmas=2.0) == pytest.approx((89.6, 90.7))
    assert not br.inverted
    assert Bracket(LogZEstimate(100.0, 0.1), LogZEstimate(99.0, 0.1)).inverted
    assert not Bracket(LogZEstimate(100.0, 0.1), LogZEstimate(99.7, 0.1)).inverted  # < 3σ


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ais_and_bracket_on_cuda_match_exact():
    model = rbm(12, 20, seed=1, scale=1.0)
    exact = exact_log_z(model)
    br = bracket(model.to(device="cuda"), generator=torch.Generator(device="cuda").manual_seed(1))
    assert br.lower.states.device.type == "cuda"
    assert abs(br.lower.log_z - exact) < 3 * br.lower.stderr + 1e-3
    assert br.lower.log_z - 3 * br.lower.stderr <= exact <= br.upper.log_z + 3 * br.upper.stderr
