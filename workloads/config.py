"""The workload's Hydra structured config and the checks that guard it.

Every field has a default, so a config group file only sets what it changes.
`validate` turns each bad value into a one-line HarnessError naming the key
and how to fix it, before any arrival is generated.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np

from harness.errors import HarnessError
from workloads.traces import TRACE_HINTS, TRACE_UNITS, resolve_trace_path

SYNTHETIC_PROCESSES = ("constant", "poisson", "gamma", "mmpp")
TRACE_PROCESSES = ("maf_trace", "timestamp_trace")
PROCESSES = SYNTHETIC_PROCESSES + TRACE_PROCESSES
SHAPES = ("flat", "ramp", "diurnal")

# Highest total rate accepted: beyond it a typo is far likelier than intent.
MAX_RATE = 1e8


@dataclass
class WorkloadConfig:
    name: str = "poisson"
    process: str = "poisson"  # constant | poisson | gamma | mmpp | maf_trace | timestamp_trace
    rate: float = 100.0  # mean total requests/s over all models (synthetic processes)
    cv: float = 1.0  # gamma: coefficient of variation of the gaps (bursty = 4)
    shape: str = "flat"  # flat | ramp | diurnal: multiplies the rate over time
    ramp_start: float = 0.2  # ramp: rate fraction at t=0, linear to ramp_end at t=duration
    ramp_end: float = 1.0
    diurnal_period_s: float = 60.0  # diurnal: 1 + amplitude*sin(2*pi*t/period - pi/2), mean kept
    diurnal_amplitude: float = 0.8
    mmpp_high_factor: float = 4.0  # MMPP: high-state rate = factor * low-state rate
    mmpp_mean_high_s: float = 1.0  # MMPP: mean (exponential) sojourn in each state
    mmpp_mean_low_s: float = 4.0
    mix: Dict[str, float] = field(default_factory=dict)  # model -> weight; empty = equal weights
    trace: Optional[str] = None  # trace file (maf_trace / timestamp_trace)
    trace_unit: Optional[str] = None  # timestamp trace: s | ms | us of its numeric times (unset: s, checked)
    trace_window_s: float = 60.0  # MAF: seconds per count column
    time_scale: float = 1.0  # trace second t maps to t / time_scale
    rate_scale: float = 1.0  # multiply the trace's rate by this
    trace_cv: float = 1.0  # MAF: Gamma CV of arrivals inside each window
    trace_start_s: float = 0.0  # skip this many trace seconds
    sizes: str = "none"  # none: one item per request | lognormal: batched queries, items per request drawn
    size_mean: float = 8.0  # lognormal: mean items per query, before rounding and clipping
    size_sigma: float = 1.0  # lognormal: standard deviation of log(items)
    size_max: int = 64  # lognormal: items per query are clipped to 1..size_max


# (key, requirement, test, what to set it to). Every numeric field is checked
# whichever process is chosen: the defaults all pass, so a bad value is a typo.
_NUMERIC_CHECKS = (
    ("rate", f"> 0 and <= {MAX_RATE:g}", lambda v: 0 < v <= MAX_RATE, "<requests per second>"),
    ("cv", "> 0", lambda v: v > 0, "<coefficient of variation, e.g. 4 for bursty>"),
    ("ramp_start", ">= 0", lambda v: v >= 0, "<rate fraction at t=0>"),
    ("ramp_end", ">= 0", lambda v: v >= 0, "<rate fraction at the end>"),
    ("diurnal_period_s", "> 0", lambda v: v > 0, "<seconds per cycle>"),
    ("diurnal_amplitude", "in [0, 1]", lambda v: 0 <= v <= 1, "<amplitude between 0 and 1>"),
    ("mmpp_high_factor", "> 0", lambda v: v > 0, "<high-state rate / low-state rate>"),
    ("mmpp_mean_high_s", "> 0", lambda v: v > 0, "<mean seconds in the high state>"),
    ("mmpp_mean_low_s", "> 0", lambda v: v > 0, "<mean seconds in the low state>"),
    ("trace_window_s", "> 0", lambda v: v > 0, "<seconds per count column, 60 for the Azure trace>"),
    ("time_scale", "> 0", lambda v: v > 0, "<trace seconds per schedule second>"),
    ("rate_scale", f"> 0 and <= {MAX_RATE:g}", lambda v: 0 < v <= MAX_RATE, "<multiplier of the trace's rate>"),
    ("trace_cv", "> 0", lambda v: v > 0, "<coefficient of variation inside a window, 1 = Poisson>"),
    ("trace_start_s", ">= 0", lambda v: v >= 0, "<trace seconds to skip>"),
)


def is_finite_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg: WorkloadConfig, models: list[str]) -> None:
    """Raise HarnessError (one line: problem; fix) on any bad workload input."""
    if not models:
        raise HarnessError("the workload got an empty model list; configure at least one model to serve")
    seen = set()
    for m in models:
        if not isinstance(m, str) or not m:
            raise HarnessError(f"model name {m!r} is not a non-empty string; fix the model list")
        if m in seen:
            raise HarnessError(f"model {m!r} is listed twice; list each model once")
        seen.add(m)

    if cfg.process not in PROCESSES:
        raise HarnessError(
            f"workload.process {cfg.process!r} is unknown; set workload.process to one of {', '.join(PROCESSES)}"
        )
    if cfg.shape not in SHAPES:
        raise HarnessError(f"workload.shape {cfg.shape!r} is unknown; set workload.shape to one of {', '.join(SHAPES)}")

    for key, requirement, test, hint in _NUMERIC_CHECKS:
        value = getattr(cfg, key)
        if not (is_finite_number(value) and test(value)):
            raise HarnessError(f"workload.{key} must be {requirement} (got {value!r}); set workload.{key}={hint}")
    if cfg.shape == "ramp" and cfg.ramp_start == 0 and cfg.ramp_end == 0:
        raise HarnessError(
            "workload.ramp_start and workload.ramp_end are both 0, so no request would be sent; "
            "set workload.ramp_end=<rate fraction at the end, e.g. 1.0>"
        )

    _validate_mix(cfg.mix, models)
    _validate_sizes(cfg)
    if cfg.trace_unit is not None and cfg.trace_unit not in TRACE_UNITS:
        raise HarnessError(f"workload.trace_unit {cfg.trace_unit!r} is unknown; set workload.trace_unit to one of "
                           f"{', '.join(TRACE_UNITS)} (the unit of the trace's numeric times)")

    if cfg.process in TRACE_PROCESSES:
        if cfg.shape != "flat":
            raise HarnessError(
                f"workload.shape={cfg.shape} applies to synthetic processes only, not to {cfg.process}; "
                "set workload.shape=flat"
            )
        if not cfg.trace:
            raise HarnessError(f"workload.trace is not set; set workload.trace={TRACE_HINTS[cfg.process]}")
        resolve_trace_path(cfg.trace, TRACE_HINTS[cfg.process])


def _validate_mix(mix, models: list[str]) -> None:
    if not isinstance(mix, Mapping):
        raise HarnessError(f"workload.mix must be a mapping model -> weight (got {mix!r}); set workload.mix={{}}")
    for model, weight in mix.items():
        if model not in models:
            raise HarnessError(
                f"workload.mix names model {model!r}, which is not served (models: {', '.join(models)}); "
                f"remove it from workload.mix (~workload.mix.{model}) or serve that model"
            )
        if not (is_finite_number(weight) and weight >= 0):
            raise HarnessError(
                f"workload.mix.{model} must be a number >= 0 (got {weight!r}); "
                f"set workload.mix.{model}=<relative weight>"
            )
    if mix and sum(mix.values()) <= 0:
        raise HarnessError("workload.mix weights are all 0; give at least one model a positive weight")


def mix_weights(mix, models: list[str]) -> np.ndarray:
    """Normalised weight per model, in `models` order (equal when mix is empty)."""
    if not mix:
        return np.full(len(models), 1.0 / len(models))
    w = np.array([float(mix.get(m, 0.0)) for m in models])
    return w / w.sum()


SIZES = ("none", "lognormal")


def _validate_sizes(cfg: WorkloadConfig) -> None:
    if cfg.sizes not in SIZES:
        raise HarnessError(f"workload.sizes {cfg.sizes!r} is unknown; set workload.sizes to one of {', '.join(SIZES)}")
    if not (is_finite_number(cfg.size_mean) and cfg.size_mean >= 1):
        raise HarnessError(f"workload.size_mean must be >= 1 (got {cfg.size_mean!r}); set workload.size_mean=<items>")
    if not (is_finite_number(cfg.size_sigma) and cfg.size_sigma >= 0):
        raise HarnessError(f"workload.size_sigma must be >= 0 (got {cfg.size_sigma!r}); "
                           "set workload.size_sigma=<standard deviation of log(items)>")
    if not (isinstance(cfg.size_max, int) and not isinstance(cfg.size_max, bool) and cfg.size_max >= 1):
        raise HarnessError(f"workload.size_max must be an integer >= 1 (got {cfg.size_max!r}); "
                           "set workload.size_max=<largest items per query>")
