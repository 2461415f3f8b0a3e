"""JigsawServe: compound apps served with chosen variants, split latency budgets and GPU segments.

Allocation. Each window (`window_s`) the policy measures every app's demand
(requests/s, smoothed over windows: `rate_smoothing`) and branching factors
(mean tasks of each node per request). It re-solves the allocation MILP of
systems/_milp.py when the allocation lacks the capacity for the demand, an
app is new or a slot it asked for is gone, or when an app's demand has
fallen below `rate_low` x the demand it planned for (a smaller allocation is
then installed only if it takes less GPU share); changes within the noise
of a Poisson count (NOISE_SIGMAS) are not acted on. The MILP gives, for
`headroom` x the demand, a variant mix per app, a latency budget per node
and the segments of each variant (`segments`: emulated MIG slices and MPS
shares; of its own, or parts of shared segments that several light tasks
run on in turn), of least GPU share within the SLOs and accuracy targets.
The segments are packed onto the cluster's devices keeping the slots that
stay (systems/_segments.py) and installed through cluster.reconfigure; no
app is left without slots while the new segments start: with
`make_before_break` (the default) a re-cut device's old slots serve until
its new segments have joined, and slots dropped on devices the allocation
leaves free serve on until every new segment has joined. A slot on its way
out serves whichever of the new allocation's groups run a variant it holds.
The solve and the packing, which read only the demand and a snapshot of
the placement, run off the event loop (cluster.offload): live, in a worker
thread while arrivals and timers go on, the allocation then installed only
if the placement is still the one it was packed onto (else the next window
tries again), and no window starts a solve while one runs; in the sim at
once, at the window's time, so its decisions are those of an inline solve.

Serving. A request is given a variant for each node on arrival, by
deterministic weighted round-robin over the allocation's variant mix; each
of its tasks joins the queue of its (app, node, variant), which that
group's slots take earliest deadline first. A task is held to its
request's deadline (all of a request's tasks share it, so within a node
the order is by request arrival); its node's budget sizes the batch: the
largest whose budget_per_batch x l(b) fits the budget, or larger while the
head still finishes by its budget deadline (its request's arrival plus the
budgets of the nodes up to its own), never one that makes the head miss its
request's deadline: heads that would are dropped (Nexus's early drop), as
are the tasks of a request that has already failed. When the GPUs cannot
serve all of an app's demand, that share of its requests is admitted
(deterministically) and the rest rejected on arrival, each with the
allocation's one-line reason.

Apps are learned from their requests (a task carries its graph); a plain
request is a one-node app of its model, with that model as its only
variant. Until the first allocation, tasks run their node's most accurate
variant on the configured slots, earliest deadline first.

Reconstructed from the paper's abstract and the MILP of its closest prior
work, Loki (pipeline_ilp.py); departures, named here and in systems/_milp.py:
one MILP minimises GPU share under the accuracy target (Loki: fewest
servers with the best variants, else most accuracy on the servers it has);
budgets are per node, so every variant mix fits the SLO (Loki bounds the
latency of each variant path it routes traffic over); branching factors are
measured and do not depend on the upstream variant; segments are the
profiled partitions, each emulated as one MPS share of its SM count (no
legal MIG layouts), and shared segments stand in for MPS levels inside a MIG
slice. On a sleep-model cluster (no shares in its latency model) only the
configured partition is used. Baselines: systems/jigsaw_whole_gpu.py,
jigsaw_max_accuracy.py, jigsaw_even_budget.py.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import List

from harness.apps import App, AppNode
from harness.core import REJECTED, Batch, Policy, SystemConfig, Task
from harness.errors import HarnessError
from harness.gpu.partitions import parse_partition
from harness.ledger import spec_of
from harness.placement import SLEEP, Placement, SlotSpec
from harness.profiles import curves_for
from systems._milp import EVEN, GRAPH, Allocation, Demand, Segment, solve
from systems._segments import devices_needed, fill_shared, pack

PACK_TRIES = 4          # allocations tried with a smaller GPU budget when the segments do not fit the devices
NOISE_SIGMAS = 2.0      # a demand change must exceed this many standard deviations of a Poisson count


@dataclass
class JigsawConfig(SystemConfig):
    name: str = "jigsaw"
    window_s: float = 1.0               # allocation window: demand measured over it, the allocation checked after it
    segments: List[str] = field(default_factory=lambda: [
        "mig-1g.10gb-emulated", "mps25", "mig-3g.40gb-emulated", "mps50", "whole"])   # partitions to cut GPUs into
    accuracy_scaling: bool = True       # false: every task runs its node's most accurate variant
    budget_split: str = GRAPH           # graph: the solver splits each SLO over the nodes | even: SLO / path length
    budget_per_batch: float = 2.0       # a task's latency in batch latencies: the batch ahead, then its own
    headroom: float = 1.3               # capacity planned for headroom x the measured demand
    rate_smoothing: float = 0.5         # the last window's weight in the demand (an exponential moving average)
    rate_low: float = 0.8               # re-solve when an app's demand falls below rate_low x the demand planned for
    make_before_break: bool = True      # a re-cut device's new segments load beside its old slots, which serve meanwhile


class _Group:
    """The tasks of one (app, node, variant), queued earliest deadline first, and what serves them."""

    __slots__ = ("model", "budget", "due", "queue", "idle")

    def __init__(self, model: str, budget: float | None = None, due: float | None = None):
        self.model = model
        self.budget = budget            # the node's latency budget; None before the first allocation
        self.due = due                  # its tasks' budget deadline, after their request's arrival (s)
        self.queue: list[tuple[float, int, Task]] = []
        self.idle: set[int] = set()     # its slots with nothing to run


class _Mix:
    """Deterministic weighted round-robin over an app's variant choices (stride scheduling)."""

    __slots__ = ("heap",)

    def __init__(self, plans: list[tuple[tuple[str, ...], float]]):
        self.heap = [(1.0 / w, i, p, 1.0 / w) for i, (p, w) in enumerate(plans)]
        heapq.heapify(self.heap)

    def pick(self) -> tuple[str, ...]:
        t, i, plan, stride = self.heap[0]
        heapq.heapreplace(self.heap, (t + stride, i, plan, stride))
        return plan


class Jigsaw(Policy):
    Config = JigsawConfig

    def __init__(self, cluster, models, config: JigsawConfig):
        super().__init__(cluster, models, config)
        _check(config)
        slots = list(cluster.slots)
        types = {s.gpu_type for s in slots}
        if len(types) > 1:
            raise HarnessError(f"jigsaw cuts GPUs of one type into segments; the cluster has {sorted(types)}: "
                               "give it one gpu_type")
        self.gpu_type = types.pop()
        self.devices = len({s.device for s in slots})
        # The profiles of segments that do not exist yet come from the files the runtime reads them from. The
        # sleep model has one latency whatever the share: it keeps its configured partition.
        if self.gpu_type == SLEEP:
            partition = slots[0].partition
            self.segments = [Segment(partition, parse_partition(partition).share)]
            self.curves = {(m, partition): cluster.curve(m, next(s.index for s in slots if m in s.models))
                           for m in models}
        else:
            try:
                self.segments = [Segment(p, parse_partition(p).share) for p in config.segments]
                self.curves = {(m, p): c for p in config.segments
                               for m, c in curves_for(self.gpu_type, p, list(models)).items()}
            except HarnessError as exc:
                raise HarnessError(f"system.segments: {exc}") from None
        self.apps: dict[str, App] = {}
        self.keys: dict[str, str] = {}
        self.default_choice: dict[str, tuple[str, ...]] = {}   # per app: each node's own model
        self.arrivals: Counter[str] = Counter()
        self.copies: dict[str, list[float]] = {}          # per app: tasks per node, summed over the window
        self.branching: dict[str, tuple[float, ...]] = {}  # per app: the last measured mean tasks per node
        self.rates: dict[str, float] = {}                  # per app: the demand (requests/s), smoothed
        self.planned: dict[str, float] = {}                # per app: the demand the allocation is for
        self.capacity: Counter = Counter()                 # per (app, node, variant): tasks/s its replicas serve
        self.window_start = 0.0
        self.allocation: Allocation | None = None
        self.solving = False                               # a solve is running (live: in a worker thread); one
                                                           # that raised (live: a policy error) leaves it set
        self.mixes: dict[str, _Mix] = {}
        self.admit_credit: dict[str, float] = {}
        self.chosen: dict[int, tuple] = {}                 # request id -> (request, variant of each node)
        self.groups: dict[tuple[str, int, str], _Group] = {}
        self.node_groups: dict[tuple[str, int], list[_Group]] = {}
        self.desired: Counter = Counter()                  # the slot specs the allocation asked for
        self.lingering: list = []                          # specs it drops that serve on until its segments join
        self.unbound: list[tuple[str, frozenset, tuple]] = []   # (partition, models, groups) of segments to join
        self.slot_groups: dict[int, list[_Group]] = {}
        self.slot_idle: dict[int, list[set[int]]] = {}     # slot -> the idle sets of its groups, each once (_give)
        self.envelopes: dict[int, dict[str, list[float]]] = {}   # slot -> model -> _envelope
        self.seq = itertools.count()
        # Until the first allocation: a group per model on the configured slots.
        self.bootstrap = {m: _Group(m) for m in models}
        # Models held by the same slots have the same idle slots, set and cleared in the same order: one set
        # serves them all, so a slot that starts or ends a batch touches one set, not one per model.
        alive = [s for s in slots if s.alive]
        shared: dict[tuple[int, ...], set[int]] = {}
        for m, group in self.bootstrap.items():
            group.idle = shared.setdefault(tuple(s.index for s in alive if m in s.models), group.idle)
        for s in alive:
            self._give(s.index, [self.bootstrap[m] for m in sorted(s.models) if m in self.bootstrap])
            self._set_idle(s.index, True)
            for m in s.models & models.keys():     # worked out now, not by the first requests each slot serves
                self._envelope(s.index, m)

    def start(self) -> None:
        self.cluster.call_at(self.config.window_s, self._tick)

    # -- arrivals ---------------------------------------------------------------------------------
    def on_arrival(self, task: Task) -> None:
        request = task.request
        if request is not None and request.status is not None:
            self.cluster.drop([task], "its request failed")
            return
        seen = self.chosen.get(task.id) if request is not None else None
        if seen is None:
            app = request.graph if request is not None else self._plain_app(task.model)
            name = app.name
            if name not in self.apps:
                self.apps[name] = app
                self.keys[name] = f"models.{name}" if name in self.models else f"apps.{name}"
                self.default_choice[name] = tuple(n.model for n in app.nodes)
            self.arrivals[name] += 1
            sums = self.copies.get(name)
            if sums is None:             # (not setdefault: its default list would be built on every arrival)
                sums = self.copies[name] = [0.0] * len(app.nodes)
            if request is not None:
                for i, k in enumerate(request.copies):
                    sums[i] += k
            else:
                sums[0] += 1
            if not self._admit(name):
                self.cluster.drop([task], self.allocation.note, REJECTED)
                return
            mix = self.mixes.get(name)
            # Without a mix, each node's own model; an app's nodes never change, so that tuple is built once.
            choice = mix.pick() if mix is not None else self.default_choice[name]
            if request is not None:
                self.chosen[task.id] = (request, choice)
        else:
            choice = seen[1]
        self._enqueue(task, choice[task.node])

    def _plain_app(self, model: str) -> App:
        app = self.apps.get(model)
        return app if app is not None else App(model, self.models[model].slo, (AppNode(model, model),))

    def _admit(self, app: str) -> bool:
        """Admit the share of an app's requests the allocation serves (all, unless over capacity)."""
        served = self.allocation.served.get(app, 1.0) if self.allocation is not None else 1.0
        if served >= 1.0:
            return True
        credit = self.admit_credit.get(app, 0.0) + served
        self.admit_credit[app] = credit - 1.0 if credit >= 1.0 else credit
        return credit >= 1.0

    def _enqueue(self, task: Task, variant: str) -> None:
        group = self._group_of(task, variant)
        heapq.heappush(group.queue, (task.deadline, next(self.seq), task))
        if group.idle:
            self._serve(next(iter(group.idle)))

    def _group_of(self, task: Task, variant: str) -> _Group:
        if self.allocation is None:
            return self.bootstrap[variant]
        app = task.request.model if task.request is not None else task.model
        group = self.groups.get((app, task.node, variant))
        if group is None:   # the allocation changed under its request, or the app is new: one of its node's, if any
            group = self.node_groups.get((app, task.node), [self.bootstrap[variant]])[0]
        return group

    # -- serving ------------------------------------------------------------------------------------
    def on_batch_done(self, batch: Batch) -> None:
        if self.cluster.slots[batch.slot].outstanding == 0:
            self._set_idle(batch.slot, True)
            self._serve(batch.slot)

    def _serve(self, slot: int) -> None:
        cluster = self.cluster
        now = cluster.now()
        best = None
        for group in self.slot_groups.get(slot, ()):
            q = group.queue
            if not q:                    # (most of a slot's groups, most of the time: nothing to look at)
                continue
            alone = self._envelope(slot, group.model)[1]    # its latency at batch 1
            late, failed = [], []
            while q:
                task = q[0][2]
                if task.request is not None and task.request.status is not None:
                    failed.append(heapq.heappop(q)[2])
                elif now + alone > task.deadline:
                    late.append(heapq.heappop(q)[2])
                else:
                    break
            if failed:
                cluster.drop(failed, "its request failed")
            if late:
                cluster.drop(late, "late")
            if q and (best is None or q[0][0] < best.queue[0][0]):
                best = group
        if best is None:
            return
        # The batch: as large as the budgets allow (_size); heads it would make miss their request's deadline
        # are dropped, so that a backlog is cut down to what batches of that size serve in time (Nexus's early
        # drop) instead of going one by one.
        envelope = self._envelope(slot, best.model)
        q, late = best.queue, []
        while q:
            size = min(len(q), self._size(envelope, best, now))
            if now + envelope[size] <= q[0][0]:
                break
            late.append(heapq.heappop(q)[2])
        if late:
            cluster.drop(late, "late")
        if not q:
            return
        tasks = [heapq.heappop(q)[2]] if size == 1 else [heapq.heappop(q)[2] for _ in range(size)]
        self._set_idle(slot, False)
        cluster.dispatch(slot, best.model, tasks)

    def _give(self, slot: int, groups: list[_Group]) -> None:
        """The slot serves these groups (in this order, for ties), and its idle state is kept in their sets."""
        self.slot_groups[slot] = groups
        self.slot_idle[slot] = list({id(g.idle): g.idle for g in groups}.values())

    def _set_idle(self, slot: int, idle: bool) -> None:
        for slots in self.slot_idle.get(slot, ()):
            if idle:
                slots.add(slot)
            else:
                slots.discard(slot)

    def _envelope(self, slot: int, model: str) -> list[float]:
        """The profile's mean latencies made non-decreasing in the batch size, for bisection (index 0 is 0, so
        index 1 is the batch-1 latency itself); a slot's curves never change: cached."""
        cache = self.envelopes.get(slot)
        if cache is None:
            cache = self.envelopes[slot] = {}
        envelope = cache.get(model)
        if envelope is None:
            envelope = cache[model] = list(itertools.accumulate(self.cluster.curve(model, slot).mean, max))
        return envelope

    def _size(self, envelope: list[float], group: _Group, now: float) -> int:
        """The largest batch whose latency fits the node's budget (budget_per_batch of them) or, when larger,
        that the head of the queue finishes by its budget deadline (its request's deadline before any
        allocation): a backlog goes in larger batches while they keep to the budgets."""
        head = group.queue[0][2]
        if group.budget is None:
            return max(1, bisect.bisect_right(envelope, head.deadline - now) - 1)
        due = (head.request.t_arrival if head.request is not None else head.t_arrival) + group.due
        planned = bisect.bisect_right(envelope, group.budget / self.config.budget_per_batch) - 1
        return max(1, planned, bisect.bisect_right(envelope, due - now) - 1)

    # -- slots --------------------------------------------------------------------------------------
    def on_slot_lost(self, slot: int) -> None:
        self._set_idle(slot, False)
        self.slot_groups.pop(slot, None)
        self.slot_idle.pop(slot, None)

    def on_slot_added(self, slot: int) -> None:
        self._bind(slot)
        self._serve(slot)
        if self.lingering and not self.unbound:     # every new segment is in: the old slots can go
            self.lingering = []
            self.cluster.reconfigure(Placement(tuple(self.desired.elements())), overlap=self.config.make_before_break)

    # -- the allocation window ------------------------------------------------------------------------
    def _tick(self) -> None:
        now = self.cluster.now()
        span = now - self.window_start
        w = self.config.rate_smoothing
        for app in self.apps:
            last = self.arrivals[app] / span
            self.rates[app] = w * last + (1 - w) * self.rates[app] if app in self.rates else last
            if self.arrivals[app]:
                self.branching[app] = tuple(k / self.arrivals[app] for k in self.copies[app])
        self.arrivals.clear()
        self.copies.clear()
        self.window_start = now
        self.chosen = {k: v for k, v in self.chosen.items() if v[0].status is None}
        if self.apps and not self.solving:     # one solve at a time; the next window looks again
            grow = (self.allocation is None or set(self.rates) - set(self.planned) or self._short(span)
                    or Counter(self.cluster.placement.slots) != self.desired + Counter(self.lingering))
            if grow or any(self._fell(a, span) for a in self.planned):
                self._allocate(dict(self.rates), only_smaller=not grow)
        self._drop_stranded(now)
        self.cluster.call_at(now + self.config.window_s, self._tick)

    def _short(self, span: float) -> bool:
        """Whether some variant of a node has more tasks coming than its replicas serve, beyond noise. When the
        GPUs limited the allocation, whether an app's demand rose above the demand planned for / rate_low: a
        new allocation can then serve no more unless the demand has moved."""
        if self.allocation.limited:
            return any(self._fell(a, span, rose=True) for a in self.planned)
        for (app, node, variant), capacity in self.capacity.items():
            mix = sum(share for plan, share in self.allocation.plans[app] if plan[node] == variant)
            tasks = self.rates[app] * self.allocation.served[app] * self.branching[app][node] * mix * span
            if tasks > capacity * span + NOISE_SIGMAS * math.sqrt(capacity * span):
                return True
        return False

    def _fell(self, app: str, span: float, rose: bool = False) -> bool:
        """Whether the app's demand fell below rate_low x the demand planned for, beyond noise (rose: rose
        above it / rate_low)."""
        expected, count = self.planned[app] * span, self.rates[app] * span
        noise = NOISE_SIGMAS * math.sqrt(expected)
        if rose:
            return count > expected / self.config.rate_low + noise
        return count < self.config.rate_low * expected - noise

    def _allocate(self, rates: dict[str, float], only_smaller: bool) -> None:
        """Solve for `rates` off the event loop (cluster.offload: live, a solve takes tenths of a second that
        arrivals and timers would wait) and install the allocation it finds (with `only_smaller`: if it
        takes less GPU share)."""
        demands = [Demand(self.apps[a], r, self.branching.get(a, (1.0,) * len(self.apps[a].nodes)), self.keys[a])
                   for a, r in rates.items()]
        c = self.config
        settings = dict(budget_per_batch=c.budget_per_batch, budget_split=c.budget_split, headroom=c.headroom,
                        accuracy_scaling=c.accuracy_scaling)
        current = self.cluster.placement.slots
        self.solving = True
        self.cluster.offload(
            functools.partial(_plan, demands, self.segments, self.curves, self.devices, self.gpu_type, current,
                              settings),
            lambda found: self._solved(found, rates, only_smaller, current))

    def _solved(self, found: tuple | None, rates: dict[str, float], only_smaller: bool, current: tuple) -> None:
        self.solving = False
        # None: no allocation tried fits the devices. A placement other than the one the segments were packed
        # onto: it moved while the solve ran (live only), so the packing no longer holds. Either way it keeps
        # serving as now, and the next window tries again.
        if found is None or self.cluster.placement.slots != current:
            return
        allocation, groups, segments, specs = found
        self.planned = rates            # a smaller allocation that is no smaller is not tried again for them
        if not only_smaller or allocation.share < self.allocation.share - 1e-9:
            self._install(allocation, groups, segments, specs)

    def _install(self, allocation: Allocation, groups: dict, segments: list, specs: list) -> None:
        old = list(self.groups.values()) + list(self.bootstrap.values())
        self.allocation = allocation
        self.capacity = Counter()
        for r in allocation.replicas:
            self.capacity[r.app, r.node, r.variant] += r.rate
        self.mixes = {a: _Mix(plans) for a, plans in allocation.plans.items()}
        self.admit_credit = {}
        self.groups = groups
        self.node_groups = {}
        for (app, node, _), group in groups.items():
            self.node_groups.setdefault((app, node), []).append(group)
        self.unbound = list(segments)
        self.desired = Counter(specs)
        # Slots the allocation drops on devices it leaves free serve on until its new segments have joined, so
        # that a reconfiguration does not leave the apps without a slot while they start (on a device it re-cuts,
        # making before breaking does that).
        current = Counter(self.cluster.placement.slots)
        serving = Counter(spec_of(s) for s in self.cluster.slots if s.alive)
        used = {spec.device for spec in specs}
        self.lingering = [spec for spec in (current - self.desired).elements() if spec.device not in used] \
            if self.desired - serving else []
        if self.desired != current:
            self.cluster.reconfigure(Placement(tuple(specs) + tuple(self.lingering)),
                                     overlap=self.config.make_before_break)
        self.slot_groups, self.slot_idle = {}, {}
        for s in self.cluster.slots:
            if s.alive:
                self._bind(s.index)
        queued = [task for group in old for _, _, task in group.queue]
        for group in old:
            group.queue.clear()
        # Queued tasks move to their node's groups in the new allocation; an app it serves none of is shed.
        shed = [t for t in queued if allocation.served.get(t.request.model if t.request else t.model, 1.0) == 0]
        if shed:
            self.cluster.drop(shed, allocation.note)
        for task in queued:
            if task.status is None:
                seen = self.chosen.get(task.id) if task.request is not None else None
                self._enqueue(task, seen[1][task.node] if seen is not None else task.model)
        for slot in sorted(self.slot_groups):
            self._serve(slot)

    def _bind(self, slot: int) -> None:
        """Give the slot to the groups of a segment the allocation asked for like it (alive slots are idle or
        finishing what they ran before: their next batch waits for on_batch_done). A slot on its way out
        takes no segment: the one that replaces it will."""
        s = self.cluster.slots[slot]
        for k, (partition, models, groups) in enumerate(self.unbound):
            if s.partition == partition and s.models == models and not s.leaving:
                del self.unbound[k]
                self._give(slot, list(dict.fromkeys(groups)))
                break
        else:                           # lingering or leaving: it serves every group whose variant it holds
            self._give(slot, [g for g in self.groups.values() if g.model in s.models])
        if s.outstanding == 0:
            self._set_idle(slot, True)

    def _drop_stranded(self, now: float) -> None:
        """Tasks of groups that no slot serves yet are dropped once past their deadline (else they would
        wait to the end of the run)."""
        served = {id(g) for gs in self.slot_groups.values() for g in gs}
        for group in list(self.groups.values()) + list(self.bootstrap.values()):
            if id(group) in served or not group.queue:
                continue
            late = [t for _, _, t in group.queue if t.deadline < now]
            if late:
                group.queue = [e for e in group.queue if e[2].deadline >= now]
                heapq.heapify(group.queue)
                self.cluster.drop(late, "late")


def _plan(demands: list[Demand], kinds: list[Segment], curves: dict, devices: int, gpu_type: str,
          current: tuple[SlotSpec, ...], settings: dict) -> tuple | None:
    """The allocation for `demands`, its groups and segments, and the slot specs that pack the segments onto
    the devices keeping the `current` ones that stay: (allocation, groups, segments, specs); None if no
    allocation tried fits the devices. It runs off the event loop (cluster.offload), so it reads only what it
    is given (all of it immutable or never written after the policy starts) and writes nothing shared."""
    apps = {d.app.name: d.app for d in demands}
    budget = float(devices)
    for _ in range(PACK_TRIES):
        allocation = solve(demands, kinds, lambda m, p: curves[m, p], budget, **settings)
        due = {a: _dues(apps[a], b) for a, b in allocation.budgets.items()}
        groups = {(r.app, r.node, r.variant): _Group(r.variant, allocation.budgets[r.app][r.node],
                                                     due[r.app][r.node]) for r in allocation.replicas}
        segments = [(r.partition, frozenset([r.variant]), (groups[r.app, r.node, r.variant],))
                    for r in allocation.replicas for _ in range(r.count)]
        segments += fill_shared(allocation.shared, [(r.partition, r.variant, groups[r.app, r.node, r.variant],
                                                     r.part) for r in allocation.replicas if r.part])
        wanted = Counter((partition, models) for partition, models, _ in segments)
        specs = pack(current, wanted, gpu_type, devices)
        if specs is not None:
            return allocation, groups, segments, specs
        budget = allocation.share * devices / devices_needed(wanted)
    return None


def _dues(app: App, budgets: tuple[float, ...]) -> list[float]:
    """Each node's budget deadline after its request's arrival: the budgets of the nodes up to it, added along
    its longest path from a root."""
    due = [0.0] * len(app.nodes)
    for path in app.paths:
        total = 0.0
        for i in path:
            total += budgets[i]
            due[i] = max(due[i], total)
    return due


def _check(c: JigsawConfig) -> None:
    if not c.window_s > 0:
        raise HarnessError(f"system.window_s must be > 0 (got {c.window_s}); set system.window_s=<seconds>")
    if not c.segments:
        raise HarnessError("system.segments is empty; give partitions to cut GPUs into, e.g. [mps25, mps50, whole]")
    if c.budget_split not in (GRAPH, EVEN):
        raise HarnessError(f"unknown system.budget_split '{c.budget_split}'; choose {GRAPH} or {EVEN}")
    if not c.budget_per_batch >= 1:
        raise HarnessError(f"system.budget_per_batch must be >= 1 (got {c.budget_per_batch}): a task takes at "
                           "least its own batch's latency")
    if not c.headroom >= 1:
        raise HarnessError(f"system.headroom must be >= 1 (got {c.headroom}); set system.headroom=<e.g. 1.3>")
    if not 0 < c.rate_low <= 1:
        raise HarnessError(f"system.rate_low must be in (0, 1] (got {c.rate_low}); set system.rate_low=<e.g. 0.8>")
    if not 0 < c.rate_smoothing <= 1:
        raise HarnessError(f"system.rate_smoothing must be in (0, 1] (got {c.rate_smoothing}): the last window's "
                           "weight in the demand; set system.rate_smoothing=<e.g. 0.5>")
