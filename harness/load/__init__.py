"""Load generation: Locust replays a request schedule open loop (each request at its scheduled time).

    from harness.load import replay, read_records
    client = replay("run/schedule.parquet", "http://127.0.0.1:8000", epoch, "run/client", workers=2)

- runner:     replay() starts the Locust processes, waits for them, stops them, collects their records
- locustfile: the Locust user that replays one shard of the schedule
- http:       the lean HTTP/1.1 client it sends with (raw keep-alive sockets, no per-request parsing beyond
              the status line, headers and body)
- records:    read_records() and the client records' columns
"""

import math
import os

import numpy as np

from harness.load.records import CLIENT_COLUMNS, read_records
from harness.load.runner import ReplayAborted, replay

__all__ = ["CLIENT_COLUMNS", "ReplayAborted", "default_workers", "peak_in_window", "peak_rate", "read_records", "replay"]


# Measured on a 16-core GPU host beside the system under test: eight workers fell behind at 32,800 req/s
# (4,100 each, send lag p99 3.1 ms), ten kept up (3,280 each, 1.9 ms).
REQUESTS_PER_WORKER = 3500


def default_workers(cores: int | None = None, peak_rate: float = 0.0) -> int:
    """Locust workers for a host and a schedule: one process (0) up to 7 cores; from 8 cores a quarter of
    them, or one per 3,500 requests per second of the schedule's busiest second if that is more, up to
    five eighths of the cores (the system under test needs the rest)."""
    cores = cores or os.cpu_count() or 1
    if cores < 8:
        return 0
    by_rate = math.ceil(peak_rate / REQUESTS_PER_WORKER)
    return max(cores // 4, min(by_rate, cores * 5 // 8))


def peak_in_window(t: np.ndarray, window: float) -> int:
    """The most scheduled times (sorted) within any `window` seconds."""
    if len(t) == 0:
        return 0
    return int((np.searchsorted(t, t + window, side="right") - np.arange(len(t))).max())


def peak_rate(t_sched: np.ndarray) -> float:
    """Requests in the schedule's busiest second (its whole length, if shorter)."""
    return float(peak_in_window(np.sort(np.asarray(t_sched, dtype=float)), 1.0))
