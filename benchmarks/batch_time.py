"""How well a profile predicts the batches a real GPU ran: each model's mean batch time against the profile.

    python benchmarks/batch_time.py RUN_DIR [RUN_DIR ...] [--gpu-type h200]

For every batch that ran on a share of a real GPU (a run's batches.parquet), it
computes what the share's profile gives for it two ways, and prints per run,
partition and model the real mean batch time over each:

  interpolated   the busy-sibling latency, linear between profiled batch sizes
                 (how emulated GPUs ran until 2026-12-05)
  beside         the latency of the next profiled size (the GPU executor pads a
                 batch to its CUDA graph) between the share's alone and busy
                 latencies, by the fraction of the rest of the device at work
                 when the batch started (taken from the run's own batches), as
                 emulated GPUs run now (harness.profiles, LatencyCurve.beside)

1.00 is a perfect prediction. Runs whose table predates the `device` and `slot`
columns (one GPU, `gpu` naming the slot) are read as one device.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.gpu.partitions import parse_partition  # noqa: E402
from harness.profiles import LatencyCurve, load_profile, profile_path  # noqa: E402


def busy_at_start(batches: pd.DataFrame, shares: dict[int, float]) -> np.ndarray:
    """Per batch (by position), the share of the rest of its device whose slots ran a batch when it started."""
    busy = np.zeros(len(batches))
    for _, on_device in batches.groupby("device"):
        spans = {slot: g[["t_start", "t_end"]].to_numpy() for slot, g in on_device.groupby("slot")}
        starts = {slot: np.sort(a[:, 0]) for slot, a in spans.items()}
        ends = {slot: a[np.argsort(a[:, 0]), 1] for slot, a in spans.items()}
        for row in on_device.itertuples():
            rest = 1.0 - shares[row.slot]
            if rest <= 1e-9:
                continue                  # a whole GPU: nothing beside it
            working = 0.0
            for slot in spans:
                if slot == row.slot:
                    continue
                i = np.searchsorted(starts[slot], row.t_start, side="right") - 1
                if i >= 0 and ends[slot][i] > row.t_start:
                    working += shares[slot]
            busy[row.Index] = min(1.0, working / rest)
    return busy


def table(run: Path, gpu_type: str) -> pd.DataFrame:
    batches = pd.read_parquet(run / "batches.parquet")
    if "device" not in batches:
        batches = batches.assign(device=0, slot=batches["gpu"])
    batches = batches[batches["status"] == "ok"].reset_index(drop=True)
    shares = {int(s): parse_partition(p).share for s, p in zip(batches["slot"], batches["partition"])}
    batches["busy"] = busy_at_start(batches, shares)
    rows = []
    for partition, of_partition in batches.groupby("partition"):
        path = profile_path(gpu_type, partition)
        measured, profile = json.loads(path.read_text())["models"], load_profile(path)
        for model, g in of_partition.groupby("model"):
            linear = LatencyCurve.from_points(measured[model]["batch"], measured[model]["mean_ms"])  # the old way
            stepped = profile.curves[model]
            took = (g["t_end"] - g["t_start"]).mean()
            rows.append({"run": run.name, "partition": partition, "model": model, "batches": len(g),
                         "mean batch": g["size"].mean(), "siblings at work": g["busy"].mean(),
                         "real (ms)": took * 1000,
                         "real / interpolated": took / np.mean([linear.mean[b] for b in g["size"]]),
                         "real / beside": took / np.mean([stepped.beside(b, f)
                                                          for b, f in zip(g["size"], g["busy"])])})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories holding batches.parquet")
    ap.add_argument("--gpu-type", default=None, help="the profiles' GPU type (default: each run's summary)")
    args = ap.parse_args(argv)
    out = []
    for run in args.runs:
        if not (run / "batches.parquet").exists():
            print(f"error: {run} has no batches.parquet; give run directories of real-GPU runs", file=sys.stderr)
            return 2
        gpu_type = args.gpu_type or json.loads((run / "summary.json").read_text()).get("gpu_type")
        out.append(table(run, gpu_type))
    result = pd.concat(out, ignore_index=True)
    print(result.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
