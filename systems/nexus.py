"""Nexus (Shen et al., SOSP'19): squishy bin packing per epoch, round-robin slots.

Latency model l(b) = profiled mean + one std (Nexus's GetForwardLatency).
Per model: b_max = the largest b with l(b) <= SLO/2 (half the budget goes
to batching; at least 1), and a slot running it back to back serves
T = b_max / l(b_max) requests/s.

Allocation, for each model's measured rate r:
  - saturating load: floor(r / T) whole slots, each one session at b_max;
  - the residual r' = r - n*T gets one session at the largest b with
    (b-1)/r' + l(b) <= SLO. This is Nexus's residual rule (its
    ComputeBatchSize): a batch of b = ceil(r'*d) per duty cycle d needs
    d >= (b-1)/r', and a request waits at most a cycle, then runs l(b).
    Its largest duty cycle is d_max = min(SLO - l(b), b/r'); its occupancy
    is l(b)/d_max;
  - squishy bin packing, first-fit decreasing by occupancy, places the
    residual sessions on shared slots: a slot's duty cycle d is the smallest
    d_max of its sessions, each session runs b_i = ceil(d*r_i) per cycle
    (a product within 1e-3 of an integer counts as that integer, as in
    Nexus), and a session fits if the sum of l(b_i) stays <= d.
Each session's throughput is b_i / d (T for a whole slot). Whole slots take
the lowest ranks, then the shared ones, so high ranks stay idle. If the plan
needs more slots than are alive, every rate is scaled down by the same factor
until it fits (the overload is then shed by early drop).

Epochs: every `rate_window_s` the arrivals of the last window give each
model's rate (at least 0.1 task/s, Nexus's floor, so every model keeps a
session); the allocation is redone every `epoch_s`, or sooner when a rate
leaves [rate_low, rate_high] x the model's allocated throughput. There is no
rate at t = 0: until the first sample every slot holds every model at b_max
and requests are split evenly (round-robin); the first allocation follows
the first sample. Queued requests are re-routed when the allocation changes.

Routing: a model's requests go to its sessions' slots in proportion to their
throughput (deterministic weighted round-robin: stride scheduling), into one
queue per (slot, model). Execution: each slot cycles through its sessions
round-robin and, like Nexus's GpuExecutor, does not wait out the duty cycle
(work-conserving). At a session's turn it takes up to b_i requests, earliest
deadline first, after early-dropping those whose deadline < now + l(k), k the
batch it would form (Nexus's ModelExecutor::GetBatchTask).

Left out: prefix batching, complex queries (SLO splitting across a query's
models), backup backends, and the public code's incremental epoch update
(this re-solves the allocation). Nexus loads models onto backends itself:
every slot must hold every model.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

from harness.core import Batch, Policy, SystemConfig, Task, take
from harness.errors import HarnessError

MIN_RATE = 0.1          # task/s: Nexus's floor on an estimated rate
EPS = 1e-9            # s: tolerance when comparing sums of latencies with a duty cycle


@dataclass
class NexusConfig(SystemConfig):
    name: str = "nexus"
    rate_window_s: float = 1.0   # arrivals are counted over this window to give each model's rate
    epoch_s: float = 30.0        # the allocation is redone at least this often
    rate_low: float = 0.8        # ... and sooner when a rate falls below rate_low x allocated throughput
    rate_high: float = 1.1       # ... or rises above rate_high x allocated throughput
    max_batch: int = 0           # cap on every batch; 0: the profile's largest


class _Model:
    __slots__ = ("name", "order", "slo", "l", "b_max", "t_max")

    def __init__(self, name, order, slo, l, cap):
        self.name = name
        self.order = order
        self.slo = slo
        self.l = l                       # l[b] = mean + std of a batch of b
        fits = [b for b in range(1, cap + 1) if l[b] <= slo / 2]
        self.b_max = fits[-1] if fits else 1
        self.t_max = self.b_max / l[self.b_max]


class _Session:
    """One model's share of a slot in a plan: it runs `batch` requests per duty cycle."""

    __slots__ = ("model", "rate", "b", "max_duty", "batch")

    def __init__(self, model: str, rate: float, b: int, max_duty: float):
        self.model = model
        self.rate = rate
        self.b = b                       # its own batch size (the residual rule, or b_max)
        self.max_duty = max_duty
        self.batch = b

    def __repr__(self) -> str:
        return f"Session({self.model}, batch={self.batch}, rate={self.rate:.1f})"


class _Bin:
    """A slot in a plan: sessions sharing one duty cycle."""

    __slots__ = ("duty", "sessions")

    def __init__(self, duty: float, sessions: list[_Session]):
        self.duty = duty
        self.sessions = sessions


class _Slot:
    """What one slot runs between two allocations."""

    __slots__ = ("index", "sessions", "turns", "turn_of", "rr", "busy", "queues", "queued")

    def __init__(self, index: int):
        self.index = index
        self.sessions: list[tuple[_Model, int]] = []     # (model, batch cap) in round-robin order
        self.turns: list[tuple[_Model, int, deque[Task]]] = []   # the same with each one's queue, for _run
        self.turn_of: dict[str, int] = {}  # model -> its position in turns
        self.rr = 0
        self.busy = False
        self.queues: dict[str, deque[Task]] = {}
        self.queued = 0                  # tasks in its queues: a slot with none skips the round-robin scan


class _Router:
    """Deterministic weighted round-robin (stride scheduling): O(log n) per pick."""

    __slots__ = ("heap",)

    def __init__(self, weighted: list[tuple[int, float]]):
        # (pass, tie-break, slot, stride): the slot with the smallest pass goes next.
        self.heap = [(1.0 / w, i, slot, 1.0 / w) for i, (slot, w) in enumerate(weighted)]
        heapq.heapify(self.heap)

    def pick(self) -> int:
        p, i, slot, stride = self.heap[0]
        heapq.heapreplace(self.heap, (p + stride, i, slot, stride))
        return slot


def _per_cycle(rate: float, duty: float) -> int:
    """Requests per duty cycle, ceil(rate * duty), with Nexus's 1e-3 tolerance against rounding."""
    x = rate * duty
    f = math.floor(x)
    return max(1, f if x - f < 1e-3 else f + 1)


class Nexus(Policy):
    Config = NexusConfig

    def __init__(self, cluster, models, config: NexusConfig):
        super().__init__(cluster, models, config)
        if not (config.rate_window_s > 0 and config.epoch_s > 0 and config.rate_low < config.rate_high):
            raise HarnessError(f"nexus: rate_window_s and epoch_s must be > 0 and rate_low < rate_high (got "
                               f"{config.rate_window_s}, {config.epoch_s}, {config.rate_low}, {config.rate_high}); "
                               "fix system.*")
        names = frozenset(models)
        if any(not names <= g.models for g in cluster.slots):
            raise HarnessError("nexus places models on slots itself, so every slot must hold every model; "
                               "use a cluster whose slots hold all configured models")
        self.info: dict[str, _Model] = {}
        for i, (m, spec) in enumerate(models.items()):
            # Slots are assumed alike; slot 0's profile stands for all.
            curve = cluster.curve(m, 0)
            cap = min(config.max_batch or curve.max_batch, curve.max_batch)
            l = [mu + sd for mu, sd in zip(curve.mean, curve.std)]
            self.info[m] = _Model(m, i, spec.slo, l, cap)
        self.slots = [_Slot(g.index) for g in cluster.slots]
        self.routers: dict[str, _Router] = {}
        self.arrivals = {m: 0 for m in models}
        self.rates: dict[str, float] | None = None      # the rates of the current allocation
        self.throughput: dict[str, float] = {}           # allocated throughput per model
        self.allocated_at = 0.0
        self._install(self._everywhere())

    # -- events -----------------------------------------------------------------
    def start(self) -> None:
        self.cluster.call_at(self.config.rate_window_s, self._sample)

    def on_arrival(self, task: Task) -> None:
        self.arrivals[task.model] += 1
        slot = self.slots[self.routers[task.model].pick()]
        slot.queues[task.model].append(task)
        slot.queued += 1
        if not slot.busy:
            # With this its only queued request, the round-robin scan would stop first at this model's turn.
            self._run(slot, slot.turn_of[task.model] if slot.queued == 1 else slot.rr)

    def on_batch_done(self, batch: Batch) -> None:
        slot = self.slots[batch.slot]
        slot.busy = False
        self._run(slot)

    def on_slot_lost(self, gpu: int) -> None:
        self._reallocate()

    def on_slot_added(self, slot: int) -> None:
        if not self.cluster.slots[slot].models >= self.info.keys():
            raise HarnessError(f"nexus: slot {slot} joined without every model; nexus needs slots that hold all")
        while len(self.slots) <= slot:                  # a slot new to the cluster
            self.slots.append(_Slot(len(self.slots)))
        self._reallocate()

    def _reallocate(self) -> None:
        """A new allocation over the slots alive now."""
        self._install(self._fit(self.rates) if self.rates is not None else self._everywhere())

    # -- allocation ---------------------------------------------------------------
    def residual_session(self, model: str, rate: float) -> _Session:
        """Nexus's session for a load that does not saturate a slot."""
        info = self.info[model]
        l, slo = info.l, info.slo
        b = 0
        while b < info.b_max and b / rate + l[b + 1] <= slo:      # (b'-1)/r + l(b') <= SLO for b' = b+1
            b += 1
        b = max(b, 1)
        # A model that cannot meet its SLO even alone still gets a session (early drop sheds its load).
        max_duty = max(min(slo - l[b], b / rate), l[b])
        return _Session(model, rate, b, max_duty)

    def plan(self, rates: dict[str, float]) -> list[_Bin]:
        """Slots needed for `rates`: whole slots first, then squishy bin packing of the residuals."""
        whole, residual = [], []
        for m, info in self.info.items():
            r = max(rates.get(m, 0.0), MIN_RATE)
            n = int(r // info.t_max)
            whole += [_Bin(info.l[info.b_max], [_Session(m, info.t_max, info.b_max, info.l[info.b_max])])
                      for _ in range(n)]
            rest = r - n * info.t_max
            if n == 0 or rest >= MIN_RATE:
                residual.append(self.residual_session(m, rest))
        residual.sort(key=lambda s: (-self.info[s.model].l[s.b] / s.max_duty, self.info[s.model].order))
        shared: list[_Bin] = []
        for s in residual:
            if not any(self._squeeze(bin_, s) for bin_ in shared):
                s.batch = min(s.b, _per_cycle(s.rate, s.max_duty))
                shared.append(_Bin(s.max_duty, [s]))
        return whole + shared

    def _squeeze(self, bin_: _Bin, s: _Session) -> bool:
        """Add `s` to the bin if every session's batch still fits in the (possibly shorter) duty cycle."""
        duty = min(bin_.duty, s.max_duty)
        sessions = bin_.sessions + [s]
        batches = [min(x.b, _per_cycle(x.rate, duty)) for x in sessions]
        if sum(self.info[x.model].l[b] for x, b in zip(sessions, batches)) > duty + EPS:
            return False
        for x, b in zip(sessions, batches):
            x.batch = b
        bin_.duty, bin_.sessions = duty, sessions
        return True

    def _fit(self, rates: dict[str, float]) -> list[tuple[int, list[tuple[_Model, int, float]]]]:
        """The plan for `rates` on the alive slots, scaled down proportionally if it needs more."""
        alive = [g.index for g in self.cluster.slots if g.alive]
        bins = self.plan(rates)
        scale = 1.0
        for _ in range(50):
            if len(bins) <= len(alive):
                break
            scale *= len(alive) / len(bins)
            bins = self.plan({m: r * scale for m, r in rates.items()})
        if len(bins) > len(alive):
            return self._everywhere()     # not even the minimal sessions fit: share every slot
        return [(g, [(self.info[s.model], s.batch, s.batch / b.duty) for s in b.sessions])
                for g, b in zip(alive, bins)]

    def _everywhere(self) -> list[tuple[int, list[tuple[_Model, int, float]]]]:
        """Every alive slot holds every model at b_max (before the first rate sample)."""
        everything = [(info, info.b_max, info.t_max) for info in self.info.values()]
        return [(g.index, everything) for g in self.cluster.slots if g.alive]

    def _install(self, assignment) -> None:
        """Switch to a new allocation; requests already queued are routed again under it."""
        pending: dict[str, list[Task]] = {m: [] for m in self.info}
        for slot in self.slots:
            for m, q in slot.queues.items():
                pending[m].extend(q)
            slot.sessions, slot.turns, slot.turn_of, slot.queues, slot.rr, slot.queued = [], [], {}, {}, 0, 0
        weighted: dict[str, list[tuple[int, float]]] = {m: [] for m in self.info}
        for g, sessions in assignment:
            slot = self.slots[g]
            for info, batch, tp in sessions:
                q = slot.queues[info.name] = deque()
                slot.sessions.append((info, batch))
                slot.turn_of[info.name] = len(slot.turns)
                slot.turns.append((info, batch, q))
                weighted[info.name].append((g, tp))
        self.routers = {m: _Router(w) for m, w in weighted.items()}
        self.throughput = {m: sum(tp for _, tp in w) for m, w in weighted.items()}
        self.allocated_at = self.cluster.now()
        for m, tasks in pending.items():
            tasks.sort(key=lambda r: r.deadline)
            router = self.routers[m]
            for r in tasks:
                slot = self.slots[router.pick()]
                slot.queues[m].append(r)
                slot.queued += 1
        for slot in self.slots:
            if not slot.busy and slot.sessions and self.cluster.slots[slot.index].alive:
                self._run(slot)

    def _sample(self) -> None:
        now = self.cluster.now()
        window = self.config.rate_window_s
        rates = {m: max(n / window, MIN_RATE) for m, n in self.arrivals.items()}
        self.arrivals = dict.fromkeys(self.arrivals, 0)
        lo, hi = self.config.rate_low, self.config.rate_high
        if (self.rates is None or now - self.allocated_at >= self.config.epoch_s - EPS
                or any(not lo * self.throughput[m] <= r <= hi * self.throughput[m] for m, r in rates.items())):
            self.rates = rates
            self._install(self._fit(rates))
        self.cluster.call_at(now + window, self._sample)

    # -- execution ------------------------------------------------------------------
    def _run(self, slot: _Slot, start: int | None = None) -> None:
        """The slot's next turn: the next session in round-robin order that has work, from `start` (by
        default where its round-robin stands; a caller may skip turns it knows have nothing queued)."""
        if not slot.queued:
            return                        # (every turn would be skipped)
        cluster = self.cluster
        now = cluster.now()
        turns = slot.turns
        n = len(turns)
        if start is None:
            start = slot.rr
        for k in range(n):
            i = (start + k) % n
            info, cap, q = turns[i]
            if not q:
                continue
            l = info.l
            if q[0].deadline < now + l[min(cap, len(q))]:
                late = []
                while q and q[0].deadline < now + l[min(cap, len(q))]:
                    late.append(q.popleft())
                slot.queued -= len(late)
                cluster.drop(late, "early drop")
                if not q:
                    continue
            tasks = take(q, min(cap, len(q)))
            slot.queued -= len(tasks)
            cluster.dispatch(slot.index, info.name, tasks)
            slot.busy = True
            slot.rr = i + 1
            return
