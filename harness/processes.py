"""Helpers for the child processes a run starts (workers, frontend, Locust): stopping and quoting them."""

from __future__ import annotations

import os
import subprocess


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
