"""Start and stop the live frontend from the orchestrator (or a test).

    with start_frontend("run/config.yaml", epoch, "run/") as fe:
        ... drive fe.url ...
    # leaving the block stops it: SIGTERM, wait for its records, SIGKILL if it hangs

The frontend runs in its own session (a terminal's Ctrl-C reaches only the
orchestrator, which then stops it in order) and with --exit-with-parent (it
shuts down cleanly if the orchestrator dies). Its stderr goes to
<out>/frontend.log, whose tail is quoted when it fails to start.
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
from harness.processes import log_tail, signal_group
from harness.live.workers import ROOT


class FrontendProcess:
    """A running frontend: `url`, `pid`, `out_dir`; `stop()` ends it and returns its exit code."""

    def __init__(self, proc: subprocess.Popen, url: str, out_dir: Path, log):
        self.proc = proc
        self.url = url
        self.out_dir = out_dir
        self._log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait up to `timeout` for it to write its records and stop its workers, then SIGKILL."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    signal_group(self.proc, signal.SIGKILL)
                    self.proc.wait(10)
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "FrontendProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_frontend(config_path: str | os.PathLike, epoch: float, out_dir: str | os.PathLike,
                   host: str = "127.0.0.1", port: int = 0, extra_args: list[str] = (),
                   ready_timeout_s: float = 60.0) -> FrontendProcess:
    """Launch `python -m harness.live.frontend` and wait for its ready line (HarnessError if it never comes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "harness.live.frontend", "--config", str(config_path), "--epoch", repr(float(epoch)),
           "--out", str(out_dir), "--host", host, "--port", str(port), "--exit-with-parent", *extra_args]
    log = open(out_dir / "frontend.log", "w+b")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
                            start_new_session=True)
    def abandon() -> str:
        # Nothing started may outlive a failed start (nor a Ctrl-C while waiting for it).
        signal_group(proc, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        tail = _tail(log)
        log.close()
        return tail

    try:
        line = _read_line(proc, ready_timeout_s)
        url = json.loads(line)["url"]
    except _NotReady:
        raise HarnessError(f"the frontend exited with code {proc.returncode} before it was ready{abandon()}") from None
    except _Timeout:
        raise HarnessError(f"the frontend was not ready within {ready_timeout_s:g} s{abandon()}") from None
    except (ValueError, KeyError, TypeError):
        raise HarnessError(f"the frontend printed {line[:200]!r} instead of its ready line{abandon()}") from None
    except BaseException:
        abandon()
        raise
    return FrontendProcess(proc, url, out_dir, log)


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
