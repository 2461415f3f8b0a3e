"""Live-versus-sim fidelity: the same config in both runtimes, goodput side by side.

For each system, the live run comes first; the median transport delays it
measured (client send -> frontend arrival, batch end -> client answer) are
then given to the sim as fixed delays, so the comparison isolates the
scheduler and the executors. `triton` is real tritonserver live and the
dynamic-batcher model in the sim.

    python benchmarks/live_vs_sim.py [--systems eager,symphony,...] [overrides...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ["cluster=h200x1", "cluster.count=2", "models=vision", "workload=poisson", "workload.rate=300",
           "duration_s=20", "warmup_s=3", "cooldown_s=2"]


def harness(run_dir: Path, *overrides: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "harness", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    if run.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(overrides)}): {run.stderr.strip()[-500:]}")
    return json.loads((run_dir / "summary.json").read_text())


def transport_delays_ms(run_dir: Path) -> tuple[float, float]:
    """Median client -> scheduler and batch end -> client delays of a live run's served requests."""
    r = pd.read_parquet(run_dir / "requests.parquet")
    b = pd.read_parquet(run_dir / "batches.parquet", columns=["id", "t_start", "t_end"])
    ok = r[r["status"] == "ok"].merge(b.rename(columns={"id": "batch_id"}), on="batch_id")
    arrival = ok["t_start"] - ok["queue_time"]          # the scheduler's arrival time (client send time for triton)
    return max(0.0, (arrival - ok["t_sent"]).median() * 1e3), max(0.0, (ok["t_done"] - ok["t_end"]).median() * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--systems", default="eager,symphony,nexus,clockwork,shepherd,triton")
    args, overrides = ap.parse_known_args()
    overrides = overrides or DEFAULT
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for system in args.systems.split(","):
            live_dir, sim_dir = Path(tmp) / f"{system}-live", Path(tmp) / f"{system}-sim"
            live = harness(live_dir, "runtime=live", f"system={system}", *overrides)
            d_in, d_out = transport_delays_ms(live_dir)
            sim = harness(sim_dir, "runtime=sim", f"system={system}", *overrides,
                          f"runtime.request_delay_ms={d_in:.3f}", f"runtime.response_delay_ms={d_out:.3f}")
            rows.append({"system": system, "live goodput": live["goodput"], "sim goodput": sim["goodput"],
                         "live/sim": live["goodput"] / sim["goodput"] if sim["goodput"] else float("nan"),
                         "live attain.": live["slo_attainment"], "sim attain.": sim["slo_attainment"],
                         "d_in ms": d_in, "d_out ms": d_out, "live valid": live["validity"]["valid"]})
            print(f"  {system}: live {live['goodput']:.1f} / sim {sim['goodput']:.1f} req/s", flush=True)
    table = pd.DataFrame(rows)
    print(f"\nconfig: {' '.join(overrides)}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
