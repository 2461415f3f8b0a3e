"""One run: config -> assembly -> schedule -> runtime -> records -> summary.

Everything a run produces goes into its own directory: schedule.parquet,
the record tables (harness.records), gpus_used.parquet, the resolved
config.yaml and summary.json.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from harness import metrics, rundir
from harness.assembly import Assembly, assemble
from harness.live import cores
from harness.profiles import load_profile, profile_path
from harness.records import (SCHEMA_VERSION, requests_frame, write_json, write_table)
from harness.runtimes import Outcome
from workloads import build_schedule

ROOT = Path(__file__).resolve().parent.parent
GIT_COMMIT_ENV = "HARNESS_GIT_COMMIT"     # names the commit a copied checkout was made from


def execute(cfg, out_dir: Path, overrides: list[str]) -> dict:
    out_dir = Path(out_dir)
    rundir.claim(rundir.RUN, out_dir)         # refused if it holds a run or part of one, or another run has it
    assembly = assemble(cfg)
    if assembly.cfg.runtime.name == "live":
        # A core the scheduler may not use, refused before anything starts; on this host, not in the processes
        # that load the config later (the workers, kept off the scheduler's core, may not use it either).
        cores.check(assembly.cfg.runtime.scheduler_cpu)
    schedule = make_schedule(assembly)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_table(schedule, out_dir / "schedule.parquet")

    if assembly.cfg.runtime.name == "sim":
        from harness.runtimes.sim import simulate

        outcome = simulate(assembly, schedule)
    else:
        from harness.runtimes.live import run_live

        outcome = run_live(assembly, out_dir, schedule)
    outcome.notes[:0] = assembly.notes
    summary = record(assembly, out_dir, outcome, overrides)
    if assembly.cfg.runtime.name == "live":
        from harness.runtimes.live import drop_copies

        drop_copies(out_dir)       # only now: until the summary is written they are the run's only record
    return summary


def make_schedule(assembly: Assembly) -> pd.DataFrame:
    """The planned arrivals (id, model or app, t_sched; and copies per app node when apps are served)."""
    cfg = assembly.cfg
    schedule = build_schedule(cfg.workload, assembly.targets, cfg.duration_s, cfg.seeds.schedule, cfg.seeds.mapping)
    copies = assembly.copies(schedule["model"].tolist(), cfg.seeds.payload)
    if copies is not None:
        schedule["copies"] = copies
    return schedule


def record(assembly: Assembly, out_dir: Path, outcome: Outcome, overrides: list[str]) -> dict:
    """Write the run's records and its summary (also after a fault or an interruption)."""
    cfg = assembly.cfg
    tables = outcome.tables
    slo = {m: s.slo for m, s in assembly.models.items()} | {a: app.slo for a, app in assembly.apps.items()}
    requests = requests_frame(outcome.client, tables["batches"], slo)
    window = metrics.Window(cfg.warmup_s, cfg.duration_s - cfg.cooldown_s)
    write_table(requests, out_dir / "requests.parquet")
    for name, table in tables.items():
        write_table(table, out_dir / f"{name}.parquet")
    write_table(outcome.gpus, out_dir / "gpus.parquet")
    write_table(metrics.gpus_used(tables["batches"], window), out_dir / "gpus_used.parquet")
    summary = summarize(assembly, requests, tables, window, slo, overrides, outcome)
    write_json(summary, out_dir / "summary.json")
    return summary


def summarize(assembly: Assembly, requests: pd.DataFrame, tables: dict, window: metrics.Window,
              slo: dict[str, float], overrides: list[str], outcome: Outcome) -> dict:
    cfg = assembly.cfg
    batches, slots = tables["batches"], tables["slots"]
    req = metrics.request_metrics(requests, window)
    per_model = metrics.per_model_metrics(requests, window)
    offered = {m: v["offered_rate"] for m, v in per_model.items() if m in assembly.models}
    oracle = metrics.oracle_goodput(offered, slo, assembly.curves(assembly.full_placement))
    lag = metrics.send_lag_p99_ms(requests, window)
    timeline = metrics.provisioned_timeline(tables["slot_events"], slots)
    provisioned = metrics.provisioned_metrics(timeline, window)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "system": cfg.system.name,
        "workload": cfg.workload.name,
        "cluster": cfg.cluster.name,
        "cluster_label": assembly.full_placement.describe(),
        "runtime": cfg.runtime.name,
        "gpu_type": cfg.cluster.gpu_type,
        "partition": cfg.cluster.partition,
        "emulated": cfg.runtime.name == "sim" or cfg.runtime.executor != "gpu",
        "seeds": asdict(cfg.seeds),
        "window_s": [window.start, window.end],
        **req,
        **metrics.batch_metrics(batches, window),
        **metrics.gpu_metrics(batches, window, slots, provisioned["provisioned_gpu_seconds"]),
        **provisioned,
        "autoscaler": cfg.autoscaler.enabled,
        "reconfigurations": len(tables["reconfigurations"]),
        "oracle_goodput": oracle["oracle_goodput"],
        "oracle_unservable": oracle["unservable"],
        "goodput_over_oracle": req["goodput"] / oracle["oracle_goodput"] if oracle["oracle_goodput"] else float("nan"),
        "send_lag_p99_ms": lag,
        "per_model": per_model,
        "accuracy_served": metrics.accuracy_served(requests, tables["tasks"], batches, window, assembly.apps),
        "wall_seconds": outcome.wall_seconds,
        "ready_seconds": outcome.ready_seconds,
        "notes": outcome.notes,
    }
    summary["validity"] = metrics.validity(
        summary, duration=cfg.duration_s, min_duration=cfg.validity.min_duration_s,
        min_requests=cfg.validity.min_requests, max_send_lag_p99_ms=cfg.validity.max_send_lag_p99_ms,
        send_lag_p99_ms=lag, crashed_slots=outcome.lost_slots, interrupted=outcome.interrupted,
        failures=outcome.failures, max_error_rate=cfg.validity.max_error_rate,
        first_error=metrics.first_error(requests, window), host_cores=os.cpu_count())
    summary["provenance"] = provenance(assembly, overrides)
    return summary


def provenance(assembly: Assembly, overrides: list[str]) -> dict:
    def version(pkg):
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    commit, dirty = os.environ.get(GIT_COMMIT_ENV) or None, None   # a copied checkout: the commit it came from
    if commit is None:
        try:
            commit = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=5).stdout.strip() or None
            dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                        capture_output=True, text=True, timeout=5).stdout.strip()) if commit else None
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
    profiles = {}
    for spec in assembly.full_placement.slots:
        key = f"{spec.gpu_type}/{spec.partition}"
        if spec.gpu_type != "sleep" and key not in profiles:
            p = load_profile(profile_path(spec.gpu_type, spec.partition))
            profiles[key] = {"file": str(Path(p.path).relative_to(ROOT)), "sha256": p.digest,
                             "emulated_partition": p.emulated_partition, **p.provenance}
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "overrides": list(overrides),
        "seeds": asdict(assembly.cfg.seeds),
        "profiles": profiles,
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": {p: version(p) for p in ("numpy", "pandas", "pyarrow", "hydra-core", "torch", "locust")},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def summary_table(s: dict) -> str:
    gpus = "emulated" if s["emulated"] else "real"
    rows = [
        ("system / workload", f"{s['system']} / {s['workload']}  ({s['runtime']} runtime)"),
        ("cluster", f"{s['cluster']}: {s['cluster_label']} ({gpus} GPUs)"),
        ("offered rate", f"{s['offered_rate']:.1f} req/s  ({s['requests']} requests in window)"),
        ("goodput", f"{s['goodput']:.1f} req/s  ({_pct(s['goodput_over_oracle'])} of oracle "
                    f"{s['oracle_goodput']:.1f})"),
        ("SLO attainment", f"{_pct(s['slo_attainment'], 2)}  (drops {_pct(s['drop_rate'], 2)}, "
                           f"errors {_pct(s['error_rate'], 2)})"),
        ("latency p50/p99", f"{s['latency_p50_ms']:.2f} / {s['latency_p99_ms']:.2f} ms"),
        ("mean batch size", f"{s['mean_batch_size']:.2f}"),
        ("GPUs used mean/peak", f"{s['gpus_used_mean']:.2f} / {s['gpus_used_peak']:.2f} of {_gpus(s)}"
                                f"  ({s['busy_gpu_seconds']:.1f} busy GPU-s)"),
        ("GPUs provisioned", f"{s['gpus_provisioned_mean']:.2f} mean, {s['gpus_provisioned_peak']:.2f} peak"
                             + ("  (autoscaler)" if s["autoscaler"] else "")),
        ("valid", "yes" if s["validity"]["valid"] else "NO: " + "; ".join(s["validity"]["reasons"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _gpus(s: dict) -> str:
    if s["slots_total"] == s["gpus_total"]:
        return str(s["gpus_total"])
    return f"{s['gpus_total']} ({s['slots_total']} slots)"


def _pct(x, digits: int = 0) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}%}"
