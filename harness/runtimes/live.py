"""The live runtime, seen from the orchestrator: start the system under test, replay the load, collect.

    frontend process (policy + worker processes)  or  real tritonserver (system=triton)
          ^ KServe v2 HTTP
    Locust (one process, or a master and workers) replaying schedule.parquet open loop

The schedule starts a few seconds after the system under test is ready
(`runtime.start_lead_s`), so Locust is ready too; every record is in
seconds from that start. Whatever ends the
run -- the last answer, Ctrl-C, SIGTERM, a lost worker -- the system under
test is stopped, writes what it measured, and the records are assembled;
requests never sent are recorded as errors ("not sent").
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

from harness.core import ERROR
from harness.gpu.telemetry import NvmlSampler
from harness.records import BATCH_COLUMNS, empty_gpus_frame
from harness.load import read_records, replay
from harness.live.server import start_frontend
from harness.runtimes import Outcome


@contextmanager
def _progress(out_dir: Path, epoch_of: Callable[[], float | None], duration: float, slo: dict[str, float],
              every_s: float = 5.0):
    """Every few seconds on stderr: schedule time elapsed, requests answered, goodput so far (Locust's flushes)."""
    stop = threading.Event()

    def report():
        while not stop.wait(every_s):
            epoch = epoch_of()
            if epoch is None or time.time() < epoch:
                continue
            elapsed = min(time.time() - epoch, duration)
            try:
                done = read_records(out_dir / "client") if (out_dir / "client").exists() else None
                answered = 0 if done is None else len(done)
                good = 0 if done is None else int((
                    (done["status"] == "ok")
                    & (done["t_done"] - done["t_sched"] <= done["model"].map(slo).astype(float))).sum())
            except Exception as exc:     # noqa: BLE001 - a progress line is not worth a run: say so, go on
                print(f"[live] {elapsed:5.1f}/{duration:g} s  (progress unavailable: {exc})", file=sys.stderr)
                continue
            print(f"[live] {elapsed:5.1f}/{duration:g} s  {answered} answered  "
                  f"goodput {good / max(elapsed, 1e-9):,.1f} req/s", file=sys.stderr, flush=True)

    thread = threading.Thread(target=report, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


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


def run_live(cfg, out_dir: Path, schedule: pd.DataFrame, n_slots: int) -> Outcome:
    rt = cfg.runtime
    # The system under test keeps time from `clock_zero`; the schedule starts at `epoch`, a few seconds
    # after it is ready (loading models on real GPUs takes a while). Server times are shifted to `epoch`.
    clock_zero = time.time()
    epoch = None
    timeout_s = max(30.0, 10 * max(m.slo_ms for m in cfg.models.values()) / 1000)
    client, interrupted, telemetry = None, False, None
    started = time.perf_counter()
    slo = {m: spec.slo_ms / 1000 for m, spec in cfg.models.items()}
    with _sigterm_as_interrupt(), _progress(out_dir, lambda: epoch, cfg.duration_s, slo):
        try:
            if cfg.system.name == "triton":
                from harness.live.triton_system import serve_triton as serve
            else:
                serve = _serve_frontend
            with serve(cfg, out_dir, clock_zero) as url:
                epoch = time.time() + rt.start_lead_s
                if rt.executor == "gpu":
                    telemetry = NvmlSampler(epoch=epoch, clock=time.time)
                    telemetry.start()
                client = replay(out_dir / "schedule.parquet", url, epoch, out_dir / "client",
                                workers=rt.locust_workers, timeout_s=timeout_s)
        except KeyboardInterrupt:
            interrupted = True
    wall = time.perf_counter() - started
    gpus = empty_gpus_frame()
    notes = ["gpus: emulated slots, no NVML telemetry"]
    if telemetry is not None:
        gpus = telemetry.stop()
        notes = [f"gpus: NVML sampled every {telemetry.interval_s} s" if telemetry.available
                 else f"gpus: no NVML telemetry ({telemetry.reason})"]
    if client is None:                              # interrupted: what Locust flushed so far
        client = read_records(out_dir / "client") if (out_dir / "client").exists() else None
    shift = (epoch if epoch is not None else clock_zero) - clock_zero
    server = json.loads((out_dir / "server.json").read_text()) if (out_dir / "server.json").exists() else {}
    batches = pd.read_parquet(out_dir / "batches.parquet") if (out_dir / "batches.parquet").exists() else None
    if batches is None:
        batches = pd.DataFrame({c: pd.Series(dtype=float) for c in BATCH_COLUMNS})
    batches[["t_dispatch", "t_start", "t_end"]] -= shift
    return Outcome(client=_client_view(schedule, client, out_dir, shift), batches=batches,
                   timeline=pd.DataFrame([(0.0, n_slots)], columns=["t", "slots"]),
                   lost_slots=sorted(int(x["slot"]) for x in server.get("lost_slots", [])),
                   failures=server.get("failures", []),
                   gpus=gpus, interrupted=interrupted, wall_seconds=wall, notes=notes + server.get("notes", []))


@contextmanager
def _serve_frontend(cfg, out_dir: Path, epoch: float):
    with start_frontend(out_dir / "config.yaml", epoch, out_dir, host=cfg.runtime.host,
                        ready_timeout_s=cfg.runtime.worker_start_timeout_s + 30) as frontend:
        yield frontend.url


def _client_view(schedule: pd.DataFrame, client: pd.DataFrame | None, out_dir: Path, shift: float) -> pd.DataFrame:
    """The client's records for every scheduled request, with the server's arrival time added."""
    columns = ["id", "model", "t_sched", "t_sent", "t_done", "status", "reason", "batch_id"]
    if client is None or client.empty:
        client = pd.DataFrame({c: pd.Series(dtype=float) for c in columns})
    view = schedule[["id", "model", "t_sched"]].merge(client.drop(columns=["model", "t_sched"], errors="ignore"),
                                                      on="id", how="left")
    unsent = view["status"].isna()
    view.loc[unsent, "status"] = ERROR
    view.loc[unsent, "reason"] = "not sent (run ended first)"
    view["batch_id"] = view["batch_id"].fillna(-1).astype(np.int64)
    arrivals = out_dir / "server_requests.parquet"
    if arrivals.exists():
        server = pd.read_parquet(arrivals, columns=["id", "t_arrival"]).drop_duplicates("id")
        view = view.merge(server.assign(t_arrival=server["t_arrival"] - shift), on="id", how="left")
    else:                                           # Triton does not report arrivals: the send time stands in
        view["t_arrival"] = view["t_sent"]
    return view
