"""The discrete-event runtime: virtual time, emulated slots, the same policies.

One heap of timed events (timers, batch completions, slots joining) merged
with the request schedule, which is already sorted, so arrivals cost no heap
operations. Each slot runs its batches in dispatch order, for the profiled
latency beside as much of the rest of its device as works when the batch
starts (harness.profiles; optionally with Gaussian noise of the profile's
std, clipped at half the mean; times a draw of the execution spread a
calibration measured, where it did; a batch that waited at its slot starts a
draw of the calibrated turnaround after the one before it ended, where that
was measured). On a share whose time depends on that (one
profiled alone and beside busy siblings) a batch waits in its slot's queue
and is timed when it starts, beside whatever its siblings were sent
meanwhile, as an emulated worker reads its device then; and the policy sees
such a slot as the live runtime shows a real share, busy for the profile's
busy time per batch sent and corrected as batches end (Slot.busy_until is
that prediction). Every other batch is timed when it is sent, and its
slot's busy_until is exact. Every outcome goes through the run's ledger
(harness.ledger), as in the live runtime. Deterministic for a seed: heap
ties break by insertion order.

A reconfiguration (Cluster.reconfigure) removes slots at once and starts the
new ones once the slots leaving their device have drained, plus their
start cost: what the profile measured on the GPU (a worker process, its
models, their CUDA graphs), else `slot_start_s`. With overlap the new ones
start at once and the slots they replace serve until they join. A computation a policy offloads (Cluster.offload, an
allocation solve) runs at once and takes no virtual time. A preempted batch
runs to its end (runtime.preemption=finish, what a real GPU does) or stops
(abort) when its stop reaches the slot, a dispatch delay after the policy sent
it and never before the batch itself got there.
"""

from __future__ import annotations

import bisect
import gc
import heapq
import itertools
import sys
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from harness.calibrate import Overheads
from harness.core import DROPPED, FINISH, NAN, Batch, HeapTimer, Policy, Slot, Task
from harness.errors import HarnessError
from harness.ledger import Ledger
from harness.placement import Placement
from harness.profiles import LatencyCurve


@contextmanager
def _collector_paused():
    """No cyclic garbage collection while the sim runs: it kept every task of the run alive anyway
    (the records need them), and its passes over them took about half the run's time. Reference
    counting still frees what the policies throw away; the collector resumes when the run ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class _Waiting:
    """A batch sent to a share beside siblings, to be timed when it starts."""

    __slots__ = ("batch", "curves", "ready", "expected", "latest_start", "delay", "cut_told", "begin", "stop",
                 "waited")

    def __init__(self, batch, curves, ready, expected, latest_start, delay):
        self.batch, self.curves, self.ready, self.expected = batch, curves, ready, expected
        self.latest_start, self.delay = latest_start, delay
        self.cut_told: float | None = None    # when a stop at its next stage boundary reached the slot
        self.begin: list | None = None         # its start event, once it is the slot's next batch
        self.stop: float | None = None         # preempted before it started: when its stop reaches the slot
        self.waited = False                    # it reached the slot before the batch ahead of it ended


class _Drawn:
    """One value at a time of draw(n), drawn 4,096 at a time: a numpy call per value would cost more than
    the event it times."""

    __slots__ = ("draw", "left")

    def __init__(self, draw: Callable[[int], np.ndarray]):
        self.draw, self.left = draw, []

    def next(self) -> float:
        if not self.left:
            self.left = self.draw(4096).tolist()
        return self.left.pop()


class _Spread:
    """A batch's execution over its typical time, drawn from the calibration's spread for batches about as long
    (the first bin measured whose upper bound reaches it, else the longest), or from its pooled spread."""

    __slots__ = ("bounds", "draws")

    def __init__(self, bounds: list[float], draws: list[_Drawn]):
        self.bounds, self.draws = bounds, draws

    @classmethod
    def of(cls, overheads: Overheads, seed: int) -> _Spread | None:
        by_length = overheads.spread_by_length(seed)
        if by_length:
            bounds = sorted(by_length)
            return cls(bounds, [_Drawn(by_length[up]) for up in bounds])
        pooled = overheads.spread(seed)
        return cls([], [_Drawn(pooled)]) if pooled is not None else None

    def next(self, typical_s: float) -> float:
        # (the pooled spread: no bounds, so its one draw)
        return self.draws[min(bisect.bisect_left(self.bounds, typical_s), len(self.draws) - 1)].next()


class SimCluster:
    """The Cluster handle of the discrete-event runtime."""

    def __init__(self, ledger: Ledger, noise: bool = False, seed: int = 0, slot_start_s: float = 0.0,
                 overheads: Overheads | None = None, preemption: str = FINISH):
        self.ledger = ledger
        self.preemption = preemption
        self.overheads = overheads or Overheads()
        self._delays = _Drawn(self.overheads.sampler("dispatch", seed))
        self._spread = _Spread.of(self.overheads, seed)    # a batch's execution over its typical time, or None
        turnaround = self.overheads.turnaround(seed)   # a slot's hand-over to a batch waiting there, or None
        self._turnaround = _Drawn(turnaround) if turnaround is not None else None
        self.slots: list[Slot] = ledger.slots
        self._now = 0.0
        self._heap: list[list] = []
        self._seq = itertools.count()
        self._noise = noise
        self._normal = _Drawn(np.random.default_rng(seed).standard_normal).next
        self.slot_start_s = slot_start_s
        self._running: dict[int, list] = {}   # slot -> completion entry of its last batch
        self._chains: dict[int, tuple] = {}   # slot -> its last chain: (batch, completion entry, stage ends)
        # Shares beside siblings (SimCluster.dispatch): per slot, whether it is one, the batches sent to it
        # and not started, the one it runs (or discards), the time it will run until, and what the policy
        # was told to expect of what it holds.
        self._beside: dict[int, bool] = {}
        self._waiting: defaultdict[int, deque[_Waiting]] = defaultdict(deque)
        self._started: dict[int, _Waiting] = {}
        self._until: defaultdict[int, float] = defaultdict(float)   # every slot: until when it runs a batch
        self._batch: dict[int, int] = {}            # every slot: the size it runs its batch at (padded)
        self._expected: defaultdict[int, float] = defaultdict(float)
        self._ready: dict[int, float] = {}          # a whole slot: when its last batch reached it
        self._policy: Policy | None = None

    @property
    def batches(self) -> list[Batch]:
        return self.ledger.batches

    @property
    def pending(self) -> int:
        return self.ledger.pending

    # -- the Cluster interface ------------------------------------------------
    def now(self) -> float:
        return self._now

    def call_at(self, t: float, fn: Callable[[], None]) -> HeapTimer:
        entry = [t if t > self._now else self._now, next(self._seq), fn]
        heapq.heappush(self._heap, entry)
        return HeapTimer(entry)

    def offload(self, fn: Callable[[], object], then: Callable[[object], None]) -> None:
        # At once, at the same virtual time: the policy decides exactly as if it had computed inline.
        then(fn())

    def curve(self, model: str, slot: int) -> LatencyCurve:
        return self.ledger.curves[slot][model]

    def dispatch(self, slot: int, model: str, tasks: list[Task], latest_start: float | None = None,
                 stage: int | None = None, through: int | None = None) -> Batch:
        now = self._now
        batch, curves = self.ledger.open_batch(slot, model, tasks, now, latest_start, stage, through)
        s = self.slots[slot]
        left = self._delays.left
        delay = left.pop() if left else self._delays.next()     # (inline: once per batch)
        ready = now + delay
        beside = self._beside.get(slot)
        if beside is None:
            beside = self._beside[slot] = any(c.alone is not None or any(st.alone is not None for st in c.stages)
                                              for c in self.ledger.curves[slot].values())
        if beside:
            # A share beside siblings: its time depends on what works on its device when it starts, which
            # nobody knows when it is sent. It waits in the slot's queue and is timed then (_begin). The
            # policy sees the slot busy for the profile's time beside busy siblings, as the live runtime
            # predicts a real share, corrected as batches end (_ended).
            expected = curves[0].mean[batch.size] if len(curves) == 1 else sum(c.mean[batch.size] for c in curves)
            s.busy_until = (s.busy_until if s.busy_until > now else now) + expected
            self._expected[slot] += expected
            waiting = self._waiting[slot]
            waiting.append(_Waiting(batch, curves, ready, expected, latest_start, delay))
            if len(waiting) == 1 and slot not in self._started:
                waiting[0].begin = self._push(max(ready, self._until[slot]), self._begin, batch)
            return batch
        queued = s.busy_until > ready
        start = s.busy_until if queued else ready
        self._ready[slot] = ready             # (preempt: whether its stop finds it started)
        if latest_start is not None and start > latest_start + delay + 1e-12:
            # The slot would start it too late: it discards the batch when it reaches it. As a live worker
            # does, it counts only the wait in its own queue, not the way to it (the dispatch delay).
            batch.t_start = batch.t_end = start
            self._push(start, self._discard, batch)
            return batch
        if queued and self._turnaround is not None:
            start += self._turnaround.next()  # the slot's hand-over from the batch before (not counted as late)
        self._run_batch(batch, curves, start)
        s.busy_until = batch.t_end
        return batch

    def _run_batch(self, batch: Batch, curves: Sequence[LatencyCurve], start: float) -> None:
        """`batch` starts at `start` and runs for its profile beside what works on its device then."""
        slot, b = batch.slot, batch.size
        batch.t_start = start
        # A share runs slower the more of the rest of its device works (profiled alone and beside busy siblings).
        busy, sibling_batch = 0.0, None
        if self._beside.get(slot):
            busy, sibling_batch = self.ledger.beside(slot, start, self._until, self._batch)
            self._batch[slot] = curves[0].padded(b)      # what its siblings see it run
        if len(curves) == 1:
            batch.t_end = self._until[slot] = start + self._exec_time(curves[0], b, busy, sibling_batch)
            self._running[slot] = self._push(batch.t_end, self._complete, batch)
        else:                                 # a chain: where each stage ends, for a stop at a boundary
            ends = list(itertools.accumulate((self._exec_time(c, b, busy, sibling_batch) for c in curves),
                                             initial=start))[1:]
            batch.t_end = self._until[slot] = ends[-1]
            self._running[slot] = entry = self._push(batch.t_end, self._complete, batch)
            self._chains[slot] = (batch, entry, ends)

    def _begin(self, batch: Batch) -> None:
        """A share reaches the first batch in its queue: it discards it if it is too late to start, else
        runs it beside what works on its device now."""
        now, slot = self._now, batch.slot
        w = self._waiting[slot].popleft()
        self._started[slot] = w
        late = w.latest_start is not None and now > w.latest_start + w.delay + 1e-12
        if w.stop is not None:                # preempted before it started (preempt)
            if late or now > w.stop + 1e-12:
                self._ended(batch)            # its stop got here first: it never starts
                return
            self._run_batch(batch, w.curves, now)
            entry = self._running[slot]
            if self.preemption == FINISH:
                self._chains.pop(slot, None)  # (_stop drops them under abort)
                entry[2] = self._ended        # it runs to its end and completes nothing
            else:
                self._stop(slot, entry, batch, w.stop)
        elif late:
            batch.t_start = batch.t_end = now     # too late (see dispatch)
            self._push(now, self._discard, batch)
        else:
            # One that waited here starts after the slot's hand-over to it (a discarded one costs none).
            handover = self._turnaround.next() if w.waited and self._turnaround is not None else 0.0
            self._run_batch(batch, w.curves, now + handover)
            if w.cut_told is not None and len(w.curves) > 1:
                self._cut_chain(slot, w.cut_told)

    def _ended(self, batch: Batch) -> None:
        """A share's batch ended (ran or discarded): the policy's view of the slot is corrected as the live
        runtime corrects it when the reply comes (the slot is free now if nothing else waits, else busy for
        at least what waits), and the share starts the next batch waiting."""
        slot = batch.slot
        w = self._started.pop(slot)
        s = self.slots[slot]
        waiting = self._waiting[slot]
        self._expected[slot] -= w.expected
        if not waiting:
            self._expected[slot] = 0.0       # (no float residue when empty)
            if s.busy_until > self._now:
                s.busy_until = self._now
        elif self._now + self._expected[slot] > s.busy_until:
            s.busy_until = self._now + self._expected[slot]
        if waiting:
            head = waiting[0]
            head.waited = head.ready < self._now
            head.begin = self._push(max(self._now, head.ready), self._begin, head.batch)

    def _exec_time(self, curve: LatencyCurve, b: int, busy: float, sibling_batch: float | None) -> float:
        """The profiled mean beside `busy` of the rest of the device at work on batches of about
        `sibling_batch`, or with noise a draw around it (clipped at half the mean); times the calibrated
        execution spread where the calibration measured one."""
        typical = exec_time = curve.beside(b, busy, sibling_batch)
        if self._noise and curve.std[b] > 0:
            exec_time = max(0.5 * exec_time, exec_time + curve.std[b] * self._normal())
        if self._spread is not None:
            exec_time *= self._spread.next(typical)      # (its length's spread: by the typical time, not a draw)
        return exec_time

    def stop_at_boundary(self, slot: int) -> None:
        waiting = self._waiting.get(slot)
        if waiting and slot not in self._started:   # the chain has not started: it stops after its first stage
            if len(self.ledger.inflight[slot]) != 1:
                raise ValueError(f"stop_at_boundary needs the chain to be the only batch in flight on slot {slot}")
            waiting[0].cut_told = self._now + self._next_delay()
            return
        chain = self._chains.get(slot)
        if chain is None or chain[0].status or chain[1][2] is None:
            return                            # no chain running there (it ended, failed or never was)
        if len(self.ledger.inflight[slot]) != 1:
            raise ValueError(f"stop_at_boundary needs the chain to be the only batch in flight on slot {slot}")
        self._cut_chain(slot, self._now + self._next_delay())     # the request travels as a dispatch does

    def _cut_chain(self, slot: int, told: float) -> None:
        """The slot's running chain hears at `told` to stop at its next stage boundary."""
        batch, entry, ends = self._chains[slot]
        i = next((i for i, end in enumerate(ends) if end >= told), len(ends) - 1)
        if i == len(ends) - 1:
            return                            # it runs its last stage already
        self.ledger.cut(batch, batch.stage + i)
        entry[2] = None                       # the old completion never fires
        batch.t_end = self._until[slot] = ends[i]
        if not self._beside.get(slot):        # (a share's policy view changes when the batch ends)
            self.slots[slot].busy_until = ends[i]
        self._running[slot] = self._push(batch.t_end, self._complete, batch)
        del self._chains[slot]

    def drop(self, tasks: Sequence[Task], reason: str, status: str = DROPPED) -> None:
        self.ledger.drop(tasks, self._now, reason, status)

    def preempt(self, slot: int) -> list[Task]:
        if len(self.ledger.inflight[slot]) != 1:
            raise ValueError(f"preempt needs exactly one running batch on slot {slot}")
        # The stop travels to the slot as a dispatch does, behind the batch on the same way, which it never
        # overtakes (as a live worker reads them): a batch sent to an idle slot has started when its stop
        # arrives, and only one waiting behind another until after then never starts.
        now = self._now
        told = now + self._next_delay()
        waiting = self._waiting.get(slot)
        if waiting and waiting[-1].stop is None:      # a share's batch, sent and not started (the last sent)
            w = waiting[-1]
            # Whether it starts is seen when the share reaches it (_begin): it does if it gets there first.
            w.stop = max(told, w.ready)
            if self.preemption != FINISH:
                self._free_to_policy(slot, w)
            return self.ledger.preempt(w.batch, now)
        entry = self._running.get(slot)
        if entry is None or entry[2] is None or entry[0] <= now:
            raise ValueError(f"preempt needs exactly one running batch on slot {slot}")
        batch = entry[3]
        s = self.slots[slot]
        if slot not in self._started and batch.t_start > max(told, self._ready.get(slot, now)):
            # A whole slot's batch waiting behind a batch preempted before: it never starts.
            entry[2] = None
            s.busy_until = self._until[slot] = batch.t_start
            batch.t_start = NAN
            return self.ledger.preempt(batch, now)
        if self.preemption == FINISH:
            # It runs to its end, holding the slot (and its part of the device) until then; its end
            # completes nothing, but on a share it still starts what waits behind it.
            entry[2] = self._ended if slot in self._started else None
            return self.ledger.preempt(batch, batch.t_end)
        if slot in self._started:
            self._free_to_policy(slot, self._started[slot])
        self._stop(slot, entry, batch, told)
        return self.ledger.preempt(batch, batch.t_end)

    def _free_to_policy(self, slot: int, w: _Waiting) -> None:
        """A share's batch preempted under abort: the policy sees the share free at once, as the live runtime
        shows it, and no longer expects the batch's time there."""
        self._expected[slot] -= w.expected
        w.expected = 0.0
        self.slots[slot].busy_until = self._now

    def _stop(self, slot: int, entry: list, batch: Batch, told: float) -> None:
        """The running `batch` stops where its stop reaches the slot (runtime.preemption=abort): at `told`,
        or as it starts if the stop came right behind it, or at its end if it ends first."""
        end = min(max(told, batch.t_start), batch.t_end)
        entry[2] = None                       # its completion never fires
        batch.t_end = self._until[slot] = end
        self._chains.pop(slot, None)
        if slot in self._started:             # a share: what waits behind it starts once it stops
            self._running[slot] = self._push(end, self._ended, batch)
        else:                                 # a whole slot: exact, as every batch's start on it is
            self.slots[slot].busy_until = end

    @property
    def placement(self) -> Placement:
        return self.ledger.placement

    def reconfigure(self, placement: Placement, overlap: bool = False) -> None:
        now = self._now
        rec = self.ledger.plan(placement, now, overlap)
        for slot in rec.left:
            self._policy.on_slot_lost(slot)
        for slot in rec.joining:
            s = self.slots[slot]
            # A device's new shares start once the shares leaving it have run what they hold (a share's queue,
            # for as long as it is expected to take: its batches are timed when they start), a preempted
            # batch running to its end included; with overlap, at once, beside the shares they replace.
            drained = max([o.busy_until for o in self.slots if o.device == s.device and not o.alive
                           and (o.outstanding or self._until[o.index] > now) and o.index != slot], default=now)
            self._push((now if overlap else max(now, drained)) + self.start_cost(slot), self._join, slot)

    def start_cost(self, slot: int) -> float:
        """Seconds the slot takes to start: what its profile measured on the GPU (a worker process, then
        its models), else `slot_start_s`."""
        measured = LatencyCurve.start_cost(self.ledger.curves[slot].values())
        return self.slot_start_s if measured is None else measured

    # -- event loop -------------------------------------------------------------
    def _push(self, t: float, fn: Callable, arg) -> list:
        entry = [t, next(self._seq), fn, arg]
        heapq.heappush(self._heap, entry)
        return entry

    def _next_delay(self) -> float:
        """The way from the policy to a slot (a dispatch, a stop request): the calibration's dispatch delay."""
        return self._delays.next()

    def _complete(self, batch: Batch) -> None:
        released = self.ledger.complete(batch, batch.t_start, batch.t_end)
        if batch.slot in self._started:
            self._ended(batch)
        if self.slots[batch.slot].alive:
            self._policy.on_batch_done(batch)
        if released:
            on_arrival = self._policy.on_arrival
            for task in released:
                on_arrival(task)

    def _discard(self, batch: Batch) -> None:
        self.ledger.discard(batch, self._now)
        if batch.slot in self._started:
            self._ended(batch)
        if self.slots[batch.slot].alive:
            self._policy.on_batch_done(batch)

    def lose(self, slot: int, reason: str) -> None:
        """The slot is lost now (a scripted fault): what it runs fails, the policy hears on_slot_lost."""
        if self.ledger.lose(slot, self._now, reason):
            self._running.pop(slot, None)
            self._chains.pop(slot, None)
            self._waiting.pop(slot, None)     # (their start events are among those below)
            self._started.pop(slot, None)
            for entry in self._heap:          # its queued completions and discards never fire
                if len(entry) == 4 and isinstance(entry[3], Batch) and entry[3].slot == slot:
                    entry[2] = None
            self._policy.on_slot_lost(slot)

    def _join(self, slot: int) -> None:
        if self.ledger.join(slot, self._now):
            for gone in self.ledger.replaced(self.slots[slot].device, self._now):
                self._policy.on_slot_lost(gone)       # what it holds runs to its end
            self._policy.on_slot_added(slot)

    def run(self, policy: Policy, ids: np.ndarray, targets: Sequence[str], times: np.ndarray,
            deadline_of: dict[str, float], drain: float, apps: dict | None = None,
            copies: Sequence[Sequence[int]] | None = None, stamped: np.ndarray | None = None,
            sizes: Sequence[int] | None = None) -> list:
        """Replay the schedule through `policy`; returns every request (plain task or app request).

        Request i reaches the policy at `times[i]`; its arrival (the start of its deadline) is
        `stamped[i]` (default: the same); `sizes[i]` items (a query already batched; default 1).
        `deadline_of` gives each target's SLO; app targets (in `apps`)
        arrive as task graphs with `copies[i]` tasks per node. After the last arrival the run goes on
        until every task is resolved or `drain` seconds of virtual time have passed; what is still
        pending then is recorded as a timeout.
        """
        with _collector_paused():
            return self._run(policy, ids, targets, times, deadline_of, drain, apps, copies,
                             times if stamped is None else stamped, sizes)

    def _run(self, policy, ids, targets, times, deadline_of, drain, apps, copies, stamped, sizes) -> list:
        self._policy = policy
        ledger = self.ledger
        heap, pop = self._heap, heapq.heappop
        append = ledger.items.append
        on_arrival = policy.on_arrival
        policy.start()
        times_list = times.tolist()
        stamped_list = stamped.tolist()
        ids_list = ids.tolist()
        wall0 = last_report = time.perf_counter()
        for i, t in enumerate(times_list):
            if not i & 0xFFFF and i:                      # a cheap check every 65,536 arrivals
                now_wall = time.perf_counter()
                if now_wall - last_report >= 5.0:         # long runs say how far they are
                    last_report = now_wall
                    from rich.console import Console     # imported only by runs long enough to report

                    done = i / len(times_list)
                    Console(file=sys.stderr, highlight=False).print(
                        f"\\[sim] {done:4.0%}  {t:,.1f}/{times_list[-1]:,.1f} s virtual  {i:,} requests  "
                        f"{i / (now_wall - wall0):,.0f} per wall second  [dim]about "
                        f"{(now_wall - wall0) * (1 - done) / done:,.0f} s left[/dim]", soft_wrap=True)
            while heap and heap[0][0] <= t:
                self._fire(pop(heap))
            self._now = t
            target = targets[i]
            t0 = stamped_list[i]
            if apps and target in apps:
                for task in ledger.arrive_app(ids_list[i], apps[target], t0, copies[i]):
                    on_arrival(task)
            elif sizes is not None:
                on_arrival(ledger.arrive(ids_list[i], target, t0, t0 + deadline_of[target], size=sizes[i]))
            else:
                # ledger.arrive(), inlined: this line runs once per request
                task = Task(ids_list[i], target, t0, t0 + deadline_of[target])
                append(task)
                ledger.pending += 1
                on_arrival(task)
        end = self._now + drain
        while heap and ledger.pending > 0 and heap[0][0] <= end:
            self._fire(pop(heap))
        self._now = max(self._now, end) if ledger.pending > 0 else self._now
        ledger.finish(self._now, "unresolved at end of run")
        return ledger.items

    def _fire(self, entry: list) -> None:
        fn = entry[2]
        if fn is None:
            return
        self._now = entry[0]
        if len(entry) == 4:
            fn(entry[3])
        else:
            fn()


def sim_cluster(assembly) -> SimCluster:
    """The run's cluster in virtual time, with a fresh ledger."""
    cfg = assembly.cfg
    ledger = Ledger(assembly.slots(emulated=True), assembly.curves(), assembly.curves_of)
    return SimCluster(ledger, noise=cfg.runtime.noise, seed=cfg.seeds.runtime, slot_start_s=cfg.runtime.slot_start_s,
                      overheads=assembly.overheads, preemption=cfg.runtime.preemption)


def simulate(assembly, schedule: pd.DataFrame):
    """Run the schedule in virtual time; the client is ideal (each request sent at its scheduled time)."""
    from harness.records import ledger_tables, server_frame, sim_client_view
    from harness.runtimes import Outcome

    cfg = assembly.cfg
    cluster = sim_cluster(assembly)
    ledger = cluster.ledger
    policy = assembly.make_policy(cluster)
    for fault in cfg.runtime.faults:
        cluster.call_at(fault.t, lambda fault=fault: cluster.lose(fault.slot, "scripted fault"))
    # Each request reaches the scheduler after a transport delay (fixed, or drawn from a calibration),
    # so the arrival order may differ from the schedule's.
    # The deadline counts from the ingress's stamp; the scheduler, and so the policy, hears of the
    # request later (a calibration measures both; a fixed request delay puts the stamp at the scheduler).
    n = len(schedule)
    overheads = cluster.overheads
    d_in = overheads.sampler("request", cfg.seeds.runtime)(n)
    d_out = overheads.sampler("response", cfg.seeds.runtime)(n)
    to_ingress = overheads.sampler("ingress", cfg.seeds.runtime)(n) if overheads.quantiles else d_in
    arrival = schedule["t_sched"].to_numpy() + d_in
    stamped = schedule["t_sched"].to_numpy() + np.minimum(to_ingress, d_in)
    order = np.argsort(arrival, kind="stable")
    targets = schedule["model"].to_numpy(dtype=object)[order].tolist()
    copies = [schedule["copies"].iloc[i] for i in order] if "copies" in schedule else None
    sizes = schedule["size"].to_numpy()[order].tolist() if "size" in schedule else None
    if sizes is not None and not assembly.policy_class.takes_queries:
        raise HarnessError(f"the workload's requests are batched queries (a size per request), which "
                           f"{cfg.system.name} does not take; choose a system that does (paris_elsa)")
    deadline_of = {m: s.slo for m, s in assembly.models.items()}
    wall = time.perf_counter()
    items = cluster.run(policy, schedule["id"].to_numpy()[order], targets, arrival[order], deadline_of,
                        drain=cfg.runtime.drain_s, apps=assembly.apps, copies=copies, stamped=stamped[order],
                        sizes=sizes)
    wall = time.perf_counter() - wall
    client = sim_client_view(server_frame(items), schedule["id"].to_numpy(), schedule["t_sched"].to_numpy(), d_out)
    return Outcome(client=client, tables=ledger_tables(ledger),
                   wall_seconds=wall,
                   notes=[f"simulated {len(items) / wall:,.0f} requests per wall second"] if wall > 0 else [])
