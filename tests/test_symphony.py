"""Symphony's rules on its public example, with expectations computed by hand.

The example: l(b) = 1.082 ms * b + 5.204 ms, SLO 100 ms, d_ctrl 0.1 ms, d_data 0.05 ms,
response allowance 2 ms, timer slack 0.1 ms. A request arriving at t is due at D = t + 98 ms
(the SLO less the response allowance). A batch of b sent at s starts at earliest s + 0.1 + 0.05b,
and frontrun(b) = D - 0.1 - l(b+1) - 0.05 is the last start at which one more request could join.
Useful values (ms): l(2) 7.368, l(6) 11.696, l(10) 16.024, l(16) 22.516, l(38) 46.32,
l(39) 47.402, l(40) 48.484, l(56) 65.796, l(64) 74.452. The largest batch is 64, so a batch of 64
starts at once (l(65) is infinite, frontrun(64) is -inf).
"""

from collections import Counter

import numpy as np
import pytest

from harness.core import Task
from harness.errors import HarnessError
from harness.ledger import Ledger
from harness.profiles import LatencyCurve
from harness.runtimes.sim import SimCluster
from systems.symphony import Symphony, SymphonyConfig
from tests.simkit import cluster, linear_curve, replay, slo_of, slots, specs

CURVE = linear_curve(1.082, 5.204, 64)
CFG = SymphonyConfig()
MS = 1e-3


def sent_at(batch) -> float:
    """When the batch was dispatched, in ms after its first request arrived."""
    return (batch.t_dispatch - batch.tasks[0].t_arrival) / MS


def test_target_batch_is_the_largest_b_with_latency_plus_fill_time_within_the_budget():
    _, _, policy = replay(Symphony, CFG, {"m": 100}, 1, CURVE, [])
    st = policy.state["m"]
    # Before any rate sample: the largest b with l(b) <= SLO/2 - 2 ms = 48: 1.082b <= 42.796, b = 39.
    assert policy.target_batch(st, None) == 39
    assert policy.target_batch(st, 0.0) == 1          # no arrivals: no batch is worth waiting for
    # Budget 100 - 0.1 - 2 = 97.9 ms; l(b) + b/r + 0.05b <= 97.9 is (1.132 + 1000/r) b <= 92.696:
    # r = 100: 11.132b -> 8.33; r = 200: 6.132b -> 15.12; r = 500: 3.132b -> 29.6; r = 1000: 2.132b -> 43.5.
    assert [policy.target_batch(st, r) for r in (100, 200, 500, 1000)] == [8, 15, 29, 43]
    assert policy.target_batch(st, 1e5) == 64         # capped at the largest batch


@pytest.mark.parametrize("rate, size, offset_ms, count", [(100, 9, 81.276, 81), (200, 15, 74.484, 90),
                                                          (500, 30, 58.0, 240)])
def test_constant_rate_forms_batches_at_the_frontrun_point(rate, size, offset_ms, count):
    # No request is ever late, so nothing is dropped and free lunch keeps every queued request:
    # the batch is the whole queue, whatever the target. With b queued behind a head that arrived at
    # t0, it starts at frontrun(b) and is sent 0.1 + 0.05b earlier, at
    #   send(b) = t0 + 98 - 0.25 - (1.082(b+1) + 5.204) - 0.05b = t0 + 91.464 - 1.132b ms,
    # if that comes before the (b+1)-th request, at t0 + b*gap; past already, it goes at once.
    #   100/s (gap 10): send(8) = 82.408 > 80, send(9) = 81.276 in [80, 90): 9 at t0 + 81.276.
    #   200/s (gap 5):  send(14) = 75.616 > 70, send(15) = 74.484 in [70, 75): 15 at t0 + 74.484.
    #   500/s (gap 2):  send(29) = 58.636 > 58, the 30th's arrival; send(30) = 57.504 is past: 30 at t0 + 58.
    # (Free lunch grows the batch past the target: 9 > 8 at 100/s, 30 > 29 at 500/s.)
    arrivals = [(i / rate, "m") for i in range(count)]
    tasks, sim, _ = replay(Symphony, CFG, {"m": 100}, 8, CURVE, arrivals)
    assert [b.size for b in sim.batches] == [size] * (count // size)
    assert [sent_at(b) for b in sim.batches] == pytest.approx([offset_ms] * (count // size), abs=1e-6)
    # The slot with the smallest predicted free time: unused ones first, then the longest idle.
    assert [b.slot for b in sim.batches] == [i % 8 for i in range(count // size)]
    assert all(t.status == "ok" for t in tasks)


def test_lone_request_waits_until_a_second_could_no_longer_join():
    # D = 98 ms; frontrun(1) = 98 - 0.1 - 7.368 - 0.05 = 90.482, sent 0.15 earlier: 90.332 ms.
    tasks, sim, _ = replay(Symphony, CFG, {"m": 100}, 1, CURVE, [(0.0, "m")])
    (batch,) = sim.batches
    assert batch.size == 1 and sent_at(batch) == pytest.approx(90.332, abs=1e-6)
    assert tasks[0].status == "ok"


def test_free_lunch_grows_the_batch_past_the_target_while_the_head_is_on_time():
    # 20 requests at 0 (D = 98), 40 at 30 ms (D = 128); target 39 (no rate sample before 50 ms).
    # At 30 ms a batch of k sent now ends at 30 + 0.1 + 0.05k + l(k) = 35.304 + 1.132k: the longest
    # tail that fits its own head is the last 55 (head D = 98: k <= 55.4). b = min(39, 55) = 39 fits
    # the first request (79.452 <= 98), and free lunch grows it to 55 (97.564; 56 would end at 98.696).
    # frontrun(55) = 97.85 - 65.796 = 32.054 < earliest 32.85: it goes at once, at 30 ms.
    # The last 5 (D = 128) start at frontrun(5) = 127.85 - 11.696 = 116.154, sent 0.35 earlier.
    arrivals = [(0.0, "m")] * 20 + [(0.030, "m")] * 40
    tasks, sim, _ = replay(Symphony, CFG, {"m": 100}, 1, CURVE, arrivals)
    assert [b.size for b in sim.batches] == [55, 5]
    assert [b.t_dispatch / MS for b in sim.batches] == pytest.approx([30.0, 115.804], abs=1e-6)
    assert all(t.status == "ok" for t in tasks)


def test_window_drop_gives_up_a_head_to_keep_the_batch_of_the_tail():
    # One slot. 64 requests at 0 go at once (batch of 64), the slot booked until 0.1 + 3.2 + 74.452
    # = 77.752. Then h at 10 ms (D = 108) and 38 at 45 ms (D = 143); the target stays >= 38 (39,
    # then 57 and 44 at the measured 2,060 and 1,030 req/s).
    # At 45: all 39 fit (45 + 2.05 + 47.402 = 94.452 <= 108), to start at frontrun(39) = 107.85 -
    # 48.484 = 59.366; the slot frees later, so the plan waits, and it turns invalid after 108 -
    # l(39) = 60.598. Planned again at 60.598 - 2.05 = 58.548: the 39 no longer fit h, so the window
    # is the 38; h still fits a batch of 38 (58.548 + 2.0 + 46.32 = 106.868); invalid after 108 -
    # 46.32 = 61.68. Planned again at 61.68 - 2.0 = 59.68: h misses in a batch of 38 and is dropped,
    # though alone it would have ended at 77.752 + 6.286 = 84.04 <= 108.
    # The 38 (D = 143) start at frontrun(38) = 142.85 - 47.402 = 95.448, sent 2.0 earlier: 93.448.
    arrivals = [(0.0, "m")] * 64 + [(0.010, "m")] + [(0.045, "m")] * 38
    tasks, sim, _ = replay(Symphony, CFG, {"m": 100}, 1, CURVE, arrivals)
    h = tasks[64]
    assert (h.status, h.reason) == ("dropped", "window")
    assert h.t_done / MS == pytest.approx(59.68, abs=1e-5)
    assert [(b.size, round(b.t_dispatch / MS, 6)) for b in sim.batches] == [(64, 0.0), (38, 93.448)]
    assert all(t.status == "ok" for t in tasks if t is not h)


def test_freeing_slot_goes_to_the_plan_that_turns_invalid_first():
    # One slot, busy with a's 64 (sent at 0) until 77.752. lax (SLO 200, D = 199) queues 64 at 1 ms
    # and urgent (SLO 160, D = 160) 64 at 2 ms: each plans a batch of 64 to start at once, and both
    # wait for the slot. Valid until D - l(64): lax 124.548, urgent 85.548, both after 77.752.
    # The slot is offered at 77.752 - (0.1 + 64*0.05) = 74.452 and urgent gets it, though lax began
    # to wait first and comes first in the config. The slot is then booked until 77.752 + 74.452 =
    # 152.204, so lax shrinks to the largest b with 152.204 + l(b) <= 199: 38 (l(39) ends at 199.606),
    # sent at 152.204 - (0.1 + 38*0.05) = 150.204; its other 26 are dropped.
    slos = {"a": 100, "lax": 200, "urgent": 160}
    arrivals = [(0.0, "a")] * 64 + [(0.001, "lax")] * 64 + [(0.002, "urgent")] * 64
    tasks, sim, _ = replay(Symphony, CFG, slos, 1, CURVE, arrivals)
    assert [(b.model, b.size, round(b.t_dispatch / MS, 6)) for b in sim.batches] == [
        ("a", 64, 0.0), ("urgent", 64, 74.452), ("lax", 38, 150.204)]
    assert Counter((t.model, t.status, t.reason) for t in tasks)[("lax", "dropped", "window")] == 26


def test_rate_is_the_mean_of_the_last_100_samples_of_50_ms():
    # 100 req/s for 1 s, then 300 req/s to 6 s (arrivals half a gap off the 50 ms sample edges).
    # At 1.5 s: 30 samples, 20 of 100 and 10 of 300: 166.67. At 5.5 s: 110 samples, of which the
    # last 100 are 10 of 100 and 90 of 300: 280 (a 1 s window would say 300, all samples 263.6).
    # The target follows: at 280 req/s, (1.132 + 1000/280) b <= 92.696 gives b = 19.
    sim = cluster({"m": 100}, 1, CURVE)
    policy = Symphony(sim, specs({"m": 100}), CFG)
    seen = {}
    for t in (0.001, 1.501, 5.501):
        sim.call_at(t, lambda t=t: seen.setdefault(t, (policy.state["m"].rate, policy.state["m"].target)))
    times = np.array([(i + 0.5) / 100 for i in range(100)] + [1 + (i + 0.5) / 300 for i in range(1500)])
    sim.run(policy, np.arange(len(times)), ["m"] * len(times), times, slo_of({"m": 100}), drain=1.0)
    assert seen[0.001] == (None, 39)                  # no sample before the first request's
    assert seen[1.501][0] == pytest.approx(500 / 3)
    assert seen[5.501] == (pytest.approx(280.0), 19)


def test_plans_with_the_slowest_slot_mean_plus_std_forced_monotone():
    # Per batch size the slower entry (larger mean, or larger mean + std), then monotone:
    #   b=1: (6, 0) vs (5, 2): 5 + 2 > 6, take (5, 2) -> 7 ms
    #   b=2: (6.5, 0) vs (6, 0): take (6.5, 0); below b=1's 7, so b=1's (5, 2) -> 7 ms
    # and the largest batch is 2, the smaller of the two slots' profiles.
    fast = LatencyCurve.from_points([1, 2, 3], [6.0, 6.5, 9.0])
    slow = LatencyCurve.from_points([1, 2], [5.0, 6.0], [2.0, 0.0])
    ledger = Ledger(slots({"m"}, 2), [{"m": fast}, {"m": slow}], curves_of=lambda spec: {"m": fast})
    policy = Symphony(SimCluster(ledger), specs({"m": 100}), CFG)
    st = policy.state["m"]
    assert st.cap == 2
    assert st.l[1:3] == pytest.approx([0.007, 0.007])


def test_slot_choice_earliest_free_spreads_and_lowest_rank_consolidates():
    # Three lone requests 0.5 s apart on 4 slots; each runs 90.332 .. 96.768 ms after it arrives.
    # earliest_free: unused slots count as free since time 0, before slot 0 (free at 96.768 ms).
    arrivals = [(0.0, "m"), (0.5, "m"), (1.0, "m")]
    _, spread, _ = replay(Symphony, CFG, {"m": 100}, 4, CURVE, arrivals)
    _, packed, _ = replay(Symphony, SymphonyConfig(slot_choice="lowest_rank"), {"m": 100}, 4, CURVE, arrivals)
    assert [b.slot for b in spread.batches] == [0, 1, 2]
    assert [b.slot for b in packed.batches] == [0, 0, 0]


def test_start_target_size_sends_a_full_batch_at_once():
    # 39 requests at 0 meet the target (39) at once. frontrun: start at frontrun(39) = 97.85 -
    # 48.484 = 49.366, sent 0.1 + 1.95 earlier: 47.316 ms. target_size: sent at once.
    arrivals = [(0.0, "m")] * 39
    _, deferred, _ = replay(Symphony, CFG, {"m": 100}, 1, CURVE, arrivals)
    _, eager, _ = replay(Symphony, SymphonyConfig(start="target_size"), {"m": 100}, 1, CURVE, arrivals)
    assert [(b.size, round(b.t_dispatch / MS, 6)) for b in deferred.batches] == [(39, 47.316)]
    assert [(b.size, b.t_dispatch) for b in eager.batches] == [(39, 0.0)]


def test_queue_stays_in_deadline_order():
    # A task due earlier than the queue's tail (an app's later graph node) is queued before it.
    sim = cluster({"m": 100}, 1, CURVE)
    policy = Symphony(sim, specs({"m": 100}), CFG)
    policy.on_arrival(Task(0, "m", 0.0, 0.100))
    policy.on_arrival(Task(1, "m", 0.0, 0.060))
    assert [t.id for t in policy.state["m"].queue] == [1, 0]


@pytest.mark.parametrize("bad, key", [({"slot_choice": "fastest"}, "system.slot_choice"),
                                      ({"start": "latest"}, "system.start"),
                                      ({"rate_samples": 0}, "system.rate_sample_ms/rate_samples")])
def test_bad_option_is_named(bad, key):
    with pytest.raises(HarnessError, match=key):
        replay(Symphony, SymphonyConfig(**bad), {"m": 100}, 1, CURVE, [])
