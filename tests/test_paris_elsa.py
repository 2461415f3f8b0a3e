"""PARIS's partitioning and ELSA's dispatch on hand-made profiles, with expectations computed by hand.

Sizes and latencies (ms, exact: linear between b = 1 and 16):
    1g (mig-1g.10gb-emulated)   l = 1 + b       b / l = b / (1 + b)     best 16/17 = 0.941
    3g (mig-3g.40gb-emulated)   l = 1 + b/4     b / l = 4b / (4 + b)    best 64/20 = 3.2
    7g (whole)                  l = 1 + b/10    b / l = 10b / (10 + b)  best 160/26 = 6.154
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import profiles
from harness.core import Slot
from harness.errors import HarnessError
from harness.gpu.partitions import parse_partition
from harness.ledger import Ledger
from harness.profiles import LatencyCurve, curves_for
from harness.runtimes.sim import SimCluster
from systems.paris_elsa import (ParisElsa, ParisElsaConfig, instances, layouts_for, legal_layouts,
                                saturation_batch)
from tests.simkit import slo_of, specs

ROOT = Path(__file__).resolve().parent.parent
G1, G3, G7 = "mig-1g.10gb-emulated", "mig-3g.40gb-emulated", "whole"
CURVES = {G1: LatencyCurve.from_points([1, 16], [2.0, 17.0]), G3: LatencyCurve.from_points([1, 16], [1.25, 5.0]),
          G7: LatencyCurve.from_points([1, 16], [1.1, 2.6])}


def write_profiles(directory: Path, models, monkeypatch) -> None:
    """Profile files of GPU type 'toy' for the three sizes, where the policy looks for them."""
    (directory / "toy").mkdir()
    for partition, c in CURVES.items():
        points = {"batch": list(range(1, 17)), "mean_ms": [x * 1e3 for x in c.mean[1:]]}
        (directory / "toy" / f"{partition}.json").write_text(json.dumps({"models": {m: points for m in models}}))
    monkeypatch.setattr(profiles, "PROFILES_DIR", directory)


def cluster(partitions: list[str], models, devices=None, slot_start_s=0.05) -> SimCluster:
    """Slots of GPU type 'toy', one per partition, every one holding every model (device i by default)."""
    devices = devices or list(range(len(partitions)))
    slots = [Slot(i, f"s{i}", "toy", p, frozenset(models), device=d, share=parse_partition(p).share)
             for i, (p, d) in enumerate(zip(partitions, devices))]
    ledger = Ledger(slots, [{m: CURVES[p] for m in models} for p in partitions],
                    curves_of=lambda spec: curves_for(spec.gpu_type, spec.partition, sorted(spec.models)))
    return SimCluster(ledger, slot_start_s=slot_start_s)


def replay(sim, config, slos_ms, queries, drain=1.0):
    """queries [(t, model, size)], in time order, through a fresh ParisElsa; returns (tasks, policy)."""
    policy = ParisElsa(sim, specs(slos_ms), config)
    tasks = sim.run(policy, np.arange(len(queries)), [m for _, m, _ in queries], np.array([t for t, _, _ in queries]),
                    slo_of(slos_ms), drain=drain, sizes=[b for _, _, b in queries])
    return tasks, policy


def test_saturation_batch_is_the_smallest_reaching_the_fraction_of_the_best():
    # 1g: 0.9 * 0.941 = 0.847 <= b/(1+b) from b = 5.53: 6.  3g: 0.9 * 3.2 = 2.88 <= 4b/(4+b) from b = 10.3: 11.
    # 7g: 0.9 * 6.154 = 5.538 <= 10b/(10+b) from b = 12.4: 13.
    assert [saturation_batch(CURVES[g], 0.100, 0.9) for g in (G1, G3, G7)] == [6, 11, 13]
    # Within an SLO of 10 ms 1g runs b <= 9: best 0.9, 0.81 reached at b = 4.26: 5.  Within 1 ms nothing runs.
    assert saturation_batch(CURVES[G1], 0.010, 0.9) == 5
    assert saturation_batch(CURVES[G1], 0.001, 0.9) == 0


def test_paris_gives_small_batches_to_small_partitions_in_proportion_to_their_work():
    # Per second: 100 queries of 2 (<= 6: 1g, 3 ms each), 50 of 8 (> 6, <= 11: 3g, 3 ms), 10 of 14 (> 13, above
    # every saturation batch: the largest, 7g, 2.4 ms). Work: 1g 0.3, 3g 0.15, 7g 0.024 partition-s/s.
    # Two GPUs, 14 slices: n_g = 14 * work_g / (0.3*1 + 0.15*3 + 0.024*7 = 0.918).
    wanted = instances([G1, G3, G7], {g: {"m": c} for g, c in CURVES.items()}, {"m": {2: 100, 8: 50, 14: 10}},
                       {"m": 0.100}, 0.9, 2)
    assert wanted == pytest.approx({G1: 14 * 0.3 / 0.918, G3: 14 * 0.15 / 0.918, G7: 14 * 0.024 / 0.918})
    # 4.58 x 1g, 2.29 x 3g, 0.37 x 7g. Layouts of 1g, 3g, 7g: 7 x 1g, 3g + 4 x 1g, 7g, 3g + 3g (covered slices,
    # unwanted slices): GPU 0: 7 x 1g (4.58, 2.42), 3g + 4 x 1g (3 + 4 = 7, 0), 7g (2.56), 3g + 3g (6): 3g + 4 x 1g.
    # Left 0.58 x 1g, 1.29 x 3g, 0.37 x 7g. GPU 1: 7 x 1g (0.58), 3g + 4 x 1g (3.58, 3.42), 7g (2.56),
    # 3g + 3g (3.86, 2.14): 3g + 3g.
    assert layouts_for(wanted, [G1, G3, G7], 2) == [(G3, G1, G1, G1, G1), (G3, G3)]


def test_only_legal_mig_layouts():
    every = legal_layouts(["1g.10gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"])
    assert len(every) == 12
    assert ("4g.40gb", "3g.40gb") in every and ("3g.40gb", "3g.40gb") in every
    assert ("2g.20gb", "2g.20gb", "2g.20gb", "1g.10gb") in every
    # Never two 4g (only one may start, at memory slice 0), nor 3g + 3g + 1g (two 3g take all eight memory
    # slices), nor 4 x 2g (three start positions).
    assert all(layout.count("4g.40gb") <= 1 and layout.count("2g.20gb") <= 3 for layout in every)
    assert ("3g.40gb", "3g.40gb", "1g.10gb") not in every
    assert legal_layouts(["1g.10gb", "3g.40gb", "7g.80gb"]) == [
        ("1g.10gb",) * 7, ("3g.40gb",) + ("1g.10gb",) * 4, ("7g.80gb",), ("3g.40gb", "3g.40gb")]
    assert legal_layouts(["1g.20gb"]) == [("1g.20gb",) * 4]         # two memory slices each


def test_elsa_sends_each_query_to_the_smallest_partition_that_meets_its_deadline():
    sim = cluster([G1, G3, G7], ["m", "tight"])
    queries = [(0.0, "m", 8), (0.0, "m", 8), (0.0, "m", 8), (0.0, "m", 16), (0.0, "tight", 1), (0.0, "m", 17)]
    tasks, _ = replay(sim, ParisElsaConfig(plan_after_s=10.0, drop_late=False), {"m": 20, "tight": 1}, queries)
    # SLO 20 ms. 1st: 1g idle, 9 ms. 2nd: 1g frees at 9, + 9 = 18 <= 20: 1g again. 3rd: 1g 27 > 20; 3g 0 + 3.
    # 4th (16): 1g 27 + 17; 3g 3 + 5 = 8: 3g.  "tight" (SLO 1 ms, 1): 1g 27 + 2, 3g 8 + 1.25, 7g 0 + 1.1: none
    # meets 1 ms, so the earliest finisher, 7g.  17 items: larger than every profiled batch, dropped.
    assert [(b.slot, b.size) for b in sim.batches] == [(0, 8), (0, 8), (1, 8), (1, 16), (2, 1)]
    assert (tasks[-1].status, tasks[-1].reason) == ("dropped", "too large")
    # With drop_late (the default), "tight" is dropped: no partition finishes it in time.
    sim = cluster([G1, G3, G7], ["m", "tight"])
    tasks, _ = replay(sim, ParisElsaConfig(plan_after_s=10.0), {"m": 20, "tight": 1}, queries)
    assert [(b.slot, b.size) for b in sim.batches] == [(0, 8), (0, 8), (1, 8), (1, 16)]
    assert [(t.status, t.reason) for t in tasks[-2:]] == [("dropped", "late"), ("dropped", "too large")]


def test_first_idle_baseline_sends_the_head_of_one_queue_to_the_first_idle_slot():
    sim = cluster([G1, G3, G7], ["m", "tight"])
    queries = [(0.0, "m", 8)] * 4 + [(0.0, "m", 4), (0.0, "tight", 1)]
    tasks, _ = replay(sim, ParisElsaConfig(dispatch="first_idle", plan_after_s=10.0), {"m": 20, "tight": 1}, queries)
    # 1g, 3g, 7g take the first three (9, 3, 1.8 ms); the 4th waits for 7g (free at 1.8, ends 3.6), the 5th for
    # 3g (free at 3); "tight" (due at 1 ms) reaches 7g at 3.6 and is dropped as late -- or, without drop_late,
    # runs there late.
    assert [(b.slot, b.size, round(b.t_dispatch * 1e3, 6)) for b in sim.batches] == [
        (0, 8, 0), (1, 8, 0), (2, 8, 0), (2, 8, 1.8), (1, 4, 3)]
    assert (tasks[-1].status, tasks[-1].reason) == ("dropped", "late")
    sim = cluster([G1, G3, G7], ["m", "tight"])
    replay(sim, ParisElsaConfig(dispatch="first_idle", plan_after_s=10.0, drop_late=False), {"m": 20, "tight": 1},
           queries)
    assert (sim.batches[-1].slot, round(sim.batches[-1].t_dispatch * 1e3, 6)) == (2, 3.6)


def by_device(sim) -> list[list[str]]:
    devices = sorted({s.device for s in sim.slots if s.alive})
    return [sorted((s.partition for s in sim.slots if s.alive and s.device == d), reverse=True) for d in devices]


@pytest.mark.parametrize("make_before_break, joining", [(True, [7]), (False, [5, 2])])
def test_paris_partitions_the_cluster_from_the_queries_it_saw(tmp_path, monkeypatch, make_before_break, joining):
    write_profiles(tmp_path, ["m"], monkeypatch)
    sim = cluster([G7, G7], ["m"])
    # The rates of the hand computation above for 2 s; PARIS counts the first second.
    queries = sorted([(i / 100, "m", 2) for i in range(200)] + [(i / 50, "m", 8) for i in range(100)] +
                     [(i / 10, "m", 14) for i in range(20)])
    tasks, policy = replay(sim, ParisElsaConfig(make_before_break=make_before_break), {"m": 100}, queries)
    assert {b: round(n) for b, n in policy.seen["m"].items()} == {2: 100, 8: 50, 14: 10}
    # Make before break: both GPUs at once, each whole GPU serving until its new partitions joined.
    # Otherwise two waves: GPU 0 first, then GPU 1, so one of them serves all along.
    assert by_device(sim) == [[G3, G1, G1, G1, G1], [G3, G3]]
    assert [len(r.joining) for r in sim.ledger.reconfigurations] == joining
    assert all(t.status == "ok" for t in tasks)
    replaced = [slot for _, slot, _, why in sim.ledger.slot_events if why == "replaced"]
    assert replaced == ([0, 1] if make_before_break else [])


@pytest.mark.parametrize("partition, expected", [(G1, [[G1] * 7] * 2), (G3, [[G3] * 2] * 2), (G7, [[G7]] * 2)])
def test_homogeneous_baselines_cut_every_gpu_into_one_size(tmp_path, monkeypatch, partition, expected):
    write_profiles(tmp_path, ["m"], monkeypatch)
    sim = cluster([G7, G7], ["m"])
    queries = [(i / 10, "m", 4) for i in range(10)]
    replay(sim, ParisElsaConfig(partitioning=partition, dispatch="first_idle"), {"m": 100}, queries)
    assert by_device(sim) == expected


@pytest.mark.parametrize("key, value, match", [("dispatch", "random", "dispatch"), ("saturation", 0.0, "saturation"),
                                               ("plan_after_s", 0.0, "plan_after_s"),
                                               ("partitioning", "mig-2g.20gb-emulated", "partitioning")])
def test_bad_config_is_refused(key, value, match):
    with pytest.raises(HarnessError, match=match):
        ParisElsa(cluster([G1, G3, G7], ["m"]), specs({"m": 20}), ParisElsaConfig(**{key: value}))


def test_sim_run_of_batched_queries_on_the_measured_h200_profiles(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness", "runtime=sim", "system=paris_elsa", "cluster=h200x1",
                          "cluster.count=2", "models=vision", "workload=batched_queries", "workload.rate=600",
                          "duration_s=8", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["slo_attainment"] > 0.99
    # PARIS cut both GPUs into MIG-sized partitions (the H200 profiles hold 1g, 3g and the whole GPU).
    # (one move: the new partitions load beside the whole GPUs, which serve until they join).
    assert summary["reconfigurations"] == 1 and summary["slots_total"] > 2
