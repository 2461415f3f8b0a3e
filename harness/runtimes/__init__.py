"""Runtimes: the same policies in virtual time (sim) or real time (live).

Each runtime takes the run's assembly (harness.assembly) and schedule and
hands back an `Outcome`: the client's view of every request, the ledger's
tables on the run clock (harness.records), GPU telemetry and what went
wrong. harness/run.py turns that into records and a summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harness.records import empty_gpus_frame


@dataclass
class Outcome:
    client: pd.DataFrame        # id, model, t_arrival, t_sched, t_sent, t_done, status, reason, batch_id
    tables: dict                # harness.records.LEDGER_TABLES name -> DataFrame, on the run clock
    gpus: pd.DataFrame = field(default_factory=empty_gpus_frame)   # NVML samples; empty when emulated
    failures: list = field(default_factory=list)    # what else went wrong (e.g. the server died): invalidates
    interrupted: bool = False
    wall_seconds: float = float("nan")
    ready_seconds: float | None = None  # live: from launch until the system under test could serve (workers up,
                                        # models loaded); where a run's time goes besides its schedule
    notes: list = field(default_factory=list)

    @property
    def lost_slots(self) -> list[int]:
        events = self.tables["slot_events"]
        return sorted(int(s) for s in events.loc[events["event"] == "lost", "slot"].unique())
