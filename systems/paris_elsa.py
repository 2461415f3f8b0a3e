"""PARIS and ELSA: heterogeneous GPU partitions for batched queries (Kim et al., DAC 2022).

Queries arrive already batched: a query of b items runs as one batch of b
(this policy takes queries: a client's input of n rows is one query of n).
l(b, g) is the profiled latency of a batch of b on a partition of size g,
a MIG-sized share of 1 to 7 of a GPU's seven compute slices.

PARIS, the partitioning. It watches the first plan_after_s of queries (from
the first one on): per model, how many of each size arrive per second. Then:
1. Per size g and model, the saturation batch: the smallest b whose
   throughput b / l(b, g) reaches `saturation` of the best over the batches
   that meet the SLO on g (0 if none does).
2. Small batches to small partitions: a query of b goes to the smallest g
   whose saturation batch is at least b; above every one, to the largest.
3. The work of each size: its queries per second times l(b, g), summed over
   its batch range and the models (partition-seconds per second).
4. Instances of each size in proportion to its work: n_g = 7 * GPUs *
   work_g / sum(work_h * slices_h), so every size is equally loaded and the
   slices fill the cluster.
5. Legal MIG layouts: device by device, the layout (a maximal set of GPU
   instances that the MIG placement rules allow on one GPU, below) that
   covers most of the slices still wanted, the fewest unwanted slices on a
   tie. Every instance holds every model.
The cluster moves to it (cluster.reconfigure, systems._spatial.Rollout);
until then the configured slots serve. With make_before_break (the default)
the new partitions load beside the configured ones, which serve until the
new ones of their device have joined (but on real MIG instances, whose
slices must be freed first); without it, in two waves of devices.

ELSA, the dispatch. On arrival, for each slot holding the model, smallest
first, the predicted finish is when its queue drains (the runtime's
busy_until: the profiled times of what it holds) plus l(b, g); the query goes
to the smallest partition that finishes by the deadline, else to the slot
that finishes first -- or, with drop_late (the default), it is dropped
("late"): no partition can serve it in time. A query larger than every
partition's largest profiled batch is dropped ("too large").

Baselines of the paper, as options:
- partitioning=<partition>: every GPU cut into instances of that one size
  (mig-1g.10gb-emulated: seven 1g; mig-3g.40gb-emulated: two 3g; whole: one
  7g), from the start, instead of PARIS's set.
- dispatch=first_idle: one FIFO queue; a query goes to the first idle slot
  (lowest index) that holds its model, when one frees; with drop_late, a
  query that cannot finish by its deadline there is dropped ("late").

Sizes. MIG-sized partitions are emulated as MPS shares of as many SMs
(mig-<profile>-emulated, harness.gpu.partitions); the 7g instance is the
whole GPU. PARIS chooses among the sizes profiled for the cluster's GPU type
(read once when the policy is built); on an H200 those are 1g.10gb, 3g.40gb
and whole. The other sizes come from the profiler, measured beside busy
siblings:

    python -m harness.gpu.profiler --siblings auto \\
        --partition whole,mig-1g.10gb-emulated,mig-2g.20gb-emulated,mig-3g.40gb-emulated,mig-4g.40gb-emulated

MIG placement rules (nvidia-smi mig -lgipp on an A100/H100): an instance
occupies a run of the GPU's eight memory slices starting at an allowed
position -- 1g.10gb one slice at 0..6, 1g.20gb two at 0, 2, 4, 6, 2g.20gb
two at 0, 2, 4, 3g.40gb four at 0 or 4, 4g.40gb four at 0, 7g.80gb all
eight -- instances never overlap, and their compute slices add up to at
most seven: 19 ways to fill a GPU with 1g.10gb, 2g, 3g, 4g and 7g
instances, 12 different sets of sizes.

Where this module departs from the paper, and why:
- The batch-size distribution is measured online over plan_after_s, not
  given offline, and PARIS partitions once (its offline step); it serves
  several models, with the work of every model added up per size.
- Throughput "saturates" at a named fraction of the best (`saturation`),
  the paper's knee read as a threshold.
- The 7g instance is the whole GPU, not an emulated 7g.80gb share.
- drop_late (default on) drops a query no partition can finish in time,
  where the paper sends it to the earliest finisher (drop_late=false): a
  query that is late anyway would only delay the ones behind it, and past
  capacity every answer would come late (the harness's eager drops so too).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import Mapping, Sequence

from harness.core import Batch, Policy, Slot, SystemConfig, Task
from harness.errors import HarnessError
from harness.gpu.partitions import EMULATED_SUFFIX, WHOLE, parse_partition
from harness.placement import Placement, SlotSpec
from harness.profiles import LatencyCurve
from systems._spatial import Rollout, profiled_shares

MIG_KINDS = ("mig-emulated", "whole")
DISPATCHES = ("elsa", "first_idle")
SLICES = 7                            # compute slices of a GPU
# MIG profile -> (allowed first memory slices, memory slices, compute slices), of a GPU's eight memory slices.
MIG_PLACEMENTS = {
    "1g.10gb": ((0, 1, 2, 3, 4, 5, 6), 1, 1),
    "1g.20gb": ((0, 2, 4, 6), 2, 1),
    "2g.20gb": ((0, 2, 4), 2, 2),
    "3g.40gb": ((0, 4), 4, 3),
    "4g.40gb": ((0,), 4, 4),
    "7g.80gb": ((0,), 8, 7),
}
WHOLE_PROFILE = "7g.80gb"             # the whole GPU stands for the 7g instance
INF = float("inf")
DIRECT = 2                            # ELSA reads this many slots of a run directly, the rest in a tree (_Bounds)


@dataclass
class ParisElsaConfig(SystemConfig):
    name: str = "paris_elsa"
    partitioning: str = "paris"   # paris | a partition every GPU is cut into (mig-1g.10gb-emulated, whole, ...)
    dispatch: str = "elsa"        # elsa | first_idle
    saturation: float = 0.9       # throughput saturates at the smallest batch reaching this fraction of the best
    plan_after_s: float = 1.0     # PARIS partitions from the queries of this long after the first one
    drop_late: bool = True        # drop a query that cannot finish by its deadline; false: run it late (the paper)
    make_before_break: bool = True  # new partitions load beside the configured ones, which serve until they join


def profile_of(partition: str) -> str:
    """The MIG profile a partition stands for: 'mig-3g.40gb-emulated' -> '3g.40gb', 'whole' -> '7g.80gb'."""
    return WHOLE_PROFILE if partition == WHOLE else parse_partition(partition).mig_profile


def partition_of(profile: str) -> str:
    return WHOLE if profile == WHOLE_PROFILE else f"mig-{profile}{EMULATED_SUFFIX}"


def legal_layouts(profiles: Sequence[str]) -> list[tuple[str, ...]]:
    """The sets of instances of `profiles` that one GPU can hold (module doc) and that no other such set
    holds with more beside; each largest instance first, the layouts with most slices first."""
    spots = [(p, start) for p in profiles for start in MIG_PLACEMENTS[p][0]]
    found: set[tuple[str, ...]] = set()

    def grow(chosen: tuple[str, ...], memory: set[int], compute: int, after: int) -> None:
        if chosen:
            found.add(tuple(sorted(chosen, key=lambda p: (-_slices(p), p))))
        for i in range(after, len(spots)):
            p, start = spots[i]
            _, size, slices = MIG_PLACEMENTS[p]
            cells = set(range(start, start + size))
            if compute + slices <= SLICES and not cells & memory:
                grow(chosen + (p,), memory | cells, compute + slices, i + 1)

    grow((), set(), 0, 0)
    counts = {layout: Counter(layout) for layout in found}
    maximal = [a for a in found if not any(b != a and not counts[a] - counts[b] for b in found)]
    return sorted(maximal, key=lambda layout: (-sum(map(_slices, layout)), layout))


def _slices(profile: str) -> int:
    return MIG_PLACEMENTS[profile][2]


def saturation_batch(curve: LatencyCurve, slo: float, saturation: float) -> int:
    """The smallest batch whose throughput b / l(b) reaches `saturation` of the best over the batches within
    the SLO; 0 when not even a batch of 1 is."""
    fits = [b for b in range(1, curve.max_batch + 1) if curve.mean[b] <= slo]
    if not fits:
        return 0
    best = max(b / curve.mean[b] for b in fits)
    return next(b for b in fits if b / curve.mean[b] >= saturation * best)


def instances(sizes: Sequence[str], curves: Mapping[str, Mapping[str, LatencyCurve]],
              queries: Mapping[str, Mapping[int, float]], slo: Mapping[str, float], saturation: float,
              devices: int) -> dict[str, float]:
    """PARIS's steps 1-4 (module doc): the instances wanted per size (partitions, smallest first), from the
    queries per second of each model and size. Sizes without work are left out."""
    work = dict.fromkeys(sizes, 0.0)
    for model, by_size in queries.items():
        saturates = {g: saturation_batch(curves[g][model], slo[model], saturation) for g in sizes}
        for b, rate in by_size.items():
            g = next((g for g in sizes if b <= saturates[g]), sizes[-1])
            curve = curves[g][model]
            if b <= curve.max_batch:
                work[g] += rate * curve.mean[b]
    total = sum(w * _slices(profile_of(g)) for g, w in work.items())
    return {g: SLICES * devices * w / total for g, w in work.items() if w > 0} if total > 0 else {}


def layouts_for(wanted: Mapping[str, float], sizes: Sequence[str], devices: int) -> list[tuple[str, ...]]:
    """PARIS's step 5: per device, the legal layout covering most of the slices still wanted (module doc);
    partitions, largest first."""
    layouts = legal_layouts([profile_of(g) for g in sizes])
    left = {profile_of(g): n for g, n in wanted.items()}
    chosen = []
    for _ in range(devices):
        def score(layout):
            have = Counter(layout)
            covered = sum(min(n, left.get(p, 0.0)) * _slices(p) for p, n in have.items())
            spare = sum(max(0.0, n - left.get(p, 0.0)) * _slices(p) for p, n in have.items())
            return covered, -spare

        best = max(layouts, key=score)        # the first of equals: layouts are in a fixed order
        for p in best:
            left[p] = left.get(p, 0.0) - 1
        chosen.append(tuple(partition_of(p) for p in best))
    return chosen


class _Bounds:
    """A lower bound of each slot's busy_until, over the slots in order, in a tree of minima: ELSA's first
    slot in a range that finishes a query in time, in O(log n) steps instead of a scan over the slots.

    A predicted finish max(now, busy_until) + l only grows with busy_until, so a subtree whose least bound
    is too late holds no slot in time. A dispatch raises busy_until and leaves the bound: the slot the tree
    finds is checked against its busy_until, and if it is too late after all its bound is raised and the
    search goes on past it (a dispatch costs at most one such miss). A bound must never be above its
    busy_until: it is lowered when a batch ends (when busy_until may fall; else only a slot that joins,
    and then the tree is built anew)."""

    def __init__(self, slots: Sequence[Slot]):
        self.slots = slots
        self.size = (1 << (len(slots) - 1).bit_length()) if slots else 1     # leaves: a power of two
        self.low = [INF] * (2 * self.size)
        self.low[self.size:self.size + len(slots)] = [s.busy_until for s in slots]
        for node in range(self.size - 1, 0, -1):
            self.low[node] = min(self.low[2 * node], self.low[2 * node + 1])

    def lower(self, i: int, t: float) -> None:
        """Slot i's busy_until may have fallen to t."""
        if t < self.low[self.size + i]:
            self.set(i, t)

    def set(self, i: int, bound: float) -> None:
        low, node = self.low, i + self.size
        low[node] = bound
        node //= 2
        while node:
            least = min(low[2 * node], low[2 * node + 1])
            if low[node] == least:
                break                                  # and so are the ones above
            low[node] = least
            node //= 2

    def first(self, lo: int, hi: int, latency: float, deadline: float) -> int:
        """The first slot i in [lo, hi) that finishes a query of `latency` by `deadline`, or -1: whose
        busy_until + latency <= deadline (the caller knows that now + latency <= deadline, so this is
        max(now, busy_until) + latency <= deadline; compared inline, not through a function: a search reads
        a dozen nodes, and a loop that fell behind searches on every arrival)."""
        while lo < hi:
            i = self._first_bound(lo, hi, latency, deadline)
            if i < 0 or self.slots[i].busy_until + latency <= deadline:
                return i
            self.set(i, self.slots[i].busy_until)      # a dispatch since: too late after all
            lo = i + 1
        return -1

    def _first_bound(self, lo: int, hi: int, latency: float, deadline: float) -> int:
        """The first i in [lo, hi) whose bound is in time, or -1: the subtrees covering the range, left to
        right, then down the first one that has one."""
        low, lo, hi = self.low, lo + self.size, hi + self.size
        right = []
        while lo < hi:
            if lo & 1:
                if low[lo] + latency <= deadline:
                    return self._leftmost(lo, latency, deadline)
                lo += 1
            if hi & 1:
                hi -= 1
                right.append(hi)
            lo //= 2
            hi //= 2
        for node in reversed(right):
            if low[node] + latency <= deadline:
                return self._leftmost(node, latency, deadline)
        return -1

    def _leftmost(self, node: int, latency: float, deadline: float) -> int:
        low = self.low
        while node < self.size:
            node *= 2
            if low[node] + latency > deadline:
                node += 1
        return node - self.size


class ParisElsa(Policy):
    Config = ParisElsaConfig
    takes_queries = True

    def __init__(self, cluster, models, config: ParisElsaConfig):
        super().__init__(cluster, models, config)
        if config.dispatch not in DISPATCHES:
            raise HarnessError(f"paris_elsa: dispatch must be one of {', '.join(DISPATCHES)} "
                               f"(got {config.dispatch!r}); set system.dispatch=elsa")
        if not 0 < config.saturation <= 1:
            raise HarnessError(f"paris_elsa: saturation must be in (0, 1] (got {config.saturation}); "
                               "set system.saturation=<fraction of the best throughput, e.g. 0.9>")
        if not config.plan_after_s > 0:
            raise HarnessError(f"paris_elsa: plan_after_s must be > 0 (got {config.plan_after_s}); "
                               "set system.plan_after_s=<seconds>")
        shares = profiled_shares(cluster, models, MIG_KINDS, "paris_elsa")
        self.sizes = [p for p, _, _ in shares if p == WHOLE or profile_of(p) != WHOLE_PROFILE]   # 7g: the whole GPU
        self.curves = {p: c for p, _, c in shares}
        if config.partitioning != "paris" and config.partitioning not in self.sizes:
            raise HarnessError(f"paris_elsa: partitioning must be paris or a partition profiled for every model "
                               f"({', '.join(self.sizes)}); got {config.partitioning!r}: set system.partitioning")
        self.gpu_type = cluster.slots[0].gpu_type
        self.devices = cluster.placement.devices
        self.rollout = Rollout(cluster, overlap=config.make_before_break)
        self.watching = config.partitioning == "paris"   # PARIS counts the queries until it partitions
        self.seen = {m: Counter() for m in models}       # queries per model and size
        self.plan_timer = None
        self.queue: deque[Task] = deque()              # first_idle's FIFO
        self.order: list[int] = []                     # alive slots, smallest share first
        self.slots: list[Slot] = []                    # the same slots
        self.position: dict[int, int] = {}             # slot -> its index in `order`
        self.idle: set[int] = set()
        # Read on every arrival, so worked out when first needed after `order` changes (_reorder): per model,
        # the runs of slots in order that hold it alike (_runs); per (model, size), the least latency of a
        # query of that size over them (None: larger than every largest batch); the slots' bounds (_Bounds).
        self.runs: dict[str, list[tuple[int, int, list[float], int, list[Slot]]]] = {}
        self.fastest: dict[tuple[str, int], float | None] = {}
        self.bounds: _Bounds | None = None
        for s in cluster.slots:
            if s.alive:
                self._add(s.index)

    def start(self) -> None:
        if not self.watching:                            # a homogeneous baseline: its one size from the start
            self._move(layouts_for({self.config.partitioning: SLICES * len(self.devices)},
                                   [self.config.partitioning], len(self.devices)))

    # -- events -----------------------------------------------------------------------------------
    def on_arrival(self, task: Task) -> None:
        if self.watching:
            if self.plan_timer is None:
                self.plan_timer = self.cluster.call_at(self.cluster.now() + self.config.plan_after_s, self._partition)
            self.seen[task.model][task.size] += 1
        if self.config.dispatch == "elsa":
            self._elsa(task)
        else:
            self.queue.append(task)
            self._feed()

    def on_batch_done(self, batch: Batch) -> None:
        s, i = self.cluster.slots[batch.slot], self.position.get(batch.slot)
        if i is None:
            return
        if self.bounds is not None:
            self.bounds.lower(i, s.busy_until)         # live: the slot may have drained before its prediction
        if s.outstanding == 0:
            self.idle.add(batch.slot)
            self._feed()

    def on_slot_lost(self, slot: int) -> None:
        if slot in self.position:
            self.order.remove(slot)
            self._reorder()
        self.idle.discard(slot)

    def on_slot_added(self, slot: int) -> None:
        self._add(slot)
        self._feed()
        self.rollout.joined(slot)

    # -- dispatch ---------------------------------------------------------------------------------
    def _elsa(self, task: Task) -> None:
        cluster, now = self.cluster, self.cluster.now()
        model, size, deadline = task.model, task.size, task.deadline
        runs = self.runs.get(model)
        if runs is None:
            runs = self.runs[model] = self._runs(model)
        if self.config.drop_late:
            # A query that not even the fastest slot, idle, finishes in time is dropped at once: every slot's
            # predicted finish is at least that, so no slot would be found in time. Else the first slot in
            # order that finishes it in time takes it, found in the bounds' tree.
            key = (model, size)
            if key not in self.fastest:
                self.fastest[key] = min((run[2][size] for run in runs if size <= run[3]), default=None)
            fastest = self.fastest[key]
            if fastest is None:
                cluster.drop([task], "too large")
                return
            if now + fastest <= deadline:
                for lo, hi, mean, largest, head in runs:
                    if size > largest:
                        continue
                    latency = mean[size]
                    # The run's first slots directly (while the cluster keeps up most queries go to one of
                    # them), the rest through the tree.
                    for s in head:
                        if max(now, s.busy_until) + latency <= deadline:
                            slot = s.index
                            break
                    else:
                        slot = -1
                        if hi > lo + DIRECT and now + latency <= deadline:   # (else no slot of the run can)
                            if self.bounds is None:
                                self.bounds = _Bounds(self.slots)
                            i = self.bounds.first(lo + DIRECT, hi, latency, deadline)
                            slot = self.order[i] if i >= 0 else -1
                    if slot >= 0:
                        cluster.dispatch(slot, model, [task])
                        self.idle.discard(slot)
                        return
            cluster.drop([task], "late")
            return
        # The paper's rule: the first slot in order that finishes in time, else the one that finishes first.
        first = None                                   # (finish, slot) of the earliest finisher
        for lo, hi, mean, largest, _ in runs:
            if size > largest:
                continue
            for slot in self.order[lo:hi]:
                finish = max(now, cluster.slots[slot].busy_until) + mean[size]
                if finish <= deadline:
                    cluster.dispatch(slot, model, [task])
                    self.idle.discard(slot)
                    return
                if first is None or finish < first[0]:
                    first = (finish, slot)
        if first is None:
            cluster.drop([task], "too large")
        else:
            cluster.dispatch(first[1], model, [task])
            self.idle.discard(first[1])

    def _feed(self) -> None:
        """first_idle: queries from the head of the queue to the first idle slot holding their model."""
        cluster, now = self.cluster, self.cluster.now()
        q = self.queue
        while q and self.idle:
            task = q[0]
            slot = min((i for i in self.idle if task.model in cluster.slots[i].models), default=None)
            if slot is None:
                return
            q.popleft()
            curve = cluster.curve(task.model, slot)
            if task.size > curve.max_batch:
                cluster.drop([task], "too large")
            elif self.config.drop_late and now + curve.mean[task.size] > task.deadline:
                cluster.drop([task], "late")
            else:
                cluster.dispatch(slot, task.model, [task])
                self.idle.discard(slot)

    def _add(self, slot: int) -> None:
        self.order.append(slot)
        self.order.sort(key=lambda i: (self.cluster.slots[i].share, i))
        self._reorder()
        if self.cluster.slots[slot].outstanding == 0:
            self.idle.add(slot)

    def _runs(self, model: str) -> list[tuple[int, int, list[float], int, list[Slot]]]:
        """The slots in order that hold `model`, as runs [lo, hi) of indices in `order` whose slots hold it
        with the same latencies: (lo, hi, the curve's means, its largest batch, the run's first DIRECT
        slots). In a run a slot's predicted finish depends on its busy_until alone, so the tree can search
        it."""
        spans: list[list] = []
        for i, slot in enumerate(self.order):
            s = self.cluster.slots[slot]
            if model not in s.models:
                continue
            curve = self.cluster.curve(model, slot)
            if spans and spans[-1][1] == i and spans[-1][3] == curve.max_batch and spans[-1][2] == curve.mean:
                spans[-1][1] = i + 1
            else:
                spans.append([i, i + 1, curve.mean, curve.max_batch])
        return [(lo, hi, mean, largest, self.slots[lo:min(hi, lo + DIRECT)]) for lo, hi, mean, largest in spans]

    def _reorder(self) -> None:
        self.slots = [self.cluster.slots[slot] for slot in self.order]
        self.position = {slot: i for i, slot in enumerate(self.order)}
        self.runs.clear()
        self.fastest.clear()
        self.bounds = None

    # -- partitioning -----------------------------------------------------------------------------
    def _partition(self) -> None:
        window = self.config.plan_after_s
        queries = {m: {b: n / window for b, n in sizes.items()} for m, sizes in self.seen.items()}
        self.watching = False
        slo = {m: spec.slo for m, spec in self.models.items()}
        wanted = instances(self.sizes, self.curves, queries, slo, self.config.saturation, len(self.devices))
        if wanted:
            self._move(layouts_for(wanted, self.sizes, len(self.devices)))

    def _move(self, layouts: Sequence[Sequence[str]]) -> None:
        held = frozenset(self.models)
        self.rollout.to(Placement(tuple(SlotSpec(self.gpu_type, p, d, held)
                                        for d, layout in zip(self.devices, layouts) for p in layout)))
