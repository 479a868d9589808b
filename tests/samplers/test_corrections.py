"""The qpu sampler's device corrections (the flux-bias shim, the device-Hamiltonian fit) on the
noisy device model, against exact enumeration of small native RBMs and the device's own known
distortion (`substitute_sampler.field_offsets()`, `.last_distortion`)."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch

import samplers
import topologies
from samplers.qpu.errors import FluxBiasShimError
from samplers.temperature import random_native_model
from samplers.testing import noisy_qpu

ZERO = dict(field_noise=0.0, coupler_noise=0.0, beta_spread=0.0, drift=0.0, freeze_out=0.0)
SPINS8 = np.array(list(itertools.product([-1, 1], repeat=8)), dtype=np.int8)


def _tv_bound(p: np.ndarray, n: int) -> float:
    """E[TV] of n iid samples is at most ½ Σ sqrt(p(1−p)/n) (Cauchy–Schwarz per state); TV moves
    by at most 1/n per sample, so McDiarmid adds sqrt(ln(1/δ)/(2n)) at δ = 1e-4."""
    return float(0.5 * np.sqrt(p * (1 - p) / n).sum() + math.sqrt(math.log(1e4) / (2 * n)))


def _tv(p, q) -> float:
    return float(0.5 * np.abs(p - q).sum())


def _model_distribution(model) -> np.ndarray:
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=model.num_units)),
                          dtype=torch.float64)
    return torch.softmax(-model.beta * model.energy(states), 0).numpy()


def _z_empirical(z) -> np.ndarray:
    weights = 2 ** torch.arange(z.shape[1] - 1, -1, -1, dtype=torch.float64)
    codes = (z.double() @ weights).long().numpy()
    return np.bincount(codes, minlength=2 ** z.shape[1]) / len(z)


def _boltzmann(bqm, labels, beta) -> np.ndarray:
    """exp(−beta·E_bqm) over every spin state of `labels`, in the order of `_z_empirical`
    (z = (s + 1)/2, the first label the most significant)."""
    energy = bqm.energies((SPINS8, labels))
    w = np.exp(-beta * (energy - energy.min()))
    return w / w.sum()


def _offset_device(seed=11, sigma=0.05):
    return noisy_qpu("chimera_c4", beta=4.0, seed=seed, **{**ZERO, "field_noise": sigma})


def _shim_sampler(child, **options):
    # one copy per call: the offsets of one region are all there is (no mixing over tiles)
    return samplers.get("qpu", topology="chimera_c4", beta_eff=4.0, seed=0, tiles=1,
                        num_reads=2000, flux_bias_shim=True, child_sampler=child, **options)


def _offsets(sampler, qubits) -> np.ndarray:
    shim = sampler._corrections.shim
    return shim.offsets[shim.index(qubits)]


# ---- the flux-bias shim ---------------------------------------------------------------------

@pytest.mark.parametrize("transforms", [0, 16])
def test_shim_learns_the_field_offsets_and_removes_their_bias(transforms):
    model = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    p = _model_distribution(model)
    child = _offset_device()
    sampler = _shim_sampler(child, spin_reversal_transforms=transforms)
    qubits = sampler.tile_qubits(model)[0]
    device = child.substitute_sampler
    delta = dict(zip(device.nodes.tolist(), device.field_offsets()))
    delta = np.array([delta[q] for q in qubits])
    errors = [sampler.draw(model, 2000).info["flux_bias_magnetisation_error"] for _ in range(8)]
    phi = _offsets(sampler, qubits)
    # Each update's φ has sampling noise ≈ 1/(β·sqrt(χ·R)) ≈ 1/(4·sqrt(0.5·2000)) = 0.008,
    # damped by gain 0.5 to a stationary sd ≈ 0.008·sqrt(0.5/1.5) = 0.0046: the RMS over 8
    # qubits of φ + δ is then ≈ 0.005 ± 0.0012 (measured 0.003 and 0.005), against δ's 0.05.
    assert math.sqrt(np.mean((phi + delta) ** 2)) < 0.2 * math.sqrt(np.mean(delta ** 2))
    # the magnetisation error falls to its noise floor, RMS of sqrt(χ/R) ≈ 0.016 (first: 0.15)
    assert errors[-1] < errors[0] / 3 and errors[-1] < 0.04
    # with φ in place the samples are Boltzmann in programmed + φ + δ (exact enumeration), and
    # that distribution is close to the model's: the offsets' bias is gone
    n = 16000
    z = sampler.sample(model, n)
    sent = sampler.programmed_bqm(model)
    sent.add_linear_from(dict(zip(qubits, phi + delta)))
    p_device = _boltzmann(sent, qubits, 4.0)
    biased = sampler.programmed_bqm(model)
    biased.add_linear_from(dict(zip(qubits, delta)))
    bias = _tv(_boltzmann(biased, qubits, 4.0), p)        # the offsets' own bias, ≈ 0.18
    if not transforms:
        assert _tv(_z_empirical(z), p_device) < _tv_bound(p_device, n)
    assert _tv(p_device, p) < bias / 5
    tv = _tv(_z_empirical(z), p)
    assert tv < _tv_bound(p, n) and tv < bias / 2   # iid E[TV] here ≈ 0.045


def test_the_shim_does_not_learn_from_a_clipped_unit():
    from samplers.model import BipartiteModel

    base = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    a_left = base.a_left.clone()
    # programmed field of unit 0: −(a/2 + ΣW/4)/β_eff ≈ 5, beyond Chimera's h_range [−2, 2]:
    # clipped, so its magnetisation is not the model's whatever the offsets; a shim that
    # learned from it would push its offset on until it diverged
    a_left[0] = -40.0
    model = BipartiteModel(a_left, base.a_right, base.W, base.mask)
    sampler = _shim_sampler(_offset_device(), range_policy="clip", flux_bias_gain=1.0)
    qubits = sampler.tile_qubits(model)[0]
    infos = [sampler.draw(model, 2000).info for _ in range(12)]
    assert all(i["flux_bias_clipped_units"] == 1 for i in infos)
    phi = _offsets(sampler, qubits)
    assert phi[0] == 0.0 and np.all(phi[1:] != 0.0)
    # the other units still converge (their error falls as without the clipped one)
    assert infos[-1]["flux_bias_magnetisation_error"] < infos[0]["flux_bias_magnetisation_error"] / 2


def test_a_diverging_shim_stops_with_one_line_and_keeps_the_last_good_offsets():
    model = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    # β_eff 1 against a device at 4: each Newton step is 4 times too long, so every update
    # would overshoot by a factor 3 and the offsets grow without bound
    sampler = samplers.get("qpu", topology="chimera_c4", beta_eff=1.0, seed=0, tiles=1,
                           num_reads=500, flux_bias_shim=True, flux_bias_gain=1.0,
                           flux_bias_every=2, child_sampler=_offset_device())
    sampler.draw(model, 500)                     # the window's first draw: no update yet
    before = sampler.state_dict()
    with pytest.raises(FluxBiasShimError, match="flux_bias_shim diverged") as err:
        sampler.draw(model, 500)
    assert "\n" not in str(err.value) and isinstance(err.value, samplers.SamplerFailure)
    after = sampler.state_dict()
    assert after["calls"] == before["calls"] == 1
    assert after["flux_bias"] == before["flux_bias"]  # offsets and window as before the draw
    assert not np.any(after["flux_bias"]["offsets"])


def test_a_state_with_non_finite_offsets_is_refused_before_anything_is_programmed():
    sampler = _shim_sampler(_offset_device())
    state = sampler.state_dict()
    state["flux_bias"]["offsets"][5] = float("nan")
    with pytest.raises(FluxBiasShimError, match="not finite") as err:
        sampler.load_state_dict(state)
    assert "\n" not in str(err.value)
    assert np.all(sampler._corrections.shim.offsets == 0) and sampler.calls == 0


def test_the_shim_resumes_exactly():
    model = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    child = _offset_device()
    first = _shim_sampler(child, flux_bias_every=2)
    for _ in range(3):                           # one update done, one draw in the window
        first.draw(model, 500)
    state = copy.deepcopy(first.state_dict())
    twin = copy.deepcopy(child)                  # the device as it stands at the checkpoint
    other_twin = copy.deepcopy(child)
    expected = first.sample(model, 500)
    resumed = _shim_sampler(twin, flux_bias_every=2)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(model, 500), expected)
    assert resumed.state_dict()["flux_bias"] == first.state_dict()["flux_bias"]
    # the offsets are what made the samples so: without them the same device answers otherwise
    state["flux_bias"]["offsets"] = [0.0] * len(state["flux_bias"]["offsets"])
    blank = _shim_sampler(other_twin, flux_bias_every=2)
    blank.load_state_dict(state)
    assert not torch.equal(blank.sample(model, 500), expected)


def test_shim_options_are_checked():
    with pytest.raises(samplers.SamplerOptionError, match="native topology"):
        samplers.get("qpu", topology="zephyr_z2_embedded", beta_eff=4.0, flux_bias_shim=True)
    for key, value in (("flux_bias_gain", 0.0), ("flux_bias_every", 0), ("flux_bias_limit", -1)):
        with pytest.raises(samplers.SamplerOptionError, match=key):
            samplers.get("qpu", topology="chimera_c4", beta_eff=4.0, **{key: value})


# ---- the device-Hamiltonian fit -------------------------------------------------------------

# far above the published magnitudes (offsets σ 0.01, errors 1.4 %, β spread 1 %), so that the
# distortion is many standard errors of a fit from a few thousand samples
DISTORTED = {**ZERO, "field_noise": 0.05, "coupler_noise": 0.1, "beta_spread": 0.05}


def _fit_sampler(child, **options):
    options = {"num_reads": 4000, **options}
    return samplers.get("qpu", topology="chimera_c4", beta_eff=4.0, seed=0, tiles=1,
                        learn_device_hamiltonian=True, child_sampler=child, **options)


def test_the_fit_recovers_the_devices_known_distortion():
    from scipy.stats import chi2

    model = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    child = noisy_qpu("chimera_c4", beta=4.0, seed=11, **DISTORTED)
    sampler = _fit_sampler(child)
    info = sampler.draw(model, 4000).info
    assert info["hamiltonian_fitted"] and info["hamiltonian_samples_per_qubit"] == 4000
    truth = child.substitute_sampler.last_distortion       # D of the problem sent, at β 4
    assert truth.beta == 4.0                               # no freeze-out: β_eff is exact
    labels, row, col, d_h, d_j, se_h, se_j = sampler._corrections.fit.last_fit
    sent = sampler.programmed_bqm(model)                   # no correction before the first fit
    fitted_h = np.array([sent.linear[q] for q in labels]) + d_h
    pairs = [(labels[r], labels[c]) for r, c in zip(row, col)]
    fitted_j = np.array([sent.quadratic[e] for e in pairs]) + d_j
    true_h = np.array([truth.bqm.linear[q] for q in labels])
    true_j = np.array([truth.bqm.quadratic[e] for e in pairs])
    z = np.concatenate([(fitted_h - true_h) / se_h, (fitted_j - true_j) / se_j])
    # the fit's standard errors (inverse pseudo-likelihood Hessian, ∝ 1/sqrt(4000)) are honest:
    # the 24 z-scores' χ² is within its two-sided 1e-4 quantiles
    assert chi2.ppf(5e-5, len(z)) < float(z @ z) < chi2.ppf(1 - 5e-5, len(z))
    # and the distortion it measured is real: far beyond those errors (χ² measured 503)
    distortion = np.concatenate([(true_h - [sent.linear[q] for q in labels]) / se_h,
                                 (true_j - [sent.quadratic[e] for e in pairs]) / se_j])
    assert float(distortion @ distortion) > 5 * chi2.ppf(1 - 5e-5, len(z))


def test_the_pre_distorted_problem_samples_the_model():
    model = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    p = _model_distribution(model)
    child = noisy_qpu("chimera_c4", beta=4.0, seed=11, **DISTORTED)
    # the fit leaves the problem's overall scale (a β error) to β_eff's recalibration
    sampler = _fit_sampler(child, recalibrate_every=1)
    device = child.substitute_sampler
    uncorrected = device.distorted_problem(sampler.programmed_bqm(model))
    qubits = sampler.tile_qubits(model)[0]
    bias = _tv(_boltzmann(uncorrected.bqm, qubits, 4.0), p)          # ≈ 0.19
    residuals = [sampler.draw(model, 4000).info for _ in range(5)]
    # the residual (effective − model) falls to the fits' own noise (measured 0.041 → 0.006
    # on the fields, against a standard error of 0.005)
    assert residuals[-1]["hamiltonian_rms_residual_h"] < residuals[0]["hamiltonian_rms_residual_h"] / 3
    assert residuals[-1]["hamiltonian_rms_residual_h"] < 3 * residuals[-1]["hamiltonian_rms_stderr_h"]
    n = 16000
    z, info = sampler.draw(model, n)
    # exactly: the device's distortion of the problem now sent is close to the model
    sent, _ = sampler._corrections.fit.program(sampler.programmed_bqm(model),
                                               *(sampler._guard.h_range, sampler._guard.j_range))
    realised = device.distorted_problem(sent)
    assert _tv(_boltzmann(realised.bqm, qubits, 4.0), p) < bias / 4
    # and the samples are the model's within the iid bound
    tv = _tv(_z_empirical(z), p)
    assert tv < _tv_bound(p, n) and tv < bias / 3


@pytest.mark.parametrize("reads, scale, needle", [
    (30, 1.0, "needs at least 50"),          # 30 samples for 5 parameters per qubit
    (400, 40.0, "ill-conditioned"),          # every spin pinned: no conditional carries signal
])
def test_an_ill_conditioned_fit_names_the_samples_it_needs_and_keeps_the_last_state(
        reads, scale, needle):
    model = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0, scale=scale)
    child = noisy_qpu("chimera_c4", beta=4.0, seed=11, **DISTORTED)
    sampler = _fit_sampler(child, num_reads=reads, range_policy="clip")
    from samplers.qpu.errors import HamiltonianFitError

    with pytest.raises(HamiltonianFitError, match=needle) as err:
        sampler.draw(model, reads)
    message = str(err.value)
    assert "\n" not in message and "samples per qubit" in message
    assert isinstance(err.value, samplers.SamplerFailure)
    state = sampler.state_dict()
    assert state["calls"] == 0 and not any(state["device_hamiltonian"]["c_h"])
    assert state["device_hamiltonian"]["window"] == []


def test_pinned_qubits_are_left_out_of_the_fit_and_the_rest_is_corrected():
    from samplers.model import BipartiteModel

    # two units pinned by their fields, as a trained prior has many: their regressions have no
    # finite maximum, and a fit that gave up on the whole chip would never correct anything
    base = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    a_left = base.a_left.clone()
    a_left[:2] = 14.0
    model = BipartiteModel(a_left, base.a_right, base.W, base.mask)
    child = noisy_qpu("chimera_c4", beta=4.0, seed=11, **DISTORTED)
    sampler = _fit_sampler(child, recalibrate_every=1, range_policy="clip")
    infos = [sampler.draw(model, 4000).info for _ in range(4)]
    fit = sampler._corrections.fit
    labels, row, col, d_h, d_j, se_h, se_j = fit.last_fit
    pinned = np.isnan(d_h)
    assert infos[-1]["hamiltonian_skipped_qubits"] == int(pinned.sum()) == 2
    # the pinned qubits kept a zero correction, and so did the couplers among pinned qubits only
    qi, ci = fit._where(labels, row, col)
    assert not fit.c_h[qi][pinned].any() and fit.c_h[qi][~pinned].any()
    # the others' residual fell to the fit's own noise, as without pinned units
    assert infos[-1]["hamiltonian_rms_residual_h"] < infos[0]["hamiltonian_rms_residual_h"] / 2
    assert infos[-1]["hamiltonian_rms_residual_h"] < 3 * infos[-1]["hamiltonian_rms_stderr_h"]
    assert all(math.isfinite(i["hamiltonian_rms_residual_j"]) for i in infos)


def test_the_fit_resumes_exactly():
    model = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    child = noisy_qpu("chimera_c4", beta=4.0, seed=11, **DISTORTED)
    first = _fit_sampler(child, num_reads=1000, hamiltonian_every=2, flux_bias_shim=True)
    for _ in range(3):                           # one fit done, one draw in the window
        first.draw(model, 1000)
    state = copy.deepcopy(first.state_dict())
    assert len(state["device_hamiltonian"]["window"]) == 1 and any(state["device_hamiltonian"]["c_j"])
    twin = copy.deepcopy(child)
    expected, info = first.draw(model, 1000)
    assert info["hamiltonian_fitted"]            # the resumed window completes a fit too
    resumed = _fit_sampler(twin, num_reads=1000, hamiltonian_every=2, flux_bias_shim=True)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(model, 1000), expected)
    a, b = first.state_dict()["device_hamiltonian"], resumed.state_dict()["device_hamiltonian"]
    assert a["c_h"] == b["c_h"] and a["c_j"] == b["c_j"] and a["fits"] == b["fits"] == 2


@pytest.mark.parametrize("transforms", [0, 16])
def test_shim_and_fit_together_split_the_work_and_stay_bounded(transforms):
    # Both on, both learning from every draw: the fit is told the shim's offsets, so it
    # measures the device alone, and the shim learns only what the fit has not removed. Were
    # the shim's offsets part of what the fit measures, the two would integrate the same
    # error: their sum would settle, their difference is unconstrained and wanders, and the
    # shim would end near −δ/2 (measured before this was fixed: it diverged in training).
    # Without transforms the fit (a problem-frame correction) cancels δ and the shim stays at
    # 0; with them δ averages out of the problem frame, so the fit sees none and the shim
    # (the device frame's correction) carries it.
    model = random_native_model(topologies.load("chimera_c4"), 4, 4, seed=0)
    child = noisy_qpu("chimera_c4", beta=4.0, seed=11, **{**ZERO, "field_noise": 0.1})
    sampler = _fit_sampler(child, flux_bias_shim=True, spin_reversal_transforms=transforms)
    qubits = sampler.tile_qubits(model)[0]
    device = child.substitute_sampler
    delta = dict(zip(device.nodes.tolist(), device.field_offsets()))
    delta = np.array([delta[q] for q in qubits])
    fit = sampler._corrections.fit
    size = math.sqrt(np.mean(delta ** 2))                 # ≈ 0.09
    for step in range(12):
        sampler.draw(model, 4000)
        c = fit.c_h[np.searchsorted(fit.qubits, qubits)]
        phi = _offsets(sampler, qubits)
        working, idle = (c, phi) if not transforms else (phi, c)
        if step >= 4:   # measured: the error is 0.003–0.009 from the fifth draw on
            assert math.sqrt(np.mean((working + delta) ** 2)) < 0.2 * size
            assert math.sqrt(np.mean(idle ** 2)) < 0.25 * size


# ---- which correction to try, and the calibrate command -------------------------------------

def test_the_disagreement_hint_names_the_correction_the_samples_point_to():
    from samplers.calibration_hints import COUPLINGS, FIELDS, hints
    from samplers.testing import field_offset_mock, thermal_mock, two_temperature_mock

    model = random_native_model(topologies.load("chimera_c4"), seed=0)   # the 64+64 probe

    def found(child):
        qpu = samplers.get("qpu", topology="chimera_c4", beta_eff=4.0, num_reads=2000, seed=0,
                           child_sampler=child)
        return hints(model, qpu.sample(model, 2000))

    # each family is tested at 1e-3: a thermal device passes both
    assert found(thermal_mock("chimera_c4", beta=4.0, seed=1)) == []
    # a field offset on every qubit: the field scores, and not the couplings' at refitted fields
    assert found(field_offset_mock("chimera_c4", beta=4.0, seed=1)) == [FIELDS]
    # couplings at another β than fields: per-parameter errors
    assert COUPLINGS in found(two_temperature_mock("chimera_c4", beta_fields=3.0,
                                                   beta_couplings=5.0, seed=1))


def test_the_calibration_report_says_what_to_try_when_the_estimators_disagree():
    from samplers.temperature import calibrate_cli

    report = str(calibrate_cli("chimera_c4", num_reads=300, estimator="both",
                               child_sampler="samplers.testing:two_temperature_mock"))
    assert "estimators DISAGREE" in report and "  try: " in report
    agree = str(calibrate_cli("chimera_c4", num_reads=300, estimator="both",
                              child_sampler="samplers.testing:thermal_mock"))
    assert "estimators agree" in agree and "try:" not in agree


def test_calibrate_runs_the_corrections_and_prints_their_residuals(capsys):
    from dvae_q.cli.main import main

    code = main(["calibrate", "--topology", "chimera_c4", "--num-reads", "500", "--quiet",
                 "--child-sampler", "samplers.testing:noisy_qpu", "--shim", "--fit-hamiltonian",
                 "--correction-rounds", "2"])
    out = capsys.readouterr().out
    assert code == 0
    shim = next(line for line in out.splitlines() if line.startswith("flux-bias shim:"))
    fit = next(line for line in out.splitlines() if line.startswith("device Hamiltonian:"))
    assert "before" in shim and "after 2 more calls" in shim
    assert "effective - model RMS error h" in fit and "after 2 more calls" in fit
    assert main(["calibrate", "--topology", "chimera_c4", "--shim", "--correction-rounds", "x"]) == 2
