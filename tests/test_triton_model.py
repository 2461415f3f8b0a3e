"""The sim model of Triton's dynamic batcher, with hand-computed expectations (l(b) = 1 ms*b + 5 ms)."""

import pytest

from systems.triton import Triton, TritonConfig
from tests.simkit import linear_curve, replay, poisson

CURVE = linear_curve(1.0, 5.0, 64)          # l(1) = 6 ms, l(b) = b + 5 ms
SLO = {"m": 100}




def test_delay_zero_sends_a_lone_request_at_once():
    tasks, sim, _ = replay(Triton, TritonConfig(), SLO, 1, CURVE, [(0.003, "m")])
    (batch,) = sim.batches
    assert batch.t_dispatch == 0.003 and batch.size == 1
    assert tasks[0].status == "ok" and tasks[0].t_done == pytest.approx(0.009)


def test_lone_request_waits_exactly_the_queue_delay():
    cfg = TritonConfig(max_queue_delay_microseconds=2000)
    tasks, sim, _ = replay(Triton, cfg, SLO, 1, CURVE, [(0.001, "m")])
    (batch,) = sim.batches
    assert batch.t_dispatch == pytest.approx(0.003, abs=1e-12) and batch.size == 1


def test_preferred_size_reached_goes_before_the_delay():
    # Preferred [4], delay 10 ms: the fourth request, at 1.5 ms, completes a preferred batch.
    cfg = TritonConfig(max_queue_delay_microseconds=10000, preferred_batch_size=[4])
    arrivals = [(0.0, "m"), (0.0005, "m"), (0.001, "m"), (0.0015, "m")]
    _, sim, _ = replay(Triton, cfg, SLO, 1, CURVE, arrivals)
    (batch,) = sim.batches
    assert batch.size == 4 and batch.t_dispatch == 0.0015


def test_any_preferred_size_reached_is_sent_not_the_whole_queue():
    # Preferred [2, 4], max 8, delay 10 ms, two instances on one slot. Arrivals at 0, 1, 2 ms:
    # the second completes preferred 2 (sent at 1 ms); the third waits alone for its delay (12 ms).
    cfg = TritonConfig(max_batch_size=8, preferred_batch_size=[2, 4], max_queue_delay_microseconds=10000,
                       instance_count=2)
    _, sim, _ = replay(Triton, cfg, SLO, 1, CURVE, [(0.0, "m"), (0.001, "m"), (0.002, "m")])
    assert [(b.size, b.t_dispatch) for b in sim.batches] == [(2, 0.001), (1, pytest.approx(0.012))]


def test_busy_instance_makes_requests_accumulate_up_to_max_batch():
    # One instance; arrivals at 0,1,2,3 ms. The first runs [0, 6] ms; the three others wait,
    # and at 6 ms the next batch takes max_batch_size = 2 of them ([6, 13] ms), then the last.
    cfg = TritonConfig(max_batch_size=2)
    arrivals = [(0.0, "m"), (0.001, "m"), (0.002, "m"), (0.003, "m")]
    tasks, sim, _ = replay(Triton, cfg, SLO, 1, CURVE, arrivals)
    assert [b.size for b in sim.batches] == [1, 2, 1]
    assert [b.t_dispatch for b in sim.batches] == pytest.approx([0.0, 0.006, 0.013])
    assert [r.id for r in sim.batches[1].tasks] == [1, 2]          # FIFO
    assert all(r.status == "ok" for r in tasks)


def test_the_instance_free_the_longest_takes_the_batch():
    # Two slots, two requests at once with delay 0: slot 0 takes the first, slot 1 (free) the second.
    _, sim, _ = replay(Triton, TritonConfig(), SLO, 2, CURVE, [(0.0, "m"), (0.0, "m"), (0.5, "m")])
    assert [b.slot for b in sim.batches] == [0, 1, 0]
    # Requests far apart, both instances idle each time: they take turns (tritonserver spreads a model's
    # batches over its instances), where the lowest free slot would take them all.
    _, sim, _ = replay(Triton, TritonConfig(), SLO, 2, CURVE, [(0.1 * i, "m") for i in range(5)])
    assert [b.slot for b in sim.batches] == [0, 1, 0, 1, 0]


def test_max_queue_size_rejects_arrivals_beyond_it():
    cfg = TritonConfig(max_queue_size=2)
    tasks, sim, _ = replay(Triton, cfg, SLO, 1, CURVE, [(0.0, "m")] * 4)
    # The first runs at once; two wait in the queue; the fourth finds it full.
    assert [r.status for r in tasks] == ["ok", "ok", "ok", "rejected"]
    assert tasks[3].reason == "queue full" and tasks[3].t_done == 0.0
    assert [b.size for b in sim.batches] == [1, 2]


def test_queue_timeout_rejects_while_waiting_for_the_delay():
    # Timeout 1 ms < delay 5 ms: the batcher wakes at the timeout and rejects the request.
    cfg = TritonConfig(max_queue_delay_microseconds=5000, default_timeout_microseconds=1000)
    tasks, sim, _ = replay(Triton, cfg, SLO, 1, CURVE, [(0.0, "m")])
    assert sim.batches == []
    assert tasks[0].status == "rejected" and tasks[0].reason == "queue timeout"
    assert tasks[0].t_done == pytest.approx(0.001)


def test_queue_timeout_is_applied_when_an_instance_frees():
    # As in Triton, the batcher examines its queue only with a free instance: the second request
    # times out at 1.5 ms but is rejected when the instance frees at 6 ms.
    cfg = TritonConfig(default_timeout_microseconds=1000)
    tasks, sim, _ = replay(Triton, cfg, SLO, 1, CURVE, [(0.0, "m"), (0.0005, "m")])
    assert len(sim.batches) == 1
    assert tasks[1].status == "rejected" and tasks[1].t_done == pytest.approx(0.006)


def test_delay_action_serves_timed_out_requests_after_fresh_ones():
    # Max batch 1, timeout 2 ms, DELAY. A runs [0, 6] ms; at 6 ms B (age 5.9 ms) has timed out
    # and goes behind C (age 0.5 ms): order A, C, B, all served.
    cfg = TritonConfig(max_batch_size=1, default_timeout_microseconds=2000, timeout_action="DELAY")
    tasks, sim, _ = replay(Triton, cfg, SLO, 1, CURVE, [(0.0, "m"), (0.0001, "m"), (0.0055, "m")])
    assert [b.tasks[0].id for b in sim.batches] == [0, 2, 1]
    assert all(r.status == "ok" for r in tasks)


def test_multi_model_poisson_end_to_end():
    slos = {"a": 100, "b": 100, "c": 100}
    arrivals = poisson({"a": 400, "b": 300, "c": 200}, 4.0, seed=1)
    tasks, sim, _ = replay(Triton, TritonConfig(), slos, 2, CURVE, arrivals)
    assert len(tasks) > 3000
    assert all(r.status in ("ok", "dropped", "rejected") for r in tasks)          # none left unresolved (timeout)
    met = sum(r.status == "ok" and r.t_done - r.t_arrival <= 0.100 + 1e-9 for r in tasks)
    assert met / len(tasks) >= 0.99
    assert sum(b.size for b in sim.batches) / len(sim.batches) > 1.5    # it batches under load
