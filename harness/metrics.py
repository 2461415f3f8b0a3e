"""Metrics over the records of one run (definitions in the README).

- Measurement window: requests scheduled in [warmup, duration - cooldown).
- Goodput: requests in the window that finished ok within their SLO, per second.
- SLO attainment: that count over all requests scheduled in the window
  (drops, rejections, timeouts and errors count as violations).
- GPUs used: per 1 s bucket, the slots that ran at least one batch in it,
  weighted by their share of a GPU (four busy 25% MPS shares are one GPU);
  mean and peak over the window, and busy GPU-seconds (share-weighted).
  Physical GPUs (devices) and slots are counted beside.
- Oracle bound: the goodput of a cluster whose slots all run back to back at
  each model's largest batch that fits its SLO, shared in proportion to the
  offered mix; goodput / bound says how close a scheduler gets to the hardware.
  A model no slot can serve within its SLO is left out of the bound and named.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from harness.apps import App
from harness.profiles import LatencyCurve


@dataclass(frozen=True)
class Window:
    start: float
    end: float

    @property
    def length(self) -> float:
        return self.end - self.start


def in_window(requests: pd.DataFrame, window: Window) -> pd.DataFrame:
    t = requests["t_sched"]
    return requests[(t >= window.start) & (t < window.end)]


def good_mask(requests: pd.DataFrame) -> pd.Series:
    return (requests["status"] == "ok") & (requests["latency"] <= requests["slo"])


def request_metrics(requests: pd.DataFrame, window: Window) -> dict:
    r = in_window(requests, window)
    n = len(r)
    good = int(good_mask(r).sum())
    ok = r[r["status"] == "ok"]
    lat_ms = ok["latency"].to_numpy() * 1e3
    counts = r["status"].value_counts()
    out = {
        "requests": n,
        "offered_rate": n / window.length,
        "goodput": good / window.length,
        "slo_attainment": good / n if n else float("nan"),
        "violation_rate": 1 - good / n if n else float("nan"),
        "drop_rate": (counts.get("dropped", 0) + counts.get("rejected", 0)) / n if n else float("nan"),
        "error_rate": (counts.get("error", 0) + counts.get("timeout", 0)) / n if n else float("nan"),
        "status_counts": {k: int(v) for k, v in counts.items()},
    }
    out["latency_mean_ms"] = float(lat_ms.mean()) if len(lat_ms) else float("nan")   # average response time
    for q in (50, 90, 99, 99.9):
        out[f"latency_p{q:g}_ms"] = float(np.percentile(lat_ms, q)) if len(lat_ms) else float("nan")
    return out


def per_model_metrics(requests: pd.DataFrame, window: Window) -> dict:
    r = in_window(requests, window).assign(good=lambda d: good_mask(d))
    out = {}
    for model, g in r.groupby("model", sort=True, observed=True):
        ok = g.loc[g["status"] == "ok", "latency"]
        out[str(model)] = {
            "requests": len(g),
            "offered_rate": len(g) / window.length,
            "goodput": float(g["good"].sum()) / window.length,
            "slo_attainment": float(g["good"].mean()),
            "latency_p99_ms": float(ok.quantile(0.99) * 1e3) if len(ok) else float("nan"),
        }
    return out


def accuracy_served(requests: pd.DataFrame, tasks: pd.DataFrame, batches: pd.DataFrame, window: Window,
                    apps: Mapping[str, App]) -> dict:
    """Per app: the mean accuracy of its requests in the window that finished ok, each from the variants its
    tasks ran (their batches' models) as harness.apps defines it: relative to the most accurate variants
    (1.0), a node's tasks averaged, the weakest root-to-leaf path's product; NaN for an app none of whose
    requests finished ok."""
    r = in_window(requests, window)
    ok = r.loc[(r["status"] == "ok") & r["model"].isin(list(apps)), ["id", "model"]]
    ran = tasks[["request_id", "node", "batch_id"]].merge(ok, left_on="request_id", right_on="id")
    ran["variant"] = ran["batch_id"].map(batches.set_index("id")["model"])
    relative = {(a, i, v): n.relative_accuracy(v) for a, app in apps.items()
                for i, n in enumerate(app.nodes) for v in n.variants}
    ran["relative"] = [relative[k] for k in zip(ran["model"], ran["node"], ran["variant"])]
    out = {}
    for name, app in apps.items():
        ids = ok.loc[ok["model"] == name, "id"]
        if ids.empty:                  # nothing of it served: no accuracy to speak of (null in summary.json)
            out[name] = float("nan")
            continue
        per_node = (ran[ran["model"] == name].groupby(["request_id", "node"])["relative"].mean().unstack("node")
                    .reindex(index=ids, columns=range(len(app.nodes))).fillna(1.0).to_numpy())   # no tasks: kept
        paths = [per_node[:, list(p)].prod(axis=1) for p in app.paths]
        out[name] = float(np.minimum.reduce(paths).mean())
    return out


def batch_metrics(batches: pd.DataFrame, window: Window) -> dict:
    """Batches run, and their mean size per execution of the model or of one of its stages: a chain of k
    stages counts k times, so the mean does not depend on how a policy groups stages into dispatches."""
    ran = batches[(batches["status"] == "ok") & (batches["t_start"] >= window.start)
                  & (batches["t_start"] < window.end)]
    if "through" in ran.columns:           # (records written before chains have no `through`)
        runs = ran["through"] - ran["stage"] + 1
        mean = float((ran["size"] * runs).sum() / runs.sum()) if len(ran) else float("nan")
    else:
        mean = float(ran["size"].mean()) if len(ran) else float("nan")
    return {"batches": len(ran), "mean_batch_size": mean}


def gpus_used(batches: pd.DataFrame, window: Window, bucket: float = 1.0) -> pd.DataFrame:
    """Per time bucket of the window: slots, devices and share-weighted GPUs that ran at least one batch,
    and busy seconds (per slot, and share-weighted).

    Memory grows with the batches and the buckets each one touches, never with batches x buckets,
    so a day-long trace at full time scale fits (benchmarks/gpus_used_memory.py).
    """
    edges = np.arange(window.start, window.end + 1e-9, bucket)
    if len(edges) < 2:
        edges = np.array([window.start, window.end])
    nb = len(edges) - 1
    ran = batches[(batches["status"] == "ok") & (batches["t_end"] > window.start)
                  & (batches["t_start"] < window.end)]
    s = np.clip(ran["t_start"].to_numpy(float), window.start, window.end)
    e = np.clip(ran["t_end"].to_numpy(float), window.start, window.end)
    k0 = np.clip(np.floor((s - window.start) / bucket).astype(np.int64), 0, nb - 1)
    k1 = np.clip(np.ceil((e - window.start) / bucket).astype(np.int64) - 1, k0, nb - 1)
    spans = k1 - k0 + 1
    row = np.repeat(np.arange(len(ran)), spans)                  # one entry per (batch, bucket it touches)
    k = k0[row] + np.arange(len(row)) - np.repeat(np.cumsum(spans) - spans, spans)
    overlap = np.clip(np.minimum(e[row], edges[k + 1]) - np.maximum(s[row], edges[k]), 0, None)
    share = ran["share"].to_numpy(float)[row] if "share" in ran else np.ones(len(row))
    slot = ran["slot"].to_numpy(np.int64)[row]
    device = ran["device"].to_numpy(np.int64)[row] if "device" in ran else slot
    live = overlap > 0
    used_slot, first = np.unique(slot[live] * nb + k[live], return_index=True)
    used_device, per_device = np.unique(device[live][first] * nb + k[live][first], return_inverse=True)
    # A device counts its used slots' shares, at most one GPU: when a reconfiguration replaces its shares
    # within a bucket, the old and the new ran one after the other, not side by side.
    device_gpus = np.minimum(np.bincount(per_device, weights=share[live][first]), 1.0)
    return pd.DataFrame({
        "t": edges[:-1],
        "slots_used": np.bincount(used_slot % nb, minlength=nb),
        "devices_used": np.bincount(used_device % nb, minlength=nb),
        "gpus_used": np.bincount(used_device % nb, weights=device_gpus, minlength=nb),
        "busy_slot_seconds": np.bincount(k, weights=overlap, minlength=nb),
        "busy_gpu_seconds": np.bincount(k, weights=overlap * share, minlength=nb),
    })


def gpu_metrics(batches: pd.DataFrame, window: Window, slots: pd.DataFrame,
                provisioned_gpu_seconds: float | None = None) -> dict:
    """GPU use over the window. `slots` is the slots table (slot, device, share, ...): GPUs are
    physical devices; `gpus_*` values are share-weighted (four 25% shares busy = one GPU). Utilisation
    is busy over provisioned GPU-seconds (default: every slot's share for the whole window), so a system
    that releases or re-sizes slots is judged on what it held."""
    series = gpus_used(batches, window)
    if provisioned_gpu_seconds is None:
        provisioned_gpu_seconds = (float(slots["share"].sum()) if len(slots) else 0.0) * window.length
    return {
        "gpus_total": int(slots["device"].nunique()),
        "slots_total": len(slots),
        "gpus_used_mean": float(series["gpus_used"].mean()),
        "gpus_used_peak": float(series["gpus_used"].max()),
        "slots_used_mean": float(series["slots_used"].mean()),
        "slots_used_peak": int(series["slots_used"].max()),
        "devices_used_mean": float(series["devices_used"].mean()),
        "busy_gpu_seconds": float(series["busy_gpu_seconds"].sum()),
        "busy_slot_seconds": float(series["busy_slot_seconds"].sum()),
        "utilisation": (float(series["busy_gpu_seconds"].sum() / provisioned_gpu_seconds)
                        if provisioned_gpu_seconds else 0.0),
    }


def provisioned_timeline(events: pd.DataFrame, slots: pd.DataFrame) -> pd.DataFrame:
    """From the slot events: slots and share-weighted GPUs provisioned from t on (t, slots, gpus).

    A slot counts from the moment it is asked for (starting) until it leaves, is lost or is cancelled. A
    device counts at most once: while a move makes before it breaks, its old and new shares add up to
    more than the GPU they share.
    """
    share = dict(zip(slots["slot"], slots["share"]))
    # (Records of before the device column: each slot on a device of its own.)
    device = dict(zip(slots["slot"], slots["device"])) if "device" in slots else {}
    step = {"starting": 1, "left": -1, "lost": -1, "cancelled": -1}
    ev = events[events["event"].isin(list(step))].sort_values("t", kind="stable")
    if ev.empty:
        return pd.DataFrame({"t": [0.0], "slots": [0], "gpus": [0.0]})
    sign = ev["event"].map(step).to_numpy()
    held: dict = defaultdict(float)          # device -> shares provisioned on it
    gpus, total = [], 0.0
    for slot, d in zip(ev["slot"], sign):
        on = device.get(slot, ("slot", slot))
        before = min(1.0, held[on])
        held[on] += d * share.get(slot, 1.0)
        total += min(1.0, held[on]) - before
        gpus.append(total)
    out = pd.DataFrame({"t": ev["t"].to_numpy(float), "slots": np.cumsum(sign), "gpus": gpus})
    return out.groupby("t", as_index=False).last()


def provisioned_metrics(timeline: pd.DataFrame, window: Window) -> dict:
    """Slots and GPUs provisioned over the window (constant without an autoscaler or reconfiguration).

    `timeline` has columns t, slots and gpus: the counts from t until the next row.
    """
    t = timeline["t"].to_numpy(dtype=float)
    starts = np.clip(t, window.start, window.end)
    ends = np.clip(np.append(t[1:], np.inf), window.start, window.end)
    inside = (ends > starts) | ((t >= window.start) & (t < window.end))
    out = {}
    for key, column in (("slots", "slots"), ("gpus", "gpus")):
        n = timeline[column].to_numpy(dtype=float)
        seconds = float(((ends - starts) * n).sum())
        out[f"{key}_provisioned_mean"] = seconds / window.length
        out[f"{key}_provisioned_peak"] = float(n[inside].max()) if inside.any() else float(n[-1])
    out["provisioned_gpu_seconds"] = out["gpus_provisioned_mean"] * window.length
    return out


def oracle_goodput(offered: Mapping[str, float], slo: Mapping[str, float],
                   slot_curves: Sequence[Mapping[str, LatencyCurve]]) -> dict:
    """Upper bound on goodput for this mix on these slots (see module doc).

    Each model's peak on a slot is its largest batch within its SLO over that batch's latency; a
    model whose SLO is below its batch-1 latency on every slot is left out of the bound (no
    scheduler can serve it) and named in `unservable`.
    """
    models = [m for m in offered if offered[m] > 0]
    peaks = {m: [] for m in models}
    for curves in slot_curves:
        for m in models:
            c = curves.get(m)
            b = c.largest_batch_within(slo[m]) if c is not None else 0
            peaks[m].append(b / c.mean[b] if b else 0.0)
    unservable = sorted(m for m in models if not any(peaks[m]))
    servable = [m for m in models if m not in unservable]
    total = sum(offered[m] for m in servable)
    if total <= 0:
        return {"oracle_capacity": 0.0, "oracle_goodput": 0.0, "unservable": unservable}
    # Slot-seconds needed per second of the servable mix, on the average slot (a heterogeneous cluster
    # is summarised by each model's mean peak over the slots that hold it).
    work = 0.0
    for m in servable:
        held = [p for p in peaks[m] if p > 0]
        work += (offered[m] / total) / (sum(held) / len(held)) * (len(slot_curves) / len(held))
    capacity = len(slot_curves) / work
    return {"oracle_capacity": capacity, "oracle_goodput": min(total, capacity), "unservable": unservable}


def first_error(requests: pd.DataFrame, window: Window) -> str:
    """The most frequent reason among the window's requests answered with an error ("" if none)."""
    r = in_window(requests, window)
    errors = r.loc[r["status"] == "error", "reason"].astype(str)
    return str(errors.value_counts().index[0]) if len(errors) else ""


def validity(summary: dict, *, duration: float, min_duration: float, min_requests: int,
             max_send_lag_p99_ms: float, send_lag_p99_ms: float, crashed_slots: list,
             interrupted: bool, max_error_rate: float, failures: list = (), first_error: str = "",
             host_cores: int | None = None) -> dict:
    """LoadGen-style verdict: a run is valid only if every check passes; reasons say which failed.
    `host_cores`: the cores of the host the load generator shared with the system under test, named in the
    send-lag reason (on a small host more Locust processes only compete for the same cores)."""
    reasons = []
    n = summary["requests"]
    errors = summary.get("status_counts", {}).get("error", 0) / n if n else 0.0
    if errors > max_error_rate:
        # The system failed requests (a worker or server error, not a drop or a timeout under load): the
        # run measured the failure, not the scheduler.
        reasons.append(f"{errors:.1%} of the window's requests failed with an error > bound {max_error_rate:.1%}"
                       + (f" (most often: {first_error[:200]})" if first_error else ""))
    if duration < min_duration:
        reasons.append(f"duration {duration:g} s < minimum {min_duration:g} s")
    if summary["requests"] < min_requests:
        reasons.append(f"{summary['requests']} requests in the window < minimum {min_requests}")
    if send_lag_p99_ms > max_send_lag_p99_ms:
        host = f"; this host has {host_cores}" if host_cores else ""
        reasons.append(f"p99 send lag {send_lag_p99_ms:.3f} ms > bound {max_send_lag_p99_ms:g} ms (the load "
                       "generator fell behind: lower the rate, or add Locust processes with "
                       f"runtime.locust_workers=N where the host has cores to spare{host})")
    if crashed_slots:
        reasons.append(f"worker(s) lost during the run: slots {crashed_slots}")
    if interrupted:
        reasons.append("run interrupted before the end")
    reasons.extend(failures)
    # `failures`: what broke (a process of the harness died, records were lost); the other reasons say a run
    # that ran to its end is not valid.
    return {"valid": not reasons, "reasons": reasons, "interrupted": interrupted, "failures": list(failures)}


def send_lag_p99_ms(requests: pd.DataFrame, window: Window) -> float:
    """p99 of sent minus scheduled time over the window (the warm-up, when connections open, is excluded)."""
    r = in_window(requests, window)
    lag = (r["t_sent"] - r["t_sched"]).dropna()
    return float(np.percentile(lag, 99) * 1e3) if len(lag) else 0.0
