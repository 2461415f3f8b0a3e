"""A cluster autoscaler that wraps any policy, so load-proportional GPU use can be measured.

Like the policies it is pure and event-driven with time injected, so it runs
the same in every runtime, and it changes the cluster only through the
handle's `reconfigure`: the provisioned slots are always the first k slots
of the configured cluster (`full`), k between `min_slots` and all of them.

Every `interval_s` it measures the utilisation of the slots alive (busy
seconds of the batches that finished in the interval over slot-seconds).
When utilisation has stayed above `scale_up_utilisation` for
`scale_up_after_s`, it asks for one more slot (the runtime starts it: live a
worker process, in the sim after `runtime.slot_start_s`). The highest-ranked
slot, once it has run nothing for `scale_down_idle_s`, is released, never
below `min_slots`. A policy that keeps low-ranked slots busy and high-ranked
ones idle (Symphony) lets it release more.

The wrapped policy sees slots leave through on_slot_lost and join through
on_slot_added; the run's records (slot events, reconfigurations) say when.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core import OK, Batch, Policy, Task
from harness.errors import HarnessError
from harness.placement import Placement

# A tick measures busy time over the batches that finished in it; ticks much shorter than a batch measure
# noise, and a nanosecond interval ran for billions of ticks.
MIN_INTERVAL_S = 0.01


@dataclass
class AutoscalerConfig:
    enabled: bool = False
    initial_slots: int = 1              # provisioned at start (the rest of the cluster may join)
    min_slots: int = 1
    interval_s: float = 1.0             # utilisation is measured over this period
    scale_up_utilisation: float = 0.7
    scale_up_after_s: float = 3.0       # ... sustained this long before a slot is requested
    scale_down_idle_s: float = 10.0     # cool-down: a slot idle this long is released


def check(config: AutoscalerConfig, slots: int) -> None:
    if not 1 <= config.min_slots <= config.initial_slots <= slots:
        raise HarnessError(f"autoscaler needs 1 <= min_slots ({config.min_slots}) <= initial_slots "
                           f"({config.initial_slots}) <= the cluster's slots ({slots}); fix autoscaler.*")
    if not (config.interval_s >= MIN_INTERVAL_S and config.scale_up_after_s >= 0 and config.scale_down_idle_s >= 0):
        raise HarnessError(f"autoscaler.interval_s must be >= {MIN_INTERVAL_S:g} s (got {config.interval_s}) and its "
                           f"delays >= 0 (got {config.scale_up_after_s}, {config.scale_down_idle_s}); "
                           "fix autoscaler.*")
    if not 0 < config.scale_up_utilisation < 1:
        raise HarnessError(f"autoscaler.scale_up_utilisation must be in (0, 1) (got {config.scale_up_utilisation}): "
                           "a slot's busy fraction never exceeds 1, so the autoscaler would never scale up; "
                           "set e.g. autoscaler.scale_up_utilisation=0.7")


class Autoscaled(Policy):
    """`policy` on the first k slots of `full`, k grown and shrunk with the load."""

    def __init__(self, policy: Policy, config: AutoscalerConfig, full: Placement):
        super().__init__(policy.cluster, policy.models, policy.config)
        check(config, len(full))
        self.inner = policy
        self.cfg = config
        self.full = full
        self.target = len(self.cluster.placement)    # slots provisioned or on their way
        self.busy = 0.0                  # busy seconds of batches finished this interval
        self.last_busy: dict[int, float] = {}       # slot -> when it last finished a batch (or joined)
        self.hot_since: float | None = None

    def start(self) -> None:
        self.inner.start()
        self.cluster.call_at(self.cluster.now() + self.cfg.interval_s, self._tick)

    def on_arrival(self, task: Task) -> None:
        self.inner.on_arrival(task)

    def on_batch_done(self, batch: Batch) -> None:
        if batch.status == OK:
            self.busy += batch.t_end - batch.t_start
            self.last_busy[batch.slot] = batch.t_end
        self.inner.on_batch_done(batch)

    def on_slot_lost(self, slot: int) -> None:
        self.inner.on_slot_lost(slot)

    def on_slot_added(self, slot: int) -> None:
        self.last_busy[slot] = self.cluster.now()      # a fresh slot gets a full cool-down
        self.inner.on_slot_added(slot)

    def _tick(self) -> None:
        now, cfg = self.cluster.now(), self.cfg
        alive = [s for s in self.cluster.slots if s.alive]
        utilisation = self.busy / (len(alive) * cfg.interval_s) if alive else 1.0
        self.busy = 0.0
        if utilisation > cfg.scale_up_utilisation:
            self.hot_since = now if self.hot_since is None else self.hot_since
            if now - self.hot_since >= cfg.scale_up_after_s and self.target < len(self.full):
                self.hot_since = None
                self._move_to(self.target + 1)
        else:
            self.hot_since = None
            self._release_idle(now, alive)
        self.cluster.call_at(now + cfg.interval_s, self._tick)

    def _release_idle(self, now: float, alive: list) -> None:
        # Only ever the highest-ranked slot, and only once nothing is on its way, so the provisioned
        # slots stay the lowest ranks.
        if self.target != len(alive):
            return
        n = self.target
        while n > self.cfg.min_slots:
            top = alive[n - 1]
            if top.outstanding or now - self.last_busy.get(top.index, 0.0) < self.cfg.scale_down_idle_s:
                break
            n -= 1
        if n < self.target:
            self._move_to(n)

    def _move_to(self, n: int) -> None:
        self.target = n
        self.cluster.reconfigure(self.full.prefix(n))
