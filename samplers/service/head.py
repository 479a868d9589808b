"""Connecting to Ray, and the local Ray head that dvae-q starts when there is none.

What a user of this machine can rely on:

* Token authentication is always on. Every Ray instance dvae-q starts runs with
  RAY_AUTH_MODE=token, and every connection sends the token, from RAY_AUTH_TOKEN, then
  RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. Ray itself creates that file readable by every
  local user, and anyone who can read the token can run code in the actor that holds a D-Wave
  client. So dvae-q creates the file itself with mode 0600 (an existing file is narrowed to
  0600). A process that explicitly disables token auth is refused.
* The head dvae-q starts (and the local instance of `reproduce`) listens on 127.0.0.1 only.
  Ray has no bind-address option: each of its servers (GCS, raylet, object manager, agents,
  client server, every worker's RPC server) binds loopback exactly when its node's address is
  loopback, and Ray rewrites a loopback node address to the machine's network address unless
  its single-machine switch RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is 0. So the head starts with
  `--node-ip-address 127.0.0.1` and that switch at 0, and a process joining a loopback address
  sets it while it joins (`loopback_only`). Such a head takes no other machine's nodes; a
  cluster is one the user starts (`ray start --head`) and names with --address, protected by
  the token. See README, "Who can reach a service".
* The head dvae-q starts has `/` as its working directory. A head started from the caller's
  folder would keep that folder as the working directory of every worker it spawns, and once
  the folder is deleted every new worker dies while importing torch.
* Nothing here waits on a dead address. An address, given or found in Ray's record of the
  current cluster, is probed first (a TCP connect, PROBE_TIMEOUT_S). A refused token, a Ray or
  Python version mismatch, or a cluster that does not answer becomes one line, and no call
  takes longer than about 30 s.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import ray

from samplers.service import NAMESPACE
from samplers.service.errors import BadRequest, ServiceUnavailable, UnknownService, one_line

START_TIMEOUT_S = 120.0
HEAD_START_WAIT_S = 60
# Ray's default GCS port, which `ray start --address` on other nodes expects; DVAEQ_RAY_PORT
# picks another, e.g. for a second user's head on the same machine
PORT_ENV, DEFAULT_PORT = "DVAEQ_RAY_PORT", 6379
PROBE_TIMEOUT_S = 5.0
MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
# how many times (about one a second) this process's Ray client asks a GCS that accepts the
# connection but refuses it, e.g. for a wrong token: Ray's default, 20, leaves little of the
# 30 s budget. Only for this process: the head it starts keeps Ray's own start-up waits.
GCS_WAIT_ENV, GCS_WAIT_S = "RAY_gcs_server_port_wait_time_s", 8
# the same for Ray Client (ray://): its first wait between attempts, then 5 s more each time
CLIENT_WAIT_ENV, CLIENT_WAIT_S = "RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S", 2


# Ray's own switch for single-machine instances (see the module docstring)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOOPBACK_HOSTS = ("localhost", "::1")


class AuthRefused(BadRequest):
    """The cluster refused this process's token (none, or not the cluster's)."""


def token_path() -> Path:
    return Path(os.environ.get(TOKEN_PATH_ENV) or Path.home() / ".ray" / "auth_token")


def require_token_auth(create: bool) -> None:
    """Turn token authentication on for this process and the Ray processes it starts. A token
    that is not in the environment lives in a file only its owner can read; with `create`
    (this process may start a head), the file is created if missing."""
    mode = os.environ.get(MODE_ENV)
    if mode is not None and mode.lower() != "token":
        raise BadRequest(f"{MODE_ENV}={mode}: dvae-q never starts or joins a Ray cluster "
                         "without token authentication; unset it")
    settings = {MODE_ENV: "token", GCS_WAIT_ENV: str(GCS_WAIT_S),
                CLIENT_WAIT_ENV: str(CLIENT_WAIT_S)}
    if any(os.environ.get(k) is None for k in settings):
        for key, value in settings.items():
            os.environ.setdefault(key, value)
        # Ray reads its settings when it is imported: read them again, or this process would
        # connect without sending the token
        from ray._raylet import Config

        Config.initialize("")
    path = token_path()
    if os.environ.get(TOKEN_ENV) or not (create or path.is_file()):
        return
    try:
        if path.is_file():
            if path.stat().st_mode & 0o077:
                os.chmod(path, 0o600)  # Ray writes it world-readable; the token is the key
            return
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))  # Ray's own format: 256 random bits as hex
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()  # it may have cached "no token"
    except FileExistsError:  # another dvae-q process created it at the same moment
        return
    except OSError as exc:
        raise BadRequest(f"cannot create the Ray token file {path} "
                         f"({exc.strerror or type(exc).__name__}); set {TOKEN_PATH_ENV} to a "
                         "writable path") from None


def _ray_binary() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.is_file() else (shutil.which("ray") or "ray")


def head_port() -> int:
    text = os.environ.get(PORT_ENV) or str(DEFAULT_PORT)
    if not text.isdigit() or not 1024 <= int(text) <= 65535:
        raise BadRequest(f"{PORT_ENV}={text}: a port number from 1024 to 65535")
    return int(text)


def start_local_head(network: bool = False) -> None:
    """A local Ray head that outlives this process (a detached actor needs it to): on
    127.0.0.1 only, or with `network` on the machine's address (other machines may join)."""
    port = head_port()
    try:  # Ray's own failure here is a GCS timeout that names a log file, not the port
        socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT_S).close()
    except OSError:
        pass
    else:
        raise ServiceUnavailable(f"port {port}, where a new Ray head listens, is taken by "
                                 "another program (a Ray instance this process does not know "
                                 f"of?); join it with --address, stop it, or set {PORT_ENV}")
    cmd = [_ray_binary(), "start", "--head", "--include-dashboard=false",
           "--disable-usage-stats", f"--port={port}"]
    env = dict(os.environ)
    if not network:
        cmd.append("--node-ip-address=127.0.0.1")
        env[LOOPBACK_ENV] = "0"
    if env.get(GCS_WAIT_ENV) == str(GCS_WAIT_S):
        # a head's GCS on a loaded machine can take longer than Ray's default 20 s to answer
        env[GCS_WAIT_ENV] = str(HEAD_START_WAIT_S)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT_S,
                              cwd="/", env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceUnavailable(f"could not start a local Ray instance ({one_line(exc)})") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServiceUnavailable(f"`ray start --head` failed: {tail[0]}{_gcs_log_tail(tail[0])}")


def _gcs_log_tail(message: str) -> str:
    """The last line of the GCS log Ray's message names, so that the one line says why."""
    import re

    named = re.search(r"(/\S+gcs_server\.(?:out|err))", message)
    if not named:
        return ""
    for name in (named.group(1), named.group(1).replace(".out", ".err")):
        try:
            lines = [line for line in Path(name).read_text().splitlines() if line.strip()]
        except OSError:
            continue
        if lines:
            return f" (GCS log: {lines[-1].strip()[:300]})"
    return ""


def is_loopback(address: str) -> bool:
    """Whether a Ray address ("host:port", not ray://) names this machine's loopback."""
    host = address.rpartition(":")[0].strip("[]")
    return host.startswith("127.") or host in LOOPBACK_HOSTS


@contextmanager
def loopback_only():
    """Ray, for the block, keeps loopback addresses as they are: the node this process starts
    or joins is 127.0.0.1, so every server it and its raylet start binds loopback only. Set
    only while joining: a process on a networked cluster's node must report its real address."""
    from ray._private import ray_constants

    saved_env, saved = os.environ.get(LOOPBACK_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_ENV], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = saved_env


def probe(address: str) -> None:
    """Refuse at once an address nothing listens on, or a process that accepts connections but
    does not speak (a stopped or hung head): Ray itself would wait for minutes, or forever."""
    import grpc

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except ValueError:
        raise UnknownService(f"Ray address '{address}' is not host:port or ray://host:port") from None
    except OSError as exc:
        raise UnknownService(f"nothing answers at Ray address {address} "
                             f"({exc.strerror or exc})") from None
    # Ray's servers speak gRPC: a live one completes the HTTP/2 handshake in milliseconds
    channel = grpc.insecure_channel(address.removeprefix("ray://"))
    try:
        grpc.channel_ready_future(channel).result(timeout=PROBE_TIMEOUT_S)
    except grpc.FutureTimeoutError:
        raise ServiceUnavailable(f"the Ray cluster at {address} accepts connections but does "
                                 f"not answer within {PROBE_TIMEOUT_S:g} s (a stopped or hung "
                                 "head?)") from None
    finally:
        channel.close()


def local_address() -> str | None:
    """The cluster Ray's "auto" would join: $RAY_ADDRESS, else the one this machine started
    last (Ray's own record of it)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from ray._private.utils import read_ray_address

    return read_ray_address() or None


@contextmanager
def _held_messages():
    """Hold what Ray says while it connects, so that a failure is reported in one line and
    classified by its cause: the C++ client writes each failed attempt to file descriptor 2,
    Ray Client logs each refused attempt at debug level."""
    held = tempfile.TemporaryFile(mode="w+")
    saved = os.dup(2)
    sys.stderr.flush()
    os.dup2(held.fileno(), 2)
    lines: list[str] = []
    client_log = logging.getLogger("ray.util.client.worker")
    collect = logging.Handler(logging.DEBUG)
    collect.emit = lambda record: lines.append(record.getMessage())
    level, propagate = client_log.level, client_log.propagate
    client_log.addHandler(collect)
    client_log.setLevel(logging.DEBUG)
    client_log.propagate = False
    try:
        yield lines
    finally:
        client_log.removeHandler(collect)
        client_log.setLevel(level)
        client_log.propagate = propagate
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        held.seek(0)
        lines.extend(held.read().splitlines())
        held.close()


def join(address: str, namespace: str = NAMESPACE) -> None:
    """`ray.init` of the cluster at `address`, its failures as one classified line."""
    quiet = dict(namespace=namespace, logging_level=logging.ERROR)
    if not address.startswith("ray://"):  # Ray Client takes no log_to_driver
        quiet["log_to_driver"] = False
    with _held_messages() as native:
        try:
            if not address.startswith("ray://") and is_loopback(address):
                with loopback_only():
                    ray.init(address=address, **quiet)
            else:
                ray.init(address=address, **quiet)
            return
        except (ConnectionError, ray.exceptions.RaySystemError) as exc:
            error: BaseException = exc
        except (RuntimeError, ray.exceptions.AuthenticationError) as exc:  # version check, token
            error = exc
    text = " ".join([str(error), *native])
    if isinstance(error, ray.exceptions.AuthenticationError):
        raise AuthRefused(f"the Ray cluster at {address} needs a token and this process has "
                          f"none; give it the cluster's token in {TOKEN_ENV} or a file named by "
                          f"{TOKEN_PATH_ENV}") from None
    if any(word in text for word in ("Unauthenticated", "InvalidAuthToken",
                                     "missing authentication token")):
        raise AuthRefused(f"the Ray cluster at {address} refused this process's token; give it "
                          f"the cluster's token in {TOKEN_ENV} or a file named by "
                          f"{TOKEN_PATH_ENV}") from None
    if "ersion mismatch" in text or "version" in str(error).lower():
        raise ServiceUnavailable(f"the Ray cluster at {address} runs another Ray or Python "
                                 f"version than this process ({one_line(error)})") from None
    raise ServiceUnavailable(f"the Ray cluster at {address} does not answer "
                             f"({one_line(error)})") from None


def connect(address: str | None = None, *, start: bool = False, network: bool = False) -> None:
    """Join the Ray cluster at `address` (None or "auto": the one on this machine; "ray://host:
    port" through Ray Client). With `start`, a missing local cluster is started first, on
    loopback only unless `network`. A process already connected to Ray keeps its connection."""
    if ray.is_initialized():
        return
    require_token_auth(create=start)
    if address and address != "auto":
        probe(address)
        join(address)
        return
    found = local_address()
    if found:
        try:
            probe(found)  # a hung head is ServiceUnavailable: never replaced behind its back
        except UnknownService:
            if not start:
                raise ServiceUnavailable(f"the Ray instance this machine started last ({found}) "
                                         "is gone; start a service with `dvae-q serve`") from None
            found = None  # a head that died: start a new one
    if found and network and is_loopback(found.removeprefix("ray://")):
        raise BadRequest(f"--network: the Ray instance on this machine ({found}) listens on "
                         "127.0.0.1 only; stop it (`ray stop`) to start a networked one, or "
                         "start one yourself (`ray start --head`)")
    if not found:
        if not start:
            raise UnknownService("no Ray cluster runs on this machine; start a service with "
                                 "`dvae-q serve`")
        start_local_head(network)
        found = local_address()
        if not found:
            raise ServiceUnavailable("`ray start --head` succeeded but left no address for "
                                     "this machine's cluster")
    join(found)


def cluster_address() -> str:
    return ray.get_runtime_context().gcs_address


def worker_log_hint() -> str:
    """Where the logs of the workers that failed to start are, when Ray says where."""
    try:
        logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
        newest = max(logs.glob("worker-*.err"), key=lambda p: p.stat().st_mtime)
    except (AttributeError, OSError, ValueError):
        return ""
    return f"; see {newest}"
