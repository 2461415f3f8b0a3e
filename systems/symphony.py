"""Symphony: deferred batch scheduling (Chen et al., arXiv 2308.07470), by the rules of its public dispatcher.

Every model keeps one queue in deadline order. A request's deadline D is its
arrival plus the SLO less the response allowance (the time to return the
result). l(b) is the latency of a batch of b as planned (the profile below);
d_ctrl the delay of a dispatch message, d_data the input transfer per request.

Forming a batch at time `now`, for a slot that frees at `free` (no slot yet:
free = -inf), where a batch of b starts at s(b) = max(now + d_ctrl +
b*d_data, free) and finishes at s(b) + l(b):

1. Window drop. The suffix is the longest queue tail that could run as one
   batch with its first request on time; the requests before it are the
   prefix, and stay there. The batch size is b = min(target, suffix), and
   prefix requests that would miss their deadline in a batch of b are
   dropped.
2. Free lunch. The batch grows past b while its first request still meets
   its deadline, up to the queue and the largest batch.
3. Start time. With the first request's deadline D:
       earliest = now + d_ctrl + b*d_data
       latest   = D - timer slack - l(b)
       frontrun = D - timer slack - l(b+1) - d_data   (the last start at which one more request could join)
       start    = max(earliest, free, min(frontrun, latest))
   so a batch waits for more requests as long as the deadline allows. The
   batch is valid until invalid-after = D - l(b).

Dispatch. After every arrival and every dispatch the model plans its next
batch as above for any slot (free = -inf), to be sent at start - d_ctrl -
b*d_data. Then it takes the next slot (slot choice below) if that slot frees
by the planned start: the batch is formed again for that slot, dispatched,
and the slot is booked until start + l(b). Otherwise the plan waits for a
slot. A slot is offered to the waiting plans when the plan with the longest
lead (d_ctrl + b*d_data) must be sent to start as it frees; plans that can
no longer start in time leave the waiting plans, and the most urgent of the
rest (the earliest invalid-after) gets it. A waiting plan that turns invalid
is planned again at once, so its first requests are dropped or its batch
shrinks.

Target batch, at the model's arrival rate r: the largest b with
l(b) + b/r + b*d_data <= SLO - d_ctrl - response allowance (at least 1; 1
when r = 0). The public code's estimator tests l(b)*(1 + 1/n), n = r*l(b)/b
the slots the model keeps busy, and Nexus's rule where n < 1; both come to
this b whenever l(b)/b does not grow with b, as in every measured profile.
Before the first rate sample: the largest b with l(b) <= SLO/2 - response
allowance. The rate counts arrivals over 50 ms samples and averages the last
100 samples (5 s), from the model's first request on.

Profile: per batch size the slowest entry over the slots holding the model
(the larger mean, or the larger mean + std), forced monotone in b, and
planned as mean + std. The largest batch is the smallest that every such
slot has profiled (and `max_batch`, if set).

Options (SymphonyConfig):
- slot_choice: earliest_free (default, the public code) takes the slot with
  the smallest predicted free time, so idle slots take turns, the longest
  idle first; lowest_rank takes the lowest-ranked idle slot, else the one
  that frees first, so low ranks stay busy and high ranks stay idle. The
  paper's claim that GPU use follows the load rests on this consolidation:
  it is what lets an autoscaler release the idle top.
- overheads: configured (default) plans with d_ctrl_us and
  response_allowance_us; measured plans with the serving path's measured
  delays (the p99s of dispatch-to-start and end-to-answer, from
  runtime.calibration), the same numbers the calibrated sim charges.
- start: frontrun (default, the public code) as above; target_size starts a
  batch that has reached the target at `earliest`, and defers only smaller
  ones (the public code's kTargetBatchSize), to measure what deferring full
  batches buys.

Where this module departs from the public code, and why:
- The dispatch carries no start time: a runtime starts a batch once the slot
  has run the ones before it, so on an idle slot up to d_ctrl + b*d_data
  before its planned start. The slots' free times stay the predictions, never
  corrected by completions, as there.
- When no queued request can be served even alone and sent now, all are
  dropped at once; the public code keeps them until the next arrival, which
  cannot serve them either.
- Before the first rate sample, the half SLO less the response allowance:
  the public code subtracts a fixed 2 ms network allowance there (the same
  by default).
- Every GPU holds every model there. Here slots may hold some models only:
  the slot offered is the next to free for the waiting plan it is due for
  first, and only plans whose model it holds compete for it.
- Ties between equal predicted free times go to the lowest rank; slots not
  used since they joined come first (the public code gives a new GPU free
  time zero).
- A plan sent late (a live timer) is formed again for its slot rather than
  skipped; a waiting plan is planned again TICK after it turns invalid,
  because a virtual timer fires on the dot, where the plan is still valid.
- The queue is kept in deadline order when a task arrives out of order (an
  app's later graph node); plain requests of one model arrive in order.

Allocation (allocation=epoch; allocation=none, the default and the public
code, lets every slot that holds a model serve it). The paper's first version
names an epoch-scale algorithm that allocates models to sub-clusters by their
compute and memory needs; no public code has it, so this is a reconstruction.
At the start, every epoch_s, and whenever a slot joins or leaves:
1. Demand. A model needs demand_headroom * r * l(b)/b GPUs, at its measured
   rate r (the meter above; 0 before its first sample) and its target batch b.
   Its memory is memory_gib_per_model[model], else model_memory_gib: the
   profiles record no memory, so sizes are configured.
2. Sub-clusters. Every slot of a sub-cluster holds all of its models, so
   their memory adds up to at most slot_memory_gib. There are as few
   sub-clusters as first-fit decreasing by memory packs the models into
   (larger sub-clusters multiplex bursts better); the models then go, most
   demanding first, each to the sub-cluster with the least demand so far
   (then the fewest models) that has memory left, a new one only where none
   has, so the sub-clusters carry even demand.
3. Slots. Each sub-cluster gets one slot, and each further slot goes to the
   sub-cluster with the highest demand per slot (then the fewest slots):
   this keeps the most loaded sub-cluster as lightly loaded as the slots
   allow, and splits the slots evenly before any rate is measured. With
   fewer slots than sub-clusters, sub-cluster i shares slot i mod slots.
4. Layout. Each sub-cluster's first max(1, ceil(demand)) slots (all it has,
   if fewer) are the lowest ranks, in sub-cluster order; the rest of its
   slots come after all of those, so under slot_choice=lowest_rank the slots
   beyond the demand sit idle at the top, where the autoscaler releases
   slots. (Steps 2 and 3 go by ratios of demand, so demand_headroom acts
   here only: on how many slots count as a sub-cluster's demand.)
A model is then dispatched only over its sub-cluster's slots; the slots keep
their predicted free times across a change. Models move between
sub-clusters at no cost: every slot here holds every model (the allocation
needs that), so nothing is loaded, where a real cluster would load the
models that moved.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import Dict

from harness.core import Policy, Task, slots_holding, take
from harness.errors import HarnessError
from systems._path import US, ServingPath, ServingPathConfig
from systems._pool import Pools
INF = float("inf")
TICK = 1e-9            # past a boundary instant: virtual timers fire on it, real ones after it
SLOT_CHOICES = ("earliest_free", "lowest_rank")
OVERHEADS = ("configured", "measured")
STARTS = ("frontrun", "target_size")
ALLOCATIONS = ("none", "epoch")


@dataclass
class SymphonyConfig(ServingPathConfig):   # d_ctrl_us, d_data_us, response_allowance_us
    name: str = "symphony"
    timer_slack_us: float = 100.0          # timer jitter allowance
    rate_sample_ms: float = 50.0           # arrivals are counted over samples this long ...
    rate_samples: int = 100                # ... and the rate is the mean of the last this many
    max_batch: int = 0                     # largest batch; 0: the largest every slot holding the model has profiled
    slot_choice: str = "earliest_free"     # earliest_free | lowest_rank (consolidation)
    start: str = "frontrun"                # frontrun | target_size
    overheads: str = "configured"          # configured: d_ctrl and the allowance above | measured: the cluster's
    allocation: str = "none"               # none | epoch: models to sub-clusters of slots (see the docstring)
    epoch_s: float = 10.0                  # the allocation is made again this often
    demand_headroom: float = 1.25          # a model's GPUs: this x rate x l(b)/b at its target batch
    slot_memory_gib: float = 16.0          # the memory a slot gives models: bounds a sub-cluster's models
    model_memory_gib: float = 1.0          # a model's memory, unless memory_gib_per_model names it
    memory_gib_per_model: Dict[str, float] = field(default_factory=dict)


class _Alarm:
    """A timer that calls `fn` at the time last set (inf: never); setting the time it already has costs nothing,
    which matters because plans are made again on almost every arrival."""

    __slots__ = ("cluster", "fn", "at", "handle")

    def __init__(self, cluster, fn):
        self.cluster = cluster
        self.fn = fn
        self.at = INF
        self.handle = None

    def set(self, t: float) -> None:
        if t == self.at:
            return
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.cluster.call_at(t, self._ring) if t < INF else None
        self.at = t

    def _ring(self) -> None:
        self.handle, self.at = None, INF
        self.fn()


class _ModelState:
    __slots__ = ("name", "slo", "queue", "prefix", "pool", "l", "cap", "target", "count", "samples", "rate",
                 "exec_at", "invalid_after", "lead", "send", "recheck")

    def __init__(self, name: str, slo: float, samples: int):
        self.name = name
        self.slo = slo
        self.queue: deque[Task] = deque()
        self.prefix = 0              # the first `prefix` queued requests lie before the window (see window drop)
        self.pool = None             # the slots holding the model (systems._pool)
        self.l: list[float] = []     # l[b]: planned latency of a batch of b; l[cap + 1] = inf
        self.cap = 0                 # largest batch
        self.target = 1
        self.count = 0               # arrivals in the current rate sample
        self.samples: deque[float] = deque(maxlen=samples)
        self.rate: float | None = None   # None until the first sample
        # The plan: its batch starts at exec_at, is sent `lead` (d_ctrl + b*d_data) before, and is valid until
        # invalid_after.
        self.exec_at = self.invalid_after = self.lead = 0.0
        self.send: _Alarm | None = None       # when the plan is due to be sent
        self.recheck: _Alarm | None = None    # when a plan waiting for a slot turns invalid


class Symphony(Policy):
    Config = SymphonyConfig

    def __init__(self, cluster, models, config: SymphonyConfig):
        super().__init__(cluster, models, config)
        if config.slot_choice not in SLOT_CHOICES:
            raise HarnessError(f"symphony: slot_choice must be one of {', '.join(SLOT_CHOICES)} "
                               f"(got {config.slot_choice!r}); fix system.slot_choice")
        if config.start not in STARTS:
            raise HarnessError(f"symphony: start must be one of {', '.join(STARTS)} (got {config.start!r}); "
                               "fix system.start")
        if config.rate_sample_ms <= 0 or config.rate_samples < 1:
            got = f"{config.rate_sample_ms}, {config.rate_samples}"
            raise HarnessError(f"symphony: rate_sample_ms must be > 0 and rate_samples >= 1 (got {got}); "
                               "fix system.rate_sample_ms/rate_samples")
        path = ServingPath.of(config)
        if not config.timer_slack_us >= 0 or config.max_batch < 0:
            raise HarnessError(f"symphony: timer_slack_us and max_batch must be >= 0 (got {config.timer_slack_us}, "
                               f"{config.max_batch}); fix system.timer_slack_us / system.max_batch")
        if config.overheads not in OVERHEADS:
            raise HarnessError(f"symphony: overheads must be one of {', '.join(OVERHEADS)} "
                               f"(got {config.overheads!r}); fix system.overheads")
        if config.allocation not in ALLOCATIONS:
            raise HarnessError(f"symphony: allocation must be one of {', '.join(ALLOCATIONS)} "
                               f"(got {config.allocation!r}); fix system.allocation")
        # The models' memory in GiB where the allocation is on (None: off).
        self.memory = self._model_memory(models) if config.allocation == "epoch" else None
        self.d_ctrl, self.d_data, self.resp = path.d_ctrl, path.d_data, path.response
        measured = cluster.overheads
        if config.overheads == "measured":
            if measured is None:
                raise HarnessError("symphony: overheads=measured needs the serving path's measured delays; give "
                                   "runtime.calibration=<file of python -m harness.calibrate>")
            # The p99s: a plan to the deadline's edge misses whenever a delay is longer than planned.
            self.d_ctrl, self.resp = measured.dispatch_p99_s, measured.response_p99_s
        self.slack = config.timer_slack_us * US
        self.sample_s = config.rate_sample_ms * 1e-3
        self.consolidate = config.slot_choice == "lowest_rank"
        self.start_at_target = config.start == "target_size"
        self.pools = Pools(cluster.slots)
        self.waiting: dict[_ModelState, None] = {}   # plans waiting for a slot, in the order they began to wait
        self.offer = _Alarm(cluster, self._on_offer)  # when the next slot to free is offered to the waiting plans
        self.state: dict[str, _ModelState] = {}
        for m, spec in models.items():
            st = _ModelState(m, spec.slo, config.rate_samples)
            st.pool = self.pools.of(m)
            st.send = _Alarm(cluster, lambda st=st: self._on_send(st))
            st.recheck = _Alarm(cluster, lambda st=st: self._replan(st))
            self._load_profile(st)
            self.state[m] = st

    def _model_memory(self, models) -> dict[str, float]:
        """The models' memory in GiB, once the allocation's settings are checked."""
        config = self.config
        if not (config.epoch_s > 0 and config.demand_headroom > 0):
            raise HarnessError(f"symphony: epoch_s and demand_headroom must be > 0 (got {config.epoch_s}, "
                               f"{config.demand_headroom}); fix system.epoch_s/demand_headroom")
        unknown = sorted(set(config.memory_gib_per_model) - set(models))
        if unknown:
            raise HarnessError(f"symphony: memory_gib_per_model names {', '.join(unknown)}, not served here; "
                               "fix system.memory_gib_per_model")
        memory = {m: config.memory_gib_per_model.get(m, config.model_memory_gib) for m in models}
        for m, gib in memory.items():
            if not 0 < gib <= config.slot_memory_gib:
                raise HarnessError(f"symphony: model {m} needs {gib} GiB, which must be > 0 and within "
                                   f"slot_memory_gib ({config.slot_memory_gib}); fix system.model_memory_gib, "
                                   "memory_gib_per_model or slot_memory_gib")
        if any(not set(models) <= s.models for s in self.cluster.slots):
            raise HarnessError("symphony: allocation=epoch chooses the slots of every model, so every slot must "
                               "hold every model; use a cluster whose slots hold all models, or system.allocation=none")
        return memory

    # -- events -----------------------------------------------------------------
    def start(self) -> None:
        self.cluster.call_at(self.sample_s, self._seal_rates)
        if self.memory is not None:
            self._on_epoch()

    def on_arrival(self, task: Task) -> None:
        st = self.state[task.model]
        q = st.queue
        if q and task.deadline < q[-1].deadline:
            at = bisect_right(q, task.deadline, key=_deadline_of)
            q.insert(at, task)
            if at < st.prefix:
                st.prefix += 1
        else:
            q.append(task)
        st.count += 1
        self._replan(st)

    def on_slot_lost(self, slot: int) -> None:
        self.pools.remove(slot)
        if self.memory is not None:
            self._allocate()

    def on_slot_added(self, slot: int) -> None:
        self.pools.add(slot, self.cluster.now())
        held = self.cluster.slots[slot].models
        for st in self.state.values():
            st.pool = self.pools.of(st.name)        # a slot holding only some models splits their pool
            if st.name in held:
                self._load_profile(st)
        if self.memory is not None:
            self._allocate()
        self._arm_offer()

    # -- the model's plan -------------------------------------------------------
    def target_batch(self, st: _ModelState, rate: float | None) -> int:
        """The batch size the model aims for at `rate` requests/s (None: no rate sample yet)."""
        l = st.l
        if rate is None:
            half = st.slo / 2 - self.resp
            return max(1, sum(1 for b in range(1, st.cap + 1) if l[b] <= half))
        if rate == 0:
            return 1                      # no arrivals: b/r is unbounded for every b
        budget, dd = st.slo - self.d_ctrl - self.resp, self.d_data
        b = 1                             # l[cap + 1] is inf, so this stops at the largest batch
        while l[b + 1] + (b + 1) / rate + dd * (b + 1) <= budget:
            b += 1
        return b

    def _form(self, st: _ModelState, now: float, free: float) -> tuple[int, float]:
        """(size, deadline of its first request) of the batch to start for a slot free at `free`: window drop,
        then free lunch. Size 0: no request behind the prefix can make it."""
        q, l, cap, resp = st.queue, st.l, st.cap, self.resp
        ready, dd = now + self.d_ctrl, self.d_data

        def finish(b: int) -> float:
            start = ready + b * dd
            return (start if start > free else free) + l[b]

        n = len(q)
        while st.prefix < n:
            k = n - st.prefix
            if k <= cap and finish(k) <= q[st.prefix].deadline - resp:
                break
            st.prefix += 1
        b = min(st.target, n - st.prefix)
        if b == 0:
            return 0, INF
        end = finish(b)
        late = []
        while st.prefix and q[0].deadline - resp < end:
            late.append(q.popleft())
            st.prefix -= 1
        if late:
            self.cluster.drop(late, "window")
        deadline = q[0].deadline - resp
        # Free lunch; finish(b) grows with b, so the sizes that still fit form a run.
        b += bisect_right(range(b + 1, min(len(q), cap) + 1), deadline, key=finish)
        return b, deadline

    def _start_time(self, st: _ModelState, now: float, b: int, deadline: float, free: float) -> float:
        l = st.l
        earliest = now + self.d_ctrl + b * self.d_data
        latest = deadline - self.slack - l[b]
        frontrun = deadline - self.slack - l[b + 1] - self.d_data
        wanted = earliest if self.start_at_target and b >= st.target else frontrun
        return max(earliest, free, min(wanted, latest))

    def _plan(self, st: _ModelState, now: float) -> float:
        """Plan the model's next batch for any slot; returns when to send it (inf: nothing to send)."""
        self.waiting.pop(st, None)
        b, deadline = self._form(st, now, -INF)
        if b == 0:
            if st.queue:
                self.cluster.drop(list(st.queue), "window")    # none can make it even alone, sent now
                st.queue.clear()
                st.prefix = 0
            return INF
        st.exec_at = self._start_time(st, now, b, deadline, -INF)
        st.invalid_after = deadline - st.l[b]
        st.lead = self.d_ctrl + b * self.d_data
        return st.exec_at - st.lead

    def _replan(self, st: _ModelState) -> None:
        """Plan the next batch, and send it (and plan the one after) while its send time has come and a slot
        frees in time; otherwise set the send timer, or wait for a slot."""
        now = self.cluster.now()
        while True:
            send_at = self._plan(st, now)
            if send_at > now:
                st.send.set(send_at)
                st.recheck.set(INF)
                return
            st.send.set(INF)
            if not self._send_or_wait(st):
                return

    def _send_or_wait(self, st: _ModelState) -> bool:
        """Dispatch the plan on the next slot if it frees by the planned start (True); else wait for one."""
        rank, free = self._next_slot(st)
        if free <= st.exec_at:
            st.recheck.set(INF)
            self._dispatch(st, rank, free)
            return True
        self.waiting[st] = None
        st.recheck.set(st.invalid_after - st.lead + TICK)
        if free - st.lead < self.offer.at:
            self.offer.set(free - st.lead)
        return False

    def _dispatch(self, st: _ModelState, rank: int, free: float) -> None:
        """Form the batch again for slot `rank`, which frees at `free`, and send it there."""
        now = self.cluster.now()
        b, deadline = self._form(st, now, free)
        if b == 0:
            return
        exec_at = self._start_time(st, now, b, deadline, free)
        q = st.queue
        tasks = take(q, b)
        st.prefix = max(0, st.prefix - b)
        self.cluster.dispatch(rank, st.name, tasks, latest_start=deadline - st.l[b])
        self.pools.book(rank, exec_at + st.l[b])

    def _on_send(self, st: _ModelState) -> None:
        if self._send_or_wait(st):
            self._replan(st)

    # -- slots --------------------------------------------------------------------
    def _next_slot(self, st: _ModelState) -> tuple[int, float]:
        """(rank, predicted free time) of the slot the model would get; rank -1 when it has none left."""
        if self.consolidate:
            return st.pool.peek(self.cluster.now())
        # Seen from -inf no slot has freed yet, so the pool orders them all by predicted free time,
        # after the ones not used since they joined (which it counts as idle).
        rank, _ = st.pool.peek(-INF)
        return rank, (st.pool.free_at[rank] if rank >= 0 else INF)

    def _arm_offer(self) -> None:
        """Offer the next slot to free when the waiting plan with the longest lead must be sent to use it.
        Between calls the offer may come early (a plan stopped waiting, a slot left): it then looks again."""
        self.offer.set(min((self._next_slot(st)[1] - st.lead for st in self.waiting), default=INF))

    def _on_offer(self) -> None:
        waiting = self.waiting
        slot_of = {st: self._next_slot(st) for st in waiting}
        for st, (_, free) in slot_of.items():
            if free > st.invalid_after:
                del waiting[st]           # no slot frees in time for it: its recheck timer plans it again
        due = min(waiting, key=lambda st: slot_of[st][1] - st.lead, default=None)
        if due is not None and slot_of[due][1] - due.lead <= self.cluster.now():
            rank, free = slot_of[due]
            # Contention: of the plans that can use this slot in time, the most urgent gets it.
            urgent = min((st for st in waiting if rank in st.pool.free_at and st.invalid_after >= free),
                         key=_invalid_after)
            del waiting[urgent]
            self._dispatch(urgent, rank, free)
            self._replan(urgent)
        self._arm_offer()

    # -- allocation to sub-clusters ----------------------------------------------
    def _on_epoch(self) -> None:
        self._allocate()
        self.cluster.call_at(self.cluster.now() + self.config.epoch_s, self._on_epoch)

    def _allocate(self) -> None:
        demand = {st.name: self.demand(st) for st in self.state.values()}
        ranks = [s.index for s in self.cluster.slots if s.alive]
        allotted = {}
        for models, slots in sub_clusters(demand, self.memory, self.config.slot_memory_gib, ranks):
            allotted.update(dict.fromkeys(models, slots))
        self.pools.restrict(allotted)
        for st in self.state.values():
            st.pool = self.pools.of(st.name)
        self._arm_offer()

    def demand(self, st: _ModelState) -> float:
        """The GPUs the model keeps busy at its measured rate and target batch, with the headroom."""
        if not st.rate:
            return 0.0
        return self.config.demand_headroom * st.rate * st.l[st.target] / st.target

    # -- rates and profiles -------------------------------------------------------
    def _seal_rates(self) -> None:
        for st in self.state.values():
            if st.count or st.samples:            # the meter starts with the model's first request
                st.samples.append(st.count / self.sample_s)
                st.count = 0
                st.rate = sum(st.samples) / len(st.samples)
                st.target = self.target_batch(st, st.rate)
        self.cluster.call_at(self.cluster.now() + self.sample_s, self._seal_rates)

    def _load_profile(self, st: _ModelState) -> None:
        """Plan with the slowest slot holding the model, per batch size, forced monotone: mean + std."""
        cluster = self.cluster
        curves = list({id(c): c for c in (cluster.curve(st.name, s)
                                           for s in slots_holding(cluster.slots, st.name))}.values())
        cap = min(c.max_batch for c in curves)
        if self.config.max_batch:
            cap = min(cap, self.config.max_batch)
        mean, std = [0.0], [0.0]
        for b in range(1, cap + 1):
            m = s = 0.0
            for c in curves:
                if m < c.mean[b] or m + s < c.mean[b] + c.std[b]:
                    m, s = c.mean[b], c.std[b]
            if b > 1 and (m < mean[-1] or m + s < mean[-1] + std[-1]):
                m, s = mean[-1], std[-1]
            mean.append(m)
            std.append(s)
        st.l = [m + s for m, s in zip(mean, std)] + [INF]
        st.cap = cap
        st.target = self.target_batch(st, st.rate)


def sub_clusters(demand: dict[str, float], memory: dict[str, float], slot_memory: float,
                 ranks: list[int]) -> list[tuple[list[str], list[int]]]:
    """The allocation's sub-clusters, as (models, slot ranks), from the models' demand in GPUs and memory in GiB
    (steps 2-4 of the module docstring); `ranks` are the slots alive, lowest first."""
    # How many: first-fit decreasing by memory.
    room: list[float] = []
    for gib in sorted(memory.values(), reverse=True):
        fit = next((i for i, left in enumerate(room) if gib <= left), None)
        if fit is None:
            room.append(slot_memory - gib)
        else:
            room[fit] -= gib
    # Which models: the most demanding first, each to the least loaded sub-cluster with memory left.
    models: list[list[str]] = [[] for _ in room]
    load = [0.0] * len(room)
    used = [0.0] * len(room)
    for m in sorted(demand, key=lambda m: -demand[m]):
        fits = [i for i in range(len(models)) if used[i] + memory[m] <= slot_memory]
        if not fits:
            fits = [len(models)]
            models.append([])
            load.append(0.0)
            used.append(0.0)
        i = min(fits, key=lambda i: (load[i], len(models[i])))
        models[i].append(m)
        load[i] += demand[m]
        used[i] += memory[m]
    k, n = len(models), len(ranks)
    if n < k:
        return [(group, [ranks[i % n]] if n else []) for i, group in enumerate(models)]
    # How many slots: one each, then each next to the highest demand per slot.
    count = [1] * k
    heap = [(-load[i], 1, i) for i in range(k)]
    heapq.heapify(heap)
    for _ in range(n - k):
        _, _, i = heapq.heappop(heap)
        count[i] += 1
        heapq.heappush(heap, (-load[i] / count[i], count[i], i))
    # Which slots: every sub-cluster's ceil(demand) first, the slots beyond the demand above them all.
    base = [min(count[i], max(1, math.ceil(load[i]))) for i in range(k)]
    lows = iter(ranks)
    tops = iter(ranks[sum(base):])
    return [(models[i], [next(lows) for _ in range(base[i])] + [next(tops) for _ in range(count[i] - base[i])])
            for i in range(k)]


def _deadline_of(task: Task) -> float:
    return task.deadline


def _invalid_after(st: _ModelState) -> float:
    return st.invalid_after
