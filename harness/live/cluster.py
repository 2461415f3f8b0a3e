"""LiveCluster: the Cluster handle of the live runtime (real time, batches run by worker processes).

It implements harness.core.Cluster as harness.runtimes.sim.SimCluster does,
on an asyncio loop, and records every outcome through the same ledger
(harness.ledger): `now()` is the run clock (seconds since the epoch the
orchestrator chose), timers are loop timers, and a dispatched batch goes to
the slot's worker through the pool (harness.live.workers.WorkerPool, or any
object with its `submit`, `abort`, `add`, `remove` and `on_lost`). When the
reply comes the ledger resolves the batch and its tasks, the policy hears
on_batch_done, and then `on_resolved` wakes whoever waits for each request:
the slot's next batch goes out before the answers' bookkeeping, as in the
simulation, where the policy's reaction costs no time.

Where it must differ from the simulation:

- `Slot.busy_until` is a prediction: max(now, busy_until) + profiled
  mean at dispatch, and now when the slot's last batch comes back (on an
  emulated share too, which runs faster than that mean when its siblings
  idle, as a real one does; the sim predicts shares so as well).
- A batch's t_end is the time its reply arrives, and t_start = t_end minus
  the execution time the worker measured.
- A lost slot (its worker died or hung): the ledger fails what it held
  (status error) and the policy hears on_slot_lost once.
- preempt() returns the running batch's tasks at once and asks the worker
  to stop it; the batch's times are filled in when the worker confirms.
  With runtime.preemption=finish (a real GPU's CUDA graph cannot stop
  part-way) the slot stays busy until then, as the policy is shown.
- reconfigure(): slots that leave stop taking batches at once; their
  workers are stopped once they have run what they hold; a new slot's
  worker starts once the slots leaving its device are stopped, and the slot
  joins when the worker answers (the cost is measured, not modelled). With
  overlap, the new workers start at once and the slots they replace serve
  until the last new slot of their device joins, then leave as above.
- offload(fn, then) runs fn in a worker thread (the loop's default
  executor) and calls then on the loop once it is done: arrivals and timers
  go on meanwhile, where the simulation calls then(fn()) at once.
- finish() ends the run: what is still pending becomes a timeout (as the
  simulation records what its drain leaves unresolved), and the policy is
  never called again (nor the `then` of a computation still running).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import itertools
import sys
import traceback
from array import array
from typing import Callable, Sequence

from harness.apps import App, AppNode
from harness.core import DROPPED, ERROR, FINISH, LATE, OK, PREEMPTED, Batch, HeapTimer, Policy, Task
from harness.errors import HarnessError
from harness.ledger import Ledger, spec_of
from harness.live.loop import Clock
from harness.placement import Placement
from harness.profiles import LatencyCurve


INF = float("inf")


class _LiveTimer(HeapTimer):
    __slots__ = ("cluster",)

    def __init__(self, entry: list, cluster: "LiveCluster"):
        self.entry = entry
        self.cluster = cluster

    def cancel(self) -> None:
        if self.entry[2] is not None:
            self.entry[2] = None
            self.cluster._cancelled += 1


class _NeverFires:
    def cancel(self) -> None:
        pass


class LiveCluster:
    """See module doc. Build it inside the running loop; then `start(policy)`, `arrive(...)`, `finish()`."""

    def __init__(self, ledger: Ledger, pool, clock: Clock, deadline_of: dict[str, float], apps: dict | None = None,
                 overheads=None, preemption: str = FINISH):
        self.ledger = ledger
        self.preemption = preemption
        self.overheads = overheads            # the measured delays (harness.calibrate), when given
        self.slots = ledger.slots
        self.pool = pool
        # Workers that read their device off a board (local emulated ones) need not be told how busy it is.
        self._tell_busy = getattr(pool, "board", None) is None
        self.clock = clock
        self.now = clock.now
        self._slo = deadline_of
        self._apps = apps or {}
        self._item_apps: dict[str, App] = {}     # a model's one-node app, for requests of several items
        self._rows: dict[Task, tuple[int, int]] = {}   # a task between stages: (batch, row) of its activations
        self._payload: dict[Task, list] = {}  # where a task's tensor is: [ingress, arena slot, offset, bytes]
        # Per slot, the profiled time of its batches dispatched and not yet answered: what a reply leaves it
        # holding is this less the reply's own batch, kept as a sum so that a slot queueing many batches
        # (Clockwork's) costs each reply O(1), not a pass over them all.
        self._queued_s: dict[int, float] = collections.defaultdict(float)
        self._loop = asyncio.get_running_loop()
        # Run time -> loop time: both count on the monotonic clock, so one offset does.
        self._to_loop = self._loop.time() - clock.now()
        self.timer_lag = array("d")           # per timer fired: fire time - planned time, seconds
        self._timers: list[list] = []         # the policy's timers: [run time, sequence, fn or None if cancelled]
        self._timer_seq = itertools.count()   # (timers due at one time fire in the order they were set)
        self._armed: asyncio.TimerHandle | None = None   # the loop's one timer, for the earliest of them
        self._armed_at = INF
        self._cancelled = 0                   # cancelled timers still in the heap
        self.policy_errors = 0
        self.reconfiguration_errors: list[str] = []
        self._policy: Policy | None = None
        self._finished = False
        self._tasks: set[asyncio.Task] = set()   # reconfigurations under way
        # A leaving slot with batches in flight -> a future done once it has none.
        self._draining: dict[int, asyncio.Future] = {}
        self.on_answer: Callable | None = None    # on_answer(origin, request) once it resolves
        # While a reply is handled, what it resolves waits here: the policy sends the slot's next batch
        # first, and the answers follow (a reply of a batch of n requests otherwise kept the slot idle
        # for n answers' bookkeeping; None: answer at once).
        self._held_answers: list | None = None
        self.on_batch_ok: Callable[[Batch], None] | None = None    # each batch that ran ok
        ledger.on_resolved = self._resolved
        pool.on_lost = self._on_lost

    @property
    def batches(self) -> list[Batch]:
        return self.ledger.batches

    @property
    def pending(self) -> int:
        return self.ledger.pending

    # -- the Cluster interface ------------------------------------------------
    def now(self) -> float:
        return self.clock.now()           # (the instance binds clock.now itself: one call less, per event)

    def call_at(self, t: float, fn: Callable[[], None]):
        # The policies' timers are kept in a heap of our own, as the sim keeps them, under one loop timer set
        # for the earliest: a policy that plans again on every arrival (Symphony's send time) moves a timer
        # on every arrival, and a loop timer costs an object, a heap of Python-compared handles, and a
        # cancelled handle left in it each time.
        if self._finished:
            return _NeverFires()
        now = self.clock.now()
        entry = [t if t > now else now, next(self._timer_seq), fn]
        heap = self._timers
        if self._cancelled > 256 and 2 * self._cancelled > len(heap):
            # Mostly cancelled timers (a plan moved on every arrival leaves one behind each time): sweep them
            # out at once, as asyncio does its own, rather than one heap pop each as their times come.
            heap[:] = [e for e in heap if e[2] is not None]
            heapq.heapify(heap)
            self._cancelled = 0
        heapq.heappush(heap, entry)
        if entry[0] < self._armed_at:
            self._arm(entry[0])
        return _LiveTimer(entry, self)

    def _arm(self, t: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed, self._armed_at = self._loop.call_at(t + self._to_loop, self._fire_timers), t

    def _fire_timers(self) -> None:
        """The timers due (those that come due meanwhile wait for the next turn, after what else is ready)."""
        self._armed, self._armed_at = None, INF
        now, heap, lag = self.clock.now, self._timers, self.timer_lag
        due = now() + 1e-7                    # (the loop may wake a hair early: float error between the clocks)
        while heap and heap[0][0] <= due:
            entry = heapq.heappop(heap)
            planned, fn = entry[0], entry[2]
            if fn is None:                    # cancelled
                self._cancelled -= 1
                continue
            entry[2] = None                   # fired: a cancel() now is not counted as one left in the heap
            if self._finished:
                return
            lag.append(now() - planned)
            try:
                fn()
            except Exception:
                self._policy_failed("timer")
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        if heap and heap[0][0] < self._armed_at:   # (a timer set by those that fired is armed already)
            self._arm(heap[0][0])

    def offload(self, fn: Callable[[], object], then: Callable[[object], None]) -> None:
        # In the loop's default executor (a thread): the solvers this is for (scipy's HiGHS) release the GIL,
        # so arrivals and timers go on meanwhile; what Python runs around the solve was measured to hold the
        # loop up no longer than a GIL-free thread does, so the GIL's switch interval is left as it is.
        # `then` runs on the loop, as any event.
        if self._finished:
            return
        future = self._loop.run_in_executor(None, fn)

        def done(future: asyncio.Future) -> None:
            if self._finished or future.cancelled():
                return
            try:
                then(future.result())     # result() raises what fn raised: a policy error too
            except Exception:
                self._policy_failed("offload")

        future.add_done_callback(done)

    def curve(self, model: str, slot: int) -> LatencyCurve:
        return self.ledger.curves[slot][model]

    def dispatch(self, slot: int, model: str, tasks: list[Task], latest_start: float | None = None,
                 stage: int | None = None, through: int | None = None) -> Batch:
        now = self.clock.now()
        batch, curves = self.ledger.open_batch(slot, model, tasks, now, latest_start, stage, through)
        s = self.slots[slot]
        b = batch.size
        start = s.busy_until if s.busy_until > now else now
        # Expected for the profile's time beside busy siblings (a bound for a share), emulated or not: an
        # emulated GPU must look to the policy as the real one does. The replies correct it (_on_reply).
        mean = curves[0].mean[b] if len(curves) == 1 else sum(c.mean[b] for c in curves)
        # An emulated share runs as slow as the rest of its device is busy when it starts: its worker reads
        # that off the device board; one without a board (on another host) runs as busy as expected here.
        busy = (self.ledger.beside(slot, start)[0]
                if self._tell_busy and s.emulated and curves[0].alone is not None else None)
        s.busy_until = start + mean
        self._queued_s[slot] += mean
        start_within = None if latest_start is None else latest_start - now
        rows = None
        if stage:          # a later stage takes its tasks' rows of the activations earlier stages left
            rows = [list(self._rows.pop(task)[1:]) for task in tasks]
        payload = None
        if self._payload and not stage:   # the first stage reads the tasks' tensors; later ones, activations
            payload = [self._payload.get(task) for task in tasks]
        # (positionally, in the pool's order: keywords cost a dict per batch)
        self.pool.submit(slot, batch.id, model, b, start_within, payload, mean, stage, rows,
                         functools.partial(self._on_reply, batch, mean), batch.through, busy)
        return batch

    def drop(self, tasks: Sequence[Task], reason: str, status: str = DROPPED) -> None:
        self.ledger.drop(tasks, self.clock.now(), reason, status)
        if self._rows:                    # tasks given up part-way: their activations are freed
            held = [self._rows.pop(task) for task in tasks if task in self._rows]
            for slot in {slot for slot, _, _ in held}:
                self.pool.free(slot, [[b, r] for s, b, r in held if s == slot])

    def preempt(self, slot: int) -> list[Task]:
        inflight = self.ledger.inflight[slot]
        if len(inflight) != 1:
            raise ValueError(f"preempt needs exactly one running batch on slot {slot} (it has {len(inflight)})")
        batch = next(iter(inflight.values()))
        now = self.clock.now()
        tasks = self.ledger.preempt(batch, now)
        if self.preemption != FINISH:         # it stops at once; with finish it holds the slot until its reply
            self.slots[slot].busy_until = now
            self._queued_s[slot] = 0.0          # it was the slot's one batch in flight
        self.pool.abort(slot, batch.id)
        self._drained(slot)
        return tasks

    def stop_at_boundary(self, slot: int) -> None:
        inflight = self.ledger.inflight[slot]
        if not inflight:
            return                             # the chain is answered already (its reply is on its way)
        if len(inflight) != 1:
            raise ValueError(f"stop_at_boundary needs the chain to be the only batch in flight on slot {slot}")
        batch = next(iter(inflight.values()))
        if batch.through != batch.stage:       # a chain: the worker stops it at its next boundary, and says where
            self.pool.stop_at_boundary(slot, batch.id)

    @property
    def placement(self) -> Placement:
        return self.ledger.placement

    def reconfigure(self, placement: Placement, overlap: bool = False) -> None:
        rec = self.ledger.plan(placement, self.clock.now(), overlap)
        for slot in rec.left:
            self._call_policy("on_slot_lost", slot)
        # Each leaving slot stops once it has run what it holds; a device's new shares start once the shares
        # leaving it are stopped (the device is never over-subscribed), or with overlap at once, beside the
        # shares they replace (MPS thread percentages are limits per client, not reservations). Both wait on
        # events, not by polling: a coroutine per slot polling every millisecond costs the loop more than
        # the arrivals do once a reconfiguration moves a hundred slots.
        stopping: dict[int, list[asyncio.Task]] = {}
        for slot in rec.left:
            stopping.setdefault(self.slots[slot].device, []).append(self._spawn(self._stop_slot(slot)))
        for slot in rec.joining:
            self._spawn(self._start_slot(slot, () if overlap else stopping.get(self.slots[slot].device, ())))

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- driving it ---------------------------------------------------------------
    def start(self, policy: Policy) -> None:
        """Attach the policy and call its start() (at the current run time, which may be before 0)."""
        self._policy = policy
        # The thread offload() runs in starts now, before the load: started by the first offload, it would hold
        # the loop up while it starts and takes the interpreter's lock (2 ms, measured at 100,000 arrivals/s).
        self._loop.run_in_executor(None, int)
        policy.start()

    def arrive(self, target: str, request_id: int, t_arrival: float, copies=None, origin=None, size: int = 1,
               payload: list | None = None) -> None:
        """A request for `target` (a model, or an app with its copies per node) arrived at `t_arrival`;
        `on_answer(origin, request)` is called once it resolves. A model's request with copies [n] is n
        items as n tasks of one request; with `size` n, one query of n items (a QueryTask). `payload`: where
        its tensor is, [ingress, arena slot, offset, bytes] (runtime.payload=tensor)."""
        if copies is None and payload is None and target not in self._apps:
            # A model's request without a tensor, nearly every arrival: its one task, straight to the policy
            # (the general path below costs a list and a loop per arrival, at 100,000 arrivals a second).
            task = self.ledger.arrive(request_id, target, t_arrival, t_arrival + self._slo[target], origin, size)
            try:
                self._policy.on_arrival(task)
            except Exception:
                self._arrival_failed(task)
            return
        app = self._apps.get(target)
        items = app is None and copies is not None
        if items:
            app = self._items_of(target)
        if app is not None:
            tasks = self.ledger.arrive_app(request_id, app, t_arrival, copies, origin)
        else:
            tasks = [self.ledger.arrive(request_id, target, t_arrival, t_arrival + self._slo[target], origin, size)]
        if payload is not None:
            if items:                     # n items: task i reads the i-th n-th of the tensor
                ingress, arena_slot, offset, nbytes = payload
                each = nbytes // len(tasks)
                for i, task in enumerate(tasks):
                    self._payload[task] = [ingress, arena_slot, offset + i * each, each]
            else:                         # a request, a query, or an app's first tasks: the whole tensor
                self._payload.update((task, payload) for task in tasks)
        for task in tasks:
            try:
                self._policy.on_arrival(task)
            except Exception:
                self._arrival_failed(task)

    def _arrival_failed(self, task: Task) -> None:
        self._policy_failed("on_arrival")
        if task.status is None:
            self.ledger.drop([task], self.clock.now(), "policy error", ERROR)

    def _items_of(self, model: str) -> App:
        app = self._item_apps.get(model)
        if app is None:
            app = self._item_apps[model] = App(model, self._slo[model], (AppNode(model, model),))
        return app

    def finish(self, reason: str = "unresolved at shutdown") -> None:
        """End of run: what is pending becomes a timeout, and the policy is called no more."""
        self._finished = True
        for task in self._tasks:
            task.cancel()
        if self._armed is not None:
            self._armed.cancel()
        self.ledger.finish(self.clock.now(), reason)

    def _resolved(self, item) -> None:
        if self._held_answers is not None:
            self._held_answers.append(item)
            return
        if self._payload:                 # its tensor's memory goes back to its ingress once it is answered
            for task in getattr(item, "tasks", None) or (item,):
                self._payload.pop(task, None)
        origin = self.ledger.origins.pop(item, None)
        if self.on_answer is not None and origin is not None:
            self.on_answer(origin, item)

    # -- replies, losses and reconfigurations ------------------------------------------
    def _on_reply(self, batch: Batch, mean: float, reply: dict) -> None:
        if self._finished:
            return
        now = self.clock.now()
        exec_time = float(reply.get("exec") or 0.0)
        if batch.status == PREEMPTED:           # the worker confirms when it really stopped
            batch.t_end, batch.t_start = now, now - exec_time
            if self.preemption == FINISH:       # it held the slot until now (the ledger let it go at once)
                self._left_slot(batch.slot, mean, now, holds=self.slots[batch.slot].outstanding)
            return
        if batch.status:                        # already failed: its slot was lost
            return
        s = self.slots[batch.slot]
        self._left_slot(batch.slot, mean, now, holds=s.outstanding - 1)
        self._held_answers = []
        try:
            self._settle(batch, s, now, exec_time, reply)
        finally:
            held, self._held_answers = self._held_answers, None
            for item in held:
                self._resolved(item)

    def _settle(self, batch: Batch, s, now: float, exec_time: float, reply: dict) -> None:
        """A reply of a batch that ran (or failed) in its slot: the ledger, then the policy."""
        status = reply.get("status")
        released = None
        if status == OK:
            reached = reply.get("reached")
            if reached is not None:            # a chain told to stop at a boundary: the last stage it ran
                self.ledger.cut(batch, reached)
            released = self.ledger.complete(batch, now - exec_time, now)
            if not batch.final:            # where each task's activations now are, for its next stage
                self._rows.update((task, (batch.slot, batch.id, row)) for row, task in enumerate(batch.tasks))
            if self.on_batch_ok is not None:
                self.on_batch_ok(batch)
        elif status == LATE:
            self.ledger.discard(batch, now)
        else:
            self.ledger.fail(batch, now, reply.get("error") or f"worker replied {status!r}", exec_time)
        if s.alive:
            try:                           # (as _call_policy, without its lookup by name: once per batch)
                self._policy.on_batch_done(batch)
            except Exception:
                self._policy_failed("on_batch_done")
        if released:
            for task in released:
                self._call_policy("on_arrival", task)
        if self._draining:
            self._drained(batch.slot)

    def _left_slot(self, slot: int, mean: float, now: float, holds: int) -> None:
        """A batch expected to take `mean` left `slot` now, which `holds` batches more: correct its busy_until."""
        s = self.slots[slot]
        others = self._queued_s[slot] - mean
        self._queued_s[slot] = others if holds else 0.0    # (no float residue when empty)
        if not holds and s.busy_until > now:
            s.busy_until = now
        elif holds:
            # What the slot still holds runs from now on: where it runs slower than profiled (shares of a
            # real GPU beside busy siblings), the predicted busy_until fell behind and would show a backlog
            # as gone to the policies that plan on it (ELSA's finish times). The sim knows each batch's time.
            rest = now + others
            if rest > s.busy_until:
                s.busy_until = rest

    def _drained(self, slot: int) -> None:
        """A leaving slot that holds no batch any more may stop (_stop_slot)."""
        if not self.slots[slot].outstanding and slot in self._draining:
            self._draining.pop(slot).set_result(None)

    def _on_lost(self, slot: int, reason: str) -> None:
        if self._finished or not self.ledger.lose(slot, self.clock.now(), reason):
            return
        self._queued_s[slot] = 0.0              # what it held failed with it
        self._call_policy("on_slot_lost", slot)
        self._drained(slot)

    def inject_loss(self, slot: int) -> None:
        """A scripted fault (runtime.faults): the slot is lost now, as in the sim, and its worker killed."""
        self._on_lost(slot, "scripted fault")
        self.pool.kill(slot)

    async def _stop_slot(self, slot: int) -> None:
        """A slot that left: its worker goes once it has run what it holds."""
        if self.slots[slot].outstanding:
            if slot not in self._draining:       # (a slot revived and leaving again waits with the first wait)
                self._draining[slot] = self._loop.create_future()
            await self._draining[slot]
        await self.pool.remove(slot)

    async def _start_slot(self, slot: int, stopping) -> None:
        """A slot that joined: it starts once the slots leaving its device (their _stop_slot tasks) are stopped."""
        if stopping:
            await asyncio.wait(stopping)
        s = self.slots[slot]
        began = self.clock.now()
        try:
            await self.pool.add(slot, spec_of(s))
        except HarnessError as exc:
            self.reconfiguration_errors.append(f"slot {slot} did not start: {exc}")
            print(f"live cluster: slot {slot} did not start: {exc}", file=sys.stderr, flush=True)
            return
        # An emulated share starts as long as the real GPU measured (its process, then its models); its own
        # worker is ready in about half a second.
        measured = LatencyCurve.start_cost(self.ledger.curves[slot].values()) if s.emulated else None
        if measured is not None and began + measured > self.clock.now():
            await asyncio.sleep(began + measured - self.clock.now())
        now = self.clock.now()
        if not self._finished and self.ledger.join(slot, now):
            for gone in self.ledger.replaced(s.device, now):
                self._call_policy("on_slot_lost", gone)
                self._spawn(self._stop_slot(gone))
            self._call_policy("on_slot_added", slot)

    def _call_policy(self, event: str, arg) -> None:
        try:
            getattr(self._policy, event)(arg)
        except Exception:
            self._policy_failed(event)

    def _policy_failed(self, where: str) -> None:
        self.policy_errors += 1
        print(f"live cluster: policy raised in {where}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
