"""Which CPU core the scheduler's event loop runs on (runtime.scheduler_cpu).

The scheduler is one process on one core: every arrival, timer and reply of
a run passes through its loop, so that core is the runtime's ceiling. With
a core number, or `auto` (on a host of at least MIN_CORES usable cores:
each core measured with reference_work, about a second in all, and the
fastest taken), the scheduler's loop runs on that core alone, and the run's
other processes (ingresses, workers, the load generator) and the threads
its solvers run in are kept off it, so nothing competes for it. `none`, the
default, leaves placement to the operating system.

Why it is not the default: lent hosts are not uniform, across cores or over
time. On one 16-core H200 host four cores ran the reference work in 66-74
ms and the other twelve in 35-39 ms; on another, the core measured fastest
(17.6 ms for half the work) ran the whole work in 37-75 ms over the next
minutes. In the scheduler-only stress at 100,000 req/s on a third, runs
pinned to the core measured fastest were no better than runs the operating
system placed. Pinning is for hosts whose cores are the scheduler's to
give: set the core, and keep other work off it.
"""

from __future__ import annotations

import heapq
import os
import time
from concurrent.futures import ThreadPoolExecutor

from harness.errors import HarnessError

MIN_CORES = 8              # auto pins only on hosts with at least this many usable cores (else none)
_others: set[int] = set()  # when this process is pinned: the cores left to the processes it starts


def reference_work(n: int = 50_000) -> None:
    """A fixed piece of the interpreter work a scheduler does: objects made, dicts, a heap, method calls."""

    class Item:
        __slots__ = ("t", "k")

        def __init__(self, t, k):
            self.t, self.k = t, k

    heap, seen = [], {}
    for i in range(n):
        item = Item((i * 7919) % 10_007 * 1e-6, i)
        seen[i] = item
        heapq.heappush(heap, (item.t, i))
        if i % 3 == 0:
            seen.pop(heapq.heappop(heap)[1], None)


def core_speed_ms(repeats: int = 5, n: int = 50_000) -> float:
    """The best of `repeats` timings of reference_work on the core this runs on, in ms (lower is faster)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        reference_work(n)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def usable() -> set[int]:
    """The cores this process may run on."""
    return set(os.sched_getaffinity(0))


def speeds(cores=None, repeats: int = 2, n: int = 25_000) -> dict[int, float]:
    """core -> ms of reference_work(n) there, the best of `repeats` (this process visits each core in turn,
    then runs where it ran before)."""
    allowed = usable()
    out = {}
    try:
        for core in sorted(allowed if cores is None else cores):
            os.sched_setaffinity(0, {core})
            out[core] = core_speed_ms(repeats, n)
    finally:
        os.sched_setaffinity(0, allowed)
    return out


def parse(setting) -> str | int:
    """runtime.scheduler_cpu as "auto", "none" or a core number (HarnessError for anything else)."""
    text = str(setting).strip().lower()
    if text in ("auto", "none"):
        return text
    try:
        core = int(text)
    except ValueError:
        core = -1
    if core < 0:
        raise HarnessError(f"runtime.scheduler_cpu must be auto, none or a core number (got {setting!r}); "
                           "set runtime.scheduler_cpu=none")
    return core


def check(setting) -> str | int:
    """runtime.scheduler_cpu parsed (parse), and a core number one this host lets the process use (the
    scheduler runs on the orchestrator's host): HarnessError otherwise."""
    core = parse(setting)
    if isinstance(core, int) and core not in usable():
        raise HarnessError(f"runtime.scheduler_cpu={core} is not a core this host lets the scheduler use "
                           f"({_ranges(usable())}); pick one of those, or set runtime.scheduler_cpu=none")
    return core


def choose(setting) -> tuple[int | None, dict[int, float]]:
    """(the core to pin to, or None; each core's speed where they were measured) for runtime.scheduler_cpu
    (check)."""
    core = check(setting)
    if core == "none":
        return None, {}
    if core == "auto":
        allowed = usable()
        if len(allowed) < MIN_CORES:
            return None, {}
        measured = speeds(allowed)
        return min(measured, key=lambda c: (measured[c], c)), measured
    return core, {}


def pin(core: int) -> None:
    """Run the calling thread (the event loop's) on `core` alone; keep_off puts the processes it starts on the
    other cores, and executor() the threads it starts."""
    global _others
    allowed = usable()
    os.sched_setaffinity(0, {core})
    _others = allowed - {core}


def executor() -> ThreadPoolExecutor:
    """Threads for what the loop offloads (the solvers, which release the GIL while they run): on the cores
    left to others, where they run beside the loop, not on its core (a thread inherits its creator's core:
    measured on an H200 host, a plan solved on the loop's own core held jigsaw's arrivals up 30-40 ms)."""
    return ThreadPoolExecutor(initializer=_leave_core)


def _leave_core() -> None:
    if _others:
        os.sched_setaffinity(0, _others)


def keep_off(pid: int, cores=()) -> None:
    """A process this one started: off `cores`, and off this process's own core when it is pinned (children
    inherit it). Best effort: a process that has already exited, or a host that refuses, keeps its cores."""
    if not _others and not cores:
        return                                     # not pinned, nothing to avoid: it keeps what it inherited
    try:
        wanted = (_others or set(os.sched_getaffinity(pid))) - set(cores)
        if wanted:
            os.sched_setaffinity(pid, wanted)
    except OSError:
        pass


def _ranges(cores: set[int]) -> str:
    """0-3,6 for {0, 1, 2, 3, 6}."""
    runs: list[list[int]] = []                     # [first, last] of each run of consecutive cores
    for c in sorted(cores):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def describe(core: int | None, measured: dict[int, float]) -> str:
    """One line for the logs: where the scheduler runs and how the cores compared."""
    if core is None:
        return "scheduler core: not pinned"
    if not measured:
        return f"scheduler core: {core} (as configured)"
    return (f"scheduler core: {core} ({measured[core]:.1f} ms of reference work; cores ranged "
            f"{min(measured.values()):.1f}-{max(measured.values()):.1f} ms)")
