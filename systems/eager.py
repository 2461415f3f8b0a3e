"""Eager dispatch: whenever a slot is idle and a queue is non-empty, send at once.

The baseline the papers call eager: an idle slot takes min(queue, max_batch)
requests of the model whose head has the earliest deadline; it never waits
to grow a batch (work-conserving). Optionally (`drop_late`, the default) it
drops the heads that would miss their deadline in the batch it is about to
run: under overload a FIFO queue otherwise serves only requests already too
old to finish in time, and goodput falls to zero instead of holding at
capacity. A head is kept only if the batch about to run ends by its
deadline with the serving path's own time added, the same overhead model
Symphony plans with: `d_ctrl_us` to reach the worker, `d_data_us` per
request of the batch (its inputs in, its answers out), and
`response_allowance_us` for returning the answers. On a real H200 at twice
the oracle rate a fixed 2 ms allowance was not enough: batches of 128 ran at
the deadline's edge and the delays the scheduler cannot see (client to
scheduler, batch end to client: p50 3.8 ms, p90 5.6 ms) made 61% of the
answers late (34% of the oracle bound), where Symphony, reserving
d_ctrl + b*d_data + allowance (8.5 ms at b = 128), held 96%.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from harness.core import Batch, Policy, Task, slots_holding, take
from systems._path import US, ServingPath, ServingPathConfig
from systems._pool import INF, Pools


@dataclass
class EagerConfig(ServingPathConfig):   # the serving path's time, for drop_late
    name: str = "eager"
    max_batch: int = 0          # 0: the largest profiled batch whose latency fits the model's SLO
    drop_late: bool = True      # drop heads that would finish after their deadline in the batch about to run


class Eager(Policy):
    Config = EagerConfig

    def __init__(self, cluster, models, config: EagerConfig):
        super().__init__(cluster, models, config)
        self.pools = Pools(cluster.slots)
        self.queues = {m: deque() for m in models}
        self.queued = 0             # tasks in all the queues: a slot that frees with none waiting looks at none
        self.d_data = ServingPath.of(config).d_data
        self.allowance = (config.d_ctrl_us + config.response_allowance_us) * US   # (one rounding, as planned)
        self.max_batch = {}
        for m, spec in models.items():
            curve = cluster.curve(m, slots_holding(cluster.slots, m)[0])
            fit = config.max_batch or curve.largest_batch_within(spec.slo)
            self.max_batch[m] = max(1, min(fit, curve.max_batch))
        # Per slot, what _serve reads for each model it holds (it runs on every arrival to an idle slot).
        self.serving = {g.index: self._serving(g.index) for g in cluster.slots}

    def _serving(self, slot: int) -> list[tuple[deque, object, int]]:
        return [(self.queues[m], self.cluster.curve(m, slot).mean, self.max_batch[m])
                for m in sorted(self.cluster.slots[slot].models & self.models.keys())]

    def on_arrival(self, task: Task) -> None:
        self.queues[task.model].append(task)
        self.queued += 1
        now = self.cluster.now()
        rank, free = self.pools.of(task.model).peek(now)
        if free <= now:
            self._serve(rank, now)

    def on_batch_done(self, batch: Batch) -> None:
        if self.cluster.slots[batch.slot].outstanding == 0:
            now = self.cluster.now()
            self.pools.release(batch.slot, now)
            self._serve(batch.slot, now)

    def on_slot_lost(self, slot: int) -> None:
        self.pools.remove(slot)

    def on_slot_added(self, slot: int) -> None:
        self.serving[slot] = self._serving(slot)
        now = self.cluster.now()
        self.pools.add(slot, now)
        self._serve(slot, now)

    def _serve(self, gpu: int, now: float) -> None:
        if not self.queued:
            return
        best, best_deadline, best_largest = None, INF, 0
        drop_late, allowance, d_data = self.config.drop_late, self.allowance, self.d_data
        for q, mean, largest in self.serving[gpu]:
            if not q:
                continue
            if drop_late:
                late = []
                while q:
                    n = len(q)
                    b = n if n < largest else largest
                    if now + mean[b] + b * d_data + allowance <= q[0].deadline:
                        break
                    late.append(q.popleft())
                if late:
                    self.queued -= len(late)
                    self.cluster.drop(late, "late")
                    if not q:
                        continue
            deadline = q[0].deadline
            if best is None or deadline < best_deadline:     # the earliest head; ties: the first model held
                best, best_deadline, best_largest = q, deadline, largest
        if best is None:
            return
        n = min(len(best), best_largest)
        tasks = take(best, n)
        self.queued -= n
        self.cluster.dispatch(gpu, tasks[0].model, tasks)
        self.pools.book(gpu, INF)
