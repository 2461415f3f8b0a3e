"""Policies written for tests: each does one scripted thing, the same in every runtime.

A run names one as `system.name=tests.policies:<Class>` (systems.policy_class loads module:Class).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from harness.core import Batch, Policy, SystemConfig, Task
from harness.placement import Placement, SlotSpec


@dataclass
class ScriptedConfig(SystemConfig):
    name: str = "tests.policies:Scripted"


class Scripted(Policy):
    """Each arrival goes at once, alone, to the next slot alive in turn (round robin over arrivals)."""

    Config = ScriptedConfig

    def __init__(self, cluster, models, config):
        super().__init__(cluster, models, config)
        self.turn = 0

    def on_arrival(self, task: Task) -> None:
        alive = [s.index for s in self.cluster.slots if s.alive]
        slot = alive[self.turn % len(alive)]
        self.turn += 1
        self.cluster.dispatch(slot, task.model, [task])

    def on_slot_lost(self, slot: int) -> None:
        pass


class PreemptSecond(Scripted):
    """Every arrival goes to slot 0 (where batches queue), but the second preempts the batch that slot
    runs and goes with the tasks it gets back."""

    def on_arrival(self, task: Task) -> None:
        self.turn += 1
        back = self.cluster.preempt(0) if self.turn == 2 else []
        self.cluster.dispatch(0, task.model, back + [task])


class Lopsided(Scripted):
    """Every other arrival goes to the first slot alive, where batches queue; the rest take the others in
    turn. A batch waiting on the first slot starts beside whatever its siblings were sent meanwhile."""

    def on_arrival(self, task: Task) -> None:
        alive = [s.index for s in self.cluster.slots if s.alive]
        self.turn += 1
        slot = alive[0] if self.turn % 2 else alive[1 + (self.turn // 2) % (len(alive) - 1)]
        self.cluster.dispatch(slot, task.model, [task])


@dataclass
class ReshaperConfig(SystemConfig):
    name: str = "tests.policies:Reshaper"
    wide_at_s: float = 2.0          # when the four 25% shares become two 50% shares
    narrow_at_s: float = 5.0        # ... and back
    overlap: bool = False           # make before break (Cluster.reconfigure)


class Reshaper(Policy):
    """Four 25% MPS shares of device 0 become two 50% shares at `wide_at_s` and four again at `narrow_at_s`.

    It serves first come first served, one request per batch, on whatever slots are alive; while a
    reconfiguration leaves none alive, requests wait.
    """

    Config = ReshaperConfig

    def __init__(self, cluster, models, config):
        super().__init__(cluster, models, config)
        self.queue: deque[Task] = deque()
        self.idle = {s.index for s in cluster.slots if s.alive}
        self.narrow = cluster.placement
        spec = self.narrow.slots[0]
        self.wide = Placement((SlotSpec(spec.gpu_type, "mps50", spec.device, spec.models),) * 2)

    def start(self) -> None:
        overlap = self.config.overlap
        self.cluster.call_at(self.config.wide_at_s, lambda: self.cluster.reconfigure(self.wide, overlap))
        self.cluster.call_at(self.config.narrow_at_s, lambda: self.cluster.reconfigure(self.narrow, overlap))

    def on_arrival(self, task: Task) -> None:
        self.queue.append(task)
        self._serve()

    def on_batch_done(self, batch: Batch) -> None:
        self.idle.add(batch.slot)
        self._serve()

    def on_slot_lost(self, slot: int) -> None:
        self.idle.discard(slot)

    def on_slot_added(self, slot: int) -> None:
        self.idle.add(slot)
        self._serve()

    def _serve(self) -> None:
        while self.queue and self.idle:
            slot = min(self.idle)
            self.idle.discard(slot)
            task = self.queue.popleft()
            self.cluster.dispatch(slot, task.model, [task])


@dataclass
class StagedConfig(SystemConfig):
    name: str = "tests.policies:Staged"


class Staged(Policy):
    """Each request runs its model stage by stage, alone, on the slot it started on (taken in turn)."""

    Config = StagedConfig

    def __init__(self, cluster, models, config):
        super().__init__(cluster, models, config)
        self.turn = 0
        self.stage_of: dict[int, tuple[Task, int]] = {}      # batch id -> (task, its stage)

    def on_arrival(self, task: Task) -> None:
        slot = self.turn % len(self.cluster.slots)
        self.turn += 1
        self._run(slot, task, 0)

    def on_batch_done(self, batch: Batch) -> None:
        task, stage = self.stage_of.pop(batch.id)
        if batch.status == "ok" and stage + 1 < len(self.cluster.curve(task.model, batch.slot).stages):
            self._run(batch.slot, task, stage + 1)

    def _run(self, slot: int, task: Task, stage: int) -> None:
        batch = self.cluster.dispatch(slot, task.model, [task], stage=stage)
        self.stage_of[batch.id] = (task, stage)


@dataclass
class ChainedConfig(SystemConfig):
    name: str = "tests.policies:Chained"


class Chained(Policy):
    """Each request runs its model's stages as one chain, alone, on the slot it started on (taken in turn);
    one arriving at a busy slot stops the chain running there at its next stage boundary and runs first,
    and the stopped request runs the rest of its stages after it."""

    Config = ChainedConfig

    def __init__(self, cluster, models, config):
        super().__init__(cluster, models, config)
        self.turn = 0
        self.queues = [deque() for _ in cluster.slots]        # per slot: (task, the stage it runs next)
        self.running: dict[int, Task] = {}

    def on_arrival(self, task: Task) -> None:
        slot = self.turn % len(self.cluster.slots)
        self.turn += 1
        self.queues[slot].appendleft((task, 0))
        if slot in self.running:
            self.cluster.stop_at_boundary(slot)
        else:
            self._next(slot)

    def on_batch_done(self, batch: Batch) -> None:
        task = self.running.pop(batch.slot)
        if batch.status == "ok" and not batch.final:
            self.queues[batch.slot].append((task, batch.through + 1))
        self._next(batch.slot)

    def _next(self, slot: int) -> None:
        if self.queues[slot]:
            task, stage = self.queues[slot].popleft()
            last = len(self.cluster.curve(task.model, slot).stages) - 1
            self.cluster.dispatch(slot, task.model, [task], stage=stage, through=last)
            self.running[slot] = task
