"""Triton's own load generator against ours: perf_analyzer and our Locust replay, one server, same load.

For each system, each repeat starts one server (`runtime.load=external`,
serving whoever comes) and drives it three times in turn: our Locust replay
of a Poisson schedule of one model, Triton's perf_analyzer in request-rate
mode (Poisson, the same rate), and perf_analyzer with `--request-intervals`
written from that schedule. Both clients meet the same server process, so a
server that comes up slower or faster than the last one (its median moved
by up to 12% between processes on one host) moves both clients' figures
alike and not their ratio. The order of the three turns rotates from one
repeat to the next (repeat r starts with turn r mod 3), so that over three
repeats each client meets a fresh server first once: a server's first
minute is not its tenth. It prints throughput and latency percentiles side
by side, with each perf_analyzer figure over ours (the latencies from each
client's send), and beside them the server's own p50 and p99 of each
client's share of the run (arrival to completion, as the scheduler saw
them): where the clients differ and the server agrees, the difference is in
the clients. The clients start their clocks at different
points: perf_analyzer before it builds and sends each request (its "Client
Send", which it reports as a mean), ours once the request, built already,
starts on the wire. The "from the wire" ratios take perf_analyzer's mean
client send off its percentiles, so that both count the same span.
perf_analyzer (PyPI perf-analyzer) needs glibc >= 2.38.

perf_analyzer stops at the first answer that is not 200, so each system
runs with the settings under which it serves the load with no drop
(PER_SYSTEM; an override on the command line wins); a repeat that meets a
drop anyway is reported and left out, and the next repeat goes on. Each
system's rows are kept in <out>/<system>-comparison.json after each whole
repeat, and a system is measured again only for the repeats it lacks: a
call cut short, or a repeat that failed, goes on from where it stopped.
Measure one system at a time (the default): systems side by side on one
host slow each other's servers (their p50 moved by up to 22% between the
two clients' runs), and the clients' figures with them.

With `--repeats R` each system is measured R times, and the agreement
table gives each ratio's mean over the repeats with its 95% confidence
interval, judged within 5% on throughput and on p50 and p99 from the wire:
one run's p99 of a few ms moved by more than 5% between runs of the same
client on one host.

    python benchmarks/perf_analyzer.py --systems eager,symphony --rate 1000 --seconds 20 --out pa-results \
        [--repeats 3] [--jobs 3] [--perf-analyzer perf_analyzer] [--pa-arg=--async] [any harness override]

Harness overrides go to the server; `runtime.locust_workers=N` sizes our
client as well (by default sized to the host and the rate, as runs are).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
# This directory, for _cli (which puts the project on sys.path), also where a test loads this file by its path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import Parser, above, at_least, run_main, system_names  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.load import default_workers, replay  # noqa: E402
from harness.report.analysis import mean_ci  # noqa: E402

MODEL = "resnet50"
LEAD_S, TAIL_S = 2.0, 1.0  # our schedule's unmeasured lead-in and tail around the measured window
# What each system needs to serve 500 req/s with no drop under both clients (measured on the H200 host):
# Symphony plans each batch at its deadline's edge, and a 0.1 ms timer slack (its default) dropped 2 of
# 9,162 requests under perf_analyzer; eager's drop_late answered one request of about 25,000 "dropped:
# late" under perf_analyzer, so here it serves late heads late; Triton's p99 swings between 8 s windows
# (9-38 ms), so perf_analyzer stops only with a 50% stability rule.
TARGET = 0.05            # perf_analyzer's figures over ours must be within this of 1
JUDGED = {"throughput": "PA/ours throughput", "p50 wire": "PA/ours p50 from the wire",
          "p99 wire": "PA/ours p99 from the wire"}
# Shown beside them, not judged: the server's own p99 of perf_analyzer's share over ours. Near 1 where the
# clients' p99s differ, the difference is in the clients; moving with them, the server served them differently.
SHOWN = {"server p99": "PA/ours server p99"}
PER_SYSTEM = {"eager": {"overrides": ["system.drop_late=false"]},
              "symphony": {"overrides": ["system.timer_slack_us=1000"]}, "triton": {"stability": 50}}


class Refused(RuntimeError):
    """perf_analyzer met an answer that is not 200 (a drop): this repeat is lost, not the system's next one."""


TURNS = ("ours", "rate", "intervals")


def turns(repeat: int) -> tuple[str, ...]:
    """The order in which repeat `repeat` drives its server: TURNS rotated by the repeat's number."""
    k = repeat % len(TURNS)
    return TURNS[k:] + TURNS[:k]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def harness(*overrides: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", *overrides], cwd=ROOT, **popen)


def poisson_schedule(rate: float, seconds: float, seed: int) -> pd.DataFrame:
    """Our client's schedule: Poisson arrivals of MODEL over a lead-in, `seconds` measured, and a tail."""
    span = LEAD_S + seconds + TAIL_S
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, int(rate * span * 1.2) + 100))
    t = t[t < span]
    return pd.DataFrame({"id": np.arange(len(t), dtype=np.int64), "model": MODEL, "t_sched": t})


def client_workers(extra: list[str], rate: float) -> int:
    """Locust workers for our client: `runtime.locust_workers=N` among the overrides, else as a run sizes them."""
    given = [o.split("=", 1)[1] for o in extra if o.startswith("runtime.locust_workers=")]
    if given and int(given[-1]) >= 0:
        return int(given[-1])
    return default_workers(peak_rate=rate)


@contextmanager
def serving(system: str, run: Path, overrides: list[str]):
    """One server of `system` for external clients, its records in `run` once it ends; yields its URL."""
    port = free_port()
    log = run.with_name(run.name + ".log").open("w")
    server = harness(f"system={system}", "models=resnet50", "runtime.load=external", f"runtime.port={port}",
                     "duration_s=3600", "warmup_s=1", "cooldown_s=1", "validity.min_duration_s=0",
                     f"hydra.run.dir={run}", *overrides, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, run)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.send_signal(signal.SIGINT)             # the run ends and writes the server's records
        try:
            server.wait(120)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def wait_ready(url: str, server: subprocess.Popen, run: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) before it was ready; see {run}.log")
        try:
            with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} never became ready")


def ours(url: str, schedule: pd.DataFrame, seconds: float, out: Path, workers: int) -> dict:
    """Our Locust replay of `schedule` against `url`: throughput and percentiles (ms, from the send) of the
    requests scheduled in the measured window."""
    path = out.with_name(out.name + "-schedule.parquet")
    schedule.to_parquet(path, index=False)
    epoch = time.time() + (2.0 if workers == 0 else 5.0)       # Locust's start, and its workers' joining
    try:
        client = replay(path, url, epoch, out, workers=workers)
    except HarnessError as exc:
        raise RuntimeError(f"our replay failed: {exc}") from exc
    window = client[(client["t_sched"] >= LEAD_S) & (client["t_sched"] < LEAD_S + seconds)]
    ok = window[window["status"] == "ok"]
    if ok.empty:
        counts = ", ".join(f"{k} {v}" for k, v in window["status"].value_counts().items()) or "none"
        raise RuntimeError(f"our replay had no request served in its window (statuses: {counts}); see {out}")
    from_send = (ok["t_done"] - ok["t_sent"]) * 1e3
    return {"throughput": len(ok) / seconds, **{f"p{q}": float(np.percentile(from_send, q)) for q in (50, 90, 99)}}


def theirs(url: str, mode: str, rate: float, intervals: np.ndarray, out: Path, tool: str, window_ms: int,
           stability: int, pa_args: list[str]) -> dict:
    """One perf_analyzer run against `url`; its report is <out>.csv and its output <out>.log."""
    report = out.with_suffix(".csv")
    host = url.split("//", 1)[1]
    cmd = [tool, "-m", MODEL, "-u", host, "-i", "http", "-b", "1", "--percentile", "99",
           "--measurement-interval", str(window_ms), "--max-trials", "10", "--stability-percentage", str(stability),
           "-f", str(report),
           "--max-threads", "64",   # synchronous calls: enough threads for rate x latency in flight
           *pa_args]
    if mode == "rate":
        cmd += ["--request-rate-range", f"{rate:g}", "--request-distribution", "poisson"]
    else:
        path = out.with_suffix(".txt")
        path.write_text("\n".join(str(max(1, int(v))) for v in intervals) + "\n")
        cmd += ["--request-intervals", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out.with_suffix(".log").write_text(done.stdout + done.stderr)
    if done.returncode != 0 or not report.exists():
        # perf_analyzer stops at the first request that is not answered 200 and says so per client thread.
        said = (done.stdout + done.stderr).splitlines()
        refused = sorted({line.split("had error:", 1)[1].strip() for line in said if "had error:" in line})
        if refused:
            raise Refused(f"perf_analyzer ({mode}) stopped: the server answered {'; '.join(refused)[:300]} "
                               "(perf_analyzer counts any answer but 200 as an error: use a --rate this system "
                               "serves with no drops)")
        raise RuntimeError(f"perf_analyzer ({mode}) failed: {(done.stdout + done.stderr).strip()[-500:]}")
    row = next(csv.DictReader(report.open()))
    return {"throughput": float(row["Inferences/Second"]),
            **{f"p{q}": float(row[f"p{q} latency"]) / 1000 for q in (50, 90, 99)},
            "client send": float(row["Client Send"]) / 1000}


def client_shares(run: Path, clients: int) -> list[pd.DataFrame] | None:
    """The server's records of each of its `clients` runs in turn (arrival, completion, status): its arrivals
    split at their `clients - 1` widest gaps (between two clients' runs the server waits for a process to
    start; within one, at a few hundred requests per second, gaps are ms). None where the system's server
    reports no arrivals (Triton)."""
    path = run / "server_requests.parquet"
    if not path.exists():
        return None
    seen = pd.read_parquet(path, columns=["t_arrival", "t_done", "status"]).sort_values("t_arrival", kind="stable")
    if len(seen) < clients:
        return None
    cuts = np.sort(np.argsort(np.diff(seen["t_arrival"].to_numpy()))[len(seen) - clients:] + 1)
    return [seen.iloc[lo:hi] for lo, hi in zip([0, *cuts], [*cuts, len(seen)])]


def server_latencies(run: Path, clients: int) -> list[dict]:
    """The server's p50 and p99 latency (ms, arrival at an ingress to completion, requests served) of each
    client's run, as {"server p50": ..., "server p99": ...} (NaN where it has none)."""
    nothing = {f"server p{q}": float("nan") for q in (50, 99)}
    shares = client_shares(run, clients)
    if shares is None:
        return [dict(nothing) for _ in range(clients)]
    ok = [share[share["status"] == "ok"] for share in shares]
    return [{f"server p{q}": float(np.percentile((o["t_done"] - o["t_arrival"]) * 1e3, q)) for q in (50, 99)}
            if len(o) else dict(nothing) for o in ok]


def row(system: str, mode: str, repeat: int, base: dict, pa: dict) -> dict:
    """One comparison: both clients' figures and perf_analyzer's over ours (from the wire: less its client send)."""
    return {"system": system, "perf_analyzer mode": mode, "repeat": repeat,
            **{f"ours {k}": base[k] for k in ("throughput", "p50", "p90", "p99")},
            **{f"PA {k}": pa[k] for k in ("throughput", "p50", "p90", "p99")},
            **{f"PA/ours {k}": pa[k] / base[k] for k in ("throughput", "p50", "p99")},
            "PA client send": pa["client send"],
            **{f"PA/ours {k} from the wire": (pa[k] - pa["client send"]) / base[k] for k in ("p50", "p99")},
            **{f"{who} server p{q}": figures[f"server p{q}"] for who, figures in (("ours", base), ("PA", pa))
               for q in (50, 99)},
            "PA/ours server p99": pa["server p99"] / base["server p99"]}


def agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per system and mode, over repeats: the mean of each ratio that is judged, its 95% CI half-width (NaN with
    one repeat), and whether every mean is within TARGET of 1. One run's p99 near 3 ms moved by more than 5%
    between runs of either client on one host, so a judgement of tails wants several repeats."""
    if "repeat" not in table:
        table = table.assign(repeat=0)                    # rows kept before repeats existed
    out = []
    for (system, mode), g in table.groupby(["system", "perf_analyzer mode"], sort=False):
        r = {"system": system, "mode": mode, "repeats": g["repeat"].nunique()}
        within = True
        for name, column in JUDGED.items():
            mean, ci = mean_ci(g[column])
            r[name], r[f"{name} +-"] = mean, ci
            within = within and abs(mean - 1) <= TARGET
        for name, column in SHOWN.items():
            r[name] = g[column].mean() if column in g else float("nan")     # rows kept before it was measured
        r[f"within {TARGET:.0%}"] = "yes" if within else "no"
        out.append(r)
    return pd.DataFrame(out)


def main() -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", type=system_names, default="eager,symphony,nexus,clockwork,shepherd,triton")
    ap.add_argument("--rate", type=above(0), default=500.0, help="offered load, req/s (> 0)")
    ap.add_argument("--seconds", type=above(0), default=20.0, help="our replay's measured window, s (> 0)")
    ap.add_argument("--out", type=Path, default=Path("perf-analyzer-results"))
    ap.add_argument("--perf-analyzer", default="perf_analyzer")
    ap.add_argument("--jobs", type=at_least(1), default=1,
                    help="systems measured at once (each its own server; they slow each other's servers)")
    ap.add_argument("--window-ms", type=at_least(1), default=8000,
                    help="perf_analyzer's measurement window; it stops at 3 windows within --stability of each other "
                         "(4 s windows never settled for clockwork, whose p99 swings between them)")
    ap.add_argument("--stability", type=at_least(1), default=None,
                    help="perf_analyzer's --stability-percentage: how far (%%) its 3 last windows' throughput and p99 "
                         "may differ for it to stop (default 20, triton 50: a server whose p99 swings between "
                         "windows needs more)")
    ap.add_argument("--repeats", type=at_least(1), default=1,
                    help="Locust replays and perf_analyzer runs per system, alternated; the agreement table gives "
                         "the mean ratio over them with its 95%% CI (tails vary between runs: use 3 or more)")
    ap.add_argument("--pa-arg", action="append", default=[], metavar="ARG",
                    help="one more perf_analyzer argument (repeat for several), e.g. --pa-arg=--async")
    args, extra = ap.parse_known_args()
    tool = shutil.which(args.perf_analyzer) or args.perf_analyzer
    if not os.path.exists(tool):
        print(f"error: perf_analyzer not found ({args.perf_analyzer}); pip install perf-analyzer (glibc >= 2.38)",
              file=sys.stderr)
        return 2
    try:
        workers = client_workers(extra, args.rate)
    except ValueError:
        print("error: runtime.locust_workers must be a whole number (-1: sized to the host and the rate)",
              file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    def compare(system: str) -> list[dict]:
        # Rows are kept after each whole repeat (a Locust replay and both perf_analyzer runs): a call cut short,
        # or a repeat that fails, loses only the repeat under way, and a later call goes on from the first
        # repeat missing.
        kept = args.out / f"{system}-comparison.json"
        rows = json.loads(kept.read_text()) if kept.exists() else []
        done = {r.get("repeat", 0) for r in rows}
        if len(done) >= args.repeats:
            print(f"{system}: measured already ({kept})", flush=True)
            return rows
        own = PER_SYSTEM.get(system, {})
        overrides = own.get("overrides", []) + extra
        stability = args.stability or own.get("stability", 20)
        for repeat in (k for k in range(args.repeats) if k not in done):
            # One server per repeat, driven by our replay and both perf_analyzer runs in this repeat's order.
            tag = f"-r{repeat}" if args.repeats > 1 else ""
            for stale in args.out.glob(f"{system}{tag}-*"):      # a run of it cut short: set aside, never reused
                if stale.is_dir() and not stale.name.endswith(".stale"):
                    stale.rename(stale.with_name(f"{stale.name}.{time.strftime('%Y%m%d-%H%M%S')}.stale"))
            schedule = poisson_schedule(args.rate, args.seconds, seed=repeat)
            intervals = np.diff(schedule["t_sched"].to_numpy()) * 1e6
            run = args.out / f"{system}{tag}-server"
            order = turns(repeat)
            figures: dict[str, dict] = {}
            try:
                with serving(system, run, overrides) as url:
                    for turn in order:        # one client after the other, in this repeat's order
                        figures[turn] = (ours(url, schedule, args.seconds, args.out / f"{system}{tag}-locust",
                                              workers) if turn == "ours" else
                                         theirs(url, turn, args.rate, intervals, args.out / f"{system}{tag}-{turn}",
                                                tool, args.window_ms, stability, args.pa_arg))
            except Refused as exc:
                print(f"{system}, repeat {repeat}: {exc}; this repeat is left out", flush=True)
                continue
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{system}, repeat {repeat}: {exc}", flush=True)
                break
            for turn, latencies in zip(order, server_latencies(run, len(order))):
                figures[turn].update(latencies)
            base = figures["ours"]
            pas = {mode: figures[mode] for mode in ("rate", "intervals")}
            measured = [{**row(system, mode, repeat, base, pas[mode]), "turns": " ".join(order)}
                        for mode in ("rate", "intervals")]
            for r in measured:
                print(json.dumps(r), flush=True)
            rows += measured
            kept.write_text(json.dumps(rows, indent=1) + "\n")
        return rows

    # Systems side by side (--jobs): each has its own server, ports and clients, but they share the host's
    # cores, and a busy neighbour slows a server between its two clients' runs.
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [row for found in pool.map(compare, args.systems) for row in found]
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "comparison.csv", index=False)
    print(f"\noffered {args.rate:g} req/s of {MODEL}; latencies in ms from each client's send")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not table.empty:
        judged = agreement(table)
        judged.to_csv(args.out / "agreement.csv", index=False)
        print(f"\nperf_analyzer over ours, mean over repeats (+- the 95% CI's half-width); within {TARGET:.0%}: the mean "
              "of throughput and of p50 and p99 from the wire")
        print(judged.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    run_main(main)
