"""The live runtime, seen from the orchestrator: start the system under test, replay the load, collect.

    scheduler process (policy) + ingress processes (HTTP) + worker processes (slots)
        or real tritonserver (system=triton) in front of the same workers
          ^ KServe v2 HTTP
    Locust (one process, or a master and workers) replaying schedule.parquet open loop

The schedule starts a few seconds after the system under test is ready
(`runtime.start_lead_s`), so Locust is ready too; every record is in
seconds from that start. Whatever ends the run -- the last answer, Ctrl-C,
SIGTERM, the system under test dying, Locust failing -- the system under
test is stopped, writes what it measured, and the records are assembled
from what is on disk: a run that lost a process says so and is invalid,
and requests never sent are recorded as errors ("not sent").
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Column

from harness.core import DROPPED, ERROR, OK, REJECTED, TIMEOUT
from harness.errors import HarnessError
from harness.gpu.telemetry import NvmlSampler
from harness.load import ReplayAborted, default_workers, peak_rate, read_records, replay
from harness.records import LEDGER_TABLES, empty_gpus_frame, empty_tables
from harness.runtimes import Outcome


@contextmanager
def _progress(out_dir: Path, epoch_of: Callable[[], float | None], duration: float, slo: dict[str, float],
              window: tuple[float, float], every_s: float = 5.0, external: bool = False):
    """While the load runs, on stderr: schedule time elapsed, requests answered, and over the measurement
    `window` (start, end) so far drops, p99 latency, p99 send lag and goodput (a bar in a terminal, else a
    line every `every_s`). Read from the client records Locust flushes every 2 s (harness/load/locustfile.py);
    `external`: the clients are not ours, so only the time is shown."""
    start, end = window
    # Goodput counts the part of the window whose good answers are all in: those came within their SLO
    # and were flushed since (every 2 s).
    settle = 2.0 + max(slo.values())
    console = Console(stderr=True, highlight=False)
    bar = Progress(TextColumn(escape("[live]")), BarColumn(bar_width=16),
                   TextColumn("{task.completed:5.1f}/{task.total:g} s"),
                   TextColumn("{task.fields[status]}", table_column=Column(ratio=1, no_wrap=False)),   # wraps if narrow
                   console=console, expand=True) if console.is_terminal else None
    stop = threading.Event()

    def status(elapsed: float) -> str:
        if external:
            return "serving external clients (their requests are counted when the run ends)"
        done = read_records(out_dir / "client") if (out_dir / "client").exists() else None
        if done is None or not len(done):
            return "no answer yet"
        parts = [f"{len(done):,} answered"]
        w = done[(done["t_sched"] >= start) & (done["t_sched"] < end)]
        if not len(w):
            return f"{parts[0]}  (warm-up until {start:g} s)"
        latency = w["t_done"] - w["t_sched"]
        ok = w["status"] == OK
        drops = w["status"].isin([DROPPED, REJECTED]).mean()
        errors = w["status"].isin([ERROR, TIMEOUT]).mean()
        parts.append(f"[red]drops {drops:.1%}[/red]" if drops > 0.01 else f"drops {drops:.1%}")
        if errors:
            parts.append(f"[red]errors {errors:.1%}[/red]")
        if ok.any():
            parts.append(f"p99 {np.percentile(latency[ok], 99) * 1e3:,.1f} ms")
        parts.append(f"send lag p99 {np.percentile(w['t_sent'] - w['t_sched'], 99) * 1e3:.2f} ms")
        horizon = min(elapsed - settle, end)
        if horizon > start:
            settled = w["t_sched"] < horizon
            good = settled & ok & (latency <= w["model"].map(slo).astype(float))
            parts.append(f"goodput {good.sum() / (horizon - start):,.1f} req/s (window)")
        return "  ".join(parts)

    def report():
        line, next_read = "", 0.0
        while not stop.wait(every_s if bar is None else 0.5):
            epoch = epoch_of()
            now = time.time()
            if epoch is None or now < epoch:
                continue
            elapsed = min(now - epoch, duration)
            if now >= next_read:            # the records change only when Locust flushes them
                next_read = now + 2.0
                try:
                    line = status(elapsed)
                except Exception as exc:     # noqa: BLE001 - a progress line is not worth a run: say so, go on
                    line = escape(f"(progress unavailable: {exc})")
            if bar is not None:
                if not bar.live.is_started:
                    task = bar.add_task("", total=duration, status="")
                    bar.start()
                bar.update(task, completed=elapsed, status=line)
            elif elapsed >= settle or line not in ("no answer yet", ""):   # none could have been flushed before
                console.print(escape("[live]") + f" {elapsed:5.1f}/{duration:g} s  {line}", soft_wrap=True)

    thread = threading.Thread(target=report, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        if bar is not None:
            bar.stop()


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends a run the way Ctrl-C does: records written, processes stopped."""
    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_live(assembly, out_dir: Path, schedule: pd.DataFrame) -> Outcome:
    cfg = assembly.cfg
    rt = cfg.runtime
    # The system under test starts counting at `clock_zero`; the schedule starts at `epoch`, a few seconds
    # after it is ready (loading models on real GPUs takes a while); the server is told, so every record
    # is on the run clock (0 = epoch).
    clock_zero = time.time()
    epoch = None
    slo = {m: s.slo for m, s in assembly.models.items()} | {a: app.slo for a, app in assembly.apps.items()}
    timeout_s = max(30.0, 10 * max(slo.values()))
    client, interrupted, telemetry, failures, workers, ready = None, False, None, [], None, None
    started = time.perf_counter()
    window = (cfg.warmup_s, cfg.duration_s - cfg.cooldown_s)
    with _sigterm_as_interrupt(), _progress(out_dir, lambda: epoch, cfg.duration_s, slo, window,
                                            external=rt.load == "external"):
        try:
            if cfg.system.name == "triton":
                from harness.live.triton.system import serve_triton as serve
            else:
                serve = _serve_frontend
            with serve(assembly, out_dir, clock_zero) as server:
                ready = time.perf_counter() - started
                epoch = time.time() + rt.start_lead_s
                server.start(epoch)
                if rt.executor == "gpu":
                    telemetry = NvmlSampler(epoch=epoch, clock=time.time)
                    telemetry.start()
                if rt.load == "external":
                    failures += _serve_external(server, epoch, cfg.duration_s + rt.drain_s)
                else:
                    try:
                        workers = (rt.locust_workers if rt.locust_workers >= 0
                                   else default_workers(peak_rate=peak_rate(schedule["t_sched"].to_numpy())))
                        client = replay(out_dir / "schedule.parquet", server.url, epoch, out_dir / "client",
                                        workers=workers, timeout_s=timeout_s, abort=server.died,
                                        payload=rt.payload, seed=cfg.seeds.payload,
                                        avoid_cpus=_scheduler_cpus(server))
                    except ReplayAborted as exc:
                        failures.append(str(exc))
                        client = exc.records
                    except HarnessError as exc:       # Locust failed: what it flushed is still the run's
                        failures.append(f"the load generator failed: {exc}")
        except KeyboardInterrupt:
            interrupted = True
    wall = time.perf_counter() - started
    gpus = empty_gpus_frame()
    notes = ["gpus: emulated slots, no NVML telemetry"]
    if telemetry is not None:
        gpus = telemetry.stop()
        notes = [f"gpus: NVML sampled every {telemetry.interval_s} s" if telemetry.available
                 else f"gpus: no NVML telemetry ({telemetry.reason})"]
    if client is None:                              # interrupted or failed: what Locust flushed so far
        client = read_records(out_dir / "client") if (out_dir / "client").exists() else None
    server = _read_json(out_dir / "server.json")
    if not server:
        failures.append("the system under test wrote no records (server.json missing): its process died; "
                        "its batches and arrival times are lost")
    failures += server.get("failures", [])
    tables = _server_tables(out_dir)
    if rt.load == "external":
        notes.append("external load: no schedule was replayed; each request's latency counts from its "
                     "arrival at the server, and the client's own view is the client's")
        return Outcome(client=_server_view(out_dir), tables=tables, gpus=gpus, failures=failures,
                       interrupted=interrupted, wall_seconds=wall, ready_seconds=ready,
                       notes=notes + server.get("notes", []))
    if workers is not None:
        notes.append(f"load generator: {'one Locust process' if workers == 0 else f'{workers} Locust workers'}"
                     + ("" if rt.locust_workers >= 0 else " (sized to the host and the schedule's busiest second)"))
    return Outcome(client=_client_view(schedule, client, out_dir, interrupted or bool(failures)),
                   tables=tables, gpus=gpus, failures=failures, interrupted=interrupted, wall_seconds=wall,
                   ready_seconds=ready, notes=notes + server.get("notes", []))


@contextmanager
def _serve_frontend(assembly, out_dir: Path, clock_zero: float):
    """The scheduler and its ingresses and workers: yields an object with url, start(epoch) and died()."""
    from harness.live.server import start_server

    rt = assembly.cfg.runtime
    with start_server(out_dir / "config.yaml", clock_zero, out_dir, host=rt.host, port=rt.port,
                      ready_timeout_s=rt.worker_start_timeout_s + 30, stall_s=max(5.0, 2 * rt.worker_timeout_s)) as server:
        yield server


def _scheduler_cpus(server) -> list[int]:
    """The core the scheduler pinned itself to, for the load generator to stay off (none: not pinned, or
    a server that says nothing of it, as tritonserver's)."""
    core = getattr(server, "ready", {}).get("cpu")
    return [core] if isinstance(core, int) else []


def _serve_external(server, epoch: float, seconds: float) -> list[str]:
    """Serve whatever client comes for `seconds` from `epoch`; returns what went wrong (the server died)."""
    print(f"serving at {server.url} for {seconds:g} s from now + the start lead: point any KServe v2 / Triton "
          f"client at it (Ctrl-C ends the run early; the records are written either way)", file=sys.stderr,
          flush=True)
    while time.time() < epoch + seconds:
        died = server.died()
        if died:
            return [died]
        time.sleep(0.2)
    return []


def drop_copies(out_dir: Path) -> None:
    """Once a live run's records and summary are written, delete the files they repeat (about a third of
    the run's bytes): the server's copies of the ledger's tables (`server_batches.parquet` and the like,
    read into the outcome and written again unchanged as `batches.parquet` and the rest) and the client's
    shards (`client/client-*.parquet`, merged into `requests.parquet` with every column). Kept: the server's
    `server_requests.parquet` (arrival times, which only it has), the load generator's log, and all of a run
    cut short before its summary."""
    out_dir = Path(out_dir)
    for path in [*(out_dir / f"server_{name}.parquet" for name in LEDGER_TABLES),
                 *(out_dir / "client").glob("client-*.parquet")]:
        path.unlink(missing_ok=True)


def _no_records(columns: list[str]) -> pd.DataFrame:
    """An empty table of request records whose text columns hold text, so that marking its rows (an error
    for every request that has no record) works as it does on a full one."""
    text = {"model", "status", "reason"}
    return pd.DataFrame({c: pd.Series(dtype=object if c in text else float) for c in columns})


def _server_view(out_dir: Path) -> pd.DataFrame:
    """With an external client the server's records are all there is: sent = arrived, latency from arrival."""
    path = out_dir / "server_requests.parquet"
    if not path.exists():
        return _no_records(["id", "model", "t_sched", "t_sent", "t_done", "status", "reason", "batch_id", "t_arrival"])
    server = pd.read_parquet(path).drop(columns=["t_scheduler"], errors="ignore")
    return server.assign(t_sched=server["t_arrival"], t_sent=server["t_arrival"])


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _server_tables(out_dir: Path) -> dict[str, pd.DataFrame]:
    tables = empty_tables()
    for name in LEDGER_TABLES:
        path = out_dir / f"server_{name}.parquet"
        if path.exists():
            tables[name] = pd.read_parquet(path)
    return tables


def _client_view(schedule: pd.DataFrame, client: pd.DataFrame | None, out_dir: Path,
                 cut_short: bool) -> pd.DataFrame:
    """The client's records for every scheduled request, with the server's arrival time added."""
    columns = ["id", "model", "t_sched", "t_sent", "t_done", "status", "reason", "batch_id"]
    if client is None or client.empty:
        client = _no_records(columns)
    view = schedule[["id", "model", "t_sched"]].merge(client.drop(columns=["model", "t_sched"], errors="ignore"),
                                                      on="id", how="left")
    unsent = view["status"].isna()
    view.loc[unsent, "status"] = ERROR
    view.loc[unsent, "reason"] = "not sent (run ended first)" if cut_short else "no record of it from the client"
    view["batch_id"] = view["batch_id"].fillna(-1).astype(np.int64)
    arrivals = out_dir / "server_requests.parquet"
    if arrivals.exists():
        server = pd.read_parquet(arrivals, columns=["id", "t_arrival", "batch_id"])
        view = view.merge(server.rename(columns={"batch_id": "server_batch"}), on="id", how="left")
        # An answer that is not ok names no batch; the server knows which batch failed or dropped it.
        view["batch_id"] = view["batch_id"].where(view["batch_id"] >= 0, view["server_batch"].fillna(-1))
        view = view.drop(columns="server_batch").astype({"batch_id": np.int64})
    else:                                           # Triton does not report arrivals: the send time stands in
        view["t_arrival"] = view["t_sent"]
    return view
