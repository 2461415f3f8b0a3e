"""A precise asyncio event loop and the run clock shared by every live process.

Timers: asyncio sleeps in the selector's select(timeout), and epoll waits in
whole milliseconds, rounded up, so a timer fires up to 1 ms late (plus the
kernel's timer slack). Symphony defers batches to the last admissible
microsecond, so that error matters. `PreciseSelector` blocks until `spin`
before the deadline in select(2) on epoll's own descriptor (readable once
any descriptor it watches is; select's timeout is in microseconds), then
polls epoll until the deadline or an event, for the wake-up's own lateness
(tens of microseconds). It used to block in epoll's whole milliseconds and
poll the 0.5-1.5 ms left: Symphony at 650 req/s on a 2-core host then kept
the scheduler's core 62% busy polling (5% working), CPU its workers and
ingress lacked, and served 10% less than with no polling at all.

Clock: every process (frontend, load generator) reads
`now = wall - epoch`, the epoch (unix seconds) being chosen by the
orchestrator. To stay monotonic under NTP adjustments during a run, `Clock`
samples the offset between the wall clock and time.monotonic() once and
then counts on the monotonic clock, which is also asyncio's loop clock, so
converting a run time into loop time is one addition.
"""

from __future__ import annotations

import asyncio
import gc
import math
import select
import selectors
import time

SPIN = 0.0002      # seconds before a deadline at which blocking stops and polling starts


class PreciseSelector(selectors.DefaultSelector):
    """The platform's default selector with microsecond timeouts (see module doc).

    `waited` accumulates the seconds spent waiting in select (blocked or
    polling): over a span of wall time, 1 - waited/span is how busy the loop
    really was, the polling excluded.
    """

    def __init__(self, spin: float = SPIN):
        super().__init__()
        self.spin = spin
        self.waited = 0.0
        # select(2) takes its timeout in microseconds where epoll_wait takes whole milliseconds, and epoll's
        # own descriptor is readable while any it watches is ready: waiting on it blocks to the microsecond.
        # (select(2) handles descriptors below 1024 only; the loop's selector is made first, so it is.)
        fd = self.fileno() if hasattr(self, "fileno") else -1
        self._fine = [fd] if 0 <= fd < 1024 else None

    def select(self, timeout: float | None = None):
        t0 = time.monotonic()
        try:
            if timeout is None or timeout <= 0:
                return super().select(timeout)
            deadline = t0 + timeout
            block = timeout - self.spin
            if block > 0:
                if self._fine is not None:
                    readable, _, _ = select.select(self._fine, [], [], block)
                    if readable or self.spin <= 0:
                        return super().select(0)
                else:
                    # epoll's timeout is in whole ms rounded up; ask for just under block_ms so
                    # float error cannot round it up to block_ms + 1.
                    block_ms = math.floor(block * 1e3)
                    if block_ms >= 1:
                        ready = super().select((block_ms - 0.5) * 1e-3)
                        if ready:
                            return ready
            poll = super().select
            while True:
                ready = poll(0)
                if ready or time.monotonic() >= deadline:
                    return ready
        finally:
            self.waited += time.monotonic() - t0


def new_event_loop(spin: float = SPIN) -> asyncio.AbstractEventLoop:
    """A selector event loop whose timers fire within tens of microseconds of their time; its selector is
    `loop.precise_selector` (how long the loop waited: `waited_s(loop)`)."""
    selector = PreciseSelector(spin)
    loop = asyncio.SelectorEventLoop(selector)
    loop.precise_selector = selector
    return loop


def waited_s(loop: asyncio.AbstractEventLoop) -> float | None:
    """Seconds the loop has waited in select so far (blocked or polling before a timer); None on another loop."""
    selector = getattr(loop, "precise_selector", None)
    return selector.waited if selector is not None else None


def run(main, *, spin: float = SPIN):
    """asyncio.run(main) on the precise loop (tasks left over are cancelled, then the loop closed)."""
    loop = new_event_loop(spin)
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def quiet_gc() -> None:
    """Keep the cyclic garbage collector's full collections out of a timed run.

    A full collection scans every live object, and a run keeps a record of
    every request: it pauses the loop ~15 ms per 100k requests (107 ms
    measured at 600k), enough to distort the tail latencies being measured.
    This freezes what exists now and stops automatic full collections; the
    young generations are still collected and reference counting still frees
    all acyclic garbage, so only cyclic garbage that outlives two young
    collections waits for the process's exit.
    """
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1 << 30)


def wall_minus_monotonic(samples: int = 7) -> float:
    """time.time() - time.monotonic(), from the tightest of a few bracketed readings."""
    best = (float("inf"), 0.0)
    for _ in range(samples):
        m0 = time.monotonic()
        w = time.time()
        m1 = time.monotonic()
        best = min(best, (m1 - m0, w - 0.5 * (m0 + m1)))
    return best[1]


class Clock:
    """Seconds since `epoch` (unix seconds), read from the monotonic clock.

    `to_monotonic(t)` is the time.monotonic() value (= asyncio loop time) at
    run time t.
    """

    def __init__(self, epoch: float):
        self.epoch = float(epoch)
        self._offset = wall_minus_monotonic() - self.epoch   # run time = monotonic + offset

    def now(self) -> float:
        return time.monotonic() + self._offset

    def to_monotonic(self, t: float) -> float:
        return t - self._offset
