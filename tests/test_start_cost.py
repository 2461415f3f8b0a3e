"""What starting a slot costs: measured on the GPU by the profiler, and charged to an emulated slot that a
reconfiguration adds, in the sim and live, so a re-cut takes as long on an emulated GPU as on a real one."""

import asyncio
import json
import time

import numpy as np
import pytest

from harness.core import ModelSpec, SystemConfig
from harness.errors import HarnessError
from harness.gpu.partitions import parse_partition
from harness.gpu.profiler import profile_document, summarize_ms, write_profile
from harness.ledger import Ledger
from harness.live import loop as precise
from harness.live.cluster import LiveCluster
from harness.placement import Placement, SlotSpec
from harness.profiles import LatencyCurve, load_profile
from harness.runtimes.sim import SimCluster
from tests.simkit import slots
from tests.test_live_cluster import Holder, MovingPool, run

PLAIN = LatencyCurve.linear(1.0, 5.0, 16)


def costly(start_s: float, load_s: float) -> LatencyCurve:
    return PLAIN.costing(start_s, load_s)


def test_the_profiler_writes_the_start_and_load_seconds_a_profile_reads_back(tmp_path):
    measured = {m: {b: summarize_ms([1.0 + b] * 3) for b in (1, 2)} for m in ("resnet50", "vit_b_16")}
    doc = profile_document("h100", parse_partition("whole"), {}, measured, load_s={"resnet50": 2.5, "vit_b_16": 4.0},
                           start_s=6.25)
    write_profile(tmp_path / "whole.json", doc)
    curves = load_profile(tmp_path / "whole.json").curves
    assert (curves["resnet50"].start_s, curves["resnet50"].load_s) == (6.25, 2.5)
    # A worker process once, then each of its models.
    assert LatencyCurve.start_cost(curves.values()) == pytest.approx(6.25 + 2.5 + 4.0)
    assert LatencyCurve.start_cost([curves["vit_b_16"], PLAIN]) is None          # a part not measured
    for field, value in (("start_s", -1), ("start_s", "6"), ("start_s", float("nan")), ("load_s", 1e9)):
        broken = json.loads((tmp_path / "whole.json").read_text())
        (broken if field == "start_s" else broken["models"]["resnet50"])[field] = value
        (tmp_path / "broken.json").write_text(json.dumps(broken))
        with pytest.raises(HarnessError, match=field):
            load_profile(tmp_path / "broken.json")


def sim_with(curve: LatencyCurve, slot_start_s: float = 0.1) -> SimCluster:
    ledger = Ledger(slots({"m"}, 1), [{"m": curve}], curves_of=lambda spec: {"m": curve})
    return SimCluster(ledger, slot_start_s=slot_start_s)


@pytest.mark.parametrize("curve, joins_at", [(costly(3.0, 1.5), 4.5), (PLAIN, 0.1)])
def test_the_sim_starts_an_added_slot_after_what_its_profile_measured(curve, joins_at):
    sim = sim_with(curve)
    assert sim.start_cost(0) == joins_at
    policy = Holder(sim, {"m": ModelSpec("m", 1.0)}, SystemConfig())
    joined = []
    policy.on_slot_added = lambda slot: joined.append((slot, sim.now()))
    wide = Placement((SlotSpec("test", "whole", 0, frozenset({"m"})), SlotSpec("test", "whole", 1, frozenset({"m"}))))
    sim.call_at(1.0, lambda: sim.reconfigure(wide))
    # Two requests the policy holds (the run lasts until the last one's drain is over).
    sim.run(policy, np.arange(2), ["m", "m"], np.array([0.0, 6.0]), {"m": 1.0}, drain=1.0)
    assert joined == [(1, pytest.approx(1.0 + joins_at))]


@pytest.mark.parametrize("emulated", [True, False])
def test_live_an_added_emulated_slot_joins_once_the_measured_start_has_passed(emulated):
    async def main():
        curve = costly(0.15, 0.05)                       # 0.2 s, where the pool starts the worker in 2 ms
        ledger = Ledger(slots({"m"}, 1), [{"m": curve}], curves_of=lambda spec: {"m": curve})
        ledger.slots[0].emulated = emulated
        cluster = LiveCluster(ledger, MovingPool(), precise.Clock(time.time()), {"m": 1.0})
        policy = Holder(cluster, {"m": ModelSpec("m", 1.0)}, SystemConfig())
        joined = []
        policy.on_slot_added = lambda slot: joined.append(cluster.now())
        cluster.start(policy)
        began = cluster.now()
        cluster.reconfigure(Placement(tuple(SlotSpec("test", "whole", d, frozenset({"m"})) for d in (0, 1))))
        for _ in range(100):
            if joined:
                break
            await asyncio.sleep(0.01)
        return joined[0] - began

    took = run(main())
    # A real GPU's worker takes what it takes; an emulated one as long as the real GPU measured.
    assert (0.2 <= took < 0.4) if emulated else took < 0.1, took
