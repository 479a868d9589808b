"""`dvae-q serve` as users run it: its own process, on a Ray head it starts itself.

Everything runs in subprocesses with a private HOME (so the token file is this test's) and a
private RAY_TMPDIR (so Ray's record of "the cluster on this machine" and its sessions are this
test's, and its processes can be told from any other Ray on the machine by their environment).
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.xdist_group("ray_service")  # one Ray at a time on one xdist worker
GIBBS = ["--set", "sampler_options.gibbs.num_chains=64", "--set", "sampler_options.gibbs.sweeps=5"]
# a real method of each of Ray's RPC services: an unauthenticated call must be refused
RAY_METHODS = ("/ray.rpc.NodeInfoGcsService/GetClusterId",
               "/ray.rpc.NodeManagerService/GetNodeStats", "/ray.rpc.ObjectManagerService/Push",
               "/ray.rpc.CoreWorkerService/GetCoreWorkerStats",
               "/ray.rpc.RayletDriver/ClusterInfo")


class Head:
    """The processes of the Ray instance this test's commands start, found by environment."""

    def __init__(self, root: Path):
        self.root = root
        self.home = root / "home"
        self.tmp = Path(tempfile.mkdtemp(prefix="dq", dir="/tmp"))  # Ray's socket paths are short
        self.home.mkdir()
        self.port = _free_port()  # a head of its own, whatever else runs on this machine

    def env(self, **extra) -> dict:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
        env.update({"HOME": str(self.home), "RAY_TMPDIR": str(self.tmp), "OMP_NUM_THREADS": "1",
                    "DVAEQ_RAY_PORT": str(self.port), **extra})
        return env

    def pids(self) -> list[int]:
        mark = f"RAY_TMPDIR={self.tmp}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and mark in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                pass
        return found

    def pid_of(self, program: str) -> int:
        for pid in self.pids():
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(
                        program.encode()):
                    return pid
            except OSError:
                pass
        raise AssertionError(f"no {program} of this test's head")

    def kill(self) -> None:
        """SIGKILL every process of this head and wait (bounded) until they are gone, so the
        next head can take the port this one held."""
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in self.pids()):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (which holds no socket)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def head(tmp_path):
    h = Head(tmp_path)
    try:
        yield h
    finally:
        h.kill()
        shutil.rmtree(h.tmp, ignore_errors=True)


def dvaeq(head: Head, cwd: Path, *args, timeout=180, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvae_q.cli", *args], cwd=cwd,
                          env=head.env(**env), capture_output=True, text=True, timeout=timeout)


def train(head: Head, cwd: Path, service: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "dvae_q.cli", "train", "--config", "smoke", "--run-dir", "run",
           "--quiet", "--sampler", "remote", "--set", f"sampler_options.remote.service={service}",
           "--set", "steps=4", "--set", "eval_every=1000000", "--set", "eval_limit=20",
           "--set", "eval_iw_samples=4", "--set", "final_iw_samples=4"]
    return subprocess.Popen(cmd, cwd=cwd, env=head.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def one_line(done: subprocess.CompletedProcess, code: int, words: str) -> None:
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1 and words in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def listening(pids: list[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of every TCP socket the given processes listen on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & set(pids):
            address, _, port = line.split()[3].rpartition(":")
            found.append((address.strip("[]"), int(port), min(owners & set(pids))))
    return found


def loopback(address: str) -> bool:
    host = address.removeprefix("::ffff:")
    return host.startswith("127.") or host == "::1"


def refuses_strangers(address: str, port: int) -> str:
    """How the socket at (address, port) answers a client with no token: 'grpc' or 'http' if
    it refuses it, anything else if it does not."""
    host = address.removeprefix("::ffff:")
    host = "127.0.0.1" if host in ("*", "0.0.0.0", "::") else host
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=3)
        codes = set()
        for method in RAY_METHODS:
            try:
                channel.unary_unary(method)(b"", timeout=3)
                return f"answered {method} without a token"
            except grpc.RpcError as exc:
                codes.add(exc.code())
        return "grpc" if grpc.StatusCode.UNAUTHENTICATED in codes else f"gRPC codes {codes}"
    except grpc.FutureTimeoutError:
        pass
    finally:
        channel.close()
    try:
        urllib.request.urlopen(f"http://{host}:{port}/", timeout=3)
        return "answered HTTP without a token"
    except urllib.error.HTTPError as exc:
        return "http" if exc.code == 401 else f"HTTP {exc.code}"
    except OSError as exc:
        return f"neither gRPC nor HTTP ({exc})"


def test_serve_starts_a_locked_head_that_outlives_its_folder(head, tmp_path):
    a, b, c1, c2, stranger = (tmp_path / n for n in ("a", "b", "c1", "c2", "stranger"))
    for folder in (a, b, c1, c2, stranger):
        folder.mkdir()
    first = dvaeq(head, a, "serve", "--name", "one", "--sampler", "gibbs", *GIBBS)
    assert first.returncode == 0, first.stderr
    token_file = head.home / ".ray" / "auth_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    token = token_file.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    # the head never depends on the caller's folder: delete it, and workers still start
    shutil.rmtree(a)
    gcs = head.pid_of("gcs_server")
    assert all(os.readlink(f"/proc/{pid}/cwd") == "/" for pid in (gcs, head.pid_of("raylet")))
    second = dvaeq(head, b, "serve", "--name", "two", "--sampler", "gibbs", *GIBBS)
    assert second.returncode == 0, second.stderr
    trainers = {name: train(head, folder, name) for name, folder in (("one", c1), ("two", c2))}
    outputs = {name: proc.communicate(timeout=300) for name, proc in trainers.items()}
    for name, proc in trainers.items():
        assert proc.returncode == 0, outputs[name][1]
    listed = dvaeq(head, b, "service", "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"one: gibbs .* 4 calls", listed.stdout), listed.stdout
    assert re.search(r"two: gibbs .* 4 calls", listed.stdout), listed.stdout

    # what listens: loopback only (every Ray server of the head, its agents and its workers),
    # and the servers refuse a local client without the token
    sockets = listening(head.pids())
    assert any(port == head.port for _, port, _ in sockets)
    assert len({pid for _, _, pid in sockets}) >= 4        # gcs, raylet, agents, workers
    outside = [s for s in sockets if not loopback(s[0])]
    assert not outside, outside
    answers = {(port, pid): refuses_strangers(address, port) for address, port, pid in sockets}
    assert answers[next(k for k in answers if k[0] == head.port)] == "grpc", answers
    assert sum(a == "grpc" for a in answers.values()) >= 4, answers
    # a loopback head cannot become a networked one behind the user's back
    networked = dvaeq(head, b, "serve", "--name", "three", "--sampler", "gibbs", "--network")
    one_line(networked, 2, "listens on 127.0.0.1 only")

    address = f"127.0.0.1:{head.port}"
    nobody = dvaeq(head, stranger, "service", "list", "--address", address,
                   HOME=str(stranger))
    one_line(nobody, 2, "needs a token and this process has none")
    wrong = dvaeq(head, stranger, "service", "list", "--address", address, HOME=str(stranger),
                  RAY_AUTH_TOKEN="0" * 64)
    one_line(wrong, 2, "refused this process's token")
    disabled = dvaeq(head, stranger, "service", "list", RAY_AUTH_MODE="disabled")
    one_line(disabled, 2, "never starts or joins a Ray cluster without token authentication")
    # the right token given as Ray expects it, from another account's point of view
    friend = dvaeq(head, stranger, "service", "status", "one", "--address", address,
                   HOME=str(stranger), RAY_AUTH_TOKEN=token)
    assert friend.returncode == 0 and "session" in friend.stdout, friend.stderr

    # the token is never shown or written: not in any output, run directory or Ray log
    shown = [first, second, listed, nobody, wrong, disabled, friend]
    assert not any(token in d.stdout + d.stderr for d in shown)
    assert not any(token in out + err for out, err in outputs.values())
    for root in (c1, c2, head.tmp):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 50_000_000:
                assert token.encode() not in path.read_bytes(), path


def test_a_dead_or_hung_head_is_one_line_and_serve_replaces_a_dead_one(head, tmp_path):
    started = dvaeq(head, tmp_path, "serve", "--name", "one", "--sampler", "gibbs", *GIBBS)
    assert started.returncode == 0, started.stderr
    gcs = head.pid_of("gcs_server")
    os.kill(gcs, signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        hung = dvaeq(head, tmp_path, "service", "status", "one", timeout=60)
        one_line(hung, 1, "accepts connections but does not answer")
        hung_serve = dvaeq(head, tmp_path, "serve", "--name", "two", "--sampler", "gibbs",
                           timeout=60)
        one_line(hung_serve, 1, "accepts connections but does not answer")
    finally:
        os.kill(gcs, signal.SIGCONT)
    head.kill()  # the head crashes: its address is still on record
    gone = dvaeq(head, tmp_path, "service", "status", "one", timeout=60)
    one_line(gone, 1, "is gone")
    # the new head on the machine's network address, as asked (`--network`): what listens
    # beyond loopback refuses a client without the token
    again = dvaeq(head, tmp_path, "serve", "--name", "one", "--sampler", "gibbs", "--network",
                  *GIBBS)
    assert again.returncode == 0, again.stderr
    status = dvaeq(head, tmp_path, "service", "status", "one")
    assert status.returncode == 0 and "service 'one'" in status.stdout, status.stderr
    outside = {(port, pid): refuses_strangers(address, port)
               for address, port, pid in listening(head.pids()) if not loopback(address)}
    assert any(port == head.port for port, _ in outside), outside
    assert set(outside.values()) <= {"grpc", "http"}, outside


def test_workers_that_cannot_start_are_one_line_naming_their_log(head, tmp_path):
    """A head someone else started, whose workers die at start-up: `serve` says so in one
    line and names the log that holds the cause."""
    broken = tmp_path / "broken"
    broken.mkdir()
    # every Ray worker of this head dies the moment it imports torch, as with a deleted
    # working directory and oneMKL; the raylet and the GCS live on
    (broken / "sitecustomize.py").write_text(
        "import os, sys\n"
        "class Die:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        "            sys.stderr.write('worker start-up refused by this test\\n')\n"
        "            sys.stderr.flush(); os._exit(3)\n"
        "if any(a.endswith('default_worker.py') for a in sys.argv):\n"
        "    sys.meta_path.insert(0, Die())\n")
    (head.home / ".ray").mkdir()
    (head.home / ".ray" / "auth_token").write_text("ab" * 32)
    ray_bin = Path(sys.executable).with_name("ray")
    started = subprocess.run([str(ray_bin), "start", "--head", "--include-dashboard=false",
                              "--disable-usage-stats", f"--port={head.port}"], cwd="/",
                             capture_output=True, text=True, timeout=120, env=head.env(PYTHONPATH=str(broken),
                                                       RAY_AUTH_MODE="token"))
    assert started.returncode == 0, started.stderr
    served = dvaeq(head, tmp_path, "serve", "--name", "one", "--sampler", "gibbs", timeout=60)
    one_line(served, 1, "failed to start")
    log = Path(re.search(r"see (\S+\.err)", served.stderr).group(1))
    assert "worker start-up refused by this test" in log.read_text()
    assert served.stdout == ""
