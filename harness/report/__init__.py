"""Reports over runs, and the Python API to read them.

    from harness.report import load_runs, results_table, summarise, build

    runs = load_runs(["results/sweeps/2026-01-01_12-00-00"])   # every run under these directories
    table = results_table(runs)          # one row per run: system, seeds, workload, cluster, metrics
    summary = summarise(table)           # repeats over seeds: mean and 95% confidence interval per metric
    runs[0].table("requests")            # a run's record table (requests, batches, gpus_used, ...)
    build(["results/sweeps/..."], Path("reports/mine"))   # what `python -m harness.report` writes

Modules: runs (finding and reading run directories, old schemas too),
analysis (tables, repeats, capacity, fewest slots, the best system),
figures (matplotlib), render (Markdown and HTML), build (a report's
sections), experiments (named experiments), terminal (a sweep's closing
table), cli (`python -m harness.report`).
"""

from harness.report.analysis import capacity, fewest_slots, results_table, summarise
from harness.report.build import build
from harness.report.runs import Run, find_runs, load_run, load_runs

__all__ = ["Run", "build", "capacity", "fewest_slots", "find_runs", "load_run", "load_runs", "results_table",
           "summarise"]
