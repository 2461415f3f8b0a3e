"""Comparison report over runs: one table row per run, paper-style figures, report.md and report.html.

    python -m harness.report RUN_OR_SWEEP_DIR... [--out reports/<name>] [--title TEXT] [--rate R]
    python -m harness.report --experiment NAME [overrides...] [--jobs N] [--out reports/NAME]
    python -m harness.report --experiment NAME --latest      # report its latest results again, no run

The first form collects every run directory (one holding summary.json) under
the given paths -- single runs, Hydra multirun sweep directories, search
directories -- and writes to --out: report.md, report.html (self-contained,
figures embedded), runs.csv, and every figure as PNG and PDF. A figure whose
data is absent is skipped with a note in the report.

The second form runs a named experiment (conf/experiment/NAME.yaml) and then
reports it into reports/NAME/: a sweep experiment runs
`python -m harness -m experiment=NAME hydra.sweep.dir=results/experiments/NAME/<time>`
(in parallel through Hydra's joblib launcher when hydra-joblib-launcher is
installed; any other launcher, e.g. `hydra/launcher=submitit_slurm`, passes
through as an override); an experiment tagged `search:capacity` or
`search:fewest_gpus` runs that search (harness.search) for every combination
of its sweeper params instead.

Named experiments, each with a one-machine and a paper-scale variant:
goodput_vs_rate[_paper] (goodput and attainment vs offered load, all
systems), fewest_gpus[_paper] (fewest-GPU search per system and workload),
gpus_over_day[_paper] (GPUs used over a diurnal or trace-driven day).

On a SLURM cluster (pip install hydra-submitit-launcher; results/ on a
shared filesystem) the sweep runs as one job per run and the command waits
for them, then reports:

    python -m harness.report --experiment goodput_vs_rate hydra/launcher=submitit_slurm \\
        hydra.launcher.partition=<partition> hydra.launcher.gpus_per_node=<n> hydra.launcher.timeout_min=30

Per-run figures (latency CDF, GPUs over time, batch sizes, batch timeline)
show one run per system at one setting that every system ran, per workload:
the highest offered rate at which at least half of the systems attain the
target (past that every GPU is busy and the figures show only overload), or
the one nearest --rate.
"""

from __future__ import annotations

import argparse
import base64
import html
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness import figures, metrics
from harness.errors import HarnessError
from harness.search import SEARCH_TAG, TARGET
from workloads.config import TRACE_PROCESSES

SUMMARY_KEYS = ("system", "workload", "cluster", "runtime", "offered_rate", "goodput", "slo_attainment",
                "violation_rate", "drop_rate", "latency_p50_ms", "latency_p99_ms", "mean_batch_size",
                "gpus_total", "gpus_used_mean", "gpus_used_peak", "busy_gpu_seconds", "window_s", "validity")
# Figure files this module writes (stems, possibly with a _<workload> suffix): stale ones are removed first.
FIGURE_STEMS = ("goodput_vs_rate", "attainment_vs_rate", "fewest_gpus", "search_paths", "latency_cdf",
                "gpus_over_time", "batch_sizes", "batch_timeline")


@dataclass
class Run:
    path: Path
    name: str                                   # shown in the report: the path below the input it was found in
    summary: dict
    config: dict = field(default_factory=dict)

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
        path = self.path / f"{name}.parquet"
        if not path.exists():
            return None
        try:
            return pd.read_parquet(path, columns=columns)
        except Exception as exc:
            raise HarnessError(f"cannot read '{self.name}/{path.name}': {exc}; re-run that run or leave it out") \
                from None


# --- collecting runs -------------------------------------------------------------------------------------

def find_runs(paths: list[Path]) -> list[tuple[Path, str]]:
    """(run directory, display name) for every directory holding summary.json under `paths`."""
    found: dict[Path, str] = {}
    for p in map(Path, paths):
        if not p.is_dir():
            raise HarnessError(f"'{p}' is not a directory; give run, sweep or search directories")
        if (p / "summary.json").is_file():
            found.setdefault(p.resolve(), p.resolve().name)
            continue
        for s in sorted(p.rglob("summary.json")):
            found.setdefault(s.parent.resolve(), s.parent.relative_to(p).as_posix())
    if not found:
        raise HarnessError(f"no runs found under {', '.join(map(str, paths))}; give directories that hold a "
                           "summary.json (a run) or runs (a sweep, e.g. results/sweeps/<time>)")
    return sorted(found.items(), key=lambda kv: kv[1])


def load_run(path: Path, name: str) -> Run:
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read '{name}/summary.json': {exc}; re-run that run or leave it out") from None
    missing = [k for k in SUMMARY_KEYS if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise HarnessError(f"'{name}/summary.json' lacks {', '.join(missing)}; re-run that run or leave it out")
    config = {}
    if (path / "config.yaml").is_file():
        from omegaconf import OmegaConf
        try:
            config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
        except Exception as exc:
            raise HarnessError(f"cannot read '{name}/config.yaml': {exc}; re-run that run or leave it out") from None
    return Run(path, name, summary, config)


def load_runs(paths: list[Path]) -> list[Run]:
    return [load_run(p, name) for p, name in find_runs(paths)]


def find_searches(paths: list[Path]) -> list[dict]:
    out = []
    for p in map(Path, paths):
        for s in sorted(p.rglob("search.json")):
            try:
                out.append(json.loads(s.read_text()))
            except (OSError, ValueError) as exc:
                raise HarnessError(f"cannot read '{s.name}' in '{s.parent.name}': {exc}") from None
    return out


# --- the comparison table and what is computed from it ----------------------------------------------------

def _load_of(run: Run) -> float:
    """The configured load knob: workload.rate, or rate_scale for traces (the offered rate where unknown)."""
    w = run.config.get("workload") or {}
    if w.get("process") in TRACE_PROCESSES:
        return float(w.get("rate_scale", math.nan))
    return float(w.get("rate", run.summary["offered_rate"]))


def system_label(run: Run) -> str:
    """The system's name, marked when an autoscaler provisioned its slots (a different configuration to compare)."""
    autoscaled = bool((run.config.get("autoscaler") or {}).get("enabled"))
    return run.summary["system"] + ("+autoscaler" if autoscaled else "")


def runs_table(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for r in runs:
        s = r.summary
        rows.append({
            "run": r.name, "system": system_label(r), "workload": s["workload"], "cluster": s["cluster"],
            "gpus": int(s["gpus_total"]), "runtime": s["runtime"], "load": _load_of(r),
            "offered_rate": s["offered_rate"], "goodput": s["goodput"], "slo_attainment": s["slo_attainment"],
            "violation_rate": s["violation_rate"], "drop_rate": s["drop_rate"],
            "latency_p50_ms": s["latency_p50_ms"], "latency_p99_ms": s["latency_p99_ms"],
            "mean_batch_size": s["mean_batch_size"], "gpus_used_mean": s["gpus_used_mean"],
            "gpus_used_peak": s["gpus_used_peak"], "busy_gpu_seconds": s["busy_gpu_seconds"],
            "gpus_provisioned_mean": s.get("slots_provisioned_mean", math.nan),
            "oracle_goodput": s.get("oracle_goodput", math.nan),
            "goodput_over_oracle": s.get("goodput_over_oracle", math.nan),
            "valid": bool(s["validity"].get("valid")), "invalid_reasons": "; ".join(s["validity"].get("reasons", [])),
            "window_start": s["window_s"][0], "window_end": s["window_s"][1],
        })
    return pd.DataFrame(rows).sort_values(["workload", "cluster", "gpus", "system", "load", "run"],
                                          ignore_index=True)


def capacity(table: pd.DataFrame, target: float = TARGET) -> pd.DataFrame:
    """Per system and setting run at >= 2 loads: the highest offered rate below which every run passes.

    bound: '=' when a higher rate failed, '>=' when none failed (a lower bound), '<' when even the
    lowest rate failed (capacity below the range tried; the value shown is that rate).
    """
    rows = []
    for (system, workload, cluster, gpus), g in table.groupby(["system", "workload", "cluster", "gpus"]):
        if g["load"].nunique() < 2:
            continue
        g = g.sort_values("offered_rate")
        passed = (g["slo_attainment"] >= target).to_numpy()
        first_fail = int(passed.argmin()) if not passed.all() else len(g)
        if first_fail == 0:
            row, bound = g.iloc[0], "<"
        else:
            row, bound = g.iloc[first_fail - 1], ("=" if first_fail < len(g) else ">=")
        rows.append({"system": system, "workload": workload, "cluster": cluster, "gpus": gpus,
                     "capacity": row["offered_rate"], "bound": bound,
                     "goodput_at_capacity": row["goodput"] if bound != "<" else math.nan,
                     "peak_goodput": g["goodput"].max(), "loads": g["load"].nunique()})
    return pd.DataFrame(rows, columns=["system", "workload", "cluster", "gpus", "capacity", "bound",
                                       "goodput_at_capacity", "peak_goodput", "loads"])


def fewest_gpus(table: pd.DataFrame, target: float = TARGET) -> pd.DataFrame:
    """Per system and workload load run on >= 2 GPU counts: the smallest count from which every larger one passes.

    fewest_gpus is NaN when even the largest count tried failed (max_tried says which).
    """
    rows = []
    for (system, workload, cluster, load), g in table.groupby(["system", "workload", "cluster", "load"]):
        if g["gpus"].nunique() < 2:
            continue
        by_count = g.groupby("gpus")["slo_attainment"].min().sort_index(ascending=False)
        fewest = math.nan
        for count, attainment in by_count.items():
            if attainment < target:
                break
            fewest = count
        rows.append({"system": system, "workload": workload, "cluster": cluster, "load": load,
                     "offered_rate": g["offered_rate"].median(), "fewest_gpus": fewest,
                     "max_tried": int(by_count.index.max()), "counts_tried": len(by_count)})
    return pd.DataFrame(rows, columns=["system", "workload", "cluster", "load", "offered_rate", "fewest_gpus",
                                       "max_tried", "counts_tried"])


@dataclass
class Focus:
    workload: str
    rows: pd.DataFrame                  # one run per system
    label: str                          # the setting, for titles
    note: str = ""


def focus_setting(table: pd.DataFrame, workload: str, rate: float | None = None,
                  target: float = TARGET) -> Focus:
    """One run per system for the per-run figures, at one setting every system ran.

    The setting nearest `rate` if given; else the highest offered rate at which at least half of the
    systems still attain the target (past every system's capacity all GPUs are busy and the figures
    show only overload), else the highest offered rate.
    """
    t = table[table["workload"] == workload]
    systems = set(t["system"])
    settings = {k: g for k, g in t.groupby(["cluster", "gpus", "load"]) if set(g["system"]) == systems}
    if settings:
        def serving(g):
            return (g.groupby("system")["slo_attainment"].min() >= target).mean() >= 0.5

        def rank(item):
            (cluster, gpus, load), g = item
            if rate is not None:
                return -abs(g["offered_rate"].median() - rate), gpus
            return serving(g), g["offered_rate"].median(), gpus
        (cluster, gpus, _), g = max(settings.items(), key=rank)
        rows = g.drop_duplicates("system", keep="last")
        label = f"{workload} at {rows['offered_rate'].median():,.0f} req/s on {cluster} ({gpus} GPUs)"
        return Focus(workload, rows, label)
    key = (-(t["offered_rate"] - rate).abs()) if rate is not None else t["offered_rate"]
    rows = t.assign(_key=key).sort_values(["_key", "gpus"]).drop_duplicates("system", keep="last")
    return Focus(workload, rows.drop(columns="_key"), "each system's highest-rate run",
                 note=f"no setting of {workload} was run by every system; each system's own highest-rate run is "
                      "shown")


def _against_reference(frame: pd.DataFrame, keys: list[str], reference: str):
    """(key, the reference's row, another system's row) for each setting `keys` names where the reference ran."""
    for key, g in frame.groupby(keys):
        ref = g[g["system"] == reference]
        if not len(ref):
            continue
        for _, base in g[g["system"] != reference].iterrows():
            yield key, ref.iloc[0], base


def headline(table: pd.DataFrame, cap: pd.DataFrame, few: pd.DataFrame, reference: str | None,
             target: float = TARGET) -> list[str]:
    """Sentences comparing `reference` with every other system, from capacities, fewest GPUs and equal loads."""
    if not reference or reference not in set(table["system"]):
        return []
    out = []
    for (workload, cluster, gpus), r, base in _against_reference(cap, ["workload", "cluster", "gpus"], reference):
        measured = "<" not in (r["bound"], base["bound"]) and base["capacity"] > 0
        ratio = r["capacity"] / base["capacity"] if measured else math.nan
        qualifier = "" if r["bound"] == base["bound"] == "=" else " (a capacity lies outside the rates tried)"
        out.append(f"{workload} on {cluster} ({gpus} GPUs): {reference} capacity {r['bound']} "
                   f"{r['capacity']:,.0f} req/s vs {base['system']} {base['bound']} {base['capacity']:,.0f} "
                   f"req/s at >= {target:.0%} attainment: {_ratio(ratio)}{qualifier}; peak goodput "
                   f"{_ratio(r['peak_goodput'] / base['peak_goodput'] if base['peak_goodput'] else math.nan)}.")
    for (workload, cluster, load), r, base in _against_reference(few, ["workload", "cluster", "load"], reference):
        n_ref, n_base = r["fewest_gpus"], base["fewest_gpus"]
        text_ref = f"{n_ref:g}" if pd.notna(n_ref) else f"more than {r['max_tried']}"
        text_base = f"{n_base:g}" if pd.notna(n_base) else f"more than {base['max_tried']}"
        saving = ""
        if pd.notna(n_ref) and pd.notna(n_base) and n_ref != n_base:
            change = 1 - n_ref / n_base
            saving = f" ({abs(change):.0%} {'fewer' if change > 0 else 'more'})"
        out.append(f"{workload} at {r['offered_rate']:,.0f} req/s on {cluster}: {reference} needs {text_ref} "
                   f"GPUs vs {text_base} for {base['system']}{saving}.")
    # Equal loads: every load at which both the reference and the baseline attain the target.
    for (workload, cluster, gpus), g in table.groupby(["workload", "cluster", "gpus"]):
        ref = g[g["system"] == reference].drop_duplicates("load", keep="last")
        for system, b in g[g["system"] != reference].groupby("system"):
            both = ref.merge(b.drop_duplicates("load", keep="last"), on="load", suffixes=("_r", "_b"))
            ok = both[(both["slo_attainment_r"] >= target) & (both["slo_attainment_b"] >= target)]
            if not len(ok):
                continue
            used = ok["gpus_used_mean_r"] / ok["gpus_used_mean_b"]
            busy = ok["busy_gpu_seconds_r"] / ok["busy_gpu_seconds_b"]
            loads = ok["offered_rate_r"]
            where = (f"at {loads.iloc[0]:,.0f} req/s" if len(ok) == 1 else
                     f"over the {len(ok)} loads from {loads.min():,.0f} to {loads.max():,.0f} req/s")
            out.append(f"{workload} on {cluster} ({gpus} GPUs), {where} that both serve at >= {target:.0%}: "
                       f"{reference} keeps {_span(used)} the GPUs in use of {system} (mean per 1-s bucket) "
                       f"and {_span(busy)} its busy GPU-seconds.")
    return out


def _span(ratios: pd.Series) -> str:
    lo, hi = ratios.min(), ratios.max()
    return _ratio(lo) if math.isclose(lo, hi, rel_tol=0.005) else f"{_ratio(lo)} to {_ratio(hi)}"


def _ratio(x: float) -> str:
    return "n/a" if not (isinstance(x, float) or isinstance(x, int)) or not math.isfinite(x) else f"{x:.2f}x"


# --- display ---------------------------------------------------------------------------------------------

def _fmt(v, kind: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return {"rate": lambda: f"{v:,.0f}", "pct": lambda: f"{v:.2%}", "ms": lambda: f"{v:.1f}",
            "f1": lambda: f"{v:.1f}", "int": lambda: f"{int(v)}",
            "ratio": lambda: f"{v:.0%}", "str": lambda: str(v)}[kind]()


RUN_COLUMNS = [  # (column, header, format)
    ("system", "system", "str"), ("workload", "workload", "str"), ("cluster", "cluster", "str"),
    ("gpus", "GPUs", "int"), ("runtime", "runtime", "str"), ("offered_rate", "offered (req/s)", "rate"),
    ("goodput", "goodput (req/s)", "rate"), ("slo_attainment", "attainment", "pct"),
    ("drop_rate", "drops", "pct"), ("latency_p50_ms", "p50 (ms)", "ms"), ("latency_p99_ms", "p99 (ms)", "ms"),
    ("mean_batch_size", "mean batch", "f1"), ("gpus_used_mean", "GPUs used mean", "f1"),
    ("gpus_used_peak", "GPUs used peak", "int"), ("busy_gpu_seconds", "busy GPU-s", "f1"),
    ("gpus_provisioned_mean", "GPUs provisioned mean", "f1"),
    ("goodput_over_oracle", "goodput / oracle", "ratio"), ("valid", "valid", "str"), ("run", "run", "str"),
]


def display(df: pd.DataFrame, columns: list[tuple[str, str, str]]) -> pd.DataFrame:
    out = pd.DataFrame({header: [_fmt(v, kind) for v in df[col]] for col, header, kind in columns})
    if "valid" in out:
        out["valid"] = ["yes" if v == "True" else "NO" for v in out["valid"]]
    return out


def markdown_table(df: pd.DataFrame) -> str:
    cells = [list(df.columns)] + df.astype(str).values.tolist()
    cells = [[c.replace("|", "\\|") for c in row] for row in cells]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "|".join("---" for _ in cells[0]) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells[1:]])


def _shown_path(p: Path) -> str:
    """A path as the report shows it: relative to the working directory, else just its name."""
    try:
        return Path(p).resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return Path(p).resolve().name


# --- the report ------------------------------------------------------------------------------------------

@dataclass
class Block:
    kind: str                   # h2 | p | ul | table | figure
    content: object
    extra: dict = field(default_factory=dict)


def build(inputs: list[Path], out: Path, title: str | None = None, reference: str | None = None,
          rate: float | None = None, target: float = TARGET, command: str | None = None) -> Path:
    """Write the report for the runs under `inputs` into `out`; returns the path of report.md."""
    runs = load_runs(inputs)
    searches = find_searches(inputs)
    table = runs_table(runs)
    cap, few = capacity(table, target), fewest_gpus(table, target)
    systems = sorted(table["system"].unique())
    if reference is None and "symphony" in systems and len(systems) > 1:
        reference = "symphony"
    st = figures.styles(systems)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.suffix in (".png", ".pdf") and old.stem.startswith(FIGURE_STEMS):
            old.unlink()

    sources = ", ".join(f"`{_shown_path(p)}`" for p in inputs)
    title = title or f"Comparison of {', '.join(systems)}"
    blocks = [Block("p", f"{len(runs)} runs from {sources}; systems: {', '.join(systems)}; generated "
                         f"{time.strftime('%Y-%m-%d %H:%M')}" + (f" by `{command}`." if command else "."))]
    lines = headline(table, cap, few, reference, target)
    if lines:
        blocks += [Block("h2", f"Headline: {reference} against each baseline"), Block("ul", lines)]
    blocks += [Block("h2", "Runs"), Block("table", display(table, RUN_COLUMNS))]
    invalid = table[~table["valid"]]
    if len(invalid):
        blocks.append(Block("ul", [f"`{r.run}` is INVALID: {r.invalid_reasons}" for r in invalid.itertuples()]))
    if len(cap):
        blocks += [Block("h2", f"Capacity (highest offered rate with SLO attainment >= {target:.0%})"),
                   Block("table", display(cap, [
                       ("system", "system", "str"), ("workload", "workload", "str"), ("cluster", "cluster", "str"),
                       ("gpus", "GPUs", "int"), ("bound", "bound", "str"), ("capacity", "capacity (req/s)", "rate"),
                       ("goodput_at_capacity", "goodput there (req/s)", "rate"),
                       ("peak_goodput", "peak goodput (req/s)", "rate"), ("loads", "rates tried", "int")])),
                   Block("p", "bound `=`: the next rate tried failed; `>=`: no rate tried failed; `<`: even the "
                              "lowest rate tried failed.")]
    if len(few):
        blocks += [Block("h2", f"Fewest GPUs (smallest count with SLO attainment >= {target:.0%})"),
                   Block("table", display(few, [
                       ("system", "system", "str"), ("workload", "workload", "str"), ("cluster", "cluster", "str"),
                       ("offered_rate", "offered (req/s)", "rate"), ("fewest_gpus", "fewest GPUs", "int"),
                       ("max_tried", "largest count tried", "int"), ("counts_tried", "counts tried", "int")]))]
    if searches:
        blocks += [Block("h2", "Searches"), Block("table", pd.DataFrame([{
            "search": s["kind"], "system": s.get("system", "-"), "workload": s.get("workload", "-"),
            "cluster": s.get("cluster", "-"), "status": s["status"],
            "answer": "-" if s.get("answer") is None else f"{s['answer']:,.6g}", "probes": len(s["probes"]),
            "error": s.get("error", "")} for s in searches]).sort_values(["search", "workload", "system"]))]

    blocks.append(Block("h2", "Figures"))
    skipped = []

    def figure(stem: str, heading: str, caption: str, make) -> None:
        try:
            fig = make()
        except figures.Skip as why:
            skipped.append(f"{heading}: skipped, {why}")
            return
        names = figures.save(fig, out, stem)
        blocks.append(Block("figure", stem, {"heading": heading, "caption": caption, "files": names}))

    figure("goodput_vs_rate", "Goodput vs offered load",
           "Requests per second finished within their SLO, per system; dotted: every offered request served; "
           "dashed: the oracle bound (all GPUs back to back at the largest batch that fits the SLO).",
           lambda: figures.goodput_vs_rate(table, st))
    figure("attainment_vs_rate", "SLO attainment and violation rate vs offered load",
           f"Top: share of requests in the window finished within SLO (drops count as violations); bottom: "
           f"violation rate on a log axis. Dotted: the {target:.0%} target.",
           lambda: figures.attainment_vs_rate(table, st, target))
    figure("fewest_gpus", "Fewest GPUs needed",
           f"Per workload and offered load: the smallest GPU count at which each system keeps SLO attainment >= "
           f"{target:.0%} (from runs at several cluster.count values, e.g. a fewest-GPU search).",
           lambda: figures.fewest_gpus(few, st, target))
    figure("search_paths", "Search paths", "Every probe of every search: the value tried and the attainment it got.",
           lambda: figures.search_paths(searches, st))

    workloads = sorted(table["workload"].unique())
    for workload in workloads:
        focus = focus_setting(table, workload, rate, target)
        if focus.note:
            blocks.append(Block("p", focus.note))
        suffix = f"_{re.sub(r'[^A-Za-z0-9]+', '-', workload)}" if len(workloads) > 1 else ""
        chosen = _focus_runs(focus, {r.name: r for r in runs})
        where = f" ({workload})" if len(workloads) > 1 else ""
        figure(f"latency_cdf{suffix}", f"Latency CDF{where}",
               f"{focus.label}. Requests scheduled in the measurement window; drops never finish, so a curve "
               "tops out at the share served. Right: latency over each request's SLO (1 = the SLO).",
               lambda: figures.latency_cdf(chosen, st))
        figure(f"gpus_over_time{suffix}", f"GPUs used over time{where}",
               f"{focus.label}. Per 1-s bucket: GPUs that ran at least one batch (solid), busy GPU-seconds per "
               "second (dashed), GPUs provisioned where an autoscaler ran (dotted), and the offered load (shaded, "
               "right axis). Load-proportional use tracks the load.",
               lambda: figures.gpus_over_time(chosen, st))
        figure(f"batch_sizes{suffix}", f"Batch sizes{where}",
               f"{focus.label}. Left: CDF of batch sizes (batches that started in the window); right: mean batch "
               "size per model.", lambda: figures.batch_sizes(chosen, st))
        figure(f"batch_timeline{suffix}", f"Batch timeline{where}",
               f"{focus.label}. Each bar is one batch on one GPU slot, coloured and hatched by model.",
               lambda: figures.batch_timeline(chosen))
    if skipped:
        blocks += [Block("h2", "Figures skipped"), Block("ul", skipped)]
    blocks += [Block("h2", "Definitions"), Block("ul", _definitions())]

    out_md = out / "report.md"
    table.drop(columns=["window_start", "window_end"]).to_csv(out / "runs.csv", index=False)
    out_md.write_text(render_markdown(title, blocks))
    (out / "report.html").write_text(render_html(title, blocks, out))
    return out_md


def _focus_runs(focus: Focus, by_name: dict[str, Run]) -> list[figures.FocusRun]:
    chosen = []
    for row in focus.rows.itertuples():
        run = by_name[row.run]
        chosen.append(figures.FocusRun(
            system=row.system, label=focus.label, window=(row.window_start, row.window_end), gpus=row.gpus,
            requests=run.table("requests", ["t_sched", "status", "latency", "slo"]),
            batches=run.table("batches", ["gpu", "model", "size", "t_start", "t_end", "status"]),
            gpus_used=run.table("gpus_used"), schedule=run.table("schedule", ["t_sched"]),
            scaling=run.table("scaling")))
    return chosen


def _definitions() -> list[str]:
    """The metric definitions, from harness.metrics (one source of truth)."""
    text = metrics.__doc__.split("\n\n", 1)[1]
    items = [" ".join(line.strip() for line in item.splitlines()) for item in text.strip().split("\n- ")]
    return [i.lstrip("- ") for i in items] + [
        "Capacity: the highest offered rate at which SLO attainment >= 99% (harness.search capacity).",
        "Fewest GPUs: the smallest cluster.count that serves a workload at >= 99% attainment "
        "(harness.search fewest_gpus).",
        "Offered rate and goodput are per second of the measurement window; a system's style (colour, marker, "
        "line, hatch) is the same in every figure."]


def render_markdown(title: str, blocks: list[Block]) -> str:
    parts = [f"# {title}"]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"## {b.content}")
        elif b.kind == "p":
            parts.append(str(b.content))
        elif b.kind == "ul":
            parts.append("\n".join(f"- {item}" for item in b.content))
        elif b.kind == "table":
            parts.append(markdown_table(b.content))
        elif b.kind == "figure":
            png, pdf = b.extra["files"]
            parts.append(f"### {b.extra['heading']}\n\n![{b.extra['heading']}]({png})\n\n{b.extra['caption']} "
                         f"([PDF]({pdf}))")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


CSS = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}th,td{border:1px solid #bbb;padding:3px 7px;
text-align:right}th{background:#eee}td:first-child,th:first-child{text-align:left}figure{margin:2em 0}
img{max-width:100%;border:1px solid #ddd}figcaption{font-size:14px;color:#444;max-width:60em}code{background:#f3f3f3}
.scroll{overflow-x:auto}"""


def render_html(title: str, blocks: list[Block], out: Path) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if b.kind == "h2":
            parts.append(f"<h2>{html.escape(b.content)}</h2>")
        elif b.kind == "p":
            parts.append(f"<p>{_inline(b.content)}</p>")
        elif b.kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.content) + "</ul>")
        elif b.kind == "table":
            parts.append("<div class='scroll'>" + b.content.to_html(index=False, escape=True, border=0) + "</div>")
        elif b.kind == "figure":
            png, pdf = b.extra["files"]
            data = base64.b64encode((out / png).read_bytes()).decode()
            parts.append(f"<figure><h3>{html.escape(b.extra['heading'])}</h3>"
                         f"<img alt='{html.escape(b.extra['heading'])}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{_inline(b.extra['caption'])} (<a href='{pdf}'>PDF</a>)</figcaption></figure>")
    return "\n".join(parts) + "\n</body></html>\n"


# --- named experiments -----------------------------------------------------------------------------------

def experiment_file(name: str) -> Path:
    from harness.__main__ import CONF

    path = CONF / "experiment" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
        raise HarnessError(f"unknown experiment '{name}'; choose one of: {', '.join(known)}")
    return path


def experiment_title(name: str) -> str:
    """The first comment line of the experiment's file (after the @package line) is its title."""
    for line in experiment_file(name).read_text().splitlines():
        if line.startswith("#") and "@package" not in line and line.strip("# "):
            return line.strip("# ").rstrip(".")
    return name


def experiment_results(name: str) -> Path:
    return Path("results") / "experiments" / name


def latest_results(name: str) -> Path:
    experiment_file(name)
    done = sorted(p for p in experiment_results(name).glob("*") if p.is_dir())
    if not done:
        raise HarnessError(f"experiment {name} has no results under {experiment_results(name)}; run it: "
                           f"python -m harness.report --experiment {name}")
    return done[-1]


def run_experiment(name: str, overrides: list[str], jobs: int) -> Path:
    """Run experiment `name` (a sweep, or a search where tagged) into results/experiments/<name>/<time>/."""
    from harness import search

    experiment_file(name)
    results = experiment_results(name) / time.strftime("%Y-%m-%d_%H-%M-%S")
    base = [f"experiment={name}", *overrides]
    tags = [t for t in search.compose(search.plain_overrides(base)).tags if t.startswith(SEARCH_TAG)]
    if tags:
        kind = tags[0][len(SEARCH_TAG):]
        print(f"experiment {name}: {kind} search per combination -> {results}", flush=True)
        found = search.search_all(kind, base, results, jobs=jobs)
        failed = [r for r in found if r["status"] == "error"]
        if failed:
            print(f"warning: {len(failed)} of {len(found)} searches failed; the report shows the rest",
                  file=sys.stderr)
        return results
    cmd = [sys.executable, "-m", "harness", "-m", *base, f"hydra.sweep.dir={results.as_posix()}"]
    if jobs != 1 and not any(o.startswith("hydra/launcher=") for o in overrides):
        if importlib.util.find_spec("hydra_plugins.hydra_joblib_launcher") is not None:
            cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
        else:
            print("note: hydra-joblib-launcher is not installed; the sweep runs one run at a time", file=sys.stderr)
    print("running: " + " ".join(cmd[1:]), flush=True)
    done = subprocess.run(cmd)
    if done.returncode != 0:
        if not any(results.rglob("summary.json")):
            raise HarnessError(f"the sweep of experiment {name} failed (exit {done.returncode}) before any run "
                               "finished; see its error above")
        print(f"warning: the sweep of experiment {name} ended with exit {done.returncode}; the report shows the "
              "runs that finished", file=sys.stderr)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report", description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", help="run, sweep or search directories; with --experiment: Hydra overrides")
    ap.add_argument("--out", type=Path, help="output directory (default reports/<experiment or input name>)")
    ap.add_argument("--title", help="report title")
    ap.add_argument("--reference", help="the system the headline compares with each other one (default symphony)")
    ap.add_argument("--rate", type=float, help="offered rate (req/s) of the per-run figures (default: the highest "
                                                "every system ran at)")
    ap.add_argument("--target", type=float, default=TARGET, help="SLO attainment that counts as serving a load")
    ap.add_argument("--experiment", help="run conf/experiment/EXPERIMENT.yaml first, then report it")
    ap.add_argument("--latest", action="store_true",
                    help="with --experiment: report its latest results/experiments/<name>/<time> without running")
    ap.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8),
                    help="parallel runs (sweeps) or searches (search experiments)")
    args = ap.parse_args(argv)
    try:
        if args.experiment:
            command = f"python -m harness.report --experiment {' '.join([args.experiment, *args.inputs])}"
            inputs = [latest_results(args.experiment) if args.latest
                      else run_experiment(args.experiment, args.inputs, args.jobs)]
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
    print(f"report: {path} (and report.html, figures) in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
