"""Paper-style figures over run records; each function returns a matplotlib Figure.

Every figure is legible in grayscale and to colour-blind readers: a system
keeps one colour (Paul Tol's "bright" scheme, distinct for up to seven
systems), marker, line style and hatch across all figures; legends show the
hatch wherever bars are drawn. Curves over settings that were repeated with
other seeds show the mean with 95% confidence intervals as error bars. A
figure whose data is absent raises `Skip` with the reason, which the report
prints instead of the figure.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.ticker as mticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend_handler import HandlerTuple  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

# Paul Tol's "bright" qualitative scheme (colour-blind safe, distinct in hue and lightness), then darker
# colours of his "muted" scheme; the grey goes last, the reference lines are grey.
PALETTE = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#332288", "#882255", "#999933",
           "#BBBBBB"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2, 2, 2))]
HATCHES = ["", "//", "\\\\", "xx", "..", "++", "oo", "--", "||", "**"]
PER_SECOND = mticker.EngFormatter(sep="")        # 20000 -> 20k
PERCENT = mticker.FuncFormatter(lambda v, _: f"{100 * v:.3g}%")     # 0.001 -> 0.1%
PLAIN = mticker.FuncFormatter(lambda v, _: f"{v:g}")
FLOOR = 1e-5                                       # a violation rate of 0 is drawn here on the log axis
ERRORBAR = {"capsize": 3, "elinewidth": 1.0}


class Skip(Exception):
    """The figure's data is absent; the message says what is missing and how to get it."""


@dataclass(frozen=True)
class Style:
    color: str
    marker: str
    linestyle: object
    hatch: str

    def line(self) -> dict:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle, "markersize": 6,
                "linewidth": 1.8}

    def bar(self) -> dict:
        return {"facecolor": self.color, "hatch": self.hatch, "edgecolor": "black", "linewidth": 0.6}


def styles(names: Iterable[str]) -> dict[str, Style]:
    """One fixed style per name (sorted), so a system looks the same in every figure."""
    names = sorted(set(names))
    return {n: Style(PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)],
                     HATCHES[i % len(HATCHES)]) for i, n in enumerate(names)}


@contextmanager
def _theme():
    with matplotlib.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.85),
                                "hatch.linewidth": 0.6, "legend.framealpha": 0.9}):
        yield


def _figure(nrows: int, ncols: int, panel=(5.2, 3.8), **kw) -> tuple[Figure, np.ndarray]:
    # A single column gets room for a legend of four entries below it and a suptitle above it.
    fig = Figure(figsize=(max(panel[0] * ncols, 7.0), panel[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save(fig: Figure, out_dir: Path, stem: str) -> list[str]:
    """Write `stem`.png (150 dpi) and `stem`.pdf; returns the file names."""
    names = [f"{stem}.png", f"{stem}.pdf"]
    fig.savefig(Path(out_dir) / names[0], dpi=150)
    fig.savefig(Path(out_dir) / names[1], metadata={"CreationDate": None})   # the same figure, the same file
    return names


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


LEGEND_ROW_CHARS = 110    # about what one row of legend entries holds across a figure
LEGEND_ROW_INCHES = 0.25  # the height of one row of legend entries


def _legend_below(fig: Figure, handles: list, ncols: int | None = None) -> None:
    if handles:
        # Fewer columns for long labels (a system with its options: paris_elsa[dispatch=..., ...]), so that
        # the legend stays within the figure.
        longest = max(len(str(h.get_label())) for h in handles)
        ncols = min(ncols or min(len(handles), 4), max(1, LEGEND_ROW_CHARS // (longest + 6)))
        rows = math.ceil(len(handles) / ncols)
        if rows > 2:                      # the figure grows by the legend's extra rows, not the plots shrink
            fig.set_figheight(fig.get_figheight() + LEGEND_ROW_INCHES * (rows - 2))
        fig.legend(handles=handles, loc="outside lower center", ncols=ncols)


def _system_handles(names: Sequence[str], st: dict[str, Style], bars: bool = False) -> list:
    """Legend entries per system: its line and marker, and its hatched bar where the figure draws bars."""
    if bars:
        return [Patch(label=n, **st[n].bar()) for n in names]
    return [Line2D([], [], label=n, **st[n].line()) for n in names]


def _ci(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    """The confidence half-widths of `column` (NaN for a single run), or None when nothing was repeated."""
    ci = frame.get(f"{column}_ci")
    return None if ci is None or ci.isna().all() else ci.to_numpy(dtype=float)


def panel_title(workload: str, cluster: str, runtime: str) -> str:
    return f"{workload} on {cluster}, {runtime}"


def _panels(summary: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """Settings grouped by scenario (workload, cluster, runtime) where some system ran at >= 2 offered rates;
    none is a figure skipped, with the reason."""
    out = []
    for key, g in summary.groupby(["workload", "cluster", "runtime"], sort=True):
        if g.groupby("system")["load"].nunique().max() >= 2:
            out.append((key, g))
    if not out:
        raise Skip("every setting ran at a single offered rate; sweep workload.rate (e.g. experiment=goodput_vs_rate)")
    return out


def _curves(g: pd.DataFrame):
    """(system, its settings by offered rate) for each system of a panel."""
    return g.sort_values("offered_rate").groupby("system", sort=True)


def goodput_vs_rate(summary: pd.DataFrame, st: dict[str, Style]) -> Figure:
    panels = _panels(summary)
    with _theme():
        fig, axes = _figure(*_grid(len(panels)))
        for ax, (key, g) in zip(axes.flat, panels):
            top = g["offered_rate"].max() * 1.05
            ax.plot([0, top], [0, top], color="0.6", linestyle=":", linewidth=1)
            oracle = g.groupby("load")[["offered_rate", "oracle_goodput"]].max().sort_values("offered_rate")
            ax.plot(oracle["offered_rate"], oracle["oracle_goodput"], color="0.35", linestyle="--", linewidth=1)
            for system, s in _curves(g):
                ax.errorbar(s["offered_rate"], s["goodput"], yerr=_ci(s, "goodput"), **ERRORBAR, **st[system].line())
            ax.set(title=panel_title(*key), xlabel="offered load (req/s)",
                   ylabel="goodput (req/s finished within SLO)", xlim=(0, top), ylim=(0, top))
            ax.xaxis.set_major_formatter(PER_SECOND)
            ax.yaxis.set_major_formatter(PER_SECOND)
        _hide_unused(axes, len(panels))
        fig.suptitle("Goodput vs offered load")
        handles = [Line2D([], [], color="0.6", linestyle=":", label="offered (all served)"),
                   Line2D([], [], color="0.35", linestyle="--", label="oracle bound")]
        _legend_below(fig, _system_handles(sorted(summary["system"].unique()), st) + handles)
    return fig


def attainment_vs_rate(summary: pd.DataFrame, st: dict[str, Style], target: float) -> Figure:
    panels = _panels(summary)
    with _theme():
        fig, axes = _figure(2, len(panels), panel=(5.2, 3.0), sharex="col")
        for col, (key, g) in enumerate(panels):
            top, bottom = axes[0, col], axes[1, col]
            for system, s in _curves(g):
                ci = _ci(s, "slo_attainment")
                top.errorbar(s["offered_rate"], 100 * s["slo_attainment"], yerr=None if ci is None else 100 * ci,
                             **ERRORBAR, **st[system].line())
                bottom.errorbar(s["offered_rate"], np.clip(s["violation_rate"], FLOOR, None),
                                yerr=_ci(s, "violation_rate"), **ERRORBAR, **st[system].line())
            top.axhline(100 * target, color="0.3", linestyle=":", linewidth=1)
            bottom.axhline(1 - target, color="0.3", linestyle=":", linewidth=1)
            top.set(title=panel_title(*key), ylabel="SLO attainment (%)")
            top.set_ylim(max(0.0, 100 * min(g["slo_attainment"].min(), target) - 5), 100.5)
            bottom.set_yscale("log")
            bottom.set_ylim(FLOOR / 2, 1.5)
            bottom.yaxis.set_major_formatter(PERCENT)
            bottom.set(xlabel="offered load (req/s)", ylabel=f"violation rate (log; 0 at {100 * FLOOR:g}%)")
            bottom.xaxis.set_major_formatter(PER_SECOND)
        fig.suptitle("SLO attainment and violation rate vs offered load")
        _legend_below(fig, _system_handles(sorted(summary["system"].unique()), st)
                      + [Line2D([], [], color="0.3", linestyle=":", label=f"{target:.0%} target")])
    return fig


def _log_ms(ax) -> None:
    """The y axis in milliseconds on a log scale, labelled 1, 2, 5, 10, 20, 50, ...: labels stay in range."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(PLAIN)
    ax.yaxis.set_minor_formatter(mticker.NullFormatter())


def latency_vs_rate(summary: pd.DataFrame, st: dict[str, Style]) -> Figure:
    """Per scenario, each system's mean (average response time) and p99 latency of the requests it served."""
    if summary["latency_mean_ms"].isna().all():
        raise Skip("no run records its mean latency (summaries written before latency_mean_ms)")
    panels = _panels(summary)
    with _theme():
        fig, axes = _figure(2, len(panels), panel=(5.2, 3.0), sharex="col")
        for col, (key, g) in enumerate(panels):
            for row, metric in enumerate(("latency_mean_ms", "latency_p99_ms")):
                ax = axes[row, col]
                for system, s in _curves(g):
                    ax.errorbar(s["offered_rate"], s[metric], yerr=_ci(s, metric), **ERRORBAR, **st[system].line())
                _log_ms(ax)
                ax.set(ylabel=("mean" if row == 0 else "p99") + " latency (ms, log)")
            axes[0, col].set(title=panel_title(*key))
            axes[1, col].set(xlabel="offered load (req/s)")
            axes[1, col].xaxis.set_major_formatter(PER_SECOND)
        fig.suptitle("Latency of the requests served vs offered load")
        _legend_below(fig, _system_handles(sorted(summary["system"].unique()), st))
    return fig


def throughput_vs_p99(summary: pd.DataFrame, st: dict[str, Style]) -> Figure:
    """Per scenario, each system's p99 latency against the throughput it served, one point per offered rate."""
    panels = _panels(summary)
    with _theme():
        fig, axes = _figure(*_grid(len(panels)))
        for ax, (key, g) in zip(axes.flat, panels):
            for system, s in _curves(g):
                ax.errorbar(s["throughput"], s["latency_p99_ms"], xerr=_ci(s, "throughput"),
                            yerr=_ci(s, "latency_p99_ms"), **ERRORBAR, **st[system].line())
            _log_ms(ax)
            ax.xaxis.set_major_formatter(PER_SECOND)
            ax.set(title=panel_title(*key), xlabel="throughput (req/s served)", ylabel="p99 latency (ms, log scale)")
            ax.set_xlim(left=0)
        _hide_unused(axes, len(panels))
        fig.suptitle("p99 latency vs throughput (one point per offered rate)")
        _legend_below(fig, _system_handles(sorted(summary["system"].unique()), st))
    return fig


@dataclass
class FocusRun:
    """One system's run at the figure's chosen setting, with what the per-run figures read."""

    system: str
    label: str                          # the setting, for titles
    window: tuple[float, float]
    gpus: int                           # physical GPUs
    slots: int
    attainment: float                   # over the window, from the summary
    time_scale: float = 1.0             # > 1: a trace replayed that many times faster than recorded
    requests: pd.DataFrame | None = None
    batches: pd.DataFrame | None = None
    gpus_used: pd.DataFrame | None = None
    schedule: pd.DataFrame | None = None
    scaling: pd.DataFrame | None = None     # (t, slots, gpus) provisioned; constant without an autoscaler

    def has(self, records: str) -> bool:
        """Whether the run kept `records` (a field above) and they are not empty."""
        table = getattr(self, records)
        return table is not None and len(table) > 0


def _runs_with(focus: Sequence[FocusRun], records: str, missing: str) -> list[FocusRun]:
    """The runs that kept `records`; Skip, naming the `missing` file, when none did."""
    kept = [f for f in focus if f.has(records)]
    if not kept:
        raise Skip(f"no {missing} in the chosen runs")
    return kept


def _common_label(focus: Sequence[FocusRun]) -> str:
    labels = sorted({f.label for f in focus})
    return labels[0] if len(labels) == 1 else "each system's highest-rate run"


def latency_cdf(focus: Sequence[FocusRun], st: dict[str, Style], target: float) -> Figure:
    """Left: the CDF of latency (log axis). Right: its tail, the share of requests slower than x times their
    SLO (log-log; requests never served count as slower than any x), where the target's line crosses."""
    focus = _runs_with(focus, "requests", "requests.parquet")
    with _theme():
        fig, axes = _figure(1, 2)
        left, right = axes[0]
        for f in focus:
            r = f.requests
            r = r[(r["t_sched"] >= f.window[0]) & (r["t_sched"] < f.window[1])]
            ok = r[r["status"] == "ok"]
            x, y = _ecdf((ok["latency"] * 1e3).to_numpy(), len(r))
            _curve(left, x, y, st[f.system])
            x, y = _ecdf((ok["latency"] / ok["slo"]).to_numpy(), len(r))
            _curve(right, x, np.clip(1 - y, FLOOR, None), st[f.system])
        left.set(xscale="log", xlabel="latency (ms, log scale)", ylabel="fraction of requests (drops never finish)",
                 ylim=(0, 1.01), title="Latency CDF")
        right.set(xscale="log", yscale="log", xlabel="latency / SLO (log scale)",
                  ylabel="fraction slower (log scale)", ylim=(FLOOR / 2, 1.5), title="Tail: share slower than x")
        right.axvline(1.0, color="0.3", linestyle=":", linewidth=1.2)
        right.axhline(1 - target, color="0.3", linestyle="--", linewidth=1)
        right.text(1.03, 0.97, "SLO", transform=right.get_xaxis_transform(), color="0.3", va="top")
        right.yaxis.set_major_formatter(PERCENT)
        left.xaxis.set_major_formatter(PLAIN)
        right.xaxis.set_major_formatter(PLAIN)
        fig.suptitle(f"Latency per system, {_common_label(focus)}")
        _legend_below(fig, _system_handles([f.system for f in focus], st)
                      + [Line2D([], [], color="0.3", linestyle="--", label=f"{1 - target:.0%} of requests "
                                f"(the {target:.0%} target)")])
    return fig


def _curve(ax, x: np.ndarray, y: np.ndarray, s: Style) -> None:
    ax.step(x, y, where="post", color=s.color, linestyle=s.linestyle, linewidth=1.8)
    # Markers at ten points along the curve, so the lines stay apart in grayscale.
    idx = np.linspace(0, len(x) - 1, 10).astype(int)[1:-1] if len(x) > 10 else []
    ax.plot(x[idx], y[idx], linestyle="none", marker=s.marker, color=s.color)


def _ecdf(values: np.ndarray, total: int, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """ECDF of `values` over `total` requests (the rest never finish), thinned to about 2 x `points` steps:
    evenly spaced, and log-spaced from the end so that the tail keeps its shape on a log axis."""
    x = np.sort(values)
    if not len(x):
        return np.array([np.nan]), np.array([0.0])
    y = np.arange(1, len(x) + 1) / total
    if len(x) > 2 * points:
        idx = np.concatenate([np.linspace(0, len(x) - 1, points), len(x) - np.geomspace(1, len(x), points)])
        idx = np.unique(idx.astype(int))
        x, y = x[idx], y[idx]
    return x, y


def gpus_over_time(focus: Sequence[FocusRun], st: dict[str, Style], target: float) -> Figure:
    """Per system: GPUs used and busy per 1-s bucket against the offered load, buckets whose requests fell
    below the attainment target shaded, and the run's attainment in its title."""
    focus = _runs_with(focus, "gpus_used", "gpus_used.parquet")
    scaled = loaded = missed = False
    with _theme():
        cols = 1 if len(focus) <= 6 else 2
        fig, axes = _figure(math.ceil(len(focus) / cols), cols, panel=(9.0, 2.6), sharex=True, sharey=True)
        for ax, f in zip(axes.flat, focus):
            g = f.gpus_used.sort_values("t")
            t = g["t"].to_numpy()
            bucket = float(np.median(np.diff(t))) if len(t) > 1 else f.window[1] - f.window[0]
            edges = np.append(t, t[-1] + bucket)
            if f.has("schedule"):    # else no schedule.parquet kept: no load to draw
                _offered_load(ax, f.schedule["t_sched"], edges, bucket)
                loaded = True
            if f.has("requests"):
                missed |= _shade_missed(ax, f.requests, f.window, bucket, target)
            s = st[f.system]
            ax.step(edges, np.append(g["gpus_used"], g["gpus_used"].iloc[-1]), where="post", color=s.color,
                    linewidth=2.0, linestyle="-")
            ax.step(edges, np.append(g["busy_gpu_seconds"], g["busy_gpu_seconds"].iloc[-1]) / bucket, where="post",
                    color="black", linewidth=1.2, linestyle="--")
            if f.scaling is not None and f.scaling["gpus"].nunique() > 1:
                sc = f.scaling.sort_values("t")
                t_sc = np.clip(np.append(sc["t"], edges[-1]), edges[0], edges[-1])     # within the window shown
                ax.step(t_sc, np.append(sc["gpus"], sc["gpus"].iloc[-1]), where="post", color="0.3",
                        linewidth=1.6, linestyle=":")
                scaled = True
            ax.set_ylim(0, f.gpus * 1.12)            # room for the strip above the curves
            ax.set_ylabel("GPUs")
            ax.set_title(f"{f.system}: {f.attainment:.1%} SLO attainment; {g['gpus_used'].mean():.2f} GPUs used on "
                         f"average, peak {g['gpus_used'].max():.2f} of {f.gpus}; "
                         f"{g['busy_gpu_seconds'].sum():,.0f} busy GPU-s", loc="left", fontsize="medium")
        scale = focus[0].time_scale
        for ax in axes[-1]:
            ax.set_xlabel("time since the start of the run (s)" + (
                f"; the trace runs {scale:g}x faster than recorded (1 s = {scale:g} s of trace)" if scale != 1 else ""))
        _hide_unused(axes, len(focus))
        against = " against the offered load" if loaded else ""
        compressed = f", trace time compressed {scale:g}x" if scale != 1 else ""
        fig.suptitle(f"GPUs used over time{against}, {_common_label(focus)}{compressed}")
        handles = [
            Line2D([], [], color="0.2", linewidth=2.0, label=f"GPUs used (ran a batch in the {bucket:g}-s bucket; "
                                                             "shares weighted)"),
            Line2D([], [], color="black", linewidth=1.2, linestyle="--", label="busy GPUs (busy GPU-s per s)")]
        if scaled:
            handles.append(Line2D([], [], color="0.3", linewidth=1.6, linestyle=":", label="GPUs provisioned"))
        if loaded:
            handles.append(Patch(facecolor="0.85", edgecolor="0.6", hatch="..", label="offered load (req/s, right "
                                                                                     "axis)"))
        if missed:
            handles.append(Patch(facecolor=MISSED, edgecolor="none", label=f"{bucket:g}-s bucket below {target:.0%} "
                                                                          "attainment (top strip)"))
        _legend_below(fig, handles, ncols=2)
    return fig


MISSED = "#CC3311"          # the strip over the buckets whose requests missed the attainment target


def _offered_load(ax, t_sched: pd.Series, edges: np.ndarray, bucket: float) -> None:
    load = ax.twinx()
    counts, _ = np.histogram(t_sched, bins=edges)
    load.fill_between(edges, np.append(counts, counts[-1]) / bucket, step="post", color="0.85", edgecolor="0.6",
                      linewidth=0.8, hatch="..")
    load.set_ylim(0, max(counts.max() / bucket, 1) * 1.1)
    load.yaxis.set_major_formatter(PER_SECOND)
    load.set_ylabel("offered (req/s)", color="0.4")
    load.grid(False)
    ax.set_zorder(load.get_zorder() + 1)
    ax.patch.set_visible(False)


def _shade_missed(ax, requests: pd.DataFrame, window: tuple[float, float], bucket: float, target: float) -> bool:
    """Mark each bucket whose requests (by scheduled time) attained less than `target` with a strip along the
    panel's top, clear of the curves and the load; whether any did."""
    from harness.report.analysis import attainment_per_bucket

    per = attainment_per_bucket(requests, window, bucket)
    low = per[per["attainment"] < target]
    for t in low["t"]:
        ax.axvspan(t, t + bucket, ymin=0.95, ymax=1.0, facecolor=MISSED, edgecolor="none")
    return len(low) > 0


def fewest_slots(fewest: pd.DataFrame, st: dict[str, Style], target: float) -> Figure:
    """Bars: per (workload, offered load) and system, the fewest slots found (mean and 95% CI over seeds)."""
    if fewest is None or not len(fewest):
        raise Skip("no workload ran at >= 2 slot counts; run a fewest-GPU search (python -m harness.search "
                   "fewest_gpus ...) or sweep cluster.count")
    systems = sorted(fewest["system"].unique())
    cases = fewest[["workload", "cluster_name", "offered_rate"]].drop_duplicates() \
        .sort_values(["workload", "offered_rate"])
    with _theme():
        fig, axes = _figure(1, 1, panel=(max(5.0, 1.2 * len(cases) * max(len(systems), 2) / 2 + 2), 4.2))
        ax = axes[0, 0]
        width = min(0.8 / len(systems), 0.25)
        found = fewest["fewest"].dropna()
        # A count that was never enough is drawn up to the axis top, so it does not flatten the others.
        top = max(float(found.max()) * 1.4 if len(found) else float(fewest["max_tried"].max()), 2.0)
        for i, system in enumerate(systems):
            for j, case in enumerate(cases.itertuples(index=False)):
                row = fewest[(fewest["system"] == system) & (fewest["workload"] == case.workload)
                             & (fewest["cluster_name"] == case.cluster_name)
                             & (fewest["offered_rate"] == case.offered_rate)]
                if not len(row):
                    continue
                x = j + width * (i - (len(systems) - 1) / 2)
                row = row.iloc[0]
                s = st[system]
                if pd.isna(row["fewest"]):
                    ax.bar(x, top, width, facecolor="none", edgecolor=s.color, hatch=s.hatch, linestyle="--")
                    ax.annotate(f">{row['max_tried']:g}", (x, top * 0.97), ha="center", va="top", fontsize="small",
                                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
                else:
                    ci = row["fewest_ci"] if pd.notna(row["fewest_ci"]) else None
                    ax.bar(x, row["fewest"], width, yerr=ci, **s.bar(), error_kw=ERRORBAR)
                    ax.annotate(f"{row['fewest']:.3g}", (x, row["fewest"] + (ci or 0)), ha="center", va="bottom",
                                fontsize="small")
        ax.set_xticks(range(len(cases)), [f"{c.workload}, {c.cluster_name}\n{c.offered_rate:,.0f} req/s"
                                          for c in cases.itertuples(index=False)])
        ax.set_ylim(0, top)
        ax.yaxis.set_major_locator(mticker.MaxNLocator(integer=True))
        ax.set_ylabel(f"fewest slots (cluster.count) with\nSLO attainment >= {target:.0%}")
        ax.set_title("Fewest slots needed per workload")
        handles = _system_handles(systems, st, bars=True)
        if fewest["fewest"].isna().any():
            handles.append(Patch(facecolor="none", edgecolor="0.3", linestyle="--", label="none of the counts tried"))
        _legend_below(fig, handles)
    return fig


def latency_breakdown(breakdown: pd.DataFrame, st: dict[str, Style], label: str) -> Figure:
    """Per system, where the mean latency of a served request went: waiting in the queue (solid), running in
    its batch (hatched), the rest (grey: sending, the frontend, the answer), with 95% CIs over seeds."""
    if breakdown is None or not len(breakdown):
        raise Skip("no requests.parquet with queue and execution times in the chosen runs")
    parts = [("queue_mean_ms", "waiting in the queue"), ("exec_mean_ms", "running in its batch"),
             ("other_mean_ms", "the rest (send, frontend, answer)")]
    with _theme():
        fig, axes = _figure(1, 1, panel=(9.0, 0.6 * len(breakdown) + 1.6))
        ax = axes[0, 0]
        y = np.arange(len(breakdown))
        left = np.zeros(len(breakdown))
        for k, (column, _) in enumerate(parts):
            values = breakdown[column].fillna(0).to_numpy()
            for i, row in enumerate(breakdown.itertuples()):
                s = st[row.system]
                face = "0.8" if k == 2 else s.color
                ax.barh(y[i], values[i], 0.6, left=left[i], facecolor=face, hatch="//" if k == 1 else "",
                        edgecolor="black", linewidth=0.6)
            ci = _ci(breakdown, column)
            if ci is not None:
                ax.errorbar(left + values, y, xerr=ci, fmt="none", ecolor="black", **ERRORBAR)
            left += values
        ax.set_xlim(0, left.max() * 1.08)       # room for the longest bar's error bar
        ax.set_yticks(y, breakdown["system"])
        ax.invert_yaxis()
        ax.set(xlabel="mean latency of requests served (ms)", title=f"Where the latency goes, {label}")
        handles = [Patch(facecolor="white", edgecolor="black", label=parts[0][1]),
                   Patch(facecolor="white", edgecolor="black", hatch="//", label=parts[1][1]),
                   Patch(facecolor="0.8", edgecolor="black", label=parts[2][1])]
        _legend_below(fig, handles, ncols=3)
    return fig


def batch_sizes(focus: Sequence[FocusRun], st: dict[str, Style]) -> Figure:
    focus = _runs_with(focus, "batches", "batches")
    with _theme():
        fig, axes = _figure(1, 2)
        left, right = axes[0]
        per_model = []
        for f in focus:
            b = _ran_in_window(f.batches, f.window)
            if not len(b):
                continue
            s = st[f.system]
            x, y = _ecdf(b["size"].to_numpy(), len(b))
            left.step(x, y, where="post", color=s.color, linestyle=s.linestyle, linewidth=1.8)
            left.plot([b["size"].mean()], [0.5], marker=s.marker, color=s.color, linestyle="none", markersize=8)
            per_model.append(b.groupby("model")["size"].mean().rename(f.system))
        left.set(xscale="log", xlabel="batch size (log scale)", ylabel="fraction of batches", ylim=(0, 1.01),
                 title="Batch-size CDF (marker: mean)")
        left.xaxis.set_major_formatter(PLAIN)
        if per_model:
            means = pd.concat(per_model, axis=1)
            y = np.arange(len(means))
            height = 0.8 / means.shape[1]
            for i, system in enumerate(means.columns):
                right.barh(y - 0.4 + height * (i + 0.5), means[system], height, **st[system].bar())
            right.set_yticks(y, means.index)
            right.invert_yaxis()
        right.set(xlabel="mean batch size (requests)", title="Mean batch size per model")
        fig.suptitle(f"Batch sizes per system, {_common_label(focus)}")
        # Each entry shows the system's line and marker (left panel) beside its hatched bar (right panel).
        fig.legend([(Line2D([], [], **st[f.system].line()), Patch(**st[f.system].bar())) for f in focus],
                   [f.system for f in focus], loc="outside lower center", ncols=min(len(focus), 4),
                   handler_map={tuple: HandlerTuple(ndivide=None, pad=0.6)}, handlelength=4)
    return fig


def _ran_in_window(batches: pd.DataFrame, window: tuple[float, float]) -> pd.DataFrame:
    return batches[(batches["status"] == "ok") & (batches["t_start"] >= window[0]) & (batches["t_start"] < window[1])]


def timeline_window(focus: Sequence[FocusRun], batches_per_slot: int = 25) -> tuple[float, float]:
    """A window in the middle of the measurement window, long enough for ~`batches_per_slot` batches per slot."""
    durations = [(_ran_in_window(f.batches, f.window).eval("t_end - t_start")).median()
                 for f in focus if f.has("batches")]
    durations = [d for d in durations if pd.notna(d)]
    length = float(np.clip(np.median(durations) * batches_per_slot, 0.005, 5.0)) if durations else 0.1
    start, end = focus[0].window
    mid = (start + end) / 2
    return mid, mid + length


def batch_timeline(focus: Sequence[FocusRun], window: tuple[float, float] | None = None,
                   max_rows: int = 24) -> Figure:
    """One row per slot, one bar per batch, over `window` (default: timeline_window).

    About `max_rows` slot rows in all: each system shows its first max_rows / systems slots (4 to 16).
    """
    focus = _runs_with(focus, "batches", "batches")
    max_slots = int(np.clip(max_rows // len(focus), 4, 16))
    t0, t1 = window or timeline_window(focus)
    models = sorted(set().union(*(set(f.batches["model"].unique()) for f in focus)))
    palette = sns.color_palette("Set2" if len(models) <= 8 else "Set3", len(models))
    model_style = {m: (palette[i], HATCHES[(i + 1) % len(HATCHES)]) for i, m in enumerate(models)}
    rows = [min(f.slots, max_slots) for f in focus]
    with _theme():
        fig = Figure(figsize=(10, 1.0 + sum(0.32 * r + 0.6 for r in rows)), layout="constrained")
        axes = fig.subplots(len(focus), 1, sharex=True, squeeze=False,
                            gridspec_kw={"height_ratios": [r + 1 for r in rows]})[:, 0]
        for ax, f, n in zip(axes, focus, rows):
            b = f.batches[(f.batches["status"] == "ok") & (f.batches["t_end"] > t0) & (f.batches["t_start"] < t1)
                          & (f.batches["slot"] < n)]
            for (slot, model), g in b.groupby(["slot", "model"]):
                color, hatch = model_style[model]
                start = (g["t_start"].to_numpy() - t0) * 1e3
                ax.broken_barh(list(zip(start, (g["t_end"] - g["t_start"]).to_numpy() * 1e3)), (slot - 0.4, 0.8),
                               facecolors=color, edgecolors="black", linewidth=0.4, hatch=hatch)
            ax.set_yticks(range(n), [f"slot {i}" for i in range(n)])
            ax.set_ylim(n - 0.5, -0.5)
            ax.grid(axis="y", visible=False)
            shown = f" (first {n} of {f.slots} slots)" if n < f.slots else ""
            ax.set_title(f"{f.system}{shown}: {len(b)} batches", loc="left", fontsize="medium")
        axes[-1].set_xlim(0, (t1 - t0) * 1e3)
        axes[-1].set_xlabel(f"time since t = {t0:.3f} s (ms)")
        fig.suptitle(f"Batches on each slot over {1e3 * (t1 - t0):.0f} ms, {_common_label(focus)}")
        _legend_below(fig, [Patch(facecolor=model_style[m][0], hatch=model_style[m][1], edgecolor="black", label=m)
                            for m in models], ncols=min(len(models), 5))
    return fig


def search_paths(searches: Sequence[dict], st: dict[str, Style]) -> Figure:
    """Each search's probes: the value tried at each step (top) and the attainment it got (bottom).

    Filled markers passed (attainment >= target), hollow ones failed; the dotted line is the answer.
    """
    searches = [s for s in searches if s.get("probes")]
    if not searches:
        raise Skip("no search.json with probes found")
    panels = sorted({(s["kind"], s.get("workload", "")) for s in searches})
    names = sorted({_search_name(s) for s in searches})
    st = {**styles(names), **st}
    target = searches[0].get("target", 0.99)
    with _theme():
        fig, axes = _figure(2, len(panels), panel=(6.0, 3.4))
        for col, (kind, workload) in enumerate(panels):
            path, attained = axes[0, col], axes[1, col]
            values = []
            for s in (s for s in searches if (s["kind"], s.get("workload", "")) == (kind, workload)):
                style = st[_search_name(s)]
                steps = np.arange(1, len(s["probes"]) + 1)
                v = np.array([p["value"] for p in s["probes"]], dtype=float)
                a = np.array([p["attainment"] for p in s["probes"]], dtype=float)
                values.extend(v)
                path.plot(steps, v, color=style.color, linestyle=style.linestyle, linewidth=1.2)
                order = np.argsort(v)
                attained.plot(v[order], 100 * a[order], color=style.color, linestyle=style.linestyle, linewidth=1)
                for x, p in zip(steps, s["probes"]):
                    face = style.color if p["passed"] else "white"
                    for ax, xy in ((path, (x, p["value"])), (attained, (p["value"], 100 * p["attainment"]))):
                        ax.plot(*[[c] for c in xy], marker=style.marker, markersize=7, color=style.color,
                                markerfacecolor=face, linestyle="none")
                if s.get("answer") is not None:
                    path.axhline(s["answer"], color=style.color, linestyle=":", linewidth=1)
            # A capacity search of a trace varies its rate_scale, a multiplier: no req/s on that axis.
            scaled = any(s.get("knob") == "workload.rate_scale" for s in searches
                         if (s["kind"], s.get("workload", "")) == (kind, workload))
            unit = ("slots (cluster.count)" if kind == "fewest_gpus" else
                    "rate_scale (x the trace's rate)" if scaled else "offered load (req/s)")
            what = "Capacity search" if kind == "capacity" else "Fewest-slots search"
            if values and max(values) / max(min(values), 1e-9) > 20:
                for ax, axis in ((path, "y"), (attained, "x")):
                    getattr(ax, f"set_{axis}scale")("log", base=2 if kind == "fewest_gpus" else 10)
            on = f", {workload}" if workload else ""
            path.set(xlabel="probe", ylabel=unit, title=f"{what}{on}: value per probe (dotted: answer)")
            path.xaxis.set_major_locator(mticker.MaxNLocator(integer=True))
            attained.axhline(100 * target, color="0.3", linestyle=":", linewidth=1)
            attained.set(xlabel=unit, ylabel="SLO attainment (%)", title="Attainment at each probe")
            for axis in (path.yaxis, attained.xaxis):
                if kind == "capacity":
                    axis.set_major_formatter(PLAIN if scaled else PER_SECOND)
                else:
                    if axis.get_scale() == "linear":
                        axis.set_major_locator(mticker.MaxNLocator(integer=True))
                    axis.set_major_formatter(PLAIN)
        handles = [Line2D([], [], label=n, **st[n].line()) for n in names]
        handles += [Line2D([], [], marker="o", color="0.3", linestyle="none", label=f"passed (>= {target:.0%})"),
                    Line2D([], [], marker="o", color="0.3", markerfacecolor="white", linestyle="none",
                           label="failed")]
        fig.suptitle("Search paths")
        _legend_below(fig, handles)
    return fig


def _search_name(search: dict) -> str:
    return str(search.get("system") or search.get("label") or "search")


FIDELITY_FLOOR = 0.8      # a ratio below this is drawn at it, its value written on the bar


def fidelity(table: pd.DataFrame, st: dict[str, Style], target: float) -> Figure:
    """Real over emulated goodput (mean over seeds, 95% CI) and real over sim, per system, a panel per cluster
    and load; the band is the fidelity target. `table`: benchmarks/real_vs_emulated.py's table."""
    panels = list(table.groupby(["cluster", "load"], sort=True))
    with _theme():
        fig, axes = _figure(*_grid(len(panels), max_cols=2))
        for ax, ((cluster, load), g) in zip(axes.flat, panels):
            g = g.sort_values("system").reset_index(drop=True)
            x = np.arange(len(g))
            ax.axhspan(1 - target, 1 + target, color="0.9", zorder=0)
            ax.axhline(1.0, color="0.4", linewidth=0.8, zorder=1)
            for offset, column, ci, hatch in ((-0.2, "real / emulated", "95% CI +-", ""),
                                              (0.2, "real / sim", None, "//")):
                if column not in g or g[column].isna().all():
                    continue
                ratio = g[column].to_numpy(dtype=float)
                shown = np.maximum(ratio, FIDELITY_FLOOR)
                err = g[ci].to_numpy(dtype=float) if ci else None
                ax.bar(x + offset, shown - FIDELITY_FLOOR, bottom=FIDELITY_FLOOR, width=0.38, yerr=err,
                       error_kw=ERRORBAR, color=[st[s].color for s in g["system"]], hatch=hatch,
                       edgecolor="black", linewidth=0.6, zorder=2)
                for xi, r in zip(x + offset, ratio):
                    if r < FIDELITY_FLOOR:
                        ax.annotate(f"{r:.2f}", (xi, FIDELITY_FLOOR), xytext=(0, 3), textcoords="offset points",
                                    ha="center", fontsize=7)
            # One short line each (name, seeds, validity): six systems' labels side by side must not overlap.
            ax.set_xticks(x, [f"{s}\n{n} seed{'s' * (n != 1)}" + "\ninvalid run" * (w == "invalid run")
                              for s, n, w in zip(g["system"], g["seeds"], g["within 5%"])], fontsize=8)
            ax.set(title=f"{cluster}, {load} load", ylabel="real / emulated or sim goodput",
                   ylim=(FIDELITY_FLOOR, max(1.15, float(np.nanmax(g[["real / emulated"]].to_numpy())) + 0.05)))
            ax.yaxis.set_major_formatter(PLAIN)
        _hide_unused(axes, len(panels))
        fig.suptitle("Real GPU against its emulation and the sim")
        _legend_below(fig, [Patch(facecolor="white", edgecolor="black", label="real / emulated (95% CI)"),
                            Patch(facecolor="white", edgecolor="black", hatch="//", label="real / sim"),
                            Patch(facecolor="0.9", label=f"within {target:.0%}")])
    return fig
