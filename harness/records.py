"""Per-run records: the tables every runtime writes and every report reads.

The contract, one Parquet file each in the run directory (times in seconds
on the run's clock: 0 is the schedule's start; one clock per file):

- requests: id, model (or app), t_sched, t_sent, t_done, status, reason,
  latency, slo, slot, device, batch_id, queue_time, exec_time (latency from
  t_sched; slot, device and the split from the serving batch)
- batches:  id, slot, device, share, partition, model, size, t_dispatch,
  t_start, t_end, status, stage, through (the model's stages it ran, the
  first and the last: a chain runs several; -1: the whole model; records
  written before chains have no `through`, which was then `stage`)
- tasks:    request_id, node, model, t_ready, deadline, t_done, status,
  reason, batch_id, slot  (the tasks of app requests; a plain request is
  its own task and has no row here)
- slots:    slot, name, gpu_type, partition, device, share, models
- slot_events: t, slot, event (starting, joined, left, lost, cancelled), reason
- reconfigurations: t_request, t_done, cost_s, before, after, left, joining
- gpus:     t, gpu, util, mem_used, power, sm_clock  (NVML; empty when emulated)

and summary.json (metrics, validity, provenance, `schema_version`). Files are
written atomically (a temporary file, then a rename), so a crash never
leaves a half-written table, and readable by the group (the umask decides,
as for any file the user creates). summary.json is strict JSON: a value
that is not a number (nan, inf) is written as null.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from harness.core import Batch, Slot, Task

SCHEMA_VERSION = 2
REQUEST_COLUMNS = ["id", "model", "t_sched", "t_sent", "t_done", "status", "reason", "latency", "slo",
                   "slot", "device", "batch_id", "queue_time", "exec_time"]
BATCH_COLUMNS = ["id", "slot", "device", "share", "partition", "model", "size", "t_dispatch", "t_start", "t_end",
                 "status", "stage", "through"]
TASK_COLUMNS = ["request_id", "node", "model", "t_ready", "deadline", "t_done", "status", "reason", "batch_id",
                "slot"]
SLOT_COLUMNS = ["slot", "name", "gpu_type", "partition", "device", "share", "models"]
SLOT_EVENT_COLUMNS = ["t", "slot", "event", "reason"]
RECONFIGURATION_COLUMNS = ["t_request", "t_done", "cost_s", "before", "after", "left", "joining"]
GPU_COLUMNS = ["t", "gpu", "util", "mem_used", "power", "sm_clock"]
LEDGER_TABLES = ("batches", "tasks", "slots", "slot_events", "reconfigurations")


def batches_frame(batches: Sequence[Batch], slots: Sequence[Slot]) -> pd.DataFrame:
    n = len(batches)
    slot = np.fromiter((b.slot for b in batches), np.int64, n)
    device = np.array([s.device for s in slots], np.int64)
    share = np.array([s.share for s in slots], float)
    partition = np.array([s.partition for s in slots], dtype=object)
    return pd.DataFrame({
        "id": np.fromiter((b.id for b in batches), np.int64, n),
        "slot": slot,
        "device": device[slot] if n else np.zeros(0, np.int64),
        "share": share[slot] if n else np.zeros(0),
        "partition": partition[slot] if n else np.zeros(0, dtype=object),
        "model": [b.model for b in batches],
        "size": np.fromiter((b.size for b in batches), np.int64, n),
        "t_dispatch": np.fromiter((b.t_dispatch for b in batches), float, n),
        "t_start": np.fromiter((b.t_start for b in batches), float, n),
        "t_end": np.fromiter((b.t_end for b in batches), float, n),
        "status": [b.status for b in batches],
        "stage": np.fromiter((-1 if b.stage is None else b.stage for b in batches), np.int64, n),
        "through": np.fromiter((-1 if b.stage is None else b.through for b in batches), np.int64, n),
    }, columns=BATCH_COLUMNS)


def tasks_frame(tasks: Sequence[Task], batches: pd.DataFrame) -> pd.DataFrame:
    n = len(tasks)
    batch_id = np.fromiter((t.batch_id for t in tasks), np.int64, n)
    slot_of = batches.set_index("id")["slot"] if len(batches) else pd.Series(dtype=np.int64)
    return pd.DataFrame({
        "request_id": np.fromiter((t.id for t in tasks), np.int64, n),
        "node": np.fromiter((t.node for t in tasks), np.int64, n),
        "model": [t.model for t in tasks],
        "t_ready": np.fromiter((t.t_arrival for t in tasks), float, n),
        "deadline": np.fromiter((t.deadline for t in tasks), float, n),
        "t_done": np.fromiter((t.t_done for t in tasks), float, n),
        "status": [t.status for t in tasks],
        "reason": [t.reason for t in tasks],
        "batch_id": batch_id,
        "slot": pd.Series(batch_id).map(slot_of).fillna(-1).astype(np.int64).to_numpy(),
    }, columns=TASK_COLUMNS)


def slots_frame(slots: Sequence[Slot]) -> pd.DataFrame:
    return pd.DataFrame({
        "slot": np.array([s.index for s in slots], np.int64),
        "name": [s.name for s in slots],
        "gpu_type": [s.gpu_type for s in slots],
        "partition": [s.partition for s in slots],
        "device": np.array([s.device for s in slots], np.int64),
        "share": np.array([s.share for s in slots], float),
        "models": [",".join(sorted(s.models)) for s in slots],
    }, columns=SLOT_COLUMNS)


def ledger_tables(ledger) -> dict[str, pd.DataFrame]:
    """What a ledger (harness.ledger) knows, as the record tables (on the ledger's clock)."""
    batches = batches_frame(ledger.batches, ledger.slots)
    events = pd.DataFrame(ledger.slot_events, columns=SLOT_EVENT_COLUMNS).astype({"t": float, "slot": np.int64})
    recs = pd.DataFrame([(r.t_request, r.t_done, r.cost_s, r.before, r.after, ",".join(map(str, r.left)),
                          ",".join(map(str, r.joining))) for r in ledger.reconfigurations],
                        columns=RECONFIGURATION_COLUMNS).astype({"t_request": float, "t_done": float, "cost_s": float})
    return {"batches": batches, "tasks": tasks_frame(ledger.graph_tasks, batches), "slots": slots_frame(ledger.slots),
            "slot_events": events, "reconfigurations": recs}


def empty_tables() -> dict[str, pd.DataFrame]:
    """The ledger's tables with no rows (a run whose server wrote nothing)."""
    empty = {"batches": BATCH_COLUMNS, "tasks": TASK_COLUMNS, "slots": SLOT_COLUMNS,
             "slot_events": SLOT_EVENT_COLUMNS, "reconfigurations": RECONFIGURATION_COLUMNS}
    return {name: pd.DataFrame({c: pd.Series(dtype=float) for c in cols}) for name, cols in empty.items()}


def server_frame(items: Sequence) -> pd.DataFrame:
    """What the scheduler knows of each request (its own clock): plain tasks and app requests alike."""
    n = len(items)
    return pd.DataFrame({
        "id": np.fromiter((r.id for r in items), np.int64, n),
        "model": [r.model for r in items],
        "t_arrival": np.fromiter((r.t_arrival for r in items), float, n),
        "t_done": np.fromiter((r.t_done for r in items), float, n),
        "status": [r.status for r in items],
        "reason": [r.reason for r in items],
        "batch_id": np.fromiter((r.batch_id for r in items), np.int64, n),
    })


def requests_frame(client: pd.DataFrame, batches: pd.DataFrame, slo: Mapping[str, float]) -> pd.DataFrame:
    """Complete per-request records from the client's view and the batches that served them.

    `client` has id, model, t_arrival (server clock), t_sched, t_sent, t_done,
    status, reason, batch_id.
    Slot, device, queue time and execution time come from the serving batch.
    """
    out = client.copy()
    served = batches.set_index("id")
    batch_id = out["batch_id"].where(out["batch_id"] >= 0)
    start = batch_id.map(served["t_start"])
    end = batch_id.map(served["t_end"])
    out["slot"] = batch_id.map(served["slot"]).fillna(-1).astype(np.int64)
    out["device"] = batch_id.map(served["device"]).fillna(-1).astype(np.int64)
    out["latency"] = out["t_done"] - out["t_sched"]
    out["slo"] = out["model"].map(slo).astype(float)
    # The server's split of the latency: waiting (arrival to batch start) and running.
    out["queue_time"] = start - out["t_arrival"]
    out["exec_time"] = end - start
    out["model"] = out["model"].astype(str)
    return out[REQUEST_COLUMNS]


def sim_client_view(server: pd.DataFrame, ids: np.ndarray, t_sched: np.ndarray, response_delay: np.ndarray) -> pd.DataFrame:
    """In simulation the client sends each request exactly at its scheduled time, and has its answer
    `response_delay` (per request, in schedule order) after the server resolved it."""
    sent = pd.DataFrame({"id": ids, "t_sched": t_sched, "back": response_delay})
    view = server.merge(sent, on="id", how="left")
    return view.assign(t_sent=view["t_sched"], t_done=view["t_done"] + view["back"]).drop(columns="back")


def empty_gpus_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in GPU_COLUMNS})


def scheduler_busy(run_dir: Path) -> dict:
    """What a live run's scheduler said of how busy it was (server.json's scheduler_busy: loop_share, cpu_share,
    wall_s, cpu_s); empty where it said nothing (a sim run, tritonserver's scheduling, an older run)."""
    try:
        busy = json.loads((Path(run_dir) / "server.json").read_text()).get("scheduler_busy")
    except (OSError, ValueError, AttributeError):
        return {}
    return busy if isinstance(busy, dict) else {}


def write_table(df: pd.DataFrame, path: Path) -> None:
    # zstd: a fifth to a third smaller than parquet's default (snappy) on a run's records, for about a tenth
    # more time to write (900,000 requests: 22.5 against 28.1 MB, 0.27 against 0.24 s).
    _atomic(path, lambda tmp: df.to_parquet(tmp, index=False, compression="zstd"))


def write_json(obj, path: Path) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(
        json.dumps(strict_json(obj), indent=2, allow_nan=False, default=_jsonable) + "\n"))


def strict_json(x):
    """`x` with every float that JSON cannot hold (nan, inf) replaced by None."""
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _jsonable(x):
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)


_UMASK = os.umask(0)
os.umask(_UMASK)


def check_writable_dir(directory: Path) -> None:
    """Make `directory` (and its parents) and a file in it, removed at once: OSError if the files written there
    later (atomically, through a temporary file beside each) could not be. Checked before the work they record,
    so a bad path loses nothing (mkdir alone passes for a directory that takes no files, such as /proc)."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    tempfile.TemporaryFile(dir=directory).close()


def _atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)      # mkstemp makes it private; a result file is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
