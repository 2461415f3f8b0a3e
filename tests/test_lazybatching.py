"""LazyBatching's rules on hand-made stage profiles, driven through the discrete-event sim.

Every scenario runs a model in three equal stages of l(b) = 3b + 6 ms, so each stage takes
l_k(b) = b + 2 ms: 3 ms alone, 4 ms for two, 5 ms for three. Times in the comments are in ms.
"""

import numpy as np
import pandas as pd
import pytest

from harness.core import ERROR, OK
from harness.errors import HarnessError
from harness.profiles import LatencyCurve
from harness.run import execute
from harness.search import compose
from systems.lazybatching import LazyBatching, LazyBatchingConfig
from tests import simkit

MS = 1e-3
STAGED = LatencyCurve.linear(3, 6, 64, stages=3)


IN_PROCESS = {"d_ctrl_us": 0, "d_data_us": 0, "response_allowance_us": 0}   # the prototype's: no serving path


def run(arrivals, slos_ms=None, n_gpus=1, curve=STAGED, **config):
    """Arrivals [(t_ms, model)]; returns (tasks in arrival order, batches as (stages, task indices, start, end)),
    stages "k-e" for a chain of stages k..e, "k" for one stage, None for the whole model. The serving path
    takes no time unless the config says so."""
    slos_ms = slos_ms or {"m": 1000}
    config = {**IN_PROCESS, **config}
    tasks, sim, _ = simkit.replay(LazyBatching, LazyBatchingConfig(**config), slos_ms, n_gpus, curve,
                                  [(t * MS, m) for t, m in arrivals])
    index = {task.id: i for i, task in enumerate(tasks)}
    batches = [(_stages(b), [index[t.id] for t in b.tasks], round(b.t_start / MS, 6), round(b.t_end / MS, 6))
               for b in sim.batches]
    return tasks, batches, sim


def _stages(batch):
    if batch.stage is None:
        return None
    return f"{batch.stage}" if batch.through == batch.stage else f"{batch.stage}-{batch.through}"


def done_ms(task):
    return round(task.t_done / MS, 6)


def test_a_new_group_runs_first_and_merges_with_the_group_ahead_at_its_stage():
    # A starts its three stages as one chain (0-9). B arrives at 1: it could join at A's next boundary,
    # so A stops there (3). C, arriving at 2 behind B, joins with it: one group at stage 0 (3-7, two of
    # them), which then reaches A at stage 1: one batch of three from there, its last two stages as one
    # chain (7-12-17).
    tasks, batches, _ = run([(0, "m"), (1, "m"), (2, "m")])
    assert batches == [("0", [0], 0, 3), ("0", [1, 2], 3, 7), ("1-2", [1, 2, 0], 7, 17)]
    assert [done_ms(t) for t in tasks] == [17, 17, 17]


def test_an_arrival_waits_while_joining_would_make_a_request_in_flight_late():
    # SLO 13: A (deadline 13) would finish at 9 without B (3 + stages 1 and 2 alone, 3 + 3) and at 14
    # with B joining at its first boundary (B's stage 0, 3, then both: 4 + 4). So A's chain runs on, and
    # B starts once A is done (9), alone: 9-18, late but served.
    tasks, batches, _ = run([(0, "m"), (1, "m")], slos_ms={"m": 13})
    assert batches == [("0-2", [0], 0, 9), ("0-2", [1], 9, 18)]
    assert (done_ms(tasks[0]), done_ms(tasks[1])) == (9, 18)
    assert tasks[0].status == tasks[1].status == OK


def test_an_arrival_joins_when_the_request_in_flight_still_makes_its_deadline_exactly():
    # SLO 14: with B, A finishes at 14 = its deadline, so B joins at 3 and both end at 14.
    tasks, batches, _ = run([(0, "m"), (1, "m")], slos_ms={"m": 14})
    assert batches == [("0", [0], 0, 3), ("0", [1], 3, 6), ("1-2", [1, 0], 6, 14)]
    assert (done_ms(tasks[0]), done_ms(tasks[1])) == (14, 14)


def test_the_serving_path_time_counts_in_the_slack():
    # The SLO-14 case above, now with a serving path: each chain sent costs 0.5 ms and the answers 1 ms
    # after the last stage. Alone, A answers at 0.5 + 9 + 1 = 10.5; with B joining at its first boundary
    # it would answer at 0.5 + 3 + 0.5 (B's chain) + 3 + 0.5 (the merged chain) + 8 + 1 = 16.5 > 14, so B
    # waits until A is done and runs alone (this sim charges no path: 0-9, 9-18; the policy plans for one).
    tasks, batches, _ = run([(0, "m"), (1, "m")], slos_ms={"m": 14}, d_ctrl_us=500, response_allowance_us=1000)
    assert [b[0] for b in batches] == ["0-2", "0-2"] and batches[1][1] == [1]
    assert (done_ms(tasks[0]), done_ms(tasks[1])) == (9, 18)


def test_a_late_request_holds_arrivals_back_and_a_late_backlog_runs_as_one_batch():
    # SLO 5: A ends at 9 at best, past its deadline (5); it still holds B and C back (joining would end
    # it at 14, later still), so its chain runs on. At 9 the slot is empty and its oldest arrival, B,
    # cannot make its deadline (6) even alone (9 + 9): B and C join as one full batch without the slack
    # check (the prototype's "fully batch"; otherwise C would wait on B's deadline): 9-13-17-21. (No
    # batch fits an SLO of 5 ms, so the default cap would be one request: max_batch lifts it.)
    tasks, batches, _ = run([(0, "m"), (1, "m"), (2, "m")], slos_ms={"m": 5}, max_batch=8)
    assert batches == [("0-2", [0], 0, 9), ("0-2", [1, 2], 9, 21)]
    assert [done_ms(t) for t in tasks] == [9, 21, 21]


def test_requests_in_flight_on_a_slot_never_exceed_one_batch():
    # max_batch 2: at 3 only B joins A; C waits until both are done (14), then runs alone: 14-23.
    tasks, batches, _ = run([(0, "m"), (1, "m"), (2, "m")], max_batch=2)
    assert batches == [("0", [0], 0, 3), ("0", [1], 3, 6), ("1-2", [1, 0], 6, 14), ("0-2", [2], 14, 23)]
    assert max(len(b[1]) for b in batches) == 2 and done_ms(tasks[2]) == 23


def test_between_models_the_earliest_deadline_runs_and_their_groups_never_merge():
    # A (m0, deadline 100) runs stage 0 (0-3). B (m1, deadline 1 + 50 = 51) joins at 3: it runs first,
    # all three stages (3-12), then A goes on (12-18). A still ends well before 100.
    tasks, batches, _ = run([(0, "m0"), (1, "m1")], slos_ms={"m0": 100, "m1": 50})
    assert batches == [("0", [0], 0, 3), ("0-2", [1], 3, 12), ("1-2", [0], 12, 18)]
    assert (done_ms(tasks[0]), done_ms(tasks[1])) == (18, 12)


def test_arrivals_of_a_model_not_running_stay_free_for_the_first_slot_that_runs_them():
    # Two slots; m0 (SLO 50) is more urgent than m1 (SLO 100). X (m0, 0) starts on slot 0, Y (m0, 0.5)
    # on slot 1; Z (m0, 1) and B (m1, 2) wait. At slot 0's boundary (3) m0 runs: Z joins there (3-6,
    # then with X: 6-10, 10-14), but B does not, since m1 is not what slot 0 runs next. Slot 1 ends Y
    # at 9.5 and takes B: 9.5-12.5-15.5-18.5 (bound to slot 0 it would have waited until 14).
    tasks, _, sim = run([(0, "m0"), (0.5, "m0"), (1, "m0"), (2, "m1")], slos_ms={"m0": 50, "m1": 100}, n_gpus=2)
    slots = [{b.slot for b in sim.batches if task in b.tasks} for task in tasks]
    assert slots == [{0}, {1}, {0}, {1}]
    assert [done_ms(t) for t in tasks] == [14, 9.5, 14, 18.5]


def test_an_arrival_takes_an_idle_slot_at_once_and_each_group_stays_on_its_slot():
    # Two slots: A starts on slot 0 at 0; B, at 1, finds slot 1 idle and starts there (1-4-7-10).
    tasks, _, sim = run([(0, "m"), (1, "m")], n_gpus=2)
    slots = {i: {b.slot for b in sim.batches if tasks[i] in b.tasks} for i in (0, 1)}
    assert slots == {0: {0}, 1: {1}}
    assert (done_ms(tasks[0]), done_ms(tasks[1])) == (9, 10)


def test_a_model_profiled_without_stages_runs_whole_with_the_same_admission():
    # l(b) = 3b + 6 as one stage: A runs 0-9; B and C join at 9 as one batch of two (12 ms): 9-21.
    tasks, batches, _ = run([(0, "m"), (1, "m"), (2, "m")], curve=LatencyCurve.linear(3, 6, 64))
    assert batches == [(None, [0], 0, 9), (None, [1, 2], 9, 21)]


def test_a_slot_lost_drops_the_groups_whose_activations_it_held():
    # B's stage 0 runs 3-6 while A, stopped at its first boundary for B, waits at stage 1; the slot is
    # lost at 4: B's batch fails, and A, whose activations were on that slot, is dropped as an error
    # rather than left pending.
    sim = simkit.cluster({"m": 1000}, 1, STAGED)
    policy = LazyBatching(sim, simkit.specs({"m": 1000}), LazyBatchingConfig())
    sim.call_at(4 * MS, lambda: sim.lose(0, "scripted fault"))
    tasks = sim.run(policy, np.arange(2), ["m", "m"], np.array([0.0, 1 * MS]), {"m": 1.0}, drain=1.0)
    assert [t.status for t in tasks] == [ERROR, ERROR]
    assert "activations" in tasks[0].reason and "slot 0 lost" in tasks[1].reason


def test_bad_max_batch_is_one_line_naming_the_key():
    with pytest.raises(HarnessError, match="system.max_batch"):
        run([(0, "m")], max_batch=-1)
    with pytest.raises(HarnessError, match="exceeds the profiled maximum 64.*system.max_batch"):
        run([(0, "m")], max_batch=65)


def test_a_run_on_the_staged_sleep_model_serves_every_request_through_every_stage(tmp_path):
    args = ["system=lazybatching", "runtime=sim", "cluster=sleep1000", "cluster.count=2", "cluster.sleep.stages=4",
            "models=sleep10", "workload=poisson", "workload.rate=400", "duration_s=3", "warmup_s=0.5",
            "cooldown_s=0.5"]
    summary = execute(compose(args), tmp_path, args)
    assert summary["slo_attainment"] == 1.0
    requests, batches = (pd.read_parquet(tmp_path / f"{name}.parquet") for name in ("requests", "batches"))
    assert (requests["status"] == OK).all()
    # Every request runs each of the four stages once, in chains of stages (first..through).
    per_stage = [batches.loc[(batches["stage"] <= k) & (batches["through"] >= k), "size"].sum() for k in range(4)]
    assert per_stage == [len(requests)] * 4
    assert requests["batch_id"].isin(batches.loc[batches["through"] == 3, "id"]).all()
    assert (batches["through"] > batches["stage"]).any()        # chains: no round trip per stage
