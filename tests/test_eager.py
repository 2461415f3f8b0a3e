"""Eager dispatch: work-conserving, earliest deadline first, never waits to grow a batch."""

from systems.eager import Eager, EagerConfig
from tests.simkit import linear_curve, replay

CURVE = linear_curve(1.0, 5.0, 64)      # l(b) = b + 5 ms


def test_lone_request_is_sent_at_once():
    tasks, sim, _ = replay(Eager, EagerConfig(), {"m": 100}, 1, CURVE, [(0.0, "m")])
    (batch,) = sim.batches
    assert batch.t_dispatch == 0.0 and batch.t_end == 0.006
    assert tasks[0].status == "ok"


def test_queue_builds_while_busy_and_goes_as_one_batch():
    # Busy 6 ms with the first request; the 3 that arrive meanwhile go together when it frees.
    arrivals = [(0.0, "m"), (0.001, "m"), (0.002, "m"), (0.003, "m")]
    _, sim, _ = replay(Eager, EagerConfig(), {"m": 100}, 1, CURVE, arrivals)
    assert [b.size for b in sim.batches] == [1, 3]
    assert sim.batches[1].t_dispatch == 0.006


def test_earliest_deadline_model_goes_first():
    # While the slot is busy, "slow" (SLO 200 ms) and "fast" (SLO 50 ms) queue up; "fast" is served first.
    arrivals = [(0.0, "slow"), (0.001, "slow"), (0.002, "fast")]
    _, sim, _ = replay(Eager, EagerConfig(), {"slow": 200, "fast": 50}, 1, CURVE, arrivals)
    assert [b.model for b in sim.batches] == ["slow", "fast", "slow"]


def test_max_batch_defaults_to_largest_batch_within_slo():
    _, _, policy = replay(Eager, EagerConfig(), {"m": 20}, 1, CURVE, [])
    assert policy.max_batch["m"] == 15     # l(15) = 20 ms <= 20 ms < l(16)


def test_requests_that_cannot_make_it_are_dropped_when_drop_late():
    # SLO 10 ms: the second request waits 6 ms, then needs 6 more: 12 > 10, dropped.
    arrivals = [(0.0, "m"), (0.0, "m")]
    cfg = EagerConfig(max_batch=1)
    tasks, _, _ = replay(Eager, cfg, {"m": 10}, 1, CURVE, arrivals)
    assert [r.status for r in tasks] == ["ok", "dropped"]
    tasks, _, _ = replay(Eager, EagerConfig(max_batch=1, drop_late=False), {"m": 10}, 1, CURVE, arrivals)
    assert [r.status for r in tasks] == ["ok", "ok"]


def test_drop_late_reserves_the_serving_path_per_request_as_symphony_plans():
    # Busy until 6 ms; 10 requests due at 31 ms queue meanwhile. A batch of b ends at 6 + (b + 5) ms, and the
    # path needs d_ctrl + b * d_data + allowance on top: with 1 ms per request, 10 and 9 miss (33.1, 31.1 ms)
    # and 8 fit (29.1 ms), so two heads go; with no per-request cost all ten fit.
    arrivals = [(0.0, "m")] + [(0.001, "m")] * 10
    paths = {1000.0: ["ok"] + ["dropped"] * 2 + ["ok"] * 8, 0.0: ["ok"] * 11}
    for d_data, statuses in paths.items():
        cfg = EagerConfig(d_ctrl_us=100, d_data_us=d_data, response_allowance_us=2000)
        tasks, sim, _ = replay(Eager, cfg, {"m": 30}, 1, CURVE, arrivals)
        assert [r.status for r in tasks] == statuses
        assert [b.size for b in sim.batches] == [1, len(statuses) - statuses.count("dropped") - 1]
