"""A running tritonserver whose models hand each batch to the harness: start_triton() and its handle.

The server is the tritonserver binary bundled in the nvidia-pytriton wheel
(0.5.7: Triton 2.45), run directly; pytriton's Python API is not used. Each
model instance runs stub_model.py in a Python backend stub, which sends the
batch's size over a unix socket to this process, where one thread per
instance calls `forward` and sends back the batch id: one small message each
way per batch, nothing else in the path.

What it takes to run the wheel's server from any environment, each handled
here rather than left to the user:

- numpy 2: the stub needs numpy<2 (stub_env.py says why and makes its
  environment); the stub's embedded interpreter takes its prefix from the
  first python3 on PATH, so that environment's bin/ goes first there.
- libpython: the stub links libpython3.X.so.1.0, which the dynamic loader
  finds in the system's library directory; when this interpreter is another
  patch release (pyenv's 3.11.7 beside Debian's 3.11.2), model loading fails
  with "'_thread.RLock' object has no attribute '_recursion_count'". This
  interpreter's LIBDIR goes first in the server's LD_LIBRARY_PATH, and the
  wheel's nvidia_pytriton.libs after it.
- A server that dies while starting ends the start at once with its log's
  diagnosis (HarnessError), and nothing it started outlives a failed start
  or stop(): no process, no shared-memory region, no bound port.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Mapping

from harness.errors import HarnessError
from harness.live.triton.repository import model_plans, system_config, write_repository
from harness.live.triton.stub_env import stub_python_dir

EXIT_TIMEOUT_S = 10                  # tritonserver's wait for in-flight requests and model unloading on stop
_PR_SET_PDEATHSIG = 1


def _distribution() -> Path:
    """The tritonserver directory of the nvidia-pytriton wheel (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise HarnessError("system=triton needs nvidia-pytriton (it bundles tritonserver): "
                           "pip install nvidia-pytriton==0.5.7")
    return Path(list(spec.submodule_search_locations)[0]).resolve() / "tritonserver"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bind_error(host: str, port: int) -> str | None:
    """Why a server could not bind host:port now (None: it could)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as servers bind; TIME_WAIT does not count
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
        return None


def processes_under(path: str) -> list[int]:
    """Pids of the processes whose command line names `path` (tritonserver and its stubs name our workspace)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if path.encode() in cmdline:
            pids.append(int(entry))
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _server_env_hook(base: dict, dist: Path, stub_bin: Path) -> dict:
    env = dict(base)
    first = [sysconfig.get_config_var("LIBDIR") or "", str(dist.parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*first, env.get("LD_LIBRARY_PATH", "")] if p)
    env["PATH"] = os.pathsep.join([str(stub_bin), env.get("PATH", "")])
    return env


_KNOWN_FAILURES = [
    (re.compile(r"error while loading shared libraries: ([^:\s]+)"),
     "tritonserver cannot load {0}; add the directory holding it to LD_LIBRARY_PATH"),
    (re.compile(r"_recursion_count"),
     "the Python backend stub loaded another patch release's libpython; run the harness with an interpreter "
     "built with --enable-shared, or the system's own python3"),
    (re.compile(r"[Aa]ddress already in use"), "a port tritonserver needs is taken; choose other ports"),
    (re.compile(r"No module named '?(\w+)"), "the Python backend stub cannot import {0}; remake its environment: "
     "python -m harness.live.triton setup"),
]


def _fatal(log: str) -> bool:
    """Whether the log already shows a failure the server cannot start past."""
    return any(pattern.search(log) for pattern, _ in _KNOWN_FAILURES)


def _diagnosis(log: str) -> str:
    for pattern, advice in _KNOWN_FAILURES:
        m = pattern.search(log)
        if m:
            return advice.format(*m.groups())
    lines = [ln.strip() for ln in log.strip().splitlines() if ln.strip()]
    return "its log ends: " + " | ".join(lines[-3:]) if lines else "it printed nothing"


def _read(conn: socket.socket, n: int) -> bytes | None:
    """Exactly n bytes, or None once the other end has closed."""
    got = b""
    while len(got) < n:
        chunk = conn.recv(n - len(got))
        if not chunk:
            return None
        got += chunk
    return got


class _Forwarder:
    """The harness's end of the stubs' connections: a thread per model instance calls forward per batch.

    A stub says its model once; instances of a model are numbered in the order they connect, which is
    what forward(model, size, instance) is told when `instances` is given. A stub that tritonserver
    restarts (after a crash) connects again and takes the lowest number no connected stub holds."""

    def __init__(self, forward: Callable[..., int], with_instance: bool):
        self.address = f"harness-triton-{os.getpid()}-{secrets.token_hex(4)}"   # abstract: no file to clean up
        self._forward = forward
        self._with_instance = with_instance
        self._held: dict[str, set[int]] = {}          # model -> the instance numbers of connected stubs
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind("\0" + self.address)
        self._listener.listen(256)
        threading.Thread(target=self._accept, name="triton-forward-accept", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:                      # closed: the server has stopped
                return
            threading.Thread(target=self._serve, args=(conn,), name="triton-forward", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            head = _read(conn, 2)
            model = head and _read(conn, struct.unpack("!H", head)[0])
            if not model:
                return
            model = model.decode()
            with self._lock:
                held = self._held.setdefault(model, set())
                instance = min(set(range(len(held) + 1)) - held)
                held.add(instance)
            try:
                self._forward_batches(conn, model, (instance,) if self._with_instance else ())
            finally:
                with self._lock:
                    held.discard(instance)

    def _forward_batches(self, conn: socket.socket, model: str, extra: tuple) -> None:
        while (size := _read(conn, 4)) is not None:
            try:
                batch_id = int(self._forward(model, struct.unpack("!I", size)[0], *extra))
                if batch_id < 0:
                    raise ValueError(f"forward returned batch id {batch_id}; batch ids are >= 0")
                reply = struct.pack("!q", batch_id)
            except Exception as exc:   # noqa: BLE001 -- the batch's requests are answered with it
                message = f"{type(exc).__name__}: {exc}".encode()
                reply = struct.pack("!qI", -1, len(message)) + message
            conn.sendall(reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)    # wakes the accepting thread
        self._listener.close()


class TritonHandle:
    """A running tritonserver: `url`, `ports`, `workspace`, `logs()`, `statistics()`, `died`, `stop()`;
    a context manager."""

    def __init__(self, host: str, ports: dict[str, int]):
        self.host = host
        self.ports = ports
        self.url = f"http://{host}:{ports['http']}"
        self.workspace = Path(tempfile.mkdtemp(prefix="harness-triton-"))
        self.shm_prefix = f"harness-triton-{os.getpid()}-{secrets.token_hex(4)}-"
        self._forwarder: _Forwarder | None = None
        self._proc: subprocess.Popen | None = None
        self._started = threading.Event()
        self._exited = threading.Event()
        self._exit_code: int | None = None
        self._start_error: BaseException | None = None
        self._stop_requested = threading.Event()
        self._keeper: threading.Thread | None = None
        self._stopped = False

    def _command(self, dist: Path, plans, cfg: dict, instances: dict[str, int]) -> list[str]:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.is_file():
            raise HarnessError(f"nvidia-pytriton has no Python backend stub for Python {version}; run the harness "
                               "with a Python it ships one for (3.8-3.12 in 0.5.7)")
        backend = self.workspace / "backends" / "python"
        shutil.copytree(dist / "backends" / "python", backend, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(stub, backend)
        models = write_repository(self.workspace / "models", plans, cfg, instances, self._forwarder.address)
        return [str(dist / "bin" / "tritonserver"), "--model-repository", str(models),
                "--backend-directory", str(self.workspace / "backends"), "--cache-directory", str(dist / "caches"),
                "--backend-config", f"python,shm-region-prefix-name={self.shm_prefix}",
                "--http-address", self.host, "--http-port", str(self.ports["http"]),
                "--grpc-address", self.host, "--grpc-port", str(self.ports["grpc"]),
                "--metrics-address", self.host, "--metrics-port", str(self.ports["metrics"]),
                "--exit-timeout-secs", str(EXIT_TIMEOUT_S), "--log-verbose", "0"]

    # The keeper thread starts the server and waits for it: the server is forked with PR_SET_PDEATHSIG,
    # which fires when the forking *thread* ends, so it dies with this process and not before.
    def _keep(self, command: list[str], env: dict) -> None:
        prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
        try:
            with open(self.workspace / "server.log", "wb") as log:
                self._proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL,
                                              preexec_fn=lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGKILL))
        except BaseException as exc:   # noqa: BLE001 -- handed to the starting thread
            self._start_error = exc
            self._exited.set()
            return
        finally:
            self._started.set()
        self._exit_code = self._proc.wait()
        self._exited.set()

    def _start(self, dist: Path, stub_bin: Path, plans, cfg: dict, forward, instances: dict[str, int],
               with_instance: bool, startup_timeout_s: float) -> None:
        self._forwarder = _Forwarder(forward, with_instance)
        command = self._command(dist, plans, cfg, instances)
        env = _server_env_hook(dict(os.environ), dist, stub_bin)
        self._keeper = threading.Thread(target=self._keep, args=(command, env), name="tritonserver-keeper",
                                        daemon=True)
        self._keeper.start()
        self._started.wait()
        if self._start_error is not None:
            raise HarnessError(f"tritonserver could not be started ({self._start_error})") from None
        deadline = time.monotonic() + startup_timeout_s
        while not self._ready():
            if self._exited.wait(0.05):
                raise HarnessError(f"tritonserver exited with code {self._exit_code} while starting: "
                                   f"{_diagnosis(self.logs())}")
            # A stub that cannot start fails its model's load only after the backend's stub timeout (30 s),
            # and then the server: what makes it fail is in the log at once.
            if _fatal(log := self.logs()):
                raise HarnessError(f"tritonserver did not start: {_diagnosis(log)}")
            if time.monotonic() > deadline:
                raise HarnessError(f"tritonserver was not ready within {startup_timeout_s:g} s: "
                                   f"{_diagnosis(self.logs())}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:                                   # refused, or not ready yet (HTTP 400)
            return False

    @property
    def died(self) -> int | None:
        """The exit code if tritonserver exited by itself (before stop() was asked); else None."""
        if self._exited.is_set() and not self._stop_requested.is_set():
            return self._exit_code
        return None

    def logs(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workspace / "server.log").read_text(errors="replace")
        return ""

    def statistics(self) -> dict[str, dict[str, float]]:
        """Triton's own account of each model since it started (its statistics extension), per model:
        requests and batches served, the mean batch, and per request the mean time from arrival to response
        (request_ms), in its queue (queue_ms) and in the Python backend's execution (compute_*_ms, which
        for our models holds the whole round trip to forward and the worker). Where a run's time goes
        inside tritonserver, which our own records cannot see."""
        with urllib.request.urlopen(f"{self.url}/v2/models/stats", timeout=10) as answer:
            stats = json.loads(answer.read())
        out = {}
        for model in stats.get("model_stats", []):
            phases = model.get("inference_stats", {})
            n = int(phases.get("success", {}).get("count", 0))
            batches = int(model.get("execution_count", 0))
            row = {"requests": n, "batches": batches,
                   "mean_batch": int(model.get("inference_count", 0)) / batches if batches else 0.0}
            for phase in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
                got = phases.get(phase, {})
                count = int(got.get("count", 0))
                row[f"{'request' if phase == 'success' else phase}_ms"] = \
                    int(got.get("ns", 0)) / count / 1e6 if count else 0.0
            out[model["name"]] = row
        return out

    def stop(self) -> None:
        """Stop the server: SIGINT and its drain, then SIGKILL whatever is left; wait until its ports are free."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_requested.set()
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)
                try:
                    self._proc.wait(EXIT_TIMEOUT_S + 5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            if self._keeper is not None:
                self._keeper.join(10)
        finally:
            if self._forwarder is not None:
                self._forwarder.close()
            leftovers = processes_under(str(self.workspace) + os.sep)
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while leftovers and time.monotonic() < deadline:
                leftovers = [p for p in leftovers if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
                time.sleep(0.05)
            shutil.rmtree(self.workspace, ignore_errors=True)
            # The stubs' shared-memory regions outlive a server that was killed or crashed.
            for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
                region.unlink(missing_ok=True)
            deadline = time.monotonic() + 10
            while any(bind_error(self.host, p) for p in self.ports.values()):
                if time.monotonic() > deadline:
                    raise HarnessError(f"tritonserver's ports {sorted(self.ports.values())} on {self.host} were "
                                       "still bound 10 s after it stopped")
                time.sleep(0.05)

    def __enter__(self) -> "TritonHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_triton(models: Mapping[str, Mapping], config, forward: Callable[..., int],
                 host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 instances: int | Mapping[str, int] | None = None, startup_timeout_s: float = 120.0) -> TritonHandle:
    """Start tritonserver serving `models` with Triton's dynamic batcher; returns once every model is ready.

    models: name -> {"max_batch_size": the profile's largest batch} (used where config's max_batch_size is 0).
    config: systems.triton.TritonConfig or a mapping with its fields.
    forward(model, size) -> batch id (>= 0): runs one batch (blocking) and says which batch it was; it is
    called from one thread per model instance, concurrently, and what it raises answers the batch's requests.
    instances: model instances per model (one count for all, or model -> count), instead of config's
    instance_count; forward is then called as forward(model, size, instance), instance in [0, the model's
    count), so the caller can tie instances to slots.
    Ports 0 are chosen free. Raises HarnessError, with the cause and the fix, if the server cannot start;
    nothing it started outlives a failed start.
    """
    cfg = system_config(config)
    plans = model_plans(models, cfg)
    counts = {m: cfg["instance_count"] if instances is None else
              instances if isinstance(instances, int) else instances.get(m, 0) for m in models}
    few = {m: n for m, n in counts.items() if n < 1}
    if few:
        raise HarnessError(f"triton: every model needs at least one instance (got {few})")
    dist = _distribution()
    stub_bin = stub_python_dir()         # the stub's environment is there, or the error says how to make it
    ports = {}
    for kind, port in (("http", http_port), ("grpc", grpc_port), ("metrics", metrics_port)):
        try:
            ports[kind] = port = port or _free_port(host)
            problem = bind_error(host, port)
        except OSError as exc:
            port, problem = 0, exc.strerror or str(exc)
        if problem:
            raise HarnessError(f"tritonserver cannot listen for {kind} on {host}:{port} ({problem}); choose another "
                               "port (0: any free one) or host")
    handle = TritonHandle(host, ports)
    try:
        handle._start(dist, stub_bin, plans, cfg, forward, counts, instances is not None, startup_timeout_s)
    except BaseException:
        handle.stop()
        raise
    return handle
