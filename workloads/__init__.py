"""Workloads: arrival processes and trace readers -> the request schedule.

The schedule is open loop: a table of planned arrivals (id, model, t_sched)
that the load generator replays whatever the server does.
"""

import numpy as np
import pandas as pd

from harness.errors import HarnessError
from workloads.arrivals import synthetic_arrivals
from workloads.config import WorkloadConfig, is_finite_number, mix_weights, validate
from workloads.traces import maf_arrivals, timestamp_arrivals

__all__ = ["WorkloadConfig", "build_schedule", "validate"]


def _check_run(duration, seed, mapping_seed) -> None:
    if not (is_finite_number(duration) and duration > 0):
        raise HarnessError(
            f"the schedule duration must be > 0 seconds (got {duration!r}); set the run's duration in seconds"
        )
    for key, value in (("seed", seed), ("mapping_seed", mapping_seed)):
        if not (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0):
            raise HarnessError(f"{key} must be an integer >= 0 (got {value!r}); set the run's {key} to such an integer")


def build_schedule(
    cfg: WorkloadConfig, models: list[str], duration: float, seed: int, mapping_seed: int
) -> pd.DataFrame:
    """Planned arrivals in [0, duration): columns id (int64, time order), model (str), t_sched (float64 s),
    and with workload.sizes=lognormal size (int64, items per request: batched queries).

    Deterministic: `seed` drives arrival randomness, `mapping_seed` which trace
    functions map to which model.
    """
    validate(cfg, models)
    _check_run(duration, seed, mapping_seed)
    models = list(models)
    weights = mix_weights(cfg.mix, models)
    rng = np.random.default_rng(seed)
    if cfg.process == "maf_trace":
        model, t = maf_arrivals(cfg, weights, duration, rng, np.random.default_rng(mapping_seed))
    elif cfg.process == "timestamp_trace":
        model, t = timestamp_arrivals(cfg, weights, duration, rng, np.random.default_rng(mapping_seed))
    else:
        model, t = synthetic_arrivals(cfg, weights, duration, rng)
    order = np.argsort(t, kind="stable")
    schedule = pd.DataFrame(
        {
            "id": np.arange(len(t), dtype=np.int64),
            "model": np.array(models, dtype=object)[model[order]],
            "t_sched": t[order].astype(np.float64),
        }
    )
    if cfg.sizes == "lognormal":
        schedule["size"] = query_sizes(cfg, len(schedule), rng)
    return schedule


def query_sizes(cfg: WorkloadConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Items per query, log-normal with mean size_mean and log-sd size_sigma, rounded and clipped to
    1..size_max (drawn after the arrivals, so they stay the same whatever the sizes)."""
    mu = np.log(cfg.size_mean) - cfg.size_sigma**2 / 2
    return np.clip(np.rint(rng.lognormal(mu, cfg.size_sigma, n)), 1, cfg.size_max).astype(np.int64)
