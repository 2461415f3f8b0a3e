"""A private MPS control daemon that is always stopped.

    with mps_daemon() as mps:
        subprocess.run(cmd, env=mps.client_env(50))   # a client at 50% of the SMs

The daemon is the current user's own (nvidia-cuda-mps-control -d) with fresh
pipe and log directories, so it neither needs nor touches a system-wide MPS
setup, and no GPU setting is changed (no compute mode, MIG, clocks or
persistence). Leaving the block in any way -- normally, by an exception, by
KeyboardInterrupt -- sends `quit` to the daemon with the same environment,
waits for its processes to go, ends any that linger (by process id) and
removes the directories.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from harness.errors import HarnessError

CONTROL = "nvidia-cuda-mps-control"
PIPE_ENV = "CUDA_MPS_PIPE_DIRECTORY"
LOG_ENV = "CUDA_MPS_LOG_DIRECTORY"
PERCENTAGE_ENV = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"


@dataclass(frozen=True)
class MpsDaemon:
    pipe_dir: Path
    log_dir: Path
    control: str

    @property
    def env(self) -> dict[str, str]:
        """What the daemon and every client of it must share."""
        return {PIPE_ENV: str(self.pipe_dir), LOG_ENV: str(self.log_dir)}

    def client_env(self, percentage: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a client process limited to `percentage` of the GPU's SMs."""
        if not 1 <= int(percentage) <= 100:
            raise HarnessError(f"MPS active thread percentage must be 1..100 (got {percentage})")
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        env[PERCENTAGE_ENV] = str(int(percentage))
        return env

    def command(self, text: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
        """Send one control command (e.g. 'get_server_list', 'quit') to this daemon."""
        return subprocess.run([self.control], input=text + "\n", env={**os.environ, **self.env},
                              capture_output=True, text=True, timeout=timeout)

    def log_tail(self, lines: int = 20) -> str:
        log = self.log_dir / "control.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no control log)"


@contextmanager
def mps_daemon(control: str = CONTROL, start_timeout: float = 15.0,
               stop_timeout: float = 30.0) -> Iterator[MpsDaemon]:
    binary = shutil.which(control)
    if binary is None:
        raise HarnessError(f"'{control}' was not found on PATH: MPS partitions need the NVIDIA driver's "
                           "MPS tools; install them or profile partition=whole only")
    root = Path(tempfile.mkdtemp(prefix="harness-mps-"))
    daemon = MpsDaemon(root / "pipe", root / "log", binary)
    daemon.pipe_dir.mkdir()
    daemon.log_dir.mkdir()
    try:
        _start(daemon, start_timeout)
        yield daemon
    finally:
        _stop(daemon, stop_timeout, root)


def _start(daemon: MpsDaemon, timeout: float) -> None:
    started = subprocess.run([daemon.control, "-d"], env={**os.environ, **daemon.env},
                             capture_output=True, text=True, timeout=timeout)
    if started.returncode != 0:
        raise HarnessError(f"the MPS control daemon did not start (exit {started.returncode}: "
                           f"{(started.stderr or started.stdout).strip()}); log:\n{daemon.log_tail()}")
    deadline = time.monotonic() + timeout
    while True:                        # -d returns once forked; wait until the daemon answers
        try:
            answer = daemon.command("get_server_list", timeout=5.0)
            if answer.returncode == 0:
                return
        except subprocess.TimeoutExpired:
            answer = None
        if time.monotonic() > deadline:
            said = (answer.stderr or answer.stdout).strip() if answer else "no answer"
            raise HarnessError(f"the MPS control daemon does not answer ({said}); log:\n{daemon.log_tail()}")
        time.sleep(0.1)


def _stop(daemon: MpsDaemon, timeout: float, root: Path) -> None:
    """Quit the daemon; end by id any of its processes still there after `timeout`; then clean up."""
    ours = _processes_of(daemon)
    try:
        daemon.command("quit", timeout=timeout)
    except (subprocess.TimeoutExpired, OSError):
        pass
    deadline = time.monotonic() + timeout
    while ours and time.monotonic() < deadline:
        ours = [p for p in ours if _alive(p)] + [p for p in _processes_of(daemon) if p not in ours]
        if ours:
            time.sleep(0.1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if ours:
            time.sleep(1.0)
            ours = [p for p in ours if _alive(p)]
    if ours:
        raise HarnessError(f"MPS processes {ours} (pipe directory {daemon.pipe_dir}) survived quit, "
                           "SIGTERM and SIGKILL; end them by hand")
    shutil.rmtree(root, ignore_errors=True)


def _processes_of(daemon: MpsDaemon) -> list[int]:
    """Ids of the MPS control daemon and servers running with this daemon's pipe directory."""
    marker = f"{PIPE_ENV}={daemon.pipe_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
            if b"nvidia-cuda-mps" not in cmd:
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue                  # gone, or another user's
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
