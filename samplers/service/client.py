"""The trainer's side of a session: open it, draw, read and write its state, keep it alive, and
survive a restarted service.

* Sessions open lazily, on the first draw or state load, so building a trainer never needs the
  service.
* A heartbeat thread touches the session every third of its timeout, so a live trainer keeps
  its session through long evaluations, and a trainer that disappears loses it.
* If the service dies: when it was started with `max_restarts` > 0 the client waits up to
  `reconnect_timeout_s` for Ray to bring it back, reopens its session from the last state it
  holds (the last one it saved or loaded) and retries the call, counting `service_reconnects`;
  otherwise, or when the service does not come back, it raises `ServiceUnavailable` (a
  RuntimeError) at once.
* Exact continuation. The trainer goes on from its last call, not from its last checkpoint, so
  a session reopened from the last saved state alone would rewind its chains under a model
  that moved on. For a sampler whose draws are a pure function of its state (the service says
  so when the session opens: `session.REPLAYABLE`), the client therefore keeps the draw
  requests made since that state and, after a restart, replays them into the new session
  (discarding their samples) before it retries: the chains and the random stream are then
  exactly where the lost session left them. The log is bounded: every REPLAY_LIMIT draws or
  REPLAY_BYTES of requests the client reads the session's state itself, which empties it. For
  other samplers (a QPU) the session continues from the last state, which is not exact.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref

import ray
import torch

from samplers.model import BipartiteModel
from samplers.service import actor, head
from samplers.service.errors import (
    REPLY_ERRORS,
    ServiceFailure,
    ServiceUnavailable,
    UnknownService,
    one_line,
)
from samplers.service.wire import (
    WIRE_VERSION,
    decode_samples,
    decode_tree,
    encode_model,
    encode_tree,
    message_bytes,
)

RETRY_POLL_S = 0.5
# the replay log's bounds: a restart costs at most this many extra draws, and the client holds
# at most this much of the models it sent
REPLAY_LIMIT = 32
REPLAY_BYTES = 64 << 20


class _Restarted(Exception):
    """The service came back under a new incarnation: reopen the session and retry."""


def _close_at_exit(live: dict) -> None:
    """Close the session when the trainer exits (its client object may be gone by then)."""
    # after ray.shutdown() a call would start a new Ray instance instead (Ray's auto-init)
    if live.get("session") is not None and ray.is_initialized():
        try:
            ray.get(live["handle"].close_session.remote(live["session"]), timeout=2)
        except Exception:  # closing is a courtesy: the service drops idle sessions anyway
            pass


def _heartbeat(ref: weakref.ref, stop: threading.Event, period: float) -> None:
    while not stop.wait(period):
        client = ref()
        if client is None:
            return
        client.touch()
        del client


class ServiceClient:
    def __init__(self, service: str, *, address: str | None = None, seed: int | None = None,
                 topology: str | None = None, options: dict | None = None,
                 timeout_s: float = 120.0, reconnect_timeout_s: float = 120.0,
                 request_timeout_s: float = 600.0, label: str = "-"):
        self.service, self.address = service, address
        self.request = {"v": WIRE_VERSION, "seed": seed, "topology": topology,
                        "options": dict(options or {}), "timeout_s": float(timeout_s),
                        "label": label}
        self.reconnect_timeout_s = reconnect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.handle = None
        self.session: str | None = None
        self.incarnation: str | None = None
        self.description: dict = {}
        self.last_state: dict | None = None  # state message the session was last saved/loaded as
        # draw requests since last_state, to replay after a restart; None: not replayable
        self.replay: list[dict] | None = []
        self._replay_bytes = 0
        self.reconnects = self.replayed = 0
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self._live: dict = {}  # the open session, for the exit hook

    # ---- connection ------------------------------------------------------------------------
    def _call(self, method: str, *args) -> dict:
        """One call; a dead or restarting service raises _Restarted or ServiceUnavailable."""
        try:
            return ray.get(getattr(self.handle, method).remote(*args),
                           timeout=self.request_timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise ServiceUnavailable(f"sampling service '{self.service}' did not answer within "
                                     f"{self.request_timeout_s:g} s") from None
        except ray.exceptions.RayActorError as exc:
            self._await_restart(exc)
            raise _Restarted() from None
        except ray.exceptions.RayTaskError as exc:  # a bug inside the service: not the caller's
            raise ServiceFailure(f"sampling service '{self.service}' failed: "
                                 f"{one_line(exc.cause if exc.cause else exc)}") from None

    def _await_restart(self, exc: Exception) -> None:
        """Wait for a restarted service, or raise ServiceUnavailable."""
        gone = (f"sampling service '{self.service}' is gone ({type(exc).__name__}); start it "
                f"again and resume from the last checkpoint")
        if not self.description.get("max_restarts") or self.reconnect_timeout_s <= 0:
            raise ServiceUnavailable(gone) from None
        deadline = time.monotonic() + self.reconnect_timeout_s
        while time.monotonic() < deadline:
            try:
                self.handle = actor.find(self.service)
                reply = ray.get(self.handle.ping.remote(), timeout=RETRY_POLL_S * 4)
                if reply.get("incarnation") != self.incarnation:
                    return
            except (UnknownService, ray.exceptions.RayError):
                pass
            time.sleep(RETRY_POLL_S)
        raise ServiceUnavailable(gone + f"; it did not come back within "
                                        f"{self.reconnect_timeout_s:g} s") from None

    def _raise_refusal(self, reply: dict) -> None:
        if (reply["error"] == "unknown_session" and reply.get("incarnation") != self.incarnation
                and self.description.get("max_restarts")):
            raise _Restarted()  # Ray restarted the service between two of our calls
        raise REPLY_ERRORS.get(reply["error"], ServiceFailure)(
            f"sampling service '{self.service}': {reply['message']}")

    def _open(self) -> None:
        if self.handle is None:
            head.connect(self.address)
            self.handle = actor.find(self.service)
        request = dict(self.request, state=self.last_state)
        reply = self._call("open_session", request)
        if not reply["ok"]:
            self._raise_refusal(reply)
        session, self.incarnation = reply["session"], reply["incarnation"]
        self.description = reply["service"]
        if not reply.get("replayable"):
            self.replay = None
        for logged in self.replay or ():  # bring a rebuilt session to where the lost one was
            replayed = self._call("draw", session, logged)
            if not replayed["ok"]:
                self._raise_refusal(replayed)
            self.replayed += 1
        self.session = session
        self._live.update(handle=self.handle, session=self.session)
        if self._beat is None:
            period = self.request["timeout_s"] / 3
            self._beat = threading.Thread(target=_heartbeat, daemon=True,
                                          args=(weakref.ref(self), self._stop, period))
            self._beat.start()
            # before Ray's own exit hook (registered earlier, so run later) disconnects us
            atexit.register(_close_at_exit, self._live)

    def _session_call(self, method: str, *args) -> dict:
        """A call on this client's session, opening it first and reopening it (once) after a
        restart of the service."""
        for attempt in range(2):
            try:
                if self.session is None:
                    self._open()
                reply = self._call(method, self.session, *args)
                if not reply["ok"]:
                    self._raise_refusal(reply)
                return reply
            except _Restarted:
                if attempt:
                    break
                self.session = None
                self.reconnects += 1
        raise ServiceUnavailable(f"sampling service '{self.service}' restarted again while "
                                 "reconnecting")

    # ---- the session's operations -----------------------------------------------------------
    def draw(self, model: BipartiteModel, num_samples: int) -> tuple[torch.Tensor, dict]:
        """(uint8 samples, info) of one call."""
        request = {"model": encode_model(model), "num_samples": num_samples}
        reply = self._session_call("draw", request)
        info = dict(reply["info"], service_reconnects=self.reconnects,
                    service_replayed_draws=self.replayed)
        samples = decode_samples(reply["samples"])
        if self.replay is not None:
            self.replay.append(request)
            self._replay_bytes += message_bytes(request["model"])
            if len(self.replay) >= REPLAY_LIMIT or self._replay_bytes >= REPLAY_BYTES:
                self.get_state()  # a fresh starting point, so the log stays short
        return samples, info

    def saved(self, message: dict | None) -> None:
        """The session's state is now `message` (None: its initial state): the replay log
        restarts from it."""
        self.last_state = message
        if self.replay is not None:
            self.replay = []
            self._replay_bytes = 0

    def get_state(self) -> dict:
        """The session's sampler state: {'sampler': name, 'state': tree of tensors}."""
        message = self._session_call("get_state")["state"]
        self.saved(message)
        return {"sampler": message["sampler"], "state": decode_tree(message["state"])}

    def set_state(self, sampler: str | None, state: dict) -> None:
        """Restore the session's sampler: now if the session is open, else when it opens (so
        loading a checkpoint needs no service)."""
        message = {"v": WIRE_VERSION, "kind": "state", "sampler": sampler,
                   "state": encode_tree(state)}
        if self.session is not None:
            self._session_call("set_state", message)
        self.saved(message)

    def check(self) -> None:
        """Preflight: the service exists and would accept this session; opens nothing."""
        if self.handle is None:
            head.connect(self.address)
            self.handle = actor.find(self.service)
        try:
            reply = self._call("check_session", dict(self.request))
        except (_Restarted, ServiceUnavailable) as exc:
            raise UnknownService(f"sampling service '{self.service}' does not answer "
                                 f"({one_line(exc) or 'restarting'})") from None
        if not reply["ok"]:
            self._raise_refusal(reply)

    def touch(self) -> None:
        if self.session is not None and self.handle is not None and ray.is_initialized():
            try:
                self.handle.touch.remote([self.session])
            except Exception:  # a heartbeat never fails the trainer; the next call reports
                pass

    def close(self) -> None:
        self._stop.set()
        _close_at_exit(self._live)
        self._live["session"] = self.session = None

    def __del__(self):
        self._stop.set()
        if self._live.get("session") is not None and ray.is_initialized():
            try:  # without waiting: a finaliser must not block
                self._live["handle"].close_session.remote(self._live["session"])
            except Exception:
                pass
            self._live["session"] = None
