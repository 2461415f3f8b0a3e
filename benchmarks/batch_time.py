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
                 when the batch started and the batches it ran (`sibling
                 batch`, their mean padded size; it counts where the profile
                 was measured beside siblings at several batch sizes), taken
                 from the run's own batches, as emulated GPUs run now
                 (harness.profiles, LatencyCurve.beside)

1.00 is a perfect prediction. Runs whose table predates the `device` and `slot`
columns (one GPU, `gpu` naming the slot) are read as one device.

    python benchmarks/batch_time.py RUN_DIR [RUN_DIR ...] --by-sibling-batch

prints instead real over `beside` for all the runs' batches together, by the
siblings' batch when each started (their mean padded size, in bins between
powers of two; "none" where no sibling worked): where the ratio grows with it,
the siblings slow the share more than the profile's own sibling batch did, and
the share wants a profile measured beside siblings at several batch sizes
(harness.gpu.profiler --sibling-batch).

    python benchmarks/batch_time.py RUN_DIR [RUN_DIR ...] --by-siblings-at-work

prints real over `beside` by the fraction of the rest of the device at work
when each batch started (what an emulated share charges by), and real over
the same charge with that fraction averaged over the batch's span (what the
siblings did while it ran), with the span's mean fraction: where the first
ratio falls with the fraction at the start and the second stays flat, the
GPU slows a share by what its siblings run during its batch, not at its
start.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

# The project, and this directory (for _cli) also where a test loads this file by its path.
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from _cli import Parser, run_main  # noqa: E402
from harness.errors import HarnessError  # noqa: E402
from harness.gpu.partitions import parse_partition  # noqa: E402
from harness.profiles import PROFILES_DIR, LatencyCurve, load_profile, profile_path  # noqa: E402

COLUMNS = {"model", "partition", "size", "status", "t_start", "t_end"}


def check_gpu_type(gpu_type, where: str) -> str:
    """`gpu_type` if profiles of it exist (a run on emulated `sleep` slots, or a typo, has none)."""
    profiled = sorted(p.name for p in PROFILES_DIR.iterdir() if p.is_dir())
    if gpu_type not in profiled:
        raise HarnessError(f"{where}: no latency profiles of GPU type '{gpu_type}' (profiled: {', '.join(profiled)}); "
                           "this compares runs on real GPUs with their profiles: give --gpu-type one of those")
    return gpu_type


def run_gpu_type(run: Path) -> str:
    """The GPU type a run's summary names."""
    path = run / "summary.json"
    try:
        gpu_type = json.loads(path.read_text()).get("gpu_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise HarnessError(f"cannot read the run's GPU type from {path} ({exc}); give --gpu-type") from None
    return check_gpu_type(gpu_type, str(path))


def slot_spans(on_device: pd.DataFrame) -> dict:
    """Each slot's batches on one device as rows of (t_start, t_end, padded), in start order."""
    return {slot: g.sort_values("t_start")[["t_start", "t_end", "padded"]].to_numpy()
            for slot, g in on_device.groupby("slot")}


def shares_of(batches: pd.DataFrame) -> dict[int, float]:
    """Each slot's share of its device, from its partition."""
    return {int(s): parse_partition(p).share for s, p in zip(batches["slot"], batches["partition"])}


def busy_at_start(batches: pd.DataFrame, shares: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per batch (by position), the share of the rest of its device whose slots ran a batch when it started,
    and the share-weighted mean size those batches ran at (the `padded` column; NaN where none ran)."""
    busy = np.zeros(len(batches))
    sibling_batch = np.full(len(batches), np.nan)
    for _, on_device in batches.groupby("device"):
        spans = slot_spans(on_device)
        for row in on_device.itertuples():
            rest = 1.0 - shares[row.slot]
            if rest <= 1e-9:
                continue                  # a whole GPU: nothing beside it
            working = weighted = 0.0
            for slot, span in spans.items():
                if slot == row.slot:
                    continue
                i = np.searchsorted(span[:, 0], row.t_start, side="right") - 1
                if i >= 0 and span[i, 1] > row.t_start:
                    working += shares[slot]
                    weighted += shares[slot] * span[i, 2]
            busy[row.Index] = min(1.0, working / rest)
            if working > 0:
                sibling_batch[row.Index] = weighted / working
    return busy, sibling_batch


def charged(batches: pd.DataFrame, profiles: dict, busy) -> list[float]:
    """What each batch's emulated share charges for it with the fraction `busy` (per batch) of the rest of its
    device at work, beside siblings at its `sibling batch`."""
    return [profiles[p].curves[m].beside(int(b), f, None if np.isnan(sb) else sb)
            for p, m, b, f, sb in zip(batches["partition"], batches["model"], batches["size"], busy,
                                      batches["sibling batch"])]


def predicted(run: Path, gpu_type: str) -> tuple[pd.DataFrame, dict]:
    """The run's batches that ran ok, each with what it took (`took`, s), the fraction of the rest of its device
    at work when it started (`busy`), the siblings' batch then (`sibling batch`) and what its emulated share
    charges for it (`beside`, s); and the profiles by partition."""
    path = run / "batches.parquet"
    try:
        batches = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read {path} ({exc}); give run directories whose runs finished") from None
    if not COLUMNS <= set(batches):
        raise HarnessError(f"{path} lacks the columns {sorted(COLUMNS - set(batches))}; is it a run's batches table?")
    if "device" not in batches:
        batches = batches.assign(device=0, slot=batches["gpu"])
    batches = batches[batches["status"] == "ok"].reset_index(drop=True)
    profiles = {p: load_profile(profile_path(gpu_type, p))        # (a missing or broken profile: a HarnessError)
                for p in batches["partition"].unique()}
    for partition, model in batches[["partition", "model"]].drop_duplicates().itertuples(index=False):
        if model not in profiles[partition].curves:
            raise HarnessError(f"the profile {gpu_type}/{partition} has no model '{model}' of {run}; "
                               "give --gpu-type of the GPU the run used")
    # The size each batch ran at: the GPU executor pads it to the next profiled size.
    batches["padded"] = [profiles[p].curves[m].padded(int(b))
                         for p, m, b in zip(batches["partition"], batches["model"], batches["size"])]
    batches["busy"], batches["sibling batch"] = busy_at_start(batches, shares_of(batches))
    batches["took"] = batches["t_end"] - batches["t_start"]
    batches["beside"] = charged(batches, profiles, batches["busy"])
    return batches, profiles


def table(run: Path, gpu_type: str) -> pd.DataFrame:
    """Per partition and model of the run: its batches' mean time against the profile, two ways."""
    batches, profiles = predicted(run, gpu_type)
    rows = []
    for partition, of_partition in batches.groupby("partition"):
        measured = json.loads(Path(profiles[partition].path).read_text())["models"]
        for model, g in of_partition.groupby("model"):
            linear = LatencyCurve.from_points(measured[model]["batch"], measured[model]["mean_ms"])  # the old way
            took = g["took"].mean()
            rows.append({"run": run.name, "partition": partition, "model": model, "batches": len(g),
                         "mean batch": g["size"].mean(), "siblings at work": g["busy"].mean(),
                         "sibling batch": g["sibling batch"].mean(),
                         "real (ms)": took * 1000,
                         "real / interpolated": took / np.mean([linear.mean[b] for b in g["size"]]),
                         "real / beside": took / g["beside"].mean()})
    return pd.DataFrame(rows)


SIBLING_BINS = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, np.inf]
SIBLING_LABELS = ["<= 1", *(f"{lo}-{hi}" for lo, hi in zip(SIBLING_BINS[1:-2], SIBLING_BINS[2:-1])), "> 256"]


def by_sibling_batch(batches: pd.DataFrame) -> pd.DataFrame:
    """Real over `beside` by the siblings' batch when each batch started, over all of `batches` (from
    `predicted`): bins (lo, hi] between powers of two, and "none" where no sibling worked."""
    bins = pd.cut(batches["sibling batch"], SIBLING_BINS, labels=SIBLING_LABELS)
    bins = bins.cat.add_categories("none").cat.reorder_categories(["none", *SIBLING_LABELS]).fillna("none")
    out = batches.groupby(bins.rename("sibling batch"), observed=True).agg(
        batches=("took", "size"), **{"siblings at work": ("busy", "mean"), "mean batch": ("size", "mean")},
        took=("took", "sum"), beside=("beside", "sum")).reset_index()
    out["real / beside"] = out.pop("took") / out.pop("beside")
    return out.astype({"sibling batch": str})


BUSY_BINS = [-np.inf, 0.0, 1 / 3 + 1e-9, 2 / 3 + 1e-9, 1 - 1e-9, 1.0]
BUSY_LABELS = ["none", "<= 1/3", "<= 2/3", "< 1", "all"]


def at_work_over_span(batches: pd.DataFrame, shares: dict[int, float]) -> np.ndarray:
    """Per batch (by position), the fraction of the rest of its device at work averaged over its run
    (each sibling slot's share times the part of the span it ran a batch), as `busy` is at its start."""
    out = np.zeros(len(batches))
    for _, on_device in batches.groupby("device"):
        spans = slot_spans(on_device)
        for row in on_device.itertuples():
            rest, length = 1.0 - shares[row.slot], row.t_end - row.t_start
            if rest <= 1e-9 or length <= 0:
                continue
            worked = 0.0
            for slot, span in spans.items():
                if slot == row.slot:
                    continue
                # A slot's batches do not overlap one another: those ending after the start and starting
                # before the end are the ones that ran during it.
                during = span[np.searchsorted(span[:, 1], row.t_start, side="right"):
                              np.searchsorted(span[:, 0], row.t_end, side="left")]
                overlap = np.minimum(during[:, 1], row.t_end) - np.maximum(during[:, 0], row.t_start)
                worked += shares[slot] * overlap.clip(0).sum() / length
            out[row.Index] = min(1.0, worked / rest)
    return out


def over_span(run: Path, gpu_type: str) -> pd.DataFrame:
    """`predicted`'s batches with the fraction of the rest of their device at work averaged over each one's
    run (`at work over span`) and what the share's profile charges at that fraction (`beside over span`)."""
    batches, profiles = predicted(run, gpu_type)
    at_work = at_work_over_span(batches, shares_of(batches))
    return batches.assign(**{"at work over span": at_work, "beside over span": charged(batches, profiles, at_work)})


def by_siblings_at_work(batches: pd.DataFrame) -> pd.DataFrame:
    """Real over `beside` by the fraction of the rest of the device at work when each batch started, and
    real over the charge at the fraction averaged over its run, over all of `batches` (from `over_span`)."""
    bins = pd.cut(batches["busy"], BUSY_BINS, labels=BUSY_LABELS).rename("siblings at work at start")
    out = batches.groupby(bins, observed=True).agg(
        batches=("took", "size"), **{"at work over span": ("at work over span", "mean")},
        took=("took", "sum"), beside=("beside", "sum"), over_span=("beside over span", "sum")).reset_index()
    out = out.astype({"siblings at work at start": str})
    every = {"siblings at work at start": "every batch", "batches": len(batches),
             "at work over span": batches["at work over span"].mean(), "took": batches["took"].sum(),
             "beside": batches["beside"].sum(), "over_span": batches["beside over span"].sum()}
    out = pd.concat([out, pd.DataFrame([every])], ignore_index=True)
    out["real / beside"] = out["took"] / out.pop("beside")
    out["real / beside over span"] = out.pop("took") / out.pop("over_span")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories holding batches.parquet")
    ap.add_argument("--gpu-type", default=None, help="the profiles' GPU type (default: each run's summary)")
    ap.add_argument("--by-sibling-batch", action="store_true",
                    help="real over beside for all the runs' batches by the siblings' batch, not per model")
    ap.add_argument("--by-siblings-at-work", action="store_true",
                    help="real over beside for all the runs' batches by the siblings at work when each started, "
                         "and over the charge by what they did during it")
    args = ap.parse_args(argv)
    if args.by_sibling_batch and args.by_siblings_at_work:
        print("error: give one of --by-sibling-batch and --by-siblings-at-work", file=sys.stderr)
        return 2
    if args.gpu_type is not None:
        check_gpu_type(args.gpu_type, "--gpu-type")
    out = []
    for run in args.runs:
        if not (run / "batches.parquet").exists():
            print(f"error: {run} has no batches.parquet; give run directories of real-GPU runs", file=sys.stderr)
            return 2
        gpu_type = args.gpu_type or run_gpu_type(run)
        if args.by_siblings_at_work:
            out.append(over_span(run, gpu_type))
        else:
            out.append(predicted(run, gpu_type)[0] if args.by_sibling_batch else table(run, gpu_type))
    result = pd.concat(out, ignore_index=True)
    if args.by_sibling_batch and not result.empty:
        result = by_sibling_batch(result)
    if args.by_siblings_at_work and not result.empty:
        result = by_siblings_at_work(result)
    if result.empty:
        print(f"error: no batch ran ok in {', '.join(map(str, args.runs))}; nothing to compare", file=sys.stderr)
        return 1
    print(result.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    return 0


if __name__ == "__main__":
    run_main(main)
