"""The sampling service: wire format, packing, sessions, accounting, faults, and the `remote`
sampler end to end against one local Ray instance.

The first half needs no Ray: it drives the service's asyncio core directly. The second half
shares one module-scoped Ray instance (`ray_address`), and all of it runs on one pytest-xdist
worker (`xdist_group`, with `--dist loadgroup` in the Makefile) so CI starts one cluster.
"""

import asyncio
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from references import (
    brute_force,
    empirical,
    empirical_distribution,
    exact_distribution,
    native_model,
    rbm,
    tv_bound,
    tv_mcdiarmid,
)
from runs import assert_same_run, kill_at_step

import samplers
from dvae_q.cli.main import main
from dvae_q.training import checkpoint, metrics
from samplers import BipartiteModel
from samplers.service.core import SamplingService, ServiceSpec
from samplers.service.errors import BadRequest, ServiceDependencyMissing
from samplers.service.packed_gibbs import PackedGibbsSampler, draw_packed
from samplers.service.wire import (
    decode_model,
    decode_samples,
    decode_tree,
    encode_model,
    encode_samples,
    encode_tree,
    message_bytes,
)
from samplers.uniforms import WordStream

REPO = Path(__file__).resolve().parents[2]


# ---- wire format ----------------------------------------------------------------------------


def _same_model(a: BipartiteModel, b: BipartiteModel) -> bool:
    masks = (a.mask is None and b.mask is None) or torch.equal(a.mask, b.mask)
    return (masks and a.beta == b.beta and torch.equal(a.a_left, b.a_left)
            and torch.equal(a.a_right, b.a_right) and torch.equal(a.W, b.W))


def test_model_crosses_the_wire_exactly_and_sparsely():
    import topologies

    dense = rbm(30, 20, seed=1)
    msg = encode_model(dense)
    assert "W" in msg and _same_model(decode_model(msg), dense)

    # a native Chimera mask: 1,048 couplers of 40,000 entries travel as indices + values
    mask = topologies.load("chimera_c16").coupling_mask(200, 200)
    gen = torch.Generator().manual_seed(0)
    native = BipartiteModel(torch.randn(200, generator=gen), torch.randn(200, generator=gen),
                            torch.randn(200, 200, generator=gen), mask, 1.5)
    msg = encode_model(native)
    assert "W" not in msg and "mask_index" in msg
    assert msg["couplers"].size == int(mask.sum())
    assert _same_model(decode_model(msg), native)
    dense_bytes = message_bytes(encode_model(BipartiteModel(native.a_left, native.a_right, native.W)))
    # 1,048 x (4 B value + 4 B index) + biases against 40,000 x 4 B: under a tenth
    assert message_bytes(msg) < dense_bytes / 10

    # a half-full mask is cheaper as packed bits than as indices
    half = rbm(6, 6, seed=3, masked=True)
    msg = encode_model(half)
    assert "mask_bits" in msg and _same_model(decode_model(msg), half)
    # float64 stays float64
    m64 = dense.to(dtype=torch.float64)
    assert decode_model(encode_model(m64)).dtype == torch.float64


def _broken(**change):
    msg = encode_model(rbm(4, 5, seed=2))
    msg.update(change)
    return msg


@pytest.mark.parametrize("msg, words", [
    (_broken(a_left=np.zeros(3, np.float32)), "a_left"),
    (_broken(W=np.zeros((5, 4), np.float32)), "'W' must be a (4, 5)"),
    (_broken(W=np.full((4, 5), np.nan, np.float32)), "NaN"),
    (_broken(a_right=np.array([1, 2, 3, 4, np.inf], np.float32)), "NaN or infinite"),
    (_broken(beta=float("inf")), "beta"),
    (_broken(a_left=np.zeros(4, np.float64)), "a_left"),
    (_broken(v=2), "wire version"),
    (_broken(shape=[4, -5]), "shape"),
    (_broken(shape=[1 << 14, 1 << 14]), "limit"),
    (_broken(W=np.array([object()] * 20).reshape(4, 5)), "'W' must be"),
    ({"v": 1, "kind": "model"}, "dtype"),
    ("not a message", "dict"),
])
def test_malformed_models_are_refused_in_one_line(msg, words):
    with pytest.raises(BadRequest) as err:
        decode_model(msg)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_masked_message_with_bad_indices_is_refused():
    msg = encode_model(rbm(6, 6, seed=3, masked=True, scale=0.8))
    msg.pop("mask_bits")
    msg["mask_index"] = np.array([3, 2, 40], np.int32)
    with pytest.raises(BadRequest, match="increasing indices"):
        decode_model(msg)


def test_samples_and_states_round_trip_as_plain_data():
    z = (torch.rand(37, 13, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    msg = encode_samples(z)
    assert msg["bits"].dtype == np.uint8 and msg["bits"].shape == (37, 2)  # 13 bits -> 2 bytes
    assert torch.equal(decode_samples(msg).float(), z)
    for bad in (0.5, 2.0, -1.0):
        with pytest.raises(ValueError, match="binary"):
            encode_samples(torch.tensor([[0.0, bad]]))

    sampler = samplers.get("gibbs", num_chains=7, sweeps=2, seed=4)
    sampler.sample(rbm(3, 4, seed=1), 7)
    state = {"inner": sampler.state_dict(), "history": [1.0, 2.5], "n": np.int64(3)}
    back = decode_tree(encode_tree(state))
    assert torch.equal(back["inner"]["chains"], state["inner"]["chains"])
    assert back["inner"]["generator"] == state["inner"]["generator"]  # the source's state
    assert back["history"] == [1.0, 2.5] and back["n"] == 3 and type(back["n"]) is int
    with pytest.raises(BadRequest, match="not plain data"):
        encode_tree({"hook": lambda: None})
    with pytest.raises(BadRequest, match="not plain data"):
        decode_tree({"x": {1, 2}})


# ---- the packed Gibbs kernel ----------------------------------------------------------------

def _packed(seed, **options):
    return PackedGibbsSampler(num_chains=50, sweeps=4, thin=2, seed=seed, **options)


def test_packing_is_invisible_to_each_session():
    """A session packed with others gets bit-for-bit the samples it gets alone, and its
    generator advances by exactly the draws of its own sweeps (the documented stream)."""
    models = [rbm(5, 7, seed=s, scale=0.8).to(dtype=torch.float64) for s in (1, 2, 3)]
    alone = [draw_packed([_packed(10 + i)], [m], 120)[0][0] for i, m in enumerate(models)]
    members = [_packed(10 + i) for i in range(3)]
    together = draw_packed(members, models, 120)
    for (z, info), want in zip(together, alone):
        assert torch.equal(z, want) and info["chain_sweeps"] == (4 + 2 * 2) * 50

    # the stream, rebuilt from the definition: initial chains, then per sweep one (chains, n_R)
    # and one (chains, n_L) draw of 16-bit uniforms from the session's own CPU source (the gibbs
    # sampler's word stream); 120 samples of 50 chains = 4 sweeps + 2 x 2 thinning
    stream = WordStream(10)
    stream.words16(50 * 12)
    for _ in range(4 + 2 + 2):
        stream.words16(50 * 7)
        stream.words16(50 * 5)
    assert members[0].generator.state_dict() == stream.state_dict()


def test_packed_sampler_state_moves_to_and_from_gibbs():
    """The packed sampler keeps the `gibbs` state format, so checkpoints move between a
    packing and a non-packing service; after a load both continue from the same chains."""
    model = rbm(4, 6, seed=5)
    local = samplers.get("gibbs", num_chains=30, sweeps=3, seed=1)
    local.sample(model, 30)
    packed = PackedGibbsSampler(num_chains=30, sweeps=3, seed=99)
    packed.load_state_dict(local.state_dict())
    assert torch.equal(packed.state_dict()["chains"], local.state_dict()["chains"])
    again = samplers.get("gibbs", num_chains=30, sweeps=3)
    again.load_state_dict(packed.state_dict())
    assert torch.equal(again.sample(model, 30), local.sample(model, 30))


# ---- the service core, without Ray ----------------------------------------------------------

def _run(coro):
    return asyncio.run(coro)


async def _with_service(spec: ServiceSpec, body):
    service = SamplingService(spec)
    try:
        return await body(service)
    finally:
        await service.close()


async def _open(service, seed, **extra):
    reply = await service.open_session({"v": 1, "seed": seed, "label": f"t{seed}", **extra})
    assert reply["ok"], reply
    return reply["session"]


def _draw_request(model, n):
    return {"model": encode_model(model), "num_samples": n}


FIDELITY = {
    "dense 6+6": dict(n_left=6, n_right=6, seed=1),
    "masked 6+6": dict(n_left=6, n_right=6, seed=3, masked=True, scale=0.8),
    "dense 6+6 at beta=2": dict(n_left=6, n_right=6, seed=4, beta=2.0),
}


def test_packed_samples_match_exact_enumeration():
    """Three sessions with different models, every call packed into one kernel: each session's
    40,000 samples pass the fidelity test of test_samplers.py against enumeration."""
    models = [rbm(**kw) for kw in FIDELITY.values()]
    spec = ServiceSpec("fidelity", "gibbs", {"num_chains": 1000, "sweeps": 40}, packing=True)

    async def body(service):
        ids = [await _open(service, seed=3 + i) for i in range(3)]
        out = [[] for _ in ids]
        for _ in range(40):
            replies = await asyncio.gather(*[service.draw(sid, _draw_request(m, 1000))
                                             for sid, m in zip(ids, models)])
            for i, reply in enumerate(replies):
                assert reply["info"]["service_packed_with"] == 3  # all three in one kernel
                out[i].append(decode_samples(reply["samples"]))
        return [torch.cat(z) for z in out]

    for model, z in zip(models, _run(_with_service(spec, body))):
        _, p = brute_force(model)
        tv = 0.5 * float((empirical(z, model.num_units) - p).abs().sum())
        assert tv < tv_bound(p, 40_000, 0.01), tv


def test_unpacked_service_equals_local_sampler_and_resumes_from_its_state():
    """Packing off: a session is the local sampler, bit for bit; its state read from the
    service restores a new session that continues identically."""
    model = rbm(5, 6, seed=8)
    spec = ServiceSpec("plain", "gibbs", {"num_chains": 40, "sweeps": 3}, packing=False)
    local = samplers.get("gibbs", num_chains=40, sweeps=3, seed=7)
    want = [local.sample(model, 60) for _ in range(4)]

    async def body(service):
        a = await _open(service, seed=7)
        got = []
        for _ in range(2):
            got.append(decode_samples((await service.draw(a, _draw_request(model, 60)))["samples"]))
        state = (await service.get_state(a))["state"]
        b = await _open(service, seed=123, state=state)  # another seed: the state wins
        for _ in range(2):
            got.append(decode_samples((await service.draw(b, _draw_request(model, 60)))["samples"]))
        return got

    for z, w in zip(_run(_with_service(spec, body)), want):
        assert torch.equal(z.float(), w)


def test_bad_requests_are_refused_and_others_keep_being_served():
    good, model = None, rbm(4, 4, seed=1)
    spec = ServiceSpec("faults", "gibbs", {"num_chains": 10, "sweeps": 2}, packing=True)
    nan = encode_model(model)
    nan["W"] = np.full((4, 4), np.nan, np.float32)

    async def body(service):
        nonlocal good
        a, b = await _open(service, 1), await _open(service, 2)
        replies = await asyncio.gather(
            service.draw(a, {"model": nan, "num_samples": 10}),
            service.draw(a, _draw_request(rbm(4, 4, seed=2), 0)),
            service.draw("no-such-session", _draw_request(model, 10)),
            service.draw(b, _draw_request(model, 10)),
            service.open_session({"v": 1, "options": {"num_chains": -3}}),
            service.open_session({"v": 1, "options": {"colour": "red"}}),
            service.set_state(a, {"v": 1, "kind": "state", "sampler": "pa", "state": {}}),
        )
        good = await service.draw(a, _draw_request(model, 10))
        return replies, (await service.status())["counters"]

    replies, counters = _run(_with_service(spec, body))
    kinds = [r.get("error") for r in replies]
    assert kinds == ["bad_request", "bad_request", "unknown_session", None, "bad_request",
                     "bad_request", "bad_request"]
    assert "NaN" in replies[0]["message"] and "num_samples" in replies[1]["message"]
    assert "num_chains" in replies[4]["message"] and "colour" in replies[5]["message"]
    assert all("\n" not in r.get("message", "") for r in replies)
    assert replies[3]["ok"] and good["ok"] and counters["refused"] == 6


def test_idle_sessions_are_dropped_after_their_timeout():
    spec = ServiceSpec("idle", "gibbs", {"num_chains": 5, "sweeps": 1})

    async def body(service):
        gone = await _open(service, 1, timeout_s=0.2)
        kept = await _open(service, 2, timeout_s=600)
        for _ in range(100):  # the reaper runs every 0.5 s; poll for up to 10 s
            if gone not in service.sessions:
                break
            await asyncio.sleep(0.1)
        late = await service.draw(gone, _draw_request(rbm(2, 2, seed=1), 5))
        alive = await service.draw(kept, _draw_request(rbm(2, 2, seed=1), 5))
        return late, alive, (await service.status())["counters"]

    late, alive, counters = _run(_with_service(spec, body))
    assert late["error"] == "unknown_session" and alive["ok"]
    assert counters["sessions_dropped"] == 1


def test_accounting_per_session_and_service():
    spec = ServiceSpec("acct", "gibbs", {"num_chains": 20, "sweeps": 2}, packing=True)
    model = rbm(3, 3, seed=1)

    async def body(service):
        a, b = await _open(service, 1), await _open(service, 2)
        for n in (20, 40, 60):
            await asyncio.gather(service.draw(a, _draw_request(model, n)),
                                 service.draw(b, _draw_request(model, n)))
        last = await service.draw(a, _draw_request(model, 5))
        return last["info"], await service.status()

    info, status = _run(_with_service(spec, body))
    rows = {r["session"]: r for r in status["sessions"]}
    assert sorted(r["calls"] for r in rows.values()) == [3, 4]
    assert sorted(r["samples"] for r in rows.values()) == [120, 125]
    total = status["total"]
    assert total["calls"] == 7 and total["samples"] == 245
    assert math.isclose(total["sampling_s"], sum(r["sampling_s"] for r in rows.values()))
    assert math.isclose(total["queue_wait_s"], sum(r["queue_wait_s"] for r in rows.values()))
    assert status["counters"]["packed_calls"] == 3 and status["counters"]["packed_requests"] == 6
    assert info["service_session_calls"] == 4 and info["service_session_samples"] == 125
    assert info["service_packed_with"] == 1 and info["service_sampling_s"] > 0


def test_beta_eff_is_shared_by_the_sessions_of_one_solver():
    """Two QPU sessions (a thermal mock at β = 5): the first measures β_eff from a wrong
    guess of 2.5; the second, which never calibrated, samples with the measured value."""
    import topologies

    options = {"child_sampler": "samplers.testing:thermal_mock",
               "child_kwargs": {"topology": "chimera_c4", "beta": 5.0, "seed": 0},
               "beta_eff": 2.5, "num_reads": 300}
    spec = ServiceSpec("qpu", "qpu", options, topology="chimera_c4", packing=True)
    mask = topologies.load("chimera_c4").coupling_mask(16, 16)
    gen = torch.Generator().manual_seed(0)
    model = BipartiteModel(torch.randn(16, generator=gen) * 0.5, torch.randn(16, generator=gen) * 0.5,
                           torch.randn(16, 16, generator=gen), mask)

    async def body(service):
        a = await _open(service, 1, options={"recalibrate_every": 1})
        b = await _open(service, 2)
        first = await service.draw(a, _draw_request(model, 300))
        second = await service.draw(b, _draw_request(model, 300))
        return first, second, await service.status()

    first, second, status = _run(_with_service(spec, body))
    measured = first["info"]["beta_eff_measured"]
    assert abs(measured - 5.0) < 0.5  # the thermal mock's β, up to the estimator's error
    assert second["info"]["beta_eff"] == pytest.approx(measured)
    assert list(status["beta_eff"].values()) == [pytest.approx(measured)]
    assert second["info"]["service_qpu_access_time_us"] > 0


# ---- QPU packing: several sessions' models in one QPU call ----------------------------------

QPU_CALLS: list[int] = []   # the size of every problem the test's QPU children were sent


def counted_mock(**kwargs):
    """`thermal_mock` that records every call it receives in QPU_CALLS (the child factory of
    the QPU service tests, named 'test_service:counted_mock')."""
    from samplers.testing import thermal_mock

    child = thermal_mock(**kwargs)
    sample = child.sample

    def counted(bqm, **parameters):
        QPU_CALLS.append(len(bqm))
        return sample(bqm, **parameters)

    child.sample = counted
    return child


@pytest.fixture
def trusted_test_factory(monkeypatch):
    """This module may be named as a child factory: import paths in options are limited to
    trusted packages, and a test module is not one unless the environment says so."""
    monkeypatch.setenv("DVAEQ_TRUSTED_IMPORTS", "test_service")


def _qpu_spec(packing: bool, num_reads: int, beta_true: float = 4.0, **options) -> ServiceSpec:
    """A QPU service on a thermal mock at `beta_true`; `num_reads`: samples per call."""
    QPU_CALLS.clear()
    options = {"child_sampler": "test_service:counted_mock",
               "child_kwargs": {"topology": "chimera_c4", "beta": beta_true, "num_sweeps": 100,
                                "seed": 0},
               "beta_eff": 4.0, "num_reads": num_reads, **options}
    return ServiceSpec("qpu", "qpu", options, topology="chimera_c4", packing=packing)


async def _rounds(service, ids, models, n, rounds):
    """`rounds` rounds of concurrent draws, one per session: (samples, infos) per session."""
    out = [([], []) for _ in ids]
    for _ in range(rounds):
        replies = await asyncio.gather(*[service.draw(sid, _draw_request(m, n))
                                         for sid, m in zip(ids, models)])
        for (samples, infos), reply in zip(out, replies):
            assert reply["ok"], reply
            samples.append(decode_samples(reply["samples"]))
            infos.append(reply["info"])
    return [(torch.cat(samples), infos) for samples, infos in out]


def test_qpu_sessions_are_packed_into_one_call_and_get_their_own_samples(trusted_test_factory):
    """Two sessions with different models (one at another β) drawing together: one QPU call per
    round carries both, each session's samples pass the exact-distribution test of its own model
    (and fail against the other's), and the call's access time is split between them."""
    models = [native_model("chimera_c4", 5, 5, seed=1),
              native_model("chimera_c4", 5, 5, seed=2).with_beta(0.6)]

    async def body(service):
        ids = [await _open(service, seed=i) for i in range(2)]
        return await _rounds(service, ids, models, 2000, 3), await service.status()

    results, status = _run(_with_service(_qpu_spec(packing=True, num_reads=2000), body))
    assert QPU_CALLS == [50, 50, 50]   # three calls, each on all five 5+5 copies of C4
    assert status["counters"]["packed_calls"] == 3 and status["counters"]["device_calls"] == 3
    for a, b in zip(results[0][1], results[1][1]):
        assert a["service_packed_with"] == b["service_packed_with"] == 2
        assert a["packed_models"] == 2 and a["num_qpu_calls"] == 1 and (a["tiles"], b["tiles"]) == (3, 2)
        assert a["service_qpu_access_time_us"] + b["service_qpu_access_time_us"] == pytest.approx(
            a["call_qpu_access_time_us"]) and a["call_qpu_access_time_us"] > 0
    bounds = []
    for model, (z, _) in zip(models, results):
        states, p = exact_distribution(model)
        bounds.append(tv_mcdiarmid(p, len(z), 1e-4 / 2))  # iid bound, union over the two sessions
        assert len(z) == 6000 and 0.5 * (empirical_distribution(states, z) - p).abs().sum().item() < bounds[-1]
    for s, t in ((0, 1), (1, 0)):   # sensitivity: no session got the other's samples
        states, p_other = exact_distribution(models[t])
        assert 0.5 * (empirical_distribution(states, results[s][0]) - p_other).abs().sum().item() > 1.5 * bounds[s]


def test_unpacked_qpu_service_equals_separate_samplers(trusted_test_factory):
    """Packing off: each QPU session is its own local sampler, bit for bit, one call per draw."""
    models = [native_model("chimera_c4", 5, 5, seed=1), native_model("chimera_c4", 4, 4, seed=2)]
    spec = _qpu_spec(packing=False, num_reads=500)
    local = [samplers.get("qpu", run={"seed": i, "topology": "chimera_c4"}, **spec.options)
             for i in range(2)]
    want = [[s.sample(m, 500) for _ in range(2)] for s, m in zip(local, models)]
    QPU_CALLS.clear()

    async def body(service):
        ids = [await _open(service, seed=i) for i in range(2)]
        return await _rounds(service, ids, models, 500, 2)

    results = _run(_with_service(spec, body))
    for (z, infos), w in zip(results, want):
        assert torch.equal(z, torch.cat(w)) and all(i["service_packed_with"] == 1 for i in infos)
    assert len(QPU_CALLS) == 4


def test_packed_qpu_sessions_share_one_beta_eff_measurement(trusted_test_factory):
    """The QPU samples at β 5; sessions start from a guess of 2.5 and re-measure every call. A
    packed call measures once, from all its copies; both sessions take the value, and the next
    call programs both with it."""
    models = [native_model("chimera_c4", 8, 8, seed=s, scale=0.5) for s in (1, 2)]
    spec = _qpu_spec(packing=True, num_reads=1000, beta_true=5.0, beta_eff=2.5, recalibrate_every=1)

    async def body(service):
        ids = [await _open(service, seed=i) for i in range(2)]
        results = await _rounds(service, ids, models, 1000, 2)
        states = [decode_tree((await service.get_state(sid))["state"]["state"]) for sid in ids]
        return results, states, await service.status()

    results, states, status = _run(_with_service(spec, body))
    (_, (a1, a2)), (_, (b1, b2)) = results
    assert len(QPU_CALLS) == 2 and a1["service_packed_with"] == 2
    measured = a1["beta_eff_measured"]
    assert a1["recalibrated"] and b1["beta_eff_measured"] == measured and abs(measured - 5.0) < 0.5
    assert a2["beta_eff"] == b2["beta_eff"] == pytest.approx(measured)
    assert states[0]["calls"] == states[1]["calls"] == 2
    assert states[0]["beta_eff_history"] == states[1]["beta_eff_history"] == [
        2.5, pytest.approx(measured), pytest.approx(a2["beta_eff_measured"])]
    assert list(status["beta_eff"].values()) == [pytest.approx(a2["beta_eff_measured"])]


def test_a_model_the_qpu_refuses_is_refused_alone(trusted_test_factory):
    """A session whose model is out of the QPU's range fails on its own; the packed call it
    would have joined runs without it."""
    good = native_model("chimera_c4", 4, 4, seed=1)
    bad = native_model("chimera_c4", 4, 4, seed=2, scale=100.0)

    async def body(service):
        ids = [await _open(service, seed=i) for i in range(2)]
        replies = await asyncio.gather(service.draw(ids[0], _draw_request(good, 100)),
                                       service.draw(ids[1], _draw_request(bad, 100)))
        return replies, await service.status()

    (ok, refused), status = _run(_with_service(_qpu_spec(packing=True, num_reads=100), body))
    assert ok["ok"] and decode_samples(ok["samples"]).shape == (100, 8)
    assert refused["error"] == "failure" and "QPURangeError" in refused["message"]
    assert len(QPU_CALLS) == 1 and status["counters"]["packed_calls"] == 0


# ---- without Ray installed ------------------------------------------------------------------

def test_without_ray_remote_and_serve_say_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ServiceDependencyMissing, match=r"pip install 'dvae-q\[service\]'"):
        samplers.get("remote", service="any")
    run = tmp_path / "run"
    code = main(["train", "--config", "smoke", "--sampler", "remote", "--run-dir", str(run),
                 "--set", "sampler_options.remote.service=any", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "dvae-q[service]" in err
    assert not run.exists()
    code = main(["serve", "--sampler", "gibbs", "--name", "any"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "dvae-q[service]" in err


def test_an_address_nothing_listens_on_is_one_line_at_once():
    pytest.importorskip("ray")
    # a fresh process: one already connected to Ray keeps its connection and never probes
    done = subprocess.run([sys.executable, "-m", "dvae_q.cli.main", "service", "list", "--address",
                           "127.0.0.1:1"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "nothing answers at Ray address 127.0.0.1:1" in done.stderr


def test_remote_needs_a_service_name(capsys):
    with pytest.raises(samplers.SamplerOptionError, match="needs option 'service'"):
        samplers.get("remote")
    assert main(["serve", "--sampler", "gibbs", "--name", "x",
                 "--set", "sampler_options.neal.num_sweeps=3"]) == 2
    assert "runs sampler 'gibbs', not 'neal'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, words", [
    ("svc", "NAME=AMOUNT"), ("svc=0", "AMOUNT > 0"), ("svc=x", "AMOUNT > 0"),
    ("=1", "NAME=AMOUNT"), ("CPU=1", "--num-cpus"),
])
def test_bad_resource_flags_are_one_line_input_errors(flag, words, capsys):
    assert main(["serve", "--sampler", "gibbs", "--name", "x", "--resource", flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


# ---- against a local Ray instance -----------------------------------------------------------

ray_group = pytest.mark.xdist_group("ray_service")
GIBBS = ["--set", "sampler_options.gibbs.num_chains=64", "--set", "sampler_options.gibbs.sweeps=5"]


@pytest.fixture(scope="module")
def ray_address():
    """One Ray instance for all service tests of this worker, shut down after them."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="dvae-q",
             log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def serve(ray_address, capsys):
    """serve(name, *flags) starts a service through the CLI; all are stopped afterwards."""
    from samplers.service import actor

    started = []

    def start(name, *flags):
        argv = ["serve", "--sampler", "gibbs", "--name", name, "--address", ray_address,
                "--num-cpus", "0.5", *flags]
        assert main(argv) == 0, capsys.readouterr().err
        started.append(name)
        return name

    yield start
    for name in started:
        if name in actor.names():
            actor.stop(name)


def _remote(ray_address, service, **options):
    return samplers.get("remote", service=service, address=ray_address, **options)


@ray_group
def test_serve_list_status_stop_from_the_cli(serve, ray_address, capsys):
    serve("cli-a", *GIBBS)
    out = capsys.readouterr().out
    assert "service 'cli-a' is up" in out and "sampler_options.remote.service=cli-a" in out
    sampler = _remote(ray_address, "cli-a", label="trainer-1")
    sampler.sample(rbm(4, 4, seed=1), 64)
    assert main(["service", "list", "--address", ray_address]) == 0
    assert "cli-a: gibbs (packing on), 1 sessions, 1 calls" in capsys.readouterr().out
    assert main(["service", "status", "cli-a", "--address", ray_address]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2].split()[:3] == ["session", "client", "calls"]
    assert table[3].split()[1:4] == ["trainer-1", "1", "64"] and table[-1].startswith("all")
    # the same name twice, an unknown service: one line, exit status 2
    assert main(["serve", "--sampler", "gibbs", "--name", "cli-a", "--address", ray_address]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already running" in err
    assert main(["service", "status", "nobody", "--address", ray_address]) == 2
    assert "no sampling service named 'nobody'" in capsys.readouterr().err
    assert main(["service", "stop", "cli-a", "--address", ray_address]) == 0
    assert "stopped service 'cli-a' (1 open sessions ended)" in capsys.readouterr().out
    assert main(["service", "status", "cli-a", "--address", ray_address]) == 2


@ray_group
def test_remote_sampler_is_the_local_sampler_with_accounting(serve, ray_address):
    """Packing off: remote draws equal local `gibbs` draws bit for bit, on a masked (sparse on
    the wire) model; state_dict/load_state_dict move the session into a fresh one."""
    import topologies

    serve("plain", "--no-packing", *GIBBS)
    mask = topologies.load("chimera_c4").coupling_mask(8, 8)
    model = BipartiteModel(torch.randn(8), torch.randn(8), torch.randn(8, 8), mask)
    local = samplers.get("gibbs", num_chains=64, sweeps=5, seed=5)
    remote = _remote(ray_address, "plain", seed=5)
    for n in (64, 100):
        result = remote.draw(model, n)
        assert torch.equal(result.samples, local.sample(model, n))
    info = result.info
    assert info["service_session_calls"] == 2 and info["service_session_samples"] == 164
    assert info["chain_sweeps"] == (5 + 1) * 64 and info["service_reconnects"] == 0
    assert result.samples.dtype == torch.float32
    state = remote.state_dict()
    assert state["sampler"] == "gibbs" and torch.equal(state["state"]["chains"],
                                                       local.state_dict()["chains"])
    fresh = _remote(ray_address, "plain", seed=999)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.sample(model, 64), local.sample(model, 64))
    remote.close()
    fresh.close()


@ray_group
def test_refused_requests_are_one_line_input_errors(serve, ray_address, tmp_path, capsys):
    from samplers.service import actor
    from samplers.service.errors import UnknownService, UnknownSession

    serve("strict", "--topology", "chimera_c4", *GIBBS)
    wrong = _remote(ray_address, "strict", topology="pegasus_p4")
    with pytest.raises(BadRequest, match="differs from the service's 'chimera_c4'"):
        wrong.sample(rbm(4, 4, seed=1), 8)
    with pytest.raises(UnknownService, match="no sampling service named 'absent'"):
        _remote(ray_address, "absent").sample(rbm(4, 4, seed=1), 8)
    ok = _remote(ray_address, "strict")
    ok.sample(rbm(4, 4, seed=1), 8)
    ok._client.session = "made-up"
    with pytest.raises(UnknownSession, match="has no session 'made-up'"):
        ok.sample(rbm(4, 4, seed=1), 8)
    # through the CLI: the trainer's preflight asks the service before anything is written;
    # bad session options or an unknown service are bad input, exit 2, no run directory
    run = tmp_path / "run"
    base = ["train", "--config", "smoke", "--sampler", "remote", "--run-dir", str(run),
            "--quiet", "--topology", "chimera_c4",
            "--set", f"sampler_options.remote.address={ray_address}"]
    for extra, words in ((["--set", "sampler_options.remote.service=strict",
                           "--set", "sampler_options.remote.options={num_chains: -1}"],
                          "num_chains"),
                         (["--set", "sampler_options.remote.service=absent"],
                          "no sampling service named 'absent'")):
        code = main([*base, *extra])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and words in err
        assert not run.exists()
    status = actor.call(actor.find("strict"), "status")
    assert status["counters"]["sessions_opened"] == 1  # `ok`s: a refusal or a preflight opens none


def _pattern_model(client: int, call: int) -> BipartiteModel:
    """Biases of ±800 pin every unit (σ(±800) is exactly 1 or 0 in float32), so the samples
    are exactly the bits of (client, call): any mixed-up or lost reply shows."""
    bits = lambda v: torch.tensor([(v >> i) & 1 for i in range(16)], dtype=torch.float32)  # noqa: E731
    return BipartiteModel(bits(client * 4099 + 1) * 1600 - 800, bits(call) * 1600 - 800,
                          torch.zeros(16, 16))


def load_test(ray_address, service: str, clients: int, calls: int) -> tuple[list, dict]:
    """`clients` threads, each its own session, `calls` draws each; returns the per-call
    latencies (s) and the failures, after checking every reply against its pattern."""
    latencies, failures = [], []

    def client(c):
        sampler = _remote(ray_address, service, label=f"load-{c}")
        try:
            for k in range(calls):
                model = _pattern_model(c, k)
                start = time.perf_counter()
                z = sampler.sample(model, 64)
                latencies.append(time.perf_counter() - start)
                want = torch.cat([model.a_left > 0, model.a_right > 0]).float()
                if not torch.equal(z, want.expand(64, -1)):
                    failures.append((c, k))
        except Exception as exc:  # reported by the caller's assert
            failures.append((c, repr(exc)))
        finally:
            sampler.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, failures


@ray_group
def test_load_test_loses_and_mixes_nothing(serve, ray_address):
    from samplers.service import actor

    serve("load", "--set", "sampler_options.gibbs.num_chains=64",
          "--set", "sampler_options.gibbs.sweeps=2")
    latencies, failures = load_test(ray_address, "load", clients=4, calls=25)
    assert failures == [] and len(latencies) == 100
    q = np.percentile(np.array(latencies) * 1000, [50, 90, 99])
    print(f"\nload test 4 x 25: latency p50 {q[0]:.1f} ms, p90 {q[1]:.1f} ms, p99 {q[2]:.1f} ms")
    status = actor.call(actor.find("load"), "status")
    assert status["total"]["calls"] == 100 and status["total"]["samples"] == 6400
    counters = status["counters"]
    # every request went through exactly one device call: alone, or packed with others
    assert counters["device_calls"] - counters.get("packed_calls", 0) \
        + counters.get("packed_requests", 0) == 100


@ray_group
def test_reconnects_to_a_service_restarted_by_ray(serve, ray_address):
    """With --max-restarts the service comes back after its process dies; the trainer's next
    call rebuilds its session from the last state it saved plus the draws made since (replayed),
    so its samples are those the lost session would have drawn, and its info says so."""
    import ray

    from samplers.service import actor

    serve("phoenix", "--max-restarts", "1", "--no-packing", *GIBBS)
    model = rbm(5, 5, seed=2)
    remote = _remote(ray_address, "phoenix", seed=3, reconnect_timeout_s=60)
    local = samplers.get("gibbs", num_chains=64, sweeps=5, seed=3)
    remote.sample(model, 64)
    remote.state_dict()
    remote.sample(model, 64)  # not saved: replayed into the rebuilt session
    for _ in range(2):
        local.sample(model, 64)
    before = actor.call(actor.find("phoenix"), "ping")["incarnation"]
    ray.kill(actor.find("phoenix"), no_restart=False)
    for _ in range(600):  # ray.kill returns at once: wait until the old process is gone
        try:
            if actor.call(actor.find("phoenix"), "ping", timeout=1)["incarnation"] != before:
                break
        except Exception:  # restarting
            pass
        time.sleep(0.1)
    result = remote.draw(model, 64)
    assert result.info["service_reconnects"] == 1 and result.info["service_replayed_draws"] == 1
    assert torch.equal(result.samples, local.sample(model, 64))
    assert torch.equal(remote.state_dict()["state"]["chains"], local.state_dict()["chains"])
    remote.close()


def test_the_replay_log_is_bounded_by_state_reads(monkeypatch):
    """After REPLAY_LIMIT unsaved draws the client reads the session's state itself, so a
    restart never replays more than that; a sampler the service does not declare replayable
    keeps no log at all."""
    from samplers.service import client as client_module

    calls = []

    class FakeClient(client_module.ServiceClient):
        def _session_call(self, method, *args):
            calls.append(method)
            if method == "draw":
                return {"ok": True, "info": {}, "samples": encode_samples(torch.zeros(2, 9))}
            return {"ok": True, "state": {"sampler": "gibbs", "state": encode_tree({})}}

    monkeypatch.setattr(client_module, "REPLAY_LIMIT", 3)
    client = FakeClient("svc")
    model = rbm(4, 5, seed=1)
    for _ in range(7):
        client.draw(model, 2)
    assert calls.count("get_state") == 2 and len(client.replay) == 1
    client.replay = None  # as _open sets it for a sampler outside session.REPLAYABLE
    client.draw(model, 2)
    assert client.replay is None and calls.count("get_state") == 2


# ---- trainers in their own processes --------------------------------------------------------

STEPS = 12


def _train(run: Path, seed: int, *sampler_args, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "dvae_q.cli.main", "train", "--config", "smoke", "--run-dir",
            str(run), "--quiet", "--seed", str(seed), "--set", f"steps={steps}",
            "--set", "checkpoint_every=1", "--set", "eval_every=1000000", "--set", "log_every=1",
            "--set", "eval_limit=20", "--set", "eval_iw_samples=4",
            "--set", "final_iw_samples=4", *sampler_args]


def _remote_args(ray_address, service):
    return ["--sampler", "remote", "--set", f"sampler_options.remote.service={service}",
            "--set", f"sampler_options.remote.address={ray_address}"]


def _env():
    # read when called: ray.init sets RAY_AUTH_MODE=token here, which a process connecting by
    # explicit address needs; one thread, as the service's, for the same rounding
    return dict(os.environ, OMP_NUM_THREADS="1")


def _start(cmd):
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory):
    """The reference: two short trainings with the local `gibbs` sampler, seeds 1 and 2,
    started at once in the background; waiting for them is the caller's."""
    root = tmp_path_factory.mktemp("local")
    procs = {s: _start(_train(root / f"seed{s}", s, "--sampler", "gibbs")) for s in (1, 2)}
    done = {}

    def wait(seed):
        if seed not in done:
            _finish(procs[seed])
            done[seed] = root / f"seed{seed}"
        return done[seed]

    return wait


@ray_group
def test_two_trainers_on_one_service_match_local_runs_bit_for_bit(serve, ray_address,
                                                                   local_runs, tmp_path):
    serve("shared", "--no-packing", *GIBBS)
    procs = {s: _start(_train(tmp_path / f"seed{s}", s, *_remote_args(ray_address, "shared")))
             for s in (1, 2)}
    for seed, proc in procs.items():
        _finish(proc)
        assert_same_run(local_runs(seed), tmp_path / f"seed{seed}", STEPS)
    from samplers.service import actor

    totals = actor.call(actor.find("shared"), "status")["total"]
    assert totals["calls"] == 2 * STEPS and totals["samples"] == 2 * STEPS * 64


@ray_group
def test_killed_trainer_resumes_exactly_after_the_service_restarts(serve, ray_address,
                                                                   local_runs, tmp_path):
    from samplers.service import actor

    serve("restart", "--no-packing", *GIBBS)
    run = tmp_path / "killed"
    proc = _start(_train(run, 1, *_remote_args(ray_address, "restart")))
    reached = kill_at_step(proc, run, STEPS // 2)
    assert STEPS // 2 <= reached < STEPS, "the kill must interrupt the run"
    actor.stop("restart")
    serve("restart", "--no-packing", *GIBBS)  # a new service: the old sessions are gone
    resumed = subprocess.run([sys.executable, "-m", "dvae_q.cli.main", "train", "--resume", str(run),
                              "--quiet"], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(local_runs(1), run, STEPS)


@ray_group
def test_a_dead_service_stops_the_trainer_with_exit_1_and_its_checkpoint(serve, ray_address,
                                                                         tmp_path):
    from samplers.service import actor

    serve("mortal", *GIBBS)
    run = tmp_path / "run"
    # checkpoints only at step 0 (before any call): the service then dies during a draw, not
    # while the training loop saves its state (that path is the loop's, see the report)
    cmd = _train(run, 1, *_remote_args(ray_address, "mortal"), steps=100_000)
    proc = _start([*cmd, "--set", "checkpoint_every=100000"])
    for _ in range(6000):  # poll for up to 5 minutes until it has drawn a few times
        if (run / "metrics.csv").is_file() and len(metrics.read(run / "metrics.csv")) >= 3:
            break
        time.sleep(0.05)
    actor.stop("mortal")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "sampling service 'mortal' is gone" in lines[0]
    assert "checkpoint_last.pt" in lines[0]
    assert checkpoint.load(run / checkpoint.LAST)["step"] == 0
