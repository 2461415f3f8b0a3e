"""Graph batching with a time window: the baseline LazyBatching is measured against.

One FIFO queue per model, and a batch runs the whole model (its graph) at once. A queue's batch is
ready when it holds `max_batch` requests or when its oldest request has waited `window_ms`,
whichever comes first; a ready batch takes up to `max_batch` requests, oldest first, to an idle
slot holding the model (the lowest rank), and a slot runs one batch at a time. When a slot frees and
several queues are ready, the one whose oldest request has the earliest deadline goes first. Nothing
is dropped: a late request still runs. Sweep `window_ms` to find this baseline's best.

As the LazyBatching authors' baseline (2019: one model on one GPU) does, but for one point: there
the window restarts when a batch launches, so requests that arrived while the GPU was busy wait a
fresh window once it frees; here a request's wait counts from its arrival, so a backlog launches as
soon as a slot frees (as Triton's dynamic batcher counts its queue delay), which favours the baseline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from harness.core import Batch, Policy, SystemConfig, Task, slots_holding, take
from harness.errors import HarnessError
from systems._pool import Pools

MS = 1e-3
EPS = 1e-9      # a timer set at a window's end must find the window expired


@dataclass
class GraphBatchingConfig(SystemConfig):
    name: str = "graph_batching"
    window_ms: float = 5.0      # longest a batch waits to fill, from its oldest request's arrival
    max_batch: int = 0          # 0: the largest profiled batch whose latency fits the model's SLO


class GraphBatching(Policy):
    Config = GraphBatchingConfig

    def __init__(self, cluster, models, config: GraphBatchingConfig):
        super().__init__(cluster, models, config)
        if config.window_ms < 0:
            raise HarnessError(f"graph_batching: window_ms must be >= 0 (got {config.window_ms}); "
                               "fix system.window_ms")
        if config.max_batch < 0:
            raise HarnessError(f"graph_batching: max_batch must be >= 0 (got {config.max_batch}); "
                               "fix system.max_batch")
        self.window = config.window_ms * MS
        self.pools = Pools(cluster.slots)
        self.queues: dict[str, deque[Task]] = {m: deque() for m in models}
        self.held = {s.index: sorted(s.models & models.keys()) for s in cluster.slots}
        self.timers: dict[str, tuple[float, object]] = {}     # model -> (when, handle) of its window's end
        self.max_batch = {}
        for m, spec in models.items():
            curve = cluster.curve(m, slots_holding(cluster.slots, m)[0])
            if config.max_batch > curve.max_batch:
                raise HarnessError(f"graph_batching: max_batch {config.max_batch} exceeds the profiled maximum "
                                   f"{curve.max_batch} of {m}; lower system.max_batch")
            self.max_batch[m] = config.max_batch or max(1, curve.largest_batch_within(spec.slo))

    def on_arrival(self, task: Task) -> None:
        self.queues[task.model].append(task)
        self._launch(task.model)

    def on_batch_done(self, batch: Batch) -> None:
        now = self.cluster.now()
        self.pools.release(batch.slot, now)
        ready = [m for m in self.held[batch.slot] if self._ready(m, now)]
        if ready:
            self._dispatch(batch.slot, min(ready, key=lambda m: self.queues[m][0].deadline))

    def on_slot_lost(self, slot: int) -> None:
        self.pools.remove(slot)

    def on_slot_added(self, slot: int) -> None:
        self.held[slot] = sorted(self.cluster.slots[slot].models & self.models.keys())
        self.pools.add(slot, self.cluster.now())
        for m in self.held[slot]:
            self._launch(m)

    def _ready(self, model: str, now: float) -> bool:
        queue = self.queues[model]
        return bool(queue) and (len(queue) >= self.max_batch[model]
                                or now >= queue[0].t_arrival + self.window - EPS)

    def _launch(self, model: str) -> None:
        """Send the model's ready batches to idle slots; a ready batch finding none waits for a slot to free."""
        now = self.cluster.now()
        pool = self.pools.of(model)
        while self._ready(model, now):
            rank, free = pool.peek(now)
            if free > now:
                return
            self._dispatch(rank, model)
        self._arm(model, now)

    def _dispatch(self, slot: int, model: str) -> None:
        queue = self.queues[model]
        tasks = take(queue, min(len(queue), self.max_batch[model]))
        self.cluster.dispatch(slot, model, tasks)
        self.pools.book(slot, float("inf"))
        self._arm(model, self.cluster.now())

    def _arm(self, model: str, now: float) -> None:
        """A timer at the end of the oldest request's window, while it is still to come."""
        queue = self.queues[model]
        at = queue[0].t_arrival + self.window if queue else None
        current = self.timers.get(model)
        if current is not None and current[0] == at:
            return
        if current is not None:
            current[1].cancel()
            del self.timers[model]
        if at is not None and at > now:
            self.timers[model] = (at, self.cluster.call_at(at, lambda: self._on_window(model)))

    def _on_window(self, model: str) -> None:
        del self.timers[model]
        self._launch(model)
