"""Run, sweep and search directories: one process each, and a finished one is never written again.

    claim(RUN, path)        # before anything is written into a run directory (HarnessError if refused)

A directory is claimed with an exclusive lock (fcntl.flock) on its .lock
file, held until the process exits, so two runs or searches started at once
with the same directory cannot mix their files: the second one stops at
once. A directory that holds a finished run (its summary.json) is refused
without a byte written into it; so is one that holds part of a run, which
only its owner may judge.

Exit statuses of the main job and the search (documented in the README):
0 complete (valid or not: the summary says), 2 bad input, 3 something broke
(records and summary written), 130 interrupted.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

LOCK = ".lock"
BROKE = 3
INTERRUPTED = 130


@dataclass(frozen=True)
class Kind:
    name: str           # run | sweep | search
    finished: str       # the file a finished one holds
    option: str         # where the user chooses the directory
    own: tuple          # what may be there before it starts: Hydra's files, the lock


RUN = Kind("run", "summary.json", "hydra.run.dir", (".hydra", "__main__.log", LOCK))
SWEEP = Kind("sweep", "multirun.yaml", "hydra.sweep.dir", (LOCK,))
SEARCH = Kind("search", "search.json", "--out", (LOCK,))

_held: dict[Path, int] = {}     # directory -> the open lock file this process holds


def claim(kind: Kind, path: Path) -> None:
    """Make `path` this process's own for the rest of its life (again: a no-op); HarnessError if it holds a
    finished or partial one, another process has it, or it cannot be made."""
    path = Path(path).resolve()
    if path in _held:
        return
    if path.exists() and not path.is_dir():
        raise HarnessError(f"{kind.name} directory '{path}' is a file; choose another {kind.option}")
    if (path / kind.finished).exists():
        raise HarnessError(f"{kind.name} directory '{path}' already holds a {kind.name}; choose another {kind.option}")
    lock = path / LOCK
    fd = _lock(kind, lock) if lock.exists() else None      # an existing lock file: whose is it?
    try:
        others = sorted(p.name for p in path.iterdir() if p.name not in kind.own) if path.exists() else []
        if others:
            raise HarnessError(f"{kind.name} directory '{path}' holds part of a {kind.name} that did not finish "
                               f"(no {kind.finished}; {', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); "
                               f"remove it or choose another {kind.option}")
        if fd is None:
            try:
                path.mkdir(parents=True, exist_ok=True)
                fd = _lock(kind, lock)
            except OSError as exc:
                raise HarnessError(f"cannot create the {kind.name} directory '{path}' ({exc.strerror}); "
                                   f"choose a writable {kind.option}") from None
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[path] = fd


def _lock(kind: Kind, lock: Path) -> int:
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise HarnessError(f"{kind.name} directory '{lock.parent}' is in use by another {kind.name} "
                           f"(pid {owner or '?'}); wait for it to end or choose another {kind.option}") from None
    return fd


def abandon(path: Path) -> str:
    """After a run was cut short before its summary: remove its directory unless it holds what a live run
    measured (the client's and the server's records), which is kept. Says which."""
    path = Path(path)
    if (path / "client").exists() or (path / "server.json").exists():
        return f"the run's raw records are kept in {path} (no summary: not a complete run)"
    shutil.rmtree(path, ignore_errors=True)
    return f"the run was cut short before it measured anything to keep; {path} is removed"


def failures(summary: dict) -> list[str]:
    """What broke during the run the summary describes (empty when it ran to its end, valid or not)."""
    return list(summary["validity"].get("failures", []))


def sweep_status(sweep: Path) -> tuple[int, str]:
    """After a sweep: its exit status and, unless 0, a line naming the runs that failed or broke."""
    jobs = sorted(p.parent for p in Path(sweep).rglob(".hydra") if p.parent != Path(sweep))
    refused = [j.name for j in jobs if not (j / RUN.finished).exists()]
    broke = [j.name for j in jobs if j.name not in refused
             and failures(json.loads((j / RUN.finished).read_text()))]
    if not refused and not broke:
        return 0, ""
    parts = ([f"{len(refused)} run(s) failed ({', '.join(refused)})"] if refused else []) + \
            ([f"{len(broke)} run(s) broke ({', '.join(broke)})"] if broke else [])
    return (BROKE if broke else 2), (f"error: {' and '.join(parts)} of {len(jobs)} in {sweep}; "
                                     "the others' results are complete; see each run's error above")
