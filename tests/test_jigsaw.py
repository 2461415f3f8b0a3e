"""JigsawServe: the allocation MILP against hand-checked optima, budgets, over capacity, packing, sim runs."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from harness.apps import App, AppNode
from harness.core import ModelSpec, Slot
from harness.errors import HarnessError
from harness.ledger import Ledger
from harness.live import loop as precise
from harness.live.cluster import LiveCluster
from harness.placement import SLEEP, SlotSpec
from harness.profiles import LatencyCurve
from harness.run import execute
from harness.runtimes.sim import SimCluster
from harness.search import compose
from systems import jigsaw
from systems._milp import Demand, Segment, _stretched, solve
from systems._segments import devices_needed, fill_shared, pack

SEGMENTS = [Segment("mps25", 0.25), Segment("mps50", 0.5), Segment("whole", 1.0)]
SETTINGS = dict(budget_per_batch=2.0, budget_split="graph", headroom=1.0, accuracy_scaling=True)


def curves(ms: dict[tuple[str, str], float]):
    """Batch-1-only profiles: l(1) in ms per (model, partition)."""
    table = {key: LatencyCurve.from_points([1], [v]) for key, v in ms.items()}
    return lambda model, partition: table[model, partition]


# Two tasks in a chain. Task A has a slow variant (accuracy 100, relative 1.0) and a fast one (90, relative 0.9);
# task B one model. SLO 50 ms, accuracy target 0.95, 100 requests/s, one task of each per request.
PAIR = App("pair", 0.050, (AppNode("A", "a_slow", variants=("a_slow", "a_fast"), accuracy=(100.0, 90.0)),
                           AppNode("B", "b", after=(0,))), accuracy=0.95)
PAIR_MS = {("a_slow", "mps25"): 20, ("a_slow", "mps50"): 12.5, ("a_slow", "whole"): 10,   # 50, 80, 100 tasks/s
           ("a_fast", "mps25"): 5, ("a_fast", "mps50"): 4, ("a_fast", "whole"): 2.5,      # 200, 250, 400
           ("b", "mps25"): 40, ("b", "mps50"): 10, ("b", "whole"): 5}                     # 25, 100, 200


def test_the_solver_finds_the_hand_checked_optimum():
    # By hand. Batches of one: a task's latency is 2 x l(1) (the batch ahead, then its own), on a segment of its
    # own or shared; per variant and segment, latency and rate:
    #   a_slow  mps25  40 ms  50/s   mps50  25 ms  80/s   whole  20 ms 100/s
    #   a_fast  mps25  10 ms 200/s   mps50   8 ms 250/s   whole   5 ms 400/s
    #   b       mps25  80 ms  25/s   mps50  20 ms 100/s   whole  10 ms 200/s   (b on mps25 is over the 50 ms SLO)
    # Accuracy 0.95 needs at least half the requests on a_slow (0.5 x 1.0 + 0.5 x 0.9). B's 100/s take all of an
    # mps50 or half a whole GPU: 0.5 GPU at least.
    # - b on an mps50 (20 ms) leaves A 30 ms: a_slow on a shared mps50 (25 ms) at 50/s takes 0.625 of it and
    #   a_fast 0.2: one mps50 holds both. Total 0.5 + 0.5 = 1.0.
    # - b on half a whole GPU (10 ms) leaves A 40 ms: a_slow's 50/s fill the other half, a_fast needs a segment
    #   more (0.25 at least): 1.25. So 1.0: with b on an mps50, A needs an mps50 at least (on mps25 a_slow
    #   takes 40 ms).
    allocation = solve([Demand(PAIR, 100.0, (1.0, 1.0), "apps.pair")], SEGMENTS, curves(PAIR_MS), 4, **SETTINGS)
    assert allocation.share == pytest.approx(1.0)
    segments = Counter(allocation.shared)
    for r in allocation.replicas:
        segments[r.partition] += r.count
    assert segments == {"mps50": 2}
    runs = {(r.variant, r.partition): r.count + r.part for r in allocation.replicas}
    assert runs.keys() == {("a_slow", "mps50"), ("a_fast", "mps50"), ("b", "mps50")} and runs["b", "mps50"] == 1
    assert all(r.count == 0 for r in allocation.replicas if r.node == 0)          # A's variants share one
    # The request mix: a_slow's share c keeps the accuracy (c >= 0.5) and fits the shared mps50
    # (c x 100/80 + (1 - c) x 100/250 <= 1, so c <= 0.706).
    mix = dict(allocation.plans["pair"])
    assert 0.5 - 1e-6 <= mix[("a_slow", "b")] <= 0.706 and sum(mix.values()) == pytest.approx(1.0)
    assert allocation.served == {"pair": pytest.approx(1.0)} and allocation.note == ""
    a, b = allocation.budgets["pair"]
    assert a >= 0.025 - 1e-9 and b >= 0.020 - 1e-9 and a + b == pytest.approx(0.050)
    # Without accuracy scaling all 100/s run a_slow: b on half a whole GPU (10 ms) leaves A 40 ms, a_slow takes
    # the other half (50/s) and an mps25 (50/s): 1.25 (b on an mps50 leaves A 30 ms: two mps50 or a whole GPU, 1.5).
    fixed = solve([Demand(PAIR, 100.0, (1.0, 1.0), "apps.pair")], SEGMENTS, curves(PAIR_MS), 4,
                  **{**SETTINGS, "accuracy_scaling": False})
    assert fixed.share == pytest.approx(1.25) and dict(fixed.plans["pair"]) == {("a_slow", "b"): pytest.approx(1.0)}
    # Whole GPUs only (the Loki-style baseline): at best 0.5 (a_slow) + 0.125 (a_fast) + 0.5 (b) of a GPU: two GPUs.
    whole = solve([Demand(PAIR, 100.0, (1.0, 1.0), "apps.pair")], SEGMENTS[2:], curves(PAIR_MS), 4, **SETTINGS)
    assert whole.share == pytest.approx(2.0)


# A chain of a heavy task x and a light one z, one variant each, 100 ms SLO, 30 requests/s.
CHAIN = App("chain", 0.100, (AppNode("x", "x"), AppNode("z", "z", after=(0,))))
CHAIN_MS = {("x", "mps25"): 200, ("x", "mps50"): 30, ("x", "whole"): 12.5,   # 5, 33.3, 80 tasks/s
            ("z", "mps25"): 10, ("z", "mps50"): 5, ("z", "whole"): 2.5}


def test_an_app_left_with_zero_budgets_gets_the_even_split_not_a_division_by_zero():
    # A solution that serves none of an app may leave its budget variables at 0 (they bind nothing); a
    # 60,000 req/s compound_apps run stopped on it.
    assert _stretched(CHAIN, [0.0, 0.0]) == pytest.approx((0.050, 0.050))
    assert _stretched(CHAIN, [0.030, 0.020]) == pytest.approx((0.060, 0.040))


def test_graph_aware_budgets_beat_an_even_split():
    # By hand (batches of one, 2 x l(1) each): x on an mps50 needs 60 ms, z on an mps25 20 ms: 80 ms <= 100 ms,
    # 0.75 GPU, with the split the graph allows. An even split gives each 50 ms: x must then run on a whole GPU
    # (25 ms), 0.375 of it, and z beside it (5 ms, 0.075): 1.0.
    demand = [Demand(CHAIN, 30.0, (1.0, 1.0), "apps.chain")]
    graph = solve(demand, SEGMENTS, curves(CHAIN_MS), 4, **SETTINGS)
    even = solve(demand, SEGMENTS, curves(CHAIN_MS), 4, **{**SETTINGS, "budget_split": "even"})
    assert graph.share == pytest.approx(0.75) and even.share == pytest.approx(1.0)
    bx, bz = graph.budgets["chain"]
    assert bx >= 0.060 - 1e-9 and bz >= 0.020 - 1e-9 and bx + bz == pytest.approx(0.100)   # grown to the SLO
    assert even.budgets["chain"] == pytest.approx((0.050, 0.050))


def test_budgets_split_along_every_path_of_a_diamond():
    # scene -> (content, logo) -> verdict: three tasks on each path; an even split gives each a third.
    nodes = (AppNode("scene", "x"), AppNode("content", "z", after=(0,)), AppNode("logo", "z", after=(0,)),
             AppNode("verdict", "z", after=(1, 2)))
    diamond = App("diamond", 0.300, nodes)
    assert diamond.paths == ((0, 1, 3), (0, 2, 3))
    demand = [Demand(diamond, 10.0, (1.0, 1.0, 2.0, 1.0), "apps.diamond")]
    even = solve(demand, SEGMENTS, curves(CHAIN_MS), 4, **{**SETTINGS, "budget_split": "even"})
    assert even.budgets["diamond"] == pytest.approx((0.1, 0.1, 0.1, 0.1))
    graph = solve(demand, SEGMENTS, curves(CHAIN_MS), 4, **SETTINGS)
    for path in diamond.paths:
        assert sum(graph.budgets["diamond"][i] for i in path) <= 0.300 + 1e-9
    assert {r.node for r in graph.replicas} == {0, 1, 2, 3}           # every task has somewhere to run


def test_demand_beyond_the_gpus_is_served_in_part_with_a_one_line_reason():
    # 200 requests/s on one GPU. A request costs least GPU time with x and z sharing the whole GPU (25 + 5 ms):
    # 1/80 + 1/400 = 0.015 GPU-s (x on mps50: 1/33.3 per half GPU), so one GPU serves 66.7/s: a third.
    allocation = solve([Demand(CHAIN, 200.0, (1.0, 1.0), "apps.chain")], SEGMENTS, curves(CHAIN_MS), 1, **SETTINGS)
    assert allocation.served["chain"] == pytest.approx(1 / 3, rel=1e-6)
    assert allocation.note == ("over capacity: 1 GPUs serve only chain 33% of 200 req/s within the SLOs and "
                               "accuracy targets; the rest is shed")


def test_an_app_no_variant_can_serve_is_a_config_error_naming_the_key():
    tight = App("chain", 0.020, CHAIN.nodes)      # x alone needs 25 ms even on a whole GPU
    with pytest.raises(HarnessError) as err:
        solve([Demand(tight, 1.0, (1.0, 1.0), "apps.chain")], SEGMENTS, curves(CHAIN_MS), 4, **SETTINGS)
    assert str(err.value) == ("apps.chain: no choice of variants keeps accuracy >= 1 within the 20 ms SLO on "
                              "segments mps25, mps50, whole; lower the accuracy target or raise slo_ms")
    strict = App("pair", 0.050, PAIR.nodes, accuracy=1.0)     # fine: a_slow alone meets 1.0
    solve([Demand(strict, 1.0, (1.0, 1.0), "apps.pair")], SEGMENTS, curves(PAIR_MS), 4, **SETTINGS)


def test_shared_segments_take_the_parts_largest_first_splitting_what_overflows():
    parts = [("mps50", "a", "A", 0.7), ("mps50", "b", "B", 0.5), ("mps50", "c", "C", 0.2), ("mps25", "d", "D", 0.1)]
    assert fill_shared({"mps50": 2, "mps25": 1}, parts) == [
        ("mps50", frozenset({"a", "b"}), ("A", "B")),      # A 0.7, then 0.3 of B ...
        ("mps50", frozenset({"b", "c"}), ("B", "C")),      # ... the other 0.2 of B, and C
        ("mps25", frozenset({"d"}), ("D",))]


def test_packing_keeps_the_slots_that_stay_and_fills_devices_best_fit():
    a, b = frozenset({"a"}), frozenset({"b"})
    current = [SlotSpec("h200", "mps50", 0, a), SlotSpec("h200", "mps25", 1, b),
               SlotSpec("h200", "whole", 2, a | b)]
    specs = pack(current, {("mps50", a): 1, ("mps50", b): 1, ("mps25", b): 2}, "h200", devices=3)
    assert specs[:2] == current[:2]                       # kept, where they were
    # New: mps50 b into device 0's free half (best fit), the second mps25 b beside the first on device 1.
    assert Counter((s.partition, s.device) for s in specs[2:]) == Counter({("mps50", 0): 1, ("mps25", 1): 1})
    assert pack([], {("whole", a): 3}, "h200", devices=2) is None
    assert devices_needed({("mps50", a): 3, ("mig-3g.40gb-emulated", b): 1}) == 2


def _sim(tmp_path, *overrides: str, apps="[traffic]"):
    cfg = compose(["runtime=sim", "system=jigsaw", "models=vision", "cluster=h200x4", "workload=poisson",
                   "duration_s=8", "warmup_s=3", "cooldown_s=1", f"+apps={apps}", *overrides])
    execute(cfg, tmp_path, [])
    return json.loads((tmp_path / "summary.json").read_text())


def test_the_traffic_app_runs_end_to_end_in_the_sim(tmp_path):
    summary = _sim(tmp_path, "workload.rate=2000")
    tasks, batches = (pd.read_parquet(tmp_path / f"{t}.parquet") for t in ("tasks", "batches"))
    recs = pd.read_parquet(tmp_path / "reconfigurations.parquet")
    assert summary["slo_attainment"] >= 0.99
    assert len(recs) >= 1 and recs["after"].iloc[0] != recs["before"].iloc[0]      # it cut the GPUs into segments
    assert summary["gpus_used_mean"] < 2.0                                          # of the 4 configured
    assert summary["accuracy_served"]["traffic"] >= 0.95                           # the app's target
    # Each task runs one of its node's variants; after the allocation, on the segments it asked for.
    ran = tasks.merge(batches[["id", "model", "t_dispatch"]], left_on="batch_id", right_on="id",
                      suffixes=("", "_run"))
    variants = {0: {"vit_b_16", "resnet50", "efficientnet_b0"},
                1: {"resnet50", "efficientnet_b0", "mobilenet_v3_large"}, 2: {"efficientnet_b0", "mobilenet_v3_large"}}
    assert all(m in variants[n] for n, m in zip(ran["node"], ran["model_run"]))
    segments = pd.read_parquet(tmp_path / "slots.parquet").set_index("slot")
    later = ran[ran["t_dispatch"] >= recs["t_done"].iloc[0]]
    joined = {int(x) for rec in recs["joining"] for x in rec.split(",") if x}
    assert len(later) and later["slot"].isin(joined).all()
    assert (segments.loc[later["slot"], "partition"] != "whole").all()


@pytest.mark.parametrize("make_before_break", [True, False])
def test_a_re_cut_gpu_serves_on_its_old_slot_until_the_new_segment_joins(tmp_path, make_before_break):
    # One H200: the first allocation (at 1 s) re-cuts it into a 25% share, which takes 2 s to start.
    summary = _sim(tmp_path, "workload.rate=1000", "cluster=h200x1", "warmup_s=1", "runtime.slot_start_s=2",
                   f"system.make_before_break={str(make_before_break).lower()}")
    events = pd.read_parquet(tmp_path / "slot_events.parquet")
    [(t_left, why)] = events.loc[(events["slot"] == 0) & (events["event"] == "left"), ["t", "reason"]].values
    [t_joined] = events.loc[(events["slot"] == 1) & (events["event"] == "joined"), "t"]
    batches = pd.read_parquet(tmp_path / "batches.parquet")
    old, new = batches[batches["slot"] == 0], batches[batches["slot"] == 1]
    assert t_joined == pytest.approx(3.0, abs=0.01) and new["t_dispatch"].min() >= t_joined
    if make_before_break:
        # The whole GPU serves (and takes no segment of the new allocation) until the share has joined.
        assert why == "replaced" and t_left == t_joined
        assert old["t_dispatch"].max() > t_joined - 0.1 and summary["slo_attainment"] == 1.0
    else:
        # It breaks first: nothing serves while the share starts.
        assert why == "reconfigured" and t_left == pytest.approx(1.0) and old["t_dispatch"].max() <= 1.0
        requests = pd.read_parquet(tmp_path / "requests.parquet")
        due_unserved = requests[(requests["t_sched"] > 1.1) & (requests["t_sched"] + requests["slo"] < 2.9)]
        assert len(due_unserved) > 500 and (due_unserved["status"] == "dropped").all()
        assert summary["slo_attainment"] < 0.8


def test_over_capacity_requests_are_rejected_with_the_reason(tmp_path):
    summary = _sim(tmp_path, "workload.rate=40000", "cluster=h200x1")
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    rejected = requests[requests["status"] == "rejected"]
    assert summary["status_counts"].get("rejected", 0) > 0
    assert rejected["reason"].str.startswith("over capacity: 1 GPUs serve only traffic").all()
    admitted = requests[(requests["status"] != "rejected") & (requests["t_sched"] >= 3)]
    assert (admitted["status"] == "ok").mean() >= 0.95        # what it admits it serves


def test_plain_model_requests_are_one_node_apps(tmp_path):
    cfg = compose(["runtime=sim", "system=jigsaw", "models=vision", "cluster=h200x1", "cluster.count=2",
                   "workload=poisson", "workload.rate=3000", "duration_s=8", "warmup_s=3", "cooldown_s=1"])
    execute(cfg, tmp_path, [])
    summary = json.loads((tmp_path / "summary.json").read_text())
    batches = pd.read_parquet(tmp_path / "batches.parquet")
    assert summary["slo_attainment"] >= 0.99 and summary["accuracy_served"] == {}
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    served = requests.merge(batches[["id", "model"]], left_on="batch_id", right_on="id", suffixes=("", "_run"))
    assert (served["model"] == served["model_run"]).all()      # a plain request runs its own model


def test_bad_settings_are_one_line_errors_naming_the_key(tmp_path):
    for override, key in (("system.budget_split=uneven", "system.budget_split"),
                          ("system.segments=[mps33]", "system.segments"),
                          ("system.headroom=0.5", "system.headroom")):
        cfg = compose(["runtime=sim", "system=jigsaw", "models=vision", "cluster=h200x1", override])
        with open_dict(cfg):
            cfg.duration_s = 2.0
            cfg.warmup_s = 0.5
        with pytest.raises(HarnessError) as err:
            execute(cfg, tmp_path / key, [])
        assert key in str(err.value) and "\n" not in str(err.value)


# The solve off the event loop (cluster.offload). A sleep-model cluster: the allocation keeps its partition.
SLEEP_CURVE = LatencyCurve.linear(1.082, 5.204, 64)
SLEEP_MODELS = {"m0": ModelSpec("m0", 0.1), "m1": ModelSpec("m1", 0.1)}


def _sleep_ledger(n: int) -> Ledger:
    slots = [Slot(i, f"s{i}", SLEEP, "whole", frozenset(SLEEP_MODELS), device=i) for i in range(n)]
    curves = {m: SLEEP_CURVE for m in SLEEP_MODELS}
    return Ledger(slots, [curves] * n, lambda spec: curves)


class _InstantPool:
    """Workers that answer every batch at once and start or stop at once."""

    def __init__(self):
        self.on_lost = None
        self.held: set[int] = set()

    def submit(self, slot, batch_id, model, size, start_within, payload=None, expected=0.0, stage=None, rows=None,
               on_reply=None, through=None, busy=None):
        asyncio.get_running_loop().call_soon(on_reply, {"batch": batch_id, "status": "ok", "exec": 0.0, "error": ""})

    async def add(self, slot, spec):
        self.held.add(slot)

    async def remove(self, slot):
        self.held.discard(slot)

    def holds_device(self, slot):
        return slot in self.held


def test_live_jigsaw_solves_off_the_event_loop_and_installs_the_allocation(monkeypatch):
    threads = []
    real = jigsaw.solve
    monkeypatch.setattr(jigsaw, "solve", lambda *a, **kw: threads.append(threading.get_ident()) or real(*a, **kw))

    async def main():
        ledger = _sleep_ledger(2)
        cluster = LiveCluster(ledger, _InstantPool(), precise.Clock(time.time()), {m: 0.1 for m in SLEEP_MODELS})
        policy = jigsaw.Jigsaw(cluster, SLEEP_MODELS, jigsaw.JigsawConfig(window_s=0.05))
        cluster.start(policy)
        for i in range(1000):               # ~2 s at most; arrivals go on while it solves
            cluster.arrive(f"m{i % 2}", i, cluster.now())
            await asyncio.sleep(0.002)
            if policy.allocation is not None and not policy.solving:
                break
        cluster.finish()
        return threading.get_ident(), policy, cluster

    loop_thread, policy, cluster = precise.run(main())
    assert threads and loop_thread not in threads          # every solve ran in a worker thread
    assert policy.allocation is not None                   # and its result came back to the loop and was installed
    assert set(policy.allocation.served) == {"m0", "m1"} and cluster.policy_errors == 0


class _HeldSim(SimCluster):
    """A sim whose offloaded computations finish only when the test says: a solve that takes a while."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.held: list = []
        self.offloads = 0

    def offload(self, fn, then):
        self.offloads += 1
        self.held.append((fn, then))

    def finish_held(self):
        for fn, then in self.held:
            then(fn())
        self.held = []


def _held_run(events: dict[float, Callable[[_HeldSim], None]]):
    """Jigsaw (1 s windows) on 2 sleep-model slots, 200 requests/s for 4 s; events[t](sim) runs at t."""
    sim = _HeldSim(_sleep_ledger(2))
    policy = jigsaw.Jigsaw(sim, SLEEP_MODELS, jigsaw.JigsawConfig(window_s=1.0))
    seen = {}
    for t, event in events.items():
        sim.call_at(t, lambda t=t, event=event: seen.__setitem__(t, event(sim, policy)))
    times = np.arange(0.0, 4.0, 0.005)
    sim.run(policy, np.arange(len(times)), [f"m{i % 2}" for i in range(len(times))], times,
            {m: 0.1 for m in SLEEP_MODELS}, drain=1.0)
    return seen


def test_jigsaw_starts_no_solve_while_one_runs_and_installs_it_when_it_comes_back():
    seen = _held_run({
        1.5: lambda sim, p: (sim.offloads, p.solving),            # the window at 1 s started a solve
        2.5: lambda sim, p: (sim.offloads, p.solving, p.allocation is None),   # the one at 2 s started none
        2.6: lambda sim, p: sim.finish_held() or (p.solving, p.allocation is not None),
    })
    assert seen[1.5] == (1, True) and seen[2.5] == (1, True, True) and seen[2.6] == (False, True)


def test_jigsaw_drops_a_solve_whose_placement_moved_and_tries_again_next_window():
    seen = _held_run({
        1.5: lambda sim, p: sim.lose(0, "scripted fault"),        # the placement it packed onto is gone
        1.6: lambda sim, p: sim.finish_held() or (p.solving, p.allocation is None, dict(p.planned)),
        2.5: lambda sim, p: (sim.offloads, p.solving),            # the window at 2 s tried again
    })
    assert seen[1.6] == (False, True, {}) and seen[2.5] == (2, True)
