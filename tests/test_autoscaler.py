"""The autoscaler: slots join after the start cost under sustained load and leave, highest rank
first, after the cool-down; it never goes below min_slots; it acts only through reconfigure."""

import numpy as np
import pandas as pd
import pytest

from harness import metrics
from harness.autoscaler import Autoscaled, AutoscalerConfig
from harness.errors import HarnessError
from harness.ledger import Ledger
from harness.placement import Placement, SlotSpec
from harness.records import ledger_tables
from harness.runtimes.sim import SimCluster
from systems.eager import Eager, EagerConfig
from systems.symphony import Symphony, SymphonyConfig
from tests.simkit import cluster, linear_curve, slots, specs

CURVE = linear_curve(1.0, 5.0, 64)
CFG = AutoscalerConfig(enabled=True, initial_slots=1, min_slots=1, interval_s=1.0, scale_up_utilisation=0.7,
                       scale_up_after_s=2.0, scale_down_idle_s=5.0)
START_S = 3.0          # the runtime's cost of starting a slot


def run(policy_cls, policy_cfg, arrivals, n_gpus=4, cfg=CFG):
    full = Placement(tuple(SlotSpec("test", "whole", i, frozenset({"m"})) for i in range(n_gpus)))
    initial = slots({"m"}, cfg.initial_slots)
    ledger = Ledger(initial, [{"m": CURVE}] * len(initial), curves_of=lambda spec: {"m": CURVE})
    sim = SimCluster(ledger, slot_start_s=START_S)
    policy = Autoscaled(policy_cls(sim, specs({"m": 100}), policy_cfg), cfg, full)
    times = np.array(arrivals)
    tasks = sim.run(policy, np.arange(len(times)), ["m"] * len(times), times, {"m": 0.1}, drain=30.0)
    tables = ledger_tables(ledger)
    timeline = metrics.provisioned_timeline(tables["slot_events"], tables["slots"])
    return tasks, sim, timeline


def changes(timeline: pd.DataFrame) -> list[tuple[float, int]]:
    return list(zip(timeline["t"], timeline["slots"]))


def joined_at(sim) -> dict[int, float]:
    return {slot: t for t, slot, event, _ in sim.ledger.slot_events if event == "joined" and t > 0}


def test_slots_join_under_load_and_leave_after_cool_down():
    # 10 s of 400 req/s, one request at a time (max_batch 1: 6 ms each -> 2.4 slots busy), then silence.
    busy = np.arange(0, 10, 1 / 400).tolist()
    tasks, sim, timeline = run(Eager, EagerConfig(max_batch=1), busy + [40.0])
    # Hot from the first tick (t=1); after 2 s more (t=3) a slot is requested; it joins START_S later.
    joined = joined_at(sim)
    assert min(joined.values()) == pytest.approx(3.0 + START_S)
    assert max(timeline["slots"]) >= 3
    # After the load ends (t=10) slots are released, highest rank first, down to min_slots.
    downs = [t for (_, before), (t, n) in zip(changes(timeline), changes(timeline)[1:]) if n < before]
    assert downs and timeline["slots"].iloc[-1] == 1
    assert all(t >= 10 + CFG.scale_down_idle_s for t in downs)
    assert [s.alive for s in sim.slots] == [True] + [False] * (len(sim.slots) - 1)
    left = [(t, slot) for t, slot, event, _ in sim.ledger.slot_events if event == "left"]
    assert all(s1 > s2 for (t1, s1), (t2, s2) in zip(left, left[1:]) if t1 < t2)   # the top goes first
    assert all(r.status is not None for r in tasks)
    assert len(sim.ledger.reconfigurations) >= 2


def test_no_dispatch_to_a_slot_before_it_joins():
    # Symphony at 2,000 req/s needs more than one slot: later slots serve only after joining.
    busy = np.arange(0, 8, 1 / 2000).tolist()
    _, sim, _ = run(Symphony, SymphonyConfig(max_batch=4), busy)
    joined = joined_at(sim)
    first_use = {}
    for b in sim.batches:
        first_use.setdefault(b.slot, b.t_dispatch)
    assert len(first_use) > 1
    for slot, t in first_use.items():
        if slot > 0:
            assert t >= joined[slot] >= CFG.scale_up_after_s + START_S


def test_reconfiguration_records_its_cost():
    busy = np.arange(0, 10, 1 / 400).tolist()
    _, sim, _ = run(Eager, EagerConfig(max_batch=1), busy)
    grown = [r for r in sim.ledger.reconfigurations if r.joining]
    assert grown and grown[0].cost_s == pytest.approx(START_S)         # the run may end before a later one joins
    assert grown[0].before == "1 x TEST" and grown[0].after == "2 x TEST"


def test_bad_autoscaler_config_is_refused():
    sim = cluster({"m": 100}, 2, CURVE)
    policy = Eager(sim, specs({"m": 100}), EagerConfig())
    full = Placement(tuple(SlotSpec("test", "whole", i, frozenset({"m"})) for i in range(2)))
    with pytest.raises(HarnessError, match="min_slots"):
        Autoscaled(policy, AutoscalerConfig(enabled=True, initial_slots=3), full)
