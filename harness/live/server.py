"""Start and stop the live system under test from the orchestrator (or a test).

    with start_server("run/config.yaml", epoch, "run/") as server:
        ... drive server.url ...
    # leaving the block stops it: SIGTERM, wait for its records, SIGKILL if it hangs

It starts the scheduler process (harness.live.scheduler), which starts the
workers and the ingress processes. The scheduler runs in its own session (a
terminal's Ctrl-C reaches only the orchestrator, which then stops it in
order) and with --exit-with-parent (it shuts down cleanly if the
orchestrator dies). Its stderr goes to <out>/scheduler.log, whose tail is
quoted when it fails to start.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.errors import HarnessError
from harness.processes import log_tail, signal_group, wait_for
from harness.live.workers import ROOT


HEARTBEAT = "scheduler.heartbeat"     # the scheduler touches it every HEARTBEAT_S while its loop runs
HEARTBEAT_S = 0.5


class ServerProcess:
    """A running system under test: `url`, `pid` (the scheduler's), `out_dir`; `stop()` ends it and
    returns its exit code; `died()` says whether it exited by itself or stopped answering."""

    def __init__(self, proc: subprocess.Popen, url: str, out_dir: Path, log, ready: dict, stall_s: float):
        self.proc = proc
        self.url = url
        self.out_dir = out_dir
        self.ready = ready                    # the ready line: pid, slots, ingress pids
        self.stall_s = stall_s                # a heartbeat older than this: the scheduler is stuck
        self._log = log
        self._stalled = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to `timeout` for it to write its records and stop its workers, then SIGKILL.
        A stopped (SIGSTOP) scheduler is continued first, so it can still write its records; a stuck one
        gets a few seconds only."""
        try:
            if self.proc.poll() is None:
                if self._stalled:
                    self.proc.send_signal(signal.SIGCONT)
                    timeout = min(timeout, 5.0)
                self.proc.send_signal(signal.SIGTERM)
                try:
                    wait_for(self.proc, timeout)
                except subprocess.TimeoutExpired:
                    signal_group(self.proc, signal.SIGKILL)
                    wait_for(self.proc, 10)
        finally:
            for pipe in (self.proc.stdout, self.proc.stdin):
                if pipe is not None and not pipe.closed:
                    try:
                        pipe.close()
                    except OSError:
                        pass
            self._log.close()
        return self.proc.returncode

    def start(self, epoch: float) -> None:
        """Tell the server the run's time 0 (unix seconds): its clock and its policy start from there."""
        self.proc.stdin.write((json.dumps({"start": float(epoch)}) + "\n").encode())
        self.proc.stdin.flush()

    def died(self) -> str:
        """Why the server is gone, or stuck, before it was stopped ("" while it runs and answers)."""
        code = self.proc.poll()
        if code is None:
            try:
                age = time.time() - (self.out_dir / HEARTBEAT).stat().st_mtime
            except OSError:
                return ""                     # no heartbeat yet: the run has not started
            if age <= self.stall_s:
                return ""
            self._stalled = True
            return (f"the scheduler process stopped answering (no heartbeat for {age:.1f} s: stopped or stuck); "
                    f"the run was ended")
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        return f"the scheduler process {how} during the run{_tail(self._log)}"

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(config_path: str | os.PathLike, clock_zero: float, out_dir: str | os.PathLike,
                 host: str = "127.0.0.1", port: int = 0, extra_args: list[str] = (),
                 ready_timeout_s: float = 60.0, start: float | None = None, stall_s: float = 10.0) -> ServerProcess:
    """Launch `python -m harness.live.scheduler` and wait for its ready line (HarnessError if it never comes).

    `clock_zero`: when the run's processes start counting (unix seconds). The run itself starts when
    ServerProcess.start(epoch) says so; with `start` given, that is done here.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "harness.live.scheduler", "--config", str(config_path), "--epoch",
           repr(float(clock_zero)), "--out", str(out_dir), "--host", host, "--port", str(port), "--exit-with-parent",
           *extra_args]
    log = open(out_dir / "scheduler.log", "w+b")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                            start_new_session=True)
    def abandon() -> str:
        # Nothing started may outlive a failed start (nor a Ctrl-C while waiting for it).
        signal_group(proc, signal.SIGKILL)
        wait_for(proc, 10)
        proc.stdout.close()
        proc.stdin.close()
        tail = _tail(log)
        log.close()
        return tail

    try:
        line = _read_line(proc, ready_timeout_s)
        ready = json.loads(line)
        url = ready["url"]
    except _NotReady:
        raise HarnessError(f"the scheduler exited with code {proc.returncode} before it was ready{abandon()}") from None
    except _Timeout:
        raise HarnessError(f"the scheduler was not ready within {ready_timeout_s:g} s{abandon()}") from None
    except (ValueError, KeyError, TypeError):
        raise HarnessError(f"the scheduler printed {line[:200]!r} instead of its ready line{abandon()}") from None
    except BaseException:
        abandon()
        raise
    server = ServerProcess(proc, url, out_dir, log, ready, stall_s)
    if start is not None:
        server.start(start)
    return server


class _NotReady(Exception):
    pass


class _Timeout(Exception):
    pass


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout
            if sel.select(min(left, 0.5)):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    proc.wait(10)
                    raise _NotReady
                buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace")


def _tail(log) -> str:
    text = log_tail(log)
    return f"; its log ends with:\n{text}" if text else ""
