"""The service as a named, detached Ray actor, and the operations on it: start, find, list and
stop services (connecting to Ray, and the local head, are `samplers.service.head`).

The actor is an async actor: its methods are coroutines on one event loop, forwarded to the
plain-asyncio core, so one slow draw never blocks heartbeats or `service status`. It lives in
the Ray namespace `dvae-q` under its service name, outlives the process that started it
(`lifetime="detached"`), and is restarted by Ray up to `max_restarts` times if its process dies
(sessions do not survive a restart: trainers rebuild theirs, see client.py). Custom resources
(`ServiceSpec.resources`) pin it to the nodes that offer them, for its restarts too.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import asdict

import ray
import torch

from samplers.service import NAMESPACE, head
from samplers.service.core import SamplingService, ServiceSpec
from samplers.service.errors import BadRequest, ServiceUnavailable, UnknownService

START_TIMEOUT_S = head.START_TIMEOUT_S
CALL_TIMEOUT_S = 30.0


@ray.remote
class ServiceActor:
    def __init__(self, spec: dict):
        spec = ServiceSpec(**spec)
        # Ray limits a worker to one thread unless told otherwise; the service's sampling gets
        # the CPUs it reserved
        torch.set_num_threads(max(1, int(spec.num_cpus)))
        self._core = SamplingService(spec)

    async def open_session(self, request):
        return await self._core.open_session(request)

    async def check_session(self, request):
        return await self._core.check_session(request)

    async def close_session(self, session_id):
        return await self._core.close_session(session_id)

    async def draw(self, session_id, request):
        return await self._core.draw(session_id, request)

    async def get_state(self, session_id):
        return await self._core.get_state(session_id)

    async def set_state(self, session_id, message):
        return await self._core.set_state(session_id, message)

    async def touch(self, session_ids):
        return await self._core.touch(session_ids)

    async def status(self):
        # where it runs: after a restart by Ray that can be another node
        return {**await self._core.status(), "node": ray.get_runtime_context().get_node_id()}

    async def ping(self, session_id=None):
        return await self._core.ping(session_id)


def find(name: str):
    """The handle of the running service `name`."""
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        raise UnknownService(f"no sampling service named '{name}' in this Ray cluster "
                             f"(namespace {NAMESPACE}); see `dvae-q service list`") from None


def call(handle, method: str, *args, timeout: float = CALL_TIMEOUT_S) -> dict:
    """One method call on a service, for operators (not the trainers' hot path)."""
    try:
        return ray.get(getattr(handle, method).remote(*args), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        raise ServiceUnavailable(f"the service did not answer within {timeout:g} s") from None
    except ray.exceptions.RayActorError as exc:
        raise ServiceUnavailable(f"the service is gone ({type(exc).__name__})") from None


def start(spec: ServiceSpec) -> dict:
    """Create the detached actor for `spec` and wait until it answers; returns its status."""
    try:
        find(spec.name)
    except UnknownService:
        pass
    else:
        raise BadRequest(f"a sampling service named '{spec.name}' is already running; stop it "
                         f"with `dvae-q service stop {spec.name}` or pick another --name")
    handle = ServiceActor.options(
        name=spec.name, namespace=NAMESPACE, lifetime="detached", num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus, max_restarts=spec.max_restarts, resources=spec.resources or None,
    ).remote(asdict(spec))
    try:
        # Ray's error thread prints a dead worker's report as it happens (on stdout): the one
        # line below says what failed and where the worker's log is
        held = io.StringIO()
        with contextlib.redirect_stdout(held), contextlib.redirect_stderr(held):
            return ray.get(handle.status.remote(), timeout=START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.kill(handle, no_restart=True)
        raise ServiceUnavailable(f"service '{spec.name}' did not come up within "
                                 f"{START_TIMEOUT_S:g} s (no node with enough free CPUs, GPUs "
                                 "and --resource in the cluster?)") from None
    except ray.exceptions.RayActorError as exc:
        # the last line of Ray's report is the constructor's own error (an import error when
        # the cluster's Python lacks dvae-q, say)
        cause = [line for line in str(exc).splitlines() if line.strip()][-1:] or ["unknown"]
        hint = head.worker_log_hint() if "never ran" in cause[0] else ""
        raise ServiceUnavailable(f"service '{spec.name}' failed to start: "
                                 f"{cause[0].strip().rstrip('.')}{hint}") from None


def names() -> list[str]:
    """Names of the dvae-q services in the cluster."""
    actors = ray.util.list_named_actors(all_namespaces=True)
    return sorted(a["name"] for a in actors if a.get("namespace") == NAMESPACE)


def stop(name: str, wait_s: float = 60.0) -> None:
    """Kill the service (no restart) and wait until its name is free; its sessions end."""
    ray.kill(find(name), no_restart=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:  # ray.kill returns before the actor is gone
        try:
            find(name)
        except UnknownService:
            return
        time.sleep(0.1)
    raise ServiceUnavailable(f"service '{name}' was killed but its name is still taken after "
                             f"{wait_s:g} s")
