"""How many infer requests per second does one ingress process serve, and at what CPU per request?

    PYTHONPATH=. python benchmarks/ingress_rate.py [--clients 2] [--connections 16] [--seconds 5] [--rounds 3]
                                                   [--ingress harness.live.ingress[,other.module]]

One ingress process (harness.live.ingress) runs in front of a fake
scheduler: a channel server in this process (harness.live.channel.serve)
that answers every ARRIVE row with DONE (ok) at once, so what is measured
is the ingress alone: HTTP in, a row to the scheduler, the answer out.
`--clients` processes drive it closed loop, each over `--connections`
keep-alive connections of the load generator's own client
(harness.load.http over gevent), one request in flight per connection. It
prints the requests per second and the ingress's CPU per request (user +
system time of its process, from psutil, over the measured window after a
warm-up).

`--ingress` names the module to run as the ingress (comma-separated: each
in turn, `--rounds` times, interleaved, so a busy machine slows them
alike); another implementation put on PYTHONPATH compares side by side.
Everything shares the machine's cores: on a small machine the clients cap
the rate, and CPU per request is the number to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _cli import Parser, above, run_main  # noqa: E402

WARMUP_S = 1.0


def client(url: str, connections: int, t0: float, t1: float) -> None:
    """One load process: `connections` greenlets, closed loop until t1; prints the answers within [t0, t1)."""
    import gevent

    from harness.live.protocol import infer_request
    from harness.load.http import Endpoint

    endpoint = Endpoint(url)
    requests = [endpoint.post("/v2/models/m0/infer", json.dumps(infer_request(i, value=i)).encode())
                for i in range(64)]
    counted = [0, 0]                                # answers in the window, errors

    def run(k: int) -> None:
        conn = endpoint.connect(10.0)
        i = k
        while True:
            code, _ = conn.exchange(requests[i % len(requests)])
            now = time.monotonic()              # CLOCK_MONOTONIC: the same clock in every process
            if now >= t1:
                break
            if now >= t0:
                counted[0] += 1
                counted[1] += code != 200
            i += 1
        conn.close()

    gevent.joinall([gevent.spawn(run, k) for k in range(connections)], raise_error=True)
    print(json.dumps({"answers": counted[0], "errors": counted[1]}), flush=True)


def config(path: Path) -> Path:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from harness.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["system=eager", "cluster=sleep1000", "cluster.count=2",
                                           "models=sleep10", "workload=poisson"])
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


async def measure(module: str, cfg: Path, address: str, out: Path, args) -> dict:
    import psutil

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    ingress = subprocess.Popen([sys.executable, "-m", module, "--config", str(cfg), "--epoch", repr(time.time()),
                                "--scheduler", address, "--host", "127.0.0.1", "--port", "0", "--out", str(out)],
                               stdout=subprocess.PIPE, env=env)
    try:
        line = await asyncio.get_running_loop().run_in_executor(None, ingress.stdout.readline)
        if not line:
            raise SystemExit(f"error: the ingress {module} exited before serving (exit {ingress.wait(10)}); "
                             "see its error above")
        port = json.loads(line)["port"]
        proc = psutil.Process(ingress.pid)
        t0 = time.monotonic() + 1.0 + WARMUP_S      # the clients' start, then the warm-up
        t1 = t0 + args.seconds
        clients = [await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--client", f"http://127.0.0.1:{port}", "--connections", str(args.connections),
            "--t0", repr(t0), "--t1", repr(t1), stdout=asyncio.subprocess.PIPE, env=env)
            for _ in range(args.clients)]
        await asyncio.sleep(t0 - time.monotonic())
        cpu0 = sum(proc.cpu_times()[:2])
        await asyncio.sleep(t1 - time.monotonic())
        cpu1 = sum(proc.cpu_times()[:2])
        said = [(await c.communicate())[0] for c in clients]
        if any(c.returncode for c in clients):
            raise SystemExit(f"error: a client failed (exit codes {[c.returncode for c in clients]}); see its error "
                             "above")
        counts = [json.loads(out) for out in said]
    finally:
        ingress.terminate()
        ingress.wait(10)
    answers = sum(c["answers"] for c in counts)
    if not answers:
        raise SystemExit(f"error: the ingress {module} answered no request in {args.seconds:g} s; it is broken, "
                         "not slow")
    return {"module": module, "rate": answers / args.seconds, "cpu_us": (cpu1 - cpu0) / max(answers, 1) * 1e6,
            "cpu_share": (cpu1 - cpu0) / args.seconds, "errors": sum(c["errors"] for c in counts)}


async def main_async(args) -> int:
    from harness.live import wire
    from harness.live.channel import remove_socket, serve

    def on_message(channel, msg) -> None:                    # the fake scheduler: every request served, at once
        if msg[0] == wire.ARRIVE:
            channel.send([wire.DONE, [[row[0], 0, 7, ""] for row in msg[1]]])
        else:
            channel.send([wire.ANSWER, msg[1], True])

    server, address = await serve("unix:", lambda channel: None, on_message)
    modules = args.ingress.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modules}
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; {args.clients} client processes x "
          f"{args.connections} connections, {args.seconds:g} s per run")
    print(f"{'ingress':>28} {'round':>5} {'req/s':>9} {'CPU us/req':>11} {'CPU cores':>10} {'errors':>7}")
    try:
        with tempfile.TemporaryDirectory(prefix="ingress-rate-") as tmp:
            cfg = config(Path(tmp) / "config.yaml")
            for r in range(args.rounds):
                for module in modules:
                    m = await measure(module, cfg, address, Path(tmp), args)
                    results[module].append(m)
                    print(f"{module:>28} {r + 1:>5} {m['rate']:9.0f} {m['cpu_us']:11.1f} {m['cpu_share']:10.2f} "
                          f"{m['errors']:7d}", flush=True)
    finally:
        server.close()
        remove_socket(address)
    print("median over rounds:")
    for module, runs in results.items():
        print(f"{module:>28} {statistics.median(m['rate'] for m in runs):9.0f} req/s "
              f"{statistics.median(m['cpu_us'] for m in runs):8.1f} us CPU/req")
    return 0


def main() -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--ingress", default="harness.live.ingress", help="module(s) to run as the ingress")
    ap.add_argument("--clients", type=above(0, int), default=2, help="load processes")
    ap.add_argument("--connections", type=above(0, int), default=16, help="connections per load process")
    ap.add_argument("--seconds", type=above(0), default=5.0, help="measured window per run")
    ap.add_argument("--rounds", type=above(0, int), default=3)
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--t1", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client(args.client, args.connections, args.t0, args.t1)
        return 0
    for module in args.ingress.split(","):
        try:
            found = importlib.util.find_spec(module)
        except ImportError:                       # (its package is missing)
            found = None
        if found is None:
            ap.error(f"--ingress: no module '{module}' here; give importable modules (on PYTHONPATH), "
                     "comma-separated")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    run_main(main)
