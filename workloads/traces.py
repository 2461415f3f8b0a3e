"""Trace replay: Azure Functions 2019 per-minute counts and per-invocation timestamps.

Readers:
- MAF (Azure Functions 2019 invocation counts): header
  HashOwner,HashApp,HashFunction,Trigger,1,2,...,N with one row per function
  and one count per window. Each (function, window) becomes a cell of rate
  count * rate_scale / trace_window_s with Gamma(trace_cv) arrivals inside,
  as AlpaServe replays it (but started in steady state, see arrivals.py).
- Timestamps (Azure Functions 2021, Azure LLM inference traces): one row per
  invocation with a time column and optionally a function column. Numeric
  times are in workload.trace_unit (s, ms or us); times that cannot be in
  that unit (after the year 5000, or, with the unit unset, whole numbers
  spaced like milliseconds) are refused rather than replayed 1000x too slow.

Every data row must have as many fields as the header (quoted fields are
read as CSV quotes them), or the trace is refused naming the row.

Functions are mapped to models by a weighted round robin (plain round robin
with an empty mix) over the functions active in the selected span, after a
shuffle by the mapping seed.

The shipped samples in workloads/data/ are synthetic, made by `write_samples`
(python -c "from workloads.traces import write_samples; write_samples()")
with the arguments in MAF_SAMPLE and TIMESTAMPS_SAMPLE; the real traces are
not redistributed.
"""

import csv
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from workloads.arrivals import cell_arrivals, check_schedule_size

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "data"

MAF_META_COLUMNS = ("HashOwner", "HashApp", "HashFunction", "Trigger")
TIME_COLUMNS = ("timestamp", "end_timestamp", "TIMESTAMP", "time", "arrival_time")
FUNCTION_COLUMNS = ("func", "function", "app", "HashFunction")

# What workload.trace should point at, per process (for error messages).
TRACE_HINTS = {
    "maf_trace": "<path to an Azure Functions 2019 per-minute CSV>",
    "timestamp_trace": "<path to a per-invocation timestamp CSV>",
}

TRACE_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}    # workload.trace_unit -> seconds
# Unix time of the year 5138: a time beyond it is in a smaller unit than assumed, and
# times of one trace further apart than this (over 3000 years) cannot all be right.
LATEST_TIME_S = 1e11
MAX_COUNT = np.iinfo(np.int64).max  # a MAF count must fit the int64 the counts are read as

MAF_SAMPLE = {"n_functions": 12, "n_minutes": 60, "seed": 2019}
TIMESTAMPS_SAMPLE = {"n_invocations": 6000, "span_s": 120.0, "seed": 2021}


def resolve_trace_path(trace: str, hint: str) -> Path:
    """The trace file; a relative path is tried in the current directory, then the repository root."""
    path = Path(trace).expanduser()
    candidates = [path] if path.is_absolute() else [path, REPO_ROOT / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if any(c.is_dir() for c in candidates):
        raise HarnessError(f"trace file {trace!r} is a directory, not a file; set workload.trace={hint} "
                           "(a CSV file, e.g. one inside that directory)")
    raise HarnessError(f"trace file {trace!r} not found; set workload.trace={hint}")


def round_robin(weights: np.ndarray, n: int) -> np.ndarray:
    """Model index for each of n turns, shares proportional to weights.

    Model m's k-th turn sits at (k + 0.5) / w_m and turns are taken in that
    order, so equal weights give exactly 0, 1, ..., M-1, 0, 1, ...
    """
    models = np.flatnonzero(weights > 0)
    w = weights[models]
    # Enough turns per model: the n-th turn lies below n + M/2.
    turns = np.ceil(n * w).astype(np.int64) + len(weights)
    k = np.concatenate([np.arange(c) for c in turns])
    position = (k + 0.5) / np.repeat(w, turns)
    return np.repeat(models, turns)[np.argsort(position, kind="stable")[:n]]


def _map_functions(n_functions: int, weights: np.ndarray, mapping_rng: np.random.Generator) -> np.ndarray:
    """Model index per function: function i takes turn perm[i] of the round robin."""
    return round_robin(weights, n_functions)[mapping_rng.permutation(n_functions)]


def _read_header(path: Path, name: str) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError:
        raise HarnessError(f"trace file {name!r} is not UTF-8 text; point workload.trace at a CSV file") from None
    if not header:
        raise HarnessError(f"trace file {name!r} is empty; point workload.trace at a CSV with a header row")
    return [h.strip() for h in header]


def _data_rows(path: Path, name: str, width: int):
    """(line number, fields) of each non-blank data row; header = line 1.

    The fast parsers (np.loadtxt, pandas) skip blank lines and report no
    reliable line numbers, so a bad file is re-read with this to say where.
    Raises at the first row whose field count differs from the header's.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            if not row:
                continue
            if len(row) != width:
                raise HarnessError(
                    f"trace file {name!r} line {reader.line_num} has {len(row)} fields but the header has {width}; "
                    "fix or remove that row"
                )
            yield reader.line_num, row


def _check_widths(path: Path, name: str, width: int) -> None:
    """Raise at the first data row whose field count differs from the header's: the fast readers below
    would drop a wider row's extra fields without a word."""
    for _ in _data_rows(path, name, width):
        pass


def _unreadable(name: str, error: Exception, expected: str) -> HarnessError:
    reason = (str(error).splitlines() or [type(error).__name__])[0]
    return HarnessError(f"trace file {name!r} could not be read ({reason}); check it is {expected}")


# --- Azure Functions 2019 per-minute counts ------------------------------------------


def _maf_count_columns(header: list[str], name: str) -> list[int]:
    """Positions of the count columns '1'..'N', after checking the header."""
    missing = [c for c in MAF_META_COLUMNS if c not in header]
    counts = [i for i, h in enumerate(header) if h.isdecimal()]
    if not counts:
        missing.append("1")
    if missing:
        raise HarnessError(
            f"trace file {name!r} lacks column(s) {', '.join(repr(c) for c in missing)}; "
            "expected the Azure Functions 2019 header HashOwner,HashApp,HashFunction,Trigger,1,2,...,N"
        )
    if [int(header[i]) for i in counts] != list(range(1, len(counts) + 1)):
        raise HarnessError(
            f"trace file {name!r} has count columns {header[counts[0]]}..{header[counts[-1]]} "
            "not numbered 1..N in order; fix the header"
        )
    return counts


def _read_maf_counts(path: Path, name: str, header: list[str], columns: list[int]) -> np.ndarray:
    """Counts (functions x selected windows) from the given column positions."""
    _check_widths(path, name, len(header))
    try:
        # pandas warns (RuntimeWarning) before refusing a count like 1e30 as int64; the
        # refusal is reported below naming the row, so the warning would only add noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            counts = pd.read_csv(
                path, header=None, skiprows=1, usecols=columns, dtype=np.int64, encoding="utf-8-sig"
            ).to_numpy()
        if (counts >= 0).all():
            return counts
        error = ValueError("a negative count")
    except pd.errors.EmptyDataError:  # a header and no function
        return np.zeros((0, len(columns)), dtype=np.int64)
    except (ValueError, OverflowError) as e:  # OverflowError: a count beyond int64
        error = e
    for line, row in _data_rows(path, name, len(header)):
        for c in columns:
            count = row[c].strip()
            problem = ("is not a non-negative integer" if not count.isdecimal()
                       else f"is too large (over {MAX_COUNT})" if int(count) > MAX_COUNT else None)
            if problem:
                raise HarnessError(
                    f"trace file {name!r} line {line}: count {row[c]!r} in column {header[c]!r} "
                    f"{problem}; fix or remove that row"
                )
    raise _unreadable(name, error, "an Azure Functions 2019 per-minute count CSV")


def maf_arrivals(cfg, weights, duration, rng, mapping_rng) -> tuple[np.ndarray, np.ndarray]:
    """(model index, time) of the arrivals replayed from a MAF count trace, unsorted."""
    path = resolve_trace_path(cfg.trace, TRACE_HINTS["maf_trace"])
    name = cfg.trace
    header = _read_header(path, name)
    columns = _maf_count_columns(header, name)
    window = cfg.trace_window_s
    lo = cfg.trace_start_s
    hi = lo + duration * cfg.time_scale
    first, stop = int(lo // window), min(len(columns), int(np.ceil(hi / window)))
    if first >= stop:
        end = len(columns) * window
        raise HarnessError(
            f"workload.trace_start_s={lo:g} is past the end of trace file {name!r} ({end:g} s); "
            f"set workload.trace_start_s below {end:g}"
        )
    counts = _read_maf_counts(path, name, header, columns[first:stop])
    active = (counts > 0).any(axis=1)  # not sum > 0: a sum of huge counts can overflow int64
    if not active.any():
        raise HarnessError(
            f"trace file {name!r} has no invocations in trace seconds [{lo:g}, {hi:g}); "
            "change workload.trace_start_s or workload.time_scale to select a busier span"
        )
    counts = counts[active]
    model_of_function = _map_functions(len(counts), weights, mapping_rng)

    # Each window clipped to the selected span, in trace seconds.
    index = np.arange(first, stop)
    w_lo = np.maximum(index * window, lo)
    w_hi = np.minimum((index + 1) * window, hi)
    # Expected arrivals, summed as floats (int64 could overflow), before any is drawn.
    expected = counts.sum(axis=0, dtype=float) @ ((w_hi - w_lo) / window) * cfg.rate_scale
    check_schedule_size(expected, f"requests from trace file {name!r}", "lower workload.rate_scale or duration_s")
    function, win = np.nonzero(counts)
    starts = (w_lo[win] - lo) / cfg.time_scale
    spans = (w_hi[win] - w_lo[win]) / cfg.time_scale
    rates = counts[function, win] * cfg.rate_scale / window * cfg.time_scale  # per schedule second
    cell, t = cell_arrivals(rng, starts, spans, rates, cfg.trace_cv)
    keep = t < duration
    return model_of_function[function[cell]][keep], t[keep]


# --- per-invocation timestamps --------------------------------------------------------


def _where(path: Path, name: str, width: int, index: int) -> str:
    """'line N' of data row `index` (0-based, blank lines skipped)."""
    for i, (line, _) in enumerate(_data_rows(path, name, width)):
        if i == index:
            return f"line {line}"
    return f"data row {index + 1}"


def _raise_at_row(path: Path, name: str, width: int, index: int, problem: str):
    """Raise for data row `index`, naming its line."""
    raise HarnessError(f"trace file {name!r} {_where(path, name, width, index)}: {problem}; fix or remove that row")


def _seconds(
    path: Path, name: str, header: list[str], values: pd.Series, is_time: bool, unit: str | None
) -> np.ndarray:
    """A column as seconds: numbers in `unit` (None: seconds); for the time
    column (`is_time`) whose first value is not a number, ISO datetimes as
    seconds since the first row."""
    column = values.name
    try:
        float(values.iloc[0])
        numeric = True
    except ValueError:
        numeric = not is_time
    if numeric:
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(numbers))  # also catches 'nan' and 'inf'
        what = f"is not a number of {unit or 's'}"
        if not bad.size:
            # Too large even in the smallest unit: no workload.trace_unit can help, so name the row.
            bad = np.flatnonzero(np.abs(numbers) * min(TRACE_UNITS.values()) >= LATEST_TIME_S)
            what = f"is impossible in every unit ({', '.join(TRACE_UNITS)}): over 3000 years even in us"
        if not bad.size and is_time:
            _check_unit(numbers, unit, name, column)
        seconds = numbers * TRACE_UNITS[unit or "s"]
    else:
        stamps = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy()
        bad = np.flatnonzero(np.isnan(seconds))
        what = "is neither seconds nor an ISO datetime"
    if bad.size:
        _raise_at_row(path, name, len(header), bad[0], f"{column} {values.iloc[bad[0]]!r} {what}")
    return seconds


def _check_unit(times: np.ndarray, unit: str | None, name: str, column: str) -> None:
    """Refuse numeric times that cannot be in `unit` (None: seconds, not set explicitly)."""
    seconds = times * TRACE_UNITS[unit or "s"]
    if seconds.max() >= LATEST_TIME_S:
        # Found: _seconds refused times too large in every unit before calling this.
        smaller = next(u for u, scale in TRACE_UNITS.items() if times.max() * scale < LATEST_TIME_S)
        raise HarnessError(
            f"trace file {name!r}: {column} {times.max():.0f} in {unit or 's'} is after the year 5000; "
            f"if the times are in {smaller}, set workload.trace_unit={smaller}"
        )
    gap = np.median(np.diff(np.sort(times))) if len(times) > 1 else 0.0
    if unit is None and (times == np.round(times)).all() and gap >= 2:
        raise HarnessError(
            f"trace file {name!r}: every {column} is a whole number, {gap:g} apart at the median, as "
            "millisecond times are; set workload.trace_unit=ms (or workload.trace_unit=s if they are seconds)"
        )


def _read_timestamps(path: Path, name: str, unit: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(start time in seconds, function key or None) per invocation, in file order."""
    header = _read_header(path, name)
    time_col = next((c for c in TIME_COLUMNS if c in header), None)
    if time_col is None:
        raise HarnessError(
            f"trace file {name!r} has no timestamp column; "
            f"name its arrival-time column one of {', '.join(TIME_COLUMNS)}"
        )
    func_col = next((c for c in FUNCTION_COLUMNS if c in header), None)
    # Azure Functions 2021 stamps the end of each invocation; its start is end - duration.
    dur_col = "duration" if time_col == "end_timestamp" and "duration" in header else None
    wanted = [c for c in (time_col, func_col, dur_col) if c]
    _check_widths(path, name, len(header))
    try:
        # names=header: the stripped names, as the columns were looked up.
        table = pd.read_csv(
            path, header=0, names=header, usecols=wanted, dtype=str, keep_default_na=False, encoding="utf-8-sig"
        )
    except ValueError as e:  # pandas' ParserError, duplicate names, bad bytes
        raise _unreadable(name, e, "a CSV with one invocation per row") from None
    if table.empty:
        raise HarnessError(f"trace file {name!r} has no invocations; point workload.trace at a non-empty trace")
    times = _seconds(path, name, header, table[time_col], is_time=True, unit=unit)
    if dur_col:
        durations = _seconds(path, name, header, table[dur_col], is_time=False, unit=unit)
        negative = np.flatnonzero(durations < 0)  # finite already: _seconds refused nan and inf
        if negative.size:
            _raise_at_row(path, name, len(header), negative[0],
                          f"duration {table[dur_col].iloc[negative[0]]!r} is negative")
        times = times - durations
    # Start times further apart than LATEST_TIME_S (3000 years) cannot all be right (a negative
    # time, a huge duration); replayed, the run would see a near-empty span. Which end is wrong
    # cannot be told in general, so both are named.
    if times.max() - times.min() >= LATEST_TIME_S:
        first, last = (_where(path, name, len(header), int(i)) for i in (times.argmin(), times.argmax()))
        raise HarnessError(
            f"trace file {name!r}: the earliest start time ({first}: {times.min():.6g} s) and the latest "
            f"({last}: {times.max():.6g} s) are over {LATEST_TIME_S:g} s (3000 years) apart; "
            "fix the row with the wrong time or duration"
        )
    funcs = table[func_col].to_numpy() if func_col else None
    return times, funcs


def _rescale(
    rng: np.random.Generator, t: np.ndarray, rate_scale: float, duration: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into t of the arrivals sent and their times, thinned or replicated to rate_scale.

    Each arrival is sent floor(rate_scale) times plus once more with the
    fractional probability: below 1 this thins, above 1 it replicates. Extra
    copies are jittered within one mean gap of the schedule.
    """
    whole = int(rate_scale)
    copies = whole + (rng.random(len(t)) < rate_scale - whole)
    src = np.repeat(np.arange(len(t)), copies)
    first = np.concatenate(([True], src[1:] != src[:-1]))
    jitter = np.where(first, 0.0, rng.random(len(src)) * duration / len(t))
    return src, t[src] + jitter


def timestamp_arrivals(cfg, weights, duration, rng, mapping_rng) -> tuple[np.ndarray, np.ndarray]:
    """(model index, time) of the arrivals replayed from a timestamp trace, sorted by time."""
    path = resolve_trace_path(cfg.trace, TRACE_HINTS["timestamp_trace"])
    name = cfg.trace
    times, funcs = _read_timestamps(path, name, cfg.trace_unit)
    times = times - times.min()
    lo = cfg.trace_start_s
    hi = lo + duration * cfg.time_scale
    selected = np.flatnonzero((times >= lo) & (times < hi))
    if selected.size == 0:
        raise HarnessError(
            f"trace file {name!r} has no invocations in trace seconds [{lo:g}, {hi:g}) "
            f"(it spans {times.max():g} s); change workload.trace_start_s or workload.time_scale"
        )
    check_schedule_size(selected.size * cfg.rate_scale, f"requests from trace file {name!r}",
                        "lower workload.rate_scale or duration_s")
    src, t = _rescale(rng, (times[selected] - lo) / cfg.time_scale, cfg.rate_scale, duration)
    order = np.argsort(t, kind="stable")
    order = order[t[order] < duration]  # jittered copies may pass the end
    t = t[order]
    if funcs is None:
        # No function column: requests take turns in time order.
        return round_robin(weights, len(t)), t
    codes, uniques = pd.factorize(funcs[selected])
    model = _map_functions(len(uniques), weights, mapping_rng)[codes]
    return model[src][order], t


# --- synthetic samples ----------------------------------------------------------------


def _hash(rng: np.random.Generator) -> str:
    return rng.bytes(8).hex()


def write_synthetic_maf(path, n_functions: int, n_minutes: int, seed: int) -> None:
    """Write a MAF-format per-minute count CSV with a mix of steady and bursty functions.

    Each function has a lognormal base of about 30 invocations a minute, a slow
    sinusoidal drift, and (for roughly a quarter of functions) bursts of
    5-10x in about 10% of minutes; counts are Poisson around that.
    """
    rng = np.random.default_rng(seed)
    apps = [(_hash(rng), _hash(rng)) for _ in range(max(1, n_functions // 3))]
    triggers = ("http", "timer", "queue", "event", "storage", "orchestration", "others")
    minute = np.arange(n_minutes)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*MAF_META_COLUMNS, *range(1, n_minutes + 1)])
        for _ in range(n_functions):
            owner, app = apps[rng.integers(len(apps))]
            base = rng.lognormal(np.log(30.0), 0.8)
            rate = base * (1 + 0.3 * np.sin(2 * np.pi * minute / n_minutes + rng.uniform(0, 2 * np.pi)))
            if rng.random() < 0.25:
                bursts = rng.random(n_minutes) < 0.1
                rate = np.where(bursts, rate * rng.uniform(5, 10, n_minutes), rate)
            counts = rng.poisson(rate)
            writer.writerow([owner, app, _hash(rng), triggers[rng.integers(len(triggers))], *counts.tolist()])


def write_synthetic_timestamps(path, n_invocations: int, span_s: float, seed: int) -> None:
    """Write an Azure Functions 2021 style CSV (app,func,end_timestamp,duration), sorted by end.

    24 functions in 6 apps share the invocations by lognormal weights;
    half arrive as Poisson, half in bursts (tight clusters around random
    centres). Durations are lognormal around 0.2 s.
    """
    rng = np.random.default_rng(seed)
    n_funcs = 24
    apps = [_hash(rng) for _ in range(6)]
    funcs = [(apps[i % len(apps)], _hash(rng)) for i in range(n_funcs)]
    share = rng.lognormal(0.0, 0.7, n_funcs)
    per_func = rng.multinomial(n_invocations, share / share.sum())
    rows = []
    for k, n in enumerate(per_func):
        if k % 2 == 0:  # Poisson: given the count, arrival times are uniform
            start = rng.uniform(0, span_s, n)
        else:  # bursty: exponential scatter around a few burst centres
            centres = rng.uniform(0, span_s, max(1, n // 200))
            start = np.minimum(rng.choice(centres, n) + rng.exponential(0.5, n), span_s)
        duration = rng.lognormal(np.log(0.2), 1.0, n)
        rows += [(*funcs[k], s + d, d) for s, d in zip(start, duration, strict=True)]
    rows.sort(key=lambda r: r[2])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["app", "func", "end_timestamp", "duration"])
        writer.writerows([app, func, f"{end:.6f}", f"{dur:.6f}"] for app, func, end, dur in rows)


def write_samples(data_dir=DATA_DIR) -> None:
    """(Re)write the shipped synthetic samples into data_dir."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    write_synthetic_maf(data_dir / "maf_sample.csv", **MAF_SAMPLE)
    write_synthetic_timestamps(data_dir / "timestamps_sample.csv", **TIMESTAMPS_SAMPLE)
