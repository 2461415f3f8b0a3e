"""Symphony: deferred batch scheduling (Chen et al., arXiv 2308.07470).

One deadline-ordered queue per model. For the candidate batch of the b
requests at the head:

    earliest = max(now + d_ctrl + b*d_data, time the chosen slot frees)
    latest   = D_head - e(b)                    the last start that still meets the head's deadline
    frontrun = D_head - e(b+1) - d_data         the last start at which one more request could join

where e(b) = l(b) + response allowance + timer slack. While the batch is
below its target size it is started at max(earliest, min(frontrun, latest)):
deferred to grow, never past what the head's deadline allows
(non-work-conserving). At the target size it starts at `earliest`. Heads
that cannot finish even alone are dropped (window drop), and a batch that
cannot start by `latest` is discarded by the slot.

Target size from the model's measured rate r: the largest b with
l(b) * (1 + 1/n) <= budget - b*d_data, n = max(1, r*l(b)/b) slots busy with
the model; with n <= 1 this is the Nexus rule 2*l(b) <= budget.

Slot choice: the slot that frees earliest, ties to the lowest rank, so
low-ranked slots stay busy and high-ranked ones idle (load-proportional).

Left out: the paper's per-epoch allocation of models to sub-clusters; here
every slot that holds a model may serve it (as in its public code).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from harness.core import Batch, Policy, Request, SystemConfig, slots_holding
from systems._pool import Pools

US = 1e-6


@dataclass
class SymphonyConfig(SystemConfig):
    name: str = "symphony"
    d_ctrl_us: float = 100.0               # control delay before a dispatched batch can start
    d_data_us: float = 50.0                # input transfer per request
    response_allowance_us: float = 2000.0  # returning results after the batch ends
    timer_slack_us: float = 100.0          # timer jitter allowance
    rate_window_s: float = 1.0             # window over which each model's arrival rate is measured
    max_batch: int = 0                     # cap on the target size; 0: the profile's largest


class _ModelState:
    __slots__ = ("name", "queue", "pool", "l", "e", "slo", "max_batch", "target", "timer", "timer_at",
                 "arrivals", "waiting_for_slot", "on_timer")

    def __init__(self, name, pool, l, e, slo, max_batch):
        self.name = name
        self.queue: deque[Request] = deque()
        self.pool = pool
        self.l = l            # l[b]: profiled latency of a batch of b
        self.e = e            # e[b]: l[b] + response allowance + timer slack
        self.slo = slo
        self.max_batch = max_batch
        self.target = 1
        self.timer = None
        self.timer_at = float("inf")
        self.arrivals = 0
        self.waiting_for_slot = False
        self.on_timer = None        # bound once by the policy: timers are set on almost every arrival


class Symphony(Policy):
    Config = SymphonyConfig

    def __init__(self, cluster, models, config: SymphonyConfig):
        super().__init__(cluster, models, config)
        self.d_ctrl = config.d_ctrl_us * US
        self.d_data = config.d_data_us * US
        allowance = (config.response_allowance_us + config.timer_slack_us) * US
        self.pools = Pools(cluster.gpus)
        self.state: dict[str, _ModelState] = {}
        for m, spec in models.items():
            # Slots holding a model are assumed alike; the first one's profile stands for all.
            curve = cluster.curve(m, slots_holding(cluster.gpus, m)[0])
            cap = min(config.max_batch or curve.max_batch, curve.max_batch)
            e = [x + allowance for x in curve.mean]
            st = _ModelState(m, self.pools.of(m), curve.mean, e, spec.slo, cap)
            st.target = self.target_batch(st, rate=0.0)
            st.on_timer = lambda st=st: self._on_timer(st)
            self.state[m] = st

    # -- events -----------------------------------------------------------------
    def start(self) -> None:
        self.cluster.call_at(self.config.rate_window_s, self._measure_rates)

    def on_arrival(self, req: Request) -> None:
        st = self.state[req.model]
        st.queue.append(req)
        st.arrivals += 1
        self._plan(st)

    def on_batch_done(self, batch: Batch) -> None:
        if self.cluster.gpus[batch.gpu].outstanding == 0:
            self.pools.release(batch.gpu, self.cluster.now())
            for st in self.state.values():
                if st.waiting_for_slot:
                    self._plan(st)

    def on_gpu_lost(self, gpu: int) -> None:
        self.pools.remove(gpu)
        for st in self.state.values():
            self._plan(st)

    def on_gpu_added(self, gpu: int) -> None:
        self.pools.add(gpu, self.cluster.now())
        for st in self.state.values():
            self._plan(st)

    # -- decisions --------------------------------------------------------------
    def target_batch(self, st: _ModelState, rate: float) -> int:
        budget = st.slo - self.d_ctrl - self.config.response_allowance_us * US
        best = 1
        for b in range(1, st.max_batch + 1):
            lb = st.l[b]
            n = max(1.0, rate * lb / b)
            if lb * (1 + 1 / n) <= budget - b * self.d_data:
                best = b
        return best

    def _measure_rates(self) -> None:
        window = self.config.rate_window_s
        for st in self.state.values():
            st.target = self.target_batch(st, st.arrivals / window)
            st.arrivals = 0
            if st.queue:
                self._plan(st)
        self.cluster.call_at(self.cluster.now() + window, self._measure_rates)

    def _plan(self, st: _ModelState) -> None:
        """Dispatch the head batch if its start time has come, else set the model's timer for it."""
        cluster = self.cluster
        now = cluster.now()
        q, e, dc, dd = st.queue, st.e, self.d_ctrl, self.d_data
        while q:
            rank, free = st.pool.peek(now)
            ready = now + dc                  # a batch sent now starts at ready + b*dd, or when the slot frees
            # Window drop: heads that would miss even alone on the slot that frees first.
            alone = (ready + dd if ready + dd > free else free) + e[1]
            if alone > q[0].deadline:
                late = []
                while q and alone > q[0].deadline:
                    late.append(q.popleft())
                cluster.drop(late, "window")
                continue
            head_deadline = q[0].deadline
            b = len(q) if len(q) < st.target else st.target
            earliest = ready + b * dd
            if earliest < free:
                earliest = free
            while b > 1 and earliest + e[b] > head_deadline:
                b -= 1
                earliest = ready + b * dd
                if earliest < free:
                    earliest = free
            latest = head_deadline - e[b]
            start = earliest
            if b == len(q) and b < st.target:
                frontrun = head_deadline - e[b + 1] - dd
                start = max(earliest, min(frontrun, latest))
            send_at = start - dc - b * dd
            if send_at > now + 1e-9:
                st.waiting_for_slot = free > now
                if st.timer_at != send_at:
                    if st.timer is not None:
                        st.timer.cancel()
                    st.timer = cluster.call_at(send_at, st.on_timer)
                    st.timer_at = send_at
                return
            reqs = [q.popleft() for _ in range(b)]
            cluster.dispatch(rank, st.name, reqs, latest_start=latest)
            self.pools.book(rank, start + st.l[b])
        st.waiting_for_slot = False
        if st.timer is not None:
            st.timer.cancel()
            st.timer, st.timer_at = None, float("inf")

    def _on_timer(self, st: _ModelState) -> None:
        st.timer, st.timer_at = None, float("inf")
        self._plan(st)
