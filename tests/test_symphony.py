"""Symphony's decision rules, with hand-computed expectations (sleep model l(b) = 1 ms*b + 5 ms)."""

import pytest

from systems.symphony import Symphony, SymphonyConfig
from tests.simkit import linear_curve, replay

CURVE = linear_curve(1.0, 5.0, 64)          # l(1) = 6 ms, l(b) = b + 5 ms
CFG = SymphonyConfig()                       # d_ctrl 0.1 ms, d_data 0.05 ms, allowance 2.1 ms


def e(b):                                    # execution + response allowance + timer slack, seconds
    return (b + 5.0 + 2.1) / 1000


def test_lone_request_is_deferred_until_its_window_closes():
    # One request at t=0 with a 100 ms SLO, target batch > 1: Symphony waits for a second
    # request until the frontrun point D - e(2) - d_data, then sends the batch of one.
    reqs, sim, _ = replay(Symphony, CFG, {"m": 100}, 1, CURVE, [(0.0, "m")])
    (batch,) = sim.batches
    start = 0.100 - e(2) - 50e-6
    assert batch.t_dispatch == pytest.approx(start - 150e-6, abs=1e-9)   # sent d_ctrl + d_data earlier
    assert batch.size == 1
    assert reqs[0].status == "ok" and reqs[0].t_done <= 0.100


def test_batch_at_target_size_goes_at_once():
    # Ten requests at t=0 with a target of 4 (set by hand): the first batch of 4 goes at once.
    arrivals = [(0.0, "m")] * 10
    cfg = SymphonyConfig(max_batch=4)
    reqs, sim, _ = replay(Symphony, cfg, {"m": 100}, 2, CURVE, arrivals)
    first = sim.batches[0]
    assert first.size == 4 and first.t_dispatch == 0.0
    assert all(r.status == "ok" for r in reqs)


def test_head_that_cannot_make_it_alone_is_window_dropped():
    # SLO 5 ms < l(1) = 6 ms: no batch can meet it, so the request is dropped at arrival.
    reqs, sim, _ = replay(Symphony, CFG, {"m": 5}, 1, CURVE, [(0.0, "m")])
    assert reqs[0].status == "dropped" and reqs[0].reason == "window"
    assert sim.batches == []


def test_earliest_free_lowest_rank_slot_is_chosen():
    # Two well-separated requests on 4 idle slots both go to rank 0 (load-proportional use).
    arrivals = [(0.0, "m"), (0.5, "m")]
    _, sim, _ = replay(Symphony, CFG, {"m": 100}, 4, CURVE, arrivals)
    assert [b.gpu for b in sim.batches] == [0, 0]


def test_target_batch_from_rate_follows_the_formula():
    _, _, policy = replay(Symphony, CFG, {"m": 100}, 1, CURVE, [])
    st = policy.state["m"]
    budget = 0.100 - 100e-6 - 2000e-6
    # Rate 0 -> n <= 1 -> Nexus rule: largest b with 2*l(b) <= budget - b*d_data.
    expected = max(b for b in range(1, 65) if 2 * (b + 5) / 1000 <= budget - b * 50e-6)
    assert policy.target_batch(st, 0.0) == expected
    # A high rate spreads the model over n > 1 slots, allowing a larger batch.
    high = policy.target_batch(st, 20000.0)
    assert high > expected
    lb = (high + 5) / 1000
    n = max(1.0, 20000.0 * lb / high)
    assert lb * (1 + 1 / n) <= budget - high * 50e-6


def test_deadlines_hold_under_moderate_load():
    arrivals = [(i * 0.002, "m") for i in range(2000)]        # 500 req/s for 4 s
    reqs, sim, _ = replay(Symphony, CFG, {"m": 100}, 2, CURVE, arrivals)
    assert all(r.status == "ok" and r.t_done - r.t_arrival <= 0.100 + 1e-9 for r in reqs)
    assert sum(b.size for b in sim.batches) / len(sim.batches) > 5   # it batches
