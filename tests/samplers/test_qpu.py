"""The qpu sampler against MockDWaveSampler doubles: Boltzmann fidelity after calibration (exact
enumeration), structure and range checks, retries, lazy client, token redaction, persistence."""

import itertools
import math

import numpy as np
import pytest
import torch
from dwave.system.testing import MockDWaveSampler
from references import (
    Recording,
    empirical_distribution,
    exact_distribution,
    native_model,
    tv_mcdiarmid,
)

import samplers
import topologies
from samplers.qpu import PendingDraw, QPUConfigError, QPUError, QPURangeError
from samplers.temperature import calibrate, random_native_model
from samplers.testing import thermal_mock

SECRET = "DEV-fake0secret0token0123456789abcdef"


def _qpu(topology="chimera_c4", beta_true=4.0, child_seed=0, **options):
    options.setdefault("seed", 0)
    return samplers.get("qpu", topology=topology, child_sampler="samplers.testing:thermal_mock",
                        child_kwargs={"beta": beta_true, "num_sweeps": 100, "seed": child_seed},
                        **options)


@pytest.mark.parametrize("topology", ["chimera_c4", "pegasus_p4", "zephyr_z2"])
def test_calibrated_samples_match_exact_boltzmann(topology):
    # A 5+5 native region (1024 states). Fixed seeds keep the statistical bound deterministic.
    model = native_model(topology, 5, 5, seed=1)
    sampler = _qpu(topology, beta_true=4.0, beta_eff=2.5, num_reads=2000)
    result = calibrate(sampler, model, num_samples=2000, num_bootstrap=50)
    # β_eff is known to ~1.6 % here (bootstrap); 5 % is a 3-sigma check
    assert abs(result.beta_eff - 4.0) / 4.0 < 0.05
    n = 16000
    z = sampler.sample(model, n)
    assert z.shape == (n, 10) and set(z.unique().tolist()) <= {0.0, 1.0}
    states, p = exact_distribution(model)
    tv = 0.5 * (empirical_distribution(states, z) - p).abs().sum().item()
    # Bound: E[TV] <= ½ Σ sqrt(p(1−p)/n) (Cauchy–Schwarz per state); TV moves by <= 1/n per
    # sample, so McDiarmid adds sqrt(ln(1/δ)/(2n)) at δ = 1e-4; a 5 % β_eff error changes the
    # target by TV <= sqrt(KL/2) with KL ≈ ½ (0.05)² Var(E) (Pinsker), added as well.
    energy = model.energy(states)
    var_e = (p * energy**2).sum() - ((p * energy).sum()) ** 2
    bound = (0.5 * torch.sqrt(p * (1 - p) / n).sum()).item() + math.sqrt(math.log(1e4) / (2 * n)) \
        + math.sqrt(0.25 * 0.05**2 * var_e.item())
    assert tv < bound
    # sensitivity: the same samples are far from the model at a wrong temperature
    _, p_hot = exact_distribution(model.with_beta(0.5))
    assert 0.5 * (empirical_distribution(states, z) - p_hot).abs().sum().item() > 1.5 * bound


def test_info_records_timing_chain_breaks_and_calls():
    model = native_model("chimera_c4", 6, 6)
    sampler = _qpu(num_reads=100, beta_eff=4.0)
    z, info = sampler.draw(model, 250)
    assert z.shape == (250, 12)
    assert info["num_qpu_calls"] == 3 and info["retries"] == 0
    assert info["beta_eff"] == 4.0 and info["chain_break_fraction"] == 0.0
    # MockDWaveSampler reports a fixed fake timing: 8550.28 µs of access per QPU call
    assert info["qpu_access_time_us"] == pytest.approx(3 * 8550.28)
    assert info["timing"]["qpu_access_time"] == info["qpu_access_time_us"]
    assert info["time_s"] > 0 and info["clipped_fraction"] == 0.0


def test_embedded_mode_unembeds_and_reports_chain_breaks():
    model = random_native_model(topologies.load("zephyr_z2_embedded"), 12, 12, seed=0)
    sampler = _qpu("zephyr_z2_embedded", beta_eff=4.0, num_reads=200, range_policy="clip")
    z, info = sampler.draw(model, 200)
    assert z.shape == (200, 24)
    emb = topologies.load("zephyr_z2_embedded").embedding(12, 12)
    assert max(map(len, emb.values())) > 1  # chains are really in play
    assert 0.0 <= info["chain_break_fraction"] <= 1.0


def test_range_violation_is_an_error_naming_the_worst_value():
    model = native_model("chimera_c4", 4, 4, scale=30.0)
    sampler = _qpu(beta_eff=1.0)
    with pytest.raises(QPURangeError, match=r"outside (h|j)_range") as err:
        sampler.sample(model, 10)
    assert "\n" not in str(err.value) and "range_policy: clip" in str(err.value)
    assert sampler.calls == 0 and not hasattr(sampler, "info")


def test_range_clip_reports_the_clipped_fraction():
    model = native_model("chimera_c4", 4, 4, scale=30.0)
    sampler = _qpu(beta_eff=1.0, range_policy="clip", num_reads=20)
    info = sampler.draw(model, 20).info
    bqm = sampler.programmed_bqm(model)
    h, (_, _, j), _ = bqm.to_numpy_vectors()
    expected = ((np.abs(h) > 4).sum() + (np.abs(j) > 1).sum()) / (len(h) + len(j))
    assert expected > 0
    assert info["clipped_fraction"] == pytest.approx(expected)


def test_structure_errors():
    topo = topologies.load("chimera_c4")
    # 6+6 spans two unit cells, so a dense W has couplings with no coupler
    dense = samplers.BipartiteModel(torch.ones(6, dtype=torch.float64),
                                    torch.ones(6, dtype=torch.float64),
                                    torch.ones(6, 6, dtype=torch.float64))
    with pytest.raises(QPUConfigError, match="no coupler"):
        _qpu().sample(dense, 5)
    left, _, _ = topo.native_rbm(4, 4)
    broken = samplers.get("qpu", topology="chimera_c4",
                          child_sampler=thermal_mock("chimera_c4", broken_nodes=[left[0]]))
    with pytest.raises(QPUConfigError, match="dead qubit"):
        broken.sample(native_model("chimera_c4", 4, 4), 5)
    wrong = samplers.get("qpu", topology="pegasus_p4", child_sampler=thermal_mock("chimera_c4"))
    with pytest.raises(QPUConfigError, match="does not match"):
        wrong.sample(native_model("pegasus_p4", 4, 4), 5)
    plain = samplers.get("qpu", topology="chimera_c4", child_sampler=object())
    with pytest.raises(QPUConfigError, match="not a structured"):
        plain.sample(native_model("chimera_c4", 4, 4), 5)


def test_option_errors_are_one_line():
    with pytest.raises(samplers.SamplerOptionError, match="needs option 'topology'"):
        samplers.get("qpu")
    with pytest.raises(samplers.SamplerOptionError, match="cannot import"):
        samplers.get("qpu", topology="chimera_c4", child_sampler="samplers.testing:nothing")
    with pytest.raises(samplers.SamplerOptionError, match="is dense"):
        samplers.get("qpu", topology="dense")
    with pytest.raises(samplers.SamplerOptionError, match="range_policy"):
        samplers.get("qpu", topology="chimera_c4", range_policy="wrap")
    with pytest.raises(topologies.TopologyError):
        samplers.get("qpu", topology="nowhere")
    with pytest.raises(samplers.SamplerOptionError, match="never put a token") as err:
        samplers.get("qpu", topology="chimera_c4", client_config={"token": SECRET})
    assert SECRET not in str(err.value)


class Flaky:
    """A structured child that fails `failures` times with `error` before each success."""

    def __init__(self, child, error, failures):
        self.child, self.error, self.failures = child, error, failures
        self.attempts = 0

    def __getattr__(self, name):
        return getattr(self.child, name)

    def sample(self, bqm, **kwargs):
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self.child.sample(bqm, **kwargs)


def test_transient_errors_are_retried_with_backoff():
    from dwave.cloud.exceptions import RequestTimeout

    child = Flaky(thermal_mock("chimera_c4", seed=0), RequestTimeout("API request timed out"), 2)
    sampler = samplers.get("qpu", topology="chimera_c4", child_sampler=child,
                           retry_backoff_s=0.01, max_retries=3, seed=0)
    z, info = sampler.draw(native_model("chimera_c4", 4, 4), 20)
    assert z.shape == (20, 8) and info["retries"] == 2 and child.attempts == 3


def test_exhausted_or_permanent_errors_leave_state_untouched():
    from dwave.cloud.exceptions import RequestTimeout, SolverFailureError

    model = native_model("chimera_c4", 4, 4)
    for error, failures, match in [(RequestTimeout("timed out"), 5, "persisted after 1 retries"),
                                   (SolverFailureError("bad problem"), 1, "SolverFailureError")]:
        child = Flaky(thermal_mock("chimera_c4", seed=0), error, failures)
        sampler = samplers.get("qpu", topology="chimera_c4", child_sampler=child,
                               retry_backoff_s=0.0, max_retries=1, seed=0, recalibrate_every=1)
        before = sampler.state_dict()
        with pytest.raises(QPUError, match=match) as err:
            sampler.sample(model, 10)
        assert "\n" not in str(err.value) and err.value.__cause__ is None
        assert sampler.state_dict() == before and not hasattr(sampler, "info")


def test_bugs_are_not_wrapped():
    child = Flaky(thermal_mock("chimera_c4"), KeyError("a bug"), 1)
    sampler = samplers.get("qpu", topology="chimera_c4", child_sampler=child)
    with pytest.raises(KeyError):
        sampler.sample(native_model("chimera_c4", 4, 4), 5)


def test_client_is_lazy_and_missing_token_is_one_line(tmp_path, monkeypatch):
    empty = tmp_path / "dwave.conf"
    empty.write_text("")
    monkeypatch.delenv("DWAVE_API_TOKEN", raising=False)
    monkeypatch.delenv("DWAVE_PROFILE", raising=False)
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(empty))
    sampler = samplers.get("qpu", topology="chimera_c4")  # no token needed to build it
    assert sampler._child is None
    with pytest.raises(QPUConfigError, match="no D-Wave API token") as err:
        sampler.sample(native_model("chimera_c4", 4, 4), 5)
    assert "\n" not in str(err.value)


def test_token_never_leaks(tmp_path, monkeypatch):
    empty = tmp_path / "dwave.conf"
    empty.write_text("")
    monkeypatch.setenv("DWAVE_CONFIG_FILE", str(empty))
    monkeypatch.setenv("DWAVE_API_TOKEN", SECRET)
    model = native_model("chimera_c4", 4, 4)
    # a failure whose text carries the token (as an HTTP error echoing a header might)
    child = Flaky(thermal_mock("chimera_c4"), RuntimeError(f"401 for token {SECRET}"), 1)
    sampler = samplers.get("qpu", topology="chimera_c4", child_sampler=child, max_retries=0)
    with pytest.raises(QPUError) as err:
        sampler.sample(model, 5)
    assert SECRET not in str(err.value) and "***" in str(err.value)
    info = sampler.draw(model, 5).info
    for text in (repr(sampler), repr(info), repr(sampler.state_dict())):
        assert SECRET not in text
    # the real client with the token set, at an endpoint it cannot use (fails at once, offline)
    monkeypatch.setenv("DWAVE_API_ENDPOINT", "file:///nonexistent/")
    real = samplers.get("qpu", topology="chimera_c4", max_retries=0)
    with pytest.raises((QPUError, QPUConfigError)) as err:
        real.sample(model, 5)
    assert SECRET not in str(err.value) and SECRET not in repr(real)


def test_recalibration_every_n_calls_moves_beta_eff_to_truth():
    model = native_model("chimera_c4", 8, 8, seed=2)
    sampler = _qpu(beta_true=3.0, beta_eff=6.0, num_reads=500, recalibrate_every=2)
    info = sampler.draw(model, 500).info
    assert info["recalibrated"] is False and sampler.beta_eff == 6.0
    info = sampler.draw(model, 500).info
    assert info["recalibrated"] is True
    assert abs(sampler.beta_eff - 3.0) / 3.0 < 0.05
    assert info["beta_eff"] == 6.0  # the value used for this call's samples
    assert sampler.state_dict()["beta_eff_history"] == [6.0, sampler.beta_eff]


def test_same_seeds_same_samples_and_state_round_trip():
    model = native_model("chimera_c4", 4, 4)
    a = _qpu(child_seed=5, num_reads=50).sample(model, 50)
    b = _qpu(child_seed=5, num_reads=50).sample(model, 50)
    c = _qpu(child_seed=6, num_reads=50).sample(model, 50)
    assert torch.equal(a, b) and not torch.equal(a, c)
    s1 = _qpu(recalibrate_every=1, num_reads=50)
    s1.sample(model, 50)
    s2 = _qpu(num_reads=50)
    s2.load_state_dict(s1.state_dict())
    assert s2.beta_eff == s1.beta_eff and s2.state_dict() == s1.state_dict()


def test_solver_parameters_reach_the_child():
    seen = {}

    class Recorder(MockDWaveSampler):
        def sample(self, bqm, **kwargs):
            seen.update(kwargs)
            return super().sample(bqm, **kwargs)

    child = Recorder(topology_type="chimera", topology_shape=[4, 4, 4], parameter_warnings=False)
    sampler = samplers.get("qpu", topology="chimera_c4", child_sampler=child, annealing_time=50,
                           tiles=1)
    sampler.sample(native_model("chimera_c4", 3, 3), 7)
    assert seen["auto_scale"] is False and seen["answer_mode"] == "raw"
    assert seen["annealing_time"] == 50 and seen["num_reads"] == 100  # topology's num_reads
    assert seen["programming_thermalization"] == 1000  # topology default
    # tiled: a 3+3 region fits once per Chimera cell (16 copies on C4), so the topology's 100
    # samples per call take ⌈100/16⌉ = 7 reads
    tiled = samplers.get("qpu", topology="chimera_c4", child_sampler=child)
    info = tiled.draw(native_model("chimera_c4", 3, 3), 7).info
    assert info["tiles"] == 16 and seen["num_reads"] == 7 and info["num_samples_drawn"] == 112


def test_dwave_sampler_is_built_once_on_first_sample(monkeypatch):
    import dwave.system

    built = []

    def fake_dwave_sampler(**kwargs):
        built.append(kwargs)
        return thermal_mock("chimera_c4", seed=0)

    monkeypatch.setattr(dwave.system, "DWaveSampler", fake_dwave_sampler)
    sampler = samplers.get("qpu", topology="chimera_c4", client_config={"profile": "prod"})
    assert built == []
    model = native_model("chimera_c4", 4, 4)
    sampler.sample(model, 10)
    sampler.sample(model, 10)
    # the topology file's solver filter and the client config reach the constructor, once
    assert built == [{"profile": "prod", "solver": {"topology__type": "chimera"}}]


def test_missing_solver_is_one_line(monkeypatch):
    import dwave.system
    from dwave.cloud.exceptions import SolverNotFoundError

    def no_solver(**kwargs):
        raise SolverNotFoundError("Solver with the requested features not available")

    monkeypatch.setattr(dwave.system, "DWaveSampler", no_solver)
    sampler = samplers.get("qpu", topology="zephyr_z2", solver="Advantage2_nonexistent")
    with pytest.raises(QPUConfigError, match="no available solver matches 'Advantage2_nonexistent'"):
        sampler.sample(native_model("zephyr_z2", 4, 4), 5)


def test_topology_with_broken_qubits_samples_on_a_matching_chip(tmp_path):
    left, _, _ = topologies.load("chimera_c4").native_rbm(4, 4)
    path = tmp_path / "c4_broken.yaml"
    path.write_text("family: chimera\nshape: [4, 4, 4]\nmode: native\nqpu: {beta_eff: 4.0}\n"
                    f"broken_qubits: [{left[0]}]\n")
    sampler = samplers.get("qpu", topology=str(path), child_sampler="samplers.testing:thermal_mock",
                           num_reads=20)
    z = sampler.sample(native_model(str(path), 4, 4), 20)
    assert z.shape == (20, 8)


def test_recalibration_on_an_uninformative_prior_keeps_beta_eff_and_says_so():
    """At zero parameters (the first training steps) no β can be estimated: the call succeeds,
    β_eff is kept and info records the skipped update instead of stopping the run."""
    import torch

    import samplers
    from samplers.testing import thermal_mock

    zero = samplers.BipartiteModel(torch.zeros(8), torch.zeros(8), torch.zeros(8, 8))
    qpu = samplers.get("qpu", topology="chimera_c4", beta_eff=3.0, recalibrate_every=1, seed=0,
                       child_sampler=thermal_mock("chimera_c4", beta=5.0, seed=0))
    z, info = qpu.draw(zero, 50)
    assert z.shape == (50, 16)
    assert info["beta_eff"] == 3.0 and not info["recalibrated"]
    assert "recalibration_skipped" in info



def test_skipped_recalibrations_are_counted_warned_about_once_in_a_row_and_resume(caplog):
    """A prior with no temperature information (all zero) makes every recalibration fail; the
    count is a number in info (so training logs it), the third skip in a row is one warning, a
    successful one resets the run of skips, and the counts come back from the state."""
    import logging

    import torch

    import samplers
    from samplers.qpu.beta_eff import WARN_AFTER_SKIPS
    from samplers.testing import thermal_mock

    zero = samplers.BipartiteModel(torch.zeros(8), torch.zeros(8), torch.zeros(8, 8))
    live = native_model("chimera_c4", 4, 4)

    def make():
        return samplers.get("qpu", topology="chimera_c4", beta_eff=3.0, recalibrate_every=1,
                            seed=0, calibration_bootstrap=0,
                            child_sampler=thermal_mock("chimera_c4", beta=3.0, seed=0))

    def warnings():
        return [r for r in caplog.records if r.name == "samplers.qpu"
                and r.levelno == logging.WARNING and "not re-measured" in r.getMessage()]

    qpu = make()
    with caplog.at_level(logging.WARNING, logger="samplers.qpu"):
        counts = [qpu.draw(zero, 50)[1]["recalibrations_skipped"] for _ in range(4)]
        assert counts == [1, 2, 3, 4]
        assert len(warnings()) == 1 and f"last {WARN_AFTER_SKIPS} recalibrations" in \
            warnings()[0].getMessage() and "stays at 3" in warnings()[0].getMessage()
        _, info = qpu.draw(live, 200)
        assert info["recalibrated"] and info["recalibrations_skipped"] == 4
        assert qpu.skipped_in_a_row == 0
        qpu.draw(zero, 50)
        qpu.draw(zero, 50)
        assert len(warnings()) == 1  # two in a row since the last success
        state = qpu.state_dict()
        again = make()
        again.load_state_dict(state)
        assert (again.recalibrations_skipped, again.skipped_in_a_row) == (6, 2)
        assert again.draw(zero, 50)[1]["recalibrations_skipped"] == 7
        assert len(warnings()) == 2  # the third in a row, across the resume
    # an older checkpoint, written before the count existed, starts it at 0
    old = {k: v for k, v in state.items() if k != "recalibrations_skipped"}
    fresh = make()
    fresh.load_state_dict(old)
    assert (fresh.recalibrations_skipped, fresh.skipped_in_a_row) == (0, 0)

@pytest.mark.parametrize("block,match", [
    ("{num_reeds: 5}", "unknown qpu key 'num_reeds'"),
    ("{num_reads: 0}", "num_reads"),
    ("{child_sampler: 'os:system'}", "unknown qpu key 'child_sampler'"),
])
def test_topology_qpu_block_is_validated_by_the_sampler(tmp_path, block, match):
    """The file's `qpu:` defaults are checked with the qpu sampler's own option rules, when
    the sampler is built and when a config names the topology; a file never names code."""
    from dvae_q.errors import BadInput
    from dvae_q.training.config import load_config

    path = tmp_path / "chip.yaml"
    path.write_text(f"family: chimera\nshape: [4, 4, 4]\nmode: native\nqpu: {block}\n")
    topologies.load(path)  # the loader itself only checks that the block is a mapping
    with pytest.raises(samplers.SamplerOptionError, match=match) as err:
        samplers.get("qpu", topology=str(path))
    assert "\n" not in str(err.value)
    with pytest.raises(BadInput, match=match):
        load_config("smoke", [f"topology={path}"])


def test_range_guard_is_a_dimod_composite_that_records_each_call():
    import dimod
    import dimod.testing

    from samplers.qpu import RangeGuardComposite

    child = thermal_mock("chimera_c4", seed=0)
    guard = RangeGuardComposite(child, "clip")
    dimod.testing.assert_composite_api(guard)
    dimod.testing.assert_sampler_api(guard)
    dimod.testing.assert_structured_api(guard)
    assert guard.children == [child] and guard.nodelist == child.nodelist
    assert guard.parameters == child.parameters
    assert guard.properties["child_properties"]["j_range"] == child.properties["j_range"]
    u, v = child.edgelist[0]
    inside = dimod.BQM({u: 0.5}, {(u, v): -0.5}, 0.0, "SPIN")
    outside = dimod.BQM({u: 9.0}, {(u, v): -3.0}, 0.0, "SPIN")
    first = guard.sample(outside, num_reads=5)
    second = guard.sample(inside, num_reads=5)
    # each answer says what its own call programmed, whatever ran in between
    assert first.info["clipped_fraction"] == pytest.approx(2 / 3) and second.info["clipped_fraction"] == 0.0
    assert first.info["programmed_bqm"].linear[u] == 4.0
    assert first.info["programmed_bqm"].quadratic[(u, v)] == -1.0
    assert second.info["programmed_bqm"] == inside
    with pytest.raises(QPURangeError, match="outside h_range"):
        RangeGuardComposite(child).sample(outside, num_reads=1)


def test_close_reaches_the_child_and_the_protocol_is_declared():
    closed = []

    class Closing(MockDWaveSampler):
        def close(self):
            closed.append(True)

    child = Closing(topology_type="chimera", topology_shape=[4, 4, 4], parameter_warnings=False)
    sampler = samplers.get("qpu", topology="chimera_c4", child_sampler=child, seed=0)
    assert isinstance(sampler, samplers.TemperatureScaled)
    assert samplers.TemperatureScaled in type(sampler).__mro__  # declared, not just duck-typed
    sampler.sample(native_model("chimera_c4", 3, 3), 5)
    sampler.close()
    assert closed == [True]


# ---- tiles: disjoint copies of the RBM per call ------------------------------------------------

@pytest.mark.parametrize("topology,tiles", [("chimera_c4", 5), ("pegasus_p4", 11), ("zephyr_z2", 8),
                                            ("zephyr_z2_embedded", 5)])
def test_every_tile_samples_the_exact_distribution(topology, tiles):
    # a 5+5 RBM (1024 states) on the native region, or dense with chains on an embedded topology;
    # the thermal mock's β equals beta_eff, so every copy should sample exp(−E) exactly
    topo = topologies.load(topology)
    model = native_model(topology, 5, 5, seed=1) if topo.mode == "native" else \
        random_native_model(topo, 5, 5, seed=1, scale=2.0)
    sampler = _qpu(topology, beta_true=4.0, beta_eff=4.0, num_reads=10000)
    reads = 4000
    z, info = sampler.draw(model, reads * tiles)
    # num_reads counts samples per call: ⌈10000 / tiles⌉ reads give >= 10000 samples
    assert info["tiles"] == tiles and info["num_reads"] == info["num_qpu_calls"] * -(-10000 // tiles)
    assert info["num_samples_drawn"] == tiles * info["num_reads"] >= reads * tiles
    assert info["qubits_used"] == tiles * 10
    assert info["qubits_available"] == len(topo.graph())
    copies = sampler.tile_qubits(model)
    assert len({q for c in copies for q in c}) == tiles * 10  # disjoint
    states, p = exact_distribution(model)
    # a union bound over the tiles keeps the chance of any false failure below 1e-4
    bound = tv_mcdiarmid(p, reads, 1e-4 / tiles)
    per_tile = z.reshape(reads, tiles, 10)
    for t in range(tiles):
        assert 0.5 * (empirical_distribution(states, per_tile[:, t]) - p).abs().sum().item() < bound
    # sensitivity: the same samples are far from the model at another temperature
    _, p_hot = exact_distribution(model.with_beta(0.5))
    assert 0.5 * (empirical_distribution(states, per_tile[:, 0]) - p_hot).abs().sum().item() > 1.5 * bound


def test_tiles_are_independent():
    # a 2+1 RBM fits 16 times on C4. The pair of copies (t, t') in one read should be distributed
    # as p ⊗ p (64 joint states): the joint's TV to p ⊗ p measures any dependence between copies
    # (and any error of the copies themselves), with the same iid bound, union over all 120 pairs
    model = native_model("chimera_c4", 2, 1, seed=3, scale=1.5)
    sampler = _qpu("chimera_c4", beta_true=4.0, beta_eff=4.0, num_reads=10000)
    reads = 8000
    z, info = sampler.draw(model, reads * 16)
    assert info["tiles"] == 16
    codes = (z.reshape(reads, 16, 3).double() @ torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)).long()
    _, p = exact_distribution(model)
    pp = (p[:, None] * p[None, :]).reshape(-1)
    bound = tv_mcdiarmid(pp, reads, 1e-4 / 120)

    def joint_tv(a, b):
        counts = torch.bincount(a * 8 + b, minlength=64).double()
        return 0.5 * (counts / counts.sum() - pp).abs().sum().item()

    worst = max(joint_tv(codes[:, s], codes[:, t]) for s in range(16) for t in range(s + 1, 16))
    assert worst < bound
    # sensitivity: fully dependent copies (a copy paired with itself) are far outside the bound
    assert joint_tv(codes[:, 0], codes[:, 0]) > 3 * bound


def test_a_broken_qubit_or_coupler_removes_exactly_the_copies_that_use_it():
    model = native_model("chimera_c4", 5, 5)
    perfect = _qpu("chimera_c4").tile_qubits(model)
    assert len(perfect) == 5
    _, _, mask = topologies.load("chimera_c4").native_rbm(5, 5)
    i, j = map(int, np.argwhere(mask.numpy())[0])

    def layout(**broken):
        child = thermal_mock("chimera_c4", seed=0, **broken)
        return samplers.get("qpu", topology="chimera_c4", child_sampler=child).tile_qubits(model)

    assert layout(broken_nodes=[perfect[3][7]]) == perfect[:3] + perfect[4:]
    # the coupler carrying W[i, j] in copy 2
    assert layout(broken_edges=[(perfect[2][i], perfect[2][5 + j])]) == perfect[:2] + perfect[3:]
    # a coupler no copy programs (outside the mask, or joining two copies) removes nothing
    graph = topologies.load("chimera_c4").graph()
    used = {frozenset((c[a], c[5 + b])) for c in perfect for a, b in np.argwhere(mask.numpy())}
    spare = next(e for e in graph.edges if frozenset(e) not in used)
    assert layout(broken_edges=[spare]) == perfect
    # copy 0 is the prior's own region: losing it is an error, never a silent move
    with pytest.raises(QPUConfigError, match="dead qubit"):
        layout(broken_nodes=[perfect[0][0]])


def test_tiles_option():
    model = native_model("chimera_c4", 5, 5)
    assert _qpu(tiles=2).draw(model, 10).info["tiles"] == 2
    assert _qpu(tiles=2).tile_qubits(model) == _qpu().tile_qubits(model)[:2]
    with pytest.raises(QPUConfigError, match="tiles': 9 copies .* only 5 fit"):
        _qpu(tiles=9).sample(model, 10)
    for bad in (0, "all", 1.5):
        with pytest.raises(samplers.SamplerOptionError, match="tiles"):
            _qpu(tiles=bad)


def test_embedded_copies_are_valid_disjoint_embeddings():
    import networkx as nx
    from dwave.embedding import is_valid_embedding

    topo = topologies.load("zephyr_z2_embedded")
    model = random_native_model(topo, 12, 12, seed=0)
    sampler = _qpu("zephyr_z2_embedded", beta_eff=4.0, num_reads=50, range_policy="clip")
    z, info = sampler.draw(model, 100)
    assert z.shape == (100, 24) and info["tiles"] == 2 and info["num_reads"] == 50
    chains = topologies.load("zephyr_z2_embedded").embedding(12, 12)
    copies = sampler.tile_qubits(model)
    assert copies[0] == [q for u in sorted(chains) for q in chains[u]]
    assert not set(copies[0]) & set(copies[1])
    sizes = [len(chains[u]) for u in sorted(chains)]
    second = dict(zip(sorted(chains), np.split(np.array(copies[1]), np.cumsum(sizes)[:-1])))
    assert is_valid_embedding(second, nx.complete_bipartite_graph(12, 12), topo.graph())


# ---- calls in flight and submitted draws -------------------------------------------------------

def _remote(latency_s=0.0, **options):
    from samplers.testing import latency_mock

    child = latency_mock("chimera_c4", latency_s=latency_s, beta=4.0, num_sweeps=50, seed=0)
    options = {"beta_eff": 4.0, "tiles": 1, "num_reads": 10, "seed": 0, **options}
    return child, samplers.get("qpu", topology="chimera_c4", child_sampler=child, **options)


def test_calls_of_a_draw_are_all_submitted_before_any_is_resolved():
    model = native_model("chimera_c4", 4, 4)
    child, sampler = _remote()
    pending = sampler.submit(model, 40)
    # structural, not timed: four calls submitted, none of their answers collected yet
    assert child.submitted == 4 and child.in_flight == 4 and sampler.in_flight == 4
    z, info = pending.result()
    assert z.shape == (40, 8) and info["num_qpu_calls"] == 4
    assert child.in_flight == 0 and sampler.in_flight == 0 and child.max_in_flight == 4
    # the bound: with max_in_flight 2 the third call waits for the first answer
    child, sampler = _remote(max_in_flight=2)
    pending = sampler.submit(model, 40)
    assert child.submitted == 4 and child.in_flight == 2 and child.max_in_flight == 2
    pending.result()
    child, sampler = _remote(max_in_flight=3)
    assert sampler.draw(model, 60).info["num_qpu_calls"] == 6 and child.max_in_flight == 3


def test_submitted_draws_match_draws_and_complete_in_submission_order():
    model = native_model("chimera_c4", 4, 4)
    _, plain = _remote()
    expected = [plain.draw(model, 30).samples for _ in range(2)]
    child, sampler = _remote(latency_s=0.01)
    first, second = sampler.submit(model, 30), sampler.submit(model, 30)
    assert child.submitted == 6 and child.in_flight == 4  # the bound holds across draws
    later = second.result()   # completes `first` before it
    assert first.done() and sampler.calls == 2
    assert torch.equal(first.result().samples, expected[0]) and torch.equal(later.samples, expected[1])
    assert sampler.state_dict() == plain.state_dict()


def test_state_changes_of_submitted_draws_are_deterministic_and_resumable():
    model = native_model("chimera_c4", 8, 8, seed=2)

    def run():
        child, sampler = _remote(num_reads=300, beta_eff=6.0, recalibrate_every=1)
        a = sampler.submit(model, 300)
        before = sampler.state_dict()   # a checkpoint taken now holds no trace of `a`
        b = sampler.submit(model, 300)
        return before, b.result(), a.result(), sampler.state_dict()

    before, b, a, after = run()
    assert before["calls"] == 0 and before["beta_eff_history"] == [6.0]
    # both were programmed at submission with β_eff = 6; each recalibrated when it completed,
    # `a` first: the history holds 6, then a's estimate, then b's
    assert a.info["beta_eff"] == b.info["beta_eff"] == 6.0
    assert a.info["recalibrated"] and b.info["recalibrated"]
    assert after["calls"] == 2 and after["beta_eff_history"] == [
        6.0, a.info["beta_eff_measured"], b.info["beta_eff_measured"]]
    again = run()
    assert torch.equal(again[1].samples, b.samples) and again[3] == after


class ResolveFails:
    """A structured child whose first `failures` answers fail when resolved (as a cloud future
    does), not when submitted."""

    def __init__(self, child, error, failures):
        self.child, self.error, self.failures = child, error, failures

    def __getattr__(self, name):
        return getattr(self.child, name)

    def sample(self, bqm, **kwargs):
        import concurrent.futures

        import dimod

        future = concurrent.futures.Future()
        if self.failures > 0:
            self.failures -= 1
            future.set_exception(self.error)
        else:
            future.set_result(self.child.sample(bqm, **kwargs))
        return dimod.SampleSet.from_future(future)


def test_failures_at_resolution_are_retried_or_raised_by_their_own_draw():
    from dwave.cloud.exceptions import RequestTimeout, SolverFailureError

    model = native_model("chimera_c4", 4, 4)
    child = ResolveFails(thermal_mock("chimera_c4", seed=0), RequestTimeout("timed out"), 2)
    sampler = samplers.get("qpu", topology="chimera_c4", child_sampler=child, retry_backoff_s=0.0,
                           max_retries=3, seed=0)
    assert sampler.draw(model, 20).info["retries"] == 2
    child = ResolveFails(thermal_mock("chimera_c4", seed=0), SolverFailureError("bad"), 1)
    sampler = samplers.get("qpu", topology="chimera_c4", child_sampler=child, seed=0, tiles=1,
                           num_reads=10, recalibrate_every=1)
    before = sampler.state_dict()
    failing, fine = sampler.submit(model, 10), sampler.submit(model, 10)
    assert fine.result().samples.shape == (10, 8)   # the failure stays with its own draw
    with pytest.raises(QPUError, match="SolverFailureError"):
        failing.result()
    assert sampler.calls == 1 and sampler.in_flight == 0
    assert sampler.state_dict()["beta_eff_history"][0] == before["beta_eff_history"][0]


def test_submit_checks_its_request_before_submitting():
    child, sampler = _remote()
    with pytest.raises(ValueError, match="positive int"):
        sampler.submit(native_model("chimera_c4", 4, 4), 0)
    with pytest.raises(TypeError, match="BipartiteModel"):
        sampler.submit("model", 5)
    assert child.submitted == 0
    model = native_model("chimera_c4", 4, 4)
    pending = sampler.submit(model, 10, dtype=torch.float32)
    assert isinstance(pending, PendingDraw) and pending.result().samples.dtype == torch.float32


# ---- accounting and the timing model ----------------------------------------------------------

def test_accounting_and_timing_model_count_the_calls_of_a_tiled_draw():
    from samplers.qpu import estimate_access_time_us
    from samplers.qpu.timing import project

    model = native_model("pegasus_p4", 5, 5)
    sampler = _qpu("pegasus_p4", beta_eff=4.0, num_reads=100)
    z, info = sampler.draw(model, 250)
    # 11 copies: ⌈100/11⌉ = 10 reads give 110 samples per call; 250 samples take 3 calls
    assert info["tiles"] == 11 and info["num_qpu_calls"] == 3 and info["num_reads"] == 30
    assert info["num_samples_drawn"] == 330 and z.shape == (250, 10)
    assert info["qubits_used"] == 110 and info["qubits_available"] == 264
    assert info["qpu_access_time_us"] == pytest.approx(3 * 8550.28)  # the mock's fixed figure
    params = {"annealing_time": 20, "programming_thermalization": 1000, "readout_thermalization": 0}
    one_call = estimate_access_time_us("pegasus_p4", 110, 10, **params)
    assert info["estimated_qpu_access_time_us"] == pytest.approx(3 * one_call)
    assert sampler.estimated_access_time_us(model, 250) == pytest.approx(3 * one_call)
    assert sampler.projected_access_time_s(model, 1000, 250) == pytest.approx(3000 * one_call / 1e6)
    offline = project("pegasus_p4", 5, 5, 250, 1000, num_reads=100)
    assert offline.tiles == 11 and offline.calls_per_step == 3 and offline.reads_per_step == 30
    assert offline.total_s == pytest.approx(3000 * one_call / 1e6)
    # untiled, the same 250 samples take 3 calls of 100 reads on 10 qubits
    untiled = _qpu("pegasus_p4", beta_eff=4.0, num_reads=100, tiles=1)
    assert untiled.estimated_access_time_us(model, 250) == pytest.approx(
        3 * estimate_access_time_us("pegasus_p4", 10, 100, **params))
    assert project("pegasus_p4", 5, 5, 250, tiles=1, num_reads=100).reads_per_step == 300


def test_reads_dropped_by_discard_are_topped_up_with_more_calls():
    # weak chains break often; 'discard' drops those reads, so the scheduled call comes short
    topo = topologies.load("zephyr_z2_embedded")
    model = random_native_model(topo, 12, 12, seed=0, scale=4.0)
    sampler = _qpu("zephyr_z2_embedded", beta_eff=1.0, num_reads=100, chain_strength=1.0,
                   chain_break_method="discard", range_policy="clip", tiles=1)
    z, info = sampler.draw(model, 100)
    assert z.shape == (100, 24) and info["num_qpu_calls"] > 1
    assert info["num_reads"] == 100 * info["num_qpu_calls"]  # what the QPU spent
    assert 100 <= info["num_samples_drawn"] < info["num_reads"]  # what survived 'discard'
    assert info["chain_break_fraction"] == 0.0


# ---- several models in one call (draw_tiled) -------------------------------------------------

PACKED_CASES = {
    # three 5+5 models share C4's five copies (2, 2 and 1); the third at another β
    "one size": ("chimera_c4", [(5, 5, 1, 1.0), (5, 5, 2, 1.0), (5, 5, 3, 0.6)]),
    # three models of two sizes placed side by side (every placement of each region)
    "mixed sizes": ("chimera_c4", [(5, 5, 1, 1.0), (4, 3, 2, 1.0), (4, 3, 3, 0.6)]),
    # dense models with chains: Z2's five copies of the 5+5 embedding, as above
    "embedded": ("zephyr_z2_embedded", [(5, 5, 1, 1.0), (5, 5, 2, 1.0), (5, 5, 3, 0.6)]),
}


def _packed_models(case):
    topology, specs = PACKED_CASES[case]
    topo = topologies.load(topology)
    make = (lambda n_l, n_r, seed: native_model(topology, n_l, n_r, seed=seed)) \
        if topo.mode == "native" else \
        (lambda n_l, n_r, seed: random_native_model(topo, n_l, n_r, seed=seed, scale=2.0))
    return topology, [make(n_l, n_r, seed).with_beta(beta) for n_l, n_r, seed, beta in specs]


@pytest.mark.parametrize("case", PACKED_CASES)
def test_each_packed_model_samples_its_own_exact_distribution(case):
    # each model's samples against its own enumeration (the iid bound of the tile tests, with a
    # union bound over the models), and far from every other model's distribution of its size
    topology, models = _packed_models(case)
    sampler = _qpu(topology, beta_true=4.0, beta_eff=4.0, num_reads=10000)
    n = 6000
    results = sampler.draw_tiled(models, n)
    assert sampler.calls == 1
    assert all(r.info["packed_models"] == 3 and r.info["num_qpu_calls"] == 1 for r in results)
    assert sum(r.info["qubits_used"] for r in results) == results[0].info["packed_qubits"]
    if case != "mixed sizes":
        assert [r.info["tiles"] for r in results] == [2, 2, 1]
    bounds = []
    for model, (z, info) in zip(models, results):
        assert z.shape == (n, model.num_units) and info["beta"] == model.beta
        states, p = exact_distribution(model)
        bounds.append(tv_mcdiarmid(p, n, 1e-4 / 3))
        assert 0.5 * (empirical_distribution(states, z) - p).abs().sum().item() < bounds[-1]
    for s, t in itertools.permutations(range(3), 2):
        if models[s].num_units == models[t].num_units:   # sensitivity: no model got another's
            states, p_other = exact_distribution(models[t])
            assert 0.5 * (empirical_distribution(states, results[s].samples) - p_other).abs().sum().item() \
                > 1.5 * bounds[s]


def test_packed_models_are_independent():
    # two 2+1 models share C4's 16 copies, 8 each. In one read, copy i of model A and copy j of
    # model B should be distributed as p_A ⊗ p_B (64 joint states); the joint's TV to it measures
    # any dependence between the models (and any error of either), with the iid bound and a
    # union bound over all 64 pairs
    a = native_model("chimera_c4", 2, 1, seed=3, scale=1.5)
    b = native_model("chimera_c4", 2, 1, seed=4, scale=1.5).with_beta(0.7)
    _, sampler = _remote(tiles="auto", num_reads=10000)
    reads = 8000
    za, zb = (r.samples for r in sampler.draw_tiled([a, b], reads * 8))
    weights = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    codes_a = (za.reshape(reads, 8, 3).double() @ weights).long()   # read after read, copy after copy
    codes_b = (zb.reshape(reads, 8, 3).double() @ weights).long()
    p_a, p_b = exact_distribution(a)[1], exact_distribution(b)[1]
    pp = (p_a[:, None] * p_b[None, :]).reshape(-1)
    bound = tv_mcdiarmid(pp, reads, 1e-4 / 64)

    def joint_tv(x, y, target):
        counts = torch.bincount(x * 8 + y, minlength=64).double()
        return 0.5 * (counts / counts.sum() - target).abs().sum().item()

    worst = max(joint_tv(codes_a[:, i], codes_b[:, j], pp) for i in range(8) for j in range(8))
    assert worst < bound
    # sensitivity: fully dependent copies (a copy paired with itself) are far outside the bound
    pp_a = (p_a[:, None] * p_a[None, :]).reshape(-1)
    assert joint_tv(codes_a[:, 0], codes_a[:, 0], pp_a) > 3 * bound


def test_a_packed_call_splits_its_access_time_by_qubits():
    from samplers.qpu import estimate_access_time_us

    models = [native_model("pegasus_p4", 5, 5, seed=1), native_model("pegasus_p4", 3, 3, seed=2),
              native_model("pegasus_p4", 3, 3, seed=3)]
    sampler = _qpu("pegasus_p4", beta_eff=4.0, num_reads=100)
    results = sampler.draw_tiled(models, [250, 100, 100])
    infos = [r.info for r in results]
    calls, reads = infos[0]["num_qpu_calls"], infos[0]["num_reads"]
    total = infos[0]["packed_qubits"]
    assert all(i["num_qpu_calls"] == calls and i["num_reads"] == reads for i in infos)
    for info in infos:
        assert info["qpu_access_time_share"] == pytest.approx(info["qubits_used"] / total)
        assert info["qubits_used"] == info["tiles"] * (10 if info is infos[0] else 6)
    # the shares add up to the calls' total: reported (the mock's fixed 8550.28 µs per call)
    assert sum(i["qpu_access_time_us"] for i in infos) == pytest.approx(calls * 8550.28)
    assert infos[0]["call_qpu_access_time_us"] == pytest.approx(calls * 8550.28)
    # and estimated: Ocean's timing model of the same calls, on all the programmed qubits
    params = {"annealing_time": 20, "programming_thermalization": 1000, "readout_thermalization": 0}
    per_call = estimate_access_time_us("pegasus_p4", total, reads // calls, **params)
    assert sum(i["estimated_qpu_access_time_us"] for i in infos) == pytest.approx(calls * per_call)
    assert reads % calls == 0 and [r.samples.shape[0] for r in results] == [250, 100, 100]


def test_a_tiled_draw_of_one_model_is_a_draw():
    model = native_model("chimera_c4", 5, 5, seed=1)
    single = _qpu(beta_eff=4.0, num_reads=100).draw(model, 250)
    tiled, = _qpu(beta_eff=4.0, num_reads=100).draw_tiled([model], 250)
    assert torch.equal(single.samples, tiled.samples)
    shared = set(single.info) - {"time_s", "timing"}
    assert {k: tiled.info[k] for k in shared} == {k: single.info[k] for k in shared}
    assert tiled.info["qpu_access_time_share"] == 1.0


def test_models_that_do_not_fit_together_go_into_separate_calls():
    # two 40+40 regions cannot share C4's 128 qubits; with tiles: 2, three models of three
    # sizes take two calls (two copies in the first, the third model alone in the second)
    big = [native_model("chimera_c4", 40, 40, seed=s, scale=0.1) for s in (1, 2)]
    child, sampler = _remote(tiles="auto", num_reads=20)
    results = sampler.draw_tiled(big, 20)
    assert child.submitted == 2 and [r.info["packed_models"] for r in results] == [1, 1]
    small = [native_model("chimera_c4", n, n, seed=n) for n in (5, 4, 3)]
    child, sampler = _remote(tiles=2, num_reads=20)
    infos = [r.info for r in sampler.draw_tiled(small, 20)]
    assert child.submitted == 2 and [i["packed_models"] for i in infos] == [2, 2, 1]
    assert [i["tiles"] for i in infos] == [1, 1, 2] and sampler.calls == 1


def test_a_model_out_of_range_is_named_and_nothing_is_sent():
    good = native_model("chimera_c4", 4, 4, seed=1)
    bad = native_model("chimera_c4", 4, 4, seed=2, scale=100.0)
    child, sampler = _remote(beta_eff=1.0)
    before = sampler.state_dict()
    with pytest.raises(QPURangeError, match="model 1 of the tiled draw: programmed"):
        sampler.draw_tiled([good, bad], 10)
    assert child.submitted == 0 and sampler.state_dict() == before
    child, sampler = _remote(beta_eff=1.0, range_policy="clip")
    infos = [r.info for r in sampler.draw_tiled([good, bad], 10)]
    assert infos[0]["clipped_fraction"] == 0.0 < infos[1]["clipped_fraction"]
    with pytest.raises(ValueError, match="2 sample counts for 1 models"):
        sampler.draw_tiled([good], [10, 10])


def test_a_tiled_draw_is_one_call_of_its_sampler_and_followers_take_it():
    # the thermal mock samples at β 5; from a guess of 2.5 a due recalibration measures β_eff
    # once, from the whole packed call, and a follower takes the call and the measurement
    models = [native_model("chimera_c4", 4, 4, seed=s, scale=0.5) for s in (1, 2)]
    host = _qpu(beta_true=5.0, beta_eff=2.5, num_reads=1000, recalibrate_every=2)
    follower = _qpu(beta_true=5.0, beta_eff=2.5, recalibrate_every=2)
    assert not host.recalibration_due
    infos = [r.info for r in host.draw_tiled(models, 1000, recalibrate=True)]
    assert host.calls == 1 and all(i["recalibrated"] and i["beta_eff"] == 2.5 for i in infos)
    assert abs(host.beta_eff - 5.0) < 0.5 and host.recalibration_due
    follower.follow(host)
    assert follower.calls == 1 and follower.beta_eff == host.beta_eff
    assert follower.measure_beta_eff(num_bootstrap=0).beta == pytest.approx(
        host.measure_beta_eff(num_bootstrap=0).beta)


def test_a_config_cannot_redirect_the_token():
    """Where the token is sent comes from the user's environment or dwave config file: a
    config (perhaps someone else's run directory) may not set the endpoint or a config file."""
    for key in ("endpoint", "config_file", "proxy", "headers"):
        with pytest.raises(samplers.SamplerOptionError, match="client_config"):
            samplers.get("qpu", topology="chimera_c4", client_config={key: "https://elsewhere/"})
    samplers.get("qpu", topology="chimera_c4", client_config={"profile": "prod", "region": "eu"})


def _gauge_of(sent, programmed) -> np.ndarray:
    """The ±1 gauge g with sent = (g_i h_i, g_i g_j J_ij) of `programmed`, checked exactly."""
    labels = list(programmed.variables)
    g = np.array([np.sign(sent.linear[v] / programmed.linear[v]) for v in labels])
    where = {v: i for i, v in enumerate(labels)}
    for v in labels:
        assert sent.linear[v] == g[where[v]] * programmed.linear[v]
    for (u, v), value in programmed.quadratic.items():
        assert sent.quadratic[u, v] == g[where[u]] * g[where[v]] * value
    return g


def _srt_sampler(child, **options):
    options = {"beta_eff": 4.0, "seed": 0, **options}
    return samplers.get("qpu", topology="chimera_c4", child_sampler=child, **options)


def test_spin_reversal_transforms_gauge_every_call_and_every_copy():
    model = native_model("chimera_c4", 4, 4, seed=3)
    # one copy per call: four transforms need four calls, sharing the 400 samples out
    child = Recording(thermal_mock("chimera_c4", seed=0))
    sampler = _srt_sampler(child, tiles=1, num_reads=1000, spin_reversal_transforms=4)
    info = sampler.draw(model, 400).info
    assert info["num_qpu_calls"] == 4 and info["num_reads"] == 400
    programmed = sampler.programmed_bqm(model)
    gauges = [_gauge_of(sent, programmed) for sent in child.problems]
    assert len({g.tobytes() for g in gauges}) == 4
    # tiled: the copies of one call carry the transforms, so no call is added
    child = Recording(thermal_mock("chimera_c4", seed=0))
    sampler = _srt_sampler(child, spin_reversal_transforms=4)
    info = sampler.draw(model, 100).info
    assert info["tiles"] == 16 and info["num_qpu_calls"] == 1
    one_copy = sampler.programmed_bqm(model)
    copies = sampler.tile_qubits(model)
    per_copy = []
    for qubits in copies:  # copy t is copy 0's problem on copy t's qubits
        problem = one_copy.relabel_variables(dict(zip(copies[0], qubits)), inplace=False)
        sent = child.problems[0].copy()
        sent.remove_variables_from([v for v in sent.variables if v not in set(qubits)])
        per_copy.append(_gauge_of(sent, problem).tobytes())
    assert len(set(per_copy)) > 8  # the copies carry transforms of their own
    # the extra calls are in the access-time estimate: four calls of 100 reads each
    srt = _srt_sampler(thermal_mock("chimera_c4", seed=0), tiles=1, num_reads=1000,
                       spin_reversal_transforms=4)
    four_calls = _srt_sampler(thermal_mock("chimera_c4", seed=0), tiles=1, num_reads=100)
    assert srt.estimated_access_time_us(model, 400) == \
        pytest.approx(four_calls.estimated_access_time_us(model, 400))


def test_spin_reversal_transforms_are_reproducible_and_resume_exactly():
    model = native_model("chimera_c4", 4, 4, seed=3)

    def sampler(seed, child_seed=0):
        child = Recording(thermal_mock("chimera_c4", seed=child_seed, per_problem_seed=True))
        return child, _srt_sampler(child, tiles=1, num_reads=50, spin_reversal_transforms=3,
                                   seed=seed)

    (ca, a), (cb, b), (cc, c) = sampler(0), sampler(0), sampler(1)
    za, zb, zc = (s.sample(model, 150) for s in (a, b, c))
    assert torch.equal(za, zb) and not torch.equal(za, zc)
    assert all(p == q for p, q in zip(ca.problems, cb.problems))
    assert not any(p == q for p, q in zip(ca.problems, cc.problems))
    # a run resumed from a's state programs a's next gauges, whatever its own seed
    state = a.state_dict()
    cr, resumed = sampler(seed=7)
    resumed.load_state_dict(state)
    assert torch.equal(a.sample(model, 150), resumed.sample(model, 150))
    assert ca.problems[3:] == cr.problems
    # a draw in flight leaves no trace in the state, and is programmed as a draw would be
    pending = resumed.submit(model, 150)
    assert resumed.state_dict() == a.state_dict()
    assert torch.equal(pending.result().samples, a.sample(model, 150))


def test_spin_reversal_transforms_option_is_checked():
    with pytest.raises(samplers.SamplerOptionError, match="spin_reversal_transforms"):
        samplers.get("qpu", topology="chimera_c4", spin_reversal_transforms=-1)
    with pytest.raises(samplers.SamplerOptionError, match="spin_reversal_transforms"):
        samplers.get("qpu", topology="chimera_c4", spin_reversal_transforms=2.5)


def test_spin_reversal_transforms_in_a_tiled_draw_keep_each_model_exact():
    # two models sharing one call's copies, each copy under its own transform; a different seed
    # for the child than the sampler's, so gauges and Gibbs runs are not coupled by accident
    a = native_model("chimera_c4", 3, 3, seed=4)
    b = native_model("chimera_c4", 3, 3, seed=5).with_beta(0.6)
    child = Recording(thermal_mock("chimera_c4", beta=4.0, seed=9))
    sampler = _srt_sampler(child, num_reads=1000, spin_reversal_transforms=4)
    n = 4000
    ra, rb = sampler.draw_tiled([a, b], n)
    assert ra.info["num_qpu_calls"] == len(child.problems) == 4
    for model, result in ((a, ra), (b, rb)):
        states, p = exact_distribution(model)
        tv = 0.5 * (empirical_distribution(states, result.samples) - p).abs().sum().item()
        assert tv < tv_mcdiarmid(p, n, 1e-4 / 2)
    assert len({tuple(np.sign(list(problem.linear.values()))) for problem in child.problems}) == 4


def test_beta_eff_is_measured_in_the_frame_of_the_samples_under_transforms():
    # pseudo-likelihood of the un-transformed samples against the problem recorded for them:
    # right only if that problem was taken back to the same frame (tiles: 1, four calls)
    model = native_model("chimera_c4", 8, 8, seed=2)
    sampler = _srt_sampler(thermal_mock("chimera_c4", beta=3.0, seed=1), tiles=1,
                           num_reads=500, spin_reversal_transforms=4)
    assert sampler.draw(model, 2000).info["num_qpu_calls"] == 4
    est = sampler.measure_beta_eff(num_bootstrap=50, seed=0)
    assert abs(est.beta - 3.0) < max(4 * est.stderr, 0.05 * 3.0)


def test_clipping_keeps_every_term_on_its_own_qubit():
    # a tiled problem's variables are not in sorted order; clipping (and the error naming the
    # worst term) must follow each term's own labels, not dimod's sorted order
    model = native_model("chimera_c4", 4, 4, scale=30.0)
    child = Recording(thermal_mock("chimera_c4", seed=0))
    sampler = samplers.get("qpu", topology="chimera_c4", beta_eff=1.0, range_policy="clip",
                           child_sampler=child)
    sampler.draw(model, 20)
    copies = sampler.tile_qubits(model)
    labels = [q for c in copies for q in c]
    assert labels != sorted(labels)
    one_copy = sampler.programmed_bqm(model)
    sent = child.problems[0]
    for qubits in copies:
        problem = one_copy.relabel_variables(dict(zip(copies[0], qubits)), inplace=False)
        for q in qubits:
            assert sent.linear[q] == np.clip(problem.linear[q], -4, 4)
        for (u, v), value in problem.quadratic.items():
            assert sent.quadratic[u, v] == np.clip(value, -1, 1)
    import dimod

    worst = dimod.BinaryQuadraticModel({12: 9.0, 0: 0.5, 4: -0.25}, {(12, 4): 0.5}, 0.0, "SPIN")
    guard = samplers.qpu.RangeGuardComposite(thermal_mock("chimera_c4"), "error")
    with pytest.raises(QPURangeError, match="on qubit 12 "):
        guard.program(worst)
