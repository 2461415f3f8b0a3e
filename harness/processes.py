"""Helpers for the child processes a run starts (workers, frontend, Locust): stopping and quoting them."""

from __future__ import annotations

import os
import subprocess


def wait_for(proc: subprocess.Popen, timeout: float) -> int:
    """proc.wait(timeout) for a child this thread alone waits on, after a Ctrl-C may have caught it polling.

    CPython's Popen.poll() takes the object's wait lock and releases it in a `finally` it enters only after
    taking it: a KeyboardInterrupt landing between the two leaves the lock held, and every later wait then
    times out though the child has exited (a live run polls its scheduler and Locust ten times a second, so
    a Ctrl-C does land there: the stop waited 40 s and ended in a traceback). The lock is released first."""
    lock = getattr(proc, "_waitpid_lock", None)     # private, so only where this CPython has it
    if proc.returncode is None and lock is not None and lock.locked():
        try:
            lock.release()
        except RuntimeError:            # released meanwhile
            pass
    return proc.wait(timeout)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process's group (it runs in its own session), so nothing it started survives."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def log_tail(log, limit: int = 3000) -> str:
    """The last `limit` bytes of an open log file ("" if unreadable), for error messages."""
    if log is None:
        return ""
    try:
        log.flush()
        size = os.fstat(log.fileno()).st_size
        return os.pread(log.fileno(), limit, max(0, size - limit)).decode(errors="replace").strip()
    except (OSError, ValueError):
        return ""
