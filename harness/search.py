"""Capacity and fewest-GPU searches: real runs, probed until the answer is bracketed.

    python -m harness.search capacity    [overrides...] [--out DIR] [--target 0.99] [--tolerance 0.02]
    python -m harness.search fewest_gpus [overrides...] [--out DIR] [--target 0.99] [--max-gpus N]

    python -m harness.search capacity runtime=sim system=eager,symphony cluster=h200x1 duration_s=12
    python -m harness.search fewest_gpus runtime=sim system=symphony workload.rate=20000 --jobs 2

capacity: the highest offered rate at which SLO attainment >= target, found
the way MLPerf LoadGen's FindPeakPerformance finds peak performance: from the
configured rate, double while the probe passes (halve while it fails) until
one passes and one fails, then bisect until the bracket is within the
relative tolerance. The knob is workload.rate, or workload.rate_scale (a
multiplier of the trace's rate) for trace workloads: --start, --max-rate and
search.json's answer are then scales, and answer_offered_rate is the rate
(req/s) offered at the answer.

fewest_gpus: the smallest cluster.count that keeps attainment >= target at
the configured workload: from the configured count, halve while it passes
(double while it fails), then bisect between the largest failing and the
smallest passing count.

Doubling stops at 64x the start rate or 16x the start count (--max-rate,
--max-gpus): past that the answer is reported as a bound (status
lower_bound / none_passed), since a sim probe's cost grows with its rate and
GPUs. Both assume attainment does not fall as rate falls or GPUs grow; search.json
keeps every probe, so a breach of that assumption shows. Overrides are the
main job's (`runtime=sim system=symphony workload=bursty ...`; the runtime is
the main job's default unless set, and runtime=live probes real serving); sweep
overrides (`system=eager,symphony`, `system=glob(*)`) and the sweeper params
of an `experiment=` config run one search per combination, each in its own
directory <out>/<n>_<values>. Every probe is a complete run directory under
<search>/probes/, kept; <search>/search.json is the path of probes and
<search>/search_path.{png,pdf} its plot.

A probe that is no verdict stops its search: one cut short by Ctrl-C
(status interrupted, exit status 130) or one whose run broke -- a process
of the harness died, records were lost (status broken, exit status 3).
search.json then keeps what was found so far and names that probe in
`stopped_at`. A search's directory is its own while it runs (harness.rundir).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from harness import rundir
from harness.errors import ArgumentParser, HarnessError, exit_with
from workloads.config import TRACE_PROCESSES, is_finite_number

TARGET = 0.99
TOLERANCE = 0.02            # capacity: relative width of the final bracket
KINDS = ("capacity", "fewest_gpus")
MAX_RATE = 1e8              # the workload's own ceiling on workload.rate
MAX_HALVINGS = 12           # below start / 4096 a capacity search gives up: nothing passes
# Default reach of a search above its start: a sim probe costs time in proportion to its rate (and its
# GPUs), so the search reports "at least" or "more than" past these rather than run for hours.
RATE_REACH = 64
GPU_REACH = 16
SEARCH_TAG = "search:"      # an experiment tagged `search:<kind>` runs this search instead of a sweep


@dataclass
class Probe:
    value: float                    # the rate or GPU count tried
    attainment: float
    goodput: float = math.nan
    offered_rate: float = math.nan
    valid: bool = True
    run: str | None = None          # the probe's run directory, relative to the search's
    passed: bool = False

    def to_json(self) -> dict:
        return asdict(self)


ProbeFn = Callable[[float], Probe]


class _ProbeLimit(Exception):
    pass


class ProbeStopped(Exception):
    """A probe that is no verdict stops the search: it was interrupted (Ctrl-C), or something broke in its
    run. `status` (interrupted | broken) becomes the search's; `run` is its kept run directory, if any."""

    def __init__(self, status: str, value: float, reason: str, run: str | None = None):
        super().__init__(reason)
        self.status, self.value, self.reason, self.run = status, value, reason, run

    def to_json(self) -> dict:
        return {"value": self.value, "reason": self.reason, "run": self.run}


class _Trail:
    """Calls the probe function, judges each probe against the target and keeps the path."""

    def __init__(self, probe: ProbeFn, target: float, max_probes: int):
        self.probe, self.target, self.max_probes = probe, target, max_probes
        self.probes: list[Probe] = []

    def __call__(self, value: float) -> bool:
        if len(self.probes) >= self.max_probes:
            raise _ProbeLimit
        p = self.probe(value)
        p.passed = bool(p.attainment >= self.target)        # NaN (no request in the window) fails
        self.probes.append(p)
        return p.passed


# --- options: refused before anything is claimed or probed ------------------------------------------------

def positive(x: float) -> bool:
    """A finite number > 0 (`x <= 0` alone would let NaN through)."""
    return is_finite_number(x) and x > 0


def _whole(x: float) -> bool:
    return is_finite_number(x) and x == int(x)


def check_target(target: float) -> None:
    """HarnessError unless `target` is an SLO attainment a run can reach (--target of a search or a report)."""
    if not (is_finite_number(target) and 0 < target <= 1):
        raise HarnessError(f"--target {target:g} is no SLO attainment; give a fraction 0 < target <= 1, e.g. 0.99")


def check_options(kind: str, jobs: int = 1, target: float = TARGET, tolerance: float | None = None,
                  start: float | None = None, max_rate: float | None = None, max_gpus: int | None = None,
                  max_probes: int = 40) -> None:
    """HarnessError for options that make no search, or are not for this kind of search (they would be
    ignored). A start taken from the config is checked against the cap by find_capacity / find_fewest_gpus."""
    if kind not in KINDS:
        raise HarnessError(f"unknown search '{kind}'; choose one of: {', '.join(KINDS)}")
    check_target(target)
    if max_probes < 1:
        raise HarnessError(f"--max-probes {max_probes} leaves no probe to run; give 1 or more (default 40)")
    if jobs < 1:
        raise HarnessError(f"--jobs {jobs}: give the number of searches to run at once, 1 or more")
    ignored = {"capacity": {"--max-gpus": max_gpus}, "fewest_gpus": {"--max-rate": max_rate, "--tolerance": tolerance}}
    for option, value in ignored[kind].items():
        if value is not None:
            raise HarnessError(f"{option} does not apply to a {kind} search; drop it")
    if kind == "capacity":
        cap_option, cap = "--max-rate", max_rate
        bad = [(o, v) for o, v in (("--start", start), ("--max-rate", max_rate), ("--tolerance", tolerance))
               if v is not None and not positive(v)]
        need, configured = "a number > 0", "rate"
    else:
        cap_option, cap = "--max-gpus", max_gpus
        bad = [(o, v) for o, v in (("--start", start), ("--max-gpus", max_gpus)) if v is not None
               and not (_whole(v) and v >= 1)]
        need, configured = "a whole GPU count >= 1", "cluster.count"
    if bad:
        option, value = bad[0]
        hint = f" (leave --start out to start at the configured {configured})" if option == "--start" else ""
        raise HarnessError(f"{option} {value:g} is not {need}{hint}")
    if start is not None and cap is not None and start > cap:
        raise HarnessError(f"--start {start:g} is above {cap_option} {cap:g}; lower --start or raise {cap_option}")


def describe_answer(result: dict) -> str:
    """A search's answer with its unit: '12,345 req/s', '3 GPUs' or, where the search varied a trace's
    workload.rate_scale, 'rate_scale 2 (2,506 req/s offered)'; '-' where it found none."""
    answer = result.get("answer")
    if answer is None:
        return "-"
    if result["kind"] == "fewest_gpus":
        return f"{answer:,.6g} GPUs"
    if result.get("knob") != "workload.rate_scale":
        return f"{answer:,.6g} req/s"
    offered = result.get("answer_offered_rate")
    known = offered is not None and math.isfinite(offered)
    return f"rate_scale {answer:,.6g}" + (f" ({offered:,.6g} req/s offered)" if known else "")


def find_capacity(probe: ProbeFn, start: float, target: float = TARGET, tolerance: float = TOLERANCE,
                  max_probes: int = 40, max_rate: float | None = None) -> dict:
    """Highest passing rate: exponential bracket from `start`, then bisection to `tolerance` (relative).

    Doubling stops at `max_rate` (default RATE_REACH x start).
    """
    if not (positive(start) and positive(tolerance)):
        raise HarnessError(f"a capacity search needs a start rate > 0 and a tolerance > 0 (got {start}, {tolerance})")
    max_rate = min(start * RATE_REACH if max_rate is None else max_rate, MAX_RATE)
    if start > max_rate:        # (the start may be the configured rate) it would pass for an answer above the cap
        raise HarnessError(f"a capacity search cannot start at {start:g}, above its highest rate {max_rate:g}; "
                           "lower --start (or the configured rate) or raise --max-rate")
    trail = _Trail(probe, target, max_probes)
    lo = hi = None                      # highest passing, lowest failing
    stopped = None
    try:
        if trail(start):
            lo = rate = start
            while hi is None and rate * 2 <= max_rate:
                rate *= 2
                lo, hi = (rate, hi) if trail(rate) else (lo, rate)
        else:
            hi = rate = start
            while lo is None and rate / 2 >= start / 2 ** MAX_HALVINGS:
                rate /= 2
                lo, hi = (rate, hi) if trail(rate) else (lo, rate)
        while lo is not None and hi is not None and hi - lo > tolerance * lo:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if trail(mid) else (lo, mid)
    except _ProbeLimit:
        pass
    except ProbeStopped as exc:
        stopped = exc
    if lo is None:
        status = "none_passed"
    elif hi is None:
        status = "lower_bound"          # never failed up to max_rate (or the probe limit)
    else:
        status = "found" if hi - lo <= tolerance * lo else "probe_limit"
    # The answer is in the knob's unit (a trace's rate_scale is a multiplier): keep the req/s offered at it too.
    offered = next((p.offered_rate for p in trail.probes if p.value == lo), None)
    return _stopped({"kind": "capacity", "target": target, "tolerance": tolerance, "status": status,
                     "answer": lo, "answer_offered_rate": offered, "failed_at": hi,
                     "probes": [p.to_json() for p in trail.probes]}, stopped)


def find_fewest_gpus(probe: ProbeFn, start: int, target: float = TARGET, max_gpus: int | None = None,
                     max_probes: int = 40) -> dict:
    """Smallest passing GPU count: halve or double from `start` to a bracket, then binary search.

    Doubling stops at `max_gpus` (default GPU_REACH x start).
    """
    if not _whole(start):
        raise HarnessError(f"a fewest-GPU search starts at a whole GPU count, not {start:g}; "
                           "set cluster.count=<start> or --start")
    start = int(start)
    max_gpus = start * GPU_REACH if max_gpus is None else max_gpus
    if not 1 <= start <= max_gpus:
        raise HarnessError(f"a fewest-GPU search needs 1 <= start <= max GPUs (got start {start}, max {max_gpus}); "
                           "set cluster.count=<start> or --max-gpus")
    trail = _Trail(probe, target, max_probes)
    lo = hi = None                      # largest failing, smallest passing
    stopped = None
    try:
        if trail(start):
            hi = count = start
            while lo is None and count > 1:
                count //= 2
                lo, hi = (lo, count) if trail(count) else (count, hi)
        else:
            lo = count = start
            while hi is None and count < max_gpus:
                count = min(count * 2, max_gpus)
                lo, hi = (lo, count) if trail(count) else (count, hi)
        while lo is not None and hi is not None and hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if trail(mid) else (mid, hi)
    except _ProbeLimit:
        pass
    except ProbeStopped as exc:
        stopped = exc
    if hi is None:
        status = "none_passed"
    else:
        status = "found" if hi == 1 or (lo is not None and hi - lo == 1) else "probe_limit"
    return _stopped({"kind": "fewest_gpus", "target": target, "status": status, "answer": hi, "failed_at": lo,
                     "probes": [p.to_json() for p in trail.probes]}, stopped)


def _stopped(result: dict, stopped: ProbeStopped | None) -> dict:
    """A search stopped by a probe that is no verdict: what it found so far, the bracket unfinished."""
    if stopped is not None:
        result.update(status=stopped.status, stopped_at=stopped.to_json())
    return result


# --- real probes: compose the config like the main job, run it, read its summary -------------------------

def compose(overrides: list[str], hydra_node: bool = False):
    """The main job's config for `overrides` (Hydra's compose API); a bad override is a HarnessError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from harness.__main__ import CONF, one_line

    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return hydra_compose("config", overrides=overrides, return_hydra_config=hydra_node)
    except Exception as exc:  # any composition failure is the user's to fix
        raise HarnessError(one_line("\n".join(str(e) for e in (exc, exc.__cause__) if e is not None))) from None


def hydra_overrides(overrides: list[str]) -> list[str]:
    """The overrides as Hydra applies them; HarnessError for one that would silently change nothing.

    Hydra merges a dictionary given on the command line into the configured one, and closes every
    dictionary of the composed config to new keys: so `models={}` would keep every model, and
    `workload.mix={resnet50: 3}` would take a leading + to add models to the (empty) mix. A mix is
    written whole, so its plain form gets the +.
    """
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if re.fullmatch(r"\{\s*\}", value.strip()) and not key.startswith("~"):
            name = key.lstrip("+")
            raise HarnessError(f"{o} would change nothing: Hydra merges it into the configured {name}; "
                               f"remove entries with ~{name}.<key>")
        out.append("+" + o if key == "workload.mix" and value.lstrip().startswith("{") else o)
    return out


def plain_overrides(overrides: list[str], keep_hydra: bool = False) -> list[str]:
    """The overrides that set one value: not sweeps (a,b / glob(*) / range()), nor hydra.* settings unless kept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not keep_hydra:
        overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise HarnessError(f"cannot parse the overrides: {str(exc).splitlines()[0]}") from None
    return [o.input_line for o in parsed if not o.is_sweep_override()]


def expand(overrides: list[str]) -> list[tuple[list[str], dict]]:
    """One (overrides, swept values) per combination of the sweep overrides and the experiment's sweeper params.

    hydra.* overrides are dropped: a search is not a Hydra app (its output goes to --out).
    """
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from harness.__main__ import CONF

    overrides = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    params = compose(plain_overrides(overrides), hydra_node=True).hydra.sweeper.params or {}
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        try:
            every = parser.parse_overrides([f"{k}={v}" for k, v in params.items()] + overrides)
        except Exception as exc:
            raise HarnessError(f"cannot parse the overrides: {str(exc).splitlines()[0]}") from None
        choices: dict[str, list[str]] = {}          # key -> its values; a later override replaces an earlier one
        for o in every:
            key = o.get_key_element()
            choices[key] = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
    swept = [k for k, v in choices.items() if len(v) > 1]
    out = []
    for values in itertools.product(*choices.values()):
        combo = dict(zip(choices, values))
        out.append(([f"{k}={v}" for k, v in combo.items()], {k: combo[k] for k in swept}))
    return out


def knob_for(kind: str, cfg) -> str:
    if kind == "fewest_gpus":
        return "cluster.count"
    return "workload.rate_scale" if cfg.workload.process in TRACE_PROCESSES else "workload.rate"


STOPS = (signal.SIGINT, signal.SIGTERM)
_held: list[int] = []                           # stops that came between probes, not yet heard
_handlers: dict[int, object] = {}               # the handlers set aside while they are held


def _hold(signum, frame) -> None:
    _held.append(signum)


def _hear_stops(hear: bool) -> None:
    """Ctrl-C and SIGTERM reach a search only while a probe runs; in between they are held and heard when
    the next probe starts (or the search ends), so that the probe just measured is recorded first and the
    search's file says what it found. (A handler, not a signal mask: any thread may take a signal.)"""
    if threading.current_thread() is not threading.main_thread():
        return                                  # only the main thread sets handlers (and hears signals)
    if hear:
        for sig, handler in _handlers.items():
            signal.signal(sig, handler)
        _handlers.clear()
        if _held:
            _held.clear()
            raise KeyboardInterrupt
    else:
        for sig in STOPS:
            if signal.getsignal(sig) is signal.default_int_handler:   # (an ignored one stays ignored)
                _handlers[sig] = signal.signal(sig, _hold)


def real_probe(kind: str, overrides: list[str], out: Path, knob: str) -> ProbeFn:
    """Each call runs one probe through harness.run.execute into <out>/probes/<n>_<knob>=<value>/."""
    from harness.run import execute

    counter = itertools.count()

    def probe(value: float) -> Probe:
        text = str(int(value)) if kind == "fewest_gpus" else f"{value:.8g}"
        run_overrides = [*overrides, f"{knob}={text}"]
        run_dir = out / "probes" / f"{next(counter):02d}_{knob.rsplit('.', 1)[-1]}={text}"
        try:
            _hear_stops(True)
            summary = execute(compose(run_overrides), run_dir, run_overrides)
        except KeyboardInterrupt:               # the sim, or a live run before it served
            raise ProbeStopped("interrupted", float(text), rundir.abandon(run_dir)) from None
        finally:
            _hear_stops(False)
        run = run_dir.relative_to(out).as_posix()
        if summary["validity"]["interrupted"]:  # a live run cut short: its attainment is no verdict
            raise ProbeStopped("interrupted", float(text), "interrupted; its records are kept", run)
        broke = rundir.failures(summary)
        if broke:
            raise ProbeStopped("broken", float(text), "; ".join(broke), run)
        p = Probe(float(text), summary["slo_attainment"], summary["goodput"], summary["offered_rate"],
                  summary["validity"]["valid"], run)
        print(f"  {out.name}: {knob}={text} -> attainment {p.attainment:.2%}, goodput {p.goodput:,.1f} req/s",
              flush=True)
        return p

    return probe


def search(kind: str, overrides: list[str], out: Path, target: float = TARGET, tolerance: float | None = None,
           start: float | None = None, max_rate: float | None = None, max_gpus: int | None = None,
           max_probes: int = 40) -> dict:
    """One search with real runs; writes <out>/search.json and the plot of its path."""
    from harness.config import register

    register()
    cfg = compose(overrides)
    knob = knob_for(kind, cfg)
    # The configured value of the knob is where the search starts; the probes set it themselves.
    overrides = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != knob]
    rundir.claim(rundir.SEARCH, out)
    probe = real_probe(kind, overrides, out, knob)
    try:
        if kind == "capacity":
            configured = cfg.workload.rate_scale if knob.endswith("rate_scale") else cfg.workload.rate
            result = find_capacity(probe, float(configured if start is None else start), target,
                                   TOLERANCE if tolerance is None else tolerance, max_probes, max_rate)
        else:
            result = find_fewest_gpus(probe, cfg.cluster.count if start is None else start, target, max_gpus,
                                      max_probes)
        result = {"knob": knob, "system": cfg.system.name, "workload": cfg.workload.name,
                  "cluster": cfg.cluster.name, "gpus": cfg.cluster.count, "runtime": cfg.runtime.name,
                  "overrides": overrides, **result}
        write_search(result, out)
    finally:
        _hear_stops(True)                       # a stop that came after the last probe is heard now
    return result


def write_search(result: dict, out: Path) -> None:
    from harness.report import figures
    from harness.records import write_json

    write_json(result, out / "search.json")
    if result["probes"]:                    # a search stopped at its first probe has no path to draw
        fig = figures.search_paths([result], figures.styles([result["system"]]))
        figures.save(fig, out, "search_path")


def _label(values: dict) -> str:
    text = "_".join(str(v) for v in values.values()) or "search"
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", text)[:80]


def _search_one(job: tuple) -> dict:
    kind, overrides, out, kwargs = job
    try:
        return search(kind, overrides, out, **kwargs)
    except Exception as exc:  # one failing search (a bad system, a crash) must not stop the others
        result = {"kind": kind, "overrides": overrides, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                  "answer": None, "probes": []}
        out.mkdir(parents=True, exist_ok=True)
        (out / "search.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"error: search in {out.name} failed: {result['error']}", file=sys.stderr, flush=True)
        return result


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pooled_search(job: tuple) -> dict:
    """_search_one in a pool's worker, which hears Ctrl-C only while it searches (idle, it would die of it)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _search_one(job)
    finally:
        _ignore_sigint()


def search_all(kind: str, overrides: list[str], out: Path, jobs: int = 1, **kwargs) -> list[dict]:
    """One search per combination of the sweeps in `overrides` (and the experiment's sweeper params).

    An interrupted search stops those after it (KeyboardInterrupt when they run in parallel: each one
    running stops and writes what it found)."""
    check_options(kind, jobs, **kwargs)
    overrides = hydra_overrides(overrides)
    rundir.claim(rundir.SEARCH, out)
    combos = expand(overrides)
    if len(combos) == 1:
        dirs = [out]
    else:
        dirs = [out / f"{i}_{_label(values)}" for i, (_, values) in enumerate(combos)]
    jobs_args = [(kind, combo, d, kwargs) for (combo, _), d in zip(combos, dirs)]
    if jobs > 1 and len(jobs_args) > 1:
        with ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint) as pool:
            futures = [pool.submit(_pooled_search, j) for j in jobs_args]
            try:
                return [f.result() for f in futures]
            except KeyboardInterrupt:
                pool.shutdown(cancel_futures=True)
                raise
    if len(jobs_args) == 1:
        return [search(*jobs_args[0][:3], **kwargs)]       # a single search reports its own errors
    results = []
    for job in jobs_args:
        results.append(_search_one(job))
        if results[-1]["status"] == "interrupted":
            break
    return results


def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m harness.search", description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=KINDS)
    ap.add_argument("overrides", nargs="*", help="the main job's Hydra overrides, e.g. system=symphony workload=bursty")
    ap.add_argument("--out", type=Path,
                    help="output directory, new or empty (default results/searches/<time>_<pid>_<kind>)")
    ap.add_argument("--target", type=float, default=TARGET, help="SLO attainment a probe must reach (default 0.99)")
    ap.add_argument("--tolerance", type=float,
                    help=f"capacity: relative width of the final bracket, > 0 (default {TOLERANCE})")
    ap.add_argument("--start", type=float, help="first rate (rate_scale for trace workloads) > 0, or whole GPU "
                                                "count >= 1 (default: the configured one)")
    ap.add_argument("--max-rate", type=float, help=f"capacity: highest rate (rate_scale for trace workloads) to try "
                                                   f"(default {RATE_REACH} x start)")
    ap.add_argument("--max-gpus", type=int, help=f"fewest_gpus: largest count to try (default {GPU_REACH} x start)")
    ap.add_argument("--max-probes", type=int, default=40, help="probes per search at most, >= 1 (default 40)")
    ap.add_argument("--jobs", type=int, default=1, help="searches run in parallel (one per sweep combination)")
    args = ap.parse_intermixed_args(argv)       # overrides may follow the options, as they do for Hydra
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops a search as Ctrl-C does
    stamp = f"{datetime.now():%Y-%m-%d_%H-%M-%S-%f}_{os.getpid()}"     # searches started at once never share it
    out = args.out or Path("results") / "searches" / f"{stamp}_{args.kind}"
    try:
        results = search_all(args.kind, args.overrides, out, jobs=args.jobs, target=args.target,
                             tolerance=args.tolerance, start=args.start, max_rate=args.max_rate,
                             max_gpus=args.max_gpus,
                             max_probes=args.max_probes)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                   # between probes, or searches running in parallel
        print(f"interrupted; what was found so far is under {out}", file=sys.stderr)
        return rundir.INTERRUPTED
    for r in results:
        what = f"{r['system']} / {r['workload']} / {r['cluster']}" if "system" in r else " ".join(r["overrides"])
        print(f"{what}: {args.kind} {describe_answer(r)} ({r['status']}, {len(r['probes'])} probes)")
        if "stopped_at" in r:
            print(f"  stopped at {r['knob']}={r['stopped_at']['value']:g}: {r['stopped_at']['reason']}")
    print(f"results: {out}")
    statuses = {r["status"] for r in results}
    if "interrupted" in statuses:
        print(f"interrupted: the search stopped; what it found so far is in {out} (status interrupted)",
              file=sys.stderr)
        return rundir.INTERRUPTED
    if "broken" in statuses:
        print("error: a probe's run broke, so its search stopped (status broken); see its stopped_at",
              file=sys.stderr)
        return rundir.BROKE
    return 1 if "error" in statuses else 0


if __name__ == "__main__":
    exit_with(main)
