"""What a share starting beside serving shares costs them: the interference of a move that makes before it breaks.

    python benchmarks/gpu_start_interference.py [--serve resnet50:8] [--servers 3] [--share 25]
        [--start densenet121,resnet50,vit_b_16] [--start-batch 1,2,4,8,16,32,64,128] [--lead-s 3] [--json FILE]

When a policy re-cuts a GPU making before it breaks, the new share's worker
starts (a process, its CUDA context, its models built and a CUDA graph
captured per batch size) while the old shares serve beside it. Emulated
GPUs and the sim charge the start's time but not what it does to the shares
that serve meanwhile. This measures it: under a private MPS daemon,
--servers shares of --share percent each run --serve (model:batch) back to
back, each batch timed on the host as a worker sees it (launch to sync).
After --lead-s seconds a new share of the same size starts as a slot's
worker does (--start models, --start-batch sizes); --lead-s seconds after it
is ready the servers stop. Per serving share, the table gives the median and
p90 batch time before the start, while it runs and after it, and the
ratio of while to before; and how long the start took. A ratio near 1 means
the start is free for its neighbours; well above 1, that the emulation is
optimistic while a share starts. The daemon is always stopped. Needs a CUDA GPU.
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
from _cli import Parser, above, at_least, choice, listed, require_cuda, run_main, writable_file

from harness.gpu.models import MODELS  # noqa: E402

PHASES = ("before", "starting", "after")


def serve(args) -> None:
    """Child: run one model's batch back to back until the stop file appears; print (wall time, ms) pairs."""
    from harness.gpu.executor import GpuExecutor

    model, batch = args.serve
    ex = GpuExecutor([model], batch_sizes=[batch])
    Path(args.ready).touch()
    times = []
    while not Path(args.stop).exists():
        t0 = time.perf_counter()
        ex.run(model, batch, None)
        times.append((time.time(), (time.perf_counter() - t0) * 1e3))
    ex.close()
    print(json.dumps(times))


def start(args) -> None:
    """Child: start as a slot's worker does (this process, its context, its models and graphs)."""
    from harness.gpu.executor import GpuExecutor

    GpuExecutor(args.start, batch_sizes=args.start_batch).close()


def phases(times: list, began: float, ready: float) -> dict[str, list[float]]:
    """A server's batch times by phase: ended before the start began, ended while it ran, ended after it."""
    split = {p: [] for p in PHASES}
    for t_end, ms in times:
        split["before" if t_end < began else "starting" if t_end <= ready else "after"].append(ms)
    return split


def measure(args) -> tuple[list[dict], float]:
    from harness.gpu.mps import mps_daemon

    me = [sys.executable, os.path.abspath(__file__)]
    flags = ["--serve", ":".join(map(str, args.serve)), "--start", ",".join(args.start),
             "--start-batch", ",".join(map(str, args.start_batch))]
    with mps_daemon() as mps, tempfile.TemporaryDirectory() as tmp:
        env = mps.client_env(args.share)
        stop = Path(tmp) / "stop"
        servers = []
        try:
            for i in range(args.servers):
                ready = Path(tmp) / f"ready{i}"
                servers.append((subprocess.Popen(me + flags + ["--as-server", str(ready), str(stop)], env=env,
                                                 stdout=subprocess.PIPE, text=True), ready))
            deadline = time.monotonic() + 120
            while not all(r.exists() for _, r in servers):
                if any(p.poll() is not None for p, _ in servers) or time.monotonic() > deadline:
                    raise RuntimeError("a serving share did not start")
                time.sleep(0.1)
            time.sleep(args.lead_s)
            began = time.time()
            done = subprocess.run(me + flags + ["--as-starter"], env=env, capture_output=True, text=True)
            ready_at = time.time()
            if done.returncode != 0:
                raise RuntimeError(f"the starting share failed: {done.stderr.strip()[-1000:]}")
            time.sleep(args.lead_s)
            stop.touch()
            rows = []
            for i, (p, _) in enumerate(servers):
                out, _ = p.communicate(timeout=60)
                split = phases(json.loads(out.strip().splitlines()[-1]), began, ready_at)
                rows.append({"server": i, **{f"{ph}_{stat}": (float(np.percentile(v, q)) if v else float("nan"))
                                             for ph, v in split.items() for stat, q in (("p50", 50), ("p90", 90))},
                             **{f"{ph}_n": len(v) for ph, v in split.items()}})
            return rows, ready_at - began
        finally:
            stop.touch()
            for p, _ in servers:
                if p.poll() is None:
                    p.kill()
                p.wait()


def model_batch(text: str) -> tuple[str, int]:
    model, _, batch = text.partition(":")
    if not batch.isdigit() or int(batch) < 1:
        raise argparse.ArgumentTypeError(f"expected MODEL:BATCH, e.g. resnet50:8 (got {text!r})")
    return choice("model", MODELS)(model), int(batch)


def main() -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--serve", type=model_batch, default="resnet50:8", help="what each serving share runs")
    ap.add_argument("--servers", type=at_least(1), default=3, help="serving shares beside the one that starts")
    ap.add_argument("--share", type=above(0, int), default=25, help="MPS active thread percentage of every share")
    ap.add_argument("--start", type=listed(choice("model", MODELS)), default="densenet121,resnet50,vit_b_16",
                    help="the starting share's models")
    ap.add_argument("--start-batch", type=listed(above(0, int)), default="1,2,4,8,16,32,64,128",
                    help="the batch sizes it captures a graph for")
    ap.add_argument("--lead-s", type=above(0), default=3.0, help="serving alone before the start and after it")
    ap.add_argument("--json", type=writable_file, help="also write the rows to this file")
    ap.add_argument("--as-server", nargs=2, metavar=("READY", "STOP"), help=argparse.SUPPRESS)
    ap.add_argument("--as-starter", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if (args.servers + 1) * args.share > 100:
        ap.error(f"{args.servers + 1} shares of {args.share}% do not fit one GPU; lower --servers or --share")
    require_cuda()
    if args.as_server:
        args.ready, args.stop = args.as_server
        serve(args)
        return 0
    if args.as_starter:
        start(args)
        return 0
    rows, took = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps({"start_s": took, "rows": rows}, indent=1))
    model, batch = args.serve
    print(f"{args.servers} x {args.share}% serving {model} batch {batch}; a {args.share}% share starting "
          f"{','.join(args.start)} ({len(args.start_batch)} batch sizes) took {took:.1f} s")
    print(f"{'server':>6}" + "".join(f"{ph + ' p50':>15}{ph + ' p90':>15}" for ph in PHASES) + f"{'ratio':>8}")
    for r in rows:
        ratio = r["starting_p50"] / r["before_p50"]
        print(f"{r['server']:>6}" + "".join(f"{r[ph + '_p50']:>15.3f}{r[ph + '_p90']:>15.3f}" for ph in PHASES)
              + f"{ratio:>8.3f}")
    print("batch times in ms (launch to sync on the host); ratio = starting p50 / before p50")
    return 0


if __name__ == "__main__":
    run_main(main)
