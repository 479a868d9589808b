"""`samplers.as_dimod`: every local backend as a dimod.Sampler, checked with dimod's own test kit
(`load_sampler_bqm_tests`, `assert_sampler_api`) and against ExactSolver's Boltzmann weights."""

import math
import subprocess
import sys
import unittest

import dimod
import dimod.testing
import numpy as np
import pytest

import samplers
from samplers.ocean import NotBipartiteError, bipartition

BACKENDS = ("gibbs", "pa", "neal", "exact", "dimod")

# dimod's conformance kit (empty, one-variable and path BQMs in SPIN and BINARY, three BQM
# classes, sample_ising and sample_qubo): one TestCase per backend
for _name in BACKENDS:
    _case = type(f"TestDimodKit_{_name}", (unittest.TestCase,), {})
    globals()[_case.__name__] = dimod.testing.load_sampler_bqm_tests(samplers.as_dimod(_name))(_case)


@pytest.mark.parametrize("name", BACKENDS)
def test_sampler_api(name):
    sampler = samplers.as_dimod(name)
    dimod.testing.asserts.assert_sampler_api(sampler)
    assert {"num_reads", "seed"} <= set(sampler.parameters)
    assert sampler.properties["backend"] == name and sampler.properties["beta"] == 1.0


# A bipartite BQM with awkward labels, one missing coupling and a variable without couplings.
LEFT = ["a", ("b", 1), 2]
RIGHT = ["d", "e", frozenset({"f"})]
ISOLATED = "g"
# Couplings |J| <= 0.2 with at most 3 per variable make every Gibbs update contract: flipping a
# neighbour s_j moves the conditional probability σ(−2(h_i + Σ_j J_ij s_j)) by at most
# tanh|J_ij|, so Dobrushin's coefficient is α <= 3·tanh(0.2) < 0.6, and after t sweeps the law
# of a chain (and the joint law of two chains that started identical, e.g. resampled particles)
# is within 2·n·α^t < 1e-9 of Boltzmann (and of independence) for n = 7, t = 50. Fields up to 1
# keep the distribution far from uniform; reversing the couplings still moves it by TV 0.29.
SWEEPS = 50
NUM_READS = 4000
BOLTZMANN_OPTIONS = {
    "gibbs": {"num_chains": NUM_READS, "sweeps": SWEEPS},          # one independent chain per read
    "pa": {"num_particles": NUM_READS, "num_betas": 10, "sweeps_per_beta": SWEEPS},
    "neal": {"schedule": "constant", "num_sweeps": SWEEPS},        # fixed-β Gibbs from random starts
    "exact": {},
    "dimod": {"sampler": "dwave.samplers:SimulatedAnnealingSampler", "boltzmann": True,
              "sample_kwargs": {"beta_range": [1.0, 1.0], "num_sweeps": SWEEPS,
                                "proposal_acceptance_criteria": "Gibbs"}},
}


def _spin_bqm(seed=0):
    rng = np.random.default_rng(seed)
    variables = LEFT + RIGHT + [ISOLATED]
    h = {v: float(rng.uniform(-1, 1)) for v in variables}
    pairs = [(u, v) for u in LEFT for v in RIGHT][1:]  # drop one coupling
    j = {p: float(rng.uniform(-0.2, 0.2)) for p in pairs}
    return dimod.BinaryQuadraticModel(h, j, 0.7, dimod.SPIN)


def _exact_weights(bqm, order):
    """{state tuple in `order`: Boltzmann probability} from ExactSolver's energies."""
    exact = dimod.ExactSolver().sample(bqm)
    columns = [list(exact.variables).index(v) for v in order]
    energies = exact.record.energy
    p = np.exp(-(energies - energies.min()))
    p /= p.sum()
    return {tuple(row[columns]): float(pk) for row, pk in zip(exact.record.sample, p)}


def _tv(sampleset, bqm, weights):
    order = [list(sampleset.variables).index(v) for v in bqm.variables]
    rows = np.repeat(sampleset.record.sample, sampleset.record.num_occurrences, axis=0)[:, order]
    states, counts = np.unique(rows, axis=0, return_counts=True)
    empirical = {tuple(s): c / len(rows) for s, c in zip(states, counts)}
    return 0.5 * sum(abs(empirical.get(s, 0.0) - p) for s, p in weights.items())


def _tv_bound(weights, n):
    # E[TV] <= ½ Σ sqrt(p(1−p)/n) (Cauchy–Schwarz per state); TV moves by <= 1/n per sample, so
    # McDiarmid adds sqrt(ln(1/δ)/(2n)) at δ = 1e-4; plus the mixing term above (< 1e-9)
    p = np.array(list(weights.values()))
    return 0.5 * np.sqrt(p * (1 - p) / n).sum() + math.sqrt(math.log(1e4) / (2 * n)) + 1e-9


@pytest.mark.parametrize("vartype", ["SPIN", "BINARY"])
@pytest.mark.parametrize("name", BACKENDS)
def test_samples_follow_the_bqm_boltzmann_distribution(name, vartype):
    bqm = _spin_bqm().change_vartype(vartype, inplace=False)
    sampler = samplers.as_dimod(name, **BOLTZMANN_OPTIONS[name])
    ss = sampler.sample(bqm, num_reads=NUM_READS, seed=1)
    assert ss.vartype is bqm.vartype and set(ss.variables) == set(bqm.variables)
    assert int(ss.record.num_occurrences.sum()) == NUM_READS
    dimod.testing.assert_sampleset_energies(ss, bqm)
    weights = _exact_weights(bqm, bqm.variables)
    bound = _tv_bound(weights, NUM_READS)
    assert _tv(ss, bqm, weights) < bound
    # sensitivity: the same samples are far from the model with its fields reversed, or with its
    # couplings reversed (what a vartype or sign mix-up would give)
    fields_reversed = bqm.copy()
    fields_reversed.scale(-1.0, ignored_interactions=list(bqm.quadratic))
    couplings_reversed = bqm.copy()
    couplings_reversed.scale(-1.0, ignored_variables=list(bqm.variables), ignore_offset=True)
    for wrong in (fields_reversed, couplings_reversed):
        assert _tv(ss, bqm, _exact_weights(wrong, bqm.variables)) > 2 * bound


def test_bipartition_is_deterministic_and_puts_the_smaller_class_left():
    bqm = _spin_bqm()
    left, right = bipartition(bqm)
    # sides list variables in the BQM's own order; the isolated one goes right
    assert left == [v for v in bqm.variables if v in LEFT]
    assert right == [v for v in bqm.variables if v in RIGHT or v == ISOLATED]
    assert bipartition(bqm.copy()) == (left, right)
    # a star: its centre is the smaller colour class, whichever variable comes first
    star = dimod.BinaryQuadraticModel({}, {("x", "c"): 1.0, ("c", "y"): 1.0, ("c", "z"): 1.0},
                                      0.0, "BINARY")
    assert bipartition(star) == (["c"], ["x", "y", "z"])


def test_non_bipartite_bqm_is_refused_naming_a_coupling_inside_one_side():
    triangle = dimod.BinaryQuadraticModel({}, {("p", "q"): 1.0, ("q", "r"): -1.0, ("p", "r"): 0.5},
                                          0.0, "SPIN")
    with pytest.raises(NotBipartiteError, match=r"coupling \('q', 'r'\) lies inside one side"):
        samplers.as_dimod("exact").sample(triangle)
    assert issubclass(NotBipartiteError, dimod.exceptions.BinaryQuadraticModelStructureError)
    # an interaction with bias 0 is no coupling: the same triangle without it is a path
    triangle.set_quadratic("p", "r", 0.0)
    ss = samplers.as_dimod("exact").sample(triangle, num_reads=3, seed=0)
    assert len(ss) == 3 and set(ss.variables) == {"p", "q", "r"}


@pytest.mark.parametrize("name", BACKENDS)
def test_same_seed_same_sampleset_and_different_seeds_differ(name):
    bqm = _spin_bqm()
    sampler = samplers.as_dimod(name, **BOLTZMANN_OPTIONS[name])  # dimod's default SA: ground states
    a = sampler.sample(bqm, num_reads=50, seed=3)
    b = sampler.sample(bqm, num_reads=50, seed=3)
    c = sampler.sample(bqm, num_reads=50, seed=4)
    assert np.array_equal(a.record.sample, b.record.sample)
    assert not np.array_equal(a.record.sample, c.record.sample)


def test_options_are_validated_and_can_change_per_call():
    with pytest.raises(samplers.SamplerOptionError, match="not a local backend"):
        samplers.as_dimod("qpu")
    with pytest.raises(samplers.SamplerOptionError, match="'num_chains'.*out of range"):
        samplers.as_dimod("gibbs", num_chains=0)
    sampler = samplers.as_dimod("gibbs", num_chains=10, sweeps=5)
    ss = sampler.sample(_spin_bqm(), num_reads=4, seed=0, sweeps=7)
    assert ss.info["chain_sweeps"] == 7 * 10 and ss.info["backend"] == "gibbs"
    assert "mean_energy" not in ss.info  # the backend's is in model units, without the offset
    with pytest.raises(samplers.SamplerOptionError, match="no option 'annealing_time'"):
        sampler.sample(_spin_bqm(), annealing_time=20)
    with pytest.raises(ValueError, match="num_reads must be a positive int"):
        sampler.sample(_spin_bqm(), num_reads=0)


def test_as_dimod_is_exported_lazily():
    code = (
        "import sys, samplers\n"
        "assert 'dimod' not in sys.modules and 'samplers.ocean' not in sys.modules\n"
        "sampler = samplers.as_dimod('exact')\n"
        "import dimod\n"
        "assert isinstance(sampler, dimod.Sampler)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
