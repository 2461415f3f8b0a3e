"""Finding run directories and reading them: summary, config and record tables, in today's schema.

A run directory is one that holds summary.json. Runs recorded before the
records' schema 2 (no `schema_version` in the summary) read as schema 2:
their slot column `gpu` becomes `slot`, their slot counts (then called GPUs)
become slots, and GPUs are share-weighted as today (four 25% MPS shares
busy = one GPU); their provisioned timeline comes from scaling.parquet.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from harness import metrics
from harness.errors import HarnessError
from harness.gpu.partitions import Partition, parse_partition
from harness.placement import Placement
from harness.records import SCHEMA_VERSION
from workloads.config import is_finite_number

SUMMARY_KEYS = ("system", "workload", "cluster", "runtime", "offered_rate", "goodput", "slo_attainment",
                "violation_rate", "drop_rate", "latency_p50_ms", "latency_p99_ms", "mean_batch_size",
                "gpus_total", "gpus_used_mean", "gpus_used_peak", "busy_gpu_seconds", "window_s", "validity")
# What the report reads from a summary is checked once, when a run is loaded (check_summary), so that a damaged
# or hand-edited summary is refused in one line rather than failing, or passing for a result, in the report.
# The metrics the report averages over repeats; null where nothing was measured (no request in the window).
SUMMARY_METRICS = ("offered_rate", "goodput", "slo_attainment", "violation_rate", "drop_rate", "error_rate",
                   "latency_mean_ms", "latency_p50_ms", "latency_p99_ms", "latency_p99.9_ms", "mean_batch_size",
                   "gpus_used_mean", "gpus_used_peak", "slots_used_mean", "busy_gpu_seconds",
                   "gpus_provisioned_mean", "utilisation", "oracle_goodput", "goodput_over_oracle",
                   "send_lag_p99_ms")
FRACTIONS = ("slo_attainment", "violation_rate", "drop_rate", "error_rate")
PER_MODEL_METRICS = ("offered_rate", "goodput", "slo_attainment", "latency_p99_ms")


@dataclass
class Run:
    path: Path
    name: str                                   # shown in reports: the path below the input it was found in
    summary: dict                               # in schema 2 (see the module doc)
    config: dict = field(default_factory=dict)

    @property
    def schema(self) -> int:
        return int(self.summary.get("schema_version") or 1)

    def has(self, name: str) -> bool:
        """Whether the run kept the record table `name`."""
        return (self.path / f"{name}.parquet").is_file()

    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
        """A record table (requests, batches, gpus_used, ...) or None where the run did not keep it;
        `provisioned` is the slots and GPUs provisioned over time (t, slots, gpus)."""
        if name == "provisioned":
            return self._provisioned()
        path = self.path / f"{name}.parquet"
        if not path.exists():
            return None
        try:
            table = pd.read_parquet(path)
        except Exception as exc:
            raise HarnessError(f"cannot read '{self.name}/{path.name}': {exc}; re-run that run or leave it out") \
                from None
        if self.schema == 1:
            table = _schema1_table(name, table, _partition(self.summary))
        return table[columns] if columns is not None else table

    def _provisioned(self) -> pd.DataFrame | None:
        events, slots = self.table("slot_events"), self.table("slots")
        if events is not None and slots is not None:
            return metrics.provisioned_timeline(events, slots)
        old = self.table("scaling")
        return None if old is None else old.assign(gpus=old["slots"] * _partition(self.summary).share)


def find_runs(paths: list[Path]) -> list[tuple[Path, str]]:
    """(run directory, display name) for every directory holding summary.json under `paths`."""
    found: dict[Path, str] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise HarnessError(f"'{p}' does not exist; give run, sweep or search directories (e.g. results/sweeps/...)")
        if not p.is_dir():
            raise HarnessError(f"'{p}' is a file; give the directory that holds it (a run, sweep or search)")
        if (p / "summary.json").is_file():
            found.setdefault(p.resolve(), p.resolve().name)
            continue
        for s in sorted(p.rglob("summary.json")):
            found.setdefault(s.parent.resolve(), s.parent.relative_to(p).as_posix())
    if not found:
        raise HarnessError(f"no runs found under {', '.join(map(str, paths))}; give directories that hold a "
                           "summary.json (a run) or runs (a sweep, e.g. results/sweeps/<time>)")
    return sorted(found.items(), key=lambda kv: kv[1])


def load_run(path: Path, name: str | None = None) -> Run:
    name = name or Path(path).name
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read '{name}/summary.json': {exc}; re-run that run or leave it out") from None
    check_summary(summary, name)
    config = {}
    if (path / "config.yaml").is_file():
        from omegaconf import OmegaConf
        try:
            config = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"))
        except Exception as exc:
            problem = _yaml_problem(exc)
        else:
            problem = _config_problem(config)
        if problem:
            raise HarnessError(f"cannot read '{name}/config.yaml': {problem}; re-run that run or leave it out")
    if not summary.get("schema_version"):
        summary = _schema1_summary(summary, config)
    return Run(Path(path), name, summary, config)


def check_summary(summary, name: str) -> None:
    """HarnessError unless `summary` holds what the report reads, of the right kinds, in a schema this code knows."""
    missing = [k for k in SUMMARY_KEYS if not isinstance(summary, dict) or k not in summary]
    if missing:
        raise HarnessError(f"'{name}/summary.json' lacks {', '.join(missing)}; re-run that run or leave it out")
    version = summary.get("schema_version")
    if is_finite_number(version) and version > SCHEMA_VERSION:
        raise HarnessError(f"'{name}/summary.json' is of schema {version}, newer than this harness reads (up to "
                           f"{SCHEMA_VERSION}); upgrade the harness (git pull) to report it, or leave that run out")
    problem = _summary_problem(summary)
    if problem:
        raise HarnessError(f"cannot read '{name}/summary.json': {problem}; re-run that run or leave it out")


def _is_metric(v) -> bool:
    """A measured value: a number >= 0, or null (NaN) where nothing was measured."""
    return v is None or (isinstance(v, float) and math.isnan(v)) or (is_finite_number(v) and v >= 0)


def _is_fraction(v) -> bool:
    return _is_metric(v) and (v is None or not v > 1)          # (NaN > 1 is false: nothing measured)


def _is_count(v) -> bool:
    return is_finite_number(v) and v >= 0 and v == int(v)


# (fields, what each must be, its test), for those of the fields a summary holds
_FIELDS = [
    (("system", "workload", "cluster", "runtime"), "a name", lambda v: isinstance(v, str)),
    (("cluster_label", "partition", "gpu_type"), "a name (or null)", lambda v: v is None or isinstance(v, str)),
    (("emulated", "autoscaler"), "true or false", lambda v: isinstance(v, bool)),
    (("seeds", "status_counts", "per_model", "accuracy_served", "provenance"), "a mapping",
     lambda v: isinstance(v, dict)),
    (SUMMARY_METRICS + ("slots_provisioned_mean",), "a number >= 0 (or null)", _is_metric),   # (last: schema 1)
    (FRACTIONS, "a fraction in [0, 1] (or null)", _is_fraction),
    (("gpus_total", "slots_total"), "a whole number >= 0", _is_count),
    (("schema_version",), f"a schema number (1 to {SCHEMA_VERSION})", lambda v: v is None or (_is_count(v) and v >= 1)),
    (("window_s",), "[start, end] in seconds",
     lambda v: isinstance(v, list) and len(v) == 2 and all(is_finite_number(t) for t in v)
     and v[0] <= v[1]),
    (("validity",), "{valid: true|false, reasons: [...]}",
     lambda v: isinstance(v, dict) and isinstance(v.get("valid"), bool) and isinstance(v.get("reasons", []), list)),
]


def _inner_fields(s: dict) -> list:
    """As _FIELDS, for what the mappings hold (once they are known to be mappings)."""
    overrides = s.get("provenance", {}).get("overrides", [])
    return [
        *((f"per_model.{model}", m, f"a mapping of {', '.join(PER_MODEL_METRICS)} (numbers >= 0 or null)",
           lambda m: isinstance(m, dict) and all(_is_metric(m.get(k)) for k in PER_MODEL_METRICS))
          for model, m in s.get("per_model", {}).items()),
        *((f"{d}.{k}", v, "a number >= 0 (or null)", _is_metric)
          for d in ("status_counts", "accuracy_served") for k, v in s.get(d, {}).items()),
        ("provenance.overrides", overrides, "a list of overrides",
         lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v)),
    ]


def _summary_problem(s: dict) -> str | None:
    """What is wrong with the fields of `s` the report reads (absent optional ones are fine), or None."""
    return _problem((k, s[k], what, ok) for keys, what, ok in _FIELDS for k in keys if k in s) \
        or _problem(_inner_fields(s))


def _config_problem(config) -> str | None:
    """As _summary_problem, for what the report reads from a run's config.yaml: the workload's load knobs."""
    def mapping(v):
        return v is None or isinstance(v, dict)

    def knobs():
        workload = config.get("workload") or {}
        return [(f"workload.{k}", workload[k], "a number", is_finite_number)
                for k in ("rate", "rate_scale", "time_scale", "diurnal_period_s") if k in workload]

    return _problem([("its top level", config, "a mapping", lambda v: isinstance(v, dict))]) \
        or _problem((k, config.get(k), "a mapping", mapping) for k in ("workload", "autoscaler")) \
        or _problem(knobs())


def _problem(fields) -> str | None:
    """The first of (name, value, what it must be, its test) whose value fails its test, in words."""
    for name, value, what, ok in fields:
        if not ok(value):
            return f"{name} is {reprlib.repr(value)}, not {what}"
    return None


def _yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML spreads it over several lines)."""
    mark = getattr(exc, "problem_mark", None)
    if getattr(exc, "problem", None) and mark is not None:
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def load_runs(paths: list[Path] | Path) -> list[Run]:
    """Every run under `paths` (run, sweep or search directories)."""
    paths = [paths] if isinstance(paths, (str, Path)) else paths
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


# --- schema 1 -------------------------------------------------------------------------------------------

def _partition(summary: dict) -> Partition:
    return parse_partition(summary.get("partition") or "whole")


def _schema1_summary(old: dict, config: dict) -> dict:
    """Schema 1 counted slots and called them GPUs: move them to slots_* and share-weight the GPUs."""
    share = _partition(old).share
    slots = int(old["gpus_total"])
    cluster = SimpleNamespace(gpu_type=old.get("gpu_type") or "gpu", partition=old.get("partition") or "whole",
                              count=slots, extra=[])
    placement = Placement.from_config(cluster, ["any"])
    return {
        **old,
        "schema_version": 1,
        "cluster_label": placement.describe(),
        "gpus_total": len(placement.devices),
        "slots_total": slots,
        "slots_used_mean": old["gpus_used_mean"],
        "slots_used_peak": old["gpus_used_peak"],
        "gpus_used_mean": old["gpus_used_mean"] * share,
        "gpus_used_peak": old["gpus_used_peak"] * share,
        "busy_slot_seconds": old["busy_gpu_seconds"],
        "busy_gpu_seconds": old["busy_gpu_seconds"] * share,
        "gpus_provisioned_mean": old.get("slots_provisioned_mean", slots) * share,
        "seeds": old.get("seeds") or config.get("seeds") or {},
    }


def _schema1_table(name: str, table: pd.DataFrame, partition: Partition) -> pd.DataFrame:
    if name in ("batches", "requests") and "gpu" in table:
        table = table.rename(columns={"gpu": "slot"})
    if name == "batches" and "share" not in table:
        table = table.assign(share=partition.share, device=table["slot"] // partition.shares_per_gpu)
    if name == "gpus_used" and "slots_used" not in table:
        table = table.rename(columns={"gpus_used": "slots_used", "busy_gpu_seconds": "busy_slot_seconds"})
        table = table.assign(gpus_used=table["slots_used"] * partition.share,
                             busy_gpu_seconds=table["busy_slot_seconds"] * partition.share)
    return table
