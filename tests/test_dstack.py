"""D-STACK's rules on hand-made profiles, with expectations computed by hand in the comments.

Latencies are linear in the batch between the points given, so l(b) below is exact.
"""

import json
import subprocess
from collections import deque
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import profiles
from harness.core import Task
from harness.errors import HarnessError
from harness.ledger import Ledger
from harness.profiles import LatencyCurve, curves_for
from harness.runtimes.sim import SimCluster
from systems.dstack import (DStack, DStackConfig, Rectangle, batch_rule, knee, lay_out, pack, placement_of,
                            rectangle)
from tests.simkit import slo_of, slots, specs

ROOT = Path(__file__).resolve().parent.parent
MS = 1e-3


def line(c_ms: float, a_ms: float, max_batch: int = 16) -> LatencyCurve:
    """l(b) = c + a*b ms for b = 1..max_batch."""
    return LatencyCurve.from_points([1, max_batch], [c_ms + a_ms, c_ms + a_ms * max_batch])


def flat(ms: float) -> LatencyCurve:
    return LatencyCurve.from_points([1, 16], [ms, ms])


def write_profiles(directory: Path, table: dict[str, dict[str, LatencyCurve]], monkeypatch) -> None:
    """Profile files of GPU type 'toy' (partition -> model -> curve), where the policy looks for them."""
    (directory / "toy").mkdir()
    for partition, curves in table.items():
        models = {m: {"batch": list(range(1, c.max_batch + 1)), "mean_ms": [x * 1e3 for x in c.mean[1:]]}
                  for m, c in curves.items()}
        (directory / "toy" / f"{partition}.json").write_text(json.dumps({"models": models}))
    monkeypatch.setattr(profiles, "PROFILES_DIR", directory)


def run(config, slos_ms, arrivals, partition="whole", drain=1.0):
    """Drive a fresh DStack over one device of 'toy' GPU holding every model; returns (tasks, sim, policy)."""
    models = sorted(slos_ms)
    ledger = Ledger(slots(models, 1, partition), [curves_for("toy", partition, models)],
                    curves_of=lambda spec: curves_for(spec.gpu_type, spec.partition, sorted(spec.models)))
    for s in ledger.slots:
        s.gpu_type = "toy"
    sim = SimCluster(ledger, slot_start_s=0.1)
    policy = DStack(sim, specs(slos_ms), config)
    times = np.array([t for t, _ in arrivals])
    tasks = sim.run(policy, np.arange(len(arrivals)), [m for _, m in arrivals], times, slo_of(slos_ms), drain=drain)
    return tasks, sim, policy


def constant(rates: dict[str, float], duration: float) -> list[tuple[float, str]]:
    return sorted((i / r, m) for m, r in rates.items() for i in range(int(r * duration)))


# Model "a": whole l = 1.8 + 0.2b, 50% l = 1.8 + 0.3b, 25% l = 1.8 + 0.6b (ms).
SHARES_A = [("mps25", 0.25, {"a": line(1.8, 0.6)}), ("mps50", 0.5, {"a": line(1.8, 0.3)}),
            ("whole", 1.0, {"a": line(1.8, 0.2)})]


def test_knee_is_the_smallest_share_within_the_tolerance_of_the_whole_gpu():
    # b=1: whole 2.0, within 10% is <= 2.2: 50% (2.1) is, 25% (2.4) is not.
    # b=2: whole 2.2 -> <= 2.42: 50% (2.4) still is.  b=4: whole 2.6 -> <= 2.86: 50% (3.0) is not: whole.
    assert [knee(SHARES_A, "a", b, 0.10)[0] for b in (1, 2, 4, 8)] == ["mps50", "mps50", "whole", "whole"]
    # A looser tolerance, 25%: b=1 allows <= 2.5, so 25% (2.4) is the knee.
    assert knee(SHARES_A, "a", 1, 0.25) == ("mps25", 0.25)


def test_batch_rule_maximises_throughput_within_half_the_slo_and_the_rate():
    whole = SHARES_A[2][2]["a"]
    # b / l(b) = b / (1.8 + 0.2b) grows with b, so the rule takes the largest b allowed.
    assert batch_rule(whole, 0.009, None, 1.0) == 13      # l <= 4.5 ms: 1.8 + 0.2b <= 4.5, b <= 13.5; no rate yet
    assert batch_rule(whole, 0.005, None, 1.0) == 3       # l <= 2.5 ms: b <= 3.5
    assert batch_rule(whole, 0.008, 300.0, 1.0) == 2      # b <= rate * SLO = 2.4
    assert batch_rule(whole, 0.008, 300.0, 2.1 * MS) == 1   # and l <= the cycle's budget, 2.1 ms: b = 1
    # Not the largest: l jumps after 4, so b/l peaks there (4/3 = 1.33 > 8/7 = 1.14; 3/2.33 = 1.29).
    jump = LatencyCurve.from_points([1, 4, 5, 8], [1.0, 3.0, 6.5, 7.0])
    assert batch_rule(jump, 0.020, None, 1.0) == 4
    # No batch fits: 1.
    assert batch_rule(whole, 0.001, None, 1.0) == 1


def test_right_sizing_finds_the_knee_at_the_whole_gpus_batch_then_batches_on_the_knee():
    # SLO 8 ms, 300 req/s: on the whole GPU b <= 2.4 -> 2; the knee at b=2 is 50% (2.4 <= 2.42);
    # on 50% b=2 still fits (2.4 <= 4). A cycle of 8 ms carries 2.4 requests: 2 runs of 2.
    r = rectangle(SHARES_A, "a", 0.008, 300.0, 0.008, 0.10, 0.0068, 0.85)
    assert r == Rectangle("a", "mps50", 0.5, 2, 2, 2)
    # SLO 9 ms, rate not measured yet: b = 13 on the whole GPU (l = 4.4 <= 4.5); at b = 13 only the whole GPU
    # is within 10% (50%: 5.7 > 4.84). Turns at most SLO - l = 4.6 ms apart: 2 runs in a cycle of 9 ms.
    assert rectangle(SHARES_A, "a", 0.009, None, 0.009, 0.10, 1.0, 0.85) == Rectangle("a", "whole", 1.0, 13, 2, 13)
    # The same model in a cycle of 4 ms (another model's SLO): turns 4.6 ms apart allow one a cycle.
    assert rectangle(SHARES_A, "a", 0.009, None, 0.004, 0.10, 1.0, 0.85).runs == 1
    # Measured at 3,000 req/s, a cycle of 4 ms carries 12 requests, 12 of a batch of 13: planned that full, one
    # cycle in three overflows its run (Poisson); at most 85% full, two runs of 6 leave room for the surplus.
    assert rectangle(SHARES_A, "a", 0.009, 3000.0, 0.004, 0.10, 1.0, fill=1.0) == Rectangle("a", "whole", 1.0, 13, 1, 12)
    assert rectangle(SHARES_A, "a", 0.009, 3000.0, 0.004, 0.10, 1.0, fill=0.85) == \
        Rectangle("a", "whole", 1.0, 13, 2, 6)


def test_turns_are_laid_out_earliest_due_first_within_the_cycle():
    # (release, due, width, model), cycle 10.  a0 (due 5) before b (due 10) at 0; b 2-7; a1, released at 5, 7-9.
    assert lay_out([(0, 5, 2, "a"), (5, 10, 2, "a"), (0, 10, 5, "b")], 10) == [(0, "a"), (2, "b"), (7, "a")]
    # b, released at 8, would end at 11: moved back to end at 10 (7-10).
    assert lay_out([(0, 10, 3, "a"), (8, 10, 3, "b")], 10) == [(0, "a"), (7, "b")]
    # 11 of work in a cycle of 10: end to end (a, b by name, then c), squeezed by 10/11.
    turns = lay_out([(0, 10, 4, "a"), (0, 10, 4, "b"), (5, 10, 3, "c")], 10)
    assert [m for _, m in turns] == ["a", "b", "c"]
    assert [t for t, _ in turns] == pytest.approx([0, 40 / 11, 80 / 11])


def test_levels_are_packed_first_fit_by_decreasing_height():
    # Widths in ms per partition (flat curves), cycle budget 10 ms, two devices.
    width = {"whole": {"A": 6, "B": 2, "C": 3, "D": 1.5, "E": 1.5, "F": 3},
             "mps50": {"B": 3, "C": 4, "D": 2, "E": 2, "F": 4},
             "mps25": {"E": 5, "F": 6}}
    curves = {p: {m: flat(w) for m, w in ws.items()} for p, ws in width.items()}
    rects = [Rectangle("A", "whole", 1.0, 1, 1, 1), Rectangle("B", "mps50", 0.5, 1, 2, 1),
             Rectangle("C", "mps50", 0.5, 1, 1, 1), Rectangle("D", "mps50", 0.5, 1, 3, 1),
             Rectangle("E", "mps25", 0.25, 1, 1, 1), Rectangle("F", "mps25", 0.25, 1, 2, 1)]
    levels = pack(rects, curves, [0, 1], 12 * MS, 10 * MS)
    # A opens level 1 (device 0, whole): 6.  B twice on level 1 (2 each): 8, 10 -- full.
    # C (3 on whole) does not fit: level 2 opens on device 1 (device 0 has no share left), 50%: 4.
    # D three times on level 2 (2 each): 6, 8, 10.  E (5 at 25%) fits nowhere: level 3, device 1, 25%: 5.
    # F (6 at 25%): level 3 has 5 + 6 > 10: level 4, device 1, the last 25%: 6. F again: no level has room and
    # no device share: the one with least planned time after it, level 3 (5 + 6 = 11; level 4 would be 12).
    got = [(lv.device, lv.partition, [r[-1] for r in lv.runs], round(lv.used / MS, 9)) for lv in levels]
    assert got == [(0, "whole", ["A", "B", "B"], 10), (1, "mps50", ["C", "D", "D", "D"], 10),
                   (1, "mps25", ["E", "F"], 11), (1, "mps25", ["F"], 6)]
    # Turns in a cycle of 12 ms (lay_out): level 2's D runs are released at 0, 4, 8 and due at 4, 8, 12, C at 0
    # and due at 12: D at 0-2, C 2-6, D 6-8 (released at 4), D 8-10.
    assert [m for _, m in levels[1].turns] == ["D", "C", "D", "D"]
    assert [t / MS for t, _ in levels[1].turns] == pytest.approx([0, 2, 6, 8])
    placement = placement_of(levels, "toy", "ABCDEF")         # verified: device 1 holds 50 + 25 + 25 = 100%
    assert [round(sum(s.share for s in placement.slots if s.device == d), 9) for d in (0, 1)] == [1.0, 1.0]


# Three models on one device; every SLO 20 ms (cycle 20 ms, budget 17 ms), 900 req/s each.
#   x: whole 4 + 0.1b, 50% 4.2 + 0.1b, 25% 6 + 0.1b       y, z: whole 4 + 0.1b, 50% 4.1 + 0.1b, 25% 4.3 + 0.1b
# On the whole GPU b <= rate * SLO = 18 and l <= 10 ms: b = 16 (the largest profiled). Knees at b = 16 (<= 6.16 ms):
# x 50% (5.8; 25% is 7.6), y and z 25% (5.9). Turns at most SLO - l(16) = 14.2 ms apart: 2 a cycle, which also
# carry the 18 a cycle brings: 2 runs of 9. Widths: x at 50% 5.1; y at 50% 5.0, at 25% 5.2; z at 25% 5.2.
# FFDH: x opens a 50% level: 5.1, 10.2; y: 15.2 there; y again does not fit (20.2): a 25% level, 5.2;
# z: 10.4, 15.6 on it. Two slots, 75% of the device.
THREE = {"whole": {m: line(4.0, 0.1) for m in "xyz"},
         "mps50": {"x": line(4.2, 0.1), "y": line(4.1, 0.1), "z": line(4.1, 0.1)},
         "mps25": {"x": line(6.0, 0.1), "y": line(4.3, 0.1), "z": line(4.3, 0.1)}}


@pytest.mark.parametrize("make_before_break", [False, True])
def test_sim_run_resizes_to_the_packed_levels_and_shares_never_exceed_the_device(tmp_path, monkeypatch,
                                                                                 make_before_break):
    write_profiles(tmp_path, THREE, monkeypatch)
    slos = {"x": 20, "y": 20, "z": 20}
    tasks, sim, policy = run(DStackConfig(make_before_break=make_before_break), slos,
                             constant({m: 900 for m in slos}, 3.0))
    # The first window (1 s) measures 900/s each; the plan replaces the configured whole GPU by two slots,
    # each holding every model and serving those of its level.
    assert sorted((sim.slots[i].partition, sorted(lane.curves)) for i, lane in policy.lanes.items()) == \
        [("mps25", ["y", "z"]), ("mps50", ["x", "y"])]
    assert all(s.models == {"x", "y", "z"} for s in sim.slots)
    assert [(r.partition, r.batch, r.runs, r.items) for r in policy.rects.values()] == \
        [("mps50", 16, 2, 9), ("mps25", 16, 2, 9), ("mps25", 16, 2, 9)]
    # At no moment do the batches running on the device hold more than 100% of it, the re-size included
    # (with make before break, but for the old share's last batches: it serves while the new ones start,
    # 0.1 s, and takes no batch once they have joined); after it, both levels run at once.
    if make_before_break:
        [(t_handover, old)] = [(t, slot) for t, slot, event, why in sim.ledger.slot_events if why == "replaced"]
        t_plan = sim.ledger.reconfigurations[0].t_request
        assert t_handover == pytest.approx(t_plan + 0.1)
        assert max(b.t_start for b in sim.batches if b.slot == old) > t_handover - 0.01      # served till then
        assert all(b.t_dispatch <= t_handover for b in sim.batches if b.slot == old)
        assert all(b.t_dispatch >= t_handover for b in sim.batches if b.slot != old)
        assert peak_share(sim, t_handover + 0.05) <= 1.0 + 1e-9
    else:
        assert peak_share(sim, 0.0) <= 1.0 + 1e-9
    assert peak_share(sim, 1.2) == pytest.approx(0.75)
    after = [t for t in tasks if t.t_arrival >= 1.2]
    assert sum(t.status == "ok" for t in after) / len(after) > 0.99


def peak_share(sim, after: float) -> float:
    """The largest share of the device held by batches running at one moment, from `after` on."""
    ran = [b for b in sim.batches if b.status == "ok" and b.t_start >= after]
    edges = sorted([(b.t_start, sim.slots[b.slot].share) for b in ran] +
                   [(b.t_end, -sim.slots[b.slot].share) for b in ran])      # an end before a start at one time
    return max(np.cumsum([d for _, d in edges]))


def served_every_cycle(sim, tasks, model: str, cycle: float, start: float, end: float) -> list[int]:
    """The cycles in [start, end) that began with a request of `model` waiting and ran no batch of it."""
    dispatched = {t.id: sim.batches[t.batch_id].t_dispatch for t in tasks if t.batch_id >= 0}
    runs = sorted(b.t_dispatch for b in sim.batches if b.model == model)
    missed = []
    for k in range(int(start / cycle), int(end / cycle)):
        begin = k * cycle
        waiting = any(t.model == model and t.t_arrival < begin <= dispatched.get(t.id, np.inf) for t in tasks)
        if waiting and not any(begin <= r < begin + cycle for r in runs):
            missed.append(k)
    return missed


def test_every_model_runs_every_cycle_even_when_another_is_always_more_urgent():
    # One whole GPU, l = 2 + 0.5b ms. fast: SLO 20 ms at 1,000/s; slow: SLO 200 ms at 100/s. Cycle 20 ms, budget 17.
    # fast: b <= 20 and l <= 10 -> 16; 20 a cycle: 2 runs of 10, 7 ms each (turns at most 20 - 10 ms apart
    # also ask for 2). slow: b <= 20 and l <= 17 -> 20; 2 a cycle: 1 run of 2, 3 ms. One level: 7 + 7 + 3 = 17,
    # the configured slot (no restart); turns: fast 0-7 (due at 10), slow 7-10, fast 10-17 (released at 10).
    # Earliest-deadline-first alone would run slow only when its oldest request is 180 ms old; its turn
    # runs it every cycle.
    models = {"fast": 20, "slow": 200}
    arrivals = constant({"fast": 1000, "slow": 100}, 3.0)
    curve = line(2.0, 0.5, 32)
    ledger = Ledger(slots(models, 1), [{m: curve for m in models}])
    sim = SimCluster(ledger)
    policy = DStack(sim, specs(models), DStackConfig())
    times = np.array([t for t, _ in arrivals])
    tasks = sim.run(policy, np.arange(len(arrivals)), [m for _, m in arrivals], times, slo_of(models), drain=1.0)
    assert not sim.ledger.reconfigurations
    assert [m for _, m in policy.lanes[0].turns] == ["fast", "slow", "fast"]
    assert [t / MS for t, _ in policy.lanes[0].turns] == pytest.approx([0, 7, 10])
    assert served_every_cycle(sim, tasks, "slow", 0.020, 1.1, 3.0) == []
    assert served_every_cycle(sim, tasks, "fast", 0.020, 1.1, 3.0) == []
    assert all(t.status == "ok" for t in tasks)


def test_a_turn_is_kept_through_its_cycle_and_spare_time_goes_to_a_run_that_needs_it():
    # One whole GPU, l = 2 + 0.5b ms; a: SLO 20 ms, b: SLO 200 ms; cycle 20 ms. Before any rate is measured
    # (the first second) a runs 2 a cycle (batch 16, 10 ms: turns at most 20 - 10 ms apart), b once (batch 30,
    # 17 ms); 37 ms of runs squeezed end to end into 20: turns a 0, a 5.41, b 10.81 ms.
    models = {"a": 20, "b": 200}
    curve = line(2.0, 0.5, 32)
    arrivals = [(0.0125, "b"),     # b's turn came at 10.81 with nothing waiting: kept, so it runs at once
                (0.0300, "a"),     # cycle 1 (from 20 ms): a's turns at 20 and 25.41 have come: runs at once
                (0.0330, "a"),     # (the slot is free from 32.5 ms) a's second turn of cycle 1: at once
                (0.0360, "a"),     # both taken; its next turn, at 40 ms, still makes its deadline: waits for it
                *[(0.0430, "b")] * 30]   # b's turn is at 50.81, but a run's worth (30) waits: spare time, at once
    ledger = Ledger(slots(models, 1), [{m: curve for m in models}])
    sim = SimCluster(ledger)
    policy = DStack(sim, specs(models), DStackConfig())
    assert [(round(t / MS, 2), m) for t, m in policy.lanes[0].turns] == [(0, "a"), (5.41, "a"), (10.81, "b")]
    times = np.array([t for t, _ in arrivals])
    sim.run(policy, np.arange(len(arrivals)), [m for _, m in arrivals], times, slo_of(models), drain=0.5)
    assert [(b.model, b.size, round(b.t_dispatch / MS, 3)) for b in sim.batches] == \
        [("b", 1, 12.5), ("a", 1, 30.0), ("a", 1, 33.0), ("a", 1, 40.0), ("b", 30, 43.0)]


def test_a_plan_serves_at_once_a_waiting_request_whose_new_turn_has_come():
    # One whole GPU, l = 2 + 0.5b ms; a: SLO 100 ms, cycle 100 ms. Before the plan a runs twice a cycle (batch
    # 32, 18 ms, turns at most 100 - 18 ms apart): turns at 0 and 50 ms. The first request (5 ms) opens the
    # rate window, which closes at 1,005 ms. The request at 1,000 ms takes the turn of 1,000; the one at
    # 1,003 ms waits for the turn at 1,050 (the slot is free from 1,002.5, and a batch of one is not yet
    # needed). The plan at 1,005 ms (3 requests/s: batch 1, still twice a cycle at 0 and 50 ms) gives the
    # slot a new lane that owes this cycle's turns again: the turn at 1,000 has come, so the waiting request
    # runs at 1,005 ms, in the plan's own event, not at the next event (the arrival at 1,040 ms).
    models = {"a": 100}
    ledger = Ledger(slots(models, 1), [{"a": line(2.0, 0.5, 32)}])
    sim = SimCluster(ledger)
    policy = DStack(sim, specs(models), DStackConfig())
    assert [(round(t / MS, 2), m) for t, m in policy.lanes[0].turns] == [(0, "a"), (50, "a")]
    arrivals = [0.005, 1.000, 1.003, 1.040]
    sim.run(policy, np.arange(len(arrivals)), ["a"] * len(arrivals), np.array(arrivals), slo_of(models), drain=0.5)
    assert policy.rates == {"a": 3.0} and not sim.ledger.reconfigurations
    assert [(b.size, round(b.t_dispatch / MS, 3)) for b in sim.batches][:3] == [(1, 5.0), (1, 1000.0), (1, 1005.0)]


def test_a_batch_is_the_largest_that_ends_by_its_first_deadline_on_a_curve_that_rises_or_dips():
    # The size counting down from the model's batch to the first run that ends by the head's deadline: bisected
    # where the curve never falls, scanned where a measured profile dips (both must agree with the scan). The
    # batch rule gives 16 on the rising curve and 10 on the dipping one (10 / 6.0 ms beats 16 / 10.5 ms).
    rising = line(2.0, 0.5, 16)                                          # 2.5 ... 10 ms
    dipping = LatencyCurve.from_points(list(range(1, 17)),
                                       [2.5 + 0.5 * b - (1.5 if b in (9, 10) else 0.0) for b in range(1, 17)])
    assert rising.rising and not dipping.rising
    for curve in (rising, dipping):
        ledger = Ledger(slots({"a": 100}, 1), [{"a": curve}])
        policy = DStack(SimCluster(ledger), specs({"a": 100}), DStackConfig())
        lane = policy.lanes[0]
        top = lane.sizes["a"][2]
        assert top == (16 if curve is rising else 10)
        for head_ms in (3.0, 5.9, 6.0, 6.4, 7.0, 7.1, 8.0, 20.0):
            policy.queues["a"] = deque(Task(i, "a", 0.0, head_ms * MS) for i in range(20))
            scanned = next((n for n in range(top, 0, -1) if curve.mean[n] <= head_ms * MS), 1)
            assert policy._size(lane, "a", 0.0) == scanned, (curve.rising, head_ms)


def test_resizes_only_when_a_rate_moves_past_the_threshold(monkeypatch):
    models = {"m": 50}
    curve = line(2.0, 0.5, 32)

    def plans(arrivals):
        ledger = Ledger(slots(models, 1), [{"m": curve}])
        sim = SimCluster(ledger)
        policy = DStack(sim, specs(models), DStackConfig(rate_window_s=1.0, resize_threshold=0.3))
        made = []
        original = policy._plan
        monkeypatch.setattr(policy, "_plan", lambda rates: (made.append(rates["m"]), original(rates)))
        times = np.array([t for t, _ in arrivals])
        sim.run(policy, np.arange(len(arrivals)), ["m"] * len(arrivals), times, slo_of(models), drain=1.0)
        return made

    steady = constant({"m": 100}, 5.0)
    assert plans(steady) == [100]                       # windows of 100, 100, ...: planned once
    # 120/s after 2 s: +20% stays within 30%; 200/s after 2 s: +100% plans again.
    slightly = steady[:200] + [(2 + i / 120, "m") for i in range(360)]
    assert plans(slightly) == [100]
    doubled = steady[:200] + [(2 + i / 200, "m") for i in range(600)]
    assert plans(doubled) == [100, 200]


@pytest.mark.parametrize("key, value", [("knee_tolerance", -0.1), ("max_fill", 0.0), ("max_fill", 1.5),
                                        ("rate_window_s", 0.0), ("resize_threshold", -1.0)])
def test_bad_config_is_refused(key, value):
    ledger = Ledger(slots({"m": 50}, 1), [{"m": line(2.0, 0.5)}])
    with pytest.raises(HarnessError, match=key):
        DStack(SimCluster(ledger), specs({"m": 50}), DStackConfig(**{key: value}))


def test_sim_run_on_the_measured_h200_profiles(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness", "runtime=sim", "system=dstack", "cluster=h200x1",
                          "cluster.count=2", "models=vision", "workload=poisson", "workload.rate=500", "duration_s=8",
                          f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["slo_attainment"] > 0.99
    # 100 req/s a model fits one H200: the plan keeps one whole GPU for all five models and releases the other.
    assert summary["reconfigurations"] >= 1 and summary["gpus_provisioned_mean"] == pytest.approx(1.0)
