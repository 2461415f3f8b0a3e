"""Comparison report over runs: tables, paper-style figures, report.md, report.html and results.parquet.

    python -m harness.report RUN_OR_SWEEP_DIR... [--out reports/<name>] [--title TEXT] [--rate R] [--reference S]
    python -m harness.report --experiment NAME [overrides...] [--jobs N] [--out reports/NAME]
    python -m harness.report --experiment NAME --latest      # report its latest results again, no run

The first form collects every run directory (one holding summary.json) under
the given paths -- single runs, Hydra multirun sweep directories, search
directories -- and writes to --out: report.md, report.html (figures as files
beside it), results.parquet (one row per run) and every figure as PNG and
PDF. A figure whose data is absent is skipped with a note in the report.

The second form runs a named experiment (conf/experiment/NAME.yaml; list
them with `python -m harness list experiment`) into
results/experiments/NAME/<time> (or hydra.sweep.dir=DIR, a new or empty
directory; --latest does not look there) and then reports it into
reports/NAME/. Named experiments have a one-machine and a paper-scale
variant: goodput_vs_rate[_paper], fewest_gpus[_paper], gpus_over_day[_paper].

On a SLURM cluster (pip install hydra-submitit-launcher; results/ on a
shared filesystem) the sweep runs as one job per run and the command waits
for them, then reports:

    python -m harness.report --experiment goodput_vs_rate hydra/launcher=submitit_slurm \\
        hydra.launcher.partition=<partition> hydra.launcher.gpus_per_node=<n> hydra.launcher.timeout_min=30

No system is favoured: the report ranks the systems per scenario by what
decides there (capacity, fewest slots, GPUs used at the SLO target) unless
--reference names one to compare with each other system. Per-setting detail
(per-model tables, where the latency goes, latency CDF, GPUs over time,
batch sizes, batch timeline) shows, per workload, the setting every system
ran at the highest offered rate at which at least half of the systems attain
the target (past that every GPU is busy and the figures show only overload),
or the one nearest --rate.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.errors import ArgumentParser, HarnessError
from harness.report.build import build
from harness.report.experiments import experiment_title, latest_results, run_experiment
from harness.search import TARGET, check_target, positive


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m harness.report", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", help="run, sweep or search directories; with --experiment: Hydra overrides")
    ap.add_argument("--out", type=Path, help="output directory (default reports/<experiment or input name>)")
    ap.add_argument("--title", help="report title")
    ap.add_argument("--reference", help="a system to compare with each other one (default: none; the report "
                                        "ranks all systems)")
    ap.add_argument("--rate", type=float, help="offered rate (req/s) of the per-setting detail (default: the "
                                                "highest every system ran at where half of them attain the target)")
    ap.add_argument("--target", type=float, default=TARGET, help="SLO attainment that counts as serving a load")
    ap.add_argument("--experiment", help="run conf/experiment/EXPERIMENT.yaml first, then report it")
    ap.add_argument("--latest", action="store_true",
                    help="with --experiment: report its latest results/experiments/<name>/<time> without running")
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8),
                    help="parallel runs (sweeps) or searches (search experiments)")
    args = ap.parse_intermixed_args(argv)       # overrides may follow the options, as they do for Hydra
    complete = True                 # every run (or search) of the experiment finished
    try:
        check_args(args)
        if args.experiment:
            command = f"python -m harness.report --experiment {' '.join([args.experiment, *args.inputs])}"
            if args.latest:
                inputs = [latest_results(args.experiment)]
            else:
                results, complete = run_experiment(args.experiment, args.inputs, args.jobs, args.target)
                inputs = [results]
            out = args.out or Path("reports") / args.experiment
            title = args.title or experiment_title(args.experiment)
        else:
            if not args.inputs:
                raise HarnessError("give run or sweep directories to report, or --experiment NAME")
            inputs = [Path(p) for p in args.inputs]
            out = args.out or Path("reports") / (inputs[0].resolve().name if len(inputs) == 1 else "report")
            command, title = None, args.title
        path = build(inputs, out, title=title, reference=args.reference, rate=args.rate, target=args.target,
                     command=command)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path} (and report.html, results.parquet, figures) in {out}")
    if not complete:
        print("error: some runs of the experiment did not finish (see above); the report holds only the others",
              file=sys.stderr)
        return 3
    return 0


def check_args(args: argparse.Namespace) -> None:
    """HarnessError for options that make no report or would be ignored: before anything runs or is read."""
    check_target(args.target)
    if args.rate is not None and not positive(args.rate):
        raise HarnessError(f"--rate {args.rate:g} is no offered rate; give req/s > 0, or leave it out")
    if args.jobs < 1:
        raise HarnessError(f"--jobs {args.jobs}: give the number of runs or searches at once, 1 or more")
    if args.latest and not args.experiment:
        raise HarnessError("--latest reports a named experiment's latest results; give --experiment NAME with it, "
                           "or drop it to report the directories given")
    if args.latest and args.inputs:
        raise HarnessError(f"--latest runs nothing, so {' '.join(args.inputs)} would change nothing; drop them to "
                           f"report the latest results, or drop --latest to run {args.experiment} with them")
