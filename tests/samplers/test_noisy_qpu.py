"""The noisy device model (`samplers.testing.noisy_qpu`) against independent references: exact
enumeration of the problem it reports having sampled, the thermal mock, χ² bounds on its random
draws, the pseudo-likelihood estimator for its β_eff, and the CLI's bad-input contract."""

import itertools
import math

import dimod
import numpy as np
import pytest
import torch
from references import Recording
from scipy.stats import chi2

import samplers
import topologies
from samplers.temperature import estimate_beta, random_native_model
from samplers.testing import DeviceModelError, noisy_qpu, thermal_mock

ZERO = dict(field_noise=0.0, coupler_noise=0.0, beta_spread=0.0, drift=0.0, freeze_out=0.0)
# χ² draws of the tests below are checked at two-sided probability 1e-4 each: deterministic under
# the fixed seeds, and a wrong σ (say 20 % off on 128 draws) falls outside
ALPHA = 1e-4


def _tv_bound(p: np.ndarray, n: int) -> float:
    """E[TV] of n iid samples is at most ½ Σ sqrt(p(1−p)/n) (Cauchy–Schwarz per state); TV moves
    by at most 1/n per sample, so McDiarmid adds sqrt(ln(1/δ)/(2n)) at δ = 1e-4."""
    return float(0.5 * np.sqrt(p * (1 - p) / n).sum() + math.sqrt(math.log(1e4) / (2 * n)))


def _exact(bqm, labels, beta):
    """Every spin state of `labels` (rows) and its probability under exp(−beta·E_bqm)."""
    states = np.array(list(itertools.product([-1, 1], repeat=len(labels))), dtype=np.int8)
    energy = bqm.energies((states, labels))
    logits = -beta * (energy - energy.min())
    p = np.exp(logits)
    return states, p / p.sum()


def _empirical(spins: np.ndarray, num_states: int) -> np.ndarray:
    codes = ((spins > 0).astype(np.int64) * (2 ** np.arange(spins.shape[1] - 1, -1, -1))).sum(1)
    return np.bincount(codes, minlength=num_states) / len(spins)


def _tv(p, q) -> float:
    return float(0.5 * np.abs(p - q).sum())


def _native_bqm(n_left, n_right, scale, seed, topology="chimera_c4"):
    """A random SPIN problem on the qubits and couplers of a native n_left+n_right region."""
    left, right, mask = topologies.load(topology).native_rbm(n_left, n_right)
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(mask.numpy())
    qubits = left + right
    linear = {q: scale * rng.normal() for q in qubits}
    quadratic = {(left[i], right[j]): scale * rng.normal() for i, j in zip(rows, cols)}
    return dimod.BinaryQuadraticModel(linear, quadratic, 0.0, dimod.SPIN), qubits


def _spins(answer, labels):
    return answer.record.sample[:, [answer.variables.index(q) for q in labels]]


def _check_chi2(values, sigma, what):
    stat = float(np.sum(np.square(values)) / sigma**2)
    lo, hi = chi2.ppf(ALPHA / 2, len(values)), chi2.ppf(1 - ALPHA / 2, len(values))
    assert lo < stat < hi, f"{what}: χ² {stat:.1f} outside [{lo:.1f}, {hi:.1f}]"


def test_without_noise_it_is_the_thermal_mock():
    topo = topologies.load("chimera_c4")
    model = random_native_model(topo, 4, 4, seed=0)
    n = 8000

    def draw(child):
        return samplers.get("qpu", topology="chimera_c4", beta_eff=4.0, seed=0,
                            child_sampler=child).sample(model, n)

    thermal = draw(thermal_mock("chimera_c4", beta=4.0, seed=3))
    silent = draw(noisy_qpu("chimera_c4", beta=4.0, seed=3, **ZERO))
    noisy = draw(noisy_qpu("chimera_c4", beta=4.0, seed=3))
    # the same engine and per-call seeds on an undistorted problem: the very same samples
    assert torch.equal(thermal, silent) and not torch.equal(thermal, noisy)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)), dtype=torch.float64)
    p = torch.softmax(-model.energy(states), 0).numpy()
    codes = (silent.double() @ (2 ** torch.arange(7, -1, -1, dtype=torch.float64))).long()
    empirical = np.bincount(codes.numpy(), minlength=256) / n
    assert _tv(empirical, p) < _tv_bound(p, n)


def test_noisy_samples_are_boltzmann_in_the_distortion_it_reports():
    # magnitudes far above the published ones, so that the distortion is plain to see
    device_mock = noisy_qpu("chimera_c4", beta=3.0, field_noise=0.2, coupler_noise=0.3,
                            beta_spread=0.3, freeze_out=0.5, drift=0.0, seed=5)
    device = device_mock.substitute_sampler
    bqm, labels = _native_bqm(4, 4, 0.3, seed=1)
    n = 20000
    answer = device_mock.sample(bqm, num_reads=n, answer_mode="raw", auto_scale=False)
    distortion = device.last_distortion
    assert set(distortion.bqm.quadratic) == set(bqm.quadratic)
    states, p_distorted = _exact(distortion.bqm, labels, distortion.beta)
    _, p_programmed = _exact(bqm, labels, 3.0)
    empirical = _empirical(_spins(answer, labels), len(states))
    bound = _tv_bound(p_distorted, n)
    assert _tv(empirical, p_distorted) < bound
    # sensitivity: the same samples are far from the problem as programmed
    assert _tv(empirical, p_programmed) > 3 * bound
    # the energies reported are those of the programmed problem, as a QPU reports them
    np.testing.assert_allclose(answer.record.energy, bqm.energies(answer), atol=1e-9)


def test_each_kind_of_error_has_the_requested_spread():
    topo = topologies.load("chimera_c4")
    graph = topo.graph()
    qubits = sorted(graph.nodes)
    ones = dimod.BinaryQuadraticModel({q: 1.0 for q in qubits},
                                      {tuple(e): 1.0 for e in graph.edges}, 0.0, dimod.SPIN)
    sigma = 0.05

    def distorted(**noise):
        device = noisy_qpu("chimera_c4", seed=2, **{**ZERO, **noise}).substitute_sampler
        d = device.distorted_problem(ones)
        return d, np.array([d.bqm.linear[q] for q in qubits]), \
            np.array([d.bqm.quadratic[e] for e in graph.edges])

    d, h, j = distorted(field_noise=sigma)
    _check_chi2(h - 1.0, sigma, "field offsets")
    np.testing.assert_array_equal(j, 1.0)
    in_order = np.array([d.bqm.linear[v] for v in d.bqm.variables])
    np.testing.assert_allclose(d.offsets, in_order - 1.0, atol=1e-12)
    _, h, j = distorted(coupler_noise=sigma)
    _check_chi2(np.log(h), sigma, "field errors")
    _check_chi2(np.log(j), sigma, "coupler errors")
    _, h, j = distorted(beta_spread=sigma)
    _check_chi2(np.log(h), sigma, "β factors")
    # a coupler sees the geometric mean of its qubits' factors
    factor = dict(zip(qubits, h))
    np.testing.assert_allclose(j, [math.sqrt(factor[u] * factor[v]) for u, v in graph.edges])


def test_offsets_drift_between_calls_and_a_seed_reproduces_the_device():
    graph = topologies.load("chimera_c4").graph()
    free = dimod.BinaryQuadraticModel({q: 0.0 for q in graph.nodes}, {}, 0.0, dimod.SPIN)

    def run(seed, drift):
        mock = noisy_qpu("chimera_c4", field_noise=0.02, drift=drift, seed=seed)
        device = mock.substitute_sampler
        static = dict(zip(device.nodes.tolist(), device.field_offsets()))
        offsets, samples = [], []
        for _ in range(3):
            samples.append(mock.sample(free, num_reads=50, answer_mode="raw").record.sample)
            offsets.append(device.last_distortion.offsets)
        order = device.last_distortion.bqm.variables
        return np.array([static[q] for q in order]), offsets, samples

    static, offsets, samples = run(seed=1, drift=0.01)
    np.testing.assert_array_equal(offsets[0], static)  # the first call sees the static offsets
    for before, after in zip(offsets, offsets[1:]):
        _check_chi2(after - before, 0.01, "drift step")
    again = run(seed=1, drift=0.01)
    for a, b in zip(offsets + samples, again[1] + again[2]):
        np.testing.assert_array_equal(a, b)
    other = run(seed=2, drift=0.01)
    assert not np.array_equal(other[1][0], offsets[0])
    still = run(seed=1, drift=0.0)
    assert all(np.array_equal(o, still[0]) for o in still[1])


def test_beta_eff_falls_with_the_problem_scale_as_documented():
    mock = noisy_qpu("chimera_c4", beta=4.0, seed=4, **{**ZERO, "freeze_out": 0.5})
    device = mock.substitute_sampler
    estimates = []
    for scale in (0.2, 1.0):
        bqm, labels = _native_bqm(None, None, scale, seed=7)
        # the documented scale, computed here from the problem's own adjacency
        norms = [bqm.linear[q] ** 2 + sum(b * b for b in bqm.adj[q].values()) for q in labels]
        s = math.sqrt(sum(norms) / len(norms))
        answer = mock.sample(bqm, num_reads=1000, answer_mode="raw")
        distortion = device.last_distortion
        assert distortion.scale == pytest.approx(s, rel=1e-12)
        assert distortion.beta == pytest.approx(4.0 / (1 + 0.5 * s), rel=1e-12)
        # and the samples really are at that β: pseudo-likelihood against the programmed problem
        est = estimate_beta(bqm, answer, num_bootstrap=50, seed=0)
        assert abs(est.beta - distortion.beta) < max(4 * est.stderr, 0.03 * distortion.beta)
        estimates.append(est)
    low, high = estimates
    assert low.beta - high.beta > 5 * math.hypot(low.stderr, high.stderr)


def test_readout_flips_each_qubit_with_the_chain_break_probability():
    graph = topologies.load("chimera_c4").graph()
    # h = +2 at β 4: a qubit reads +1 with probability e^-16 before readout flips
    pinned = dimod.BinaryQuadraticModel({q: 2.0 for q in graph.nodes}, {}, 0.0, dimod.SPIN)
    mock = noisy_qpu("chimera_c4", beta=4.0, chain_break=0.05, seed=6, **ZERO)
    spins = mock.sample(pinned, num_reads=2000, answer_mode="raw").record.sample
    trials = spins.size
    assert abs((spins > 0).mean() - 0.05) < 5 * math.sqrt(0.05 * 0.95 / trials)


def test_chain_breaks_rise_on_an_embedded_topology():
    topo = topologies.load("zephyr_z2_embedded")
    model = random_native_model(topo, 12, 12, seed=0, scale=0.2)

    def fraction(chain_break):
        child = noisy_qpu("zephyr_z2_embedded", beta=4.0, chain_break=chain_break, seed=0,
                          **ZERO)
        # chains at the strongest coupling j_range allows, so that few break thermally
        sampler = samplers.get("qpu", topology="zephyr_z2_embedded", beta_eff=4.0, seed=0,
                               num_reads=400, tiles=1, chain_strength=1.0, child_sampler=child)
        return sampler.draw(model, 400).info["chain_break_fraction"]

    chains = topo.embedding(12, 12).values()
    p = 0.05
    # a chain of L intact qubits breaks unless none or all of its qubits flip
    expected = np.mean([1 - (1 - p) ** len(c) - p ** len(c) for c in chains])
    base, broken = fraction(0.0), fraction(p)
    assert base < 0.01
    # 400 samples × 24 chains, each broken independently by its flips: a binomial error
    stderr = math.sqrt(expected * (1 - expected) / (400 * len(chains)))
    assert abs(broken - (base + expected * (1 - base))) < 5 * stderr


@pytest.mark.parametrize("kwargs, match", [
    ({"beta": 0}, "beta must be > 0"),
    ({"beta": -1.0}, "beta must be > 0"),
    ({"field_noise": -0.1}, "field_noise must be >= 0"),
    ({"coupler_noise": float("nan")}, "coupler_noise = nan is not finite"),
    ({"drift": float("inf")}, "drift = inf is not finite"),
    ({"beta_spread": "wide"}, "beta_spread must be a number"),
    ({"freeze_out": True}, "freeze_out must be a number"),
    ({"chain_break": 1.0}, r"chain_break must be in \[0, 1\)"),
    ({"chain_break": -0.01}, r"chain_break must be in \[0, 1\)"),
    ({"num_sweeps": 0}, "num_sweeps"),
    ({"seed": -3}, "seed"),
])
def test_impossible_parameters_are_refused_as_bad_input(kwargs, match):
    with pytest.raises(DeviceModelError, match=match) as err:
        noisy_qpu("chimera_c4", **kwargs)
    assert isinstance(err.value, samplers.SamplerOptionError) and "\n" not in str(err.value)
    # through a config's child_kwargs the same error reaches the sampler's caller
    sampler = samplers.get("qpu", topology="chimera_c4", beta_eff=4.0,
                           child_sampler="samplers.testing:noisy_qpu", child_kwargs=kwargs)
    with pytest.raises(DeviceModelError, match=match):
        sampler.sample(random_native_model(topologies.load("chimera_c4"), 2, 2), 4)


def test_unknown_child_kwargs_are_one_line():
    sampler = samplers.get("qpu", topology="chimera_c4", beta_eff=4.0,
                           child_sampler="samplers.testing:noisy_qpu",
                           child_kwargs={"field_nosie": 0.1})
    with pytest.raises(samplers.SamplerOptionError, match="field_nosie") as err:
        sampler.sample(random_native_model(topologies.load("chimera_c4"), 2, 2), 4)
    assert "\n" not in str(err.value)


def test_calibrate_command_runs_on_the_noisy_device(capsys):
    from dvae_q.cli.main import main

    code = main(["calibrate", "--topology", "chimera_c4", "--num-reads", "300", "--quiet",
                 "--child-sampler", "samplers.testing:noisy_qpu"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("beta_eff: ")
    # the device's β_eff at the probe's scale is near its default 4.6, not the thermal 5
    beta = float(out.split()[1])
    assert 3.5 < beta < 4.7


def _model_distribution(model):
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=model.num_units)),
                          dtype=torch.float64)
    return torch.softmax(-model.beta * model.energy(states), 0).numpy()


def _z_empirical(z):
    weights = 2 ** torch.arange(z.shape[1] - 1, -1, -1, dtype=torch.float64)
    codes = (z.double() @ weights).long().numpy()
    return np.bincount(codes, minlength=2 ** z.shape[1]) / len(z)


def _tv_sd(p, n):
    """Standard deviation of the TV of n iid samples: ½ sqrt((1 − 2/π) Σ p(1 − p) / n)."""
    return 0.5 * math.sqrt((1 - 2 / math.pi) * float((p * (1 - p)).sum()) / n)


def test_spin_reversal_transforms_cancel_field_offsets():
    topo = topologies.load("chimera_c4")
    model = random_native_model(topo, 4, 4, seed=0)
    p = _model_distribution(model)
    n = 16000

    def draw(transforms):
        child = Recording(noisy_qpu("chimera_c4", beta=4.0, seed=11, **{**ZERO, "field_noise": 0.05}))
        # one copy per call, so that the offsets of one region are all there is to average
        sampler = samplers.get("qpu", topology="chimera_c4", beta_eff=4.0, seed=0, tiles=1,
                               num_reads=2000, spin_reversal_transforms=transforms,
                               child_sampler=child)
        z, info = sampler.draw(model, n)
        return z, info, sampler, child

    z0, info0, sampler, _ = draw(0)
    z1, info1, _, child = draw(64)
    assert info0["num_qpu_calls"] == 8 and info1["num_qpu_calls"] == 64
    programmed = sampler.programmed_bqm(model)
    labels = sampler.tile_qubits(model)[0]
    device = child.substitute_sampler
    offsets = dict(zip(device.distorted_problem(programmed).bqm.variables,
                       device.distorted_problem(programmed).offsets))
    spins = np.array(list(itertools.product([-1, 1], repeat=8)), dtype=np.int8)

    def boltzmann(gauge):
        """What a region sampled under `gauge` gives, back in the original frame: Boltzmann in
        the programmed problem plus the offsets with the gauge's signs."""
        bqm = programmed.copy()
        bqm.add_linear_from({q: g * offsets[q] for q, g in zip(labels, gauge)})
        energy = bqm.energies((spins, labels))
        w = np.exp(-4.0 * (energy - energy.min()))
        return w / w.sum()

    # exact references: no transform, every one of the 2^8 gauges, and the 64 the calls used
    # (read off the problems sent: sent h_i = g_i h_i), each call giving 250 of the samples
    p_offset = boltzmann(np.ones(8))
    averaged = np.mean([boltzmann(g) for g in itertools.product([-1, 1], repeat=8)], axis=0)
    used = [np.sign([sent.linear[q] / programmed.linear[q] for q in labels])
            for sent in child.problems]
    assert len(used) == 64
    mixture = np.mean([boltzmann(g) for g in used], axis=0)
    bias = _tv(p_offset, p)
    assert _tv(averaged, p) < bias / 5      # gauges cancel offsets to first order
    assert _tv(mixture, p) < bias / 3       # and 64 of them most of the way
    bound = _tv_bound(p, n)
    tv0, tv1 = _tv(_z_empirical(z0), p), _tv(_z_empirical(z1), p)
    assert abs(tv0 - bias) < bound          # without transforms: the offsets' own bias
    # with them: samples of the gauges' mixture, un-transformed, at the iid bound
    assert _tv(_z_empirical(z1), mixture) < _tv_bound(mixture, n)
    # far apart (measured 0.182 against 0.051): the TVs of n samples scatter by ≈ 0.0024 each
    assert tv0 - tv1 > max(0.5 * bias, 10 * (_tv_sd(p_offset, n) + _tv_sd(mixture, n)))


@pytest.mark.parametrize("topology", ["chimera_c4", "zephyr_z2_embedded"])
def test_spin_reversal_transforms_leave_a_thermal_sampler_exact(topology):
    topo = topologies.load(topology)
    model = random_native_model(topo, 4, 4, seed=1) if topo.mode == "native" else \
        random_native_model(topo, 3, 3, seed=1, scale=2.0)
    n = 8000
    sampler = samplers.get("qpu", topology=topology, beta_eff=4.0, seed=0, num_reads=2000,
                           spin_reversal_transforms=8,
                           child_sampler=thermal_mock(topology, beta=4.0, seed=2))
    z = sampler.sample(model, n)
    p = _model_distribution(model)
    assert _tv(_z_empirical(z), p) < _tv_bound(p, n)
    # sensitivity: far from the model at another temperature
    assert _tv(_z_empirical(z), _model_distribution(model.with_beta(0.5))) > 1.5 * _tv_bound(p, n)
