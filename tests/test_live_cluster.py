"""LiveCluster's bookkeeping, with a fake worker pool on the real (precise) event loop."""

import asyncio
import time

import pytest

from harness.core import ModelSpec, Policy
from harness.ledger import Ledger
from harness.live import loop as precise
from harness.live.cluster import LiveCluster
from harness.placement import Placement, SlotSpec
from harness.profiles import LatencyCurve
from systems.eager import Eager, EagerConfig
from tests.simkit import slots

CURVE = LatencyCurve.linear(1.0, 5.0, 16)       # l(b) = b + 5 ms


class FakePool:
    """Replies as a worker would, after `exec` seconds, with the status the test chooses."""

    def __init__(self, exec_time: float = 0.01):
        self.exec_time = exec_time
        self.on_lost = None
        self.sent = []                   # (slot, batch, size, start_within)
        self.payloads = []               # each batch's payload references
        self.aborted = []
        self.status = "ok"
        self.hold = False                # True: keep the futures for the test to resolve
        self.futures = {}

    def submit(self, slot, batch_id, model, size, start_within, payload=None, expected=0.0, stage=None, rows=None,
               on_reply=None, through=None, busy=None):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        fut.add_done_callback(lambda f: on_reply(f.result()))
        self.sent.append((slot, batch_id, size, start_within))
        self.payloads.append(payload)
        self.futures[batch_id] = fut
        if not self.hold:
            reply = {"batch": batch_id, "status": self.status, "exec": self.exec_time, "wait": 0.0, "error": "boom"}
            loop.call_later(self.exec_time, fut.set_result, reply)
        return fut

    def abort(self, slot, batch_id):
        self.aborted.append((slot, batch_id))


class Recorder(Eager):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.done, self.lost = [], []

    def on_batch_done(self, batch):
        self.done.append(batch)
        super().on_batch_done(batch)

    def on_slot_lost(self, gpu):
        self.lost.append(gpu)
        super().on_slot_lost(gpu)


def make(n_gpus=2, pool=None, slo_ms=100.0, policy_cls=None, preemption="finish"):
    models = {"m": ModelSpec("m", slo_ms / 1000)}
    ledger = Ledger(slots({"m"}, n_gpus), [{"m": CURVE}] * n_gpus, curves_of=lambda spec: {"m": CURVE})
    pool = pool or FakePool()
    cluster = LiveCluster(ledger, pool, precise.Clock(time.time()), {"m": slo_ms / 1000}, preemption=preemption)
    cluster.on_answer = lambda fut, item: fut.done() or fut.set_result(item.status)
    policy = (policy_cls or Recorder)(cluster, models, EagerConfig())
    cluster.start(policy)
    return cluster, policy, pool


def setup(n_gpus=2, pool=None, slo_ms=100.0, preemption="finish"):
    return make(n_gpus, pool, slo_ms, preemption=preemption)


def arrive(cluster, model, rid):
    """A request arriving now; returns (its task, a future of its outcome)."""
    fut = asyncio.get_running_loop().create_future()
    cluster.arrive(model, rid, cluster.now(), origin=fut)
    return cluster.ledger.items[-1], fut


def run(coro):
    return precise.run(coro)


def test_requests_complete_with_their_batch_and_wake_their_waiters():
    async def main():
        cluster, policy, pool = setup()
        (r1, f1), (r2, f2) = arrive(cluster, "m", 1), arrive(cluster, "m", 2)
        assert cluster.slots[0].outstanding == 1 and cluster.slots[1].outstanding == 1
        assert cluster.slots[0].busy_until == pytest.approx(cluster.batches[0].t_dispatch + CURVE.mean[1])
        assert await asyncio.wait_for(f1, 1) == "ok" and await asyncio.wait_for(f2, 1) == "ok"
        return cluster, policy, r1, r2

    cluster, policy, r1, r2 = run(main())
    b0, b1 = cluster.batches
    assert (r1.status, r1.batch_id, r2.batch_id) == ("ok", 0, 1)
    assert b0.status == "ok" and b0.t_end - b0.t_start == pytest.approx(0.01)
    assert r1.t_done == b0.t_end and b0.t_end - b0.t_dispatch >= 0.01
    assert [b.id for b in policy.done] == [0, 1]
    assert all(g.outstanding == 0 for g in cluster.slots) and cluster.pending == 0


def test_late_batch_drops_its_requests_and_error_batch_fails_them():
    async def main(status):
        cluster, policy, pool = setup(1)
        pool.status = status
        req, fut = arrive(cluster, "m", 1)
        await asyncio.wait_for(fut, 1)
        return cluster, policy, req

    cluster, policy, req = run(main("late"))
    assert (req.status, req.reason, req.batch_id) == ("dropped", "late", 0)
    assert cluster.batches[0].status == "late" and len(policy.done) == 1
    cluster, policy, req = run(main("error"))
    assert (req.status, req.reason) == ("error", "boom")
    assert cluster.batches[0].status == "error" and len(policy.done) == 1


class Holder(Policy):
    """Keeps every arrival; the test dispatches by hand."""

    def on_arrival(self, req):
        self.held = getattr(self, "held", []) + [req]


def test_dispatch_sends_the_action_window_as_seconds_from_now():
    async def main():
        cluster, policy, pool = make(1, policy_cls=Holder)
        for i in range(3):
            arrive(cluster, "m", i)
        cluster.dispatch(0, "m", policy.held[:2], latest_start=cluster.now() + 0.02)
        cluster.dispatch(0, "m", policy.held[2:])
        with pytest.raises(ValueError):
            cluster.dispatch(0, "m", [])
        return pool.sent

    (slot, batch, size, within), (_, _, _, no_window) = run(main())
    assert (slot, batch, size) == (0, 0, 2)
    assert within == pytest.approx(0.02, abs=0.002) and no_window is None


class NextWhenDone(Holder):
    """Sends one held request to the slot whose batch just ended (Nexus's shape: one batch a slot)."""

    def on_batch_done(self, batch):
        if self.held:
            self.cluster.dispatch(batch.slot, "m", [self.held.pop(0)])


def test_a_reply_sends_the_slots_next_batch_before_it_answers_its_requests():
    # The slot idles from a reply until the next batch is sent: answering a batch of n first kept it idle
    # for n answers' bookkeeping, which grew with the batch (a 4-6% loss to Nexus on a whole H100).
    events = []

    async def main():
        cluster, policy, pool = make(1, policy_cls=NextWhenDone)
        answered = cluster.on_answer
        cluster.on_answer = lambda fut, item: (events.append(("answer", item.id)), answered(fut, item))
        submit = pool.submit
        pool.submit = lambda slot, batch_id, *a, **kw: (events.append(("dispatch", batch_id)),
                                                        submit(slot, batch_id, *a, **kw))[1]
        futs = [arrive(cluster, "m", i)[1] for i in range(5)]
        cluster.dispatch(0, "m", policy.held[:3])
        del policy.held[:3]
        await asyncio.wait_for(asyncio.gather(*futs), 1)
        return cluster

    cluster = run(main())
    assert events == [("dispatch", 0), ("dispatch", 1), ("answer", 0), ("answer", 1), ("answer", 2),
                      ("dispatch", 2), ("answer", 3), ("answer", 4)]
    assert [r.status for r in cluster.ledger.items] == ["ok"] * 5 and cluster.pending == 0


def test_a_slot_slower_than_its_profile_keeps_its_backlog_in_busy_until():
    # Three batches of 1 (profiled 6 ms each) held by one slot, answered late and out of order: after each
    # reply what the slot still holds runs from then on (2 x 6 ms, then 6 ms), so busy_until must not stay
    # at the predicted 18 ms; the slot's queued time is kept as a running sum, empty at the end.
    async def main():
        cluster, policy, pool = make(1, policy_cls=Holder)
        pool.hold = True
        for i in range(3):
            arrive(cluster, "m", i)
        batches = [cluster.dispatch(0, "m", [task]) for task in policy.held]
        ahead = [cluster.slots[0].busy_until - cluster.now()]
        for b in (batches[1], batches[0], batches[2]):
            await asyncio.sleep(0.05)
            pool.futures[b.id].set_result({"batch": b.id, "status": "ok", "exec": 0.05, "wait": 0.0})
            await asyncio.sleep(0)
            ahead.append(cluster.slots[0].busy_until - cluster.now())
        return ahead, cluster._queued_s[0]

    ahead, left = run(main())
    assert ahead[0] == pytest.approx(0.018, abs=0.002)
    assert ahead[1] == pytest.approx(0.012, abs=0.003) and ahead[2] == pytest.approx(0.006, abs=0.003)
    assert ahead[3] <= 0.001 and left == 0.0


def test_lost_slot_fails_its_requests_tells_the_policy_once_and_others_go_on():
    async def main():
        pool = FakePool()
        pool.hold = True
        cluster, policy, pool = setup(2, pool)
        victim, vf = arrive(cluster, "m", 1)               # eager puts it on slot 0
        pool.on_lost(0, "worker process exited with code -9")
        pool.on_lost(0, "again")                           # told once only
        pool.futures[0].set_result({"batch": 0, "status": "error", "exec": 0, "wait": 0, "error": "lost"})
        await asyncio.wait_for(vf, 1)
        pool.hold = False
        survivor, sf = arrive(cluster, "m", 2)
        await asyncio.wait_for(sf, 1)
        await asyncio.sleep(0.05)
        return cluster, policy, victim, survivor

    cluster, policy, victim, survivor = run(main())
    assert victim.status == "error" and "slot 0 lost: worker process exited" in victim.reason
    assert policy.lost == [0] and not cluster.slots[0].alive and cluster.slots[0].outstanding == 0
    assert [b.id for b in policy.done] == [1]               # no on_batch_done for the lost slot's batch
    assert survivor.status == "ok" and cluster.batches[survivor.batch_id].slot == 1
    assert [(slot, event) for _, slot, event, _ in cluster.ledger.slot_events if event == "lost"] == [(0, "lost")]


@pytest.mark.parametrize("preemption", ["finish", "abort"])
def test_preempt_returns_the_running_batch_and_asks_the_worker_to_stop(preemption):
    async def main():
        pool = FakePool()
        pool.hold = True
        cluster, policy, pool = setup(1, pool, preemption=preemption)
        req, fut = arrive(cluster, "m", 1)
        expected_end = cluster.slots[0].busy_until               # l(1) = 6 ms from its dispatch
        back = cluster.preempt(0)
        # Stopped at once (abort), the slot is free now; a batch that runs to its end (finish, a CUDA
        # graph) holds it as long as it was expected to, until the worker says it ended.
        shown = cluster.slots[0].busy_until
        with pytest.raises(ValueError):
            cluster.preempt(0)
        pool.futures[0].set_result({"batch": 0, "status": "preempted", "exec": 0.002, "wait": 0, "error": ""})
        await asyncio.sleep(0.01)
        return cluster, policy, pool, req, fut, back, expected_end, shown

    cluster, policy, pool, req, fut, back, expected_end, shown = run(main())
    assert back == [req] and req.status is None and not fut.done()
    assert pool.aborted == [(0, 0)]
    assert shown == (expected_end if preemption == "finish" else pytest.approx(cluster.batches[0].t_dispatch,
                                                                              abs=0.005))
    b = cluster.batches[0]
    assert b.status == "preempted" and b.t_end - b.t_start == pytest.approx(0.002)
    assert cluster.slots[0].outstanding == 0 and policy.done == []
    assert cluster.slots[0].busy_until <= b.t_end + 1e-9       # free once it ended, either way


def test_finish_times_out_pending_requests_and_silences_the_policy():
    async def main():
        pool = FakePool()
        pool.hold = True
        cluster, policy, pool = setup(1, pool)
        req, fut = arrive(cluster, "m", 1)
        fired = []
        cluster.call_at(cluster.now() + 0.005, lambda: fired.append(1))
        cluster.finish()
        assert await asyncio.wait_for(fut, 1) == "timeout"
        pool.futures[0].set_result({"batch": 0, "status": "ok", "exec": 0.001, "wait": 0, "error": ""})
        await asyncio.sleep(0.02)
        return req, policy, fired

    req, policy, fired = run(main())
    assert (req.status, req.reason) == ("timeout", "unresolved at shutdown")
    assert policy.done == [] and fired == []


def test_timers_fire_at_their_time_and_record_their_lag():
    class Ticker(Policy):
        def start(self):
            self.times = []
            t0 = self.cluster.now()
            for k in range(1, 21):
                self.cluster.call_at(t0 + k * 0.002, lambda: self.times.append(self.cluster.now()))

        def on_arrival(self, req):
            pass

    async def main():
        cluster, policy, _ = make(1, policy_cls=Ticker)
        await asyncio.sleep(0.06)
        return cluster, policy

    cluster, policy = run(main())
    assert len(policy.times) == 20 and len(cluster.timer_lag) == 20
    assert min(cluster.timer_lag) >= 0 and max(cluster.timer_lag) < 0.005


def test_each_task_takes_its_part_of_its_requests_tensor_to_the_worker_and_lets_go_once_answered():
    # One slot busy first (request 1), then a request of 3 images (3 tasks) and a plain one wait and
    # run together: the batch carries each task's slice of its request's arena slot.
    async def main():
        cluster, policy, pool = setup(1)
        futs = []
        for rid, copies, ref in ((1, None, [0, 4, 0, 100]), (2, [3], [1, 7, 0, 300]), (3, None, [0, 5, 0, 100])):
            fut = asyncio.get_running_loop().create_future()
            cluster.arrive("m", rid, cluster.now(), copies, fut, 1, ref)
            futs.append(fut)
        await asyncio.wait_for(asyncio.gather(*futs), 2)
        return cluster, pool

    cluster, pool = run(main())
    assert pool.payloads == [[[0, 4, 0, 100]],
                             [[1, 7, 0, 100], [1, 7, 100, 100], [1, 7, 200, 100], [0, 5, 0, 100]]]
    assert cluster._payload == {}                 # every reference let go once its request was answered


def test_timers_fire_in_order_cancelled_ones_never_and_a_cancel_after_firing_leaves_no_count():
    async def main():
        cluster, _, _ = make(1, policy_cls=Holder)
        fired, now = [], cluster.now()
        handles = [cluster.call_at(now + 0.02 + 0.001 * (i % 7), lambda i=i: fired.append(i)) for i in range(600)]
        for h in handles[::2] + handles[1:2]:
            h.cancel()                                   # 301 of 600 cancelled, over half: swept on the next call_at
        late = cluster.call_at(now + 0.05, lambda: fired.append("late"))
        assert cluster._cancelled == 0 and len(cluster._timers) == 300
        await asyncio.sleep(0.08)
        for h in [*handles, late]:
            h.cancel()                                   # after they fired: nothing left to count or sweep
        assert cluster._cancelled == 0 and not cluster._timers
        return cluster, fired

    cluster, fired = run(main())
    # By time, then in the order they were set; each timer's lag recorded once.
    assert fired == sorted(range(3, 600, 2), key=lambda i: (i % 7, i)) + ["late"]
    assert len(cluster.timer_lag) == 300 and min(cluster.timer_lag) > -1e-6


class MovingPool(FakePool):
    """Also starts and stops workers, recording the order, as a reconfiguration asks."""

    def __init__(self):
        super().__init__()
        self.hold = True
        self.moves = []                  # ("remove" | "add", slot), in the order they finished

    async def add(self, slot, spec):
        await asyncio.sleep(0.002)
        self.moves.append(("add", slot))

    async def remove(self, slot):
        await asyncio.sleep(0.002)
        self.moves.append(("remove", slot))


class Mover(Holder):
    def on_slot_added(self, slot):
        pass


def test_a_reconfiguration_stops_a_slot_once_it_drains_and_starts_its_devices_new_shares_after():
    # Device 0's whole GPU (slot 0, a batch in flight) becomes two 50% shares; device 1 stays. The new shares
    # start only once slot 0 has run its batch and its worker is stopped: the device is never over-subscribed.
    async def main():
        pool = MovingPool()
        cluster, policy, _ = make(2, pool, policy_cls=Mover)
        req, fut = arrive(cluster, "m", 1)
        cluster.dispatch(0, "m", policy.held)
        half = SlotSpec("test", "mps50", 0, frozenset({"m"}))
        cluster.reconfigure(Placement((half, half, SlotSpec("test", "whole", 1, frozenset({"m"})))))
        await asyncio.sleep(0.02)
        held = list(pool.moves)                                  # nothing moves while the batch runs
        pool.futures[0].set_result({"batch": 0, "status": "ok", "exec": 0.001, "wait": 0.0, "error": ""})
        for _ in range(100):
            if len(pool.moves) == 3:
                break
            await asyncio.sleep(0.005)
        return cluster, held, list(pool.moves), await asyncio.wait_for(fut, 1)

    cluster, held, moves, status = run(main())
    assert held == [] and status == "ok" and cluster.policy_errors == 0
    assert moves[0] == ("remove", 0) and sorted(moves[1:]) == [("add", 2), ("add", 3)]
    assert [s.index for s in cluster.slots if s.alive] == [1, 2, 3]
