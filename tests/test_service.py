"""The sampling service: wire format, packing, sessions, accounting, faults, and the `remote`
sampler end to end against one local Ray instance.

The first half needs no Ray: it drives the service's asyncio core directly. The second half
shares one module-scoped Ray instance (`ray_address`), and all of it runs on one pytest-xdist
worker (`xdist_group`, with `--dist loadgroup` in the Makefile) so CI starts one cluster.
"""

import asyncio
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import samplers
from dvae_q import checkpoint
from dvae_q.cli import main
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
from test_samplers import brute_force, empirical, rbm, tv_bound

REPO = Path(__file__).resolve().parents[1]


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

    sampler = samplers.get("gibbs", num_chains=7, sweeps=2, seed=4)
    sampler.sample(rbm(3, 4, seed=1), 7)
    state = {"inner": sampler.state_dict(), "history": [1.0, 2.5], "n": np.int64(3)}
    back = decode_tree(encode_tree(state))
    assert torch.equal(back["inner"]["chains"], state["inner"]["chains"])
    assert torch.equal(back["inner"]["generator"], state["inner"]["generator"])
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
    # and one (chains, n_L) uniform draw; 120 samples of 50 chains = 4 sweeps + 2 x 2 thinning
    gen = torch.Generator().manual_seed(10)
    torch.randint(0, 2, (50, 12), generator=gen)
    for _ in range(4 + 2 + 2):
        torch.rand((50, 7), generator=gen, dtype=torch.float64)
        torch.rand((50, 5), generator=gen, dtype=torch.float64)
    assert torch.equal(members[0].generator.get_state(), gen.get_state())


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


def test_remote_needs_a_service_name(capsys):
    with pytest.raises(samplers.SamplerOptionError, match="needs option 'service'"):
        samplers.get("remote")
    assert main(["serve", "--sampler", "gibbs", "--name", "x",
                 "--set", "sampler_options.neal.num_sweeps=3"]) == 2
    assert "runs sampler 'gibbs', not 'neal'" in capsys.readouterr().err
