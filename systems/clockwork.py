"""Clockwork (Gujarati et al., OSDI'20): a central controller that schedules a little ahead.

The controller predicts when each slot drains the work it was sent: on
dispatch, free_at = max(now, free_at) + est(b); on each completion, now plus
the estimates of the batches still outstanding there. It keeps at most
`schedule_ahead_ms` of work queued per slot: while free_at - now is below
it (checked on every arrival and completion, and by a timer at the moment
it falls below), it schedules one more action on the slot:

    t0      = max(now, free_at)             when the action would start
    drop    heads with t0 + est(1) > D      (they cannot finish even alone)
    b_m     = the largest b <= queued, max_batch with t0 + est(b) <= D_head
    pick    the model with the smallest latest start D_head - est(b_m),
            i.e. the most urgent (ties: model order)
    send    its b_m oldest requests with latest_start = D_head - est(b_m);
            the slot discards the action if it cannot start by then.

Execution-time estimate est(m, b): the p99 (linear interpolation) of the
last `window` measured durations of batches of b (t_end - t_start of
batches that ran ok), or the profile's p99 before any measurement.
Slots are filled earliest-predicted-free first, ties to the lowest rank.

Past capacity every head left has about est(m, 1) of slack, so the batches
that fit are small, and an est(m, 1) above the truth serves more: it drops
heads sooner and leaves larger batches. On a real GPU each model's first
batches in a run were slow, and a size then seldom run kept their p99, so
a real run past capacity may serve twice what its sim twin (exact
estimates) does; benchmarks/clockwork_first_batches.py measures it. The
live workers now warm up before time 0 (runtime.warm_s), which takes most
of that excess (a graph's first replay) out of the run.

Left out: model loading and eviction (every slot holds its models),
Clockwork's per-batch-size strategy queues (the choice above is their
outcome for one urgent head), the GPU-clock scaling of estimates, and the
action windows' earliest bound.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from harness.core import Batch, Policy, SystemConfig, Task, slots_holding, take
from harness.errors import HarnessError
from systems._pool import Pools

MS = 1e-3
EPS = 1e-9     # a timer firing at free_at - schedule_ahead must count as "below"
INF = float("inf")


@dataclass
class ClockworkConfig(SystemConfig):
    name: str = "clockwork"
    schedule_ahead_ms: float = 10.0   # most work (predicted) queued on a slot ahead of now
    window: int = 10                  # measurements per (model, batch size) behind the p99 estimate
    max_batch: int = 0                # 0: the largest profiled batch whose p99 fits the model's SLO


def p99(values) -> float:
    """99th percentile with linear interpolation between order statistics (Clockwork's SlidingWindow)."""
    s = sorted(values)
    pos = 0.99 * (len(s) - 1)
    lo = int(pos)
    if lo + 1 >= len(s):
        return s[lo]
    return s[lo] + (s[lo + 1] - s[lo]) * (pos - lo)


class _ModelState:
    __slots__ = ("name", "order", "queue", "est", "measured", "max_batch", "pool")

    def __init__(self, name, order, profile_p99, max_batch, window, pool):
        self.name = name
        self.order = order
        self.queue: deque[Task] = deque()
        self.est = list(profile_p99)                   # est[b]: estimated execution time of a batch of b
        self.measured = [deque(maxlen=window) for _ in self.est]
        self.max_batch = max_batch
        self.pool = pool


class Clockwork(Policy):
    Config = ClockworkConfig

    def __init__(self, cluster, models, config: ClockworkConfig):
        super().__init__(cluster, models, config)
        if config.window < 1:
            raise HarnessError(f"clockwork: window must be >= 1 (got {config.window}): the p99 estimate needs a "
                               "measurement; fix system.window")
        self.ahead = config.schedule_ahead_ms * MS
        self.pools = Pools(cluster.slots)
        self.state: dict[str, _ModelState] = {}
        for i, (m, spec) in enumerate(models.items()):
            curve = cluster.curve(m, slots_holding(cluster.slots, m)[0])
            fit = max(b for b in range(1, curve.max_batch + 1) if b == 1 or curve.p99[b] <= spec.slo)
            cap = max(1, min(config.max_batch or fit, curve.max_batch))
            self.state[m] = _ModelState(m, i, curve.p99, cap, config.window, self.pools.of(m))
        n = len(cluster.slots)
        self.held = [frozenset(m for m in models if m in g.models) for g in cluster.slots]
        self.pools_of_slot = [list({id(self.state[m].pool): self.state[m].pool for m in held}.values())
                              for held in self.held]
        self.active: dict[str, _ModelState] = {}    # models with queued requests: what each decision scans
        self.uniform = all(len(h) == len(models) for h in self.held)   # every slot holds every model
        # Predicted time each slot drains what it was sent; never yet: free at any time, a live run's
        # clock too (it reads below 0 before the start), where the pool counts an idle slot free now.
        self.free_at = [-INF] * n
        self.work = [0.0] * n             # predicted execution time of its outstanding batches
        self.sent: dict[int, float] = {}  # batch id -> its estimate, until it finishes
        self.timers = [None] * n
        self.timer_at = [float("inf")] * n

    # -- events -----------------------------------------------------------------
    def on_arrival(self, task: Task) -> None:
        st = self.state[task.model]
        st.queue.append(task)
        self.active[st.name] = st
        self._serve_pool(st.pool)

    def on_batch_done(self, batch: Batch) -> None:
        gpu, now = batch.slot, self.cluster.now()
        if batch.status == "ok":
            self.measure(batch.model, batch.size, batch.t_end - batch.t_start)
        work = self.work[gpu] - self.sent.pop(batch.id, 0.0)
        if not work > 0.0 or self.cluster.slots[gpu].outstanding == 0:
            work = 0.0                               # no rounding residue once the slot is empty
        self.work[gpu] = work
        # What is still outstanding starts now, one batch after another. A slot left with nothing that
        # was already predicted free by now is free to its pool as it stands: booking it again at now
        # would change no answer of the pool's, and cost a heap entry per batch.
        if work or self.free_at[gpu] > now:
            self.free_at[gpu] = now + work
            self.pools.book(gpu, now + work)
        if self.active:                              # else nothing is queued for any slot to take
            for pool in self.pools_of_slot[gpu]:
                self._serve_pool(pool)

    def on_slot_lost(self, gpu: int) -> None:
        self.pools.remove(gpu)
        if self.timers[gpu] is not None:
            self.timers[gpu].cancel()
            self.timers[gpu] = None

    def on_slot_added(self, slot: int) -> None:
        now = self.cluster.now()
        while len(self.free_at) <= slot:                # a slot new to the cluster
            for per_slot in (self.free_at, self.work, self.timer_at):
                per_slot.append(float("inf") if per_slot is self.timer_at else 0.0)
            self.timers.append(None)
            self.held.append(frozenset())
            self.pools_of_slot.append([])
        self.free_at[slot], self.work[slot] = now, 0.0
        self.held[slot] = frozenset(m for m in self.models if m in self.cluster.slots[slot].models)
        self.uniform = self.uniform and len(self.held[slot]) == len(self.models)
        self.pools.add(slot, now)
        self.pools_of_slot[slot] = list({id(self.state[m].pool): self.state[m].pool
                                         for m in self.held[slot]}.values())
        for pool in self.pools_of_slot[slot]:
            self._serve_pool(pool)

    def estimate(self, model: str, b: int) -> float:
        return self.state[model].est[b]

    def measure(self, model: str, b: int, took: float) -> None:
        """A batch of b of `model` ran `took` seconds: into its window, and its estimate from the window."""
        st = self.state[model]
        window = st.measured[b]
        # A measurement that pushes out an equal one leaves the window, so its p99, as it was:
        # no sort per completion when durations repeat (emulated or instant slots).
        same = len(window) == window.maxlen and window[0] == took
        window.append(took)
        if not same:
            st.est[b] = p99(window)

    # -- decisions --------------------------------------------------------------
    def _serve_pool(self, pool) -> None:
        """Fill the pool's slots, earliest predicted free first, while they have room and work is pending."""
        if not self.active:
            return
        now = self.cluster.now()
        while True:
            rank, free = pool.peek(now)
            if rank < 0:
                return
            if free > now + self.ahead + EPS:
                if self._pending(rank):
                    self._wake_at(rank, free - self.ahead)
                return
            if not self._fill(rank, now):
                return

    def _pending(self, gpu: int) -> bool:
        if self.uniform:
            return bool(self.active)
        held = self.held[gpu]
        return any(m in held for m in self.active)

    def _fill(self, gpu: int, now: float) -> bool:
        """Schedule actions on the slot while it has room; False when it ran out of work first."""
        ahead = now + self.ahead + EPS
        free_at, active, held = self.free_at, self.active, self.held[gpu]
        while free_at[gpu] <= ahead:
            if not active:
                return False                         # (the scan below would find nothing)
            t0 = free_at[gpu] if free_at[gpu] > now else now
            best, best_b, best_latest = None, 0, INF
            for st in list(active.values()):         # a copy: models whose queue empties leave `active`
                if st.name not in held:
                    continue
                q = st.queue
                est = st.est
                if t0 + est[1] > q[0].deadline:
                    late = []
                    while q and t0 + est[1] > q[0].deadline:
                        late.append(q.popleft())
                    self.cluster.drop(late, "late")
                    if not q:
                        del active[st.name]
                        continue
                head = q[0].deadline
                b = min(len(q), st.max_batch)
                while b > 1 and t0 + est[b] > head:
                    b -= 1
                latest = head - est[b]
                if latest < best_latest or (latest == best_latest and st.order < best.order):
                    best, best_b, best_latest = st, b, latest
            if best is None:
                return False
            q = best.queue
            tasks = take(q, best_b)
            if not q:
                del active[best.name]
            batch = self.cluster.dispatch(gpu, best.name, tasks, latest_start=best_latest)
            est = best.est[best_b]
            self.sent[batch.id] = est
            self.work[gpu] += est
            free_at[gpu] = t0 + est
            self.pools.book(gpu, t0 + est)
        return True

    def _wake_at(self, gpu: int, t: float) -> None:
        if self.timer_at[gpu] != t:
            if self.timers[gpu] is not None:
                self.timers[gpu].cancel()
            self.timers[gpu] = self.cluster.call_at(t, lambda g=gpu: self._on_timer(g))
            self.timer_at[gpu] = t

    def _on_timer(self, gpu: int) -> None:
        self.timers[gpu], self.timer_at[gpu] = None, float("inf")
        for pool in self.pools_of_slot[gpu]:
            self._serve_pool(pool)
