"""Real Triton for `system=triton` in the live runtime: the tritonserver bundled in nvidia-pytriton.

    with start_triton({"resnet50": {"max_batch_size": 64}}, system_cfg, forward) as triton:
        ... POST f"{triton.url}/v2/models/resnet50/infer" ...
    # leaving the block stops it: no tritonserver process and no bound port remain

Triton's own dynamic batcher (configured from conf/system/triton.yaml, the
fields of systems.triton.TritonConfig) forms the batches; each model's
inference callable hands every batch to `forward(model, size) -> batch id`,
which the caller implements by running the batch on the same worker processes
every other system uses, so only the scheduler differs. The callable answers
y = 0 (INT32) and the batch id (INT64) per row: the same JSON as the
harness's own frontend (harness.live.protocol), so one client drives both.
`forward` runs on pytriton's threads (one per model instance, concurrently);
with `instances=N` it also learns which instance ran the batch, so a
caller can bind instance i to a worker slot.

What it takes to run the wheel's server from any environment, each handled
here rather than left to the user:

- numpy 2. The Python backend stub in the wheel (pytriton 0.5.7: Triton 2.45;
  0.7.0: Triton 2.51) is built with pybind11 older than 2.12, which reads a
  dtype's item size at its numpy-1 offset in PyArray_Descr; under numpy 2
  that offset holds the low half of the 64-bit `flags` field, 0 for numeric
  dtypes. Every INT32/INT64 output then has byte size 0, and Triton answers
  500 "output tensor shape does not match size of output". No dtype, shape or
  layout of our outputs can avoid it: the stub builds that array itself.
  Only the stub needs numpy<2, so it runs in a side environment (a venv of
  this interpreter with numpy<2 that sees this environment's other
  packages through a .pth file), made once by

      python -m harness.live.triton setup [pip options, e.g. --no-index --find-links wheels/]

  The stub's embedded interpreter takes its prefix from the first python3 on
  PATH, so the side environment's bin/ goes first there. The callables stay
  in this process, with numpy 2: tensors cross between the two in pytriton's
  version-neutral format (dtype string and raw bytes).
- libpython. The stub links libpython3.X.so.1.0, which the dynamic loader
  finds in the system's library directory; when this interpreter is another
  patch release (pyenv's 3.11.7 beside Debian's 3.11.2), model loading fails
  with "'_thread.RLock' object has no attribute '_recursion_count'". This
  interpreter's LIBDIR goes first in the server's LD_LIBRARY_PATH.
- Installed with `pip install --target`, pytriton takes itself for an
  editable install and misses its bundled libraries: the wheel's
  nvidia_pytriton.libs directory goes into LD_LIBRARY_PATH too.
- Python 3.12's asyncio.wait_for. PyTriton's proxy (communication.py, in this
  process and in each stub) polls its ZeroMQ sockets with
  wait_for(socket.recv_multipart(), 1 s). From 3.12 a receive that completes in
  the loop iteration where that timeout expires has taken the message off the
  socket and still raises TimeoutError, so the message is lost; a lost batch
  holds its model instance forever and every later request times out. Only
  the first message after an idle second can meet that tick; on 3.12 it did
  in 8 of 15 runs at 500 req/s (never on 3.11). Its wait_for is
  replaced by one that keeps a completed receive (_KEEP_RECEIVED), here and in
  the proxy files each model load sends to the stub.
- pytriton waits two minutes for a server that died at start; here a dead
  server ends the start at once with its log's diagnosis (HarnessError).

Checked with nvidia-pytriton 0.5.7 (what pip resolves beside numpy 2) and
0.7.0 (installed with --no-deps: it declares numpy<2). pytriton internals
used: Triton._initialize_server, ._triton_server and ._python_backend_config,
TritonServer._get_env and ._verbose.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import venv
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from harness.errors import HarnessError

STUB_ENV_VAR = "HARNESS_TRITON_STUB_ENV"        # where the stub's numpy<2 environment lives
STUB_NUMPY = "numpy>=1.21,<2"
_MARKER = "harness-triton-stub.json"
TIMEOUT_ACTIONS = ("REJECT", "DELAY")
EXIT_TIMEOUT_S = 10                             # tritonserver's wait for in-flight requests and model unloading on stop
LOAD_ATTEMPTS = 3                               # loads of one model, when its instances lose PyTriton's handshake race

# Appended to pytriton.proxy.communication (see the module docstring): its functions look `asyncio` up
# at call time, so only their wait_for changes, to one that never discards a completed awaitable.
_KEEP_RECEIVED = """

import asyncio as _harness_asyncio


async def _harness_wait_for(aw, timeout):
    fut = _harness_asyncio.ensure_future(aw)
    try:
        done, _ = await _harness_asyncio.wait({fut}, timeout=timeout)
    except BaseException:
        fut.cancel()
        raise
    if not done and fut.cancel():
        raise _harness_asyncio.TimeoutError
    return fut.result()


class _HarnessAsyncio:
    wait_for = staticmethod(_harness_wait_for)

    def __getattr__(self, name):
        return getattr(_harness_asyncio, name)


asyncio = _HarnessAsyncio()
"""


def _keep_received(namespace: dict) -> None:
    """Patch pytriton's communication module (its namespace) in this process, once."""
    if "_harness_wait_for" not in namespace:
        exec(compile(_KEEP_RECEIVED, namespace.get("__file__", "<communication>"), "exec"), namespace)


# ----------------------------------------------------------------------------------------------------------
# The stub's numpy<2 environment

def stub_env_dir() -> Path:
    """Where the stub environment lives: $HARNESS_TRITON_STUB_ENV, else inside this environment."""
    return Path(os.environ.get(STUB_ENV_VAR) or Path(sys.prefix) / "triton-stub").resolve()


def stub_env_needed() -> bool:
    return int(np.__version__.split(".")[0]) >= 2


def _stub_site(env: Path) -> Path:
    return Path(sysconfig.get_path("purelib", scheme="venv", vars={"base": str(env), "platbase": str(env)}))


def _host_paths() -> list[str]:
    """Directories the stub must see besides numpy: this environment's site-packages and pytriton's and zmq's homes."""
    import site

    import pytriton
    import zmq
    dirs = [str(Path(m.__file__).resolve().parent.parent) for m in (pytriton, zmq)] + site.getsitepackages()
    return list(dict.fromkeys(d for d in dirs if Path(d).is_dir()))


def _stub_env_problem(env: Path) -> str | None:
    marker = env / _MARKER
    if not marker.is_file():
        return f"there is no stub environment at {env}"
    try:
        info = json.loads(marker.read_text())
    except ValueError:
        info = {}
    if info.get("python") != platform.python_version() or info.get("host_paths") != _host_paths():
        return f"the stub environment at {env} was made for another interpreter or environment"
    return None


def setup_stub_env(pip_args: list[str] = (), env: Path | None = None) -> Path:
    """Create (or remake) the stub's numpy<2 environment; returns its path. Idempotent when valid."""
    env = env or stub_env_dir()
    if _stub_env_problem(env) is None:
        return env
    if env.exists() and any(env.iterdir()) and not (env / "pyvenv.cfg").exists():
        raise HarnessError(f"{env} exists and is not a Triton stub environment; set {STUB_ENV_VAR} to another "
                           "directory")
    shutil.rmtree(env, ignore_errors=True)
    try:
        venv.EnvBuilder(with_pip=False, symlinks=True, clear=True).create(env)
    except OSError as exc:
        raise HarnessError(f"cannot create the Triton stub environment at {env} ({exc}); "
                           f"set {STUB_ENV_VAR} to a writable directory") from None
    site_dir = _stub_site(env)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--upgrade", "--target", str(site_dir), STUB_NUMPY, *pip_args]
    done = subprocess.run(pip, capture_output=True, text=True)
    if done.returncode != 0:
        shutil.rmtree(env, ignore_errors=True)
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise HarnessError(f"pip could not install {STUB_NUMPY!r} for the Triton stub ({tail}); where no package "
                           "index is reachable, pass a wheel directory: python -m harness.live.triton setup "
                           "--no-index --find-links <dir with a numpy 1.x wheel>")
    # Appended after the env's own site-packages, so numpy<2 shadows this environment's numpy.
    (site_dir / "harness-host.pth").write_text("\n".join(_host_paths()) + "\n")
    python = env / "bin" / "python3"
    probe = subprocess.run([str(python), "-c", "import numpy, zmq; print(numpy.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.startswith("1."):
        shutil.rmtree(env, ignore_errors=True)
        raise HarnessError(f"the Triton stub environment does not import numpy<2 and zmq "
                           f"({(probe.stderr or probe.stdout).strip()[-200:]})")
    (env / _MARKER).write_text(json.dumps({"python": platform.python_version(), "numpy": probe.stdout.strip(),
                                           "host_paths": _host_paths()}, indent=2) + "\n")
    return env


# ----------------------------------------------------------------------------------------------------------
# Model configs

@dataclasses.dataclass(frozen=True)
class _ModelPlan:
    name: str
    max_batch_size: int
    preferred: list[int]


def _system_config(config) -> dict:
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    cfg.setdefault("max_batch_size", 0)
    cfg["preferred_batch_size"] = list(cfg.get("preferred_batch_size") or [])
    for key in ("max_queue_delay_microseconds", "max_queue_size", "default_timeout_microseconds"):
        cfg[key] = int(cfg.get(key) or 0)
        if cfg[key] < 0:
            raise HarnessError(f"triton: {key} must be >= 0 (got {cfg[key]}); fix system.{key}")
    cfg["instance_count"] = int(cfg.get("instance_count") or 1)
    if cfg["instance_count"] < 1:
        raise HarnessError(f"triton: instance_count must be >= 1 (got {cfg['instance_count']}); fix "
                           "system.instance_count")
    cfg["timeout_action"] = str(cfg.get("timeout_action") or "REJECT").upper()
    if cfg["timeout_action"] not in TIMEOUT_ACTIONS:
        raise HarnessError(f"triton: timeout_action must be one of {TIMEOUT_ACTIONS} (got {cfg['timeout_action']!r})")
    return cfg


def _model_plans(models: Mapping[str, Mapping], cfg: dict) -> list[_ModelPlan]:
    if not models:
        raise HarnessError("triton: no models to serve; choose a models group, e.g. models=vision")
    plans = []
    for name, spec in models.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise HarnessError(f"triton: model name {name!r} may only hold letters, digits, '.', '_' and '-'")
        largest = int((spec or {}).get("max_batch_size") or 0)
        max_batch = cfg["max_batch_size"] or largest
        if max_batch < 1:
            raise HarnessError(f"triton: no batch size limit for {name}: set system.max_batch_size or give the "
                               "model its profile's largest batch as max_batch_size")
        if largest and max_batch > largest:
            raise HarnessError(f"triton: max_batch_size {max_batch} exceeds the profiled maximum {largest} of "
                               f"{name}; lower system.max_batch_size")
        preferred = sorted(set(cfg["preferred_batch_size"]))
        if preferred and (preferred[0] < 1 or preferred[-1] > max_batch):
            raise HarnessError(f"triton: preferred_batch_size {preferred} must lie in [1, {max_batch}] for {name}; "
                               "fix system.preferred_batch_size")
        plans.append(_ModelPlan(name, max_batch, preferred))
    return plans


def _infer_callable(model: str, forward: Callable[..., int], instance: int | None):
    from pytriton.decorators import batch

    @batch
    def infer(x: np.ndarray):
        n = len(x)
        batch_id = int(forward(model, n) if instance is None else forward(model, n, instance))
        return {"y": np.zeros((n, 1), np.int32), "batch_id": np.full((n, 1), batch_id, np.int64)}

    return infer


# ----------------------------------------------------------------------------------------------------------
# The server

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


def _server_env_hook(base: dict, stub_env: Path | None) -> dict:
    env = dict(base)
    import pytriton
    first = [sysconfig.get_config_var("LIBDIR") or "",
             str(Path(pytriton.__file__).resolve().parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in [*first, env.get("LD_LIBRARY_PATH", "")] if p)
    if stub_env is not None:
        # The stub's embedded interpreter finds its prefix through the first python3 on PATH.
        env["PATH"] = os.pathsep.join([str(stub_env / "bin"), env.get("PATH", "")])
    return env


# PyTriton (0.5.x) lets a model's first instance serve the others their config on a unix socket,
# while tritonserver initialises a Python model's instances in parallel: on a loaded host another
# instance may find the socket absent for its 1 s wait, or bound and not yet listening. A later load
# of the same model then succeeds; any other load failure is real and is raised at once.
_HANDSHAKE_RACE = re.compile(r"Model initialize error.*(ConnectionRefusedError|waiting for config file)", re.S)


def lost_handshake_race(error: str) -> bool:
    """Whether a model load failed only because its instances raced PyTriton's start-up handshake."""
    return _HANDSHAKE_RACE.search(error) is not None


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


def _diagnosis(log: str) -> str:
    for pattern, advice in _KNOWN_FAILURES:
        m = pattern.search(log)
        if m:
            return advice.format(*m.groups())
    lines = [ln.strip() for ln in log.strip().splitlines() if ln.strip()]
    return "its log ends: " + " | ".join(lines[-3:]) if lines else "it printed nothing"


class TritonHandle:
    """A running tritonserver: `url`, `ports`, `workspace`, `logs()`, `statistics()`, `stop()`; a context manager."""

    def __init__(self, host: str, ports: dict[str, int], plans: list[_ModelPlan], cfg: dict, forward,
                 instances: int | None, stub_env: Path | None):
        self.host = host
        self.ports = ports
        self.url = f"http://{host}:{ports['http']}"
        self._tmp = tempfile.mkdtemp(prefix="harness-triton-")
        self.workspace = Path(self._tmp) / "workspace"
        self._plans = plans
        self._cfg = cfg
        self._forward = forward
        self._instances = instances
        self._stub_env = stub_env
        self._triton = None
        self._ready = threading.Event()
        self._exited = threading.Event()
        self._exit_code: int | None = None
        self._start_error: BaseException | None = None
        self._stop_requested = threading.Event()
        self._keeper: threading.Thread | None = None
        self._stopped = False

    # The keeper thread starts the server and lives until stop: tritonserver is forked with
    # PR_SET_PDEATHSIG, which fires when the forking *thread* ends.
    def _keep(self) -> None:
        try:
            self._triton.run()
        except BaseException as exc:   # noqa: BLE001 -- handed to the starting thread
            self._start_error = exc
        finally:
            self._ready.set()
        if self._start_error is None:
            self._stop_requested.wait()
        self._triton.stop()

    def _build(self):
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
        from pytriton.triton import Triton, TritonConfig

        handle = self
        # PyTriton hands tensors between its stubs and this process through a shared-memory store that
        # one more process per model serves: made for large tensors, it costs our one-integer tensors
        # several inter-process round trips per batch. Inline (base64) they cost none: on 2 cores at
        # 600 req/s goodput rose from 108 to 425 req/s. PyTriton reads the switch when a model is bound
        # (here) and in each stub (the server inherits this process's environment).
        os.environ["PYTRITON_NO_TENSORSTORE"] = "1"
        import pytriton.proxy.communication
        _keep_received(vars(pytriton.proxy.communication))

        class _Triton(Triton):
            def _initialize_server(self) -> None:
                super()._initialize_server()
                server = self._triton_server
                server._verbose = False          # its log stays readable through logs(), off our stdout
                base_env = server._get_env
                server._get_env = lambda: _server_env_hook(base_env(), handle._stub_env)
                server.register_on_exit(handle._on_server_exit)

            def _wait_for_server(self) -> None:
                handle._wait_until_ready()
                super()._wait_for_server()       # the server is ready: pytriton's own checks pass at once

        cfg = self._cfg
        config = TritonConfig(http_address=self.host, http_port=self.ports["http"], grpc_address=self.host,
                              grpc_port=self.ports["grpc"], metrics_address=self.host,
                              metrics_port=self.ports["metrics"], exit_timeout_secs=EXIT_TIMEOUT_S, log_verbose=0)
        triton = _Triton(config=config, workspace=self.workspace)

        # pytriton's own load, made again with a retry; through our client, since pytriton's first
        # waits for a ready server, and a model that failed to load keeps the server unready.
        def load(model, *_) -> None:
            config, files = json.dumps(model.get_model_config()), model.get_proxy_model_files()
            files = {k: v + _KEEP_RECEIVED.encode() if k.endswith("/communication.py") else v for k, v in files.items()}
            for attempt in range(1, LOAD_ATTEMPTS + 1):
                try:
                    with self._client() as client:
                        return client.load_model(model.model_name, config=config, files=files)
                except Exception as exc:   # noqa: BLE001 -- tritonclient's error types vary by protocol
                    if attempt == LOAD_ATTEMPTS or not lost_handshake_race(str(exc)):
                        raise
                print(f"tritonserver: the instances of model {model.model_name} raced PyTriton's start-up handshake; "
                      f"loading it again ({attempt + 1}/{LOAD_ATTEMPTS})", file=sys.stderr, flush=True)
                # The failed load's sockets would be found stale by the next load's other instances.
                for name in (f"{model.model_name}-config.sock", f"{model.model_name}-data.sock"):
                    (self.workspace / name).unlink(missing_ok=True)

        triton._model_manager._load_model = load
        policy = None
        if cfg["max_queue_size"] or cfg["default_timeout_microseconds"]:
            policy = QueuePolicy(timeout_action=TimeoutAction(cfg["timeout_action"]),
                                 default_timeout_microseconds=cfg["default_timeout_microseconds"],
                                 max_queue_size=cfg["max_queue_size"])
        for plan in self._plans:
            batcher = DynamicBatcher(max_queue_delay_microseconds=cfg["max_queue_delay_microseconds"],
                                     preferred_batch_size=plan.preferred or None, default_queue_policy=policy)
            if self._instances is None:
                infers = [_infer_callable(plan.name, self._forward, None)] * cfg["instance_count"]
            else:
                infers = [_infer_callable(plan.name, self._forward, k) for k in range(self._instances)]
            triton.bind(model_name=plan.name, infer_func=infers,
                        inputs=[Tensor(name="x", dtype=np.int32, shape=(1,))],
                        outputs=[Tensor(name="y", dtype=np.int32, shape=(1,)),
                                 Tensor(name="batch_id", dtype=np.int64, shape=(1,))],
                        config=ModelConfig(max_batch_size=plan.max_batch_size, batcher=batcher))
        return triton

    def _client(self):
        import tritonclient.http
        return contextlib.closing(tritonclient.http.InferenceServerClient(f"{self.host}:{self.ports['http']}"))

    def _wait_until_ready(self) -> None:
        # pytriton's own wait lasts two minutes, also for a server that has exited, and holds the lock
        # that its stop() needs, which runs at interpreter exit: a failed start would delay exit by as much.
        with self._client() as client:
            while not (self._exited.is_set() or self._stop_requested.is_set()):
                with contextlib.suppress(Exception):   # refused or not yet answering: ask again
                    if client.is_server_ready():
                        return
                time.sleep(0.05)
        raise HarnessError("tritonserver exited or was stopped before it was ready")

    def _on_server_exit(self, success: bool, exit_code: int) -> None:
        self._exit_code = exit_code
        self._exited.set()

    def _start(self, startup_timeout_s: float) -> None:
        self._triton = self._build()
        self._keeper = threading.Thread(target=self._keep, name="tritonserver-keeper", daemon=True)
        self._keeper.start()
        deadline = time.monotonic() + startup_timeout_s
        while not self._ready.wait(0.1) and not self._exited.is_set():
            if time.monotonic() > deadline:
                raise HarnessError(f"tritonserver was not ready within {startup_timeout_s:g} s: "
                                   f"{_diagnosis(self.logs())}")
        if self._exited.is_set():
            raise HarnessError(f"tritonserver exited with code {self._exit_code} while starting: "
                               f"{_diagnosis(self.logs())}")
        if self._start_error is not None:
            error = str(self._start_error).strip()
            first = error.splitlines()[0][:300] if error else type(self._start_error).__name__
            raise HarnessError(f"tritonserver did not start ({first}): {_diagnosis(error + chr(10) + self.logs())}") \
                from None

    @property
    def died(self) -> int | None:
        """The exit code if tritonserver exited by itself (before stop() was asked); else None."""
        if self._exited.is_set() and not self._stop_requested.is_set():
            return self._exit_code
        return None

    def logs(self) -> str:
        server = getattr(self._triton, "_triton_server", None)
        return server.logs() if server is not None else ""

    def statistics(self) -> dict[str, dict[str, float]]:
        """Triton's own account of each model since it started (its statistics extension), per model:
        requests and batches served, the mean batch, and per request the mean time from arrival to response
        (request_ms), in its queue (queue_ms) and in the Python backend's execution (compute_*_ms, which
        for our models holds the whole round trip to the callable and the worker). Where a run's time goes
        inside tritonserver, which our own records cannot see."""
        import urllib.request
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

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server: SIGINT and a short drain, then SIGKILL whatever is left; wait until its ports are free."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._stop_requested.set()
            if self._keeper is not None and self._ready.is_set():
                self._keeper.join(timeout_s)
        finally:
            leftovers = processes_under(self._tmp + os.sep)
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while leftovers and time.monotonic() < deadline:
                leftovers = [p for p in leftovers if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
                time.sleep(0.05)
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._remove_shared_memory()
            deadline = time.monotonic() + 10
            while any(bind_error(self.host, p) for p in self.ports.values()):
                if time.monotonic() > deadline:
                    raise HarnessError(f"tritonserver's ports {sorted(self.ports.values())} on {self.host} were "
                                       "still bound 10 s after it stopped")
                time.sleep(0.05)

    def _remove_shared_memory(self) -> None:
        # The stubs' shared-memory regions outlive a server that was killed or crashed (4 MiB each).
        try:
            prefix = self._triton._python_backend_config["shm-region-prefix-name"]
        except (AttributeError, KeyError, TypeError):
            return
        for region in Path("/dev/shm").glob(f"{prefix}*"):
            region.unlink(missing_ok=True)

    def __enter__(self) -> "TritonHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def start_triton(models: Mapping[str, Mapping], config, forward: Callable[..., int],
                 host: str = "127.0.0.1", http_port: int = 0, grpc_port: int = 0, metrics_port: int = 0,
                 instances: int | None = None, startup_timeout_s: float = 120.0) -> TritonHandle:
    """Start tritonserver serving `models` with Triton's dynamic batcher; returns once every model is ready.

    models: name -> {"max_batch_size": the profile's largest batch} (used where config's max_batch_size is 0).
    config: systems.triton.TritonConfig or a mapping with its fields.
    forward(model, size) -> batch id: runs one batch (blocking) and says which batch it was.
    instances: model instances per model, instead of config's instance_count; forward is then called as
    forward(model, size, instance), instance in [0, instances), so the caller can tie instances to slots.
    Ports 0 are chosen free. Raises HarnessError, with the cause and the fix, if the server cannot start;
    nothing it started outlives a failed start.
    """
    if instances is not None and instances < 1:
        raise HarnessError(f"triton: instances must be >= 1 (got {instances})")
    cfg = _system_config(config)
    plans = _model_plans(models, cfg)
    try:
        import pytriton  # noqa: F401
    except ImportError:
        raise HarnessError("system=triton needs nvidia-pytriton (it bundles tritonserver): "
                           "pip install nvidia-pytriton==0.5.7") from None
    pytriton_log = logging.getLogger("pytriton")
    if pytriton_log.level == logging.NOTSET:
        pytriton_log.setLevel(logging.WARNING)        # its INFO lines come per batch handler, dozens a second
    stub_env = None
    if stub_env_needed():
        stub_env = stub_env_dir()
        problem = _stub_env_problem(stub_env)
        if problem:
            raise HarnessError(f"tritonserver's Python backend stub cannot hand numpy {np.__version__} arrays to "
                               f"Triton (its pybind11 predates numpy 2) and {problem}; make its numpy<2 "
                               "environment once: python -m harness.live.triton setup")
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
    handle = TritonHandle(host, ports, plans, cfg, forward, instances, stub_env)
    try:
        handle._start(startup_timeout_s)
    except BaseException:
        handle.stop()
        raise
    return handle


# ----------------------------------------------------------------------------------------------------------
# Command line: prepare a machine, and check that the server answers there

def _check() -> int:
    import urllib.request

    from harness.live.protocol import infer_request, outcome
    sizes = []

    def forward(model: str, size: int) -> int:
        sizes.append(size)
        return len(sizes) - 1

    with start_triton({"m": {"max_batch_size": 8}}, {}, forward) as triton:
        req = urllib.request.Request(f"{triton.url}/v2/models/m/infer", data=json.dumps(infer_request(1)).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                code, body = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            code, body = err.code, err.read()
    status, reason, batch_id = outcome(code, body)
    print(f"tritonserver at {triton.url}: {code} {status} {reason} batch {batch_id}")
    return 0 if status == "ok" and batch_id == 0 else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m harness.live.triton", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("setup", help="create the Python backend stub's numpy<2 environment (needed with numpy 2); "
                                 "what follows goes to pip, e.g. setup --no-index --find-links DIR")
    sub.add_parser("check", help="start tritonserver with one model and send it one request")
    # Everything after `setup` is pip's (argparse would take --no-index for an option of its own).
    pip_args = argv[1:] if argv[:1] == ["setup"] else []
    args = parser.parse_args(argv[:1] if argv[:1] == ["setup"] else argv)
    try:
        if args.command == "setup":
            if not stub_env_needed():
                print(f"numpy {np.__version__}: the stub runs in this environment; nothing to set up")
                return 0
            print(f"Triton stub environment ready at {setup_stub_env(pip_args)}")
            return 0
        return _check()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
