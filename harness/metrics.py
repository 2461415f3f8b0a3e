"""Metrics over the records of one run (definitions in the README).

- Measurement window: requests scheduled in [warmup, duration - cooldown).
- Goodput: requests in the window that finished ok within their SLO, per second.
- SLO attainment: that count over all requests scheduled in the window
  (drops, rejections, timeouts and errors count as violations).
- GPUs used: per 1 s bucket, the slots that ran at least one batch in it;
  mean and peak over the window, and busy GPU-seconds.
- Oracle bound: the goodput of a cluster whose slots all run back to back at
  each model's largest batch that fits its SLO, shared in proportion to the
  offered mix; goodput / bound says how close a scheduler gets to the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

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


def batch_metrics(batches: pd.DataFrame, window: Window) -> dict:
    ran = batches[(batches["status"] == "ok") & (batches["t_start"] >= window.start)
                  & (batches["t_start"] < window.end)]
    return {
        "batches": len(ran),
        "mean_batch_size": float(ran["size"].mean()) if len(ran) else float("nan"),
    }


def gpus_used(batches: pd.DataFrame, window: Window, bucket: float = 1.0) -> pd.DataFrame:
    """Per time bucket of the window: how many slots ran at least one batch, and their busy seconds."""
    edges = np.arange(window.start, window.end + 1e-9, bucket)
    if len(edges) < 2:
        edges = np.array([window.start, window.end])
    ran = batches[(batches["status"] == "ok") & (batches["t_end"] > window.start)
                  & (batches["t_start"] < window.end)]
    starts, ends = edges[:-1], edges[1:]
    used = np.zeros(len(starts), dtype=np.int64)
    busy = np.zeros(len(starts))
    for _, b in ran.groupby("gpu"):
        s = b["t_start"].to_numpy()
        e = b["t_end"].to_numpy()
        # Seconds of each batch inside each bucket (batches x buckets, per slot).
        overlap = np.clip(np.minimum(e[:, None], ends) - np.maximum(s[:, None], starts), 0, None)
        per_bucket = overlap.sum(axis=0)
        used += per_bucket > 0
        busy += per_bucket
    return pd.DataFrame({"t": starts, "gpus_used": used, "busy_gpu_seconds": busy})


def gpu_metrics(batches: pd.DataFrame, window: Window, n_slots: int) -> dict:
    series = gpus_used(batches, window)
    return {
        "gpus_total": n_slots,
        "gpus_used_mean": float(series["gpus_used"].mean()),
        "gpus_used_peak": int(series["gpus_used"].max()),
        "busy_gpu_seconds": float(series["busy_gpu_seconds"].sum()),
        "utilisation": float(series["busy_gpu_seconds"].sum() / (n_slots * window.length)),
    }


def provisioned_metrics(timeline: pd.DataFrame, window: Window) -> dict:
    """Slots provisioned over the window (the autoscaler's count; constant without one).

    `timeline` has columns t and slots: the count from t until the next row.
    """
    t = timeline["t"].to_numpy(dtype=float)
    n = timeline["slots"].to_numpy(dtype=float)
    starts = np.clip(t, window.start, window.end)
    ends = np.clip(np.append(t[1:], np.inf), window.start, window.end)
    seconds = float(((ends - starts) * n).sum())
    inside = n[(ends > starts) | ((t >= window.start) & (t < window.end))]
    return {
        "slots_provisioned_mean": seconds / window.length,
        "slots_provisioned_peak": int(inside.max()) if len(inside) else int(n[-1]),
        "provisioned_gpu_seconds": seconds,
    }


def oracle_goodput(offered: Mapping[str, float], slo: Mapping[str, float],
                   curves: Mapping[str, LatencyCurve], n_slots: int) -> dict:
    """Upper bound on goodput for this mix on `n_slots` identical slots (see module doc)."""
    peak = {}
    for model, c in curves.items():
        b = c.largest_batch_within(slo[model])
        peak[model] = b / c.mean[b] if b else 0.0
    total = sum(offered.values())
    if total <= 0:
        return {"oracle_capacity": 0.0, "oracle_goodput": 0.0, "peak_per_slot": peak}
    # Slot-seconds needed per second of offered load, model by model.
    work = sum(rate / peak[m] if peak[m] else float("inf") for m, rate in offered.items())
    capacity = total * n_slots / work if work else float("inf")
    return {"oracle_capacity": capacity, "oracle_goodput": min(total, capacity), "peak_per_slot": peak}


def validity(summary: dict, *, duration: float, min_duration: float, min_requests: int,
             max_send_lag_p99_ms: float, send_lag_p99_ms: float, crashed_slots: list,
             interrupted: bool, failures: list = ()) -> dict:
    """LoadGen-style verdict: a run is valid only if every check passes; reasons say which failed."""
    reasons = []
    if duration < min_duration:
        reasons.append(f"duration {duration:g} s < minimum {min_duration:g} s")
    if summary["requests"] < min_requests:
        reasons.append(f"{summary['requests']} requests in the window < minimum {min_requests}")
    if send_lag_p99_ms > max_send_lag_p99_ms:
        reasons.append(f"p99 send lag {send_lag_p99_ms:.3f} ms > bound {max_send_lag_p99_ms:g} ms "
                       "(the load generator fell behind; lower the rate or add Locust workers)")
    if crashed_slots:
        reasons.append(f"worker(s) lost during the run: slots {crashed_slots}")
    if interrupted:
        reasons.append("run interrupted before the end")
    reasons.extend(failures)
    return {"valid": not reasons, "reasons": reasons, "interrupted": interrupted}


def send_lag_p99_ms(requests: pd.DataFrame, window: Window) -> float:
    """p99 of sent minus scheduled time over the window (the warm-up, when connections open, is excluded)."""
    r = in_window(requests, window)
    lag = (r["t_sent"] - r["t_sched"]).dropna()
    return float(np.percentile(lag, 99) * 1e3) if len(lag) else 0.0
