"""How long a served batch takes, against the profiler's back-to-back CUDA-graph time.

    python benchmarks/gpu_served_latency.py [--models resnet50,densenet121,vit_b_16] [--batch 1,8,32]
        [--share 25] [--siblings 3] [--gaps-ms 2,20] [--iters 40]

A serving worker launches one batch at a time onto a GPU that was idle a
moment ago, often beside other MPS shares that are busy. The profiler
replays a graph back to back on a warm, otherwise idle partition. This
measures, per model and batch size, the median of:

  kernel      back-to-back replays timed by CUDA events (what profiles held so far)
  host        GpuExecutor.run timed on the host, back to back (launch + GPU + sync)
  gap<N>      GpuExecutor.run after an idle gap of about N ms, as a server sees it

in three setups: the whole GPU alone; one MPS share of --share percent alone;
and that share while --siblings other shares of the same size replay
resnet50 batch 16 non-stop (the profiler's sibling load). It also reads the SM clock (NVML) just before
each launch in the gap runs. A private MPS daemon is started and always
stopped. Prints one table; needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _cli import Parser, above, at_least, listed, require_cuda, run_main, writable_file

SIBLING_MODEL, SIBLING_BATCH = "resnet50", 16


def sm_clock_reader():
    """A function returning the SM clock in MHz of device 0, or None without NVML."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(int(os.environ.get("HARNESS_NVML_INDEX", "0")))
        return lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
    except Exception:                    # noqa: BLE001 - clocks are a detail of this report
        return lambda: None


def measure(args) -> None:
    """Child: print one JSON line per model and batch size."""
    from harness.gpu.executor import GpuExecutor
    from harness.gpu.profiler import time_replays

    clock = sm_clock_reader()
    rng = np.random.default_rng(0)
    for model in args.models:
        ex = GpuExecutor([model], batch_sizes=args.batch)
        for b in args.batch:
            row = {"model": model, "batch": b,
                   "kernel": float(np.median(time_replays(ex.graph(model, b), args.iters, warmup_s=0.1)))}
            host = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                ex.run(model, b, None)
                host.append((time.perf_counter() - t0) * 1e3)
            row["host"] = float(np.median(host))
            for gap in args.gaps_ms:
                times, clocks = [], []
                for _ in range(args.iters):
                    time.sleep(gap / 1e3 * rng.uniform(0.5, 1.5))
                    clocks.append(clock())
                    t0 = time.perf_counter()
                    ex.run(model, b, None)
                    times.append((time.perf_counter() - t0) * 1e3)
                row[f"gap{gap:g}"] = float(np.median(times))
                known = [c for c in clocks if c is not None]
                row[f"clock_gap{gap:g}"] = float(np.median(known)) if known else None
            print(json.dumps(row), flush=True)
        ex.close()


def child_args(args) -> list[str]:
    return ["--models", ",".join(args.models), "--batch", ",".join(map(str, args.batch)),
            "--gaps-ms", ",".join(f"{g:g}" for g in args.gaps_ms), "--iters", str(args.iters)]


def run_setup(name: str, args, env: dict, siblings: int) -> list[dict]:
    print(f"[{name}] measuring", file=sys.stderr, flush=True)
    me = [sys.executable, os.path.abspath(__file__)]
    loaders = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i in range(siblings):
                ready = Path(tmp) / f"ready{i}"
                load = [sys.executable, "-m", "harness.gpu.profiler", "--sibling-load", str(ready), "--partition",
                        f"mps{args.share}", "--models", SIBLING_MODEL, "--sibling-batch", str(SIBLING_BATCH)]
                loaders.append((subprocess.Popen(load, env=env), ready))
            deadline = time.monotonic() + 120
            while not all(r.exists() for _, r in loaders):
                if any(p.poll() is not None for p, _ in loaders) or time.monotonic() > deadline:
                    raise RuntimeError(f"[{name}] a sibling load did not start")
                time.sleep(0.2)
            out = subprocess.run(me + ["--measure"] + child_args(args), env=env, capture_output=True, text=True,
                                 check=False)
            if out.returncode != 0:
                raise RuntimeError(f"[{name}] measuring failed: {out.stderr[-2000:]}")
            return [dict(json.loads(line), setup=name) for line in out.stdout.splitlines() if line.startswith("{")]
        finally:
            for p, _ in loaders:
                p.kill()
                p.wait()


def main() -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet50,densenet121,vit_b_16")
    ap.add_argument("--batch", type=listed(above(0, int)), default="1,8,32")
    ap.add_argument("--share", type=above(0, int), default=25,
                    help="MPS active thread percentage of the measured share")
    ap.add_argument("--siblings", type=at_least(0), default=3, help="busy shares beside it in the third setup")
    ap.add_argument("--gaps-ms", default="2,20")
    ap.add_argument("--iters", type=above(0, int), default=40)
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", type=writable_file, help="also write the rows to this file")
    args = ap.parse_args()
    require_cuda()
    args.models = [m for m in args.models.split(",") if m]
    args.batch = sorted(args.batch)
    args.gaps_ms = [float(g) for g in args.gaps_ms.split(",") if g]
    if args.measure:
        measure(args)
        return 0

    from harness.gpu.mps import mps_daemon

    rows = run_setup("whole", args, dict(os.environ), 0)
    with mps_daemon() as mps:
        env = mps.client_env(args.share)
        rows += run_setup(f"mps{args.share}", args, env, 0)
        rows += run_setup(f"mps{args.share}+{args.siblings}busy", args, env, args.siblings)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    cols = ["kernel", "host"] + [f"gap{g:g}" for g in args.gaps_ms]
    print("medians in ms; ratio = slowest gap / kernel; clock = SM MHz before launches after the longest gap")
    print(f"{'setup':<18}{'model':<13}{'batch':>6}" + "".join(f"{c:>9}" for c in cols) + f"{'ratio':>8}{'clock':>7}")
    for r in rows:
        ratio = max(r[c] for c in cols[2:]) / r["kernel"] if len(cols) > 2 else r["host"] / r["kernel"]
        clock = r.get(f"clock_gap{args.gaps_ms[-1]:g}") if args.gaps_ms else None
        print(f"{r['setup']:<18}{r['model']:<13}{r['batch']:>6}" + "".join(f"{r[c]:>9.3f}" for c in cols)
              + f"{ratio:>8.3f}{clock if clock is not None else '-':>7}")
    return 0


if __name__ == "__main__":
    run_main(main)
