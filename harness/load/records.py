"""The client's records: each Locust process's final file, or its periodic part files if it was cut short."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow.feather as feather

CLIENT_COLUMNS = ["id", "model", "t_sched", "t_sent", "t_done", "status", "reason", "batch_id"]
READ_RETRIES = 5          # re-reads when a shard folds its parts into its final file mid-read


def read_records(out_dir: str | os.PathLike) -> pd.DataFrame:
    """The client records under `out_dir`: each process's final file, or its part files if it was cut short.

    Safe while the run goes on: a shard that finishes mid-read folds its parts into its final file and
    deletes them, so a vanished part means reading again.
    """
    for _ in range(READ_RETRIES):
        try:
            return _read_records_once(Path(out_dir))
        except FileNotFoundError:
            continue
    return _read_records_once(Path(out_dir))


def _read_records_once(out_dir: Path) -> pd.DataFrame:
    finals = sorted(out_dir.glob("client-[0-9][0-9][0-9].parquet"))
    done = {p.name.split(".")[0] for p in finals}
    frames = [pd.read_parquet(p) for p in finals]
    frames += [feather.read_table(p).to_pandas() for p in sorted(out_dir.glob("client-*.part-*.arrow"))
               if p.name.split(".")[0] not in done]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            CLIENT_COLUMNS, ["int64", str, float, float, float, str, str, "int64"])})
    records = pd.concat(frames, ignore_index=True)[CLIENT_COLUMNS]
    records = records.astype({"model": str, "status": str, "reason": str})      # parts hold them as dictionaries
    return records.sort_values("id", kind="stable").reset_index(drop=True)
