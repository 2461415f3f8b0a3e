"""Eager dispatch: whenever a slot is idle and a queue is non-empty, send at once.

The baseline the papers call eager: an idle slot takes min(queue, max_batch)
requests of the model whose head has the earliest deadline; it never waits
to grow a batch (work-conserving). Optionally it drops requests that can no
longer finish in time even alone.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from harness.core import Batch, Policy, Request, SystemConfig, slots_holding
from systems._pool import Pools


@dataclass
class EagerConfig(SystemConfig):
    name: str = "eager"
    max_batch: int = 0          # 0: the largest profiled batch whose latency fits the model's SLO
    drop_late: bool = True      # drop heads that cannot finish by their deadline even at batch 1


class Eager(Policy):
    Config = EagerConfig

    def __init__(self, cluster, models, config: EagerConfig):
        super().__init__(cluster, models, config)
        self.pools = Pools(cluster.gpus)
        self.queues = {m: deque() for m in models}
        self.held = {g.index: sorted(g.models & models.keys()) for g in cluster.gpus}
        self.max_batch = {}
        for m, spec in models.items():
            curve = cluster.curve(m, slots_holding(cluster.gpus, m)[0])
            fit = config.max_batch or curve.largest_batch_within(spec.slo)
            self.max_batch[m] = max(1, min(fit, curve.max_batch))

    def on_arrival(self, req: Request) -> None:
        self.queues[req.model].append(req)
        now = self.cluster.now()
        rank, free = self.pools.of(req.model).peek(now)
        if free <= now:
            self._serve(rank)

    def on_batch_done(self, batch: Batch) -> None:
        if self.cluster.gpus[batch.gpu].outstanding == 0:
            self.pools.release(batch.gpu, self.cluster.now())
            self._serve(batch.gpu)

    def on_gpu_lost(self, gpu: int) -> None:
        self.pools.remove(gpu)

    def on_gpu_added(self, gpu: int) -> None:
        self.pools.add(gpu, self.cluster.now())
        self._serve(gpu)

    def _serve(self, gpu: int) -> None:
        cluster, now = self.cluster, self.cluster.now()
        best = None
        for m in self.held[gpu]:
            q = self.queues[m]
            if self.config.drop_late and q:
                alone = cluster.curve(m, gpu).mean[1]
                late = []
                while q and now + alone > q[0].deadline:
                    late.append(q.popleft())
                if late:
                    cluster.drop(late, "late")
            if q and (best is None or q[0].deadline < best[0].deadline):
                best = q
        if best is None:
            return
        model = best[0].model
        reqs = [best.popleft() for _ in range(min(len(best), self.max_batch[model]))]
        cluster.dispatch(gpu, model, reqs)
        self.pools.book(gpu, float("inf"))
