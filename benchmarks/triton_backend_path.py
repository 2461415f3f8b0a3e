"""What forwarding a Triton batch costs the harness: tritonserver's execution time less forward's.

    python benchmarks/triton_backend_path.py [--requests 300] [--clients 1] [--instances 1] [--forward-ms 1]

The live `system=triton` hands each batch from tritonserver's Python backend
stub to the harness over a unix socket (the model every instance runs sends
the batch size and reads back a batch id; one thread per instance on the
harness's side calls forward). This starts the harness's tritonserver (one
model, dynamic batching, `--instances` instances) with a forward that sleeps
`--forward-ms`; `--clients` threads send requests back to back. Printed: the
client's round-trip p50, Triton's mean execution time per request
(compute_infer), forward's mean time, and the path between them
(execution - forward): what the forwarding itself costs a batch.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# This directory, for _cli (which puts the project on sys.path), also where a test loads this file by its path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import Parser, at_least, run_main  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.live import triton  # noqa: E402
from harness.live.protocol import infer_request  # noqa: E402


class Forward:
    """forward(model, size[, instance]) -> batch id: sleeps the given time and records it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.times: list[float] = []

    def __call__(self, model: str, size: int, instance: int | None = None) -> int:
        t = time.perf_counter()
        time.sleep(self.seconds)
        with self.lock:
            self.times.append(time.perf_counter() - t)
            return len(self.times)


def drive(url: str, requests: int, clients: int) -> list[float]:
    body = json.dumps(infer_request(1)).encode()

    def one(_) -> float:
        t = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(f"{url}/v2/models/m/infer", data=body), timeout=30) as a:
            a.read()
        return time.perf_counter() - t

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(20 * clients)))            # warm-up
        return list(pool.map(one, range(requests)))


def infer_ms(server) -> tuple[int, float]:
    """Requests Triton has served and the time its backend held them, in total (ms)."""
    got = server.statistics()["m"]
    return got["requests"], got["requests"] * got["compute_infer_ms"]


def measure(server, forward: Forward, args) -> dict:
    n0, ms0 = infer_ms(server)
    forward.times.clear()
    rtt = sorted(drive(server.url, args.requests, args.clients))
    n1, ms1 = infer_ms(server)
    infer = (ms1 - ms0) / (n1 - n0)
    fwd = 1e3 * sum(forward.times) / len(forward.times)
    return {"rtt p50 ms": 1e3 * rtt[len(rtt) // 2], "infer ms": infer, "forward ms": fwd, "path ms": infer - fwd,
            "mean batch": (n1 - n0) / len(forward.times)}


def with_harness(forward: Forward, args) -> dict:
    with triton.start_triton({"m": {"max_batch_size": 8}}, {}, forward, instances=args.instances) as server:
        return measure(server, forward, args)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=at_least(1), default=300, help="requests measured (after a warm-up)")
    ap.add_argument("--clients", type=at_least(1), default=1, help="threads sending requests back to back")
    ap.add_argument("--instances", type=at_least(1), default=1, help="model instances")
    ap.add_argument("--forward-ms", type=at_least(0, float), default=1.0, help="what forward sleeps per batch")
    args = ap.parse_args(argv)
    try:
        if triton.stub_env_needed():
            triton.setup_stub_env()
        rows = {"harness": with_harness(Forward(args.forward_ms / 1e3), args)}
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.requests} requests, {args.clients} client(s), {args.instances} instance(s), "
          f"forward {args.forward_ms:g} ms")
    print(f"{'backend':16s}" + "".join(f"{k:>13s}" for k in next(iter(rows.values()))))
    for name, row in rows.items():
        print(f"{name:16s}" + "".join(f"{v:13.3f}" for v in row.values()))
    return 0


if __name__ == "__main__":
    run_main(main)
