"""The service as a named, detached Ray actor, and the operations on it: connect to Ray, start,
find, list and stop services.

The actor is an async actor: its methods are coroutines on one event loop, forwarded to the
plain-asyncio core, so one slow draw never blocks heartbeats or `service status`. It lives in
the Ray namespace `dvae-q` under its service name, outlives the process that started it
(`lifetime="detached"`), and is restarted by Ray up to `max_restarts` times if its process dies
(sessions do not survive a restart: trainers reopen theirs, see client.py).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import ray
import torch

from samplers.service import NAMESPACE
from samplers.service.core import SamplingService, ServiceSpec
from samplers.service.errors import BadRequest, ServiceUnavailable, UnknownService, one_line

START_TIMEOUT_S = 120.0
CALL_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 5.0


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
        return await self._core.status()

    async def ping(self, session_id=None):
        return await self._core.ping(session_id)


def _ray_binary() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.is_file() else (shutil.which("ray") or "ray")


def _start_local_cluster() -> None:
    """A local Ray head that outlives this process (a detached actor needs it to)."""
    cmd = [_ray_binary(), "start", "--head", "--include-dashboard=false",
           "--disable-usage-stats"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceUnavailable(f"could not start a local Ray instance ({one_line(exc)})") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServiceUnavailable(f"`ray start --head` failed: {tail[0]}")


def connect(address: str | None = None, *, start: bool = False) -> None:
    """Join the Ray cluster at `address` (None or "auto": the one on this machine; "ray://host:
    port" through Ray Client). With `start`, a missing local cluster is started first. A process
    already connected to Ray keeps its connection."""
    if ray.is_initialized():
        return
    target = address or "auto"
    if target != "auto":
        _probe(target)
    quiet = dict(namespace=NAMESPACE, log_to_driver=False, logging_level=logging.ERROR)
    try:
        ray.init(address=target, **quiet)
        return
    except ConnectionError as exc:
        if not start or target != "auto":
            # Ray sends its token only to a cluster it found itself ("auto"), never to an
            # explicit address unless RAY_AUTH_MODE=token says so
            hint = "" if target == "auto" or os.environ.get("RAY_AUTH_MODE") else (
                "; a cluster with token authentication also needs RAY_AUTH_MODE=token")
            raise UnknownService(f"no Ray cluster at {target} ({one_line(exc)}); start a "
                                 f"service with `dvae-q serve`{hint}") from None
    _start_local_cluster()
    ray.init(address="auto", **quiet)


def _probe(address: str) -> None:
    """Refuse an address nothing listens on at once: Ray itself would retry for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT_S).close()
    except ValueError:
        raise UnknownService(f"Ray address '{address}' is not host:port or ray://host:port") from None
    except OSError as exc:
        raise UnknownService(f"nothing answers at Ray address {address} ({exc.strerror or exc}); "
                             "start a service with `dvae-q serve`") from None


def cluster_address() -> str:
    return ray.get_runtime_context().gcs_address


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
        num_gpus=spec.num_gpus, max_restarts=spec.max_restarts,
    ).remote(asdict(spec))
    try:
        return ray.get(handle.status.remote(), timeout=START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        ray.kill(handle, no_restart=True)
        raise ServiceUnavailable(f"service '{spec.name}' did not come up within "
                                 f"{START_TIMEOUT_S:g} s (not enough free CPUs or GPUs in the "
                                 "cluster?)") from None
    except ray.exceptions.RayActorError as exc:
        # the last line of Ray's report is the constructor's own error (an import error when
        # the cluster's Python lacks dvae-q, say)
        cause = [line for line in str(exc).splitlines() if line.strip()][-1:] or ["unknown"]
        raise ServiceUnavailable(f"service '{spec.name}' failed to start: "
                                 f"{cause[0].strip()}") from None


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
