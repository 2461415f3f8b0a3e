"""Calibration: measure the live path's own delays on a host, so the sim charges the same ones.

    python -m harness.calibrate --out calibration/this-host.json [overrides...]
    python -m harness.calibrate --out calibration/this-load.json --from-run RUN_DIR [--base CALIBRATION]
    python -m harness runtime=sim runtime.calibration=calibration/this-host.json ...

A short live run (Clockwork on two emulated slots of a 2 ms sleep model,
Poisson 300 req/s: light enough that no request waits for long) measures,
from its records,

- request: the request's scheduled send -> the scheduler reads it (the load generator's lag behind its
  schedule, HTTP, the ingress, the hop to the scheduler), and the part of it up to the ingress's arrival
  stamp (`ingress`), from which the request's deadline counts: the hop from there to the scheduler is
  already spent when the policy first sees it. From the schedule, not the send: a request's latency counts
  from its scheduled time, and the sim's requests leave on it, so the lag is the sim's to charge too
  (on a loaded 16-core GPU host its p99 was 0.5-0.8 ms, its median 0.03-0.1);
- dispatch: the scheduler dispatches a batch to an idle slot -> the batch starts (the hop to the
  worker and back, as the scheduler sees it: the worker's start is its reply minus its execution);
- response: the batch ends -> the client has the answer (the hop back, the ingress, HTTP);
- exec (not a delay): each batch's execution over the median of its slot, model and size in the run,
  the spread of the host's execution (an emulated slot's sleep overshoot, a real GPU's jitter), which
  the sim draws each batch's time by: a policy that estimates from the times it measured (Clockwork's
  p99 of the last ten) plans above the profile by it. Also by that median's length (`exec_by_length`),
  since the spread is a larger share of a short batch than of a long one, and the sim draws a batch's
  factor from its length's;
- turnaround: a slot's hand-over from a batch that ended to the next one already waiting there, which
  the sim charges such a batch before it starts (a policy that plans batch after batch to the deadline's
  edge, Clockwork, pays it on each);

each as its distribution (percentiles 0..100), and writes them with the
host's description. Given `runtime.calibration`, the sim delays each
request's arrival, each batch's start and each answer by a draw from those
distributions (seeded by seeds.runtime): the spread matters as much as the
median to a policy that plans to the deadline's edge. One source of truth
instead of hand-set `request_delay_ms`/`response_delay_ms`; a policy that
plans with measured overheads reads them through the Cluster handle
(`cluster.overheads`: medians and p99s), in the sim and live alike.

The run is Clockwork's because it sends most batches to an idle slot and
some to a slot still busy with the one before (it plans 10 ms ahead), so
one run gives both the dispatch hop and the hand-over (some 20 a second
here); eager sends only to idle slots, and a calibration made with it has
no turnaround, which the sim then does not charge.

With `system=triton` it measures tritonserver's path instead (request: its
scheduled send -> Triton calls the model, for requests that found their model idle;
dispatch and response as above): a calibration per serving path.

The light run measures the path of an idle host. Under load the hops change:
on a 16-core H100 host at 9,000 req/s the dispatch hop was 0.08 ms, against
the 0.28 ms an idle H200 host's calibration measured, and a policy that
sends a slot's next batch only once the last has ended (Nexus, Shepherd)
idles the slot that long for every batch. `--from-run` measures a live run
already made instead (its host, at its load: run eager, or the system
itself, at the load to be simulated); `--base` supplies what the run does
not measure (a run that kept only batches.parquet gives the dispatch hop
alone, one that kept its slots' queues full no dispatch hop).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import ArgumentParser, HarnessError, exit_with
from harness.metrics import Window, in_window
from harness.records import check_writable_dir, write_json

ROOT = Path(__file__).resolve().parent.parent
RUN = ["runtime=live", "system=clockwork", "cluster=sleep1000", "cluster.count=2", "cluster.sleep.a_ms=0.1",
       "cluster.sleep.c_ms=2", "models=sleep10", "workload=poisson", "workload.rate=300", "duration_s=15",
       "warmup_s=3", "cooldown_s=1"]


PARTS = ("request", "ingress", "dispatch", "response")
# Not a delay: a batch's execution over the typical one of its slot, model and size in the run (a ratio). The
# spread matters to a policy that estimates from what it measured: Clockwork's p99 of the last ten rises
# with it, and past capacity that decides how much it serves. Optional: calibrations before it have none.
SPREAD = "exec"
MAX_SPREAD = 100.0
# The spread by how long a batch typically takes: on the H100's shares a batch's p99 was 1.13-1.15 x its typical
# time up to 2 ms, 1.04 x at 8-16 ms and 1.06 x at 16-32, and an emulated slot's sleep overshoots by about a fixed
# time, so one ratio over a run's batches of every length (or a light run's 2 ms ones) is too wide for the long
# batches and narrow for the short. Quantiles per bin of typical time (keys: the bin's upper bound in ms, "inf"
# for the last), for bins of MIN_SAMPLES batches or more; the sim draws a batch's factor from the first measured
# bin that reaches its typical time (else the last). Optional: calibrations before it have the pooled spread alone.
SPREAD_BY_LENGTH = "exec_by_length"
LENGTH_BINS_MS = (1, 2, 4, 8, 16, 32, 64, math.inf)
# Not a request's delay either: a slot's hand-over from a batch that ended to the next one already waiting
# there (the worker's reply, then its executor taking the next), in seconds. A policy that keeps work queued
# at its slots (Clockwork) plans each batch to start as the one before ends, so every hand-over moves all that
# follows later, and past capacity, with batches planned to end at their head's deadline, that decides how
# many meet it. Only a run whose batches queue at their slots measures it; without it the sim charges none.
TURNAROUND = "turnaround"
QUEUED_BY_S = 1e-3         # a batch sent this long before its slot's last batch ended was waiting there by then
MIN_PER_BATCH_KIND = 5     # batches of one slot, model and size, for their typical time
# A delay of the serving path beyond this is no measurement of a live path (a file edited by hand, or the
# wrong unit): the sim would hold every request that long, and at days per request it never ended.
MAX_DELAY_S = 60.0
MIN_SAMPLES = 50           # of each delay, for its percentiles


@dataclass(frozen=True)
class Overheads:
    """The serving path's delays (seconds): medians and p99s, and when measured their percentiles 0..100
    (`quantiles[part]`, for the sim to draw from)."""

    request_s: float = 0.0
    ingress_s: float = 0.0
    dispatch_s: float = 0.0
    response_s: float = 0.0
    request_p99_s: float = 0.0
    ingress_p99_s: float = 0.0
    dispatch_p99_s: float = 0.0
    response_p99_s: float = 0.0
    quantiles: dict = field(default_factory=dict, compare=False)
    measured: tuple = field(default=PARTS, compare=False)     # the parts measured (the rest from a base)

    def sampler(self, part: str, seed: int):
        """draw(n) -> n delays of `part`: from its measured distribution, else its fixed median."""
        q = self.quantiles.get(part)
        if not q:
            median = getattr(self, f"{part}_s")
            return lambda n: np.full(n, median)
        return _draws(q, np.random.default_rng([seed, PARTS.index(part)]))

    def spread(self, seed: int):
        """draw(n) -> n factors of a batch's execution over its typical time, as measured; None if not."""
        q = self.quantiles.get(SPREAD)
        return _draws(q, np.random.default_rng([seed, len(PARTS)])) if q else None

    def spread_by_length(self, seed: int) -> dict[float, object] | None:
        """{upper bound of a bin of typical execution time (seconds): draw(n) of its factors}, for the bins
        measured; None where the calibration has the pooled spread alone."""
        bins = self.quantiles.get(SPREAD_BY_LENGTH)
        if not bins:
            return None
        return {float(up) * 1e-3: _draws(q, np.random.default_rng([seed, len(PARTS) + 2, i]))
                for i, (up, q) in enumerate(sorted(bins.items(), key=lambda kv: float(kv[0])))}

    def turnaround(self, seed: int):
        """draw(n) -> n hand-overs (seconds) from a slot's batch to the next waiting there; None if not measured."""
        q = self.quantiles.get(TURNAROUND)
        return _draws(q, np.random.default_rng([seed, len(PARTS) + 1])) if q else None


def _draws(q: list, rng: np.random.Generator):
    grid = np.linspace(0, 100, len(q))
    return lambda n: np.interp(rng.uniform(0, 100, n), grid, q)


def load_calibration(path: str | os.PathLike) -> Overheads:
    def bad(why: str) -> HarnessError:
        return HarnessError(f"calibration file '{path}' {why}; make it again with python -m harness.calibrate "
                            f"--out {path}")

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HarnessError(f"calibration file '{path}' not found; make one: python -m harness.calibrate "
                           f"--out {path}") from None
    except (OSError, ValueError) as exc:
        raise bad(f"is unreadable ({exc})") from None
    for key in ("overheads", "quantiles"):
        if not isinstance(data, dict) or not isinstance(data.get(key), dict):
            raise bad(f"has no '{key}' table")
    try:
        fields = {k: float(v) for k, v in data["overheads"].items()}
        quantiles = {p: [float(x) for x in data["quantiles"][p]] for p in PARTS}
        for optional in (SPREAD, TURNAROUND):
            if data["quantiles"].get(optional) is not None:
                quantiles[optional] = [float(x) for x in data["quantiles"][optional]]
        by_length = data["quantiles"].get(SPREAD_BY_LENGTH)
        if by_length is not None:
            bounds = {_bin_label(up) for up in LENGTH_BINS_MS}
            if not isinstance(by_length, dict) or not set(by_length) <= bounds:
                raise bad(f"gives the spread by length for bins {sorted(by_length)[:4]}...; they must be among "
                          f"{sorted(bounds, key=float)}")
            quantiles[SPREAD_BY_LENGTH] = {up: [float(x) for x in q] for up, q in by_length.items()}
        overheads = Overheads(**fields, quantiles=quantiles)
    except KeyError as exc:
        raise bad(f"has no quantiles of the {exc} delay") from None
    except (ValueError, TypeError) as exc:
        raise bad(f"holds something other than delays in seconds ({exc})") from None
    for name, value in fields.items():
        if not 0 <= value <= MAX_DELAY_S:
            raise bad(f"gives {name} = {value}, not a delay of 0 to {MAX_DELAY_S:g} s")
    spreads = {SPREAD: quantiles[SPREAD]} if SPREAD in quantiles else {}
    spreads.update({f"{SPREAD_BY_LENGTH} up to {up} ms": q for up, q in quantiles.get(SPREAD_BY_LENGTH, {}).items()})
    delays = {part: q for part, q in quantiles.items() if part not in (SPREAD, SPREAD_BY_LENGTH)}
    for name, q in spreads.items():
        if not _rising(q, 0, MAX_SPREAD) or min(q) <= 0:
            raise bad(f"gives the execution spread's quantiles ({name}) as {q[:3]}...: they must be "
                      f"non-decreasing factors above 0 and up to {MAX_SPREAD:g}")
    for part, q in delays.items():
        if not _rising(q, 0, MAX_DELAY_S):
            raise bad(f"gives the {part} delay's quantiles as {q[:3]}...: they must be non-decreasing delays of "
                      f"0 to {MAX_DELAY_S:g} s")
    return overheads


def _rising(q: list, low: float, high: float) -> bool:
    """Quantiles: some, non-decreasing, each within [low, high]."""
    return bool(q) and all(low <= x <= high for x in q) and all(a <= b for a, b in zip(q, q[1:]))


def measure(run_dir: Path, base: Overheads | None = None) -> Overheads:
    """The delays from a live run's records (requests, server_requests, batches), over its measurement
    window where its summary gives one: the warm-up's first requests meet cold paths (a connection, a
    model's first batch) whose tenths of a second would otherwise be the distribution's top quantile, and
    the sim, drawing between the p99 and that top, would charge 1% of its requests up to as much.

    A run that kept only its batches (no requests.parquet) gives the dispatch hop alone, and one that kept
    its slots' queues full (Clockwork past capacity) too few dispatches to an idle slot for it: what a run
    does not measure comes from `base` (HarnessError without one); `measured` names what it did."""
    b = pd.read_parquet(run_dir / "batches.parquet").sort_values(["slot", "t_dispatch"])
    # A batch dispatched to an idle slot: its slot's previous batch had ended (else it queued there).
    previous_end = b.groupby("slot")["t_end"].shift()
    idle = b[(b["status"] == "ok") & ~(previous_end > b["t_dispatch"])]
    summary = run_dir / "summary.json"
    window = Window(*json.loads(summary.read_text())["window_s"]) if summary.exists() else None
    if window is not None:
        idle = idle[(idle["t_dispatch"] >= window.start) & (idle["t_dispatch"] < window.end)]
    parts = {"dispatch": idle["t_start"] - idle["t_dispatch"]}
    if (run_dir / "requests.parquet").exists():
        parts.update(_request_path(run_dir, b, window))
    elif base is None:
        raise HarnessError(f"{run_dir} holds no requests.parquet, so only its dispatch hop can be measured; give "
                           "--base CALIBRATION for the request and response delays")
    spread, typical = _spread(b, window)
    optional = {SPREAD: spread, TURNAROUND: _turnaround(b, previous_end, window)}    # None where not measured
    few = {name: len(v.dropna()) for name, v in parts.items() if len(v.dropna()) < MIN_SAMPLES}
    if few and base is not None and (len(few) < len(parts) or spread is not None):
        parts = {name: v for name, v in parts.items() if name not in few}
        few = {}
    if few == {"dispatch": few.get("dispatch")}:
        raise HarnessError(f"the run in {run_dir} sent only {few['dispatch']} batches to an idle slot, too few to "
                           f"measure the dispatch hop ({MIN_SAMPLES} needed): a system that keeps work queued at its "
                           "slots (Clockwork, Triton past capacity) measures none; give --base CALIBRATION for it, "
                           "or calibrate from another system's run at this load")
    if few:
        raise HarnessError(f"the run in {run_dir} served too few requests to measure "
                           f"({', '.join(f'{k}: {n}' for k, n in few.items())}; {MIN_SAMPLES} needed); see its summary")
    out, quantiles = {}, {}
    for name, values in optional.items():
        if values is not None:
            quantiles[name] = np.percentile(values, np.arange(101)).tolist()
        elif base is not None and base.quantiles.get(name):
            quantiles[name] = list(base.quantiles[name])
    if spread is not None:
        quantiles[SPREAD_BY_LENGTH] = _by_length(spread, typical)
    elif base is not None and base.quantiles.get(SPREAD_BY_LENGTH):
        quantiles[SPREAD_BY_LENGTH] = dict(base.quantiles[SPREAD_BY_LENGTH])
    for name in PARTS:
        if name not in parts:          # from the base calibration, as it measured them
            out[f"{name}_s"], out[f"{name}_p99_s"] = getattr(base, f"{name}_s"), getattr(base, f"{name}_p99_s")
            if name in base.quantiles:
                quantiles[name] = list(base.quantiles[name])
            continue
        v = np.clip(parts[name].dropna().to_numpy(), 0, None)
        out[f"{name}_s"] = float(np.median(v))
        out[f"{name}_p99_s"] = float(np.percentile(v, 99))
        quantiles[name] = np.percentile(v, np.arange(101)).tolist()
    return Overheads(**out, quantiles=quantiles,
                     measured=tuple(p for p in PARTS if p in parts)
                     + tuple(name for name, values in optional.items() if values is not None))


def _spread(b: pd.DataFrame, window: Window | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(each ok batch's execution over the median of its slot, model and size, that median in seconds), of
    those run at least MIN_PER_BATCH_KIND times in the window; (None, None) where fewer than MIN_SAMPLES count."""
    ok = b[b["status"] == "ok"]
    if window is not None:
        ok = ok[(ok["t_dispatch"] >= window.start) & (ok["t_dispatch"] < window.end)]
    took = ok["t_end"] - ok["t_start"]
    kind = [ok["slot"], ok["model"], ok["size"]]
    typical = took.groupby(kind).transform("median")
    count = took.groupby(kind).transform("size")
    counted = (count >= MIN_PER_BATCH_KIND) & (typical > 0) & took.notna()
    if counted.sum() < MIN_SAMPLES:
        return None, None
    return (took / typical)[counted].to_numpy(), typical[counted].to_numpy()


def _bin_label(up_ms: float) -> str:
    return "inf" if math.isinf(up_ms) else f"{up_ms:g}"


def _by_length(ratio: np.ndarray, typical: np.ndarray) -> dict[str, list]:
    """The spread's quantiles per bin of typical time (LENGTH_BINS_MS) holding MIN_SAMPLES batches or more."""
    upper = np.array(LENGTH_BINS_MS) * 1e-3
    which = np.searchsorted(upper, typical, side="left")        # the first bin whose upper bound reaches it
    return {_bin_label(LENGTH_BINS_MS[i]): np.percentile(ratio[which == i], np.arange(101)).tolist()
            for i in range(len(upper)) if (which == i).sum() >= MIN_SAMPLES}


def _turnaround(b: pd.DataFrame, previous_end: pd.Series, window: Window | None) -> np.ndarray | None:
    """Each ok batch's start after the end of its slot's batch before it (ok too), for the batches sent
    QUEUED_BY_S or more before that one ended (so waiting at the slot when it did); None where fewer than
    MIN_SAMPLES. `b` in dispatch order per slot, `previous_end` the end of the batch before each on its slot.
    A live batch's end is when its reply reached the scheduler and its start that less the execution the
    worker measured, so the two replies' hops differ by a little either way: a hand-over read below 0 is 0."""
    previous_ok = b.groupby("slot")["status"].shift() == "ok"
    queued = (b["status"] == "ok") & previous_ok & (previous_end - b["t_dispatch"] >= QUEUED_BY_S)
    if window is not None:
        queued &= (b["t_dispatch"] >= window.start) & (b["t_dispatch"] < window.end)
    handover = (b["t_start"] - previous_end)[queued].clip(lower=0).to_numpy()
    return handover if len(handover) >= MIN_SAMPLES else None


def _request_path(run_dir: Path, b: pd.DataFrame, window: Window | None) -> dict[str, pd.Series]:
    """The request, ingress and response delays of the run's requests served ok (in its window); the first two
    from each request's scheduled send."""
    r = pd.read_parquet(run_dir / "requests.parquet")
    ok = r[r["status"] == "ok"].merge(
        b[["id", "t_dispatch", "t_end", "size"]].rename(columns={"id": "batch_id"}), on="batch_id")
    if window is not None:
        ok = in_window(ok, window)
    arrivals = run_dir / "server_requests.parquet"
    if arrivals.exists():
        seen = pd.read_parquet(arrivals, columns=["id", "t_arrival", "t_scheduler"])
        ok = ok.merge(seen, on="id")
        request, ingress = ok["t_scheduler"] - ok["t_sched"], ok["t_arrival"] - ok["t_sched"]
    else:
        # tritonserver reports no arrivals. A request sent while no batch of its model was running went
        # out alone at once (no queue delay), so Triton calling the model (its batch's dispatch) ends its
        # way in: HTTP, tritonserver, the Python backend stub and the forwarding socket. The deadline is the
        # client's (Triton plans with none), so the ingress part is the same.
        request = ingress = _alone(ok, b)
    return {"request": request, "ingress": ingress, "response": ok["t_done"] - ok["t_end"]}


def _alone(ok: pd.DataFrame, batches: pd.DataFrame) -> pd.Series:
    """t_dispatch - t_sched of the requests served in a batch of one, sent when no batch of their model
    was running (the latest end of the model's batches dispatched before the send had passed)."""
    ran = batches[batches["status"] == "ok"].sort_values("t_dispatch")
    ran = ran.assign(ended=ran.groupby("model")["t_end"].cummax())[["model", "t_dispatch", "ended"]]
    sent = ok[ok["size"] == 1].sort_values("t_sent")
    before = pd.merge_asof(sent, ran.rename(columns={"t_dispatch": "t_before"}), left_on="t_sent",
                           right_on="t_before", by="model", allow_exact_matches=False)
    alone = before[before["ended"].isna() | (before["ended"] < before["t_sent"])]
    return alone["t_dispatch"] - alone["t_sched"]


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m harness.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="the calibration file to write (JSON)")
    ap.add_argument("--from-run", type=Path, metavar="RUN_DIR",
                    help="measure this live run's records instead of making a light calibration run: the delays "
                         "of its host at its load")
    ap.add_argument("--base", type=Path, metavar="CALIBRATION",
                    help="with --from-run: the delays the run does not measure (all but the dispatch hop where it "
                         "kept only its batches; the hop where its slots' queues stayed full) from this calibration")
    args, overrides = ap.parse_known_args(argv)
    if args.out.is_dir():
        print(f"error: --out {args.out} is a directory; give a file name, e.g. {args.out}/calibration.json",
              file=sys.stderr)
        return 2
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        print(f"error: unknown option {unknown[0]}; the calibration takes --out, --from-run, --base and key=value "
              "overrides of its run", file=sys.stderr)
        return 2
    if args.from_run is None and args.base is not None:
        print("error: --base completes a run's records (--from-run RUN_DIR); a calibration run measures every "
              "delay itself", file=sys.stderr)
        return 2
    if args.from_run is not None and overrides:
        print(f"error: {overrides[0]} overrides a calibration run, but --from-run measures a run already made; "
              "drop one of them", file=sys.stderr)
        return 2
    try:                               # before the run: a path that cannot be written would lose what it measured
        check_writable_dir(args.out.parent)
    except OSError as exc:
        print(f"error: cannot write --out {args.out} ({exc.strerror}); give a path in a writable directory",
              file=sys.stderr)
        return 2
    try:
        if args.from_run is not None:
            doc = from_run(args.from_run, args.base)
        else:
            with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
                run_dir = Path(tmp) / "run"
                run = subprocess.run([sys.executable, "-m", "harness", *RUN, *overrides, f"hydra.run.dir={run_dir}"],
                                     cwd=ROOT, capture_output=True, text=True)
                if run.returncode != 0:
                    raise HarnessError(f"the calibration run failed: {run.stderr.strip().splitlines()[-1:]}")
                overheads, summary = _measure_run(run_dir, None, hint="drop the runtime override")
            host = {"name": platform.node(), "cores": os.cpu_count(), "machine": platform.machine(),
                    "python": platform.python_version()}
            doc = _document(overheads, host, RUN + overrides, summary)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        write_json(doc, args.out)
    except OSError as exc:             # it became unwritable during the run: the measurement goes to stdout
        print(json.dumps(doc, indent=2))
        print(f"error: cannot write --out {args.out} ({exc.strerror}); the calibration is printed above: save it "
              "to a file", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {describe(doc)}")
    return 0


def from_run(run_dir: Path, base_path: Path | None = None) -> dict:
    """The calibration of a live run already made (its host at its load), what it does not measure from the
    calibration at `base_path`; HarnessError naming what is wrong."""
    base = load_calibration(base_path) if base_path is not None else None
    overheads, summary = _measure_run(run_dir, base)
    provenance = summary.get("provenance", {})
    made = {"from_run": str(run_dir), "overrides": provenance.get("overrides"),
            "offered_rate": summary.get("offered_rate")}
    if base is not None:
        made["base"] = str(base_path)
        made["from_base"] = [p for p in (*PARTS, SPREAD, TURNAROUND)
                             if p not in overheads.measured and p in overheads.quantiles]
    return _document(overheads, {"name": provenance.get("host")}, made, summary)


def _document(overheads: Overheads, host: dict, made, summary: dict) -> dict:
    """A calibration file's content."""
    medians = {k: v for k, v in asdict(overheads).items() if k not in ("quantiles", "measured")}
    return {"overheads": medians, "quantiles": overheads.quantiles, "host": host, "run": made,
            "send_lag_p99_ms": summary.get("send_lag_p99_ms"), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def describe(doc: dict) -> str:
    """A calibration's medians and p99s (and its spread, and what came from a base) in a line."""
    ms = {k: f"{v * 1e3:.3f}" for k, v in doc["overheads"].items()}
    spread, handover = doc["quantiles"].get(SPREAD), doc["quantiles"].get(TURNAROUND)
    by_length = doc["quantiles"].get(SPREAD_BY_LENGTH) or {}
    from_base = doc["run"].get("from_base") if isinstance(doc["run"], dict) else None
    return (f"request {ms['request_s']} ms (p99 {ms['request_p99_s']}), dispatch {ms['dispatch_s']} ms (p99 "
            f"{ms['dispatch_p99_s']}), response {ms['response_s']} ms (p99 {ms['response_p99_s']})"
            + (f", execution p99 x{spread[99]:.3f} its typical time" if spread else "")
            + (" (by that time: " + ", ".join(f"up to {up} ms x{q[99]:.3f}" for up, q in by_length.items()) + ")"
               if len(by_length) > 1 else "")
            + (f", a slot's turnaround to a waiting batch {handover[50] * 1e3:.3f} ms (p99 {handover[99] * 1e3:.3f})"
               if handover else "")
            + (f"; from the base: {', '.join(from_base)}" if from_base else ""))


def _measure_run(run_dir: Path, base: Overheads | None, hint: str = "give a run made with runtime=live"):
    """(its overheads, its summary) of a finished live run; HarnessError naming what is wrong."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        raise HarnessError(f"{run_dir} holds no summary.json: give the directory of a finished run") from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"{run_dir}/summary.json is unreadable ({exc})") from None
    if summary.get("runtime") != "live":
        raise HarnessError(f"the calibration measures the live path, but the run in {run_dir} was "
                           f"{summary.get('runtime')}; {hint}")
    if not (run_dir / "batches.parquet").exists():
        raise HarnessError(f"{run_dir} holds no batches.parquet: give the directory of a run that kept its records")
    return measure(run_dir, base), summary


if __name__ == "__main__":
    exit_with(main)
