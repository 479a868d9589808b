"""Every sampler against the exact Boltzmann distribution, enumerated here by brute force.

Total-variation bound. For n iid samples from p over k states, |p̂_i − p_i| is approximately
normal with variance p_i(1 − p_i)/n, so E[TV] ≈ ½ Σ_i sqrt(2 p_i (1 − p_i) / (π n)) and
sd[TV] ≈ ½ sqrt((1 − 2/π) Σ_i p_i (1 − p_i) / n). A correct iid sampler lands within a few sd of
E[TV]; we allow 6 sd, plus 0.01 of systematic error for the approximate samplers (finite
sweeps). With n = 40,000 the bound is ≈ E[TV] + 0.02, while sampling at the wrong temperature or
ignoring the mask moves TV by 0.1 or more (checked below).
"""


import dimod
import numpy as np
import pytest
import torch
from references import brute_force, empirical, rbm, tv_bound

import samplers
from samplers import BipartiteModel, SamplerOptionError

N_SAMPLES = 40_000
APPROXIMATE = ("gibbs", "neal", "pa")


# neal's default 40 sweeps leave a small bias visible at this sample size (moments off by up to
# 0.014 on the β = 2 model); 200 sweeps is where it is Boltzmann within the bound
FIDELITY_OPTIONS = {"neal": {"num_sweeps": 200}}


def draw(name, model, n=N_SAMPLES, **options):
    options = {**FIDELITY_OPTIONS.get(name, {}), **options}
    sampler = samplers.get(name, seed=3, **options)
    # successive calls of 1,000: persistent samplers continue their chains between calls
    return torch.cat([sampler.sample(model, 1000) for _ in range(n // 1000)])


MODELS = {
    "dense 6+6": dict(n_left=6, n_right=6, seed=1),
    "dense 4+10": dict(n_left=4, n_right=10, seed=2),
    "masked 6+6": dict(n_left=6, n_right=6, seed=3, masked=True, scale=0.8),
    "dense 6+6 at beta=2": dict(n_left=6, n_right=6, seed=4, beta=2.0),
}


@pytest.mark.parametrize("name", ["exact", "gibbs", "neal", "pa"])
@pytest.mark.parametrize("case", list(MODELS))
def test_distribution_matches_exact(name, case):
    model = rbm(**MODELS[case])
    states, p = brute_force(model)
    z = draw(name, model)
    assert z.shape == (N_SAMPLES, model.num_units) and set(z.unique().tolist()) <= {0.0, 1.0}
    q = empirical(z, model.num_units)
    tv = 0.5 * float((q - p).abs().sum())
    assert tv < tv_bound(p, N_SAMPLES, 0.01 if name in APPROXIMATE else 0.0), tv

    # first and second moments within 5 standard errors of the exact ones
    zd = z.double()
    mean_exact = p @ states
    se = torch.sqrt(mean_exact * (1 - mean_exact) / N_SAMPLES) + 1e-12
    assert ((zd.mean(0) - mean_exact).abs() / se).max() < 5
    n_l = model.num_left
    pair_exact = torch.einsum("s,si,sj->ij", p, states[:, :n_l], states[:, n_l:])
    pair_emp = zd[:, :n_l].T @ zd[:, n_l:] / N_SAMPLES
    se2 = torch.sqrt(pair_exact * (1 - pair_exact) / N_SAMPLES) + 1e-12
    assert ((pair_emp - pair_exact).abs() / se2).max() < 5


@pytest.mark.parametrize("name", ["exact", "gibbs", "neal", "pa"])
def test_beta_is_honoured(name):
    """Samples at β = 2 fit p ∝ exp(−2E) and clearly not p ∝ exp(−E)."""
    hot = rbm(6, 6, seed=5, scale=0.7)
    cold = hot.with_beta(2.0)
    _, p_cold = brute_force(cold)
    _, p_hot = brute_force(hot)
    q = empirical(draw(name, cold, n=20_000), 12)
    assert 0.5 * float((q - p_cold).abs().sum()) < tv_bound(p_cold, 20_000, 0.01)
    assert 0.5 * float((q - p_hot).abs().sum()) > 0.15


def test_mask_is_respected():
    masked = rbm(6, 6, seed=3, masked=True, scale=1.5)
    unmasked = BipartiteModel(masked.a_left, masked.a_right, masked.W / 1.0)  # W already masked
    assert torch.equal(unmasked.W, masked.W)
    raw = rbm(6, 6, seed=3, scale=1.5)  # same draws without the mask
    _, p_raw = brute_force(raw)
    _, p_masked = brute_force(masked)
    q = empirical(draw("gibbs", masked, n=20_000), 12)
    assert 0.5 * float((q - p_masked).abs().sum()) < tv_bound(p_masked, 20_000, 0.01)
    assert 0.5 * float((q - p_raw).abs().sum()) > 0.1


def test_pa_log_z_matches_enumeration():
    model = rbm(6, 8, seed=7, scale=0.8)
    states, _ = brute_force(model)
    neg_e = -model.to(dtype=torch.float64).energy(states)
    exact = float(torch.logsumexp(neg_e, 0))
    sampler = samplers.get("pa", seed=0, num_particles=4000, num_betas=100)
    info = sampler.draw(model, 100).info
    assert abs(info["log_z"] - exact) < 0.05
    assert 0 < info["ess"] <= 1


def test_neal_reads_are_thermal_not_ground_states():
    model = rbm(6, 6, seed=8, scale=1.0)
    states, p = brute_force(model)
    energies = model.to(dtype=torch.float64).energy(states)
    sampler = samplers.get("neal", seed=1)
    z, info = sampler.draw(model, 5000)
    mean_e = float(model.energy(z).mean())
    exact_mean = float(p @ energies)
    assert abs(mean_e - exact_mean) < 0.1
    assert mean_e > float(energies.min()) + 1.0  # an optimiser would sit at the minimum
    assert info["schedule"] == "geometric" and info["beta_final"] == 1.0


def test_neal_schedule_ends_at_model_beta():
    from samplers.neal import beta_schedule

    for kind in ("geometric", "linear", "constant"):
        sched = beta_schedule(kind, 0.1, 40)
        assert len(sched) == 40 and sched[-1] == 1.0 and np.all(np.diff(sched) >= 0)
    assert beta_schedule("geometric", 0.1, 40)[0] == pytest.approx(0.1)


def test_gibbs_persistence_state_roundtrip_and_seeds():
    model = rbm(5, 7, seed=9)
    a = samplers.get("gibbs", num_chains=50, sweeps=3, seed=11)
    first = a.sample(model, 50)
    assert torch.equal(a.state_dict()["chains"], first)  # chains persist as the last read-out
    state = a.state_dict()
    nxt = a.sample(model, 120)  # more samples than chains: successive sweeps
    assert nxt.shape == (120, 12)
    b = samplers.get("gibbs", num_chains=50, sweeps=3, seed=999)
    b.load_state_dict(state)
    assert torch.equal(b.sample(model, 120), nxt)
    c = samplers.get("gibbs", num_chains=50, sweeps=3, seed=11)
    assert torch.equal(c.sample(model, 50), first)
    d = samplers.get("gibbs", num_chains=50, sweeps=3, seed=12)
    assert not torch.equal(d.sample(model, 50), first)
    # a model of another size reinitialises the chains cleanly
    bigger = rbm(6, 7, seed=9)
    assert a.sample(bigger, 50).shape == (50, 13)


@pytest.mark.parametrize("name", ["exact", "neal", "pa", "dimod"])
def test_state_roundtrip_reproduces_next_call(name):
    model = rbm(4, 6, seed=10)
    a = samplers.get(name, seed=5)
    a.sample(model, 30)
    state = a.state_dict()
    want = a.sample(model, 30)
    b = samplers.get(name, seed=6)
    b.load_state_dict(state)
    assert torch.equal(b.sample(model, 30), want)


def test_device_and_dtype_handling():
    model = rbm(3, 4, seed=1)
    for name in ("gibbs", "exact", "neal", "pa"):
        z = samplers.get(name, seed=0).sample(model, 10, device="cpu", dtype=torch.float64)
        assert z.dtype == torch.float64 and z.device.type == "cpu"
        z = samplers.get(name, seed=0).sample(model.to(dtype=torch.float64), 10)
        assert z.dtype == torch.float64
    with pytest.raises(ValueError, match="floating"):
        samplers.get("gibbs").sample(model, 10, dtype=torch.int64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gibbs_on_cuda_matches_exact():
    model = rbm(6, 6, seed=1).to(device="cuda")
    _, p = brute_force(model.to(device="cpu"))
    z = draw("gibbs", model)
    assert z.device.type == "cuda"
    q = empirical(z.cpu(), 12)
    assert 0.5 * float((q - p).abs().sum()) < tv_bound(p, N_SAMPLES, 0.01)


def test_exact_refuses_a_small_side_over_20_units():
    # a wide other side is fine: test_samplers_contract checks its moments against enumeration
    big = rbm(21, 25, seed=0)
    with pytest.raises(ValueError, match="limited to 20"):
        samplers.get("exact").sample(big, 5)


def test_get_validates_names_and_options():
    with pytest.raises(SamplerOptionError, match="unknown sampler 'gibs'.*gibbs"):
        samplers.get("gibs")
    with pytest.raises(SamplerOptionError, match="no option 'chains'.*num_chains"):
        samplers.get("gibbs", chains=10)
    with pytest.raises(SamplerOptionError, match="'num_chains'.*not int"):
        samplers.get("gibbs", num_chains="many")
    with pytest.raises(SamplerOptionError, match="'sweeps'.*out of range"):
        samplers.get("gibbs", sweeps=0)
    with pytest.raises(SamplerOptionError, match="'schedule'"):
        samplers.get("neal", schedule="exponential")
    with pytest.raises(SamplerOptionError, match="cannot import"):
        samplers.get("dimod", sampler="dwave.no_such:Thing")
    with pytest.raises(SamplerOptionError, match="outside the trusted packages"):
        samplers.get("dimod", sampler="no.such:Thing")
    assert set(samplers.available()) >= {"gibbs", "pa", "neal", "exact", "dimod", "qpu"}
    assert "num_chains" in samplers.declared_options("gibbs")


def test_dimod_adapter_flags_optimisers_and_accepts_boltzmann_samplers():
    model = rbm(4, 5, seed=2, scale=1.0)
    tabu = samplers.get("dimod", sampler="dwave.samplers.TabuSampler", seed=0)
    z, info = tabu.draw(model, 20)
    assert tabu.boltzmann is False and info["boltzmann"] is False
    states, p = brute_force(model)
    e_min = float(model.to(dtype=torch.float64).energy(states).min())
    assert float(model.energy(z).min()) == pytest.approx(e_min, abs=1e-5)  # an optimiser
    from dwave.samplers import SimulatedAnnealingSampler

    fixed_beta = samplers.get(
        "dimod", sampler=SimulatedAnnealingSampler(), boltzmann=True, seed=0,
        sample_kwargs=dict(beta_range=[1.0, 1.0], num_sweeps=50,
                           proposal_acceptance_criteria="Gibbs", randomize_order=True),
    )
    q = empirical(fixed_beta.sample(model, 20_000), 9)
    assert 0.5 * float((q - p).abs().sum()) < tv_bound(p, 20_000, 0.01)


@pytest.mark.parametrize("beta", [1.0, 0.7])
def test_bqm_conversions_preserve_energies(beta):
    model = rbm(3, 4, seed=3, masked=True, beta=beta)
    states, _ = brute_force(model)
    energy = beta * model.to(dtype=torch.float64).energy(states).numpy()
    binary = model.to_bqm("BINARY")
    spin = model.to_bqm("SPIN")
    assert binary.num_interactions == int(model.mask.sum())
    e_bin = binary.energies((states.numpy().astype(int), list(range(7))))
    e_spin = spin.energies((2 * states.numpy().astype(int) - 1, list(range(7))))
    np.testing.assert_allclose(e_bin, energy, atol=1e-9)
    np.testing.assert_allclose(e_spin, energy, atol=1e-9)
    back = BipartiteModel.from_bqm(spin, range(3), range(3, 7), beta=beta)
    torch.testing.assert_close(back.W, model.W.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(back.a_left, model.a_left.double(), atol=1e-6, rtol=0)
    inside = dimod.BinaryQuadraticModel({0: 1.0, 1: 1.0}, {(0, 1): 1.0}, 0.0, "BINARY")
    with pytest.raises(ValueError, match="within one side"):
        BipartiteModel.from_bqm(inside, [0, 1], [])


def test_batched_kernel_matches_each_model_and_keeps_streams_apart():
    """gibbs_sweeps on (batch, chains, n) states: each batch element samples its own model, and
    with one source per element its samples do not depend on what it is batched with."""
    from samplers.gibbs import gibbs_sweeps
    from samplers.uniforms import WordStream

    models = [rbm(**MODELS["dense 6+6"]), rbm(**MODELS["masked 6+6"]), rbm(6, 6, seed=11)]

    def run(pair, seeds, chains=2000, sweeps=20):
        a_l = torch.stack([m.a_left for m in pair])
        a_r = torch.stack([m.a_right for m in pair])
        w = torch.stack([m.W for m in pair])
        z = torch.zeros(len(pair), chains, 6)
        return gibbs_sweeps(z, z, a_l, a_r, w, 1.0, sweeps, [WordStream(s) for s in seeds])

    zl, zr = run(models[:2], (1, 2))
    for b in range(2):
        _, p = brute_force(models[b])
        q = empirical(torch.cat([zl[b], zr[b]], 1), 12)
        # 2,000 chains after 20 sweeps from all-zero states: independent draws at these
        # mixing times, so the iid TV bound applies with the approximate samplers' 0.01
        assert 0.5 * float((q - p).abs().sum()) < tv_bound(p, 2000, 0.01)
    zl2, zr2 = run([models[0], models[2]], (1, 3))
    assert torch.equal(zl2[0], zl[0]) and torch.equal(zr2[0], zr[0])
    assert not torch.equal(zl2[1], zl[1])


def test_fast_source_state_resumes_bit_for_bit_and_accepts_legacy_state():
    """The gibbs and pa samplers' CPU source round-trips through state_dict, and a checkpoint
    written with a torch generator state resumes exactly as the original kernel continued it."""
    model = rbm(5, 7, seed=12)
    for name in ("gibbs", "pa"):
        a = samplers.get(name, seed=21)
        a.sample(model, 64)
        state = a.state_dict()
        assert state["generator"]["kind"] == "sfc64"
        want = a.sample(model, 64)
        b = samplers.get(name, seed=22)
        b.load_state_dict(state)
        assert torch.equal(b.sample(model, 64), want)

    legacy = samplers.get("gibbs", num_chains=8, sweeps=2, seed=0)
    gen = torch.Generator().manual_seed(5)
    legacy.load_state_dict({"chains": torch.zeros(8, 12), "generator": gen.get_state(),
                            "generator_device": "cpu"})
    zl, zr = torch.zeros(8, 5), torch.zeros(8, 7)
    for _ in range(2):  # the original kernel: float32 uniforms from the torch generator
        u = torch.rand(zr.shape, generator=gen)
        zr = (u < torch.sigmoid(torch.addmm(model.a_right, zl, model.W))).float()
        u = torch.rand(zl.shape, generator=gen)
        zl = (u < torch.sigmoid(torch.addmm(model.a_left, zr, model.W.T))).float()
    assert torch.equal(legacy.sample(model, 8), torch.cat([zl, zr], 1))


def test_sixteen_bit_uniforms_round_probabilities_to_the_grid():
    """With the word stream a unit turns on with probability round(65536·p)/65536 exactly:
    checked by feeding every 16-bit value once (each value is equally likely in a stream)."""
    from samplers.uniforms import GRAIN, WordStream, bernoulli_

    class EveryValueOnce(WordStream):
        def __init__(self):
            pass

        def words16(self, count):
            return torch.arange(count).remainder(65536).to(torch.uint16)

    p = torch.tensor([0.0, 1e-6, 0.3, 0.5, 0.7, 1 - 1e-6, 1.0], dtype=torch.float64)
    probs = p.unsqueeze(1).expand(-1, 65536).contiguous()
    out = bernoulli_(probs.clone(), EveryValueOnce(), torch.empty_like(probs))
    assert torch.equal(out.sum(1), torch.round(p * GRAIN))


@pytest.mark.parametrize("b0, b1, tol", [(0.3, 0.3 + 1 / 999, 2e-7), (1.0, 1 - 1 / 999, 2e-7),
                                          (0.0, 0.5, 1e-4)])
def test_annealed_weight_increment_is_the_exact_marginal_ratio(b0, b1, tol):
    """One annealing step adds log f_b1(v) − log f_b0(v) at the current states, computed in
    float32 without cancellation: compared with the float64 marginal (`side_log_marginal`).

    Fields reach |g| ≈ 40 here. Measured worst row error: 3e-8 on fine steps, against 4e-6–7e-6
    for a plain float32 difference of two softplus sums (which over a thousand steps adds up
    to ~1e-2 nat): 2e-7 passes the one and fails the other. The coarse step (a schedule of 3
    temperatures) takes plain softplus: 8e-6 measured on increments of ~300 nat, bound 1e-4.
    """
    from samplers.exact import side_log_marginal
    from samplers.gibbs import annealed_sweeps
    from samplers.uniforms import WordStream

    gen = torch.Generator().manual_seed(0)
    a_v, a_h = torch.randn(30, generator=gen), torch.randn(200, generator=gen) * 5
    w = torch.randn(30, 200, generator=gen) * 2.5
    v = (torch.rand(64, 30, generator=gen) < 0.5).float()
    _, _, log_w = annealed_sweeps(v, a_v, a_h, w, [b0, b1], WordStream(0))
    d = [x.double() for x in (v, a_v, a_h, w)]
    want = side_log_marginal(*d, b1) - side_log_marginal(*d, b0)
    assert float((log_w - want).abs().max()) < tol


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_pa_on_cuda_matches_exact():
    model = rbm(6, 6, seed=1).to(device="cuda")
    _, p = brute_force(model.to(device="cpu"))
    z = draw("pa", model)
    assert z.device.type == "cuda"
    q = empirical(z.cpu(), 12)
    assert 0.5 * float((q - p).abs().sum()) < tv_bound(p, N_SAMPLES, 0.01)


@cuda
def test_kernels_on_cuda_never_wait_for_the_host():
    """No host synchronisation inside the sweep loops (sync debug mode raises on one)."""
    from samplers.gibbs import annealed_sweeps, gibbs_sweeps

    model = rbm(6, 8, seed=2).to(device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    z = torch.zeros(100, 14, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        zl, zr = gibbs_sweeps(z[:, :6], z[:, 6:], model.a_left, model.a_right, model.W, 1.0, 5, gen)
        annealed_sweeps(zl, model.a_left, model.a_right, model.W, [0.0, 0.5, 1.0], gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert zl.device.type == "cuda" and set(zl.unique().tolist()) <= {0.0, 1.0}


def test_gibbs_cuda_graph_option_has_no_effect_on_the_cpu():
    """On the CPU there is no graph to capture: `cuda_graph` (on by default) leaves the samples
    and the generator exactly as the eager path makes them, and each call says it ran eager."""
    model = rbm(5, 7, seed=9)
    on = samplers.get("gibbs", num_chains=40, sweeps=3, thin=2, seed=4)
    off = samplers.get("gibbs", num_chains=40, sweeps=3, thin=2, seed=4, cuda_graph=False)
    assert on.options["cuda_graph"] is True
    for n in (40, 100):
        got, want = on.draw(model, n), off.draw(model, n)
        assert torch.equal(got.samples, want.samples)
        assert got.info["cuda_graph"] is False and want.info["cuda_graph"] is False
    assert on.state_dict()["generator"] == off.state_dict()["generator"]
    with pytest.raises(SamplerOptionError, match="'cuda_graph'.*not bool"):
        samplers.get("gibbs", cuda_graph="yes")


@cuda
def test_gibbs_cuda_graph_gives_the_eager_samples_and_resumes_exactly():
    """The graphed path replays the eager kernel from the same generator: identical samples on
    the first call (chains read as a view), on thinned extra reads, after the model changes
    (as it does every training step), and from a restored state, in a fresh sampler or in one
    whose graphs were captured with the generator that the restore replaced."""
    models = [rbm(6, 8, seed=2).to(device="cuda"), rbm(6, 8, seed=3, beta=1.5).to(device="cuda")]
    opts = dict(num_chains=64, sweeps=5, thin=2, device="cuda")
    graphed = samplers.get("gibbs", seed=7, **opts)
    eager = samplers.get("gibbs", seed=7, cuda_graph=False, **opts)
    for model, n in [(models[0], 64), (models[0], 200), (models[1], 64), (models[1], 150)]:
        got, want = graphed.draw(model, n), eager.draw(model, n)
        assert got.info["cuda_graph"] is True and want.info["cuda_graph"] is False
        assert torch.equal(got.samples, want.samples), n
    a, b = graphed.state_dict(), eager.state_dict()
    assert torch.equal(a["chains"], b["chains"])
    assert torch.equal(a["generator"]["state"], b["generator"]["state"])  # offsets advanced alike
    want = eager.sample(models[0], 200)
    fresh = samplers.get("gibbs", seed=99, **opts)
    fresh.load_state_dict(a)
    assert torch.equal(fresh.sample(models[0], 200), want)
    graphed.load_state_dict(a)
    assert torch.equal(graphed.sample(models[0], 200), want)
