"""Scheduler regression suite: a fixed matrix in the deterministic sim, checked against a baseline.

    python -m harness.regression                  # run, print the table, exit 1 on a regression
    python -m harness.regression --update         # refresh the committed baseline on purpose
    python -m harness.regression --update --systems dstack   # refresh one system's entries only
    python -m harness.regression --systems symphony,eager --no-capacity [--jobs 2]

Every system runs every cell (workload x cluster size) of MATRIX in the sim
runtime, which is deterministic for its seeds, and every system's capacity is
searched on the first cell. Each metric is compared with
regression_baseline.json beside this module; a metric that moved beyond its
tolerance, in either direction, fails the suite and is named: an improvement
is refreshed into the baseline deliberately, with the change that made it.
The harness's own speed (simulated requests per wall second) is recorded in
the same table for information only: machines are too noisy to gate on it.
Its live smoke is tests/test_live_systems.py: every system on emulated GPUs
through real Locust, HTTP, workers and tritonserver, checked for validity and
a loose goodput band (the live path's own speed: benchmarks/live_rate.py).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import systems
from harness.errors import ArgumentParser, HarnessError, exit_with

BASELINE = Path(__file__).resolve().parent / "regression_baseline.json"

# name -> overrides. Small enough to run on every change, loaded enough that policies differ.
MATRIX = {
    "sleep-poisson-4": ["cluster=sleep1000", "cluster.count=4", "models=sleep10", "workload=poisson",
                        "workload.rate=2400", "duration_s=15", "warmup_s=3", "cooldown_s=1"],
    "sleep-bursty-16": ["cluster=sleep1000", "cluster.count=16", "models=sleep10", "workload=bursty",
                        "workload.rate=12000", "duration_s=15", "warmup_s=3", "cooldown_s=1"],
    "vision-bursty-4": ["cluster=h200x4", "models=vision", "workload=bursty", "workload.rate=30000",
                        "duration_s=12", "warmup_s=2", "cooldown_s=1"],
}
CAPACITY_CELL = "sleep-poisson-4"

# metric -> (kind, tolerance): relative or absolute change allowed.
TOLERANCES = {
    "goodput": ("rel", 0.02),
    "slo_attainment": ("abs", 0.01),
    "gpus_used_mean": ("rel", 0.05),
    "mean_batch_size": ("rel", 0.10),
    "capacity": ("rel", 0.05),
}


@dataclass
class Finding:
    key: str
    metric: str
    old: float | None
    new: float | None
    passed: bool

    @property
    def change(self) -> str:
        if self.old is None or self.new is None:
            return "new" if self.old is None else "missing"
        if self.old == 0:
            return f"{self.new - self.old:+.3g}"
        return f"{(self.new - self.old) / abs(self.old):+.1%}"


def run_matrix(system_names: list[str], capacity: bool = True, out: Path | None = None, jobs: int = 0) -> dict:
    """Metrics per "<system>/<cell>", plus "<system>/capacity" when asked. `jobs` systems run at once, each in
    a process of its own (0: one per core); the sim is deterministic, so the results do not depend on it."""
    jobs = min(jobs or os.cpu_count() or 1, len(system_names))
    with tempfile.TemporaryDirectory(prefix="regression-") as tmp:
        root = Path(out or tmp)
        if jobs <= 1:
            parts = [_run_system(system, capacity, root) for system in system_names]
        else:
            # spawned, not forked: a worker starts from the modules as written, whatever its parent changed
            with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                parts = list(pool.map(_run_system, system_names, [capacity] * len(system_names),
                                      [root] * len(system_names)))
    return {key: metrics for part in parts for key, metrics in part.items()}


def _run_system(system: str, capacity: bool, root: Path) -> dict:
    from harness.run import execute
    from harness.search import compose, search

    results: dict[str, dict] = {}
    for cell, overrides in MATRIX.items():
        args = [f"system={system}", "runtime=sim", *overrides]
        summary = execute(compose(args), root / system / cell, args)
        results[f"{system}/{cell}"] = {m: summary[m] for m in TOLERANCES if m in summary}
        print(f"  {system:<10} {cell:<16} goodput {summary['goodput']:>10,.1f}  "
              f"attainment {summary['slo_attainment']:.2%}", flush=True)
    if capacity:
        args = [f"system={system}", "runtime=sim", *MATRIX[CAPACITY_CELL], "duration_s=10"]
        found = search("capacity", args, root / system / "capacity", tolerance=0.02)
        results[f"{system}/capacity"] = {"capacity": found["answer"]}
    return results


def compare(results: dict, baseline: dict) -> list[Finding]:
    findings = []
    for key in sorted(set(results) | set(baseline)):
        new, old = results.get(key, {}), baseline.get(key, {})
        for metric in sorted(set(new) | set(old)):
            a, b = old.get(metric), new.get(metric)
            if a is None or b is None:
                # A cell only in the baseline is a regression if it was run; new cells pass until refreshed.
                findings.append(Finding(key, metric, a, b, passed=b is not None or key not in results))
                continue
            kind, tol = TOLERANCES[metric]
            moved = abs(b - a) if kind == "abs" else abs(b - a) / max(abs(a), 1e-12)
            findings.append(Finding(key, metric, a, b, passed=moved <= tol))
    return findings


def table(findings: list[Finding], speed: dict | None = None) -> str:
    lines = ["| run | metric | baseline | new | change | |", "|---|---|---:|---:|---:|---|"]
    for f in findings:
        fmt = (lambda v: "-" if v is None else f"{v:,.4g}")
        lines.append(f"| {f.key} | {f.metric} | {fmt(f.old)} | {fmt(f.new)} | {f.change} | "
                     f"{'ok' if f.passed else '**REGRESSION**'} |")
    for name, value in (speed or {}).items():
        lines.append(f"| harness speed | {name} | | {value} | | info |")
    return "\n".join(lines)


def failures_message(findings: list[Finding]) -> str:
    bad = [f for f in findings if not f.passed]
    return "; ".join(f"{f.key} {f.metric} {f.old:.4g} -> {f.new:.4g} ({f.change})"
                     if f.old is not None and f.new is not None else f"{f.key} {f.metric} missing" for f in bad)


def sim_speed() -> dict:
    """Simulated requests per wall second, Symphony on 1,000 sleep-model slots at 1M req/s (0.3 s)."""
    from harness.assembly import assemble
    from harness.run import make_schedule
    from harness.runtimes.sim import sim_cluster
    from harness.search import compose

    assembly = assemble(compose(["system=symphony", "runtime=sim", "cluster=sleep1000", "models=sleep10",
                                 "workload=poisson", "workload.rate=1000000", "duration_s=0.3", "warmup_s=0",
                                 "cooldown_s=0"]))
    schedule = make_schedule(assembly)
    sim = sim_cluster(assembly)
    policy = assembly.make_policy(sim)
    slo = {m: s.slo for m, s in assembly.models.items()}
    t = time.perf_counter()
    sim.run(policy, schedule["id"].to_numpy(), schedule["model"].tolist(), schedule["t_sched"].to_numpy(),
            slo, drain=0.5)
    rate = len(schedule) / (time.perf_counter() - t)
    return {"sim requests per wall second (symphony, 1000 slots)": f"{rate:,.0f}",
            "machine": f"{platform.machine()}, {platform.python_version()}, {platform.node()}"}


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m harness.regression",
                        description="Scheduler regression suite (sim, deterministic).")
    ap.add_argument("--systems", help="comma-separated (default: every system)")
    ap.add_argument("--no-capacity", action="store_true", help="skip the capacity searches")
    ap.add_argument("--update", action="store_true", help="write the results as the new baseline")
    ap.add_argument("--out", type=Path, help="keep the run directories here")
    ap.add_argument("--jobs", type=int, default=0, help="systems run at once, each in a process (0: one per core)")
    args = ap.parse_args(argv)
    names = [s.strip() for s in (args.systems or "").split(",") if s.strip()] or systems.names()
    if args.systems is not None and not args.systems.replace(",", "").strip():
        print("error: --systems names no system; give a comma-separated list, or leave it out for every system",
              file=sys.stderr)
        return 2
    if len(set(names)) < len(names):
        print(f"error: --systems names a system twice ({args.systems}); name each once", file=sys.stderr)
        return 2
    if args.jobs < 0:
        print(f"error: --jobs must be >= 0 (got {args.jobs}); 0 runs one system per core", file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} is a file; give a directory for the run directories", file=sys.stderr)
        return 2
    try:
        for name in names:
            systems.policy_class(name)
        results = run_matrix(names, capacity=not args.no_capacity, out=args.out, jobs=args.jobs)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    old = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    if args.update:
        # Only what ran is refreshed: other systems' entries (and, with --no-capacity, capacities) stay.
        merged = {**old, **results}
        BASELINE.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
        print(f"baseline written: {BASELINE.name} ({len(results)} of {len(merged)} entries refreshed)")
        return 0
    baseline = old
    baseline = {k: v for k, v in baseline.items() if k.split("/")[0] in names}
    if args.no_capacity:
        baseline = {k: v for k, v in baseline.items() if not k.endswith("/capacity")}
    findings = compare(results, baseline)
    print(table(findings, sim_speed()))
    failed = [f for f in findings if not f.passed]
    if failed:
        print(f"regression: {failures_message(findings)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    exit_with(main)
