"""Live-versus-sim fidelity: the same config in both runtimes, goodput side by side.

The host's live path is calibrated first (python -m harness.calibrate, or
--calibration FILE made earlier); each system then runs live and in the sim
with that calibration, so the sim charges the delays this host's live path
measured -- one source of truth, not delays tuned per system. `triton` is
real tritonserver live and the dynamic-batcher model in the sim; its path
(tritonserver, the Python backend stub, its forwarding socket) is not the other
systems' frontend, so it is calibrated on its own (`system=triton`).

    python benchmarks/live_vs_sim.py [--systems eager,symphony,...] [--calibration FILE]
        [--triton-calibration FILE] [--at-load] [--out DIR] [overrides...]

The light calibration run measures an idle host. Past capacity the hops
grow, and a system that keeps batches waiting at its slots (Clockwork) pays
a slot's turnaround to each, which only a run that queues measures:
`--at-load` also calibrates from each system's live run (its own delays,
what it does not measure from the light calibration) and runs the sim again
with that, a second ratio beside the first.

Besides goodput it prints each side's mean batch size and p50 / p99 latency:
a model of a batcher can match goodput at a load both serve while forming
other batches.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
from _cli import Parser, child_error, run_main, system_names

from harness.records import scheduler_busy  # (after _cli, which puts the project on sys.path)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["cluster=h200x1", "cluster.count=2", "models=vision", "workload=poisson", "workload.rate=300",
           "duration_s=20", "warmup_s=3", "cooldown_s=2"]
# PARIS re-cuts the cluster 1 s after its first query, and its new partitions' workers take seconds to
# start on a small host (on 2 cores, past a 3 s warm-up: the load generator lagged and the live run was
# invalid); its window starts once they run. Both runtimes get it; an override given on the command line wins.
PER_SYSTEM = {"paris_elsa": ["warmup_s=8"]}


def for_system(system: str, overrides: list[str], given: list[str]) -> list[str]:
    """The overrides with the system's own (PER_SYSTEM) in place of the defaults' same keys."""
    key = lambda o: o.split("=", 1)[0]  # noqa: E731
    own = [o for o in PER_SYSTEM.get(system, []) if key(o) not in {key(g) for g in given}]
    return [o for o in overrides if key(o) not in {key(x) for x in own}] + own


def harness(run_dir: Path, *overrides: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "harness", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"error: the run failed ({' '.join(overrides)}): {child_error(run.stderr)}")
    return json.loads((run_dir / "summary.json").read_text())


def ratio(live: dict, sim: dict) -> float:
    return live["goodput"] / sim["goodput"] if sim["goodput"] else float("nan")


def calibrate(path: Path, *overrides: str) -> None:
    made = subprocess.run([sys.executable, "-m", "harness.calibrate", "--out", str(path), *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    if made.returncode != 0:
        raise SystemExit(f"error: the calibration failed: {child_error(made.stderr)}")
    print(made.stdout.strip())


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", type=system_names, default="eager,symphony,nexus,clockwork,shepherd,triton")
    ap.add_argument("--calibration", type=Path, help="a calibration file of this host (default: make one first)")
    ap.add_argument("--triton-calibration", type=Path,
                    help="a calibration of this host's tritonserver path, for triton (default: make one first)")
    ap.add_argument("--at-load", action="store_true",
                    help="also run each sim with the delays its live run measured (python -m harness.calibrate "
                         "--from-run, the rest from the light calibration)")
    ap.add_argument("--out", type=Path, help="keep the calibration and the run directories here")
    args, given = ap.parse_known_args()
    overrides = given or DEFAULT
    systems = args.systems
    if args.out is not None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            ap.error(f"--out: cannot make the directory {args.out} ({exc}); give a directory path")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = args.out or Path(scratch)
        calibration = {"frontend": args.calibration or work / "calibration.json",
                       "triton": args.triton_calibration or work / "calibration-triton.json"}
        if args.calibration is None and systems != ["triton"]:
            calibrate(calibration["frontend"])
        if args.triton_calibration is None and "triton" in systems:
            calibrate(calibration["triton"], "system=triton")
        for system in systems:
            live_dir, sim_dir = work / f"{system}-live", work / f"{system}-sim"
            own = for_system(system, overrides, given)
            live = harness(live_dir, "runtime=live", f"system={system}", *own)
            light = calibration["triton" if system == "triton" else "frontend"]
            sim = harness(sim_dir, "runtime=sim", f"system={system}", *own, f"runtime.calibration={light}")
            row = {"system": system, "live goodput": live["goodput"], "sim goodput": sim["goodput"],
                   "live/sim": ratio(live, sim)}
            if args.at_load:
                at_load = work / f"calibration-{system}-at-load.json"
                calibrate(at_load, "--from-run", str(live_dir), "--base", str(light))
                loaded = harness(work / f"{system}-sim-at-load", "runtime=sim", f"system={system}", *own,
                                 f"runtime.calibration={at_load}")
                row.update({"sim at load": loaded["goodput"], "live/sim at load": ratio(live, loaded)})
            rows.append({**row,
                         "live attain.": live["slo_attainment"], "sim attain.": sim["slo_attainment"],
                         "live batch": live["mean_batch_size"], "sim batch": sim["mean_batch_size"],
                         "live p50 ms": live["latency_p50_ms"], "sim p50 ms": sim["latency_p50_ms"],
                         "live p99 ms": live["latency_p99_ms"], "sim p99 ms": sim["latency_p99_ms"],
                         "live sched. loop": scheduler_busy(live_dir).get("loop_share", math.nan),
                         "live valid": live["validity"]["valid"]})
            print(f"  {system}: live {live['goodput']:.1f} / sim {row['sim goodput']:.1f} req/s"
                  + (f" ({row['sim at load']:.1f} at load)" if args.at_load else ""), flush=True)
    table = pd.DataFrame(rows)
    print(f"\nconfig: {' '.join(overrides)}; sim calibrated to this host's live path"
          + ("; 'at load': to each live run's own (the other columns are the light calibration's sim)"
             if args.at_load else ""))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    run_main(main)
