"""Load generation: Locust replays a request schedule open loop (each request at its scheduled time).

    from harness.load import replay, read_records
    client = replay("run/schedule.parquet", "http://127.0.0.1:8000", epoch, "run/client", workers=2)

- runner:     replay() starts the Locust processes, waits for them, stops them, collects their records
- locustfile: the Locust user that replays one shard of the schedule
- http:       the lean HTTP/1.1 client it sends with (raw keep-alive sockets, no per-request parsing beyond
              the status line, headers and body)
- records:    read_records() and the client records' columns
"""

import os

from harness.load.records import CLIENT_COLUMNS, read_records
from harness.load.runner import ReplayAborted, replay

__all__ = ["CLIENT_COLUMNS", "ReplayAborted", "default_workers", "read_records", "replay"]


def default_workers(cores: int | None = None) -> int:
    """Locust workers for a host: one process (0) up to 7 cores, then a quarter of the cores -- one
    process keeps about 5,000 requests per second on schedule, and the system under test needs the rest."""
    cores = cores or os.cpu_count() or 1
    return 0 if cores < 8 else cores // 4
