"""A cluster autoscaler that wraps any policy, so load-proportional GPU use can be measured.

Like the policies it is pure and event-driven with time injected, so it runs
the same in every runtime. Every `interval_s` it measures the utilisation of
the provisioned slots (busy seconds of the batches that finished in the
interval over slot-seconds). When utilisation has stayed above
`scale_up_utilisation` for `scale_up_after_s`, it asks for the lowest-ranked
unprovisioned slot, which joins after `provision_delay_s`. A provisioned slot
that has run nothing for `scale_down_idle_s` is released, highest rank first,
never below `min_slots`. A policy that keeps low-ranked slots busy and
high-ranked ones idle (Symphony) lets it release more.

The wrapped policy sees slots leave through on_gpu_lost and join through
on_gpu_added; `timeline` records (time, provisioned slots) at every change.
Slots join lowest rank first and leave highest rank first.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core import Batch, Policy, Request
from harness.errors import HarnessError


@dataclass
class AutoscalerConfig:
    enabled: bool = False
    initial_slots: int = 1              # provisioned at start (the rest of cluster.count may join)
    min_slots: int = 1
    interval_s: float = 1.0             # utilisation is measured over this period
    scale_up_utilisation: float = 0.7
    scale_up_after_s: float = 3.0       # ... sustained this long before a slot is requested
    scale_down_idle_s: float = 10.0     # cool-down: a slot idle this long is released
    provision_delay_s: float = 5.0      # from request to a usable slot


class Autoscaled(Policy):
    """`policy` with slots provisioned and released by an autoscaler."""

    def __init__(self, policy: Policy, config: AutoscalerConfig):
        super().__init__(policy.cluster, policy.models, policy.config)
        n = len(self.cluster.gpus)
        if not 1 <= config.min_slots <= config.initial_slots <= n:
            raise HarnessError(f"autoscaler needs 1 <= min_slots ({config.min_slots}) <= initial_slots "
                               f"({config.initial_slots}) <= cluster.count ({n}); fix autoscaler.*")
        if config.interval_s <= 0 or config.provision_delay_s < 0 or config.scale_down_idle_s < 0:
            raise HarnessError("autoscaler.interval_s must be > 0 and its delays >= 0; fix autoscaler.*")
        self.inner = policy
        self.cfg = config
        self.busy = 0.0                  # busy seconds of batches finished this interval
        self.last_busy = [0.0] * n       # when each slot last finished a batch
        self.hot_since: float | None = None
        self.pending = 0                 # slots requested and not yet joined
        self.timeline: list[tuple[float, int]] = []

    @property
    def provisioned(self) -> list[int]:
        return [g.index for g in self.cluster.gpus if g.alive]

    def start(self) -> None:
        for g in self.cluster.gpus[self.cfg.initial_slots:]:
            g.alive = False
            self.inner.on_gpu_lost(g.index)
        self.timeline.append((self.cluster.now(), self.cfg.initial_slots))
        self.inner.start()
        self.cluster.call_at(self.cluster.now() + self.cfg.interval_s, self._tick)

    def on_arrival(self, req: Request) -> None:
        self.inner.on_arrival(req)

    def on_batch_done(self, batch: Batch) -> None:
        if batch.status == "ok":
            self.busy += batch.t_end - batch.t_start
            self.last_busy[batch.gpu] = batch.t_end
        self.inner.on_batch_done(batch)

    def on_gpu_lost(self, gpu: int) -> None:
        self.inner.on_gpu_lost(gpu)
        self._record()

    def _tick(self) -> None:
        now, cfg = self.cluster.now(), self.cfg
        alive = self.provisioned
        utilisation = self.busy / (len(alive) * cfg.interval_s) if alive else 1.0
        self.busy = 0.0
        if utilisation > cfg.scale_up_utilisation:
            self.hot_since = now if self.hot_since is None else self.hot_since
            if now - self.hot_since >= cfg.scale_up_after_s and self._request_slot():
                self.hot_since = None
        else:
            self.hot_since = None
            self._release_idle(now, alive)
        self.cluster.call_at(now + cfg.interval_s, self._tick)

    def _request_slot(self) -> bool:
        spare = [g.index for g in self.cluster.gpus if not g.alive]
        if len(spare) <= self.pending:
            return False                                 # every slot is provisioned or on its way
        gpu = spare[self.pending]
        self.pending += 1
        self.cluster.call_at(self.cluster.now() + self.cfg.provision_delay_s, lambda: self._join(gpu))
        return True

    def _join(self, gpu: int) -> None:
        self.pending -= 1
        slot = self.cluster.gpus[gpu]
        slot.alive, slot.busy_until = True, self.cluster.now()
        self.last_busy[gpu] = self.cluster.now()        # a fresh slot gets a full cool-down
        self.inner.on_gpu_added(gpu)
        self._record()

    def _release_idle(self, now: float, alive: list[int]) -> None:
        # Only ever the highest-ranked slot, so the provisioned slots stay the lowest ranks.
        while len(alive) > self.cfg.min_slots:
            slot = self.cluster.gpus[alive[-1]]
            if slot.outstanding or now - self.last_busy[slot.index] < self.cfg.scale_down_idle_s:
                return
            slot.alive = False
            self.inner.on_gpu_lost(alive.pop())
            self._record()

    def _record(self) -> None:
        self.timeline.append((self.cluster.now(), len(self.provisioned)))
