"""Shares of one GPU slow each other down: the sim and the emulated GPUs run a batch between its
alone and its beside-busy-siblings latency, by how many sibling shares have work."""

import time

import pytest

from harness.core import GpuSlot, Request
from harness.gpu.partitions import siblings_of
from harness.live.worker import EmulatedExecutor
from harness.profiles import LatencyCurve
from harness.runtimes.sim import SimCluster

# 10 ms alone, 16 ms while the 3 other shares of the GPU work (batch 1 and 2 alike).
SHARED = LatencyCurve.from_points([1, 2], [16.0, 16.0], alone_ms=[10.0, 10.0], siblings=3)


def test_shares_fill_gpus_in_slot_order():
    assert siblings_of(["mps25"] * 5) == [(1, 2, 3), (0, 2, 3), (0, 1, 3), (0, 1, 2), ()]
    assert siblings_of(["mps50"] * 2) == [(1,), (0,)]
    assert siblings_of(["whole"] * 2) == [(), ()]
    assert siblings_of(["mig-1g.10gb"] * 2) == [(), ()]          # real MIG: isolated in hardware


def test_sim_batch_time_depends_on_busy_siblings():
    gpus = [GpuSlot(i, f"s{i}", "h100", "mps25", frozenset({"m"})) for i in range(4)]
    cluster = SimCluster(gpus, [{"m": SHARED}] * 4)
    first = cluster.dispatch(0, "m", [Request(0, "m", 0.0, 1.0)])
    assert first.t_end - first.t_start == pytest.approx(0.010)                   # alone
    second = cluster.dispatch(1, "m", [Request(1, "m", 0.0, 1.0)])
    assert second.t_end - second.t_start == pytest.approx(0.012)                 # 1 of 3 siblings busy
    third = cluster.dispatch(2, "m", [Request(2, "m", 0.0, 1.0)])
    assert third.t_end - third.t_start == pytest.approx(0.014)                  # 2 of 3
    again = cluster.dispatch(0, "m", [Request(9, "m", 0.0, 1.0)])              # starts at 10 ms: 1 and 2 busy
    assert again.t_start == pytest.approx(0.010)
    assert again.t_end - again.t_start == pytest.approx(0.014)


def test_whole_gpus_do_not_interfere():
    gpus = [GpuSlot(i, f"s{i}", "h100", "whole", frozenset({"m"})) for i in range(2)]
    cluster = SimCluster(gpus, [{"m": SHARED}] * 2)
    for gpu in (0, 1):
        batch = cluster.dispatch(gpu, "m", [Request(gpu, "m", 0.0, 1.0)])
        assert batch.t_end - batch.t_start == pytest.approx(0.010)


@pytest.mark.parametrize("busy,expected", [(None, 0.016), (0, 0.010), (3, 0.016)])
def test_emulated_gpu_batch_time_depends_on_busy_siblings(busy, expected):
    ex = EmulatedExecutor({"m": SHARED})
    t0 = time.perf_counter()
    ex.run("m", 1, None, busy_siblings=busy)
    assert time.perf_counter() - t0 == pytest.approx(expected, abs=0.002)


def test_the_worker_pool_knows_which_slots_share_a_gpu(tmp_path):
    from harness.live.workers import WorkerPool

    config = tmp_path / "config.yaml"
    config.write_text("cluster:\n  partition: mps50\n")
    assert WorkerPool(3, config_path=config)._find_siblings() == [(1,), (0,), ()]
    assert WorkerPool(2, config_path=tmp_path / "missing.yaml")._find_siblings() == [(), ()]
