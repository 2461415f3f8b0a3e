"""The table a sweep ends with: its runs side by side in the terminal, and which system did best.

`python -m harness -m ...` registers `SweepTable` as a Hydra callback, so it
runs once every job of the sweep has ended, whichever launcher ran them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd
from hydra.experimental.callback import Callback
from rich.console import Console
from rich.table import Table

from harness.errors import HarnessError
from harness.report import analysis
from harness.report.runs import load_runs
from harness.search import TARGET


class SweepTable(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        console = Console(width=None if sys.stdout.isatty() else 160)     # a log keeps the table's columns whole
        try:
            runs = load_runs([sweep])
        except HarnessError as exc:
            console.print(f"no comparison table: {exc}")
            return
        table = analysis.results_table(runs)
        summary = analysis.summarise(table)
        console.print(comparison_table(summary))
        verdicts = analysis.best_at_slo(summary, analysis.capacity(table), analysis.fewest_slots(table))
        for v in verdicts:
            best = " = ".join(r.system for r in v.best)
            console.print(f"best at {TARGET:.0%} attainment, {v.workload} on {v.cluster} ({v.runtime}), by "
                          f"{v.criterion}: [bold]{best}[/bold]")
        console.print(f"report: python -m harness.report {sweep}")


def comparison_table(summary: pd.DataFrame, target: float = TARGET) -> Table:
    """One row per setting (repeats over seeds averaged, ± their 95% confidence interval); attainment
    below the target and invalid runs in red."""
    scenario = [c for c in ("workload", "cluster", "runtime") if summary[c].nunique() > 1]
    same = ", ".join(str(summary[c].iloc[0]) for c in ("workload", "cluster", "runtime") if c not in scenario)
    table = Table(title=f"Sweep results: {same}" if same else "Sweep results", title_justify="left",
                  header_style="bold")
    for name in ["system", *scenario]:
        table.add_column(name, overflow="fold")
    for name in ("runs", "offered req/s", "goodput req/s", "attainment", "p99 ms", "GPUs used"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("valid")
    for r in summary.sort_values(["workload", "cluster", "load", "goodput"], ascending=[True, True, True, False]) \
            .itertuples():
        attained = _with_ci(r.slo_attainment, r.slo_attainment_ci, "{:.2%}")
        table.add_row(r.system, *(getattr(r, c) for c in scenario), str(r.n),
                      _with_ci(r.offered_rate, r.offered_rate_ci, "{:,.0f}"),
                      _with_ci(r.goodput, r.goodput_ci, "{:,.0f}"),
                      attained if r.slo_attainment >= target else f"[red]{attained}[/red]",
                      _with_ci(r.latency_p99_ms, r.latency_p99_ms_ci, "{:.1f}"),
                      _with_ci(r.gpus_used_mean, r.gpus_used_mean_ci, "{:.2f}"),
                      "yes" if r.valid else "[red]NO[/red]")
    return table


def _with_ci(value: float, ci: float, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value) + (f" ± {fmt.format(ci)}" if isinstance(ci, float) and math.isfinite(ci) else "")
