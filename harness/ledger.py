"""The ledger: every outcome of a run, decided in one place.

Requests and tasks resolved (ok, dropped, rejected, timeout, error), batches
opened and closed (ok, late, error, preempted), slots that join, leave or
are lost, and reconfigurations: every runtime -- the discrete-event sim, the
live scheduler, the Triton backend -- changes this state only through the
methods below, so the rules are the same wherever a policy runs and sim and
live results compare like for like (h11's single state machine).

The runtime keeps time and runs batches; the ledger keeps the books:

    task = ledger.arrive(id, model, t, deadline)          # a plain request: its own task
    tasks = ledger.arrive_app(id, app, t, copies)        # an app request: its root tasks
    batch, curves = ledger.open_batch(slot, model, tasks, t, latest_start)   # checks, then records
    released = ledger.complete(batch, t_start, t_end)    # tasks ok; an app's next tasks, if any
    ledger.discard(batch, t) / ledger.fail(batch, t, reason) / ledger.preempt(batch, t)
    ledger.drop(tasks, t, reason, status)
    ledger.lose(slot, t, reason) / ledger.join(slot, t)
    reconfiguration = ledger.plan(placement, t, overlap) # who leaves (now) and who must start
    gone = ledger.replaced(device, t)                    # overlap: the old slots leave once the new joined
    ledger.finish(t, reason)                             # what is still pending becomes a timeout

`on_resolved(item)` is called once per request as it resolves (a plain task
or an app request): the live runtime wakes the waiting client there.
The policy is never called from here: the runtime tells it what happened.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from harness.apps import App
from harness.gpu.partitions import parse_partition
from harness.core import DROPPED, ERROR, LATE, OK, PREEMPTED, TIMEOUT, Batch, QueryTask, Request, Slot, Task
from harness.placement import Placement, SlotSpec
from harness.profiles import LatencyCurve

# Slot events, in the order a slot's life goes.
STARTING, JOINED, LEFT, LOST, CANCELLED = "starting", "joined", "left", "lost", "cancelled"


@dataclass
class Reconfiguration:
    t_request: float
    before: str                          # Placement.describe() of what was provisioned
    after: str
    left: list[int]                      # slots that left: at t_request, or (overlap) once replaced
    joining: list[int]                   # slots that must start
    t_done: float = float("nan")         # when the last of them joined (nan: never, or none to start)
    cost_s: float = field(init=False, default=float("nan"))


def spec_of(slot: Slot) -> SlotSpec:
    return SlotSpec(slot.gpu_type, slot.partition, slot.device, slot.models)


def _on_mig(slot: Slot) -> bool:
    """A real MIG instance: its slice of the GPU is free for another only once it is destroyed."""
    return parse_partition(slot.partition).kind == "mig"


class Ledger:
    def __init__(self, slots: Sequence[Slot], curves: Sequence[Mapping[str, LatencyCurve]],
                 curves_of: Callable[[SlotSpec], Mapping[str, LatencyCurve]] | None = None,
                 on_resolved: Callable[[Task | Request], None] | None = None, t0: float = 0.0):
        self.slots: list[Slot] = list(slots)
        self.curves: list[Mapping[str, LatencyCurve]] = list(curves)
        self.curves_of = curves_of           # for slots a reconfiguration creates
        self.on_resolved = on_resolved
        self.items: list[Task | Request] = []    # what clients wait for, in arrival order
        self.graph_tasks: list[Task] = []        # the tasks of app requests, in release order
        self.batches: list[Batch] = []
        self.inflight: list[dict[int, Batch]] = [{} for _ in self.slots]
        self.pending = 0                         # tasks arrived and not yet resolved
        self.slot_events: list[tuple[float, int, str, str]] = []   # (t, slot, event, reason)
        self.reconfigurations: list[Reconfiguration] = []
        self.joining: set[int] = set()
        # A slot a reconfiguration with overlap replaces keeps serving, alive, until no new slot of its device
        # is still starting (replaced()); its `leaving` flag says so, to the policy too, and the placement no
        # longer holds it.
        self.has_apps = False
        self.has_sizes = False                   # some task is a query of several items
        self.staged: dict[Task, tuple[int, int]] = {}   # a task part-way through: (slot, stage) it last ran
        self.origins: dict = {}                  # request -> who waits for it (live: an ingress's HTTP call)
        self.on_device: dict[int, list[Slot]] = defaultdict(list)   # every slot ever made, by device
        for s in self.slots:
            self.on_device[s.device].append(s)
        for s in self.slots:
            if s.alive:
                self.slot_events.append((t0, s.index, STARTING, "initial placement"))
                self.slot_events.append((t0, s.index, JOINED, "initial placement"))

    # -- arrivals --------------------------------------------------------------------------------
    def arrive(self, id: int, model: str, t: float, deadline: float, origin=None, size: int = 1) -> Task:
        """A plain request: its own task (a QueryTask of `size` items when above 1). `origin` (who waits for
        it) is kept in `origins` until it resolves."""
        if size != 1:
            self.has_sizes = True
            task = QueryTask(id, model, t, deadline, size)
        else:
            task = Task(id, model, t, deadline)
        self.items.append(task)
        self.pending += 1
        if origin is not None:
            self.origins[task] = origin
        return task

    def arrive_app(self, id: int, app: App, t: float, copies: Sequence[int],
                   origin=None) -> list[Task]:
        """An app request: its root tasks, to hand to the policy (none if every root has zero copies)."""
        self.has_apps = True
        request = Request(id, app.name, t, t + app.slo, app, copies)
        self.items.append(request)
        if origin is not None:
            self.origins[request] = origin
        tasks = app.start(request, t)
        self.graph_tasks.extend(tasks)
        self.pending += len(tasks)
        if request.open_nodes == 0:
            self._resolve(request, OK, "", t)
        return tasks

    # -- batches -----------------------------------------------------------------------------------
    def open_batch(self, slot: int, model: str, tasks: list[Task], t: float, latest_start: float | None,
                   stage: int | None = None, through: int | None = None) -> tuple[Batch, tuple[LatencyCurve, ...]]:
        """Check a dispatch (a failure is a bug in the policy: ValueError, nothing recorded), then record it.
        Returns the batch and the curves it runs by, in order: the model's, or each stage's it runs."""
        s = self.slots[slot]
        if not tasks:
            raise ValueError("dispatch of an empty batch")
        if model not in s.models:
            raise ValueError(f"slot {slot} does not hold model {model!r}")
        if not s.alive:
            raise ValueError(f"dispatch to slot {slot}, which is not in the cluster (it left, was lost or has "
                             "not joined yet)")
        curve = self.curves[slot][model]
        curves = (curve,)
        final = True
        if stage is not None:
            n = len(curve.stages)
            last = stage if through is None else through
            if not 0 <= stage <= last < n:
                raise ValueError(f"{model} has {n} profiled stages on slot {slot}; no stages {stage}..{last}")
            final = last == n - 1
            curves = curve.stages[stage:last + 1]
            curve = min(curves, key=lambda c: len(c.mean))   # the smallest profiled maximum bounds the batch
            for task in tasks:              # a task's activations stay on the slot that ran its last stage
                held = self.staged.get(task)
                if (held is None) != (stage == 0) or (held is not None and held != (slot, stage - 1)):
                    raise ValueError(f"stage {stage} of {task!r} on slot {slot}, but its last stage ran "
                                     f"{'nowhere' if held is None else f'as stage {held[1]} on slot {held[0]}'}")
        elif through is not None:
            raise ValueError("dispatch with `through` but no `stage`: a chain runs stages of a model")
        size = sum(task.size for task in tasks) if self.has_sizes else len(tasks)
        if size >= len(curve.mean):       # (curve.max_batch, without its property call: once per batch)
            raise ValueError(f"batch of {size} exceeds the profiled maximum {curve.max_batch} for {model}")
        for task in tasks:
            if task.status is not None:
                raise ValueError(f"dispatch of {task!r}, which is already resolved ({task.status})")
        batch = Batch(len(self.batches), slot, model, tasks, t, latest_start, size, stage, final, through)
        self.batches.append(batch)
        s.outstanding += 1
        self.inflight[slot][batch.id] = batch
        return batch, curves

    def cut(self, batch: Batch, last: int) -> None:
        """A chain of stages stops after stage `last` (it was told to stop at a boundary)."""
        if not batch.stage <= last <= batch.through:
            raise ValueError(f"batch {batch.id} runs stages {batch.stage}..{batch.through}; it cannot stop "
                             f"after stage {last}")
        if last < batch.through:
            batch.through = last
            batch.final = False

    def open_external_batch(self, slot: int, model: str, size: int, t: float) -> Batch:
        """A batch formed outside any policy (tritonserver's own batcher): no task objects, only its size."""
        s = self.slots[slot]
        if model not in s.models or not s.alive:
            raise ValueError(f"slot {slot} cannot run {model!r} (it does not hold it, or it left)")
        batch = Batch(len(self.batches), slot, model, [], t, None, size)
        self.batches.append(batch)
        s.outstanding += 1
        self.inflight[slot][batch.id] = batch
        return batch

    def complete(self, batch: Batch, t_start: float, t_end: float) -> list[Task] | None:
        """The batch ran: its tasks are ok. Returns the app tasks this releases (None in a run of plain requests)."""
        batch.status, batch.t_start, batch.t_end = OK, t_start, t_end
        slot, bid, tasks = batch.slot, batch.id, batch.tasks
        self.slots[slot].outstanding -= 1            # (_close, inline: once per batch)
        del self.inflight[slot][bid]
        if not batch.final:
            for task in tasks:            # a stage before the last: its tasks go on, still pending
                self.staged[task] = (slot, batch.through)
            return None
        if batch.stage is not None:
            for task in tasks:
                self.staged.pop(task, None)
        for task in tasks:
            task.status = OK
            task.t_done = t_end
            task.batch_id = bid
        self.pending -= len(tasks)
        if self.has_apps:
            return self._advance(tasks, t_end)
        if self.on_resolved is not None:
            for task in tasks:
                self.on_resolved(task)
        return None

    def discard(self, batch: Batch, t: float) -> None:
        """The slot could not start the batch by its latest start: its tasks are dropped ("late")."""
        batch.status, batch.t_start, batch.t_end = LATE, t, t
        self._close(batch)
        self._tag(batch)
        self.drop(batch.tasks, t, LATE)

    def fail(self, batch: Batch, t: float, reason: str, exec_time: float = 0.0) -> None:
        """The batch failed (the executor raised, or its slot was lost): its tasks are errors."""
        batch.status, batch.t_end, batch.t_start = ERROR, t, t - exec_time
        self._close(batch)
        self._tag(batch)
        self.drop(batch.tasks, t, reason, ERROR)

    def preempt(self, batch: Batch, t: float) -> list[Task]:
        """The batch was stopped early: its tasks go back to the policy, still pending."""
        batch.status, batch.t_end = PREEMPTED, t
        self._close(batch)
        return list(batch.tasks)

    def _close(self, batch: Batch) -> None:
        self.slots[batch.slot].outstanding -= 1
        del self.inflight[batch.slot][batch.id]

    @staticmethod
    def _tag(batch: Batch) -> None:
        for task in batch.tasks:
            task.batch_id = batch.id

    # -- resolving -----------------------------------------------------------------------------------
    def drop(self, tasks: Sequence[Task], t: float, reason: str, status: str = DROPPED) -> None:
        """Resolve `tasks` unserved; an app request fails with its first task that does."""
        for task in tasks:
            task.status = status
            task.reason = reason
            task.t_done = t
        self.pending -= len(tasks)
        if self.staged:
            for task in tasks:
                self.staged.pop(task, None)
        if self.has_apps:
            for task in tasks:
                request = task.request
                if request is None:
                    if self.on_resolved is not None:
                        self.on_resolved(task)
                elif request.status is None:
                    self._resolve(request, status, reason, t)
        elif self.on_resolved is not None:
            for task in tasks:
                self.on_resolved(task)

    def _advance(self, tasks: list[Task], t: float) -> list[Task] | None:
        released: list[Task] = []
        for task in tasks:
            request = task.request
            if request is None:
                if self.on_resolved is not None:
                    self.on_resolved(task)
                continue
            more = request.graph.finished(task, t)
            if more:
                self.graph_tasks.extend(more)
                self.pending += len(more)
                released.extend(more)
            if request.open_nodes == 0 and request.status is None:
                self._resolve(request, OK, "", t)
        return released

    def _resolve(self, request: Request | Task, status: str, reason: str, t: float) -> None:
        request.status, request.reason = status, reason
        if status != OK or request.t_done != request.t_done:
            request.t_done = t
        if self.on_resolved is not None:
            self.on_resolved(request)

    def finish(self, t: float, reason: str) -> None:
        """End of run: every task and request still pending is a timeout (t_done unknown)."""
        nan = float("nan")
        for group in (self.items, self.graph_tasks):
            for item in group:
                if item.status is None:
                    item.status, item.reason, item.t_done = TIMEOUT, reason, nan
                    if self.on_resolved is not None and (group is self.items):
                        self.on_resolved(item)
        self.pending = 0

    # -- slots --------------------------------------------------------------------------------------
    @property
    def placement(self) -> Placement:
        """What is provisioned: slots alive (but those being replaced) or starting, by rank."""
        return Placement(tuple(spec_of(s) for s in self.slots
                               if (s.alive and not s.leaving) or s.index in self.joining))

    def lose(self, slot: int, t: float, reason: str) -> bool:
        """The slot's worker died or hung: it leaves at once and what it held fails. False if it was gone."""
        s = self.slots[slot]
        if not s.alive:
            return False
        s.alive = s.leaving = False          # (one being replaced is gone already: it has nothing left to hand over)
        self.slot_events.append((t, slot, LOST, reason))
        for batch in list(self.inflight[slot].values()):
            self.fail(batch, t, f"slot {slot} lost: {reason}")
        s.outstanding = 0
        s.busy_until = t
        return True

    def plan(self, placement: Placement, t: float, overlap: bool = False) -> Reconfiguration:
        """Start moving to `placement`: slots not in it leave now, the ones new in it are created (or
        revived, same spec, same index) as starting. The runtime starts those and calls join().

        With `overlap` (make before break), a leaving slot on a device where new slots start keeps serving
        until none of them is still starting (replaced()), but on a real MIG instance, whose slice the new
        instances need first."""
        before = self.placement.describe()
        provisioned = [s for s in self.slots if (s.alive and not s.leaving) or s.index in self.joining]
        replacing = [s for s in self.slots if s.leaving]
        # Each wanted spec takes the first provisioned slot of that spec not yet kept, else one being replaced
        # (it stays), else the first spare (stopped) slot of it, else a new slot: queues per spec, in slot
        # order, keep that linear in slots.
        provided: dict = defaultdict(deque)
        for s in provisioned:
            provided[spec_of(s)].append(s.index)
        for s in replacing:
            provided[spec_of(s)].append(s.index)
        spares: dict = defaultdict(deque)
        for s in self.slots:
            if not s.alive and s.index not in self.joining:
                spares[spec_of(s)].append(s.index)
        keep: set[int] = set()
        starting: list[int] = []
        for spec in placement.slots:
            if provided[spec]:
                keep.add(provided[spec].popleft())
            elif spares[spec]:
                starting.append(spares[spec].popleft())
            else:
                starting.append(self._new_slot(spec))
        for s in replacing:
            s.leaving = s.index not in keep
        for i in starting:
            self.joining.add(i)
            self.slot_events.append((t, i, STARTING, "reconfigured"))
        starts_on = {self.slots[i].device for i in self.joining}
        leaving = []
        for s in provisioned:
            i = s.index
            if i in keep:
                continue
            if i in self.joining:
                self.joining.discard(i)
                self.slot_events.append((t, i, CANCELLED, "reconfigured before it joined"))
                leaving.append(i)
            elif overlap and s.device in starts_on and not _on_mig(s):
                s.leaving = True
            else:
                leaving.append(i)
        starts_on = {self.slots[i].device for i in self.joining}
        for s in self.slots:                  # nothing starts on its device any more: nothing to wait for
            if s.leaving and s.device not in starts_on:
                s.leaving = False
                leaving.append(s.index)
        for i in leaving:
            if self.slots[i].alive:
                self.slots[i].alive = False
                self.slot_events.append((t, i, LEFT, "reconfigured"))
        rec = Reconfiguration(t, before, placement.describe(), leaving, starting)
        if not starting:
            rec.t_done, rec.cost_s = t, 0.0
        self.reconfigurations.append(rec)
        return rec

    def replaced(self, device: int, t: float) -> list[int]:
        """The slots an overlapping reconfiguration replaces on `device`, once none of the device's new slots
        is still starting: they leave now (what they hold runs to its end). [] while one is starting."""
        if any(self.slots[i].device == device for i in self.joining):
            return []
        gone = sorted(s.index for s in self.on_device[device] if s.leaving)
        for i in gone:
            self.slots[i].alive = self.slots[i].leaving = False
            self.slot_events.append((t, i, LEFT, "replaced"))
            for rec in reversed(self.reconfigurations):
                if any(self.slots[j].device == device for j in rec.joining):
                    rec.left.append(i)
                    break
        return gone

    def join(self, slot: int, t: float) -> bool:
        """A starting slot is ready: it joins, idle. False if a later reconfiguration cancelled it."""
        if slot not in self.joining:
            return False
        self.joining.discard(slot)
        s = self.slots[slot]
        s.alive, s.busy_until, s.outstanding = True, t, 0
        self.slot_events.append((t, slot, JOINED, ""))
        for rec in self.reconfigurations:
            if rec.t_done != rec.t_done and slot in rec.joining and not self.joining.intersection(rec.joining):
                rec.t_done, rec.cost_s = t, t - rec.t_request
        return True

    def beside(self, slot: int, t: float, until: Mapping[int, float] | None = None,
               batch: Mapping[int, int] | None = None) -> tuple[float, float | None]:
        """What works beside the slot at `t`: the fraction of the rest of its device at work (the shares of
        the other slots there with work until after `t`, one leaving still drains, over what the slot leaves
        of the device; 0 on a slot that holds all of it), and the share-weighted mean batch they run (None
        where unknown or none works). What an emulated share's time depends on (LatencyCurve.beside).
        `until`: until when each slot runs, and `batch`: the size each runs at, where the runtime knows them
        (the sim); else each slot's busy_until, and no batch."""
        s = self.slots[slot]
        rest = 1.0 - s.share
        if rest <= 1e-9:
            return 0.0, None
        working = [o for o in self.on_device[s.device]
                   if o is not s and (o.busy_until if until is None else until[o.index]) > t]
        busy = sum(o.share for o in working)
        if busy <= 0:
            return 0.0, None
        sizes = None if batch is None else sum(o.share * batch.get(o.index, 0) for o in working) / busy
        return min(1.0, busy / rest), sizes

    def _new_slot(self, spec: SlotSpec) -> int:
        if self.curves_of is None:
            raise ValueError("this runtime cannot create slots (no profile lookup given)")
        i = len(self.slots)
        template = self.slots[0] if self.slots else None
        self.slots.append(Slot(i, f"{spec.gpu_type}-{spec.partition}-d{spec.device}-{i}", spec.gpu_type,
                               spec.partition, spec.models, spec.device, spec.share,
                               emulated=template.emulated if template else True, alive=False))
        self.on_device[spec.device].append(self.slots[-1])
        self.curves.append(self.curves_of(spec))
        self.inflight.append({})
        return i
