"""Triton's dynamic batcher, modelled (triton-inference-server/core, dynamic_batch_scheduler.cc).

One batcher and one FIFO queue per model. Like Triton's batcher thread, it
looks at its queue only while an instance of the model is free (an instance
is busy from dispatch to its batch's completion). Then, with n = min(queued,
max_batch_size) and P the preferred batch sizes (default [max_batch_size],
as Triton's config normaliser fills it in), GetDynamicBatch() comes down to:

    1. some p in P has p <= n and the oldest pending request has waited less
       than max_queue_delay: send the largest such p (a preferred size
       reached goes at once, even below max(P));
    2. else if n >= max(P), or the delay is 0, or it has expired: send n;
    3. else wait until the oldest request's delay expires (or the next queue
       timeout), unless an arrival or a free instance decides earlier.

With delay 0 and the default P this is work-conserving: whatever is pending,
up to max_batch_size, goes as soon as an instance is free.

Queue policy (ModelQueuePolicy): max_queue_size > 0 rejects arrivals that
find that many requests queued; default_timeout_microseconds > 0 times a
request out once its queue time reaches the timeout, checked (as in Triton)
only when the batcher runs, i.e. while an instance is free. REJECT drops it;
DELAY moves it to a second queue served after the fresh requests (Triton's
delayed queue). Triton has no SLO: nothing is dropped for deadlines.

Instances: `instance_count` per slot the model has instances on -- every
slot holding it, or `instance_gpus` of them spread over the cluster round
robin by model (Triton's instance_group `gpus`); a batch goes to the
instance free the longest (Triton's idle instance threads wait in line for
the next payload: 20 models on two slots at 200 req/s, tritonserver split
the batches 50/50 over the slots, where the lowest free slot took 78%).
Instances on one slot, and models sharing
a slot, run their batches one after another (the slot serialises them),
where real Triton would overlap them on CUDA streams.

Why it falls apart with many models where eager does not: each model's
instance on a slot sends its own batch as soon as it is free, so a slot
shared by M models queues up to M batches (eager gives an idle slot one
batch, of the most urgent model), and nothing is ever dropped for its
deadline, so a request waits for a turn through every model's batch. With
100 models on 32 slots every slot queues up to 100 batches. That is what
Triton does when every model has an instance on every GPU; a deployment of
many models gives each a few GPUs (`instance_gpus`) and a queue timeout
(`default_timeout_microseconds`).

Left out: priority levels and per-priority policies, allow_timeout_override,
preserve_ordering, the response cache, the rate limiter, and growing a
payload that waits for an instance (here a batch is formed only when an
instance is free, so it never waits).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

from harness.core import REJECTED, Batch, Policy, SystemConfig, Task, slots_holding, take
from harness.errors import HarnessError

US = 1e-6
EPS = 1e-9          # Triton's clock ticks in ns: times this close count as reached


@dataclass
class TritonConfig(SystemConfig):
    name: str = "triton"
    max_batch_size: int = 0                                      # 0: the profile's largest batch
    preferred_batch_size: list[int] = field(default_factory=list)  # empty: [max_batch_size]
    max_queue_delay_microseconds: int = 0                        # 0: send at once (work-conserving)
    instance_count: int = 1                                      # instances per slot holding the model
    max_queue_size: int = 0                                      # 0: unbounded
    default_timeout_microseconds: int = 0                        # 0: no queue timeout
    timeout_action: str = "REJECT"                               # REJECT or DELAY
    instance_gpus: int = 0                                       # slots each model has instances on; 0: all


def instance_slots(models: list[str], slots, instance_gpus: int) -> dict[str, list[int]]:
    """The slots each model has instances on: all that hold it, or `instance_gpus` of them, model i's
    starting at slot i * instance_gpus (round robin), so the models spread evenly over the cluster."""
    placed = {}
    for i, m in enumerate(models):
        holders = slots_holding(slots, m)
        k = instance_gpus
        placed[m] = holders if not k or k >= len(holders) else sorted(
            holders[(i * k + j) % len(holders)] for j in range(k))
    return placed


class _Batcher:
    __slots__ = ("name", "queue", "delayed", "free", "max_batch", "preferred", "send_all", "timer", "timer_at")

    def __init__(self, name: str, free: deque[int], max_batch: int, preferred: list[int], delay: float):
        self.name = name
        self.queue: deque[Task] = deque()
        self.delayed: deque[Task] = deque()   # timed out under DELAY: served after `queue`
        self.free = free                         # slot of each free instance, longest free first
        self.max_batch = max_batch
        self.preferred = preferred               # sorted ascending
        # No queue delay and the default preferred sizes: GetDynamicBatch() always sends all n pending
        # (the usual config), so the batcher skips working that out per batch.
        self.send_all = delay == 0 and preferred == [max_batch]
        self.timer = None
        self.timer_at = float("inf")


class Triton(Policy):
    Config = TritonConfig

    def __init__(self, cluster, models, config: TritonConfig):
        super().__init__(cluster, models, config)
        if config.timeout_action not in ("REJECT", "DELAY"):
            raise HarnessError(f"triton: timeout_action must be REJECT or DELAY (got {config.timeout_action!r}); "
                               "fix system.timeout_action")
        if config.instance_count < 1:
            raise HarnessError(f"triton: instance_count must be >= 1 (got {config.instance_count}); "
                               "fix system.instance_count")
        if config.instance_gpus < 0:
            raise HarnessError(f"triton: instance_gpus must be >= 0 (got {config.instance_gpus}); "
                               "fix system.instance_gpus")
        self.delay = config.max_queue_delay_microseconds * US
        self.timeout = config.default_timeout_microseconds * US
        self.reject_on_timeout = config.timeout_action == "REJECT"
        self.queue_limit = config.max_queue_size
        self.batchers: dict[str, _Batcher] = {}
        placed = instance_slots(list(models), cluster.slots, config.instance_gpus)
        for m in models:
            slots = placed[m]
            largest = cluster.curve(m, slots[0]).max_batch
            max_batch = config.max_batch_size or largest
            if max_batch > largest:
                raise HarnessError(f"triton: max_batch_size {max_batch} exceeds the profiled maximum {largest} "
                                   f"of {m}; lower system.max_batch_size")
            preferred = sorted(set(config.preferred_batch_size)) or [max_batch]
            if preferred[0] < 1 or preferred[-1] > max_batch:
                raise HarnessError(f"triton: preferred_batch_size {preferred} must lie in [1, {max_batch}] for {m}; "
                                   "fix system.preferred_batch_size")
            free = deque(s for s in slots for _ in range(config.instance_count))
            self.batchers[m] = _Batcher(m, free, max_batch, preferred, self.delay)

    # -- events -----------------------------------------------------------------
    def on_arrival(self, task: Task) -> None:
        b = self.batchers[task.model]
        limit = self.queue_limit
        if limit and len(b.queue) + len(b.delayed) >= limit:
            # Triton answers UNAVAILABLE "Exceeds maximum queue size"; records want status 'rejected'.
            self.cluster.drop([task], "queue full", status=REJECTED)
            return
        b.queue.append(task)
        self._run(b)

    def on_batch_done(self, batch: Batch) -> None:
        b = self.batchers[batch.model]
        if self.cluster.slots[batch.slot].alive:
            b.free.append(batch.slot)
        self._run(b)

    def on_slot_added(self, gpu: int) -> None:
        for model in self.cluster.slots[gpu].models & self.batchers.keys():
            b = self.batchers[model]
            # Instances of a released slot may still sit in the free line (skipped while it was dead).
            b.free.extend([gpu] * (self.config.instance_count - b.free.count(gpu)))
            self._run(b)

    # -- the batcher --------------------------------------------------------------
    def _run(self, b: _Batcher) -> None:
        """What Triton's batcher thread does each time it wakes with a free instance."""
        cluster = self.cluster
        now = cluster.now()
        slots = cluster.slots
        free, queue, delayed, timeout = b.free, b.queue, b.delayed, self.timeout
        while free:
            slot = free[0]
            if not slots[slot].alive:
                free.popleft()
                continue
            if timeout > 0:
                self._apply_timeouts(b, now)
            queued = len(queue) + len(delayed)
            if queued == 0:
                break
            n = queued if queued < b.max_batch else b.max_batch
            size = n if b.send_all else self._batch_size(b, n, now)
            if size == 0:
                self._wake_at(b, self._wake_time(b, n))
                return
            free.popleft()
            cluster.dispatch(slot, b.name, self._take(b, size))
        # Nothing queued, or no free instance: Triton's thread sleeps until an arrival or a completion.
        if b.timer is not None:
            self._cancel_timer(b)

    def _batch_size(self, b: _Batcher, n: int, now: float) -> int:
        """Requests to send now out of n pending (0: wait), per GetDynamicBatch()."""
        preferred = b.preferred
        expired = self.delay > 0 and now - self._oldest(b, n) >= self.delay - EPS
        i = bisect_right(preferred, n)
        if i and not expired:
            return preferred[i - 1]
        if n >= preferred[-1] or expired or self.delay == 0:
            return n
        return 0

    def _oldest(self, b: _Batcher, n: int) -> float:
        """Enqueue time of the oldest request in the pending batch of n."""
        oldest = b.queue[0].t_arrival if b.queue else float("inf")
        if n > len(b.queue) and b.delayed:
            oldest = min(oldest, b.delayed[0].t_arrival)
        return oldest

    def _wake_time(self, b: _Batcher, n: int) -> float:
        t = self._oldest(b, n) + self.delay
        if self.timeout > 0 and b.queue:
            t = min(t, b.queue[0].t_arrival + self.timeout)   # FIFO: the head times out first
        return t

    def _apply_timeouts(self, b: _Batcher, now: float) -> None:
        q, timeout = b.queue, self.timeout
        if not q or q[0].t_arrival + timeout > now + EPS:
            return
        expired = []
        while q and q[0].t_arrival + timeout <= now + EPS:
            expired.append(q.popleft())
        if self.reject_on_timeout:
            self.cluster.drop(expired, "queue timeout", status=REJECTED)
        else:
            b.delayed.extend(expired)

    def _take(self, b: _Batcher, size: int) -> list[Task]:
        q = b.queue
        if size >= len(q):                    # the whole queue (usual: a batch takes all that waits)
            tasks = list(q)
            q.clear()
        else:
            tasks = take(q, size)
        d = b.delayed
        while len(tasks) < size:
            tasks.append(d.popleft())
        return tasks

    def _wake_at(self, b: _Batcher, t: float) -> None:
        if b.timer_at != t:
            if b.timer is not None:
                b.timer.cancel()
            b.timer = self.cluster.call_at(t, lambda b=b: self._on_timer(b))
            b.timer_at = t

    def _cancel_timer(self, b: _Batcher) -> None:
        if b.timer is not None:
            b.timer.cancel()
            b.timer, b.timer_at = None, float("inf")

    def _on_timer(self, b: _Batcher) -> None:
        b.timer, b.timer_at = None, float("inf")
        self._run(b)
