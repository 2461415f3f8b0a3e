"""Graph batching with a time window on hand-made profiles, driven through the discrete-event sim.

Unless a test says otherwise every batch takes 10 ms whatever its size (l(b) = 0b + 10 ms) and the
SLO is 1 s. Times in the comments are in ms.
"""

import pandas as pd
import pytest

from harness.core import OK
from harness.errors import HarnessError
from harness.profiles import LatencyCurve
from harness.run import execute
from harness.search import compose
from systems.graph_batching import GraphBatching, GraphBatchingConfig
from tests import simkit

MS = 1e-3
FLAT = LatencyCurve.linear(0, 10, 64)


def run(arrivals, slos_ms=None, n_gpus=1, curve=FLAT, **config):
    """Arrivals [(t_ms, model)]; returns (tasks in arrival order, batches as (slot, task indices, start, end))."""
    slos_ms = slos_ms or {"m": 1000}
    tasks, sim, _ = simkit.replay(GraphBatching, GraphBatchingConfig(**config), slos_ms, n_gpus, curve,
                                  [(t * MS, m) for t, m in arrivals])
    index = {task.id: i for i, task in enumerate(tasks)}
    return tasks, [(b.slot, [index[t.id] for t in b.tasks], round(b.t_start / MS, 6), round(b.t_end / MS, 6))
                   for b in sim.batches], sim


def test_a_batch_launches_when_its_oldest_request_has_waited_the_window():
    # Window 5: A (0) and B (2) wait for A's window to end at 5, then run together: 5-15.
    tasks, batches, _ = run([(0, "m"), (2, "m")], window_ms=5)
    assert batches == [(0, [0, 1], 5, 15)]
    assert all(t.status == OK for t in tasks)


def test_a_full_batch_launches_at_once_and_a_backlog_as_soon_as_a_slot_frees():
    # max_batch 2: A (0) and B (1) fill a batch, which goes at 1 (1-11). C (3) has waited its window by 8,
    # but the slot is busy until 11: it goes then, without a fresh window (11-21).
    _, batches, _ = run([(0, "m"), (1, "m"), (3, "m")], window_ms=5, max_batch=2)
    assert batches == [(0, [0, 1], 1, 11), (0, [2], 11, 21)]


def test_an_expired_window_takes_the_idle_slot_of_lowest_rank():
    # Two slots, window 5: A's batch takes slot 0 at 5 (5-15); B (6) expires at 11, slot 0 busy: slot 1.
    _, batches, _ = run([(0, "m"), (6, "m")], n_gpus=2, window_ms=5)
    assert batches == [(0, [0], 5, 15), (1, [1], 11, 21)]


def test_a_zero_window_sends_whatever_is_queued_when_a_slot_frees():
    # Window 0: A goes at once (0-10); B (1) and C (2) go together when the slot frees (10-20).
    _, batches, _ = run([(0, "m"), (1, "m"), (2, "m")], window_ms=0)
    assert batches == [(0, [0], 0, 10), (0, [1, 2], 10, 20)]


def test_a_freed_slot_takes_the_ready_queue_whose_oldest_request_is_most_urgent():
    # Window 1: X (m0) runs 1-11. Y (m0, 2, deadline 102) and Z (m1, 3, deadline 53) are both ready by
    # 11; Z goes first (11-21), then Y (21-31).
    _, batches, _ = run([(0, "m0"), (2, "m0"), (3, "m1")], slos_ms={"m0": 100, "m1": 50}, window_ms=1)
    assert batches == [(0, [0], 1, 11), (0, [2], 11, 21), (0, [1], 21, 31)]


def test_it_runs_the_whole_model_even_where_stages_are_profiled():
    # Three stages of l(b) = 3b + 6 profiled; the batch of two still runs the whole model: 12 ms, 5-17.
    _, batches, sim = run([(0, "m"), (2, "m")], curve=LatencyCurve.linear(3, 6, 64, stages=3), window_ms=5)
    assert batches == [(0, [0, 1], 5, 17)] and sim.batches[0].stage is None


def test_bad_settings_are_one_line_naming_the_key():
    with pytest.raises(HarnessError, match="system.window_ms"):
        run([(0, "m")], window_ms=-1)
    with pytest.raises(HarnessError, match="exceeds the profiled maximum 64.*system.max_batch"):
        run([(0, "m")], max_batch=65)


def test_a_run_through_the_config_serves_whole_model_batches(tmp_path):
    args = ["system=graph_batching", "system.window_ms=2", "runtime=sim", "cluster=sleep1000", "cluster.count=2",
            "cluster.sleep.stages=4", "models=sleep10", "workload=poisson", "workload.rate=400", "duration_s=3",
            "warmup_s=0.5", "cooldown_s=0.5"]
    summary = execute(compose(args), tmp_path, args)
    assert summary["slo_attainment"] == 1.0 and summary["mean_batch_size"] > 1
    batches = pd.read_parquet(tmp_path / "batches.parquet")
    assert (batches["stage"] == -1).all()             # the whole model, though stages are profiled
