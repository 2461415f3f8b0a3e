"""Clockwork's controller rules, with hand-computed expectations (l(b) = 1 ms*b + 5 ms)."""

import pytest

from harness.core import Batch, Task
from harness.profiles import LatencyCurve
from systems.clockwork import Clockwork, ClockworkConfig, p99
from tests.simkit import linear_curve, replay, poisson

CURVE = linear_curve(1.0, 5.0, 64)          # l(1) = 6 ms, l(b) = b + 5 ms; p99 = mean




def test_at_most_schedule_ahead_of_work_is_queued_on_a_slot():
    # 40 requests at 0 (SLO 1 s, batches of at most 4). The first two go alone while the slot has
    # room ([0, 6] and [6, 12] ms: 6 ms queued < 10 ms); the rest wait and go one batch of 4 at a
    # time when the queued work falls to 10 ms: at 2 ms (start 12), 11 ms (start 21), 20 ms, ...
    cfg = ClockworkConfig(max_batch=4)
    tasks, sim, _ = replay(Clockwork, cfg, {"m": 1000}, 1, CURVE, [(0.0, "m")] * 40)
    assert [b.size for b in sim.batches] == [1, 1] + [4] * 9 + [2]
    assert [b.t_dispatch for b in sim.batches[:5]] == pytest.approx([0.0, 0.0, 0.002, 0.011, 0.020])
    queued = [b.t_start - b.t_dispatch for b in sim.batches]
    assert max(queued) == pytest.approx(0.010)
    assert all(q <= 0.010 + 1e-9 for q in queued)
    assert all(r.status == "ok" for r in tasks)


def test_the_most_urgent_head_goes_first():
    # Schedule-ahead 1 ms, so one action at a time. x runs [0, 6] ms. Then a (D = 201 ms) and
    # b (D = 52 ms) wait; at 5 ms (6 - 1) the latest starts are 195 ms and 46 ms: b first.
    cfg = ClockworkConfig(schedule_ahead_ms=1.0)
    slos = {"a": 200, "b": 50}
    arrivals = [(0.0, "a"), (0.001, "a"), (0.002, "b")]
    tasks, sim, _ = replay(Clockwork, cfg, slos, 1, CURVE, arrivals)
    assert [b.model for b in sim.batches] == ["a", "b", "a"]
    assert [b.t_dispatch for b in sim.batches] == pytest.approx([0.0, 0.005, 0.011])
    assert sim.batches[1].latest_start == pytest.approx(0.052 - 0.006)
    assert all(r.status == "ok" for r in tasks)


def test_head_that_cannot_finish_on_the_slot_is_dropped():
    # SLO 10 ms: the first request runs [0, 6] ms; the second could start at 6 ms at the earliest
    # and would end at 12 ms > 10 ms, so the controller drops it at once.
    tasks, sim, _ = replay(Clockwork, ClockworkConfig(), {"m": 10}, 1, CURVE, [(0.0, "m"), (0.0, "m")])
    assert len(sim.batches) == 1
    assert tasks[1].status == "dropped" and tasks[1].reason == "late" and tasks[1].t_done == 0.0


def test_batch_is_the_largest_that_meets_the_head_deadline():
    # Ten requests at 0 with SLO 20 ms, schedule-ahead 1 ms: the first runs [0, 6] ms, the others
    # wait; at 5 ms, for t0 = 6 ms, the largest b with 6 + b + 5 <= 20 is 9, latest start 20 - 14.
    # With the default 10 ms the second would have gone alone at once ([6, 12] ms), leaving room
    # for a batch of 3 only ([12, 20] ms) and dropping the last five.
    cfg = ClockworkConfig(schedule_ahead_ms=1.0)
    tasks, sim, _ = replay(Clockwork, cfg, {"m": 20}, 1, CURVE, [(0.0, "m")] * 10)
    assert [b.size for b in sim.batches] == [1, 9]
    assert sim.batches[1].latest_start == pytest.approx(0.020 - 0.014)
    tasks, sim, _ = replay(Clockwork, ClockworkConfig(), {"m": 20}, 1, CURVE, [(0.0, "m")] * 10)
    assert [b.size for b in sim.batches] == [1, 1, 3]
    assert [r.status for r in tasks].count("dropped") == 5


def test_estimate_is_the_profile_p99_then_the_measured_p99():
    # Profile: mean b + 5 ms, p99 twice that. Before any measurement the controller plans with
    # p99 (latest start D - 12 ms); the batch then runs its mean, 6 ms, which becomes the estimate.
    sizes = list(range(1, 9))
    curve = LatencyCurve.from_points(sizes, [b + 5.0 for b in sizes], p99_ms=[2 * (b + 5.0) for b in sizes])
    tasks, sim, policy = replay(Clockwork, ClockworkConfig(), {"m": 100}, 1, curve, [(0.0, "m")])
    assert sim.batches[0].latest_start == pytest.approx(0.100 - 0.012)
    assert policy.estimate("m", 1) == pytest.approx(0.006)
    assert policy.estimate("m", 2) == pytest.approx(0.014)       # not measured yet: profile p99


def test_estimate_uses_the_last_window_of_measurements():
    _, sim, policy = replay(Clockwork, ClockworkConfig(window=10), {"m": 100}, 1, CURVE, [])
    for i in range(1, 13):                   # durations 1..12 ms; the window keeps 3..12
        batch = Batch(100 + i, 0, "m", [Task(i, "m", 0.0, 1.0)], 0.0, None)
        batch.t_start, batch.t_end, batch.status = 0.0, i / 1000, "ok"
        policy.on_batch_done(batch)
    # p99 of 3..12 ms: position 0.99 * 9 = 8.91 between 11 and 12 ms.
    assert policy.estimate("m", 1) == pytest.approx(0.01191)
    assert p99([5.0]) == 5.0


def test_multi_model_poisson_end_to_end():
    slos = {"a": 100, "b": 100, "c": 100}
    arrivals = poisson({"a": 400, "b": 300, "c": 200}, 4.0, seed=3)
    tasks, sim, _ = replay(Clockwork, ClockworkConfig(), slos, 2, CURVE, arrivals)
    assert len(tasks) > 3000
    assert all(r.status in ("ok", "dropped") for r in tasks)          # none left unresolved (timeout)
    met = sum(r.status == "ok" and r.t_done - r.t_arrival <= 0.100 + 1e-9 for r in tasks)
    assert met / len(tasks) >= 0.99


def test_past_capacity_its_goodput_hangs_on_its_estimate_for_one_request():
    # Heads are dropped once they cannot finish even alone (t0 + est(1) > D), so past capacity every head
    # left has about est(1) of slack and the batch that fits it is small: fewer served, more queued, heads
    # older still. An est(1) above the truth (one slow first batch on a real GPU, a size then rarely run
    # again) drops heads sooner, leaves larger batches, and serves more than twice as much.
    slos = {"a": 25, "b": 25, "c": 25}
    arrivals = poisson({m: 5000 for m in slos}, 1.0, seed=1)       # 15,000 req/s: about all one slot serves

    def slow_first_batch(policy):                                  # est(1) 3 ms where a batch of 1 takes 1.05
        for model in slos:
            policy.measure(model, 1, 0.003)

    served = {}
    for name, prepare in (("exact", None), ("slow first batch", slow_first_batch)):
        tasks, sim, _ = replay(Clockwork, ClockworkConfig(), slos, 1, linear_curve(0.05, 1.0, 64), arrivals,
                               prepare=prepare)
        good = sum(t.status == "ok" and t.t_done <= t.deadline for t in tasks)
        served[name] = good, sum(b.size for b in sim.batches) / len(sim.batches)
    assert served["slow first batch"][0] > 2 * served["exact"][0]
    assert served["slow first batch"][1] > 3 * served["exact"][1]
