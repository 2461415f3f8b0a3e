"""Runtimes: the same policies in virtual time (sim) or real time (live).

Each runtime takes the run's schedule and hands back an `Outcome`: the
client's view of every request, the batches, GPU telemetry and the slot
count over time. harness/run.py turns that into records and a summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.records import empty_gpus_frame


@dataclass
class Outcome:
    client: pd.DataFrame        # id, model, t_arrival, t_sched, t_sent, t_done, status, reason, batch_id
    batches: pd.DataFrame       # harness.records.BATCH_COLUMNS
    timeline: pd.DataFrame      # t, slots: slots provisioned from t on
    gpus: pd.DataFrame = field(default_factory=empty_gpus_frame)   # NVML samples; empty when emulated
    lost_slots: list = field(default_factory=list)
    failures: list = field(default_factory=list)    # what else went wrong (e.g. the server died): invalidates
    interrupted: bool = False
    wall_seconds: float = float("nan")
    notes: list = field(default_factory=list)
