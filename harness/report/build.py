"""Assembling a report: the sections, their tables and figures, written into one directory.

    build([Path("results/sweeps/2026-01-01_12-00-00")], Path("reports/mine"))

writes report.md, report.html, results.parquet (one row per run) and every
figure as PNG and PDF.
"""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import pandas as pd

from harness import metrics
from harness.errors import HarnessError
from harness.records import check_writable_dir
from harness.report import analysis, figures, render
from harness.report.analysis import Focus, Verdict
from harness.report.render import Cell, Section, Table, number, text
from harness.report.runs import Run, find_searches, load_runs
from harness.search import TARGET, describe_answer

# Figure files this module writes (stems, possibly with a _<workload> suffix): stale ones are removed first.
FIGURE_STEMS = ("goodput_vs_rate", "attainment_vs_rate", "latency_vs_rate", "throughput_vs_p99", "fewest_gpus",
                "search_paths", "latency_cdf", "latency_breakdown", "gpus_over_time", "batch_sizes", "batch_timeline")
# Columns of the results table: (column, header, format); `<column>_ci` is shown beside where present.
RESULT_COLUMNS = [
    ("system", "system", "str"), ("workload", "workload", "str"), ("cluster", "cluster", "str"),
    ("runtime", "runtime", "str"), ("n", "runs", "int"), ("seeds", "seeds", "str"),
    ("offered_rate", "offered (req/s)", "rate"), ("goodput", "goodput (req/s)", "rate"),
    ("slo_attainment", "attainment", "pct"), ("drop_rate", "drops", "pct"), ("latency_p50_ms", "p50 (ms)", "ms"),
    ("latency_p99_ms", "p99 (ms)", "ms"), ("mean_batch_size", "mean batch", "f1"),
    ("gpus_used_mean", "GPUs used mean", "f2"), ("gpus_used_peak", "GPUs used peak", "f2"),
    ("busy_gpu_seconds", "busy GPU-s", "f1"), ("gpus_provisioned_mean", "GPUs provisioned", "f2"),
    ("utilisation", "utilisation (busy / provisioned GPU-s)", "pct"),
    ("goodput_over_oracle", "goodput / oracle", "ratio"),
    ("accuracy_served", "accuracy served (weakest app)", "ratio"), ("valid", "valid", "str")]


def build(inputs: list[Path], out: Path, title: str | None = None, reference: str | None = None,
          rate: float | None = None, target: float = TARGET, command: str | None = None) -> Path:
    """Write the report for the runs under `inputs` into `out`; returns the path of report.md."""
    runs = load_runs(inputs)
    searches = find_searches(inputs)
    table = analysis.results_table(runs)
    summary = analysis.summarise(table)
    cap, few = analysis.capacity(table, target), analysis.fewest_slots(table, target)
    systems = sorted(table["system"].unique())
    if reference is not None and reference not in systems:
        raise HarnessError(f"--reference {reference} ran in none of the runs; choose one of: {', '.join(systems)}")
    out = _output_dir(out)
    page = _Page(out, figures.styles(systems), target, {r.name: r for r in runs})

    sources = _sources(inputs)
    title = title or f"Comparison of {', '.join(systems)}"
    intro = [f"{len(runs)} runs from {sources}; systems: {', '.join(systems)}; generated "
             f"{time.strftime('%Y-%m-%d %H:%M')}" + (f" by `{command}`." if command else "."),
             *_honest_notes(table, summary)]
    # The answers first, the figures next, every run's numbers last.
    sections = [_best_section(summary, cap, few, reference, target)]
    if len(cap):
        sections.append(_capacity_section(cap, target))
    if len(few):
        sections.append(_fewest_section(few, target, page))
    sections.append(page.figures_section("Load curves", [
        ("goodput_vs_rate", "Goodput vs offered load",
         "Requests per second finished within their SLO, per system; dotted: every offered request served; "
         "dashed: the oracle bound (all GPUs back to back at the largest batch that fits the SLO). Error bars: "
         "95% confidence intervals over the seeds of a repeated setting.",
         lambda: figures.goodput_vs_rate(summary, page.styles)),
        ("attainment_vs_rate", "SLO attainment and violation rate vs offered load",
         f"Top: share of requests in the window finished within SLO (drops count as violations); bottom: "
         f"violation rate on a log axis. Dotted: the {target:.0%} target.",
         lambda: figures.attainment_vs_rate(summary, page.styles, target)),
        ("latency_vs_rate", "Latency vs offered load",
         "Top: the mean latency (average response time) of the requests served (ok, whatever their latency); "
         "bottom: their p99; both on a log axis.",
         lambda: figures.latency_vs_rate(summary, page.styles)),
        ("throughput_vs_p99", "p99 latency vs throughput",
         "Each point is one offered rate: the requests served per second (ok, whatever their latency) and the "
         "p99 latency of those requests, on a log axis. A curve that turns up sharply marks the system's knee.",
         lambda: figures.throughput_vs_p99(summary, page.styles))]))
    if searches:
        sections.append(_searches_section(searches, page))
    for workload in sorted(summary["workload"].unique()):
        sections.append(page.detail_section(summary, workload, rate, multiple=summary["workload"].nunique() > 1))
    sections.append(_results_section(table, summary))
    sections = [s for s in sections if s.blocks]
    if page.skipped:
        sections.append(Section("Figures skipped", [page.skipped]))
    sections.append(Section("Definitions", [_definitions(target)]))

    table.to_parquet(out / "results.parquet", index=False)
    (out / "report.md").write_text(render.markdown(title, intro, sections))
    (out / "report.html").write_text(render.html(title, intro, _with_run_links(sections, page)))
    return out / "report.md"


def _output_dir(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out '{out}' is a file; give a directory for the report (it is created if missing)")
    try:
        check_writable_dir(out)                     # one that takes no files fails here, not after the figures
    except OSError as exc:
        raise HarnessError(f"cannot write the report directory '{out}' ({exc.strerror}); choose another --out") \
            from None
    for old in out.iterdir():
        if old.suffix in (".png", ".pdf") and old.stem.startswith(FIGURE_STEMS):
            old.unlink()
    return out


def _sources(inputs: list[Path]) -> str:
    """The inputs as the report names them; many beside each other by their common directory."""
    parents = {Path(p).resolve().parent for p in inputs}
    if len(inputs) > 3 and len(parents) == 1:
        return f"{len(inputs)} directories of `{_shown_path(parents.pop())}`"
    return ", ".join(f"`{_shown_path(p)}`" for p in inputs)


def _shown_path(p: Path) -> str:
    """A path as the report shows it: relative to the working directory, else just its name."""
    try:
        return Path(p).resolve().relative_to(Path.cwd().resolve()).as_posix() or "."
    except ValueError:
        return Path(p).resolve().name


def _honest_notes(table: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """What the numbers are of: the clusters in words, emulation, compressed traces, repeats."""
    notes = []
    clusters = sorted(table["cluster"].unique())
    notes.append("Clusters: " + "; ".join(clusters) + ". GPUs are physical GPUs; GPUs used are weighted by each "
                 "slot's share (four busy 25% MPS shares are one GPU).")
    for workload, scale in table[table["time_scale"] != 1][["workload", "time_scale"]].drop_duplicates() \
            .itertuples(index=False):
        notes.append(f"Workload {workload} replays its trace {scale:g}x faster than recorded (workload.time_scale "
                     f"= {scale:g}: {scale:g} s of trace per second of run); its times are run seconds.")
    for workload, day in table[table["day_s"].notna()][["workload", "day_s"]].drop_duplicates() \
            .itertuples(index=False):
        notes.append(f"Workload {workload}'s rate follows a sinusoidal day of {day:g} s (workload.diurnal_period_s), "
                     "not of 24 hours.")
    repeated = summary[summary["n"] > 1]
    if len(repeated):
        notes.append(f"{len(repeated)} settings were run with several seeds (up to {repeated['n'].max()} runs): "
                     "their rows and points show the mean ± the half-width of its 95% confidence interval "
                     "(Student's t over the runs).")
    invalid = table[~table["valid"]]
    if len(invalid):
        notes.append(f"{len(invalid)} of {len(table)} runs are INVALID (see Results); their numbers are shown but "
                     "do not meet the harness's validity rules.")
    return notes


# --- sections -------------------------------------------------------------------------------------------

def _best_section(summary, cap, few, reference: str | None, target: float) -> Section:
    if reference:
        return Section(f"Headline: {reference} against each other system",
                       [analysis.against(reference, summary, cap, few, target) or
                        [f"No setting compares {reference} with another system."]])
    verdicts = analysis.best_at_slo(summary, cap, few, target)
    if not verdicts:
        return Section(f"Best system at SLO attainment >= {target:.0%}")
    scenario = [(k, k) for k in ("workload", "cluster", "runtime") if len({getattr(v, k) for v in verdicts}) > 1]
    same = "; ".join(f"{k} {getattr(verdicts[0], k)}" for k in ("workload", "cluster", "runtime")
                     if (k, k) not in scenario)
    rows = []
    for v in verdicts:
        best = v.best
        runner = v.ranking[len(best)] if len(v.ranking) > len(best) else None
        rows.append([*(text(getattr(v, k)) for k, _ in scenario), text(v.criterion),
                     text(" = ".join(r.system for r in best)), _ranked_cell(best[0], v),
                     text(runner.system if runner else "-"),
                     _ranked_cell(runner, v) if runner else Cell("-", math.nan),
                     text(_relative(runner, best[0]) if runner else "-"), text(v.note)])
    headers = [h for _, h in scenario] + ["judged by", "best", "value", "next", "value", "next / best", "note"]
    numeric = [False] * (len(scenario) + 2) + [True, False, True, True, False]
    if not any(v.note for v in verdicts):
        headers, numeric, rows = headers[:-1], numeric[:-1], [r[:-1] for r in rows]
    table = Table(headers, rows, numeric)
    return Section(f"Best system at SLO attainment >= {target:.0%}", [
        "Which system does best in each scenario, judged by what matters there: the capacity (the highest offered "
        "rate served at the target) where rates were swept, the fewest slots where cluster sizes were searched, "
        "and at one load the fewest GPUs in use among the systems that attain the target (the attainment where "
        "none does). Systems joined by `=` are not distinguishable (within 0.5%, or overlapping 95% confidence "
        "intervals). No system is the reference unless `--reference` names one."
        + (f" Same in every row: {same}." if same else ""),
        table, [_verdict_sentence(v) for v in verdicts]])


MEASURE_FORMATS = {"capacity": "rate", "slots": "num", "gpus": "f2", "attainment": "pct"}


def _ranked_cell(r: analysis.Ranked, v: Verdict) -> Cell:
    """A ranked value: its bound where it is one ('>= 300'), its confidence interval, what decided a tie."""
    if math.isnan(r.value) and v.measure == "slots":
        return Cell("none tried passed", math.nan)
    cell = number(r.value, MEASURE_FORMATS[v.measure], r.ci)
    bound = f"{r.bound} " if r.bound not in ("", "=") else ""
    then = f" ({r.then:,.0f} busy GPU-s)" if math.isfinite(r.then) else ""
    return Cell(f"{bound}{cell.text}{then}", cell.sort)


def _relative(r: analysis.Ranked, best: analysis.Ranked) -> str:
    """`r` against the best: the ratio of their values, or of what decided between equal values."""
    if math.isclose(r.value, best.value, rel_tol=analysis.TIE) and math.isfinite(r.then) and best.then:
        return f"{r.then / best.then:.2f}x the busy GPU-s"
    if math.isfinite(r.value) and math.isfinite(best.value) and best.value:
        return f"{r.value / best.value:.2f}x"
    return ""


def _verdict_sentence(v: Verdict) -> str:
    best = v.best
    names = ", ".join(r.system for r in best[:-1]) + (" and " if len(best) > 1 else "") + best[-1].system
    head = f"{v.workload} on {v.cluster}, {v.runtime}, by {v.criterion}: {names} {_ranked_cell(best[0], v).text}"
    rest = []
    for r in v.ranking[len(best):]:
        relative = _relative(r, best[0])
        rest.append(f"{r.system} {_ranked_cell(r, v).text}" + (f" ({relative})" if relative else ""))
    tail = f"; then {', '.join(rest)}" if rest else ""
    note = f"; {v.note}" if v.note else ""
    return f"{head}{tail}{note}."


def _results_section(table: pd.DataFrame, summary: pd.DataFrame) -> Section:
    shown, same = _varying(summary, RESULT_COLUMNS)
    if ((summary["gpus_provisioned_mean"] - summary["gpus"]).abs() < 1e-9).all():
        shown = [c for c in shown if c[0] != "gpus_provisioned_mean"]      # no autoscaler: all GPUs, always
    blocks = [f"One row per setting; settings run with several seeds are one row (runs > 1). Same in every row: "
              f"{same}." if same else "One row per setting; settings run with several seeds are one row (runs > 1).",
              _display(summary.assign(valid=summary["valid"].map({True: "yes", False: "NO"})),
                       shown + [("runs", "run", "str")])]
    invalid = table[~table["valid"]]
    if len(invalid):
        blocks.append([f"`{r.run}` is INVALID: {r.invalid_reasons}" for r in invalid.itertuples()])
    if (summary["n"] > 1).any():
        columns, _ = _varying(table, [
            ("system", "system", "str"), ("workload", "workload", "str"), ("cluster", "cluster", "str"),
            ("runtime", "runtime", "str"), ("seeds", "seeds", "str"), ("offered_rate", "offered (req/s)", "rate"),
            ("goodput", "goodput (req/s)", "rate"), ("slo_attainment", "attainment", "pct"),
            ("latency_p99_ms", "p99 (ms)", "ms"), ("gpus_used_mean", "GPUs used mean", "f2"),
            ("valid", "valid", "str"), ("run", "run", "str")])
        blocks.append(Section("All runs", [_display(table.assign(valid=table["valid"].map({True: "yes", False: "NO"})),
                                                    columns)]))
    blocks.append("Every run, with all its metrics and seeds: `results.parquet` (`pandas.read_parquet`).")
    return Section("Results", blocks)


def _varying(frame: pd.DataFrame, columns: list[tuple[str, str, str]]):
    """The columns whose values differ between rows, and a sentence naming the values of the others
    (identity columns only: a metric column stays even when constant)."""
    identity = {"workload", "cluster", "runtime", "seeds", "n"}
    shown, same = [], []
    for column, header, kind in columns:
        if column in identity and frame[column].nunique() == 1 and len(frame) > 1:
            value = frame[column].iloc[0]
            if column != "n":
                same.append(f"{header} {value}")
            continue
        shown.append((column, header, kind))
    return shown, "; ".join(same)


def _display(frame: pd.DataFrame, columns: list[tuple[str, str, str]]) -> Table:
    """The table of `columns` (column, header, format), a number's confidence interval beside it; a numeric
    column with no value in any row is left out."""
    columns = [c for c in columns if c[2] == "str" or frame[c[0]].notna().any()]
    rows = []
    for _, r in frame.iterrows():
        row = []
        for column, _, kind in columns:
            value = r[column]
            if column == "runs":
                row.append(text(value[0] if len(value) == 1 else f"{len(value)} runs"))
            elif kind == "str":
                row.append(text(value))
            else:
                row.append(number(value, kind, r.get(f"{column}_ci")))
        rows.append(row)
    return Table([h for _, h, _ in columns], rows, [k != "str" for _, _, k in columns])


def _capacity_section(cap: pd.DataFrame, target: float) -> Section:
    shown, same = _varying(cap, [("system", "system", "str"), ("workload", "workload", "str"),
                                 ("cluster", "cluster", "str"), ("runtime", "runtime", "str"),
                                 ("n", "seeds run", "int")])
    columns = shown + [("bound", "bound", "str"), ("capacity", "capacity (req/s)", "rate"),
                       ("goodput_at_capacity", "goodput there (req/s)", "rate"),
                       ("peak_goodput", "peak goodput (req/s)", "rate"), ("loads", "rates tried", "int")]
    return Section(f"Capacity (highest offered rate with SLO attainment >= {target:.0%})", [
        *([f"Same in every row: {same}."] if same else []), _display(cap, columns),
        "bound `=`: the next rate tried failed; `>=`: no rate tried failed; `<`: even the lowest rate tried "
        "failed. With several seeds, the capacity is found per seed and averaged."])


def _fewest_section(few: pd.DataFrame, target: float, page: "_Page") -> Section:
    columns = [("system", "system", "str"), ("workload", "workload", "str"), ("cluster_name", "cluster", "str"),
               ("runtime", "runtime", "str"), ("offered_rate", "offered (req/s)", "rate"),
               ("fewest", "fewest slots", "num"), ("cluster", "that is", "str"),
               ("max_tried", "largest count tried", "int"), ("counts_tried", "counts tried", "int")]
    return Section(f"Fewest slots (smallest cluster.count with SLO attainment >= {target:.0%})", [
        _display(few, columns),
        "A slot is a whole GPU or a share of one: 'that is' names the cluster at that count (with several "
        "seeds: at the largest count any seed needed).",
        *page.figures_section("", [
            ("fewest_gpus", "Fewest slots needed",
             f"Per workload and offered load: the smallest slot count at which each system keeps SLO attainment >= "
             f"{target:.0%} (from runs at several cluster.count values, e.g. a fewest-GPU search); a dashed outline: "
             "none of the counts tried was enough. Error bars: 95% confidence intervals over seeds.",
             lambda: figures.fewest_slots(few, page.styles, target))]).blocks])


def _searches_section(searches: list[dict], page: "_Page") -> Section:
    rows = [[text(s["kind"]), text(s.get("system", "-")), text(s.get("workload", "-")), text(s.get("cluster", "-")),
             text(s["status"]), text(describe_answer(s)), number(len(s["probes"]), "int"),
             text(s.get("error", ""))] for s in sorted(searches, key=lambda s: (s["kind"], s.get("workload", ""),
                                                                              s.get("system", "")))]
    table = Table(["search", "system", "workload", "cluster", "status", "answer", "probes", "error"], rows,
                  [False] * 5 + [True, True, False])
    section = Section("Searches", [table])
    section.blocks += page.figures_section("", [
        ("search_paths", "Search paths", "Every probe of every search: the value tried and the attainment it got.",
         lambda: figures.search_paths(searches, page.styles))]).blocks
    return section


def _definitions(target: float) -> list[str]:
    """The metric definitions, from harness.metrics (one source of truth), and the report's own terms."""
    doc = metrics.__doc__.split("\n\n", 1)[1]
    items = [" ".join(line.strip() for line in item.splitlines()) for item in doc.strip().split("\n- ")]
    return [i.lstrip("- ") for i in items] + [
        "Throughput: requests served ok per second of the window, whatever their latency.",
        f"Capacity: the highest offered rate at which SLO attainment >= {target:.0%} (harness.search capacity).",
        f"Fewest slots: the smallest cluster.count that serves a workload at >= {target:.0%} attainment "
        "(harness.search fewest_gpus); a slot is a GPU or a share of one.",
        "Seeds: s schedule (arrival times), m mapping (trace functions to models), p payload, r runtime (latency "
        "noise). Runs whose configs differ only by seeds are repeats of one setting: a ± b is the mean and the "
        "half-width of its 95% confidence interval (Student's t with n - 1 degrees of freedom).",
        "Offered rate and goodput are per second of the measurement window; a system's style (colour, marker, "
        "line, hatch) is the same in every figure."]


# --- figures and per-setting detail ----------------------------------------------------------------------

class _Page:
    """What the sections share: the output directory, the systems' styles, the runs, skipped figures."""

    def __init__(self, out: Path, styles: dict, target: float, runs: dict[str, Run]):
        self.out, self.styles, self.target, self.runs = out, styles, target, runs
        self.skipped: list[str] = []

    def figures_section(self, title: str, specs: list) -> Section:
        section = Section(title)
        for stem, heading, caption, make in specs:
            figure = self.figure(stem, heading, caption, make)
            if figure is not None:
                section.blocks.append(Section(heading, [figure]))
        return section

    def figure(self, stem: str, heading: str, caption: str, make) -> render.Figure | None:
        try:
            fig = make()
        except figures.Skip as why:
            self.skipped.append(f"{heading}: skipped, {why}")
            return None
        png, pdf = figures.save(fig, self.out, stem)
        return render.Figure(heading, caption, png, pdf)

    def detail_section(self, summary: pd.DataFrame, workload: str, rate: float | None, multiple: bool) -> Section:
        focus = analysis.focus_setting(summary, workload, rate, self.target)
        section = Section(f"Detail: {focus.label}")
        suffix = f"_{re.sub(r'[^A-Za-z0-9]+', '-', workload)}" if multiple else ""
        where = f" ({workload})" if multiple else ""
        repeats = focus.rows["n"].max() > 1
        section.blocks.append(
            f"One setting per system{', the one every system ran' if not focus.note else ''}"
            f"{' at the highest rate at which at least half of them attain the target' if rate is None else ''}."
            + (" Tables average over its seeds; the per-run figures show its first seed's run." if repeats else "")
            + (f" {focus.note}." if focus.note else ""))
        per_model = analysis.per_model(focus, self.runs)
        if len(per_model):
            models = Section(f"Per model{where}")
            for model, g in per_model.groupby("model", sort=True):
                models.blocks.append(Section(f"{model}{where}", [_display(g, [
                    ("system", "system", "str"), ("n", "runs", "int"), ("offered_rate", "offered (req/s)", "rate"),
                    ("goodput", "goodput (req/s)", "rate"), ("slo_attainment", "attainment", "pct"),
                    ("latency_p99_ms", "p99 (ms)", "ms"), ("queue_mean_ms", "queue mean (ms)", "ms"),
                    ("exec_mean_ms", "execution mean (ms)", "ms")])]))
            section.blocks.append(models)
        split = analysis.breakdown(focus, self.runs)
        latency = Section(f"Where the latency goes{where}")
        if len(split):
            latency.blocks.append(_display(split, [
                ("system", "system", "str"), ("n", "runs", "int"), ("queue_mean_ms", "queue mean (ms)", "ms"),
                ("queue_p99_ms", "queue p99 (ms)", "ms"), ("exec_mean_ms", "execution mean (ms)", "ms"),
                ("exec_p99_ms", "execution p99 (ms)", "ms"), ("other_mean_ms", "rest mean (ms)", "ms")]))
        figure = self.figure(f"latency_breakdown{suffix}", f"Where the latency goes{where}",
                             f"{focus.label}. Requests served in the window: mean time from arrival at the server to "
                             "the start of their batch (queue), in the batch (execution), and the rest (sending, the "
                             "frontend, the answer).",
                             lambda: figures.latency_breakdown(split, self.styles, focus.label))
        latency.blocks += [figure] if figure else []
        if latency.blocks:
            section.blocks.append(latency)
        chosen = self._focus_runs(focus)
        shown = _first_seed_note(focus)
        section.blocks += self.figures_section("", [
            (f"latency_cdf{suffix}", f"Latency{where}",
             f"{focus.label}{shown}. Requests scheduled in the measurement window. Left: CDF of latency; drops never "
             "finish, so a curve tops out at the share served. Right: the tail on log axes, the share of requests "
             f"slower than x times their SLO; where a curve crosses the dashed line at {1 - self.target:.0%} is the "
             "latency the target allows.",
             lambda: figures.latency_cdf(chosen, self.styles, self.target)),
            (f"gpus_over_time{suffix}", f"GPUs used over time{where}",
             f"{focus.label}{shown}. Per 1-s bucket: GPUs that ran at least one batch (solid, shares weighted), busy "
             "GPU-seconds per second (dashed), GPUs provisioned where an autoscaler ran (dotted), the offered load "
             f"(shaded, right axis); a red strip along the top marks buckets whose requests attained less than "
             f"{self.target:.0%}, and each panel's title gives the run's attainment: a system that saves GPUs by "
             "missing its SLO shows it.",
             lambda: figures.gpus_over_time(chosen, self.styles, self.target)),
            (f"batch_sizes{suffix}", f"Batch sizes{where}",
             f"{focus.label}{shown}. Left: CDF of batch sizes (batches that started in the window); right: mean batch "
             "size per model.", lambda: figures.batch_sizes(chosen, self.styles)),
            (f"batch_timeline{suffix}", f"Batch timeline{where}",
             f"{focus.label}{shown}. Each bar is one batch on one slot, coloured and hatched by model.",
             lambda: figures.batch_timeline(chosen))]).blocks
        return section

    def _focus_runs(self, focus: Focus) -> list[figures.FocusRun]:
        chosen = []
        for row in focus.rows.itertuples():
            run = self.runs[row.runs[0]]
            chosen.append(figures.FocusRun(
                system=row.system, label=focus.label, window=(row.window_start, row.window_end), gpus=row.gpus,
                slots=row.slots, attainment=analysis.as_number(run.summary["slo_attainment"]),
                time_scale=row.time_scale,
                requests=run.table("requests", ["t_sched", "status", "latency", "slo"]),
                batches=run.table("batches", ["slot", "model", "size", "t_start", "t_end", "status"]),
                gpus_used=run.table("gpus_used"), schedule=run.table("schedule", ["t_sched"]),
                scaling=run.table("provisioned")))
        return chosen


def _first_seed_note(focus: Focus) -> str:
    repeated = [f"{r.system} ({r.n})" for r in focus.rows.itertuples() if r.n > 1]
    return f"; of the repeated settings, {', '.join(repeated)}, the first run" if repeated else ""


def _with_run_links(sections: list[Section], page: _Page) -> list[Section]:
    """The sections with each run's name linked to its directory (HTML: the run directories are not
    committed, so the Markdown page names them only)."""
    def link(block):
        if isinstance(block, Section):
            return Section(block.title, [link(b) for b in block.blocks])
        if isinstance(block, Table) and "run" in block.headers:
            col = block.headers.index("run")
            rows = [[*r[:col], Cell(r[col].text, link=_run_link(r[col].text, page)), *r[col + 1:]] for r in block.rows]
            return Table(block.headers, rows, block.numeric)
        return block
    return [link(s) for s in sections]


def _run_link(name: str, page: _Page) -> str | None:
    run = page.runs.get(name)
    return None if run is None else Path(os.path.relpath(run.path, page.out.resolve())).as_posix() + "/"
