"""The live path's rate, overhead and where its time and CPU go: Locust -> ingress -> scheduler -> workers.

At increasing Poisson rates, eager on four emulated slots of a near-instant
sleep model (l(b) = 0.001 ms + 0.001 ms * b, so the slots never limit), it
prints per rate:

- p99 send lag (the load generator keeping its schedule; valid runs need <= 2 ms) and goodput;
- the serving overhead: latency minus execution time (p50, p99);
- per stage, median and p99 in ms: send lag; client -> ingress (t_arrival - t_sent); ingress ->
  scheduler; scheduler -> batch start (queueing); execution; batch end -> client;
- CPU per request (microseconds, summed over the run's processes of each kind: Locust, ingress,
  scheduler, workers), so the side that limits a run -- and the cores each side needs at a
  higher rate -- can be read off.

    python benchmarks/live_rate.py [--rates 1000,2000,3000] [--locust-workers -1] [--ingresses 0]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
from _cli import Parser, above, at_least, child_error, listed, run_main

ROOT = Path(__file__).resolve().parent.parent
LEAD_S = 4.0              # runtime.start_lead_s: the schedule starts this long after Locust does
KINDS = {"locust": "locust", "harness.live.ingress": "ingress", "harness.live.scheduler": "scheduler",
         "harness.live.worker": "workers"}


class CpuMeter:
    """Samples the CPU time of every process under `root`, by kind, so the CPU spent inside the
    measurement window (not on imports and start-up) can be told per kind."""

    def __init__(self, root: int):
        self.root = psutil.Process(root)
        self.samples: dict[int, tuple[str, list[tuple[float, float]]]] = {}
        self.locust_started = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                children = self.root.children(recursive=True)
            except psutil.Error:
                return
            now = time.monotonic()
            for p in children:
                try:
                    line = " ".join(p.cmdline())
                    kind = next((k for needle, k in KINDS.items() if needle in line), None)
                    if kind is not None:
                        t = p.cpu_times()
                        self.samples.setdefault(p.pid, (kind, []))[1].append((now, t.user + t.system))
                        if kind == "locust" and self.locust_started is None:
                            self.locust_started = now
                except psutil.Error:
                    continue

    def window(self, lead: float, warmup: float, seconds: float) -> dict[str, float]:
        """CPU seconds per kind inside the measurement window (the schedule starts `lead` after Locust)."""
        self.stop.set()
        self.thread.join()
        a = self.locust_started + lead + warmup
        b = self.locust_started + lead + seconds
        out = dict.fromkeys(KINDS.values(), 0.0)
        for kind, series in self.samples.values():
            t = [s[0] for s in series]
            c = [s[1] for s in series]
            out[kind] += float(np.interp(b, t, c) - np.interp(a, t, c))
        return out


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=listed(above(0)), default="500,1000,2000,3000,4000")
    ap.add_argument("--locust-workers", type=at_least(-1), default=-1, help="-1: sized to the host (runtime default)")
    ap.add_argument("--ingresses", type=at_least(0), default=0, help="0: sized to the host (runtime default)")
    # The run's 2 s warm-up and 1 s cool-down come out of it; what is left is measured.
    ap.add_argument("--seconds", type=above(3), default=12, help="each run's duration, > 3 s")
    args = ap.parse_args()
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        for rate in args.rates:
            run_dir = Path(tmp) / f"rate-{rate:g}"
            cmd = [sys.executable, "-m", "harness", "runtime=live", "system=eager", "cluster=sleep1000",
                   "cluster.count=4", "cluster.sleep.a_ms=0.001", "cluster.sleep.c_ms=0.001", "models=sleep10",
                   "workload=poisson", f"workload.rate={rate}", f"duration_s={args.seconds}", "warmup_s=2",
                   "cooldown_s=1", f"runtime.locust_workers={args.locust_workers}",
                   f"runtime.ingresses={args.ingresses}", f"hydra.run.dir={run_dir}"]
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            meter = CpuMeter(proc.pid)
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0 or meter.locust_started is None:
                print(f"error: rate {rate:g}: the run failed (exit {proc.returncode}): {child_error(err)}",
                      file=sys.stderr)
                failed = True
                break
            window = (args.seconds - 2 - 1)
            cpu = meter.window(LEAD_S, 2.0, args.seconds - 1.0)
            s = json.loads((run_dir / "summary.json").read_text())
            r = pd.read_parquet(run_dir / "requests.parquet")
            server = pd.read_parquet(run_dir / "server_requests.parquet", columns=["id", "t_arrival", "t_scheduler"])
            r = r.merge(server, on="id", how="left")
            ok = r[r["status"] == "ok"]
            stages = {
                "send lag": ok["t_sent"] - ok["t_sched"],
                "to ingress": ok["t_arrival"] - ok["t_sent"],
                "to scheduler": ok["t_scheduler"] - ok["t_arrival"],
                "queued": ok["queue_time"] - (ok["t_scheduler"] - ok["t_arrival"]),
                "exec": ok["exec_time"],
                "back": ok["latency"] - (ok["t_arrival"] - ok["t_sched"]) - ok["queue_time"] - ok["exec_time"],
            }
            overhead = (ok["latency"] - ok["exec_time"]) * 1e3
            row = {"rate": rate, "goodput": s["goodput"], "send lag p99": s["send_lag_p99_ms"],
                   "overhead p50": overhead.median(), "overhead p99": overhead.quantile(0.99)}
            for name, v in stages.items():
                row[f"{name} p50"] = v.median() * 1e3
                row[f"{name} p99"] = v.quantile(0.99) * 1e3
            for kind, seconds in cpu.items():
                row[f"cpu {kind} us/req"] = seconds / (rate * window) * 1e6
            rows.append(row)
            print(f"  {rate:g} req/s: send lag p99 {s['send_lag_p99_ms']:.2f} ms, goodput {s['goodput']:,.0f}",
                  flush=True)
    if not rows:                      # the first run failed (said above): nothing to show
        return 1
    table = pd.DataFrame(rows).set_index("rate")
    print(f"\nmachine: {os.cpu_count()} cores; locust workers {args.locust_workers}, ingresses {args.ingresses} "
          "(-1 / 0: sized to the host); times in ms, CPU in microseconds per request")
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(table.T.to_string(float_format=lambda v: f"{v:.3f}"))
    within = table[table["send lag p99"] <= 2.0]
    print(f"highest rate with p99 send lag <= 2 ms: {within.index.max():g} req/s" if len(within)
          else "no rate kept p99 send lag <= 2 ms")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
