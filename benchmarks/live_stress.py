"""Scheduler-only real-time stress test of the live runtime (like Symphony's own stress test).

    PYTHONPATH=. python benchmarks/live_stress.py [--system symphony] [--rates 1000,2000,5000] [--seconds 3]
    PYTHONPATH=. python benchmarks/live_stress.py --system all --instant --rates 100000 --seconds 2 --repeats 2

The policy runs inside LiveCluster on the precise event loop exactly as in
the frontend, but without HTTP or workers: requests are generated in-process
(Poisson, spread evenly over the models) and a fake pool runs each slot's
batches in order for their profiled time (loop timers), or instantly with
--instant. For each offered rate it reports the scheduling lag:

- timer lag: when each policy timer fired minus when it was planned;
- arrival lag: when each arrival was handed to the policy minus its
  scheduled time (the loop falling behind shows here first).

and the highest rate whose p99 of both stays within --bound-ms (2 ms, the
tolerance Symphony's own stress test uses).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import math
import sys
import time

import numpy as np
from _cli import Parser, above, at_least, listed, run_main, system_names

import systems  # noqa: E402
from harness.core import ModelSpec, Slot  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.ledger import Ledger  # noqa: E402
from harness.live import cores  # noqa: E402
from harness.live import loop as precise  # noqa: E402
from harness.live.cluster import LiveCluster  # noqa: E402
from harness.profiles import LatencyCurve  # noqa: E402


class FakePool:
    """Each slot runs its batches in order for their profiled time; nothing leaves the process."""

    def __init__(self, instant: bool):
        self.loop = asyncio.get_running_loop()
        self.instant = instant
        self.free_at = collections.defaultdict(float)      # slot -> when it is free (slots a reconfiguration adds)
        self.replies: list = []                              # instant batches' replies due next turn
        self.on_lost = None

    # WorkerPool.submit's parameters, in its order: LiveCluster calls it positionally (tests/test_benchmarks_cli.py
    # checks the two still match).
    def submit(self, slot, batch_id, model, size, start_within, payload=None, expected=0.0, stage=None, rows=None,
               on_reply=None, through=None, busy=None):
        if self.instant:
            # A batch takes no time, so its slot is free whenever one comes: it starts at once (late only if its
            # latest start has already passed) and replies in the next turn, the very replies the general case
            # below gives, without its per-slot bookkeeping (half the stand-in's own time per batch, which is
            # not the runtime's and should not weigh on what this measures). The replies of one turn come
            # back together, as a worker's channel hands over all the replies it read in one turn.
            late = start_within is not None and start_within < 0
            self.replies.append((on_reply, {"batch": batch_id, "status": "late" if late else "ok", "exec": 0.0,
                                            "wait": 0.0, "error": ""}))
            if len(self.replies) == 1:
                self.loop.call_soon(self.reply)
            return
        now = self.loop.time()
        start = max(now, self.free_at[slot])
        if start_within is not None and start - now > start_within:
            reply, end = {"batch": batch_id, "status": "late", "exec": 0.0, "wait": start - now, "error": ""}, start
        else:
            end = self.free_at[slot] = start + expected
            reply = {"batch": batch_id, "status": "ok", "exec": expected, "wait": start - now, "error": ""}
        if end <= now:
            self.loop.call_soon(on_reply, reply)   # as a worker's reply: never from inside the dispatch
        else:
            self.loop.call_at(end, on_reply, reply)

    def reply(self):
        replies, self.replies = self.replies, []
        for on_reply, reply in replies:
            on_reply(reply)

    def abort(self, slot, batch_id):
        pass

    def stop_at_boundary(self, slot, batch_id):
        pass                  # a chain of stages runs whole here: its end is already booked

    # A reconfiguration (jigsaw, dstack, paris_elsa, the autoscaler): slots start and stop at once here, where
    # real workers take seconds to load models; the policy's own cost is what this measures.
    async def add(self, slot, spec):
        pass

    async def remove(self, slot):
        pass

    def kill(self, slot):
        pass

    def free(self, slot, rows):
        pass


async def one_rate(system: str, rate: float, seconds: float, n_slots: int, n_models: int, slo_ms: float,
                   curve: LatencyCurve, instant: bool, seed: int) -> dict:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(cores.executor())     # offloaded solves off the loop's core, when it is pinned
    rng = np.random.default_rng(seed)
    n = max(1, int(rate * seconds))
    times = np.cumsum(rng.exponential(1.0 / rate, n)).tolist()
    which = rng.integers(0, n_models, n).tolist()
    lag = np.empty(n)
    models = {f"m{i}": ModelSpec(f"m{i}", slo_ms / 1000) for i in range(n_models)}
    names = list(models)
    slots = [Slot(i, f"s{i}", "sleep", "whole", frozenset(models), device=i) for i in range(n_slots)]
    policy_cls = systems.policy_class(system)            # (imports the policy's modules before the clock starts)
    clock = precise.Clock(time.time() + 0.1)             # run time 0 is 0.1 s from now
    # Every slot, and any a policy's reconfiguration creates, runs every model on the one sleep curve.
    ledger = Ledger(slots, [{m: curve for m in models}] * n_slots, lambda spec: {m: curve for m in models})
    cluster = LiveCluster(ledger, FakePool(instant), clock, {m: s.slo for m, s in models.items()})
    policy = policy_cls(cluster, models, policy_cls.Config())
    precise.quiet_gc()     # the previous rate's garbage goes now, not mid-run; the policy's is kept, as the scheduler's
    done = loop.create_future()
    i = 0

    def drive():
        # As the scheduler process reads its ingresses: the arrivals due when it looks, as one message, then
        # back to the loop, so timers and replies due meanwhile run between messages as they do there (a loop
        # that took arrivals until none was due would starve every timer once it falls behind).
        nonlocal i
        now = clock.now
        due = bisect.bisect_right(times, now(), lo=i)
        while i < due:
            lag[i] = now() - times[i]
            cluster.arrive(names[which[i]], i, times[i])
            i += 1
        if i == n:
            done.set_result(None)
        elif times[i] <= now():
            loop.call_soon(drive)
        else:
            loop.call_at(clock.to_monotonic(times[i]), drive)

    cluster.start(policy)
    loop.call_at(clock.to_monotonic(times[0]), drive)
    selector = loop._selector                           # a PreciseSelector: it counts its waiting time
    await asyncio.sleep(max(0.0, times[0] - clock.now()))
    waited0, t0 = selector.waited, time.monotonic()
    await done
    busy = 1 - (selector.waited - waited0) / (time.monotonic() - t0)
    await asyncio.sleep(min(0.3, 2 * slo_ms / 1000))    # let the last batches finish
    cluster.finish()
    timer = np.frombuffer(cluster.timer_lag, dtype=float) * 1e3
    arrival = lag * 1e3
    status = [r.status for r in ledger.items]
    ok = [b.size for b in cluster.batches if b.status == "ok"]
    pct = lambda x, q: float(np.percentile(x, q)) if len(x) else 0.0  # noqa: E731
    return {"rate": rate, "requests": n, "slots": n_slots, "timers": len(timer),
            "timer_p50": pct(timer, 50), "timer_p99": pct(timer, 99), "timer_max": pct(timer, 100),
            "arrival_p50": pct(arrival, 50), "arrival_p99": pct(arrival, 99),
            "ok": status.count("ok") / n, "batch": float(np.mean(ok)) if ok else 0.0,
            "busy": busy, "errors": cluster.policy_errors, "timer_lag_ms": timer, "arrival_lag_ms": arrival}


def check(system: str, r: dict) -> None:
    """A run whose policy or dispatches raised, or that served nothing, measured nothing: stop, loudly."""
    if r["errors"] or not r["ok"]:
        raise SystemExit(f"error: {system} at {r['rate']:,.0f} requests/s served {r['ok']:.1%} with "
                         f"{r['errors']} policy errors (their tracebacks are above): the run is broken, not slow; "
                         "fix it before reading any lag")


def enough_slots(rate: float, curve: LatencyCurve, slo_ms: float) -> int:
    """Slots for 1.3x the load at the Nexus-rule batch size (the largest whose latency fits half the SLO)."""
    b = max(1, curve.largest_batch_within(slo_ms / 2000))
    return max(1, math.ceil(1.3 * rate * curve.mean[b] / b))


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--system", type=system_names, default="symphony",
                    help="a system, several separated by commas, or all (each in turn, with a summary at the end)")
    ap.add_argument("--repeats", type=above(0, int), default=1, help="runs of each system over the rates")
    ap.add_argument("--rates", type=listed(above(0)), default="2000,5000,10000,20000,40000,60000,80000,100000,120000",
                    help="offered rates, requests/s, in increasing order")
    ap.add_argument("--seconds", type=above(0), default=3.0, help="arrivals per rate, in seconds")
    ap.add_argument("--gpus", type=at_least(0), default=0,
                    help="slots (0: enough for each rate, 1.3x the load at the Nexus-rule batch size)")
    ap.add_argument("--models", type=above(0, int), default=10)
    ap.add_argument("--slo-ms", type=above(0), default=100.0)
    ap.add_argument("--a-ms", type=at_least(0, float), default=1.082, help="sleep model l(b) = a*b + c")
    ap.add_argument("--c-ms", type=above(0), default=5.204)
    ap.add_argument("--instant", action="store_true", help="batches complete at once instead of after l(b)")
    ap.add_argument("--bound-ms", type=above(0), default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", default="none",
                    help="the core to run on, as the scheduler's runtime.scheduler_cpu: none (the OS places it), a "
                         f"core number, or auto (the fastest, measured, on hosts of {cores.MIN_CORES}+ cores)")
    args = ap.parse_args(argv)
    chosen, rates = args.system, args.rates
    try:
        core, measured = cores.choose(args.cpu)
    except HarnessError as exc:
        ap.error(str(exc))
    if core is not None:
        cores.pin(core)
    curve = LatencyCurve.linear(args.a_ms, args.c_ms, 64)
    print(f"Python {sys.version.split()[0]}; {cores.describe(core, measured)}; this process runs the reference "
          f"work in {cores.core_speed_ms():.1f} ms (lower is faster)")
    summary = []
    for name in chosen:
        for _ in range(args.repeats):
            summary.append((name, stress(name, rates, curve, args)))
    print("lag in ms; ok: requests served; batch: mean size; busy: the loop's time not spent waiting for events "
          "or timers (100%: saturated); core: ms this process took for the reference work right after (lower is "
          "faster; a slowed core shows here)")
    if len(summary) > 1:
        print(f"\nsummary at {rates[-1]:.0f} requests/s, over {args.repeats} run(s) each "
              f"(within: p99 of both lags <= {args.bound_ms:g} ms)")
        print(f"{'system':<20} {'timer p99':>11} {'arrival p99':>12} {'busy':>9} {'within':>7}")
        for name in chosen:
            runs = [r for n, r in summary if n == name]
            top = [r[-1] for r in runs if r[-1]["rate"] == rates[-1]]     # (a run saturated below it stopped)
            if not top:
                print(f"{name:<20} {'(saturated below this rate)':>42}")
                continue
            def span(key, f):
                low, high = f(min(t[key] for t in top)), f(max(t[key] for t in top))
                return low if low == high else f"{low}-{high}"

            within = sum(max(t["timer_p99"], t["arrival_p99"]) <= args.bound_ms for t in top)
            print(f"{name:<20} {span('timer_p99', lambda x: f'{x:.2f}'):>11} "
                  f"{span('arrival_p99', lambda x: f'{x:.2f}'):>12} {span('busy', lambda x: f'{x:.0%}'):>9} "
                  f"{within:>3} of {len(runs)}")
    return 0


def stress(system: str, rates: list[float], curve: LatencyCurve, args) -> list[dict]:
    """One system over the rates, in increasing order, a table row each; stops once the loop is saturated."""
    slots = (lambda rate: args.gpus) if args.gpus else (lambda rate: enough_slots(rate, curve, args.slo_ms))
    print(f"\n{system} on {args.gpus or 'enough'} emulated slots, {args.models} models, SLO {args.slo_ms:g} ms, "
          f"l(b) = {args.a_ms:g}*b + {args.c_ms:g} ms{' (instant batches)' if args.instant else ''}")
    head = (f"{'rate/s':>8} {'requests':>8} {'timers':>7} {'timer p50':>9} {'p99':>7} {'max':>7} "
            f"{'arrival p50':>11} {'p99':>7} {'slots':>5} {'ok':>6} {'batch':>6} {'busy':>5} {'core':>5}")
    print(head + "\n" + "-" * len(head))
    best, results = None, []
    for rate in rates:
        r = precise.run(one_rate(system, rate, args.seconds, slots(rate), args.models, args.slo_ms, curve,
                                 args.instant, args.seed))
        results.append(r)
        # The core's speed right after the rate: a lent host's cores change speed over minutes.
        speed = cores.core_speed_ms(repeats=2)
        print(f"{r['rate']:>8.0f} {r['requests']:>8} {r['timers']:>7} {r['timer_p50']:>9.3f} {r['timer_p99']:>7.3f} "
              f"{r['timer_max']:>7.2f} {r['arrival_p50']:>11.3f} {r['arrival_p99']:>7.3f} {r['slots']:>5} "
              f"{r['ok']:>6.1%} "
              f"{r['batch']:>6.1f} {r['busy']:>5.0%} {speed:>5.0f}", flush=True)
        check(system, r)
        within = max(r["timer_p99"], r["arrival_p99"]) <= args.bound_ms
        if within:
            best = rate
        elif max(r["timer_p99"], r["arrival_p99"]) > 50 * args.bound_ms:
            print("(saturated: higher rates skipped)")
            break
    print(f"{system}: highest rate with p99 scheduling lag <= {args.bound_ms:g} ms: "
          + (f"{best:.0f} requests/s" if best else "none of those tried"))
    return results


if __name__ == "__main__":
    run_main(main)
