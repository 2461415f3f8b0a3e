"""LazyBatching (Choi, Kim and Rhu, HPCA'21): batching at the granularity of model stages, SLA-aware.

A model served in stages (its profile has a latency curve per stage; the sleep model has them with
cluster.sleep.stages) runs one stage per batch. On a slot, a model's requests in flight form groups,
each at the stage it runs next; requests at the same stage are one group. At every stage boundary
(a stage batch ended, or the slot is idle), for the model that runs next (one model: that one):

1. Its arrivals join, as a group at stage 0, in arrival order, each while
   - every request in flight on the slot keeps slack = deadline - now - remaining work >= 0 with it
     (a request already late holds arrivals back until it is done), and
   - the model's requests in flight on the slot fit one batch (`max_batch`), so every merge fits.
   At an empty slot whose oldest arrival can no longer make its deadline even alone, arrivals join
   up to a full batch without the slack check: a backlog gets back under its deadlines soonest in
   full batches (the prototype's "fully batch").
2. The least advanced group of the model runs its next stages; when it reaches the stage of the
   group ahead of it, the two are one group (one batch) from there on.

The stages a group runs up to the group ahead (or to the end) go to the slot as one chain
(Cluster.dispatch with `through`): the slot runs them back to back, with no round trip to the policy
between stages (on a real GPU that round trip costs about as much as a small stage). A boundary inside
a chain is a decision point only when an arrival could join there: an arrival that finds every slot
holding its model busy stops the first chain at whose next boundary rule 1 would admit it
(Cluster.stop_at_boundary), judged with the running group at the stage it reaches there. A chain that
would not admit it runs on, as it would stage by stage: while it runs, the slack of its requests does
not change (time passes and the work left shrinks by as much), so no boundary before its end would.

Remaining work is what rule 2 runs before a request finishes if nothing else joins: the least
advanced group runs up to the group ahead, they merge, and so on, so all of a model's requests on
a slot finish together, after sum over stages k of l_k(requests that have reached stage k) (the
profile's means). A new arrival therefore preempts the groups in flight at a stage boundary, and
only when every request in flight still makes its deadline with it. The serving path's time counts
too, as Symphony and eager plan it (systems/_path.py): `d_ctrl_us` for each chain the slot is sent,
and `d_data_us` per request plus `response_allowance_us` after the last stage, for the answers to
reach their clients. Without it (all three 0, the prototype's in-process runtime) the rule fills
the slack to the deadline's edge, and on a real H200 a fifth of the requests missed their SLO at a
quarter of the GPU's capacity.

A group stays on its slot: its activations live there. Several slots: an arrival goes at once to an
idle slot that holds its model (the lowest rank, so use stays load-proportional); with none idle it
waits for the first stage boundary, on any slot holding its model, that admits it. Several models
on a slot: the model with the earliest deadline, in flight there or waiting, runs next (if rule 1
lets none of its arrivals join, the next model does); only that model's arrivals join, so the
others' stay free for whichever slot runs them first. Groups of different models never merge, and
remaining work counts the models that run before (earliest deadline first).
A model profiled without stages runs as one stage, the whole model: batching at each boundary with
the same admission rule.

Where it departs from the authors' prototype (2019: one model on one GPU, a node is one layer),
and why:
- The prototype admits an arrival while its OLDEST request in flight meets its deadline, with a
  fixed estimate of one whole inference (10 ms for ResNet). Here every request in flight is
  checked, with the work left from the stage profiles, counting the work the arrival adds: the
  rule as the paper states it, with the estimates the harness has.
- The prototype batches fully once the first request into its empty stack has waited past its
  deadline, and then takes the next requests of its trace before they arrive; here it is once
  that request cannot make its deadline even alone, and only requests that have arrived join.
- A node is a stage of a few layers (ResNet-50: stem, four layers, head), not a layer: on a GPU
  each stage is a CUDA graph per batch size, and a launch per layer would cost more than it saves.
- Several slots and models, as above; the prototype has one of each.
- Boundaries are decided when an arrival comes or a chain ends, as above, not at every node: the same
  decisions where the profile's means hold, without a round trip to the scheduler per stage.
As in the prototype, in-flight requests per slot are capped at one batch, and nothing is dropped:
a late request still runs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from harness.core import ERROR, OK, Batch, Policy, Task
from harness.errors import HarnessError
from systems._path import ServingPath, ServingPathConfig
from systems._pool import Pools

INF = float("inf")
EPS = 1e-9      # finish times are sums of profile means: a deadline met exactly counts as met


@dataclass
class LazyBatchingConfig(ServingPathConfig):   # the serving path's time, which the slack rule counts
    name: str = "lazybatching"
    max_batch: int = 0     # a model's requests in flight on one slot; 0: the largest profiled batch within its SLO


class _Stack:
    """A model on one slot: how it runs there, and its requests in flight there (its groups, by the stage each
    runs next). One per slot and model it holds, kept while the slot is up, in flight or not."""

    __slots__ = ("model", "stages", "staged", "cap", "alone", "groups", "size", "deadline")

    def __init__(self, model: str, stages: tuple, staged: bool, cap: int):
        self.model = model
        self.stages = stages                 # latency curve per stage
        self.staged = staged                 # False: the model runs whole (no stage profile)
        self.cap = cap                       # most requests in flight
        self.alone = sum(c.mean[1] for c in stages)   # every stage at batch 1
        self.groups: dict[int, list[Task]] = {}
        self.size = 0                        # requests in flight, waiting in a group or running
        self.deadline = float("inf")         # the earliest of theirs: it decides which model runs


class LazyBatching(Policy):
    Config = LazyBatchingConfig

    def __init__(self, cluster, models, config: LazyBatchingConfig):
        super().__init__(cluster, models, config)
        if config.max_batch < 0:
            raise HarnessError(f"lazybatching: max_batch must be >= 0 (got {config.max_batch}); fix system.max_batch")
        self.path = ServingPath.of(config)
        self.pools = Pools(cluster.slots)
        self.queues: dict[str, deque[Task]] = {m: deque() for m in models}
        # The models whose queue is not empty: a stage boundary looks at these and at the slot's stacks
        # instead of at every model the slot holds.
        self.waiting: set[str] = set()
        self.held: dict[int, dict[str, _Stack]] = {}       # slot -> a stack per model it holds, by name
        self.stacks: dict[int, dict[str, _Stack]] = {}     # slot -> those with requests in flight there
        self.running: dict[int, tuple[_Stack, list[Task], Batch]] = {}   # slot -> (stack, tasks, its batch)
        self.busy: set[int] = set()
        self.stopping: set[int] = set()      # slots whose chain was told to stop at its next boundary
        self.chains = False                  # whether any slot runs a model in stages (else no chain can stop)
        for s in cluster.slots:
            if s.alive:
                self._set_up(s.index)

    def _set_up(self, slot: int) -> None:
        self.held[slot] = {}
        self.stacks[slot] = {}
        for m in sorted(self.cluster.slots[slot].models & self.models.keys()):
            curve = self.cluster.curve(m, slot)
            stages = curve.stages or (curve,)
            self.chains = self.chains or bool(curve.stages)
            largest = min(c.max_batch for c in stages)
            if self.config.max_batch > largest:
                raise HarnessError(f"lazybatching: max_batch {self.config.max_batch} exceeds the profiled maximum "
                                   f"{largest} of {m}; lower system.max_batch")
            fit = self.config.max_batch or curve.largest_batch_within(self.models[m].slo)
            self.held[slot][m] = _Stack(m, stages, bool(curve.stages), max(1, min(fit, largest)))

    # -- events -----------------------------------------------------------------
    def on_arrival(self, task: Task) -> None:
        model = task.model
        self.queues[model].append(task)
        self.waiting.add(model)
        now = self.cluster.now()
        pool = self.pools.of(model)
        rank, free = pool.peek(now)
        if free <= now:                      # an idle slot: its stage boundary is now
            self._serve(rank, now)
        elif self.chains and self.queues[model][0] is task:   # (behind one held back, it is held back too)
            self._stop_a_chain_for(task, pool.ranks, now)

    def on_batch_done(self, batch: Batch) -> None:
        slot = batch.slot
        stack, tasks, _ = self.running.pop(slot)
        self.stopping.discard(slot)
        reached = batch.through if stack.staged else 0
        if batch.status == OK and reached + 1 < len(stack.stages):
            # The group that ran goes first in a merge: on a GPU its rows are already where the next
            # stage reads them, so only the rows of the group that waited are copied.
            stack.groups[reached + 1] = tasks + stack.groups.get(reached + 1, [])
        else:                                # done, or failed (the ledger resolved them): they leave
            stack.size -= len(tasks)
            if stack.size == 0:              # none left in flight (so no group either)
                del self.stacks[slot][stack.model]
                stack.deadline = INF
            else:
                stack.deadline = min(t.deadline for group in stack.groups.values() for t in group)
        self._serve(slot, self.cluster.now())

    def on_slot_lost(self, slot: int) -> None:
        self.pools.remove(slot)
        self.busy.discard(slot)
        self.stopping.discard(slot)
        self.running.pop(slot, None)         # lost: its batch failed; removed: it runs to its end unheard
        stranded = [t for stack in self.stacks.pop(slot, {}).values() for group in stack.groups.values()
                    for t in group]
        if stranded:                         # their activations are gone with the slot
            self.cluster.drop(stranded, f"slot {slot} left holding their activations", ERROR)

    def on_slot_added(self, slot: int) -> None:
        self._set_up(slot)
        now = self.cluster.now()
        self.pools.add(slot, now)
        self._serve(slot, now)

    # -- a stage boundary on one slot --------------------------------------------------
    def _serve(self, slot: int, now: float) -> None:
        """The slot's next stage: the most urgent model, in flight here or waiting, takes its arrivals and
        runs its least advanced group. Only the model about to run takes arrivals, so the others' stay
        free for whichever slot runs them first."""
        stacks = self.stacks[slot]
        # Nothing in flight here and nothing waiting anywhere (the usual end of a batch): nothing to order.
        order = self._by_deadline(slot) if stacks or self.waiting else ()
        for _, m in order:
            self._admit(slot, m, now)
            stack = stacks.get(m)
            if stack is None:                # joining would make a request in flight here late
                continue
            stage = min(stack.groups)
            tasks = stack.groups.pop(stage)
            if stack.staged:                 # on, stage after stage, up to the group ahead (then they merge)
                through = min(stack.groups, default=len(stack.stages)) - 1
                batch = self.cluster.dispatch(slot, m, tasks, stage=stage, through=through)
            else:
                batch = self.cluster.dispatch(slot, m, tasks)
            self.running[slot] = (stack, tasks, batch)
            if slot not in self.busy:
                self.busy.add(slot)
                self.pools.book(slot, INF)
            return
        if slot in self.busy:
            self.busy.discard(slot)
            self.pools.release(slot, now)

    def _stop_a_chain_for(self, task: Task, ranks: list[int], now: float) -> None:
        """Every slot holding `task`'s model is busy: stop the chain of stages on the first of them at whose
        next boundary rule 1 would let it join, so that it joins there. A chain that would not admit it runs
        on: its requests' slack does not change while it runs (the work left shrinks as time passes), so it
        would not admit it at any boundary before the chain ends either."""
        for slot in ranks:
            running = self.running.get(slot)
            if running is None or slot in self.stopping:
                continue
            stack, tasks, batch = running
            joining = self.held[slot][task.model]
            if not stack.staged or joining.size >= joining.cap:
                continue
            # Only the model that runs next takes arrivals: none with requests in flight here may come first.
            urgency = (min(joining.deadline, task.deadline), task.model)
            if any((other.deadline, m) < urgency for m, other in self.stacks[slot].items() if m != task.model):
                continue
            # Which stage runs now, by the profile's means from the dispatch, and when it ends: the boundary.
            n, stage, last = batch.size, batch.stage, batch.through
            boundary = batch.t_dispatch
            while True:
                boundary += stack.stages[stage].mean[n]
                if boundary > now or stage == last:
                    break
                stage += 1
            if stage == last:                # it ends there anyway: the boundary comes without a stop
                continue
            if self._keeps_deadlines(slot, task, boundary, (stack, stage + 1, tasks)):
                self.stopping.add(slot)
                self.cluster.stop_at_boundary(slot)
                return

    def _by_deadline(self, slot: int) -> list[tuple[float, str]]:
        """(deadline, model) of the slot's models with requests in flight here or waiting, earliest first."""
        stacks, queues, held = self.stacks[slot], self.queues, self.held[slot]
        urgency = []
        for m, stack in stacks.items():
            queue = queues[m]
            urgency.append((min(stack.deadline, queue[0].deadline) if queue else stack.deadline, m))
        for m in self.waiting:
            if m not in stacks and m in held:
                urgency.append((queues[m][0].deadline, m))
        if len(urgency) > 1:
            urgency.sort()
        return urgency

    def _admit(self, slot: int, model: str, now: float) -> None:
        """The model's arrivals join the slot at stage 0, oldest first, while rule 1 allows."""
        stacks, queue = self.stacks[slot], self.queues[model]
        if not queue:
            return
        stack = self.held[slot][model]
        path = self.path
        backlog = not stacks and now + path.d_ctrl + stack.alone + path.d_data + path.response > queue[0].deadline + EPS
        while queue and stack.size < stack.cap:
            if stacks and not backlog and not self._keeps_deadlines(slot, queue[0], now):
                break
            task = queue.popleft()
            if stack.size == 0:              # the model's first request in flight here
                stacks[model] = stack
            stack.groups.setdefault(0, []).append(task)
            stack.size += 1
            if task.deadline < stack.deadline:
                stack.deadline = task.deadline
        if not queue:
            self.waiting.discard(model)

    def _keeps_deadlines(self, slot: int, extra: Task, now: float,
                         moving: tuple[_Stack, int, list[Task]] | None = None) -> bool:
        """Whether every request in flight on `slot` still finishes by its deadline once `extra` joins at
        stage 0 at `now` and nothing else does: models run one after another by earliest deadline, each as
        its groups merge, and each model's requests finish together. `moving`: (stack, stage, tasks) of a
        chain that will stop at `now` with those tasks to run that stage next (a group as the others)."""
        stacks = self.stacks[slot]
        joining = extra.model
        order = [(stack.deadline, m) for m, stack in stacks.items() if m != joining]
        joined = stacks.get(joining)
        order.append((extra.deadline if joined is None else min(joined.deadline, extra.deadline), joining))
        order.sort()
        t = now
        held = self.held[slot]
        d_ctrl, d_data, response = self.path.d_ctrl, self.path.d_data, self.path.response
        for _, m in order:
            stack = held[m]                  # its groups are empty while it has none in flight
            groups, curves = stack.groups, stack.stages
            if moving is not None and moving[0] is stack:
                groups = {**groups, moving[1]: moving[2] + groups.get(moving[1], [])}
            n = 1 if m == joining else 0
            t += d_ctrl                      # the least advanced group's chain goes to the slot
            for k in range(0 if n else min(groups), len(curves)):
                joins = len(groups.get(k, ()))
                if joins and n:              # a merge: the merged group's chain goes to the slot
                    t += d_ctrl
                n += joins
                t += curves[k].mean[n]
            if m in stacks and stack.deadline < t + d_data * n + response - EPS:
                return False
        return True
