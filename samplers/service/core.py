"""The sampling service itself, in plain asyncio; the Ray actor (actor.py) only forwards to it.

Every public coroutine takes and returns plain data (wire.py) and never raises for a client's
mistake: a refusal is the reply {"ok": False, "error": kind, "message": one line}, and the
service goes on serving the other sessions. Every reply names the service's incarnation (a
fresh id per start), so a client can tell a restarted service from the one it knew.

Scheduling. Draw requests join one queue. A single dispatcher takes, each round, the oldest
pending request of every session (a session's requests run in order, one at a time), waits
`pack_window_s` when packing is on so that concurrent trainers' requests meet, groups them
(`packing.plan`) and runs the groups one after another on one worker thread: the sampler's
device serves one call at a time, and the event loop stays free for heartbeats, status and new
requests. State reads and writes run on the same thread, so they never overlap a draw.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from samplers.base import TemperatureScaled
from samplers.model import BipartiteModel
from samplers.service.accounting import Usage, charge, info_share
from samplers.service.errors import BadRequest, one_line
from samplers.service.packing import PACKED, Unpackable, plan
from samplers.service.session import REPLAYABLE, Session, build_sampler, new_id
from samplers.service.wire import (
    WIRE_VERSION,
    decode_model,
    decode_tree,
    encode_samples,
    encode_tree,
    plain_info,
)

MAX_SAMPLES = 1 << 24  # per request: a refused request must not exhaust the service's memory
REAP_INTERVAL_S = 0.5
DEFAULT_SESSION_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ServiceSpec:
    """What a service runs: one sampler (name, options, topology) and how it schedules."""

    name: str
    sampler: str
    options: dict = field(default_factory=dict)
    topology: str | None = None
    packing: bool = True
    pack_window_s: float = 0.002
    max_restarts: int = 0
    num_cpus: float = 1
    num_gpus: float = 0
    # custom Ray resources it needs, e.g. {"sampler_node": 1}: only nodes that offer them can
    # host it, the first time and after a restart
    resources: dict = field(default_factory=dict)


@dataclass
class _Request:
    session: Session
    model: BipartiteModel
    num_samples: int
    future: asyncio.Future
    arrival: float


def _positive_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


class SamplingService:
    def __init__(self, spec: ServiceSpec):
        self.spec = spec
        self.incarnation = uuid.uuid4().hex
        self.started = time.time()
        self.sessions: dict[str, Session] = {}
        self.usage = Usage()
        self.counters = {"sessions_opened": 0, "sessions_dropped": 0, "device_calls": 0,
                         "packed_calls": 0, "packed_requests": 0, "refused": 0}
        self.beta_eff: dict[str, float] = {}  # per solver, shared by the sessions on it
        self._queue: list[_Request] = []
        self._wake: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="dvae-q-sampler")

    # ---- replies ---------------------------------------------------------------------------
    def _ok(self, **fields) -> dict:
        return {"ok": True, "incarnation": self.incarnation, **fields}

    def _refuse(self, kind: str, message) -> dict:
        self.counters["refused"] += 1
        return {"ok": False, "error": kind, "message": one_line(message),
                "incarnation": self.incarnation}

    def _unknown(self, session_id) -> dict:
        return self._refuse("unknown_session",
                            f"service '{self.spec.name}' has no session {session_id!r} (never "
                            "opened, closed, dropped after its timeout, or the service restarted)")

    def describe(self) -> dict:
        return {**plain_info(asdict(self.spec)), "incarnation": self.incarnation,
                "started": self.started, "sessions": len(self.sessions),
                "wire_version": WIRE_VERSION}

    # ---- background tasks, started inside the serving event loop ----------------------------
    def _start(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._dispatch()), loop.create_task(self._reap())]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._worker.shutdown(wait=True)

    async def _in_worker(self, fn, *args):
        """fn(*args) on the worker thread, as (result, None) or (None, refusal)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args), None
        except BadRequest as exc:
            return None, self._refuse("bad_request", exc)
        except Exception as exc:  # the sampler's own failure, reported to this client only
            return None, self._refuse("failure", f"{type(exc).__name__}: {one_line(exc)}")

    # ---- sessions --------------------------------------------------------------------------
    async def open_session(self, request) -> dict:
        """A new session with its own sampler, restored from request['state'] if given."""
        self._start()
        if not isinstance(request, dict) or request.get("v") != WIRE_VERSION:
            return self._refuse("bad_request", f"a session request is a dict of wire version "
                                               f"{WIRE_VERSION}")
        timeout = request.get("timeout_s", DEFAULT_SESSION_TIMEOUT_S)
        if not _positive_number(timeout):
            return self._refuse("bad_request", "a session's timeout_s must be a number > 0")
        spec = self.spec
        sampler, refusal = await self._in_worker(
            build_sampler, spec.sampler, spec.options, spec.topology, request, spec.packing)
        if refusal is None and request.get("state"):
            _, refusal = await self._in_worker(self._load_state, sampler, request["state"])
        if refusal is not None:
            return refusal
        packed = type(sampler) in PACKED.values()
        session = Session(new_id(self.incarnation), str(request.get("label") or "-")[:60],
                          sampler, float(timeout), packed)
        self.sessions[session.id] = session
        self.counters["sessions_opened"] += 1
        return self._ok(session=session.id, service=self.describe(),
                        replayable=sampler.name in REPLAYABLE)

    async def check_session(self, request) -> dict:
        """Would open_session(request) succeed? Builds the sampler and drops it: a trainer's
        preflight, before it writes anything."""
        self._start()
        if not isinstance(request, dict) or request.get("v") != WIRE_VERSION:
            return self._refuse("bad_request", f"a session request is a dict of wire version "
                                               f"{WIRE_VERSION}")
        spec = self.spec
        _, refusal = await self._in_worker(
            build_sampler, spec.sampler, spec.options, spec.topology, request, spec.packing)
        return refusal or self._ok(service=self.describe())

    async def close_session(self, session_id) -> dict:
        return self._ok(closed=self.sessions.pop(session_id, None) is not None)

    async def touch(self, session_ids) -> dict:
        """Heartbeat: the given sessions are alive; replies with the ids it does not know."""
        now, unknown = time.monotonic(), []
        for sid in session_ids if isinstance(session_ids, list) else []:
            if sid in self.sessions:
                self.sessions[sid].last_seen = now
            else:
                unknown.append(sid)
        return self._ok(unknown=unknown)

    async def _reap(self) -> None:
        """Drop sessions not heard from for longer than their timeout (their client is gone)."""
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            now = time.monotonic()
            for sid, session in list(self.sessions.items()):
                if not session.pending and now - session.last_seen > session.timeout_s:
                    del self.sessions[sid]
                    self.counters["sessions_dropped"] += 1

    # ---- state -----------------------------------------------------------------------------
    def _load_state(self, sampler, message) -> None:
        if not isinstance(message, dict) or message.get("kind") != "state":
            raise BadRequest("a sampler state message is a dict of kind 'state'")
        name = message.get("sampler")
        if name is not None and name != self.spec.sampler:
            raise BadRequest(f"the state is of sampler '{name}'; service '{self.spec.name}' "
                             f"runs '{self.spec.sampler}'")
        state = decode_tree(message.get("state"))
        try:
            sampler.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise BadRequest(f"the state does not fit sampler '{self.spec.sampler}' "
                             f"({type(exc).__name__}: {one_line(exc)})") from None

    def _read_state(self, sampler) -> dict:
        return {"v": WIRE_VERSION, "kind": "state", "sampler": self.spec.sampler,
                "state": encode_tree(sampler.state_dict())}

    async def get_state(self, session_id) -> dict:
        session = self.sessions.get(session_id)
        if session is None:
            return self._unknown(session_id)
        session.last_seen = time.monotonic()
        state, refusal = await self._in_worker(self._read_state, session.sampler)
        return refusal or self._ok(state=state)

    async def set_state(self, session_id, message) -> dict:
        session = self.sessions.get(session_id)
        if session is None:
            return self._unknown(session_id)
        session.last_seen = time.monotonic()
        _, refusal = await self._in_worker(self._load_state, session.sampler, message)
        return refusal or self._ok()

    # ---- draws -----------------------------------------------------------------------------
    async def draw(self, session_id, request) -> dict:
        """Samples of request['model'] from the session's sampler, with info and accounting."""
        self._start()
        session = self.sessions.get(session_id)
        if session is None:
            return self._unknown(session_id)
        session.last_seen = time.monotonic()
        try:
            if not isinstance(request, dict):
                raise BadRequest("a draw request is a dict")
            model = decode_model(request.get("model"))
            n = request.get("num_samples")
            if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SAMPLES:
                raise BadRequest(f"num_samples must be an int in 1..{MAX_SAMPLES}")
        except BadRequest as exc:
            return self._refuse("bad_request", exc)
        future = asyncio.get_running_loop().create_future()
        session.pending += 1
        self._queue.append(_Request(session, model, n, future, time.perf_counter()))
        self._wake.set()
        try:
            return await future
        finally:
            session.pending -= 1
            session.last_seen = time.monotonic()

    def _take_round(self) -> list[_Request]:
        """The oldest queued request of each session; the rest wait for a later round."""
        seen, batch, rest = set(), [], []
        for item in self._queue:
            (rest if item.session.id in seen else batch).append(item)
            seen.add(item.session.id)
        self._queue = rest
        return batch

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.spec.packing and self.spec.pack_window_s > 0:
                await asyncio.sleep(self.spec.pack_window_s)
            batch = self._take_round()
            try:
                for packer, group in plan(batch, self.spec.packing):
                    replies = await loop.run_in_executor(self._worker, self._guarded, packer,
                                                         group)
                    self._answer(group, replies)
            except Exception as exc:  # noqa: BLE001 - the dispatcher must outlive any round
                self._answer(batch, [self._refuse("failure", f"{type(exc).__name__}: "
                                                  f"{one_line(exc)}")] * len(batch))
            if self._queue:
                self._wake.set()

    @staticmethod
    def _answer(group: list[_Request], replies: list[dict]) -> None:
        for item, reply in zip(group, replies):
            if not item.future.done():  # a caller that went away cancels its future
                item.future.set_result(reply)

    def _guarded(self, packer, group: list[_Request]) -> list[dict]:
        """`_execute`, with anything that fails after the device call (encoding the reply,
        accounting) refused to this group alone, so the other sessions keep being served."""
        try:
            return self._execute(packer, group)
        except Exception as exc:  # noqa: BLE001 - refused to the group, the service lives on
            return [self._refuse("failure", f"{type(exc).__name__}: {one_line(exc)}")] * len(group)

    def _execute(self, packer, group: list[_Request]) -> list[dict]:
        """One device call for a group (worker thread): replies in the group's order. A group
        its packer cannot run together (`Unpackable`) runs one request at a time instead."""
        start = time.perf_counter()
        try:
            results = self._run_group(packer, group)
        except Unpackable:
            return [self._execute(None, [item])[0] for item in group]
        except ValueError as exc:  # the sampler refused this model (e.g. not on its chip)
            return [self._refuse("bad_request", exc)] * len(group)
        except Exception as exc:
            return [self._refuse("failure", f"{type(exc).__name__}: {one_line(exc)}")] * len(group)
        share = (time.perf_counter() - start) / len(group)
        self.counters["device_calls"] += 1
        if len(group) > 1:
            self.counters["packed_calls"] += 1
            self.counters["packed_requests"] += len(group)
        return [self._reply(item, z, info, start, share, len(group))
                for item, (z, info) in zip(group, results)]

    def _reply(self, item: _Request, z, info: dict, start: float, share: float, packed: int):
        usage = charge(info, item.num_samples, start - item.arrival, share)
        item.session.usage.add(usage)
        self.usage.add(usage)
        info = {"time_s": share, **plain_info(info), **info_share(usage, item.session.usage, packed)}
        return self._ok(samples=encode_samples(z), info=info)

    def _run_group(self, packer, group: list[_Request]) -> list:
        """(samples, info) per request: the packer's one call, or the session's own `draw`.
        Temperature-scaled samplers (a QPU) first take the β_eff their solver is known to
        have, and afterwards the solver has the first member's: the one that made the call,
        which re-measured it if due, and whose β_eff the others took (`QPUSampler.follow`)."""
        members = [item.session.sampler for item in group]
        # without packing each session is a sampler of its own, β_eff and its history included
        # (so a session equals a local sampler and resumes exactly); packed sessions share it
        solver = self._take_beta_eff(members) if self.spec.packing else None
        if packer is None:
            item = group[0]
            results = [members[0].draw(item.model, item.num_samples)]
        else:
            results = packer.run(members, [i.model for i in group], [i.num_samples for i in group])
        if solver is not None:
            self.beta_eff[solver] = float(members[0].beta_eff)
        return results

    def _take_beta_eff(self, members: list) -> str | None:
        """The members' solver (None for samplers without a temperature scaling), after
        setting each member's β_eff to the solver's if it is known."""
        if not all(isinstance(m, TemperatureScaled) for m in members):
            return None
        solver = repr(members[0].options.get("solver"))  # one solver: members of a group share it
        known = self.beta_eff.get(solver)
        for member in members:
            if known is not None and member.beta_eff != known:
                member.set_beta_eff(known)
        return solver

    # ---- status ----------------------------------------------------------------------------
    async def status(self) -> dict:
        now = time.monotonic()
        rows = [s.row(now) for s in self.sessions.values()]
        return self._ok(service=self.describe(), sessions=rows, total=self.usage.as_dict(),
                        counters=dict(self.counters), queued=len(self._queue),
                        beta_eff=dict(self.beta_eff))

    async def ping(self, session_id=None) -> dict:
        """Alive? With a session id: and does that session exist?"""
        if session_id is not None and session_id not in self.sessions:
            return self._unknown(session_id)
        return self._ok()
