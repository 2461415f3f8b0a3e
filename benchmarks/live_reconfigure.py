"""How long does the live runtime's event loop work while a reconfiguration waits for slots to drain?

    PYTHONPATH=. python benchmarks/live_reconfigure.py [--slots 16,158] [--drain-ms 50] [--rounds 3]

LiveCluster on the precise event loop, with a stand-in worker pool: every
one of N whole-GPU slots runs a batch that replies after --drain-ms, then
the cluster is reconfigured to two 50% shares per device. Each old slot may
stop only once its batch has replied, and each new share may start only
once the slot leaving its device has stopped. The benchmark reports the
loop's busy time (its time not spent waiting for events or timers) from the
reconfiguration until every new share has started: the cost of the waiting
itself, which the loop pays while arrivals queue behind it. The stand-in
pool starts and stops workers at once, so nearly all of that time is the
runtime's own bookkeeping.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from _cli import Parser, above, listed, run_main

from harness.core import ModelSpec, Policy, Slot, SystemConfig  # noqa: E402
from harness.ledger import Ledger  # noqa: E402
from harness.live import loop as precise  # noqa: E402
from harness.live.cluster import LiveCluster  # noqa: E402
from harness.placement import Placement, SlotSpec  # noqa: E402
from harness.profiles import LatencyCurve  # noqa: E402

CURVE = LatencyCurve.linear(1.0, 5.0, 16)


class DrainingPool:
    """Each batch replies after `drain` seconds; workers start and stop at once."""

    def __init__(self, drain: float):
        self.drain = drain
        self.on_lost = None
        self.started = 0

    # WorkerPool.submit's parameters, in its order: LiveCluster calls it positionally (tests/test_benchmarks_cli.py
    # checks the two still match).
    def submit(self, slot, batch_id, model, size, start_within, payload=None, expected=0.0, stage=None, rows=None,
               on_reply=None, through=None, busy=None):
        reply = {"batch": batch_id, "status": "ok", "exec": self.drain, "wait": 0.0, "error": ""}
        asyncio.get_running_loop().call_later(self.drain, on_reply, reply)

    async def add(self, slot, spec):
        self.started += 1

    async def remove(self, slot):
        pass


class Holder(Policy):
    """Keeps every request for the benchmark to dispatch; new slots join idle."""

    def __init__(self, cluster, models, config):
        super().__init__(cluster, models, config)
        self.held = []

    def on_arrival(self, task):
        self.held.append(task)

    def on_slot_added(self, slot):
        pass


async def one(n_slots: int, drain: float) -> tuple[float, float]:
    """(loop busy, wall) in ms, from the reconfiguration until every new share started."""
    models = {"m": ModelSpec("m", 1.0)}
    slots = [Slot(i, f"g{i}", "bench", "whole", frozenset(models), device=i) for i in range(n_slots)]
    ledger = Ledger(slots, [{"m": CURVE}] * n_slots, curves_of=lambda spec: {"m": CURVE})
    pool = DrainingPool(drain)
    cluster = LiveCluster(ledger, pool, precise.Clock(time.time()), {"m": 1.0})
    policy = Holder(cluster, models, SystemConfig())
    cluster.start(policy)
    for i in range(n_slots):
        cluster.arrive("m", i, cluster.now())
        cluster.dispatch(i, "m", [policy.held[i]])
    half = [SlotSpec("bench", "mps50", d, frozenset(models)) for d in range(n_slots)]
    target = Placement(tuple(s for s in half for _ in range(2)))
    selector = asyncio.get_running_loop()._selector       # a PreciseSelector: it counts its waiting time
    waited0, t0 = selector.waited, time.perf_counter()
    cluster.reconfigure(target)
    done = asyncio.get_running_loop().create_future()

    def check():
        if pool.started == 2 * n_slots:
            done.set_result(None)
        else:
            asyncio.get_running_loop().call_later(0.005, check)   # (the benchmark's own look: 1 in 5 ms)

    check()
    # Every share starts within a few drain times when all is well: a reconfiguration still waiting long after
    # that is stuck (a batch that never replied, a slot that never stopped), and waiting on would hang.
    limit = 10.0 + 10 * drain
    try:
        await asyncio.wait_for(done, limit)
    except asyncio.TimeoutError:
        raise SystemExit(f"error: reconfiguring {n_slots} slots: {pool.started} of {2 * n_slots} new shares started "
                         f"within {limit:g} s; the runtime's reconfiguration is stuck") from None
    wall = time.perf_counter() - t0
    cluster.finish()
    broken = [b for b in cluster.batches if b.status != "ok"]
    if broken or cluster.policy_errors or cluster.reconfiguration_errors:
        raise SystemExit(f"error: reconfiguring {n_slots} slots: {len(broken)} batches did not run ok, "
                         f"{cluster.policy_errors} policy errors, reconfiguration errors "
                         f"{cluster.reconfiguration_errors}; the run is broken, its times mean nothing")
    return (wall - (selector.waited - waited0)) * 1e3, wall * 1e3


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", type=listed(above(0, int)), default="16,158",
                    help="slots to reconfigure, comma-separated")
    ap.add_argument("--drain-ms", type=above(0), default=50.0, help="how long each old slot's batch runs")
    ap.add_argument("--rounds", type=above(0, int), default=3)
    args = ap.parse_args(argv)
    print(f"{'slots':>6} {'loop busy (ms)':>15} {'wall (ms)':>10}   (median of {args.rounds})")
    for n in args.slots:
        runs = [precise.run(one(n, args.drain_ms / 1000)) for _ in range(args.rounds)]
        print(f"{n:>6} {statistics.median(b for b, _ in runs):>15.1f} {statistics.median(w for _, w in runs):>10.0f}")
    return 0


if __name__ == "__main__":
    run_main(main)
