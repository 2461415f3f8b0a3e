"""Per-run records: the tables every runtime writes and every report reads.

The contract (DESIGN.md section 5), one Parquet file each in the run directory:

- requests: id, model, t_sched, t_sent, t_done, status, reason, latency, slo,
  gpu, batch_id, queue_time, exec_time  (seconds; latency from t_sched)
- batches:  id, gpu, partition, model, size, t_dispatch, t_start, t_end, status
- gpus:     t, gpu, util, mem_used, power, sm_clock  (NVML; empty when emulated)

Files are written atomically (a temporary file, then a rename), so a crash
never leaves a half-written table.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from harness.core import Batch, GpuSlot, Request

REQUEST_COLUMNS = ["id", "model", "t_sched", "t_sent", "t_done", "status", "reason", "latency", "slo",
                   "gpu", "batch_id", "queue_time", "exec_time"]
BATCH_COLUMNS = ["id", "gpu", "partition", "model", "size", "t_dispatch", "t_start", "t_end", "status"]
GPU_COLUMNS = ["t", "gpu", "util", "mem_used", "power", "sm_clock"]


def batches_frame(batches: Sequence[Batch], gpus: Sequence[GpuSlot]) -> pd.DataFrame:
    partition = [g.partition for g in gpus]
    return pd.DataFrame({
        "id": np.fromiter((b.id for b in batches), np.int64, len(batches)),
        "gpu": np.fromiter((b.gpu for b in batches), np.int64, len(batches)),
        "partition": [partition[b.gpu] for b in batches],
        "model": [b.model for b in batches],
        "size": np.fromiter((len(b.requests) for b in batches), np.int64, len(batches)),
        "t_dispatch": np.fromiter((b.t_dispatch for b in batches), float, len(batches)),
        "t_start": np.fromiter((b.t_start for b in batches), float, len(batches)),
        "t_end": np.fromiter((b.t_end for b in batches), float, len(batches)),
        "status": [b.status for b in batches],
    }, columns=BATCH_COLUMNS)


def server_frame(requests: Sequence[Request]) -> pd.DataFrame:
    """What the scheduler knows of each request (its own clock)."""
    n = len(requests)
    return pd.DataFrame({
        "id": np.fromiter((r.id for r in requests), np.int64, n),
        "model": [r.model for r in requests],
        "t_arrival": np.fromiter((r.t_arrival for r in requests), float, n),
        "t_done": np.fromiter((r.t_done for r in requests), float, n),
        "status": [r.status for r in requests],
        "reason": [r.reason for r in requests],
        "batch_id": np.fromiter((r.batch_id for r in requests), np.int64, n),
    })


def requests_frame(client: pd.DataFrame, batches: pd.DataFrame, slo: Mapping[str, float]) -> pd.DataFrame:
    """Complete per-request records from the client's view and the batches that served them.

    `client` has id, model, t_arrival (server clock), t_sched, t_sent, t_done,
    status, reason, batch_id.
    GPU, queue time and execution time come from the serving batch.
    """
    out = client.copy()
    served = batches.set_index("id")
    batch_id = out["batch_id"].where(out["batch_id"] >= 0)
    start = batch_id.map(served["t_start"])
    end = batch_id.map(served["t_end"])
    out["gpu"] = batch_id.map(served["gpu"]).fillna(-1).astype(np.int64)
    out["latency"] = out["t_done"] - out["t_sched"]
    out["slo"] = out["model"].map(slo).astype(float)
    # The server's split of the latency: waiting (arrival to batch start) and running.
    out["queue_time"] = start - out["t_arrival"]
    out["exec_time"] = end - start
    out["model"] = out["model"].astype(str)
    return out[REQUEST_COLUMNS]


def sim_client_view(server: pd.DataFrame, request_delay: float = 0.0, response_delay: float = 0.0) -> pd.DataFrame:
    """In simulation the client sends each request exactly at its scheduled time; the network
    is a fixed delay each way (zero by default)."""
    sent = server["t_arrival"] - request_delay
    return server.assign(t_sched=sent, t_sent=sent, t_done=server["t_done"] + response_delay)


def empty_gpus_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in GPU_COLUMNS})


def write_table(df: pd.DataFrame, path: Path) -> None:
    _atomic(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_json(obj, path: Path) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n"))


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (set, frozenset, tuple)):
        return list(x)
    return str(x)


def _atomic(path: Path, write) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
