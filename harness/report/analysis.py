"""What a report computes from runs: the results table, repeats, capacity, fewest GPUs, the best system.

- results_table: one row per run (system, seeds, workload, cluster, runtime,
  the headline metrics); what results.parquet holds.
- summarise: runs that differ only by their seeds grouped into one row per
  setting, each metric as the mean and the half-width of its 95% confidence
  interval (Student's t over the repeats; `<metric>_ci`, NaN for one run).
- capacity, fewest_slots: per repeat, then over the repeats as above.
- best_at_slo: per scenario (workload, cluster, runtime) the systems ranked
  by what decides at the attainment target: capacity where rates were swept,
  else GPUs used among the systems that attain it at the one load run.
- per_model, latency_breakdown: per model and per system at one setting,
  from summary.json's per_model and requests.parquet's queue and execution
  times.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from harness.metrics import Window, good_mask, in_window
from harness.report.runs import PER_MODEL_METRICS, SUMMARY_METRICS, Run
from harness.search import TARGET
from workloads.config import TRACE_PROCESSES

CONFIDENCE = 0.95
SCENARIO = ["workload", "cluster", "runtime"]          # what systems are compared on
SEED_KINDS = ("schedule", "mapping", "payload", "runtime")
# Metrics averaged over repeats, each with its confidence interval.
METRICS = ["throughput", *SUMMARY_METRICS, "accuracy_served"]
# Columns that describe a setting: equal for every repeat of it.
SETTING = ["system", "workload", "cluster", "cluster_name", "runtime", "emulated", "gpus", "slots", "load",
           "time_scale", "day_s"]
TIE = 0.005                 # values this close (relative) rank equal


# --- one row per run ------------------------------------------------------------------------------------

def results_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what it was (system, seeds, workload, cluster, runtime, load) and its headline metrics."""
    rows = []
    for r in runs:
        s = r.summary
        window = s["window_s"][1] - s["window_s"][0]
        seeds = {k: s.get("seeds", {}).get(k) for k in SEED_KINDS}
        rows.append({
            "run": r.name, "setting": _setting_id(r), "system": system_label(r),
            **{f"seed_{k}": v for k, v in seeds.items()}, "seeds": seed_label(seeds),
            "workload": s["workload"], "cluster": cluster_label(s), "cluster_name": s["cluster"],
            "runtime": s["runtime"], "emulated": bool(s.get("emulated", s["runtime"] == "sim")),
            "gpus": int(s["gpus_total"]), "slots": int(s.get("slots_total", s["gpus_total"])),
            "load": _load_of(r), "time_scale": time_scale(r), "day_s": day_length(r),
            "throughput": s.get("status_counts", {}).get("ok", math.nan) / window if window > 0 else math.nan,
            **{m: as_number(s.get(m)) for m in SUMMARY_METRICS},
            "accuracy_served": _weakest_app(s.get("accuracy_served")),
            "valid": bool(s["validity"].get("valid")), "invalid_reasons": "; ".join(s["validity"].get("reasons", [])),
            "window_start": s["window_s"][0], "window_end": s["window_s"][1], "schema_version": r.schema,
        })
    return pd.DataFrame(rows).sort_values(["workload", "cluster", "system", "load", "seeds", "run"],
                                          ignore_index=True)


def as_number(v) -> float:
    """A summary's metric as a float: NaN where it holds null (nothing was measured)."""
    return math.nan if v is None else float(v)


def _weakest_app(accuracy: dict | None) -> float:
    """Compound apps: the lowest accuracy served over the apps (relative to their most accurate variants);
    NaN without apps, or when no app request finished ok."""
    values = [v for v in (accuracy or {}).values() if v is not None and not math.isnan(v)]
    return min(values) if values else math.nan


def system_label(run: Run) -> str:
    """The system's name, with the options the run was given on its command line or by its sweep
    (`system.partitioning=whole` -> paris_elsa[partitioning=whole]), and marked when an autoscaler provisioned
    its slots: each is a different configuration to compare. Options an experiment sets in its own config
    are that experiment's system, and stay unmarked."""
    given = sorted(o.lstrip("+").split(".", 1)[1] for o in run.summary.get("provenance", {}).get("overrides", [])
                   if o.lstrip("+").startswith("system."))
    autoscaled = bool((run.config.get("autoscaler") or {}).get("enabled") or run.summary.get("autoscaler"))
    return (run.summary["system"] + (f"[{', '.join(given)}]" if given else "")
            + ("+autoscaler" if autoscaled else ""))


def cluster_label(summary: dict) -> str:
    """What the slots were, in words ('4 x 25% MPS shares of 1 H100'), marked when the GPUs were emulated."""
    label = summary.get("cluster_label") or summary["cluster"]
    return label + (" (emulated)" if summary.get("emulated", summary["runtime"] == "sim") else "")


def seed_label(seeds: dict) -> str:
    """'s0 m1 p2 r3': the schedule, mapping, payload and runtime seeds."""
    return " ".join(f"{k[0]}{'?' if seeds.get(k) is None else seeds[k]}" for k in SEED_KINDS)


def time_scale(run: Run) -> float:
    """How many times faster than recorded a trace was replayed (1 for synthetic load)."""
    w = run.config.get("workload") or {}
    return float(w.get("time_scale", 1.0)) if w.get("process") in TRACE_PROCESSES else 1.0


def day_length(run: Run) -> float:
    """The period of a diurnal rate shape in seconds (NaN for other shapes)."""
    w = run.config.get("workload") or {}
    return float(w.get("diurnal_period_s", math.nan)) if w.get("shape") == "diurnal" else math.nan


def _load_of(run: Run) -> float:
    """The configured load knob: workload.rate, or rate_scale for traces (the offered rate where unknown)."""
    w = run.config.get("workload") or {}
    if w.get("process") in TRACE_PROCESSES:
        return float(w.get("rate_scale", math.nan))
    return float(w.get("rate", run.summary["offered_rate"]))


def _setting_id(run: Run) -> str:
    """Equal for runs whose configs differ only by their seeds."""
    s = run.summary
    described = [system_label(run), s["workload"], cluster_label(s), s["runtime"], _load_of(run)]
    config = {k: v for k, v in run.config.items() if k != "seeds"}
    key = json.dumps([described, config], sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


# --- repeats --------------------------------------------------------------------------------------------

def mean_ci(values) -> tuple[float, float]:
    """The mean and the half-width of its 95% confidence interval (Student's t; NaN below two values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan, math.nan
    if len(v) < 2:
        return float(v.mean()), math.nan
    t = stats.t.ppf((1 + CONFIDENCE) / 2, len(v) - 1)
    return float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(len(v)))


def aggregate(frame: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """One row per `by` group: each metric's mean and `<metric>_ci`, `n` rows and the seeds they had."""
    rows = []
    for key, g in frame.groupby(by, sort=False, dropna=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["n"] = len(g)
        row["seeds"] = merge_seeds(g["seeds"])
        for m in metrics:
            row[m], row[f"{m}_ci"] = mean_ci(g[m])
        rows.append(row)
    columns = by + ["n", "seeds"] + [c for m in metrics for c in (m, f"{m}_ci")]
    return pd.DataFrame(rows, columns=columns)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (runs that differ only by their seeds): metrics as mean and confidence interval."""
    out = aggregate(table, ["setting"], METRICS)
    first = table.groupby("setting", sort=False)
    described = first[SETTING].first().reset_index()
    extra = first.agg(runs=("run", list), valid=("valid", "all"),
                      invalid_reasons=("invalid_reasons", lambda r: "; ".join(x for x in r if x)),
                      window_start=("window_start", "first"), window_end=("window_end", "first")).reset_index()
    out = described.merge(extra, on="setting").merge(out, on="setting")
    return out.sort_values(["workload", "cluster", "system", "load"], ignore_index=True)


# --- capacity and fewest slots -----------------------------------------------------------------------

def capacity(table: pd.DataFrame, target: float = TARGET) -> pd.DataFrame:
    """Per system and scenario run at >= 2 loads: the highest offered rate below which every run passes.

    Found per repeat (seeds), then averaged over the repeats. bound: '=' when a higher rate failed,
    '>=' when none failed (a lower bound), '<' when even the lowest rate failed (the value is that
    rate); repeats that disagree show each bound.
    """
    per_repeat = []
    for key, g in table.groupby(["system", *SCENARIO, "seeds"]):
        if g["load"].nunique() < 2:
            continue
        g = g.sort_values("offered_rate")
        passed = (g["slo_attainment"] >= target).to_numpy()
        first_fail = int(passed.argmin()) if not passed.all() else len(g)
        if first_fail == 0:
            row, bound = g.iloc[0], "<"
        else:
            row, bound = g.iloc[first_fail - 1], ("=" if first_fail < len(g) else ">=")
        per_repeat.append({**dict(zip(["system", *SCENARIO, "seeds"], key)), "capacity": row["offered_rate"],
                           "bound": bound, "goodput_at_capacity": row["goodput"] if bound != "<" else math.nan,
                           "peak_goodput": g["goodput"].max(), "loads": g["load"].nunique()})
    columns = ["system", *SCENARIO, "n", "seeds", "bound", "capacity", "capacity_ci", "goodput_at_capacity",
               "goodput_at_capacity_ci", "peak_goodput", "peak_goodput_ci", "loads"]
    if not per_repeat:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(per_repeat)
    out = aggregate(frame, ["system", *SCENARIO], ["capacity", "goodput_at_capacity", "peak_goodput"])
    extra = frame.groupby(["system", *SCENARIO]).agg(
        bound=("bound", lambda b: "/".join(sorted(set(b)))), loads=("loads", "max")).reset_index()
    return out.merge(extra, on=["system", *SCENARIO])[columns]


def fewest_slots(table: pd.DataFrame, target: float = TARGET) -> pd.DataFrame:
    """Per system, workload, cluster and load run on >= 2 slot counts (cluster.count): the smallest count
    from which every larger one passes, per repeat and then averaged over the repeats.

    fewest is NaN when some repeat passed at none of the counts tried (max_tried says up to where);
    `cluster` is the cluster at the largest count any repeat needed: it serves every repeat.
    """
    keys = ["system", "workload", "cluster_name", "runtime", "load"]
    per_repeat = []
    for key, g in table.groupby([*keys, "seeds"]):
        if g["slots"].nunique() < 2:
            continue
        by_count = g.groupby("slots")["slo_attainment"].min().sort_index(ascending=False)
        fewest = math.nan
        for count, attainment in by_count.items():
            if attainment < target:
                break
            fewest = count
        per_repeat.append({**dict(zip([*keys, "seeds"], key)), "fewest": fewest,
                           "offered_rate": g["offered_rate"].median(), "max_tried": int(by_count.index.max()),
                           "counts_tried": len(by_count)})
    columns = [*keys, "n", "seeds", "offered_rate", "fewest", "fewest_ci", "cluster", "max_tried", "counts_tried"]
    if not per_repeat:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(per_repeat)
    rows = []
    for key, g in frame.groupby(keys):
        found = g["fewest"].notna().all()
        fewest, ci = mean_ci(g["fewest"]) if found else (math.nan, math.nan)
        needed = int(g["fewest"].max()) if found else int(g["max_tried"].max())
        at = table[(table["system"] == key[0]) & (table["cluster_name"] == key[2]) & (table["slots"] == needed)]
        label = at["cluster"].iloc[0] if len(at) else f"{needed} slots"
        rows.append({**dict(zip(keys, key)), "n": len(g), "seeds": merge_seeds(g["seeds"]),
                     "offered_rate": g["offered_rate"].median(), "fewest": fewest, "fewest_ci": ci,
                     "cluster": label if found else f"more than {label}", "max_tried": int(g["max_tried"].max()),
                     "counts_tried": int(g["counts_tried"].max())})
    return pd.DataFrame(rows, columns=columns)


def merge_seeds(labels) -> str:
    """Seed labels ('s0 m1 p2 r3', 's1 m1 p2 r3') merged into one ('s0,1 m1 p2 r3')."""
    parts = [label.split() for label in labels]
    merged = []
    for i, kind in enumerate(SEED_KINDS):
        values = sorted({p[i][1:] for p in parts}, key=lambda v: (len(v), v))
        merged.append(kind[0] + ",".join(values))
    return " ".join(merged)


# --- the best system at the SLO target ------------------------------------------------------------------

@dataclass
class Ranked:
    system: str
    value: float
    ci: float
    bound: str = ""          # capacity: '=', '>=', '<'
    then: float = math.nan   # what decides between equal values (GPUs used: busy GPU-seconds)
    tied: bool = False       # not distinguishable from the system ranked above


@dataclass
class Verdict:
    """Which systems are best in one scenario, and by what."""

    workload: str
    cluster: str
    runtime: str
    criterion: str           # in words, e.g. 'capacity (req/s)'
    measure: str             # what the values are: capacity, slots, gpus or attainment
    ranking: list[Ranked]    # best first
    higher_is_better: bool
    note: str = ""

    @property
    def best(self) -> list[Ranked]:
        out = [self.ranking[0]]
        for r in self.ranking[1:]:
            if not r.tied:
                break
            out.append(r)
        return out


def best_at_slo(summary: pd.DataFrame, cap: pd.DataFrame, few: pd.DataFrame,
                target: float = TARGET) -> list[Verdict]:
    """Per scenario, the systems ranked by what decides at the attainment target: capacity where rates
    were swept; fewest slots where slot counts were searched; else, at the highest load every system ran,
    GPUs used among the systems that attain the target (or attainment, when none does)."""
    verdicts = []
    searched = set()
    for (workload, cluster, runtime, _), g in few.groupby(["workload", "cluster_name", "runtime", "load"]):
        searched.add((workload, cluster, runtime))
        ranked = [Ranked(r.system, r.fewest, r.fewest_ci) for r in
                  g.sort_values(["fewest", "system"], na_position="last").itertuples()]
        verdicts.append(Verdict(workload, cluster, runtime, f"fewest slots at {g['offered_rate'].median():,.0f} "
                                f"req/s", "slots", _ties(ranked), higher_is_better=False))
    for key, g in summary.groupby(SCENARIO):
        scenario = dict(zip(SCENARIO, key))
        c = cap.merge(pd.DataFrame([scenario]), on=SCENARIO)
        if len(c) >= 2:
            ranked = [Ranked(r.system, r.capacity, r.capacity_ci, r.bound)
                      for r in c.sort_values(["capacity", "system"], ascending=[False, True]).itertuples()]
            verdicts.append(Verdict(**scenario, criterion="capacity (req/s)", measure="capacity",
                                    ranking=_ties(ranked), higher_is_better=True))
            continue
        if (scenario["workload"], g["cluster_name"].iloc[0], scenario["runtime"]) in searched:
            continue                    # one of the cluster sizes of a fewest-slots search: judged above
        common = set.intersection(*(set(loads) for _, loads in g.groupby("system")["load"]))
        if g["system"].nunique() < 2 or not common:
            continue
        at = g[g["load"] == max(common)].drop_duplicates("system", keep="last")
        rate = at["offered_rate"].median()
        serving = at[at["slo_attainment"] >= target].sort_values(["gpus_used_mean", "busy_gpu_seconds", "system"])
        if len(serving):
            ranked = [Ranked(r.system, r.gpus_used_mean, r.gpus_used_mean_ci, then=r.busy_gpu_seconds)
                      for r in serving.itertuples()]
            missed = at[at["slo_attainment"] < target].sort_values("system")
            note = ", ".join(f"{r.system} {r.slo_attainment:.2%}" for r in missed.itertuples())
            note = f"below {target:.0%} attainment: {note}" if note else ""
            verdicts.append(Verdict(**scenario, criterion=f"GPUs used, then busy GPU-s, at {rate:,.0f} req/s",
                                    measure="gpus",
                                    ranking=_ties(ranked), higher_is_better=False, note=note))
        else:
            ranked = [Ranked(r.system, r.slo_attainment, r.slo_attainment_ci) for r in
                      at.sort_values(["slo_attainment", "system"], ascending=[False, True]).itertuples()]
            verdicts.append(Verdict(**scenario, criterion=f"SLO attainment at {rate:,.0f} req/s",
                                    measure="attainment", ranking=_ties(ranked), higher_is_better=True,
                                    note=f"no system attains {target:.0%}"))
    return verdicts


def _ties(ranked: list[Ranked]) -> list[Ranked]:
    """Mark each system that is not distinguishable from the one above it: equal within TIE, or (with
    repeats) overlapping confidence intervals."""
    def same(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=TIE) or (math.isnan(a) and math.isnan(b))

    for above, r in zip(ranked, ranked[1:]):
        equal = same(above.value, r.value) and above.bound == r.bound
        overlap = (math.isfinite(above.ci) and math.isfinite(r.ci)
                   and abs(above.value - r.value) <= above.ci + r.ci)
        r.tied = (equal or overlap) and same(above.then, r.then)
    return ranked


# --- comparisons against one named system ---------------------------------------------------------------

def against(reference: str, summary: pd.DataFrame, cap: pd.DataFrame, few: pd.DataFrame,
            target: float = TARGET) -> list[str]:
    """Sentences comparing `reference` with every other system: capacity, fewest slots, GPUs at equal loads."""
    out = []
    for key, g in cap.groupby(SCENARIO):
        ref = g[g["system"] == reference]
        for base in ([] if ref.empty else g[g["system"] != reference].itertuples()):
            r = ref.iloc[0]
            measured = "<" not in (r["bound"], base.bound) and base.capacity > 0
            qualifier = "" if r["bound"] == base.bound == "=" else " (a capacity lies outside the rates tried)"
            out.append(f"{_scenario(key)}: {reference} capacity {r['bound']} {r['capacity']:,.0f} req/s vs "
                       f"{base.system} {base.bound} {base.capacity:,.0f} req/s at >= {target:.0%} attainment: "
                       f"{_ratio(r['capacity'] / base.capacity if measured else math.nan)}{qualifier}; peak "
                       f"goodput {_ratio(r['peak_goodput'] / base.peak_goodput if base.peak_goodput else math.nan)}.")
    for (workload, cluster, runtime, load), g in few.groupby(["workload", "cluster_name", "runtime", "load"]):
        ref = g[g["system"] == reference]
        for base in ([] if ref.empty else g[g["system"] != reference].itertuples()):
            r = ref.iloc[0]
            saving = ""
            if pd.notna(r["fewest"]) and pd.notna(base.fewest) and r["fewest"] != base.fewest:
                change = 1 - r["fewest"] / base.fewest
                saving = f" ({abs(change):.0%} {'fewer' if change > 0 else 'more'})"
            out.append(f"{workload} at {r['offered_rate']:,.0f} req/s ({runtime}): {reference} needs "
                       f"{r['cluster']} vs {base.cluster} for {base.system}{saving}.")
    for key, g in summary.groupby(SCENARIO):
        ref = g[g["system"] == reference].drop_duplicates("load", keep="last")
        for system, b in g[g["system"] != reference].groupby("system"):
            both = ref.merge(b.drop_duplicates("load", keep="last"), on="load", suffixes=("_r", "_b"))
            ok = both[(both["slo_attainment_r"] >= target) & (both["slo_attainment_b"] >= target)]
            if not len(ok):
                continue
            loads = ok["offered_rate_r"]
            where = (f"at {loads.iloc[0]:,.0f} req/s" if len(ok) == 1 else
                     f"over the {len(ok)} loads from {loads.min():,.0f} to {loads.max():,.0f} req/s")
            out.append(f"{_scenario(key)}, {where} that both serve at >= {target:.0%}: {reference} keeps "
                       f"{_span(ok['gpus_used_mean_r'] / ok['gpus_used_mean_b'])} the GPUs in use of {system} (mean "
                       f"per 1-s bucket) and {_span(ok['busy_gpu_seconds_r'] / ok['busy_gpu_seconds_b'])} its busy "
                       "GPU-seconds.")
    return out


def _scenario(key: tuple) -> str:
    workload, cluster, runtime = key
    return f"{workload} on {cluster}, {runtime}"


def _span(ratios: pd.Series) -> str:
    lo, hi = ratios.min(), ratios.max()
    return _ratio(lo) if math.isclose(lo, hi, rel_tol=TIE) else f"{_ratio(lo)} to {_ratio(hi)}"


def _ratio(x: float) -> str:
    return f"{x:.2f}x" if isinstance(x, (int, float)) and math.isfinite(x) else "n/a"


# --- one setting in detail ------------------------------------------------------------------------------

@dataclass
class Focus:
    workload: str
    rows: pd.DataFrame                  # one summarised row per system
    label: str                          # the setting, for titles
    note: str = ""


def focus_setting(summary: pd.DataFrame, workload: str, rate: float | None = None,
                  target: float = TARGET) -> Focus:
    """One setting per system for the per-run figures and tables, one that every system ran.

    The setting nearest `rate` if given; else the highest offered rate at which at least half of the
    systems still attain the target (past every system's capacity all GPUs are busy and the figures
    show only overload), else the highest offered rate.
    """
    t = summary[summary["workload"] == workload]
    systems = set(t["system"])
    settings = {k: g for k, g in t.groupby(["cluster", "runtime", "slots", "load"]) if set(g["system"]) == systems}
    if settings:
        def rank(item):
            (_, _, slots, _), g = item
            if rate is not None:
                return -abs(g["offered_rate"].median() - rate), slots
            serving = (g.groupby("system")["slo_attainment"].min() >= target).mean() >= 0.5
            return serving, g["offered_rate"].median(), slots
        (cluster, runtime, _, _), g = max(settings.items(), key=rank)
        rows = g.drop_duplicates("system", keep="last")
        return Focus(workload, rows, f"{workload} at {rows['offered_rate'].median():,.0f} req/s on {cluster}")
    key = (-(t["offered_rate"] - rate).abs()) if rate is not None else t["offered_rate"]
    rows = t.assign(_key=key).sort_values(["_key", "slots"]).drop_duplicates("system", keep="last")
    return Focus(workload, rows.drop(columns="_key"), "each system's highest-rate run",
                 note=f"no setting of {workload} was run by every system; each system's own highest-rate run is "
                      "shown")


BREAKDOWN_METRICS = ["queue_mean_ms", "exec_mean_ms", "other_mean_ms", "queue_p99_ms", "exec_p99_ms"]


def per_model(focus: Focus, runs: dict[str, Run]) -> pd.DataFrame:
    """Per system and model at the focus setting (from summary.json's per_model, and the queue and execution
    times where requests.parquet was kept): means and confidence intervals over the repeats."""
    rows = []
    for f in focus.rows.itertuples():
        for name in f.runs:
            run = runs[name]
            split = latency_breakdown(run).set_index("model") if run.has("requests") else None
            for model, m in run.summary.get("per_model", {}).items():
                row = {"system": f.system, "model": model, "seeds": _run_seeds(run),
                       **{k: as_number(m.get(k)) for k in PER_MODEL_METRICS}}
                for k in BREAKDOWN_METRICS:
                    row[k] = split.at[model, k] if split is not None and model in split.index else math.nan
                rows.append(row)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    return aggregate(frame, ["model", "system"], [*PER_MODEL_METRICS, *BREAKDOWN_METRICS]) \
        .sort_values(["model", "system"], ignore_index=True)


def breakdown(focus: Focus, runs: dict[str, Run]) -> pd.DataFrame:
    """Per system at the focus setting: where the latency of served requests went (queue, execution,
    the rest), means and confidence intervals over the repeats; empty without requests.parquet."""
    rows = []
    for f in focus.rows.itertuples():
        for name in f.runs:
            run = runs[name]
            if not run.has("requests"):
                continue
            split = latency_breakdown(run)
            rows.append({"system": f.system, "seeds": _run_seeds(run),
                         **split[split["model"] == ALL_MODELS].iloc[0][BREAKDOWN_METRICS].to_dict()})
    if not rows:
        return pd.DataFrame()
    return aggregate(pd.DataFrame(rows), ["system"], BREAKDOWN_METRICS).sort_values("system", ignore_index=True)


ALL_MODELS = "(all)"


def latency_breakdown(run: Run) -> pd.DataFrame:
    """Per model (and ALL_MODELS) over the run's window, for requests served ok: mean queue time (arrival at
    the server to the batch's start), execution time (the batch), the rest (transport and frontend), and the
    p99 of the first two, in ms."""
    r = run.table("requests", ["model", "t_sched", "status", "latency", "slo", "queue_time", "exec_time"])
    r = in_window(r, Window(*run.summary["window_s"]))
    r = r[r["status"] == "ok"].assign(other=lambda d: d["latency"] - d["queue_time"] - d["exec_time"])
    rows = []
    for model, g in [(ALL_MODELS, r), *r.groupby("model", sort=True)]:
        rows.append({"model": model, "queue_mean_ms": 1e3 * g["queue_time"].mean(),
                     "exec_mean_ms": 1e3 * g["exec_time"].mean(), "other_mean_ms": 1e3 * g["other"].mean(),
                     "queue_p99_ms": 1e3 * g["queue_time"].quantile(0.99) if len(g) else math.nan,
                     "exec_p99_ms": 1e3 * g["exec_time"].quantile(0.99) if len(g) else math.nan})
    return pd.DataFrame(rows)


def _run_seeds(run: Run) -> str:
    return seed_label({k: run.summary.get("seeds", {}).get(k) for k in SEED_KINDS})


def attainment_per_bucket(requests: pd.DataFrame, window: tuple[float, float], bucket: float = 1.0) -> pd.DataFrame:
    """Per bucket of the window (by scheduled time): the share of requests finished ok within their SLO."""
    r = in_window(requests, Window(*window))
    k = np.floor((r["t_sched"].to_numpy() - window[0]) / bucket)
    good = good_mask(r).to_numpy()
    frame = pd.DataFrame({"t": window[0] + k * bucket, "good": good})
    return frame.groupby("t", as_index=False)["good"].mean().rename(columns={"good": "attainment"})
