"""One run: config -> schedule -> cluster + policy -> runtime -> records -> summary.

Everything a run produces goes into its own directory:
schedule.parquet, requests.parquet, batches.parquet, gpus.parquet,
gpus_used.parquet, config.yaml (resolved) and summary.json.
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

import systems
from harness import metrics
from harness.autoscaler import Autoscaled
from harness.config import Config
from harness.core import GpuSlot, ModelSpec, Policy
from harness.errors import HarnessError
from harness.profiles import SLEEP, LatencyCurve, curves_for, load_profile, profile_path
from harness.records import requests_frame, write_json, write_table
from harness.runtimes import Outcome
from harness.runtimes.sim import simulate
from workloads import build_schedule

ROOT = Path(__file__).resolve().parent.parent
GIT_COMMIT_ENV = "HARNESS_GIT_COMMIT"     # names the commit a copied checkout was made from


def model_specs(cfg: Config) -> dict[str, ModelSpec]:
    if not cfg.models:
        raise HarnessError("no models configured; choose a models group, e.g. models=vision")
    specs = {}
    for name, m in cfg.models.items():
        if not m.slo_ms > 0:
            raise HarnessError(f"models.{name}.slo_ms must be > 0 (got {m.slo_ms}); set models.{name}.slo_ms=<ms>")
        specs[name] = ModelSpec(name, m.slo_ms / 1000.0)
    return specs


def check_run_config(cfg: Config) -> None:
    if not cfg.duration_s > 0:
        raise HarnessError(f"duration_s must be > 0 (got {cfg.duration_s}); set duration_s=<seconds>")
    if cfg.warmup_s < 0 or cfg.cooldown_s < 0 or cfg.warmup_s + cfg.cooldown_s >= cfg.duration_s:
        raise HarnessError(f"warmup_s ({cfg.warmup_s}) + cooldown_s ({cfg.cooldown_s}) must be >= 0 and leave "
                           f"part of duration_s ({cfg.duration_s}) to measure; shorten them or lengthen the run")
    if cfg.cluster.count < 1:
        raise HarnessError(f"cluster.count must be >= 1 (got {cfg.cluster.count}); set cluster.count=<slots>")
    if cfg.runtime.drain_s < 0:
        raise HarnessError(f"runtime.drain_s must be >= 0 (got {cfg.runtime.drain_s})")


def detect_gpus() -> list[str]:
    """Names of the NVIDIA GPUs NVML sees (none without a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no nvidia-ml-py, no driver, no GPU: all mean "none here"
        return []
    try:
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                 for i in range(pynvml.nvmlDeviceGetCount())]
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    finally:
        pynvml.nvmlShutdown()


def resolve_auto_cluster(cfg: Config) -> str:
    """`cluster=auto`: the GPUs present when the live runtime can use them, else emulated H200s.

    Returns the sentence the summary records about the choice ("" when not auto).
    """
    c = cfg.cluster
    if c.gpu_type != "auto":
        return ""
    found = detect_gpus()
    if found and cfg.runtime.name == "live":
        from harness.gpu.partitions import gpu_type_from_name

        c.gpu_type = gpu_type_from_name(found[0])
        cfg.runtime.executor = "gpu"
        if c.partition == "whole":
            c.count = len(found)
        return f"auto: {len(found)} x {found[0]} found; serving on real GPUs ({c.count} slots, {c.partition})"
    c.gpu_type = "h200"
    why = "no NVIDIA GPU found" if not found else "the sim runtime always emulates"
    return f"auto: {why}; {c.count} emulated h200 slots ({c.partition}) from profiles/h200/{c.partition}.json"


def build_cluster(cfg: Config, models: dict[str, ModelSpec]) -> tuple[list[GpuSlot], list[dict[str, LatencyCurve]]]:
    """The slots: every slot holds every model, all of one GPU type and partition."""
    c = cfg.cluster
    curves = curves_for(c.gpu_type, c.partition, list(models), OmegaConf.to_container(c.sleep))
    held = frozenset(models)
    emulated = cfg.runtime.name == "sim" or cfg.runtime.executor != "gpu"
    gpus = [GpuSlot(i, f"{c.gpu_type}-{c.partition}-{i}", c.gpu_type, c.partition, held, emulated=emulated)
            for i in range(c.count)]
    return gpus, [curves] * c.count


def execute(cfg: Config, out_dir: Path, overrides: list[str]) -> dict:
    out_dir = Path(out_dir)
    if (out_dir / "summary.json").exists():
        raise HarnessError(f"run directory '{out_dir}' already holds a run; choose another hydra.run.dir")
    check_run_config(cfg)
    resolution = resolve_auto_cluster(cfg)
    models = model_specs(cfg)
    systems.policy_class(cfg.system.name)          # an unknown system fails before any work
    gpus, curves = build_cluster(cfg, models)
    schedule = build_schedule(cfg.workload, list(models), cfg.duration_s, cfg.seeds.schedule, cfg.seeds.mapping)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_table(schedule, out_dir / "schedule.parquet")

    if cfg.runtime.name == "sim":
        outcome = simulate(cfg, models, gpus, curves, schedule, lambda cluster: make_policy(cfg, cluster, models))
    elif cfg.runtime.name == "live":
        from harness.runtimes.live import run_live

        outcome = run_live(cfg, out_dir, schedule, len(gpus))
    else:
        raise HarnessError(f"unknown runtime '{cfg.runtime.name}'; choose runtime=live or runtime=sim")
    if resolution:
        outcome.notes.insert(0, resolution)
    return record(cfg, out_dir, outcome, models, gpus, curves[0], overrides)


def make_policy(cfg: Config, cluster, models: dict[str, ModelSpec]) -> Policy:
    policy = systems.policy_class(cfg.system.name)(cluster, models, OmegaConf.to_object(cfg.system))
    if cfg.autoscaler.enabled:
        policy = Autoscaled(policy, OmegaConf.to_object(cfg.autoscaler))
    return policy


def record(cfg: Config, out_dir: Path, outcome: Outcome, models: dict[str, ModelSpec], gpus: list[GpuSlot],
           curves: dict[str, LatencyCurve], overrides: list[str]) -> dict:
    """Write the run's records and its summary (also after a fault or an interruption)."""
    slo = {m: s.slo for m, s in models.items()}
    requests = requests_frame(outcome.client, outcome.batches, slo)
    window = metrics.Window(cfg.warmup_s, cfg.duration_s - cfg.cooldown_s)
    write_table(requests, out_dir / "requests.parquet")
    write_table(outcome.batches, out_dir / "batches.parquet")
    write_table(outcome.gpus, out_dir / "gpus.parquet")
    write_table(metrics.gpus_used(outcome.batches, window), out_dir / "gpus_used.parquet")
    write_table(outcome.timeline, out_dir / "scaling.parquet")
    summary = summarize(cfg, requests, outcome.batches, window, gpus, curves, slo, overrides, outcome.timeline,
                        outcome.lost_slots, outcome.interrupted, outcome.failures)
    summary["wall_seconds"] = outcome.wall_seconds
    summary["notes"] = outcome.notes
    write_json(summary, out_dir / "summary.json")
    return summary


def summarize(cfg: Config, requests: pd.DataFrame, batches: pd.DataFrame, window: metrics.Window,
              gpus: list[GpuSlot], curves: dict[str, LatencyCurve], slo: dict[str, float],
              overrides: list[str], timeline: pd.DataFrame, crashed: list | None = None,
              interrupted: bool = False, failures: list | None = None) -> dict:
    req = metrics.request_metrics(requests, window)
    per_model = metrics.per_model_metrics(requests, window)
    offered = {m: v["offered_rate"] for m, v in per_model.items()}
    oracle = metrics.oracle_goodput(offered, slo, curves, len(gpus))
    lag = metrics.send_lag_p99_ms(requests, window)
    summary = {
        "system": cfg.system.name,
        "workload": cfg.workload.name,
        "cluster": cfg.cluster.name,
        "runtime": cfg.runtime.name,
        "gpu_type": cfg.cluster.gpu_type,
        "partition": cfg.cluster.partition,
        "emulated": all(g.emulated for g in gpus),
        "window_s": [window.start, window.end],
        **req,
        **metrics.batch_metrics(batches, window),
        **metrics.gpu_metrics(batches, window, len(gpus)),
        **metrics.provisioned_metrics(timeline, window),
        "autoscaler": cfg.autoscaler.enabled,
        "oracle_goodput": oracle["oracle_goodput"],
        "goodput_over_oracle": req["goodput"] / oracle["oracle_goodput"] if oracle["oracle_goodput"] else float("nan"),
        "send_lag_p99_ms": lag,
        "per_model": per_model,
    }
    summary["validity"] = metrics.validity(
        summary, duration=cfg.duration_s, min_duration=cfg.validity.min_duration_s,
        min_requests=cfg.validity.min_requests, max_send_lag_p99_ms=cfg.validity.max_send_lag_p99_ms,
        send_lag_p99_ms=lag, crashed_slots=crashed or [], interrupted=interrupted, failures=failures or [])
    summary["provenance"] = provenance(cfg, overrides)
    return summary


def provenance(cfg: Config, overrides: list[str]) -> dict:
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
    profile = {}
    if cfg.cluster.gpu_type != SLEEP:
        p = load_profile(profile_path(cfg.cluster.gpu_type, cfg.cluster.partition))
        profile = {"file": str(Path(p.path).relative_to(ROOT)), "emulated_partition": p.emulated_partition,
                   **p.provenance}
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "overrides": list(overrides),
        "seeds": asdict(OmegaConf.to_object(cfg.seeds)),
        "profile": profile,
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": {p: version(p) for p in ("numpy", "pandas", "pyarrow", "hydra-core", "torch", "locust")},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def summary_table(s: dict) -> str:
    rows = [
        ("system / workload / cluster", f"{s['system']} / {s['workload']} / {s['cluster']} ({s['runtime']})"),
        ("offered rate", f"{s['offered_rate']:.1f} req/s  ({s['requests']} requests in window)"),
        ("goodput", f"{s['goodput']:.1f} req/s  ({s['goodput_over_oracle']:.0%} of oracle {s['oracle_goodput']:.1f})"),
        ("SLO attainment", f"{s['slo_attainment']:.2%}  (drops {s['drop_rate']:.2%}, errors {s['error_rate']:.2%})"),
        ("latency p50/p99", f"{s['latency_p50_ms']:.2f} / {s['latency_p99_ms']:.2f} ms"),
        ("mean batch size", f"{s['mean_batch_size']:.2f}"),
        ("GPUs used mean/peak", f"{s['gpus_used_mean']:.2f} / {s['gpus_used_peak']} of {s['gpus_total']}"
                                f"  ({s['busy_gpu_seconds']:.1f} busy GPU-s)"),
        ("GPUs provisioned", f"{s['slots_provisioned_mean']:.2f} mean, {s['slots_provisioned_peak']} peak"
                             + ("  (autoscaler)" if s["autoscaler"] else "")),
        ("valid", "yes" if s["validity"]["valid"] else "NO: " + "; ".join(s["validity"]["reasons"])),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
