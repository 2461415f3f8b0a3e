"""The scheduler-only stress test as Symphony's paper runs it: the highest rate, and the GPUs it takes, at
which no request lags more than 2 ms.

    PYTHONPATH=. python benchmarks/symphony_stress.py [--systems symphony,eager,nexus] [--seconds 3] [--judge max]

The public dispatcher's stress test (tools/bench_dispatcher/stress_rankmt_main.cpp in its code) drives the
scheduler with fake backends and one load generator per model on l(b) = 1.082 ms * b + 5.204 ms, SLO
100 ms, and fails at the first request handed to the scheduler more than 2 ms after its scheduled time.
Here each policy runs in the live cluster on the precise event loop with instant fake backends
(live_stress.one_rate), on as many GPUs as the rate needs (live_stress.enough_slots). The total rate
doubles from --start while a rate passes, then is bisected to --tolerance; a rate passes when, in the
best of --repeats runs, the largest request lag (--judge max, the public code's rule) or its p99 (--judge
p99) is within --bound-ms. A Python event loop on a host shared with other work is paused now and then by
that work, where a C++ one pinned to cores of its own is not: the best of several runs, and the p99,
judge the scheduler's own cost rather than those pauses. Lag that comes with a loop far from busy is the
host's, not the scheduler's.
"""

from __future__ import annotations

import numpy as np
from _cli import Parser, above, run_main, system_names
from live_stress import check, enough_slots, one_rate

from harness.live import loop as precise
from harness.profiles import LatencyCurve

CURVE = LatencyCurve.linear(1.082, 5.204, 64)
SLO_MS = 100.0


def lag_ms(r: dict, judge: str) -> float:
    lag = r["arrival_lag_ms"]
    return float(lag.max() if judge == "max" else np.percentile(lag, 99))


def highest_passing(system: str, args) -> dict | None:
    """The passing run at the highest rate found for one system (None: the first failed)."""
    tried: list[dict] = []

    def passes(rate: float) -> bool:
        runs = [precise.run(one_rate(system, rate, args.seconds, enough_slots(rate, CURVE, SLO_MS), args.models,
                                     SLO_MS, CURVE, True, args.seed + k)) for k in range(args.repeats)]
        for r in runs:
            check(system, r)
        r = min(runs, key=lambda r: lag_ms(r, args.judge))
        r["passed"] = lag_ms(r, args.judge) <= args.bound_ms
        tried.append(r)
        print(f"  {system:>9} {rate:>10,.0f} req/s on {r['slots']:>5} GPUs: lag max {lag_ms(r, 'max'):7.2f} "
              f"p99 {lag_ms(r, 'p99'):6.2f} ms, loop busy {r['busy']:4.0%}, served {r['ok']:.1%} "
              f"(best of {args.repeats})", flush=True)
        return r["passed"]

    lo, hi = None, None                    # highest passing, lowest failing
    rate = args.start
    while hi is None and rate <= args.max_rate:
        lo, hi = (rate, hi) if passes(rate) else (lo, rate)
        rate *= 2
    while lo is not None and hi is not None and hi - lo > args.tolerance * lo:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if passes(mid) else (lo, mid)
    return max((r for r in tried if r["passed"]), key=lambda r: r["rate"], default=None)


def main(argv=None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", type=system_names, default="symphony,eager,nexus")
    ap.add_argument("--models", type=above(0, int), default=10)
    ap.add_argument("--seconds", type=above(0), default=3.0, help="arrivals per run, in seconds")
    ap.add_argument("--start", type=above(0), default=1000.0, help="first total rate tried, requests/s")
    ap.add_argument("--max-rate", type=above(0), default=1e6)
    ap.add_argument("--tolerance", type=above(0), default=0.1,
                    help="bisect until the bracket is this close (relative)")
    ap.add_argument("--judge", choices=("max", "p99"), default="max", help="which request lag must be within the bound")
    ap.add_argument("--repeats", type=above(0, int), default=3,
                    help="runs per rate, each with its own seed; the rate passes if the best does")
    ap.add_argument("--bound-ms", type=above(0), default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(f"{args.models} models, l(b) = 1.082*b + 5.204 ms, SLO {SLO_MS:g} ms, instant backends; a run passes when "
          f"the {args.judge} request lag is <= {args.bound_ms:g} ms")
    found = {s: highest_passing(s, args) for s in args.systems}
    for system, best in found.items():
        if best is None:
            print(f"{system}: no rate tried passed (from {args.start:,.0f} req/s)")
        else:
            print(f"{system}: highest rate with {args.judge} request lag <= {args.bound_ms:g} ms: "
                  f"{best['rate']:,.0f} req/s on {best['slots']} GPUs")
    return 0


if __name__ == "__main__":
    run_main(main)
