"""Running the load generator: Locust replays a request schedule against a serving endpoint, open loop.

    client = replay("run/schedule.parquet", "http://127.0.0.1:8000", epoch, "run/client", workers=2)

`replay` runs harness/load/locustfile.py headless -- one process, or a
master and `workers` worker processes each replaying every workers-th row --
waits until every request has its answer or timed out, and returns the
client records (id, model, t_sched, t_sent, t_done, status, reason,
batch_id; seconds since `epoch`) sorted by id. Choose `epoch` a few seconds
ahead (Locust needs about 1-2 s to start, more for workers to join); a
request due before its process was ready is sent late, and its send lag
says so. Every Locust process is gone when replay returns or raises, also
on Ctrl-C; their logs are <out_dir>/locust-*.log.

Across hosts: on the host that owns the run, `replay(..., workers=N,
expect_workers=N + M)` starts a master reachable on all interfaces at
`master_port`; on another host, `replay(..., workers=M, master_host=<that
host>, master_port=<its port>)` starts M workers only (the schedule must be
at the same path there; the master's options rule but for out_dir). Each
host's records stay in its own out_dir, and each call returns its own host's
records; read_records() reads a directory of them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from harness.errors import HarnessError
from harness.live import cores
from harness.load.records import read_records
from harness.processes import log_tail, signal_group, wait_for

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
STARTUP_S = 60.0          # how long workers may take to join, and a process to start
SHUTDOWN_S = 15.0         # after the last request's timeout: Locust writes its records and quits


class ReplayAborted(HarnessError):
    """The replay was stopped early because `abort` said why; `records` holds what was measured."""

    def __init__(self, reason: str, records: pd.DataFrame):
        super().__init__(reason)
        self.records = records


def replay(schedule_path: str | os.PathLike, url: str, epoch: float, out_dir: str | os.PathLike, workers: int = 0,
           timeout_s: float = 30.0, master_host: str | None = None, master_port: int = 0,
           expect_workers: int | None = None, max_connections: int = 0,
           abort: Callable[[], str] | None = None, payload: str = "synthetic", seed: int = 0,
           avoid_cpus: Sequence[int] = ()) -> pd.DataFrame:
    """Replay the schedule against `url` with Locust; the client records, sorted by id.

    workers=0: one local process. workers=N: a local master and N local workers, or, with
    `master_host`, N workers joining that host's master. timeout_s: per request, from its send.
    abort: polled while the replay runs; a non-empty answer stops Locust (which writes what it
    measured) and raises ReplayAborted with that reason and the records. payload: synthetic (one INT32
    per item) or tensor (an FP16 3x224x224 image per item, random values from `seed`). avoid_cpus: cores
    Locust's processes stay off (the scheduler's own, when it has one).
    Raises HarnessError (with the tail of Locust's log) if Locust fails or does not finish in time.
    """
    schedule_path, out_dir = Path(schedule_path).resolve(), Path(out_dir).resolve()
    if workers < 0:
        raise HarnessError(f"workers must be >= 0 (got {workers})")
    if not timeout_s > 0:
        raise HarnessError(f"the request timeout must be > 0 s (got {timeout_s})")
    if payload not in ("synthetic", "tensor"):
        raise HarnessError(f"unknown payload '{payload}'; choose synthetic or tensor")
    try:
        schedule = pd.read_parquet(schedule_path, columns=["id", "model", "t_sched"])
    except (OSError, ValueError, KeyError) as exc:
        raise HarnessError(f"cannot read the schedule {schedule_path} ({exc}); it needs columns id, model, "
                           "t_sched") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob("client-*.parquet")):
        raise HarnessError(f"{out_dir} already holds client records; replay into an empty directory")

    remote_master = master_host is not None
    if remote_master and workers < 1:
        raise HarnessError("joining a remote master needs workers >= 1")
    n_workers = expect_workers or workers
    if expect_workers is not None and expect_workers < workers:
        raise HarnessError(f"expect_workers ({expect_workers}) must be >= the local workers ({workers})")
    replay_args = ["--host", url, "--schedule", str(schedule_path), "--epoch", repr(float(epoch)),
                   "--out-dir", str(out_dir), "--request-timeout", repr(float(timeout_s)),
                   "--max-connections", str(max_connections), "--payload", payload, "--payload-seed", str(seed)]
    headless = ["--headless", "--only-summary", "--exit-code-on-error", "0"]

    commands: list[tuple[str, list[str]]] = []
    if workers == 0:
        commands.append(("locust", [*headless, "-u", "1", "-r", "1", *replay_args]))
    else:
        port = master_port or _free_port()
        if not remote_master:
            bind = "*" if n_workers > workers else "127.0.0.1"
            commands.append(("locust-master", [
                *headless, "--master", "--master-bind-host", bind, "--master-bind-port", str(port),
                "--expect-workers", str(n_workers), "--expect-workers-max-wait", str(int(STARTUP_S)),
                "-u", str(n_workers), "-r", str(n_workers), *replay_args]))
        host = master_host or "127.0.0.1"
        for k in range(workers):
            commands.append((f"locust-worker-{k}", ["--worker", "--master-host", host, "--master-port", str(port),
                                                    "--out-dir", str(out_dir)]))

    t_last = float(schedule["t_sched"].max()) if len(schedule) else 0.0
    deadline = max(time.time(), epoch) + t_last + timeout_s + STARTUP_S + SHUTDOWN_S
    procs = _Processes(out_dir, avoid_cpus)
    reason = ""
    try:
        for name, args in commands:
            procs.start(name, args)
        reason = procs.wait(deadline, abort)
    finally:
        procs.stop()
    if reason:
        raise ReplayAborted(reason, read_records(out_dir))

    records = read_records(out_dir)
    if not remote_master and expect_workers in (None, workers):
        _check_complete(records, schedule, out_dir)
    return records


def _check_complete(records: pd.DataFrame, schedule: pd.DataFrame, out_dir: Path) -> None:
    dup = records["id"].duplicated()
    if dup.any():
        raise HarnessError(f"{int(dup.sum())} requests were recorded twice (ids {records['id'][dup].head(5).tolist()}"
                           f"...); were shards replayed twice? see {out_dir}/locust-*.log")
    missing = len(schedule) - len(records)
    if missing:
        raise HarnessError(f"Locust recorded {len(records)} of {len(schedule)} requests; see {out_dir}/locust-*.log")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Processes:
    """The Locust processes of one replay, each in its own session, logging to <out_dir>/<name>.log."""

    def __init__(self, out_dir: Path, avoid_cpus: Sequence[int] = ()):
        self.out_dir = out_dir
        self.avoid_cpus = tuple(avoid_cpus)
        self.running: list[tuple[str, subprocess.Popen, object]] = []

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.out_dir / f"{name}.log", "w+b")
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        try:
            # cwd: Locust reads locust.conf and pyproject.toml from its working directory; ours holds neither.
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=self.out_dir, env=env, start_new_session=True)
        except OSError as exc:
            log.close()
            raise HarnessError(f"cannot start Locust ({exc})") from None
        self.running.append((name, proc, log))
        cores.keep_off(proc.pid, self.avoid_cpus)

    def wait(self, deadline: float, abort: Callable[[], str] | None = None) -> str:
        """Until every process exits ("") or `abort` gives a reason (returned); HarnessError as soon as
        one fails, or at the deadline."""
        while True:
            reason = abort() if abort is not None else ""
            if reason:
                return reason
            codes = [(name, proc.poll(), log) for name, proc, log in self.running]
            for name, code, log in codes:
                if code not in (None, 0):
                    raise HarnessError(f"{name} exited with code {code}{_tail(log)}")
            if all(code == 0 for _, code, _ in codes):
                return ""
            if time.time() > deadline:
                name, _, log = next(c for c in codes if c[1] is None)
                raise HarnessError(f"the replay had not finished by its deadline ({name} still running){_tail(log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (Locust then writes what it measured), SIGKILL whatever is left after a few seconds."""
        for _, proc, _ in self.running:
            if proc.poll() is None:
                signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc, log in self.running:
            try:
                wait_for(proc, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(proc, signal.SIGKILL)
                wait_for(proc, 10)
            finally:
                log.close()


def _tail(log, lines: int = 6) -> str:
    text = log_tail(log, 4000)
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return "; its log ends: " + " | ".join(kept) if kept else ""
