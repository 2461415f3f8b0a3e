"""How fast can Locust replay a schedule open loop on this machine? (harness.load.replay)

    PYTHONPATH=. python benchmarks/load_rate.py [--rates 500,1000,2000,4000,6000,8000] [--seconds 2]
                                                [--workers 0,2] [--bound-ms 2]

Against a trivial but real HTTP endpoint (an aiohttp server in a subprocess
that answers the v2 infer 200 at once), it replays constant-rate schedules
of increasing rate, one Locust process and then a master with N worker
processes, and prints for each rate the p99 and max send lag (t_sent -
t_sched) and the achieved send rate. The highest rate whose p99 send lag
stays within --bound-ms (2 ms: the validity bound of a run, and the
tolerance Symphony's own stress test uses) is the load one host can offer
with that setup; rates above a failing one are not tried. The server shares
the machine's cores with Locust, as it would in a one-host run; other load
on the machine shows directly as send lag, so the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _cli import Parser, above, at_least, listed, run_main

from harness import load  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.live.protocol import infer_response  # noqa: E402

LEAD_S = 2.5               # epoch ahead of the call: Locust's start
LEAD_WORKERS_S = 3.5       # ... and its workers joining the master


def serve() -> None:
    import asyncio

    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response(infer_response(request.match_info["model"], body["id"], 0, 0))

    async def main():
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def measure(url: str, rate: float, seconds: float, workers: int, work: Path) -> dict:
    n = int(rate * seconds)
    run = Path(tempfile.mkdtemp(prefix=f"w{workers}-r{rate:g}-", dir=work))     # (a rate given twice: its own)
    pd.DataFrame({"id": np.arange(n, dtype=np.int64), "model": "m",
                  "t_sched": np.arange(n) / rate}).to_parquet(run / "schedule.parquet", index=False)
    lead = LEAD_WORKERS_S if workers else LEAD_S
    before = resource.getrusage(resource.RUSAGE_CHILDREN)      # Locust's processes, once replay reaps them
    client = load.replay(run / "schedule.parquet", url, time.time() + lead, run / "client", workers=workers,
                         timeout_s=10.0)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lag = (client["t_sent"] - client["t_sched"]).to_numpy() * 1e3
    span = client["t_sent"].max() - client["t_sent"].min()
    return {"rate": rate, "p50_ms": float(np.percentile(lag, 50)), "p99_ms": float(np.percentile(lag, 99)),
            "max_ms": float(lag.max()), "achieved": (n - 1) / span if span > 0 else float("nan"),
            "ok": float((client["status"] == "ok").mean()), "cpu_us": cpu / n * 1e6}


def main() -> int:
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=listed(above(0)), default="500,1000,2000,3000,4000,6000,8000,10000")
    parser.add_argument("--seconds", type=above(0), default=2.0)
    parser.add_argument("--workers", type=listed(at_least(0)), default="0,2",
                        help="Locust setups: 0 = one process, N = master + N workers")
    parser.add_argument("--bound-ms", type=above(0), default=2.0)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return 0
    if min(args.rates) * args.seconds < 1:
        parser.error(f"--rates x --seconds must make at least one request per rate (got {min(args.rates):g}/s "
                     f"for {args.seconds:g} s)")
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
    setups = {workers: f"{workers} workers" if workers else "1 process" for workers in args.workers}
    best: dict[str, float] = {}         # per setup measured at all: its highest rate within the bound (0: none)
    try:
        line = server.stdout.readline()
        if not line:
            print(f"error: the test server did not start (exit {server.wait(10)}); see its error above",
                  file=sys.stderr)
            return 1
        url = f"http://127.0.0.1:{json.loads(line)['port']}"
        with tempfile.TemporaryDirectory(prefix="load-rate-") as tmp:
            # Send lag is what a busy CPU shows first: say how busy the machine was.
            print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} before")
            print(f"{'setup':>12} {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'achieved/s':>11} {'ok':>6}"
                  f" {'Locust CPU us/req':>18}")
            for workers, setup in setups.items():
                for rate in args.rates:
                    try:
                        m = measure(url, rate, args.seconds, workers, Path(tmp))
                    except HarnessError as exc:
                        print(f"{setup:>12} {rate:8.0f}  failed: {exc}")
                        break
                    print(f"{setup:>12} {rate:8.0f} {m['p50_ms']:8.3f} {m['p99_ms']:8.3f} {m['max_ms']:8.3f} "
                          f"{m['achieved']:11.0f} {m['ok']:6.1%} {m['cpu_us']:18.0f}", flush=True)
                    best.setdefault(setup, 0.0)
                    if m["p99_ms"] > args.bound_ms or m["ok"] < 1.0:
                        break
                    best[setup] = rate
    finally:
        server.terminate()
        server.wait(10)
    print(f"load average {os.getloadavg()[0]:.2f} after")
    for setup, rate in best.items():
        print(f"{setup}: highest rate with p99 send lag <= {args.bound_ms:g} ms: "
              + (f"{rate:.0f}/s" if rate else "none of those tried"))
    failed = [setup for setup in setups.values() if setup not in best]
    if failed:
        print(f"error: {', '.join(failed)}: the replay failed at the first rate, so nothing was measured; see the "
              "failure above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
