"""Nexus's allocation and backend rules, with hand-computed expectations.

Profile: mean b + 5 ms and std 1 ms, so Nexus's l(b) = mean + std = b + 6 ms.
"""

import pytest

from harness.profiles import LatencyCurve
from systems.nexus import Nexus, NexusConfig
from tests.simkit import replay, poisson

SIZES = list(range(1, 65))
CURVE = LatencyCurve.from_points(SIZES, [b + 5.0 for b in SIZES], std_ms=[1.0] * len(SIZES))
CFG = NexusConfig()




def policy(slos_ms: dict[str, float], n_gpus: int = 4) -> Nexus:
    return replay(Nexus, CFG, slos_ms, n_gpus, CURVE, [])[2]


def sessions(bin_) -> list[tuple[str, int]]:
    return [(s.model, s.batch) for s in bin_.sessions]


def test_b_max_is_the_largest_batch_within_half_the_slo():
    p = policy({"m": 100, "tight": 10})
    assert p.info["m"].b_max == 44                      # 44 + 6 = 50 ms <= 100/2; 45 + 6 > 50
    assert p.info["m"].t_max == pytest.approx(44 / 0.050)   # 880 task/s
    assert p.info["tight"].b_max == 1                   # l(1) = 7 ms > 5 ms: at least 1, as in Nexus


def test_saturating_model_gets_whole_slots_and_a_residual_session():
    # 2100 task/s = 2 x 880 (whole slots at b_max = 44) + 340 residual. Residual batch: largest b with
    # (b-1)/340 + (b+6) ms <= 100 ms: b = 24 (67.6 + 30 ms); b = 25 gives 70.6 + 31 > 100.
    # Its duty cycle: min(100 - 30, 24/340 s = 70.6) = 70 ms, so ceil(340 * 0.070) = 24 per cycle.
    bins = policy({"m": 100}).plan({"m": 2100.0})
    assert [sessions(b) for b in bins] == [[("m", 44)], [("m", 44)], [("m", 24)]]
    assert bins[0].duty == pytest.approx(0.050)
    assert bins[2].duty == pytest.approx(0.070)


def test_squishy_packing_puts_two_small_sessions_on_one_slot():
    # a: SLO 100 ms, 100 task/s -> b = 9 ((9-1)/100 s + 15 ms = 95 ms), d_max = min(85, 90) = 85 ms,
    #    occupancy 15/85 = 0.18.
    # b: SLO 80 ms, 50 task/s  -> b = 4 (60 + 10 = 70 ms), d_max = min(70, 80) = 70 ms, occupancy 0.14.
    # First-fit decreasing: a opens a slot (d = 85 ms); b joins: d = min(85, 70) = 70 ms,
    # a runs ceil(100 * 0.07) = 7 and b ceil(50 * 0.07) = 4 per cycle: l(7) + l(4) = 13 + 10 = 23 <= 70.
    p = policy({"a": 100, "b": 80})
    (bin_,) = p.plan({"a": 100.0, "b": 50.0})
    assert sessions(bin_) == [("a", 7), ("b", 4)]
    assert bin_.duty == pytest.approx(0.070)


def test_sessions_that_overflow_the_duty_cycle_get_separate_slots():
    # a: 600 task/s -> b = 35 (56.7 + 41 ms), d_max = min(59, 58.3) = 58.3 ms, occupancy 0.70.
    # b: SLO 80 ms, 200 task/s -> b = 13 (60 + 19 ms), d_max = min(61, 65) = 61 ms, occupancy 0.31.
    # Together: d = 58.3 ms, b would run ceil(200 * 0.0583) = 12: l(35) + l(12) = 41 + 18 = 59 > 58.3.
    p = policy({"a": 100, "b": 80})
    bins = p.plan({"a": 600.0, "b": 200.0})
    assert [sessions(b) for b in bins] == [[("a", 35)], [("b", 13)]]


def test_plan_is_scaled_down_to_the_slots_there_are():
    p = policy({"m": 100}, n_gpus=2)
    assert len(p.plan({"m": 5000.0})) == 6                      # 5 whole slots + a residual
    assignment = p._fit({"m": 5000.0})
    assert [g for g, _ in assignment] == [0, 1]
    assert sum(tp for _, s in assignment for _, _, tp in s) < 5000.0


def test_early_drop_of_requests_that_would_miss_at_their_turn():
    # Before the first rate sample slot 0 holds x and y at b_max, in that order. x runs alone
    # [0, 6] ms (mean l(1) = 6 ms); y (SLO 11.5 ms, D = 12.5 ms) arrives at 1 ms. At its turn,
    # at 6 ms, 6 + l(1) = 6 + 7 ms (mean + std) > 12.5 ms: dropped. Then the three queued x go.
    slos = {"x": 1000, "y": 11.5}
    arrivals = [(0.0, "x"), (0.0, "x"), (0.0, "x"), (0.0, "x"), (0.001, "y")]
    tasks, sim, _ = replay(Nexus, CFG, slos, 1, CURVE, arrivals)
    assert tasks[4].status == "dropped" and tasks[4].reason == "early drop"
    assert tasks[4].t_done == pytest.approx(0.006)
    assert [(b.model, b.size) for b in sim.batches] == [("x", 1), ("x", 3)]
    assert all(r.status == "ok" for r in tasks[:4])


def test_first_allocation_follows_the_first_rate_sample():
    # 100 task/s of one model on 4 slots: before 1 s requests are spread over every slot;
    # afterwards the whole load sits in one residual session on slot 0.
    arrivals = [(i * 0.01, "m") for i in range(300)]
    tasks, sim, p = replay(Nexus, CFG, {"m": 100}, 4, CURVE, arrivals)
    early = {b.slot for b in sim.batches if b.t_dispatch < 1.0}
    late = {b.slot for b in sim.batches if b.t_dispatch > 1.0}
    assert early == {0, 1, 2, 3} and late == {0}
    assert [(info.name, cap) for info, cap in p.slots[0].sessions] == [("m", 9)]
    assert all(r.status == "ok" for r in tasks)


def test_multi_model_poisson_end_to_end():
    slos = {"a": 100, "b": 100, "c": 100}
    arrivals = poisson({"a": 400, "b": 300, "c": 200}, 4.0, seed=4)
    tasks, sim, _ = replay(Nexus, CFG, slos, 4, CURVE, arrivals)
    assert len(tasks) > 3000
    assert all(r.status in ("ok", "dropped") for r in tasks)          # none left unresolved (timeout)
    met = sum(r.status == "ok" and r.t_done - r.t_arrival <= 0.100 + 1e-9 for r in tasks)
    assert met / len(tasks) >= 0.99
