"""The live path's rate and overhead: Locust -> HTTP frontend -> policy -> workers, end to end.

At increasing Poisson rates, eager on four emulated slots of a fast sleep
model (l(b) = 0.02 ms * b + 0.3 ms, so the slots never limit), it prints the
p99 send lag (the load generator keeping its schedule), goodput, and the
serving overhead: latency minus execution time (p50, p99), and latency minus
queueing and execution (the transport and frontend alone). The highest rate
with p99 send lag <= 2 ms is the live path's rate on this machine.

    python benchmarks/live_rate.py [--rates 500,1000,2000] [--locust-workers 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="500,1000,1500,2000,2500,3000")
    ap.add_argument("--locust-workers", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=12)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in [float(r) for r in args.rates.split(",")]:
            run_dir = Path(tmp) / f"rate-{rate:g}"
            cmd = [sys.executable, "-m", "harness", "runtime=live", "system=eager", "cluster=sleep1000",
                   "cluster.count=4", "cluster.sleep.a_ms=0.02", "cluster.sleep.c_ms=0.3", "models=sleep10",
                   "workload=poisson", f"workload.rate={rate}", f"duration_s={args.seconds}", "warmup_s=2",
                   "cooldown_s=1", f"runtime.locust_workers={args.locust_workers}", f"hydra.run.dir={run_dir}"]
            run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
            if run.returncode != 0:
                print(f"rate {rate:g}: run failed: {run.stderr.strip()[-300:]}")
                break
            s = json.loads((run_dir / "summary.json").read_text())
            r = pd.read_parquet(run_dir / "requests.parquet")
            ok = r[r["status"] == "ok"]
            overhead = (ok["latency"] - ok["exec_time"]) * 1e3
            transport = (ok["latency"] - ok["queue_time"] - ok["exec_time"]) * 1e3
            rows.append({"rate": rate, "goodput": s["goodput"], "attainment": s["slo_attainment"],
                         "send lag p99 ms": s["send_lag_p99_ms"],
                         "lat-exec p50 ms": overhead.median(), "lat-exec p99 ms": overhead.quantile(0.99),
                         "transport p50 ms": transport.median(), "transport p99 ms": transport.quantile(0.99)})
            print(f"  {rate:g} req/s: send lag p99 {s['send_lag_p99_ms']:.2f} ms", flush=True)
    table = pd.DataFrame(rows)
    print(f"\nmachine: {os.cpu_count()} cores; locust workers: {args.locust_workers}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    within = table[table["send lag p99 ms"] <= 2.0]
    print(f"highest rate with p99 send lag <= 2 ms: {within['rate'].max():g} req/s" if len(within)
          else "no rate kept p99 send lag <= 2 ms")


if __name__ == "__main__":
    main()
