"""LiveCluster: the Cluster handle of the live runtime (real time, batches run by worker processes).

It implements harness.core.Cluster as harness.runtimes.sim.SimCluster does,
on an asyncio loop: `now()` is the run clock (seconds since the epoch the
orchestrator chose), timers are loop timers, and a dispatched batch goes to
the slot's worker through the pool (harness.live.workers.WorkerPool, or any
object with its `submit`, `abort` and `on_lost`). When the reply comes the
batch and its requests get their outcome, each request's waiter (the HTTP
handler) is woken, and the policy hears on_batch_done.

Where it must differ from the simulation:

- `GpuSlot.busy_until` is a prediction: max(now, busy_until) + profiled
  mean at dispatch, and now when the slot's last batch comes back.
- A batch's t_end is the time its reply arrives, and t_start = t_end minus
  the execution time the worker measured.
- A lost slot (its worker died or hung): `alive` turns False, the policy
  hears on_gpu_lost once, and the slot's batches in flight fail (status
  error, their requests error) without on_batch_done, since the slot they
  would free no longer exists.
- preempt() returns the running batch's requests at once and asks the worker
  to stop it; the batch's times are filled in when the worker confirms.
- finish() ends the run: requests still pending are recorded as timeouts
  (as the simulation records what its drain leaves unresolved), waiters are
  woken, and the policy is never called again.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from array import array
from typing import Callable, Mapping, Sequence

from harness.core import DROPPED, ERROR, OK, TIMEOUT, Batch, GpuSlot, ModelSpec, Policy, Request, checked_curve
from harness.live.loop import Clock
from harness.profiles import LatencyCurve


class _NeverFires:
    def cancel(self) -> None:
        pass


class LiveCluster:
    """See module doc. Build it inside the running loop; then `start(policy)`, `arrive(...)`, `finish()`."""

    def __init__(self, gpus: Sequence[GpuSlot], curves: Sequence[Mapping[str, LatencyCurve]], pool,
                 clock: Clock, models: Mapping[str, ModelSpec]):
        self.gpus = list(gpus)
        self._curves = curves
        self.pool = pool
        self.clock = clock
        self._slo = {m: s.slo for m, s in models.items()}
        self._loop = asyncio.get_running_loop()
        # Run time -> loop time: both count on the monotonic clock, so one offset does.
        self._to_loop = self._loop.time() - clock.now()
        self.batches: list[Batch] = []
        self.requests: list[Request] = []     # every arrival, in arrival order
        self.pending = 0                      # arrived and not yet resolved
        self.timer_lag = array("d")           # per timer fired: fire time - planned time, seconds
        self.lost: list[dict] = []            # {"slot", "t", "reason"} per slot lost
        self.policy_errors = 0
        self._waiters: dict[Request, asyncio.Future] = {}
        self._inflight: list[dict[int, Batch]] = [{} for _ in self.gpus]
        self._policy: Policy | None = None
        self._finished = False
        pool.on_lost = self._on_lost

    # -- the Cluster interface ------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def call_at(self, t: float, fn: Callable[[], None]):
        if self._finished:
            return _NeverFires()
        now = self.clock.now
        planned = t if t > now() else now()
        lag = self.timer_lag

        def fire():
            if self._finished:
                return
            lag.append(now() - planned)
            try:
                fn()
            except Exception:
                self._policy_failed("timer")

        return self._loop.call_at(planned + self._to_loop, fire)

    def curve(self, model: str, gpu: int) -> LatencyCurve:
        return self._curves[gpu][model]

    def dispatch(self, gpu: int, model: str, reqs: list[Request], latest_start: float | None = None) -> Batch:
        slot = self.gpus[gpu]
        curve = checked_curve(slot, model, reqs, self._curves[gpu])
        size = len(reqs)
        now = self.clock.now()
        batch = Batch(len(self.batches), gpu, model, reqs, now, latest_start)
        self.batches.append(batch)
        slot.outstanding += 1
        mean = curve.mean[size]
        slot.busy_until = (slot.busy_until if slot.busy_until > now else now) + mean
        self._inflight[gpu][batch.id] = batch
        start_within = None if latest_start is None else latest_start - now
        fut = self.pool.submit(gpu, batch.id, model, size, start_within, None, mean)
        fut.add_done_callback(lambda f, batch=batch: self._on_reply(batch, f.result()))
        return batch

    def drop(self, reqs: Sequence[Request], reason: str, status: str = DROPPED) -> None:
        now = self.clock.now()
        for r in reqs:
            r.status = status
            r.reason = reason
            r.t_done = now
        self.pending -= len(reqs)
        self._wake(reqs)

    def preempt(self, gpu: int) -> list[Request]:
        inflight = self._inflight[gpu]
        if len(inflight) != 1:
            raise ValueError(f"preempt needs exactly one running batch on slot {gpu} (it has {len(inflight)})")
        batch = inflight.popitem()[1]
        slot = self.gpus[gpu]
        batch.status = "preempted"
        batch.t_end = slot.busy_until = self.clock.now()
        slot.outstanding -= 1
        self.pool.abort(gpu, batch.id)
        return list(batch.requests)

    # -- driving it ---------------------------------------------------------------
    def start(self, policy: Policy) -> None:
        """Attach the policy and call its start() (at the current run time, which may be before 0)."""
        self._policy = policy
        policy.start()

    def arrive(self, model: str, request_id: int) -> tuple[Request, asyncio.Future]:
        """A request for `model` arrived now: hand it to the policy; the future resolves with its outcome."""
        t = self.clock.now()
        req = Request(request_id, model, t, t + self._slo[model])
        fut = self._loop.create_future()
        self._waiters[req] = fut
        self.requests.append(req)
        self.pending += 1
        try:
            self._policy.on_arrival(req)
        except Exception:
            self._policy_failed("on_arrival")
            if req.status is None:
                self._fail([req], "policy error")
        return req, fut

    def finish(self, reason: str = "unresolved at shutdown") -> None:
        """End of run: pending requests become timeouts, waiters wake, the policy is called no more."""
        self._finished = True
        for r in self.requests:
            if r.status is None:
                r.status, r.reason, r.t_done = TIMEOUT, reason, float("nan")
        self.pending = 0
        self._wake(list(self._waiters))

    # -- replies and losses ----------------------------------------------------------
    def _on_reply(self, batch: Batch, reply: dict) -> None:
        if self._finished:
            return
        now = self.clock.now()
        if self._inflight[batch.gpu].pop(batch.id, None) is None:
            if batch.status == "preempted":    # the worker confirms when it really stopped
                batch.t_end = now
                batch.t_start = now - float(reply.get("exec") or 0.0)
            return
        slot = self.gpus[batch.gpu]
        slot.outstanding -= 1
        if slot.outstanding == 0 and slot.busy_until > now:
            slot.busy_until = now
        status = reply.get("status")
        reqs = batch.requests
        if status == OK:
            batch.status, batch.t_end, batch.t_start = OK, now, now - reply["exec"]
            bid = batch.id
            for r in reqs:
                r.status = OK
                r.t_done = now
                r.batch_id = bid
            self.pending -= len(reqs)
            self._wake(reqs)
        elif status == "late":
            batch.status, batch.t_start, batch.t_end = "late", now, now
            for r in reqs:
                r.batch_id = batch.id
            self.drop(reqs, "late")
        else:
            batch.status, batch.t_end = ERROR, now
            batch.t_start = now - float(reply.get("exec") or 0.0)
            for r in reqs:
                r.batch_id = batch.id
            self._fail(reqs, reply.get("error") or f"worker replied {status!r}")
        if slot.alive:
            try:
                self._policy.on_batch_done(batch)
            except Exception:
                self._policy_failed("on_batch_done")

    def _on_lost(self, gpu: int, reason: str) -> None:
        slot = self.gpus[gpu]
        if not slot.alive or self._finished:
            return
        slot.alive = False
        now = self.clock.now()
        self.lost.append({"slot": gpu, "t": now, "reason": reason})
        try:
            self._policy.on_gpu_lost(gpu)
        except Exception:
            self._policy_failed("on_gpu_lost")
        for batch in self._inflight[gpu].values():
            batch.status, batch.t_end = ERROR, now
            for r in batch.requests:
                r.batch_id = batch.id
            self._fail(batch.requests, f"slot {gpu} lost: {reason}")
        self._inflight[gpu].clear()
        slot.outstanding = 0
        slot.busy_until = now

    def _fail(self, reqs: Sequence[Request], reason: str) -> None:
        self.drop(reqs, reason, status=ERROR)

    def _wake(self, reqs) -> None:
        waiters = self._waiters
        for r in reqs:
            fut = waiters.pop(r, None)
            if fut is not None and not fut.done():
                fut.set_result(r.status)

    def _policy_failed(self, where: str) -> None:
        self.policy_errors += 1
        print(f"live cluster: policy raised in {where}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
