"""Shepherd Flex (Zhang et al., NSDI'23): largest feasible batch first, with preemption.

One deadline-ordered queue per model (FIFO: a model's requests share one
SLO). A model's candidate batch at time t: first drop the requests that
could not finish even alone (t + l(1) > deadline), then take the largest b
with t + l(b) <= the earliest deadline among its first b requests, which is
the head's.

- When a slot becomes idle (and on arrival when a slot holding the model is
  idle) it runs the model whose candidate batch is largest (ties: earliest
  head deadline, then model order).
- On arrival with no idle slot for the model, the arriving request's model
  gets its candidate batch b; the smallest batch s running on a slot holding
  the model (ties: lowest slot index) is preempted when b >= lambda * s.
  Its requests go back, still pending, to the front of their model's queue
  in deadline order, and the candidate goes to that slot: it starts at once
  where the executor can stop the victim (runtime.preemption=abort), else
  when the victim ends (finish, the default: a CUDA graph on a real GPU runs
  to its end).
  A victim of the arriving request's own model puts older requests back at the head, so the batch
  re-sent is often no larger than the victim (about half such preemptions in the sim on four H100
  shares at 1.5 x eager's capacity); refusing those changes its goodput by 0.0-0.6% there (two seeds,
  within the sim's spread between runtime draws), so the rule stays as the paper states it.

Each slot runs one batch at a time (dispatch only to idle slots), so a
preemption always finds exactly one running batch; idle slots are taken
lowest rank first. l(b) is the profiled mean.

Left out: Shepherd's Herd planner (grouping models and GPUs into serving
groups per epoch); here every slot that holds a model may serve it. And
stopping a batch part-way on a real GPU, which Shepherd's preemption assumes:
the harness's GPU executor replays one CUDA graph per batch, which cannot
stop, so there a preempted batch's work is lost and its slot busy until it
ends (measured on four H100 shares at 1.5 x eager's capacity: 1,259 of
9,271 batches preempted).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from itertools import accumulate

from harness.core import Batch, Policy, SystemConfig, Task, slots_holding, take
from harness.errors import HarnessError
from systems._pool import Pools

INF = float("inf")


@dataclass
class ShepherdConfig(SystemConfig):
    name: str = "shepherd"
    preempt_lambda: float = 3.03   # preempt when the new candidate batch is >= lambda x the running batch
    max_batch: int = 0             # cap on a batch; 0: the profile's largest


class _ModelState:
    __slots__ = ("name", "order", "queue", "l", "envelope", "max_batch", "pool")

    def __init__(self, name, order, l, max_batch, pool):
        self.name = name
        self.order = order                           # tie-break: position in the models config
        self.queue: deque[Task] = deque()
        self.l = l                                   # l[b]: profiled mean latency of a batch of b
        # Running maximum of l, so that bisect finds the largest batch that fits even on a
        # profile that is not quite monotone (exact on a monotone one).
        self.envelope = list(accumulate(l[: max_batch + 1], max))
        self.max_batch = max_batch
        self.pool = pool


class Shepherd(Policy):
    Config = ShepherdConfig

    def __init__(self, cluster, models, config: ShepherdConfig):
        super().__init__(cluster, models, config)
        if not config.preempt_lambda >= 1:
            raise HarnessError(f"shepherd: preempt_lambda must be >= 1 (got {config.preempt_lambda}): below 1 a "
                               "smaller batch would preempt a larger one; fix system.preempt_lambda")
        self.pools = Pools(cluster.slots)
        self.state: dict[str, _ModelState] = {}
        for i, m in enumerate(models):
            # Slots holding a model are assumed alike; the first one's profile stands for all.
            curve = cluster.curve(m, slots_holding(cluster.slots, m)[0])
            cap = min(config.max_batch or curve.max_batch, curve.max_batch)
            self.state[m] = _ModelState(m, i, curve.mean, cap, self.pools.of(m))
        self.held = {g.index: [self.state[m] for m in models if m in g.models] for g in cluster.slots}
        self.running: dict[int, Batch] = {}         # slot -> its running batch
        # Per pool, a heap of (size, slot, batch id) of running batches; stale entries are skipped.
        self.running_heap: dict[int, list] = {id(st.pool): [] for st in self.state.values()}
        # Per slot, the heaps of the pools it is in (one per pool), where _run records its batch.
        self.heaps_of_slot = {g: list({id(st.pool): self.running_heap[id(st.pool)] for st in held}.values())
                              for g, held in self.held.items()}
        self.queued = 0                             # requests in all queues: with none, _serve has nothing to scan

    # -- events -----------------------------------------------------------------
    def on_arrival(self, task: Task) -> None:
        st = self.state[task.model]
        st.queue.append(task)
        self.queued += 1
        now = self.cluster.now()
        rank, free = st.pool.peek(now)
        if rank < 0:
            return
        if free <= now:
            if self.queued == len(st.queue):
                # No other model has requests queued: _serve's scan would come to this, without scanning
                # (it reads the clock again; so does this).
                now = self.cluster.now()
                b = self.candidate(st, now)
                if b:
                    self._run(rank, st, b)
            else:
                self._serve(rank)
        else:
            self._maybe_preempt(st, now)

    def on_batch_done(self, batch: Batch) -> None:
        if batch.status == "preempted":
            return                            # handled when it was preempted; its slot runs the new batch
        gpu = batch.slot
        if self.running.get(gpu) is batch:
            del self.running[gpu]
        self.pools.release(gpu, self.cluster.now())
        self._serve(gpu)

    def on_slot_lost(self, gpu: int) -> None:
        self.running.pop(gpu, None)
        self.pools.remove(gpu)

    def on_slot_added(self, slot: int) -> None:
        held = self.cluster.slots[slot].models
        self.held[slot] = [st for m, st in self.state.items() if m in held]
        self.pools.add(slot, self.cluster.now())
        self.heaps_of_slot[slot] = list({id(st.pool): self.running_heap.setdefault(id(st.pool), [])
                                         for st in self.held[slot]}.values())
        self._serve(slot)

    # -- decisions --------------------------------------------------------------
    def candidate(self, st: _ModelState, now: float) -> int:
        """Size of the model's candidate batch at `now` (0 if its queue is empty); drops infeasible heads."""
        q = st.queue
        if q and now + st.l[1] > q[0].deadline:
            late = []
            while q and now + st.l[1] > q[0].deadline:
                late.append(q.popleft())
            self.queued -= len(late)
            self.cluster.drop(late, "infeasible")
        if not q:
            return 0
        fits = bisect_right(st.envelope, q[0].deadline - now, 1) - 1
        return min(fits, len(q))

    def _serve(self, gpu: int) -> None:
        """Run the largest candidate batch among the slot's models on the idle slot."""
        if not self.queued:
            return                            # (every model would be skipped)
        now = self.cluster.now()
        best, best_b = None, 0
        for st in self.held[gpu]:
            if not st.queue:
                continue
            b = self.candidate(st, now)
            if b > best_b or (b == best_b and b and
                              (st.queue[0].deadline, st.order) < (best.queue[0].deadline, best.order)):
                best, best_b = st, b
        if best is not None:
            self._run(gpu, best, best_b)

    def _run(self, gpu: int, st: _ModelState, b: int) -> None:
        q = st.queue
        self.queued -= b
        batch = self.cluster.dispatch(gpu, st.name, take(q, b))
        self.running[gpu] = batch
        self.pools.book(gpu, INF)
        for heap in self.heaps_of_slot[gpu]:
            heapq.heappush(heap, (b, gpu, batch.id))
            if len(heap) > 2 * len(self.running) + 64:
                self._compact(heap)

    def _compact(self, heap: list) -> None:
        """Drop the entries of batches no longer running. Without this a heap grows by an entry per batch
        while no arrival looks for a victim (every slot free in turn), and the next look pops them all at
        once: 10,000 entries, 4-6 ms of a stalled loop, at 100,000 req/s on instant slots."""
        running = self.running
        heap[:] = [e for e in heap if (r := running.get(e[1])) is not None and r.id == e[2]]
        heapq.heapify(heap)

    def _smallest_running(self, st: _ModelState) -> Batch | None:
        heap = self.running_heap[id(st.pool)]
        running = self.running
        while heap:
            _, gpu, bid = heap[0]
            batch = running.get(gpu)
            if batch is not None and batch.id == bid:
                return batch
            heapq.heappop(heap)
        return None

    def _maybe_preempt(self, st: _ModelState, now: float) -> None:
        b = self.candidate(st, now)
        if b == 0:
            return
        victim = self._smallest_running(st)
        if victim is None or b < self.config.preempt_lambda * victim.size:
            return
        gpu = victim.slot
        del self.running[gpu]
        back = self.cluster.preempt(gpu)
        # They were the head of their model's queue when dispatched, so they precede what is queued now.
        self.state[victim.model].queue.extendleft(sorted(back, key=lambda r: r.deadline, reverse=True))
        self.queued += len(back)
        if victim.model == st.name:
            b = self.candidate(st, now)       # its queue's head changed: recompute against the new head
        self._run(gpu, st, b)
        # Slots that hold the victim's model but not the arriving one may be idle.
        pool = self.state[victim.model].pool
        rank, free = pool.peek(now)
        if rank >= 0 and free <= now:
            self._serve(rank)
