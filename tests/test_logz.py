"""log Z estimators against brute-force enumeration of every joint state."""

import itertools
import math

import pytest
import torch

import samplers
from dvae_q.logz import ais_log_z, exact_log_z, raise_log_z


def brute_log_z(a_l, a_r, w):
    n_l, n_r = len(a_l), len(a_r)
    z = torch.tensor(list(itertools.product([0, 1], repeat=n_l + n_r)), dtype=torch.float64)
    zl, zr = z[:, :n_l], z[:, n_l:]
    neg_e = zl @ a_l.double() + zr @ a_r.double() + ((zl @ w.double()) * zr).sum(1)
    return float(torch.logsumexp(neg_e, 0))


def rbm(n_l, n_r, seed, scale):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n_l, generator=g) * 0.5, torch.randn(n_r, generator=g) * 0.5,
            torch.randn(n_l, n_r, generator=g) * scale)


@pytest.mark.parametrize("n_l, n_r", [(5, 7), (8, 3), (6, 6)])
def test_exact_log_z_equals_enumeration(n_l, n_r):
    params = rbm(n_l, n_r, seed=n_l, scale=1.0)
    assert exact_log_z(*params) == pytest.approx(brute_log_z(*params), abs=1e-10)
    # chunking does not change the sum
    assert exact_log_z(*params, chunk=7) == pytest.approx(brute_log_z(*params), abs=1e-10)


def test_exact_log_z_of_zero_parameters_and_limit():
    assert exact_log_z(torch.zeros(4), torch.zeros(9), torch.zeros(4, 9)) == pytest.approx(13 * math.log(2))
    with pytest.raises(ValueError, match="limited to 26"):
        exact_log_z(torch.zeros(27), torch.zeros(30), torch.zeros(27, 30))


@pytest.mark.parametrize("scale, seed", [(0.3, 0), (1.0, 1)])
def test_ais_within_three_standard_errors_of_exact(scale, seed):
    params = rbm(12, 20, seed=seed, scale=scale)
    exact = exact_log_z(*params)
    # fixed seed: the estimate is a deterministic function of it; the bound is 3 stderr
    est = ais_log_z(*params, generator=torch.Generator().manual_seed(seed))
    assert abs(est.log_z - exact) < 3 * est.stderr
    assert abs(est.log_z - exact) < 0.05
    assert 0 < est.ess <= 1024


def test_raise_brackets_with_exact_initial_samples():
    params = rbm(10, 14, seed=3, scale=1.0)
    exact = exact_log_z(*params)
    init = samplers.get("exact", seed=0).sample(samplers.BipartiteModel(*params), 1024)
    up = raise_log_z(*params, num_temps=500, generator=torch.Generator().manual_seed(4),
                     init_samples=init)
    low = ais_log_z(*params, num_temps=500, generator=torch.Generator().manual_seed(5))
    # AIS is a stochastic lower bound and RAISE (from exact samples) a stochastic upper bound
    assert low.log_z - 3 * low.stderr < exact < up.log_z + 3 * up.stderr
    assert abs(up.log_z - exact) < 0.05 and abs(low.log_z - exact) < 0.05
    default = raise_log_z(*params, num_temps=300, num_chains=256, burn_in=200,
                          generator=torch.Generator().manual_seed(6))
    assert abs(default.log_z - exact) < 4 * default.stderr + 0.02
