"""D-STACK: right-sized GPU shares and a spatio-temporal schedule (Dhakal, Kulkarni and Ramakrishnan,
IEEE TCC 2024; the share sizing comes from their GSLICE, SoCC 2020).

l(b, p) is the profiled latency of a batch of b on a share p of a GPU (an
MPS thread percentage); the whole GPU is the largest profiled share.

Right-sizing, per model:
- batch(p) = argmax b / l(b, p) over the b with l(b, p) <= SLO/2 and
  b <= rate * SLO (no rate bound while the rate is unknown), and -- here --
  l(b, p) <= the cycle's budget below, so one run fits in a cycle; 1 if none.
- knee = the smallest profiled share p with l(b, p) <= (1 + knee_tolerance)
  * l(b, whole GPU), at b = batch(whole GPU): beyond it more SMs buy less
  than the tolerance. The model's batch is then batch(knee).

The schedule. Time runs in cycles as long as the smallest SLO (T). A run of
a model is a rectangle: height its knee share, width l(n, share), n the
requests a run is expected to carry. A model runs e times a cycle: at least
once, often enough to carry its load (rate*T / batch), and often enough that
its turns are at most SLO - l(batch) apart (a request that just missed a
turn still makes its deadline at the next; twice a cycle for the models of
the smallest SLO), and -- here -- often enough that a run is planned at most
max_fill full; each run carries n = min(batch, ceil(rate*T / e)). The
rectangles are packed into levels, first fit by decreasing height (FFDH
strip packing): a level is a band of one device's share, as tall as its
first rectangle, running through every cycle; a run goes to the first level
with room left in its cycle budget (max_fill of T), else opens a level on
the first device with that much share free, else (every device is full:
more load than the cluster can plan for) goes to the level with the least
planned time. Each level is one slot: an MPS share whose size is the level's
height, serving the models of its runs. So the shares running at any moment
on a device add up to at most 100% by construction (harness.placement checks
it for every placement). Every slot holds every model (the models fit an
H200's memory many times over), so a new plan that keeps the shares only
deals out the turns again, restarting nothing. Within a level, the k-th of
a model's e runs is released at k*T/e and due at (k+1)*T/e, and the runs are
laid out earliest due first among those released, each as soon as the one
before ends; a run's start in its cycle is its turn.

Serving. A slot runs one batch at a time. When it is free, in the current
cycle: (1) the earliest of its turns whose time has come, of a model with
requests waiting, runs (a model with nothing waiting at its turn keeps the
turn until the cycle ends: its next request runs at once); (2) else the
spare time goes earliest-deadline-first to the models it holds that have a
run's worth of requests waiting, or whose first request would miss its
deadline waiting for the model's next turn (on any slot), for a batch that
ends before the slot's next turn of another model with requests waiting (in
this cycle or the next); (3) else the slot stays idle. A batch takes up to
the model's batch of its most urgent requests, fewer if the first one would
miss its deadline. Requests that cannot make their deadline in a run of the
planned size started now are dropped (so a backlog does not shrink every
batch to its oldest request's slack).

Free slots decide when something that can change their decision happens,
and only those it concerns: a slot that frees up; a model's turn that comes
while it has requests waiting (one timer per model, at its next turn on any
slot), for the free slots whose turn of it has come, lowest slot first; and
a model's requests arriving, for the same slots, then, if the model needs
spare time, for the free slots holding it, in slot order. A model for which
no free slot had spare time is looked at again at its next turn, or when a
slot frees up: more requests only lengthen its batch. An arrival so costs a
few steps, not a visit of every free slot (at 100,000 requests/s over 158
slots, the difference between keeping up and falling behind).

Re-sizing. Arrivals are counted over windows of rate_window_s from the first
request on. After each window, if a model's rate moved by more than
resize_threshold of the rate the plan was made for, the rectangles are sized
and packed again and the cluster moves to the new levels (cluster.reconfigure,
systems._spatial.Rollout). With make_before_break (the default) the new
shares load beside the old ones, which serve until the new ones of their
device have joined: a re-size never leaves a GPU without shares (a real one
took 12.9 s to start four). Without it, in two waves of devices, so half the
cluster serves while the other half restarts. Slots that already are a level of the
new plan take its turns at once, and the models with requests waiting look at
their new turns in the plan's own event. Until the first window ends, the
configured slots serve as levels of their own.

Shares. The knee search runs over the MPS shares (mps<percent>, whole)
profiled for the cluster's GPU type and the cluster's own partitions,
read once when the policy is built. The H200 profiles hold mps25, mps50 and
whole; finer shares come from the profiler, measured beside busy siblings:

    python -m harness.gpu.profiler --partition whole,mps10,mps20,mps25,mps30,mps40,mps50,mps60,mps70,mps80,mps90 \\
        --siblings auto

The sleep model's latency does not depend on the share: there every knee is
the configured partition, and D-STACK packs the models in time on it.

Where this module departs from the paper, and why:
- Levels instead of free placement: a run uses its level's band only, never
  whatever share happens to be free. A slot's share is fixed for its life and
  a placement's shares on a device add up to at most 100%, so the guarantee
  holds structurally instead of by bookkeeping over shares that together
  exceed the device; the price is a looser packing (FFDH is within 1.7x of
  the optimal strip), and a model on a level taller than its knee runs there
  (faster, with SMs to spare).
- Models whose knees add up to more than one device spread over the
  configured devices first (a level opens on the next device with share
  free), then share levels in time.
- The batch rule also keeps a run within the cycle's budget (a model with a
  long SLO would otherwise overrun the cycle of the shortest one); the width
  of a run is planned at the requests it is expected to carry, not at its
  largest batch; and a model runs as often as its deadline needs, not only
  once a cycle: with cycles as long as the smallest SLO and one turn each,
  a request that just missed its model's turn would wait a whole SLO.
- The dropping rule (a run of the planned size) is this module's: without
  one, an overloaded slot serves ever smaller batches of late requests.
- Re-sizing restarts the slots whose share changes (the sim charges
  runtime.slot_start_s); GSLICE re-sizes a share in under 100 us by keeping a
  standby process. Slots hold every model, where D-STACK runs a process per
  model, so that a plan that keeps the shares costs no restart. The first
  rate window serves on the configured slots.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right, insort
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from harness.core import Batch, Policy, SystemConfig, Task, take
from harness.errors import HarnessError
from harness.placement import SHARE_TOLERANCE, Placement, SlotSpec
from harness.profiles import LatencyCurve
from systems._spatial import Rollout, Share, profiled_shares, spec_of

INF = float("inf")
MPS_KINDS = ("mps", "whole")


@dataclass
class DStackConfig(SystemConfig):
    name: str = "dstack"
    knee_tolerance: float = 0.10   # eps: the knee's latency is within (1 + eps) of the whole GPU's
    max_fill: float = 0.85         # a level's planned runs fill at most this fraction of a cycle, a run of its batch
    rate_window_s: float = 1.0     # arrivals are counted over windows this long (the rate)
    resize_threshold: float = 0.3  # re-size when a model's rate moves by more than this fraction
    make_before_break: bool = True  # new shares load beside the old ones, which serve until they join


@dataclass(frozen=True)
class Rectangle:
    """A model's runs in each cycle."""

    model: str
    partition: str     # its knee
    share: float
    batch: int         # the most requests a run takes
    runs: int          # runs per cycle
    items: int         # requests a run is expected to carry


@dataclass
class Level:
    """A band of one device's share through every cycle: one slot."""

    device: int
    partition: str
    share: float
    runs: list[tuple[float, float, float, str]] = field(default_factory=list)   # (release, due, width, model)
    used: float = 0.0                                                    # planned seconds per cycle
    turns: list[tuple[float, str]] = field(default_factory=list)         # (start in the cycle, model), in order

    @property
    def models(self) -> frozenset[str]:
        return frozenset(run[-1] for run in self.runs)


def batch_rule(curve: LatencyCurve, slo: float, rate: float | None, budget: float) -> int:
    """argmax b / l(b) over b with l(b) <= min(SLO/2, budget) and b <= rate * SLO (rate None: no bound);
    1 when no batch fits."""
    top = curve.max_batch if rate is None else max(1, min(curve.max_batch, int(rate * slo)))
    limit = min(slo / 2, budget)
    best, best_rate = 1, 0.0
    for b in range(1, top + 1):
        lat = curve.mean[b]
        if lat <= limit and b / lat > best_rate:
            best, best_rate = b, b / lat
    return best


def knee(shares: Sequence[Share], model: str, batch: int, tolerance: float) -> tuple[str, float]:
    """(partition, share) of the smallest share whose latency at `batch` is within (1 + tolerance) of the
    largest share's (the whole GPU)."""
    whole = shares[-1][2][model].mean[batch]
    for partition, share, curves in shares:
        curve = curves[model]
        if batch <= curve.max_batch and curve.mean[batch] <= (1 + tolerance) * whole:
            return partition, share
    raise AssertionError("the largest share is always within the tolerance of itself")


def rectangle(shares: Sequence[Share], model: str, slo: float, rate: float | None, cycle: float,
              tolerance: float, budget: float, fill: float) -> Rectangle:
    """The model's knee, batch and runs per cycle at `rate` requests/s (None: not measured yet); a run is
    planned to carry at most `fill` of its batch."""
    b_whole = batch_rule(shares[-1][2][model], slo, rate, budget)
    partition, share = knee(shares, model, b_whole, tolerance)
    curve = next(c for p, _, c in shares if p == partition)[model]
    batch = batch_rule(curve, slo, rate, budget)
    # Turns at most SLO - l(batch) apart: a request that just missed a turn still makes its deadline at the next.
    gap = slo - curve.mean[batch]
    often = math.ceil(cycle / gap) if gap > 0 else 1
    if rate is None:
        return Rectangle(model, partition, share, batch, often, batch)
    per_cycle = rate * cycle
    # Room in each run for arrivals above the mean: a run planned full (60 of 64 Poisson arrivals a cycle)
    # overflows one cycle in three, and what overflows waits a cycle, past a short SLO.
    runs = max(often, math.ceil(per_cycle / (fill * batch)))
    return Rectangle(model, partition, share, batch, runs, max(1, min(batch, math.ceil(per_cycle / runs))))


def pack(rects: Iterable[Rectangle], curves: Mapping[str, Mapping[str, LatencyCurve]], devices: Sequence[int],
         cycle: float, budget: float) -> list[Level]:
    """Rectangles into levels, first fit by decreasing height, and each level's turns (see module doc).
    `curves[partition][model]` gives a run's width on a level of that partition."""
    levels: list[Level] = []
    free = dict.fromkeys(devices, 1.0)
    for r in sorted(rects, key=lambda r: (-r.share, r.model)):
        widths: dict[str, float] = {}    # partition -> a run's width on a level of it

        def width(level: Level) -> float:
            if level.partition not in widths:
                curve = curves[level.partition][r.model]
                widths[level.partition] = curve.mean[min(r.items, curve.max_batch)]
            return widths[level.partition]

        # A level's planned time only grows and a device's free share only shrinks, so a level without room
        # for a run of r, or a device without r's share free, stays so for r's later runs: the first fits
        # resume where the last run's stopped, and once no level has room and no device a share, r's runs go
        # to the least planned level (the first of equals), kept in a heap of (planned time with the run,
        # index) -- instead of scans over every level and device for every run.
        fit, dev = 0, 0
        spill: list[tuple[float, int]] | None = None
        for k in range(r.runs):
            # Sorted by height, every level open so far is at least as tall as this rectangle.
            if spill is None:
                while fit < len(levels) and levels[fit].used + width(levels[fit]) > budget:
                    fit += 1
                if fit == len(levels):
                    while dev < len(devices) and free[devices[dev]] < r.share - SHARE_TOLERANCE:
                        dev += 1
                    if dev < len(devices):
                        free[devices[dev]] -= r.share
                        levels.append(Level(devices[dev], r.partition, r.share))
                    else:
                        spill = [(lv.used + width(lv), i) for i, lv in enumerate(levels)]
                        heapq.heapify(spill)
            i = fit if spill is None else heapq.heappop(spill)[1]
            level = levels[i]
            w = width(level)
            level.runs.append((k * cycle / r.runs, (k + 1) * cycle / r.runs, w, r.model))
            level.used += w
            if spill is not None:
                heapq.heappush(spill, (level.used + w, i))
    for level in levels:
        level.turns = lay_out(level.runs, cycle)
    return sorted(levels, key=lambda lv: lv.device)   # stable: a device's levels in the order they opened


def lay_out(runs: Iterable[tuple[float, float, float, str]], cycle: float) -> list[tuple[float, str]]:
    """Turns for a level's runs (release, due, width, model), the k-th of a model's e runs released at k*T/e
    and due at (k+1)*T/e: earliest due first among the runs released (list scheduling), each as soon as
    the run before ends; then moved earlier where needed to end by the end of the cycle. Runs that need
    more than the cycle lie end to end, squeezed into it."""
    pending = sorted(runs)
    order, starts, t = [], [], 0.0
    while pending:
        released = [r for r in pending if r[0] <= t] or pending[:1]
        run = min(released, key=lambda r: (r[1], r[3]))
        pending.remove(run)
        order.append(run)
        starts.append(max(t, run[0]))
        t = starts[-1] + run[2]
    limit = cycle
    for i in reversed(range(len(order))):
        starts[i] = limit = min(starts[i], limit - order[i][2])
    if starts and starts[0] < 0:
        total = sum(r[2] for r in order)
        starts = [sum(r[2] for r in order[:i]) * cycle / total for i in range(len(order))]
    return [(start, run[3]) for start, run in zip(starts, order)]


def placement_of(levels: Sequence[Level], gpu_type: str, models: Iterable[str]) -> Placement:
    """One slot per level, each holding every model (see module doc: a new plan with the same shares
    restarts nothing)."""
    held = frozenset(models)
    return Placement(tuple(SlotSpec(gpu_type, lv.partition, lv.device, held) for lv in levels))


class _Lane:
    """A slot's turns and where it is in the current cycle."""

    __slots__ = ("turns", "curves", "first", "sizes", "cycle", "owed", "next")

    def __init__(self, turns: list[tuple[float, str]], curves: dict[str, LatencyCurve]):
        self.turns = turns
        self.curves = curves           # model -> its curve on this slot, for the models the slot serves
        self.first: dict[str, float] = {}   # model -> its earliest turn in a cycle (its turn in the next one)
        for offset, model in turns:
            if offset < self.first.get(model, INF):
                self.first[model] = offset
        self.sizes: dict[str, tuple[list[float], int, int, bool]] = {}   # set by resize()
        self.cycle = -1                # index of the cycle `owed` belongs to
        self.owed: list[int] = []      # turns not yet taken in that cycle, in order
        self.next: list[tuple[float, str]] | None = None   # (next turn, model), in order, while `owed` stays

    def resize(self, rects: Mapping[str, Rectangle]) -> None:
        """The plan's run sizes on this slot, read on every serve: model -> (its curve's means, a run's planned
        requests, its largest batch, whether the means never fall as the batch grows), in `curves` order."""
        self.sizes = {m: (c.mean, min(rects[m].items, c.max_batch), min(rects[m].batch, c.max_batch), c.rising)
                      for m, c in self.curves.items()}


class _Turns:
    """One model's turns on every lane, in time order through the current cycle, and the idle lanes whose turn
    of it has come (DStack's serving section).

    The calendar is (offset in a cycle, slot) for every turn of the model on every lane, sorted. `passed`
    counts the turns whose time has come in cycle `cycle`; their lanes, and the idle lanes that still owe one
    of them, are in `come` (a heap of slots, so the lowest slot serves first), each once (`listed`). An entry
    may be stale (its lane busy, or its turn taken): the lane's own decision tells, when it is popped."""

    __slots__ = ("calendar", "cycle", "passed", "come", "listed", "at", "slot", "until", "timer")

    def __init__(self, calendar: list[tuple[float, int]]):
        self.calendar = calendar
        self.cycle = -1
        self.passed = 0
        self.come: list[int] = []
        self.listed: set[int] = set()
        self.at, self.slot = INF, -1   # the next turn: when, and on which slot (_come)
        self.until = -INF              # what _come found holds until then: no turn comes, the cycle goes on
        self.timer = None              # at the next turn, while the model has requests waiting

    def list(self, slot: int) -> None:
        if slot not in self.listed:
            self.listed.add(slot)
            heapq.heappush(self.come, slot)

    def pop(self) -> int:
        slot = heapq.heappop(self.come)
        self.listed.discard(slot)
        return slot


class DStack(Policy):
    Config = DStackConfig

    def __init__(self, cluster, models, config: DStackConfig):
        super().__init__(cluster, models, config)
        if not config.knee_tolerance >= 0:
            raise HarnessError(f"dstack: knee_tolerance must be >= 0 (got {config.knee_tolerance}); "
                               "set system.knee_tolerance=<e.g. 0.1>")
        if not 0 < config.max_fill <= 1:
            raise HarnessError(f"dstack: max_fill must be in (0, 1] (got {config.max_fill}); "
                               "set system.max_fill=<fraction of a cycle>")
        if not config.rate_window_s > 0:
            raise HarnessError(f"dstack: rate_window_s must be > 0 (got {config.rate_window_s}); "
                               "set system.rate_window_s=<seconds>")
        if not config.resize_threshold >= 0:
            raise HarnessError(f"dstack: resize_threshold must be >= 0 (got {config.resize_threshold}); "
                               "set system.resize_threshold=<fraction of the rate>")
        self.shares = profiled_shares(cluster, models, MPS_KINDS, "dstack")
        self.curves = {p: c for p, _, c in self.shares}
        self.gpu_type = cluster.slots[0].gpu_type
        self.devices = cluster.placement.devices
        self.cycle = min(spec.slo for spec in models.values())
        self.fill = config.max_fill
        self.budget = self.cycle * config.max_fill
        self.queues: dict[str, deque[Task]] = {m: deque() for m in models}
        self.waiting: dict[str, None] = {}           # the models with requests queued, in a set's role (ordered)
        self.unplaced: set[str] = set()              # waiting models no idle lane had spare time for (_offer)
        self.rects = self._rectangles(None)
        self.lanes: dict[int, _Lane] = {}
        self.holders: dict[str, set[int]] = {m: set() for m in models}   # model -> slots whose lane serves it
        self.turns: dict[str, _Turns] = {m: _Turns([]) for m in models}   # model -> its turns on every lane
        self.idle: set[int] = set()
        self.planned: dict[SlotSpec, list[Level]] = {}   # levels of the plan not yet given a slot, by spec
        self.counts = dict.fromkeys(models, 0)
        self.rates: dict[str, float] | None = None  # the rates the plan was made for
        self.rate_timer = None                       # set by the first arrival
        self.rollout = Rollout(cluster, overlap=config.make_before_break)
        self.stale = True                            # the lanes changed since the turns were counted
        for s in cluster.slots:
            if s.alive:
                self._open_lane(s.index)

    # -- events -----------------------------------------------------------------------------------
    def on_arrival(self, task: Task) -> None:
        if self.rate_timer is None:
            self.rate_timer = self.cluster.call_at(self.cluster.now() + self.config.rate_window_s, self._close_window)
        model = task.model
        q = self.queues[model]
        if q and task.deadline < q[-1].deadline:
            insort(q, task, key=_deadline)
        else:
            q.append(task)
        self.waiting[model] = None
        self.counts[model] += 1
        self._offer(model, self.cluster.now())

    def on_batch_done(self, batch: Batch) -> None:
        if batch.slot in self.lanes and self.cluster.slots[batch.slot].outstanding == 0:
            self.idle.add(batch.slot)
            self._serve(batch.slot, self.cluster.now())

    def on_slot_lost(self, slot: int) -> None:
        lane = self.lanes.pop(slot, None)
        if lane is not None:
            for m in lane.curves:
                self.holders[m].discard(slot)
            self.stale = True
        self.idle.discard(slot)

    def on_slot_added(self, slot: int) -> None:
        self._open_lane(slot)
        if slot in self.idle:
            self._serve(slot, self.cluster.now())
        self.rollout.joined(slot)

    # -- serving ----------------------------------------------------------------------------------
    def _offer(self, model: str, now: float) -> None:
        """The model has requests waiting (an arrival, or its turn has come): the free slots whose turn of it has
        come serve, lowest slot first; then, if it needs spare time (unless a search since its last turn found
        no free slot with room: unplaced), the free slots holding it where its batch fits (_fits), in slot order; and
        its timer is set for its next turn (the module doc's serving section says why no other slot need look)."""
        q = self.queues[model]
        turns = self._come(model, now)
        while q and turns.come:
            slot = turns.pop()
            if slot in self.idle:
                self._serve(slot, now)
        if q and model not in self.unplaced and self._needed(model, now):
            lanes = self.lanes
            for slot in sorted(self.idle & self.holders[model]):
                lane = lanes[slot]
                self._enter_cycle(lane, now)
                if self._fits(lane, model, now, self._soonest(lane, self.waiting)):
                    self._serve(slot, now)                     # (else its decision stays: to wait)
                    if not q:
                        break
            if q:
                self.unplaced.add(model)
        turns = self._come(model, now)         # (as it is now: a serve may have lost a slot)
        if q and turns.timer is None and turns.at < INF:
            turns.timer = self.cluster.call_at(turns.at, lambda: self._turn(model))

    def _turn(self, model: str) -> None:
        self.turns[model].timer = None
        self.unplaced.discard(model)
        if self.queues[model]:
            self._offer(model, self.cluster.now())

    def _serve(self, slot: int, now: float) -> None:
        """The idle slot, in the current cycle, drops the requests that are late (_drop_late), then runs (1) the
        earliest turn whose time has come of a model with requests waiting, else (2) a batch in spare time,
        else stays idle, listed for each model whose turn has come on it, to serve its next requests at once."""
        lane = self.lanes[slot]
        cycle = self._enter_cycle(lane, now)
        waiting = self._drop_late(lane, now)
        begin = cycle * self.cycle
        come = []
        for k in lane.owed:                                    # (1) a turn whose time has come
            offset, model = lane.turns[k]
            if begin + offset > now:
                break
            if model in waiting:
                lane.owed.remove(k)
                if lane.next is not None:                      # only this model's next turn moves
                    at = next((begin + lane.turns[j][0] for j in lane.owed if lane.turns[j][1] == model),
                              (cycle + 1) * self.cycle + lane.first[model])   # (as _next_turns)
                    lane.next.remove((begin + offset, model))
                    insort(lane.next, (at, model))
                self._run(slot, model, self._size(lane, model, now))
                return
            come.append(model)
        if waiting:
            choice = self._spare(lane, waiting, now)           # (2)
            if choice is not None:
                self._run(slot, *choice)
                return
        for model in come:
            turns = self.turns[model]
            if turns.cycle == cycle:           # (a later cycle of the model's turns lists its own lanes)
                turns.list(slot)

    def _come(self, model: str, now: float) -> _Turns:
        """The model's turns with the ones whose time has come by `now` passed, their lanes listed, and its
        next turn (at, on which slot) found."""
        turns = self.turns[model]
        if now < turns.until and not self.stale:
            return turns                       # no turn has come since, in the same cycle
        if self.stale:
            for m in self._calendars():        # (they look at once, in an event of their own)
                self.turns[m].timer = self.cluster.call_at(now, lambda m=m: self._turn(m))
            turns = self.turns[model]
        cycle = self._cycle_at(now)
        if cycle != turns.cycle:
            turns.cycle, turns.passed, turns.come, turns.listed = cycle, 0, [], set()
        calendar, begin, i = turns.calendar, cycle * self.cycle, turns.passed
        while i < len(calendar) and begin + calendar[i][0] <= now:
            turns.list(calendar[i][1])
            i += 1
        turns.passed = i
        # The next turn: the first not passed in this cycle, else the first of the next (inf: no lane serves it).
        end = (cycle + 1) * self.cycle
        if not calendar:
            turns.at, turns.slot = INF, -1
        elif i < len(calendar):
            turns.at, turns.slot = begin + calendar[i][0], calendar[i][1]
        else:
            turns.at, turns.slot = end + calendar[0][0], calendar[0][1]
        turns.until = min(turns.at, end)
        return turns

    def _needed(self, model: str, now: float) -> bool:
        """Whether the model's requests need spare time: a run's worth waits, or the first would miss its
        deadline waiting for the model's next turn, at that turn's lane's sizes."""
        turns = self._come(model, now)
        if turns.at == INF:
            return True
        lane = self.lanes[turns.slot]
        q, (mean, items, _, _) = self.queues[model], lane.sizes[model]
        return len(q) >= items or turns.at + mean[self._size(lane, model, now)] > q[0].deadline

    def _spare(self, lane: _Lane, waiting: list[str], now: float) -> tuple[str, int] | None:
        """(model, batch) for the slot's spare time: the first, earliest deadline first among its waiting
        models, that needs it (_needed) and whose batch ends by the slot's next turn of another of them."""
        soonest = self._soonest(lane, waiting)
        queues = self.queues
        for model in sorted(waiting, key=lambda m: queues[m][0].deadline):
            n = self._fits(lane, model, now, soonest)
            if n and self._needed(model, now):
                return model, n
        return None

    def _soonest(self, lane: _Lane, waiting) -> list[tuple[float, str]]:
        """The slot's next two turns, (time, model), of models in `waiting` (then (inf, ''))."""
        if lane.next is None:
            lane.next = self._next_turns(lane)
        return [(at, m) for at, m in lane.next if m in waiting][:2] + [(INF, "")] * 2

    def _fits(self, lane: _Lane, model: str, now: float, soonest: list[tuple[float, str]]) -> int:
        """The batch the slot would run of the model now (_size) if it ends by the slot's next turn of another
        waiting model (`soonest`, from _soonest); else 0."""
        n = self._size(lane, model, now)
        room = soonest[0][0] if soonest[0][1] != model else soonest[1][0]
        return n if now + lane.sizes[model][0][n] <= room else 0

    def _enter_cycle(self, lane: _Lane, now: float) -> int:
        """The cycle holding `now`; a lane entering it owes every turn again."""
        cycle = self._cycle_at(now)
        if cycle != lane.cycle:
            lane.cycle, lane.owed, lane.next = cycle, list(range(len(lane.turns))), None
        return cycle

    def _cycle_at(self, t: float) -> int:
        """The index k of the cycle [k*T, (k+1)*T) holding t, exact in floating point: a timer set for a
        cycle's start finds itself in that cycle."""
        k = int(t // self.cycle)
        while (k + 1) * self.cycle <= t:
            k += 1
        while k > 0 and k * self.cycle > t:
            k -= 1
        return k

    def _next_turns(self, lane: _Lane) -> list[tuple[float, str]]:
        """(next turn, model) for each of the lane's models, in order: its first owed turn in this cycle,
        else its first in the next (inf: none). One pass over the turns for all of them, kept until the lane
        takes a turn or a cycle begins."""
        begin, following = lane.cycle * self.cycle, (lane.cycle + 1) * self.cycle
        turns = {m: following + lane.first[m] if m in lane.first else INF for m in lane.curves}
        for k in lane.owed:
            offset, model = lane.turns[k]
            if model in turns and begin + offset < turns[model]:
                turns[model] = begin + offset
        return sorted((at, m) for m, at in turns.items())

    def _size(self, lane: _Lane, model: str, now: float) -> int:
        """The batch to run now: up to the model's batch, fewer if the first request would miss its deadline."""
        q, (mean, _, batch, rising) = self.queues[model], lane.sizes[model]
        n = min(len(q), batch)
        deadline = q[0].deadline
        if n > 1 and now + mean[n] > deadline:
            if rising:    # the first that fits counting down from n, found by bisection (a backlog makes n large)
                return max(1, bisect_right(mean, deadline, 1, n, key=lambda x: now + x) - 1)
            n -= 1
            while n > 1 and now + mean[n] > deadline:
                n -= 1
        return n

    def _run(self, slot: int, model: str, n: int) -> None:
        q = self.queues[model]
        tasks = take(q, n)
        if not q:
            del self.waiting[model]
            self.unplaced.discard(model)
        self.cluster.dispatch(slot, model, tasks)
        self.idle.discard(slot)

    def _drop_late(self, lane: _Lane, now: float) -> list[str]:
        """Drop the requests of the slot's models that cannot make their deadline in a run of the planned
        size (or of all that wait, if fewer) started now; returns the slot's models with requests left."""
        left = []
        sizes = lane.sizes
        for model in list(self.waiting):
            size = sizes.get(model)
            if size is None:
                continue
            mean, items = size[0], size[1]
            q = self.queues[model]
            if now + mean[min(len(q), items)] > q[0].deadline:
                late = []
                while q and now + mean[min(len(q), items)] > q[0].deadline:
                    late.append(q.popleft())
                self.cluster.drop(late, "late")
                if not q:
                    del self.waiting[model]
                    self.unplaced.discard(model)
                    continue
            left.append(model)
        return left

    # -- planning ---------------------------------------------------------------------------------
    def _rectangles(self, rates: Mapping[str, float] | None) -> dict[str, Rectangle]:
        eps = self.config.knee_tolerance
        return {m: rectangle(self.shares, m, spec.slo, None if rates is None else rates[m], self.cycle, eps,
                             self.budget, self.fill) for m, spec in self.models.items()}

    def _close_window(self) -> None:
        rates = {m: n / self.config.rate_window_s for m, n in self.counts.items()}
        self.counts = dict.fromkeys(self.models, 0)
        threshold = self.config.resize_threshold
        if self.rates is None or any(abs(rates[m] - r) > threshold * r for m, r in self.rates.items()):
            self._plan(rates)
        self.rate_timer = self.cluster.call_at(self.cluster.now() + self.config.rate_window_s, self._close_window)

    def _plan(self, rates: dict[str, float]) -> None:
        self.rates = rates
        self.rects = self._rectangles(rates)
        levels = pack(self.rects.values(), self.curves, self.devices, self.cycle, self.budget)
        target = placement_of(levels, self.gpu_type, self.models)
        # Slots that already are a level of the plan take its turns now; the rest wait for their slots.
        self.planned = {}
        for spec, lv in zip(target.slots, levels):
            self.planned.setdefault(spec, []).append(lv)
        for slot in sorted(self.lanes):
            if spec_of(self.cluster.slots[slot]) in self.planned:
                self._open_lane(slot)
            else:
                self.lanes[slot].resize(self.rects)    # its turns stay; its runs are sized anew
        self.rollout.to(target)
        # The models with requests waiting look at their new turns at once, in the plan's own event: a timer
        # would fire only after the arrivals that queued up while the plan was made.
        now = self.cluster.now()
        for model in self._calendars() if self.stale else ():
            self._offer(model, now)

    def _open_lane(self, slot: int) -> None:
        """The slot's turns and the models it serves: its level's in the plan, or (a configured slot, or one
        the plan no longer has) the runs of every model it holds."""
        s = self.cluster.slots[slot]
        levels = self.planned.get(spec_of(s))
        if levels:
            level = levels.pop(0)
            curves = {m: self.cluster.curve(m, slot) for m in sorted(level.models)}
            turns = level.turns
        else:
            curves = {m: self.cluster.curve(m, slot) for m in sorted(s.models) if m in self.models}
            turns = lay_out([(k * self.cycle / r.runs, (k + 1) * self.cycle / r.runs,
                              curves[m].mean[min(r.items, curves[m].max_batch)], m)
                             for m in curves for r in [self.rects[m]] for k in range(r.runs)], self.cycle)
        old = self.lanes.get(slot)
        if old is not None:
            for m in old.curves:
                self.holders[m].discard(slot)
        for m in curves:
            self.holders[m].add(slot)
        lane = self.lanes[slot] = _Lane(turns, curves)
        lane.resize(self.rects)
        self.stale = True
        if s.outstanding == 0:
            self.idle.add(slot)

    def _calendars(self) -> list[str]:
        """Every model's turns on the lanes as they are now (they changed: a plan, a slot added or lost),
        counted again from the cycle's start; returns the models with requests waiting, which must look at
        their turns at once."""
        calendars: dict[str, list[tuple[float, int]]] = {m: [] for m in self.models}
        for slot, lane in self.lanes.items():
            for offset, model in lane.turns:
                calendars[model].append((offset, slot))
        for model, calendar in calendars.items():
            calendar.sort()
            old = self.turns[model]
            if old.timer is not None:
                old.timer.cancel()
            self.turns[model] = _Turns(calendar)
        self.unplaced.clear()
        self.stale = False
        return [m for m in self.models if self.queues[m]]


def _deadline(task: Task) -> float:
    return task.deadline
