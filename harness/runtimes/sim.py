"""The discrete-event runtime: virtual time, emulated GPU slots, the same policies.

One heap of timed events (timers and batch completions) merged with the
request schedule, which is already sorted, so arrivals cost no heap
operations. Each slot runs its batches in dispatch order, for the profiled
latency (optionally with Gaussian noise of the profile's std, clipped at half
the mean). Deterministic for a seed: heap ties break by insertion order.
"""

from __future__ import annotations

import heapq
import itertools
import sys
import time
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from harness.core import DROPPED, OK, TIMEOUT, Batch, GpuSlot, ModelSpec, Policy, Request, checked_curve
from harness.errors import HarnessError
from harness.profiles import LatencyCurve
from harness.records import batches_frame, server_frame, sim_client_view
from harness.runtimes import Outcome


class _Timer:
    __slots__ = ("entry",)

    def __init__(self, entry: list):
        self.entry = entry

    def cancel(self) -> None:
        self.entry[2] = None


class SimCluster:
    """The Cluster handle of the discrete-event runtime."""

    def __init__(self, gpus: Sequence[GpuSlot], curves: Sequence[Mapping[str, LatencyCurve]],
                 noise: bool = False, seed: int = 0):
        self.gpus = list(gpus)
        self._curves = curves                 # per slot: model -> curve
        self._now = 0.0
        self._heap: list[list] = []
        self._seq = itertools.count()
        self._noise = noise
        self._rng = np.random.default_rng(seed)
        self._z: list[float] = []
        self._running: dict[int, list] = {}   # slot -> completion entry of its last batch
        self.batches: list[Batch] = []
        self.pending = 0                      # arrived requests not yet finished or dropped

    # -- the Cluster interface ------------------------------------------------
    def now(self) -> float:
        return self._now

    def call_at(self, t: float, fn: Callable[[], None]) -> _Timer:
        entry = [t if t > self._now else self._now, next(self._seq), fn]
        heapq.heappush(self._heap, entry)
        return _Timer(entry)

    def curve(self, model: str, gpu: int) -> LatencyCurve:
        return self._curves[gpu][model]

    def dispatch(self, gpu: int, model: str, reqs: list[Request], latest_start: float | None = None) -> Batch:
        slot = self.gpus[gpu]
        curve = checked_curve(slot, model, reqs, self._curves[gpu])
        now = self._now
        batch = Batch(len(self.batches), gpu, model, reqs, now, latest_start)
        self.batches.append(batch)
        slot.outstanding += 1
        start = slot.busy_until if slot.busy_until > now else now
        if latest_start is not None and start > latest_start + 1e-12:
            # The slot would start it too late: it discards the batch when it reaches it.
            batch.t_start = batch.t_end = start
            self._push(start, self._discard, batch)
            return batch
        b = len(reqs)
        exec_time = curve.mean[b]
        if self._noise and curve.std[b] > 0:
            exec_time = max(0.5 * exec_time, exec_time + curve.std[b] * self._normal())
        batch.t_start = start
        batch.t_end = slot.busy_until = start + exec_time
        self._running[gpu] = self._push(batch.t_end, self._complete, batch)
        return batch

    def drop(self, reqs: Sequence[Request], reason: str, status: str = DROPPED) -> None:
        now = self._now
        for r in reqs:
            r.status = status
            r.reason = reason
            r.t_done = now
        self.pending -= len(reqs)

    def preempt(self, gpu: int) -> list[Request]:
        slot = self.gpus[gpu]
        entry = self._running.get(gpu)
        if entry is None or entry[2] is None or entry[0] <= self._now or slot.outstanding != 1:
            raise ValueError(f"preempt needs exactly one running batch on slot {gpu}")
        batch = entry[3]
        entry[2] = None                       # the completion never fires
        batch.t_end = slot.busy_until = self._now
        batch.status = "preempted"
        slot.outstanding -= 1
        return list(batch.requests)

    # -- event loop -------------------------------------------------------------
    def _push(self, t: float, fn: Callable, arg) -> list:
        entry = [t, next(self._seq), fn, arg]
        heapq.heappush(self._heap, entry)
        return entry

    def _normal(self) -> float:
        if not self._z:
            self._z = self._rng.standard_normal(4096).tolist()
        return self._z.pop()

    def _complete(self, batch: Batch) -> None:
        batch.status = OK
        t, bid = batch.t_end, batch.id
        for r in batch.requests:
            r.status = OK
            r.t_done = t
            r.batch_id = bid
        self.pending -= len(batch.requests)
        self.gpus[batch.gpu].outstanding -= 1
        self._policy.on_batch_done(batch)

    def _discard(self, batch: Batch) -> None:
        batch.status = "late"
        for r in batch.requests:
            r.batch_id = batch.id
        self.drop(batch.requests, "late")
        self.gpus[batch.gpu].outstanding -= 1
        self._policy.on_batch_done(batch)

    def run(self, policy: Policy, ids: np.ndarray, models: Sequence[str], times: np.ndarray,
            specs: Mapping[str, ModelSpec], drain: float) -> list[Request]:
        """Replay the schedule through `policy`; returns every request with its outcome.

        After the last arrival the run goes on until every request is
        resolved or `drain` seconds of virtual time have passed; requests
        still pending then are recorded as timeouts.
        """
        self._policy = policy
        slo = {m: s.slo for m, s in specs.items()}
        unknown = set(models) - slo.keys()
        if unknown:
            raise HarnessError(f"schedule has models without an SLO: {sorted(unknown)}; add them to the models config")
        heap, pop = self._heap, heapq.heappop
        requests: list[Request] = []
        append = requests.append
        on_arrival = policy.on_arrival
        policy.start()
        times_list = times.tolist()
        ids_list = ids.tolist()
        wall0 = last_report = time.perf_counter()
        for i, t in enumerate(times_list):
            if not i & 0xFFFF and i:                      # a cheap check every 65,536 arrivals
                now_wall = time.perf_counter()
                if now_wall - last_report >= 5.0:         # long runs say how far they are
                    last_report = now_wall
                    print(f"[sim] {t:,.1f}/{times_list[-1]:,.1f} s virtual, {i:,} requests, "
                          f"{i / (now_wall - wall0):,.0f} per wall second", file=sys.stderr, flush=True)
            while heap and heap[0][0] <= t:
                self._fire(pop(heap))
            self._now = t
            model = models[i]
            req = Request(ids_list[i], model, t, t + slo[model])
            append(req)
            self.pending += 1
            on_arrival(req)
        end = self._now + drain
        while heap and self.pending > 0 and heap[0][0] <= end:
            self._fire(pop(heap))
        self._now = max(self._now, end) if self.pending > 0 else self._now
        for r in requests:
            if r.status is None:
                r.status, r.reason, r.t_done = TIMEOUT, "unresolved at end of run", float("nan")
        return requests

    def _fire(self, entry: list) -> None:
        fn = entry[2]
        if fn is None:
            return
        self._now = entry[0]
        if len(entry) == 4:
            fn(entry[3])
        else:
            fn()


def simulate(cfg, models: Mapping[str, ModelSpec], gpus: Sequence[GpuSlot],
             curves: Sequence[Mapping[str, LatencyCurve]], schedule: pd.DataFrame,
             make_policy: Callable[[SimCluster], Policy]) -> Outcome:
    """Run the schedule in virtual time; the client is ideal (each request sent at its scheduled time)."""
    cluster = SimCluster(gpus, curves, noise=cfg.runtime.noise, seed=cfg.seeds.runtime)
    policy = make_policy(cluster)
    d_in, d_out = cfg.runtime.request_delay_ms / 1000, cfg.runtime.response_delay_ms / 1000
    wall = time.perf_counter()
    reqs = cluster.run(policy, schedule["id"].to_numpy(), schedule["model"].tolist(),
                       schedule["t_sched"].to_numpy() + d_in, models, drain=cfg.runtime.drain_s)
    wall = time.perf_counter() - wall
    timeline = getattr(policy, "timeline", None) or [(0.0, len(gpus))]
    return Outcome(client=sim_client_view(server_frame(reqs), d_in, d_out), batches=batches_frame(cluster.batches, gpus),
                   timeline=pd.DataFrame(timeline, columns=["t", "slots"]), wall_seconds=wall,
                   notes=[f"simulated {len(reqs) / wall:,.0f} requests per wall second"] if wall > 0 else [])
