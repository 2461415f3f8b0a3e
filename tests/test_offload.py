"""Cluster.offload: live, the computation runs in a worker thread and `then` on the loop; in the sim, at once."""

import asyncio
import threading
import time

import numpy as np

from harness.core import Policy
from harness.ledger import Ledger
from harness.live import loop as precise
from harness.live.cluster import LiveCluster
from systems.eager import Eager, EagerConfig
from tests import simkit

CURVE = simkit.linear_curve(1.0, 5.0, 16)


class Idle(Policy):
    def on_arrival(self, task):
        pass


def live_cluster() -> LiveCluster:
    """A live cluster with no worker pool to speak of: these tests send no batch."""
    ledger = Ledger(simkit.slots({"m"}, 1), [{"m": CURVE}], curves_of=lambda spec: {"m": CURVE})
    pool = type("Pool", (), {"on_lost": None})()
    cluster = LiveCluster(ledger, pool, precise.Clock(time.time()), {"m": 0.1})
    cluster.start(Idle(cluster, {}, None))
    return cluster


def test_live_offload_runs_in_a_worker_thread_while_the_loop_goes_on_then_calls_back_on_the_loop():
    async def main():
        cluster = live_cluster()
        loop_thread = threading.get_ident()
        seen = []

        def fn():
            seen.append(("fn", threading.get_ident()))
            time.sleep(0.05)          # a solve; the timer below fires meanwhile
            return 42

        def then(result):
            seen.append(("then", threading.get_ident(), result))
            done.set_result(None)

        done = asyncio.get_running_loop().create_future()
        cluster.offload(fn, then)
        cluster.call_at(cluster.now() + 0.01, lambda: seen.append(("timer", threading.get_ident())))
        await asyncio.wait_for(done, 2)
        return loop_thread, seen, cluster

    loop_thread, seen, cluster = precise.run(main())
    (fn, fn_thread), (timer, timer_thread), (then, then_thread, result) = seen
    assert (fn, timer, then, result) == ("fn", "timer", "then", 42)
    assert fn_thread != loop_thread                            # off the loop: the timer fired during it
    assert timer_thread == then_thread == loop_thread          # then is an event on the loop, as a timer is
    assert cluster.policy_errors == 0


def test_live_offload_failures_are_policy_errors_and_a_finished_run_hears_nothing():
    async def main():
        cluster = live_cluster()
        called = []

        def boom():
            raise ValueError("no solution")

        cluster.offload(boom, called.append)                                  # fn raises: then is not called
        cluster.offload(lambda: 1, lambda result: 1 / 0)                      # then raises
        await asyncio.sleep(0.1)
        errors = cluster.policy_errors
        cluster.offload(lambda: time.sleep(0.05) or 2, called.append)         # finishes after the run
        cluster.finish()
        cluster.offload(lambda: 3, called.append)                             # offered after it
        await asyncio.sleep(0.1)
        return errors, called, cluster

    errors, called, cluster = precise.run(main())
    assert errors == 2 and called == [] and cluster.policy_errors == 2


def test_sim_offload_calls_then_at_once_at_the_same_virtual_time():
    sim = simkit.cluster({"m": 100.0}, 1, CURVE)
    policy = Eager(sim, simkit.specs({"m": 100.0}), EagerConfig())
    seen = []

    def offload():
        sim.offload(lambda: seen.append(("fn", sim.now())) or 42,
                    lambda result: seen.append(("then", sim.now(), result)))
        seen.append(("returned", sim.now()))

    sim.call_at(0.5, offload)
    sim.run(policy, np.arange(2), ["m", "m"], np.array([0.2, 1.0]), simkit.slo_of({"m": 100.0}), drain=1.0)
    assert seen == [("fn", 0.5), ("then", 0.5, 42), ("returned", 0.5)]
