"""Shepherd Flex's rules, with hand-computed expectations (l(b) = 1 ms*b + 5 ms)."""

import numpy as np
import pytest

from harness.core import Batch, Policy, SystemConfig, Task
from harness.placement import Placement, SlotSpec
from systems.shepherd import Shepherd, ShepherdConfig
from tests.simkit import cluster, linear_curve, poisson, replay, specs

CURVE = linear_curve(1.0, 5.0, 64)          # l(1) = 6 ms, l(b) = b + 5 ms
NO_PREEMPT = ShepherdConfig(preempt_lambda=1000.0)




def test_idle_slot_runs_the_model_with_the_largest_batch():
    # c runs [0, 6] ms; 3 requests of a (at 1 ms) and 5 of b (at 2 ms) wait. At 6 ms b's batch
    # of 5 is larger, so b goes first although a's head is older.
    slos = {"a": 100, "b": 100, "c": 100}
    arrivals = [(0.0, "c")] + [(0.001, "a")] * 3 + [(0.002, "b")] * 5
    tasks, sim, _ = replay(Shepherd, NO_PREEMPT, slos, 1, CURVE, arrivals)
    assert [(b.model, b.size) for b in sim.batches] == [("c", 1), ("b", 5), ("a", 3)]
    assert all(r.status == "ok" for r in tasks)


def test_equal_batches_go_earliest_head_deadline_first():
    slos = {"a": 100, "b": 50, "c": 100}
    arrivals = [(0.0, "c")] + [(0.001, "a")] * 3 + [(0.002, "b")] * 3   # D_a = 101 ms, D_b = 52 ms
    _, sim, _ = replay(Shepherd, NO_PREEMPT, slos, 1, CURVE, arrivals)
    assert [b.model for b in sim.batches] == ["c", "b", "a"]


def test_batch_grows_only_while_the_head_deadline_holds_and_infeasible_requests_drop():
    # Ten requests of a (SLO 16 ms) at 1 ms, so D = 17 ms; the slot frees at 6 ms.
    # Largest b with 6 + b + 5 <= 17 is 6. The other four start at 17 ms at the earliest:
    # 17 + l(1) > 17, so they are dropped as infeasible when the slot frees again.
    slos = {"a": 16, "c": 100}
    arrivals = [(0.0, "c")] + [(0.001, "a")] * 10
    tasks, sim, _ = replay(Shepherd, NO_PREEMPT, slos, 1, CURVE, arrivals)
    assert [(b.model, b.size) for b in sim.batches] == [("c", 1), ("a", 6)]
    dropped = [r for r in tasks if r.status == "dropped"]
    assert len(dropped) == 4 and {r.reason for r in dropped} == {"infeasible"}
    assert all(r.t_done == pytest.approx(0.017) for r in dropped)


def test_request_that_cannot_make_it_alone_is_dropped_at_once():
    tasks, sim, _ = replay(Shepherd, ShepherdConfig(), {"m": 5}, 1, CURVE, [(0.0, "m")])
    assert tasks[0].status == "dropped" and tasks[0].reason == "infeasible" and sim.batches == []


def test_no_preemption_below_lambda():
    # a (size 1) runs [0, 6] ms; three b requests at 1 ms: 3 < 3.03 x 1, so they wait for it.
    slos = {"a": 100, "b": 100}
    tasks, sim, _ = replay(Shepherd, ShepherdConfig(), slos, 1, CURVE, [(0.0, "a")] + [(0.001, "b")] * 3)
    assert [(b.model, b.size, b.status) for b in sim.batches] == [("a", 1, "ok"), ("b", 3, "ok")]
    assert all(r.status == "ok" for r in tasks)


def test_preemption_at_lambda_times_the_running_batch_that_stops_at_once():
    # The fourth b request makes a candidate of 4 >= 3.03 x 1: a is preempted at 1 ms; an executor
    # that can abort stops it there, so b's batch runs [1, 10] ms and a runs again [10, 16] ms.
    slos = {"a": 100, "b": 100}
    tasks, sim, _ = replay(Shepherd, ShepherdConfig(), slos, 1, CURVE, [(0.0, "a")] + [(0.001, "b")] * 4,
                           preemption="abort")
    assert [(b.model, b.size, b.status) for b in sim.batches] == [("a", 1, "preempted"), ("b", 4, "ok"),
                                                                  ("a", 1, "ok")]
    assert sim.batches[0].t_end == pytest.approx(0.001)
    assert sim.batches[1].t_start == pytest.approx(0.001)
    assert tasks[0].status == "ok" and tasks[0].t_done == pytest.approx(0.016)
    assert all(r.status == "ok" for r in tasks)


def test_a_preempted_batch_runs_to_its_end_first_by_default():
    # The same preemption where a batch cannot stop part-way (a CUDA graph; runtime.preemption=finish):
    # a's tasks come back at 1 ms, but a still runs [0, 6] ms, so b's batch runs [6, 15] ms and a runs
    # again [15, 21] ms. The preempted batch's record says when it really ended.
    slos = {"a": 100, "b": 100}
    tasks, sim, _ = replay(Shepherd, ShepherdConfig(), slos, 1, CURVE, [(0.0, "a")] + [(0.001, "b")] * 4)
    assert [(b.model, b.size, b.status) for b in sim.batches] == [("a", 1, "preempted"), ("b", 4, "ok"),
                                                                  ("a", 1, "ok")]
    assert (sim.batches[0].t_start, sim.batches[0].t_end) == (pytest.approx(0.0), pytest.approx(0.006))
    assert sim.batches[1].t_start == pytest.approx(0.006)
    assert tasks[0].status == "ok" and tasks[0].t_done == pytest.approx(0.021)
    assert all(r.status == "ok" for r in tasks)


def test_preemption_threshold_is_inclusive():
    cfg = ShepherdConfig(preempt_lambda=2.0)
    slos = {"a": 100, "b": 100}
    _, sim, _ = replay(Shepherd, cfg, slos, 1, CURVE, [(0.0, "a"), (0.001, "b")])
    assert [b.status for b in sim.batches] == ["ok", "ok"]                 # 1 < 2 x 1
    _, sim, _ = replay(Shepherd, cfg, slos, 1, CURVE, [(0.0, "a"), (0.001, "b"), (0.001, "b")])
    assert [b.status for b in sim.batches] == ["preempted", "ok", "ok"]    # 2 >= 2 x 1


def test_preempts_the_smallest_running_batch():
    # c and d start on slots 0 and 1 at 0 ms ([0, 6]); two a requests wait and run as a batch of 2
    # on slot 0 at 6 ms ([6, 13]); e takes idle slot 1 at 7 ms ([7, 13]). At 8 ms four b requests
    # make a candidate of 4: >= 3.03 x 1 (slot 1) but < 3.03 x 2 (slot 0), so e is preempted.
    slos = {m: 100 for m in "abcde"}
    arrivals = [(0.0, "c"), (0.0, "d"), (0.001, "a"), (0.001, "a"), (0.007, "e")] + [(0.008, "b")] * 4
    tasks, sim, _ = replay(Shepherd, ShepherdConfig(), slos, 2, CURVE, arrivals)
    assert [(b.slot, b.model, b.size) for b in sim.batches if b.status == "preempted"] == [(1, "e", 1)]
    assert [(b.slot, b.model, b.size) for b in sim.batches if b.model == "a"] == [(0, "a", 2)]
    assert all(r.status == "ok" for r in tasks)


def test_multi_model_poisson_end_to_end():
    slos = {"a": 100, "b": 100, "c": 100}
    arrivals = poisson({"a": 400, "b": 300, "c": 200}, 4.0, seed=2)
    tasks, sim, _ = replay(Shepherd, ShepherdConfig(), slos, 2, CURVE, arrivals)
    assert len(tasks) > 3000
    assert all(r.status in ("ok", "dropped") for r in tasks)          # none left unresolved (timeout)
    met = sum(r.status == "ok" and r.t_done - r.t_arrival <= 0.100 + 1e-9 for r in tasks)
    assert met / len(tasks) >= 0.99


class _PreemptThenReshape(Policy):
    """The second request preempts slot 0's batch and re-cuts its GPU into two 50% shares, where both
    requests then go."""

    def __init__(self, cluster, models, config):
        super().__init__(cluster, models, config)
        self.waiting: list[Task] = []

    def on_arrival(self, task: Task) -> None:
        if not self.cluster.batches:
            self.cluster.dispatch(0, task.model, [task])
            return
        self.waiting = self.cluster.preempt(0) + [task]
        spec = self.cluster.placement.slots[0]
        self.cluster.reconfigure(Placement((SlotSpec(spec.gpu_type, "mps50", spec.device, spec.models),) * 2))

    def on_slot_added(self, slot: int) -> None:
        if self.waiting:
            self.cluster.dispatch(slot, "m", self.waiting)
            self.waiting = []

    def on_batch_done(self, batch: Batch) -> None:
        pass


@pytest.mark.parametrize("preemption, joined_ms", [("finish", 6 + 1), ("abort", 1 + 1)])
def test_a_re_cut_waits_for_a_preempted_batch_that_runs_to_its_end(preemption, joined_ms):
    # One whole GPU; the first request's batch runs [0, 6] ms; at 1 ms the second preempts it and re-cuts
    # the GPU (a share starts in 1 ms). Run to its end, the victim holds the device until 6 ms, so the new
    # shares join at 7 ms; stopped at once, at 2 ms.
    sim = cluster({"m": 1000}, 1, CURVE, slot_start_s=0.001, preemption=preemption)
    policy = _PreemptThenReshape(sim, specs({"m": 1000}), SystemConfig())
    tasks = sim.run(policy, np.arange(2), ["m", "m"], np.array([0.0, 0.001]), {"m": 1.0}, drain=1.0)
    joined = [t for t, slot, event, _ in sim.ledger.slot_events if event == "joined" and slot > 0]
    assert joined == [pytest.approx(joined_ms / 1000)] * 2
    assert [t.status for t in tasks] == ["ok", "ok"]
