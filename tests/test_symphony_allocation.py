"""Symphony's epoch allocation of models to sub-clusters (allocation=epoch), with allocations computed by hand.

On the sleep model l(b) = 1.082 ms * b + 5.204 ms, SLO 100 ms (budget for the target batch 97.9 ms), the
demand of a model at a constant rate r with target batch b is 1.25 * r * l(b)/b GPUs:
  100 req/s: b = 8,  l(8) = 13.86 ms:   1.25 * 100 * 1.7325 ms  = 0.2165625
  400 req/s: b = 25, l(25) = 32.254 ms: 1.25 * 400 * 1.29016 ms = 0.64508
  600 req/s: b = 33, l(33) = 40.91 ms:  1.25 * 600 * 1.2397 ms  = 0.929773
 1500 req/s: b = 51, l(51) = 60.386 ms: 1.25 * 1500 * 1.184039 ms = 2.220074
"""

from collections import Counter

import numpy as np
import pytest

import systems.symphony as symphony
from harness.autoscaler import Autoscaled, AutoscalerConfig
from harness.errors import HarnessError
from harness.ledger import Ledger
from harness.placement import Placement, SlotSpec
from harness.runtimes.sim import SimCluster
from systems._pool import Pools
from systems.symphony import Symphony, SymphonyConfig, sub_clusters
from tests.simkit import cluster, linear_curve, poisson, replay, slo_of, slots, specs

CURVE = linear_curve(1.082, 5.204, 64)
ONE_PER_SLOT = SymphonyConfig(allocation="epoch", epoch_s=1.0, slot_memory_gib=1.0)   # a slot holds one model


def steady(rates: dict[str, float], start: float, end: float) -> list[tuple[float, str]]:
    """Constant arrivals, half a gap off the 50 ms rate samples' edges, so every sample counts the same."""
    return [(start + (i + 0.5) / r, m) for m, r in rates.items() for i in range(int(r * (end - start)))]


def recording(monkeypatch, sim) -> list[tuple[float, dict[str, list[int]]]]:
    """(time, model -> its sub-cluster's slots) of every allocation the policy makes."""
    made = []

    def record(*args):
        found = sub_clusters(*args)
        made.append((sim.now(), {m: ranks for models, ranks in found for m in models}))
        return found

    monkeypatch.setattr(symphony, "sub_clusters", record)
    return made


def assert_served_within(made, batches) -> None:
    """Every batch went to a slot of its model's sub-cluster as last allotted before its dispatch (a batch
    sent at the very instant of an allocation may come before or after it, and is not judged)."""
    ends = [t for t, _ in made[1:]] + [float("inf")]
    for (start, allotted), end in zip(made, ends):
        for b in batches:
            if start < b.t_dispatch < end:
                assert b.slot in allotted[b.model], (b.model, b.slot, b.t_dispatch)


def test_restricted_pools_keep_each_slots_predicted_free_time():
    pools = Pools(slots({"a", "b"}, 5))
    pools.book(1, 0.5)
    pools.book(2, 0.3)
    pools.remove(4)
    pools.restrict({"a": [0, 1, 4], "b": [2]})          # slot 3: no model's; slot 4 has left
    a, b = pools.of("a"), pools.of("b")
    assert sorted(r for r in a.free_at) == [0, 1] and list(b.free_at) == [2]
    assert a.peek(0.0) == (0, 0.0)                     # slot 0 idle
    pools.book(0, 0.9)
    assert a.peek(0.0) == (1, 0.5) and b.peek(0.0) == (2, 0.3)
    pools.book(2, 0.7)                                  # a booking reaches the slot's one pool
    pools.restrict({"a": [2, 3], "b": [0, 1]})          # slot 3 comes back idle, the others as booked
    assert pools.of("a").peek(0.0) == (3, 0.0)
    assert pools.of("b").peek(0.0) == (1, 0.5)
    pools.book(3, 0.8)
    assert pools.of("a").peek(0.0) == (2, 0.7)


def test_fewest_sub_clusters_by_memory_even_demand_and_slots_by_demand_per_slot():
    # Memory 1 GiB each, 2 GiB per slot: first-fit decreasing packs 4 models into 2 sub-clusters.
    # Most demanding first, to the least loaded with room: a (3) -> 0; b (1) -> 1; c (0.5) -> 1 (1 < 3);
    # d (0.5) -> 0, the only one with room. Loads 3.5 and 1.5.
    # Slots (8): one each, then each to the highest demand per slot: 0 (3.5), 0 (1.75), 1 (1.5), 0 (1.17),
    # 0 (0.875), 1 (0.75): 5 and 3 (0.7 and 0.5 per slot; 6 and 2 would leave 0.75).
    # Layout: ceil(3.5) = 4 and ceil(1.5) = 2 slots from the bottom, the one beyond each above them all.
    demand = {"a": 3.0, "b": 1.0, "c": 0.5, "d": 0.5}
    found = sub_clusters(demand, dict.fromkeys(demand, 1.0), 2.0, list(range(8)))
    assert found == [(["a", "d"], [0, 1, 2, 3, 6]), (["b", "c"], [4, 5, 7])]


def test_memory_decides_where_a_model_may_go():
    # big takes 3 of a slot's 4 GiB; first-fit decreasing: {big, x}, {y, z}: 2 sub-clusters.
    # x (2) -> 0; y (1) -> 1; big (0.2) -> 1 (load 1 < 2; 1 + 3 GiB fits); z (0.1) -> 0, as 1 is full.
    # Slots (6): loads 2.1, 1.2: 0, 1, 0, 0 -> 4 and 2; layout 3 and 2 from the bottom, 0's fourth on top.
    demand = {"big": 0.2, "x": 2.0, "y": 1.0, "z": 0.1}
    memory = {"big": 3.0, "x": 1.0, "y": 1.0, "z": 1.0}
    assert sub_clusters(demand, memory, 4.0, list(range(6))) == [(["x", "z"], [0, 1, 2, 5]), (["y", "big"], [3, 4])]
    # Two sub-clusters would hold these (2+2, 2+1+1 GiB), but going by demand c (5) -> 0, d (4) -> 1,
    # a (2 GiB) -> 1 (load 4 < 5), b (2 GiB) -> 0 (5 = 5, fewer models), and e (2 GiB) fits neither: a third.
    demand = {"a": 1.0, "b": 1.0, "c": 5.0, "d": 4.0, "e": 1.0}
    memory = {"a": 2.0, "b": 2.0, "c": 1.0, "d": 1.0, "e": 2.0}
    found = sub_clusters(demand, memory, 4.0, list(range(6)))
    assert [models for models, _ in found] == [["c", "b"], ["d", "a"], ["e"]]
    assert [ranks for _, ranks in found] == [[0, 1, 2], [3, 4], [5]]     # loads 6, 5, 1: 3, 2, 1 slots


def test_before_any_rate_the_models_and_slots_are_split_evenly():
    # 10 models of 1 GiB, 4 GiB per slot: 3 sub-clusters; no demand: models and slots go round.
    models = [f"m{i}" for i in range(10)]
    found = sub_clusters(dict.fromkeys(models, 0.0), dict.fromkeys(models, 1.0), 4.0, list(range(10)))
    assert found == [(["m0", "m3", "m6", "m9"], [0, 3, 4, 5]), (["m1", "m4", "m7"], [1, 6, 7]),
                     (["m2", "m5", "m8"], [2, 8, 9])]
    # Fewer slots than sub-clusters: they take the slots in turn.
    assert [ranks for _, ranks in sub_clusters(dict.fromkeys(models, 0.0), dict.fromkeys(models, 1.0), 4.0,
                                                [0, 1])] == [[0], [1], [0]]


def test_each_model_is_served_by_its_sub_cluster_made_again_each_epoch(monkeypatch):
    # hot at 400 req/s and cold at 100 on 8 slots, one model per slot's memory: 2 sub-clusters.
    # At 0 no rate: 4 slots each, [0, 2, 3, 4] and [1, 5, 6, 7]. At the epoch of 1 s the rates are 400
    # and 100: demands 0.64508 and 0.2165625, slots 0, 0, 1, 0, 0, 0 -> 6 and 2; one each from the
    # bottom (ceil), the rest on top: hot [0, 2, 3, 4, 5, 6], cold [1, 7].
    sim = cluster({"hot": 100, "cold": 100}, 8, CURVE)
    made = recording(monkeypatch, sim)
    policy = Symphony(sim, specs({"hot": 100, "cold": 100}), ONE_PER_SLOT)
    demand = {}
    sim.call_at(2.0, lambda: demand.update({m: policy.demand(st) for m, st in policy.state.items()}))
    arrivals = sorted(steady({"hot": 400, "cold": 100}, 0.0, 3.0))
    times = np.array([t for t, _ in arrivals])
    tasks = sim.run(policy, np.arange(len(times)), [m for _, m in arrivals], times, slo_of({"hot": 100, "cold": 100}),
                    drain=1.0)
    assert made[0] == (0.0, {"hot": [0, 2, 3, 4], "cold": [1, 5, 6, 7]})
    assert made[1] == (1.0, {"hot": [0, 2, 3, 4, 5, 6], "cold": [1, 7]})
    assert demand == pytest.approx({"hot": 0.64508, "cold": 0.2165625})
    assert_served_within(made, sim.batches)
    # Every slot of each sub-cluster takes turns (earliest_free); nothing is lost.
    late = {m: {b.slot for b in sim.batches if b.model == m and b.t_dispatch > 1.0} for m in ("hot", "cold")}
    assert late == {"hot": {0, 2, 3, 4, 5, 6}, "cold": {1, 7}}
    assert all(t.status == "ok" for t in tasks)


def test_lowest_rank_keeps_the_slots_beyond_the_demand_idle_at_the_top():
    # As above with slot_choice=lowest_rank: each model's ceil(demand) = 1 slot sits at the bottom (hot 0,
    # cold 1) and takes all its batches; slots 2-7 stay idle once the epoch has made the sub-clusters.
    config = SymphonyConfig(allocation="epoch", epoch_s=1.0, slot_memory_gib=1.0, slot_choice="lowest_rank")
    tasks, sim, _ = replay(Symphony, config, {"hot": 100, "cold": 100}, 8, CURVE,
                           sorted(steady({"hot": 400, "cold": 100}, 0.0, 3.0)))
    assert Counter((b.model, b.slot) for b in sim.batches if b.t_dispatch > 1.0).keys() == {("hot", 0), ("cold", 1)}
    assert all(t.status == "ok" for t in tasks)


def test_slots_joining_and_leaving_with_the_autoscaler(monkeypatch):
    # a at 1,500 req/s and b at 600 for 12 s, then both at 100 to 40 s; one model per slot; lowest_rank;
    # 2 of 6 slots to start. Slot 0 (a's alone) is saturated and the mean utilisation above 0.7, so slots
    # join at 6 s and 12 s (asked at 3 s and 9 s, 3 s to start), each making the sub-clusters again:
    #   3 slots, demands 2.220074 and 0.929773: 2 and 1, a [0, 1], b [2];
    #   4 slots: 0 (2.22), then 0 (1.11 > 0.93): 3 and 1, ceil(2.22) = 3, a [0, 1, 2], b [3].
    # Once the load falls both need one slot (0.2165625 each), at the bottom: a [0], b [1]; the idle top
    # leaves, highest first, and the last allocation serves the two slots left.
    full = Placement(tuple(SlotSpec("test", "whole", i, frozenset({"a", "b"})) for i in range(6)))
    ledger = Ledger(slots({"a", "b"}, 2), [{"a": CURVE, "b": CURVE}] * 2,
                    curves_of=lambda spec: {m: CURVE for m in spec.models})
    sim = SimCluster(ledger, slot_start_s=3.0)
    made = recording(monkeypatch, sim)
    scaler = AutoscalerConfig(enabled=True, initial_slots=2, min_slots=1, interval_s=1.0, scale_up_utilisation=0.7,
                              scale_up_after_s=2.0, scale_down_idle_s=5.0)
    config = SymphonyConfig(allocation="epoch", epoch_s=1.0, slot_memory_gib=1.0, slot_choice="lowest_rank")
    policy = Autoscaled(Symphony(sim, specs({"a": 100, "b": 100}), config), scaler, full)
    arrivals = sorted(steady({"a": 1500, "b": 600}, 0.0, 12.0) + steady({"a": 100, "b": 100}, 12.0, 40.0))
    times = np.array([t for t, _ in arrivals])
    tasks = sim.run(policy, np.arange(len(times)), [m for _, m in arrivals], times, slo_of({"a": 100, "b": 100}),
                    drain=1.0)
    events = [(t, slot, event) for t, slot, event, _ in sim.ledger.slot_events if event in ("joined", "left")]
    assert [(t, slot) for t, slot, e in events if e == "joined" and t > 0] == [(6.0, 2), (12.0, 3)]
    assert [slot for _, slot, e in events if e == "left"] == [3, 2]
    at = dict(made)
    assert at[6.0] == {"a": [0, 1], "b": [2]}
    assert at[12.0] == {"a": [0, 1, 2], "b": [3]}
    assert made[-1][1] == {"a": [0], "b": [1]}
    assert [s.alive for s in sim.slots] == [True, True, False, False]
    assert_served_within(made, sim.batches)
    assert all(t.status == "ok" for t in tasks if t.t_arrival >= 14.0)


def test_one_sub_cluster_is_the_plain_dispatcher():
    # Memory for every model on every slot: one sub-cluster of all slots, made again each epoch, and the
    # very same batches on the very same slots as with no allocation, under either slot choice.
    arrivals = poisson({"a": 300, "b": 150, "c": 50}, 4.0, seed=1)
    slos = {"a": 100, "b": 80, "c": 100}
    for choice in ("earliest_free", "lowest_rank"):
        _, plain, _ = replay(Symphony, SymphonyConfig(slot_choice=choice), slos, 4, CURVE, arrivals)
        _, epoch, _ = replay(Symphony, SymphonyConfig(slot_choice=choice, allocation="epoch", epoch_s=0.5), slos, 4,
                             CURVE, arrivals)
        assert [(b.model, b.slot, b.size, b.t_dispatch) for b in epoch.batches] == \
            [(b.model, b.slot, b.size, b.t_dispatch) for b in plain.batches]


@pytest.mark.parametrize("bad, key", [({"allocation": "static"}, "system.allocation"),
                                      ({"epoch_s": 0.0}, "system.epoch_s"),
                                      ({"model_memory_gib": 20.0}, "system.model_memory_gib"),
                                      ({"memory_gib_per_model": {"x": 1.0}}, "system.memory_gib_per_model")])
def test_bad_allocation_setting_is_named(bad, key):
    with pytest.raises(HarnessError, match=key):
        replay(Symphony, SymphonyConfig(**{"allocation": "epoch", **bad}), {"m": 100}, 1, CURVE, [])


def test_allocation_needs_every_slot_to_hold_every_model():
    partial = [slots({"a"}, 1)[0], slots({"a", "b"}, 2)[1]]
    ledger = Ledger(partial, [{"a": CURVE}, {"a": CURVE, "b": CURVE}])
    with pytest.raises(HarnessError, match="system.allocation=none"):
        Symphony(SimCluster(ledger), specs({"a": 100, "b": 100}), SymphonyConfig(allocation="epoch"))
