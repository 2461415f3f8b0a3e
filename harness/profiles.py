"""Latency profiles: l(b) per (GPU type, partition, model), dense over batch sizes.

A profile file is JSON at profiles/<gpu_type>/<partition>.json:

    {"gpu_type": "h200", "partition": "whole", "emulated_partition": false,
     "provenance": {"source": ..., "gpu_name": ..., "driver": ..., "torch": ..., "date": ...},
     "models": {"resnet50": {"batch": [1, 8, 32], "mean_ms": [...],
                             "std_ms": [...], "p99_ms": [...]}}}

A model measured in stages also has `"stages": [{"name": "stem", "batch": [...],
"mean_ms": [...], ...}, ...]`, one curve per stage in order, each with the
same fields.

`batch` must start at 1 and increase; `std_ms` and `p99_ms` may be omitted
when only means were measured (std 0, p99 = mean). The largest measured size
is the model's largest batch on that slot. `gpu_type: sleep` is the linear
model l(b) = a*b + c for scheduler-only studies (no file).

Between measured batch sizes a profile's batch costs the next measured
size's latency: a GPU slot captures one CUDA graph per measured size and
runs a batch in between on the next one, padded (harness.gpu.executor), so
its time is a step function of the batch (real H100 and H200 runs: a batch
of 5, 6, 7 or 8 takes the same time). Curves made from points in code
interpolate linearly unless told `step=True`.

An MPS share's latencies are measured beside busy sibling shares (provenance
`siblings_busy`): `mean_ms` is the share's time while the rest of the GPU
works, `alone_mean_ms` while it idles. A served share is somewhere between,
as busy as its siblings are: `LatencyCurve.beside(b, busy)` is the alone
time plus the fraction `busy` of the rest of the device at work times what
busy siblings added when profiled. On real H100 and H200 shares that
predicted each model's mean served batch at 0.99-1.06x (one case 1.10x;
siblings at work 0-78% of the time), where the busy profile interpolated
between sizes gave 0.76-1.21x (benchmarks/batch_time.py). Policies plan
with `mean` (the busy time, a bound), and both runtimes expect a share's
batch to take it, as they must of a real share; emulated GPUs run `beside`,
at the fraction busy when the batch starts.

What busy siblings add depends on what they run: siblings replaying batches
of 64-128 slowed real H100 shares 1.7-2.0 times as much as siblings at batch
16, where the busy profile is measured (Triton past capacity ran 8-17% over
`beside`). A profile may therefore hold the share's means beside siblings at
several batch sizes, `beside_ms: {"16": [...], "128": [...]}` (one list per
sibling batch, one value per batch size; the profiler's --sibling-batch
16,128). `LatencyCurve.beside(b, busy, sibling_batch)` then takes what the
siblings added at their batch size, linear in log2 of it between the
measured ones and held at the ends; without `beside_ms`, or not told the
siblings' batch, what they added at the profile's own sibling batch.

A profile may also say what starting a slot costs on that GPU: `start_s`
(top level: a worker process's start, its imports and CUDA context, before
any model) and each model's `load_s` (building it, warming it up and
capturing its CUDA graphs), both measured by the profiler. A slot a
reconfiguration adds then takes `start_s` plus its models' `load_s` to join
on an emulated GPU as on a real one (LatencyCurve.start_cost); without them
the sim charges runtime.slot_start_s and a live emulated worker its own
start (about half a second), which a real GPU's 13 s re-cut dwarfs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable

import numpy as np

from harness.errors import HarnessError

PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"
SLEEP = "sleep"


@dataclass(frozen=True)
class LatencyCurve:
    """Latency in seconds per batch size; index b of each list is batch size b (index 0 unused).

    A model served in stages (run one stage at a time, LazyBatching) also has a curve per stage, in
    order (`stages`, named `stage_names`); a whole-model curve has none."""

    mean: list[float]
    std: list[float]
    p99: list[float]
    stages: tuple["LatencyCurve", ...] = ()
    stage_names: tuple[str, ...] = ()
    alone: list[float] | None = None       # measured with the rest of the GPU idle; None: as `mean`
    sizes: tuple[int, ...] = ()            # the measured batch sizes (the ones a GPU slot captures)
    # The means beside busy siblings replaying each of several batch sizes, ((sibling batch, means), ...)
    # by sibling batch, each dense like `mean`; () where only `mean` was measured beside them.
    siblings: tuple[tuple[int, list[float]], ...] = ()
    # What starting a slot that serves the model costs here (the profile's start_s, the model's load_s).
    start_s: float | None = None
    load_s: float | None = None

    @property
    def max_batch(self) -> int:
        return len(self.mean) - 1

    @cached_property
    def rising(self) -> bool:
        """Whether the mean latency never falls as the batch grows (measured profiles may dip): a search
        over batch sizes may then bisect."""
        return self.mean[1:] == sorted(self.mean[1:])

    def beside(self, b: int, busy: float, sibling_batch: float | None = None) -> float:
        """The mean time of a batch of `b` while the fraction `busy` (0..1) of the rest of its device works,
        running batches of about `sibling_batch` (None: unknown): the alone time plus that fraction of what
        busy siblings added when it was profiled, beside siblings at that batch size where measured."""
        if self.alone is None:
            return self.mean[b]
        alone = self.alone[b]
        if sibling_batch is None or not self.siblings or sibling_batch <= 0:
            return alone + busy * (self.mean[b] - alone)
        # Linear in log2 of the siblings' batch between the measured ones, held at the ends (in plain
        # Python: two or three points, at every batch start of a share in the sim).
        x, at, means = math.log2(sibling_batch), self._sibling_log2, self.siblings
        if x <= at[0]:
            added = means[0][1][b] - alone
        elif x >= at[-1]:
            added = means[-1][1][b] - alone
        else:
            i = next(k for k in range(1, len(at)) if x < at[k])
            w = (x - at[i - 1]) / (at[i] - at[i - 1])
            added = (1 - w) * means[i - 1][1][b] + w * means[i][1][b] - alone
        return alone + busy * added

    @cached_property
    def _sibling_log2(self) -> list[float]:
        return [math.log2(size) for size, _ in self.siblings]

    @staticmethod
    def start_cost(curves: Iterable["LatencyCurve"]) -> float | None:
        """Seconds a slot serving these models takes to start: a worker process, then each model loaded;
        None unless the profile measured every part."""
        curves = list(curves)
        if not curves or any(c.start_s is None or c.load_s is None for c in curves):
            return None
        return max(c.start_s for c in curves) + sum(c.load_s for c in curves)

    def padded(self, b: int) -> int:
        """The measured size a batch of `b` runs at (a GPU slot's next captured graph); `b` on a curve made
        in code, whose every size is measured."""
        if not self.sizes:
            return b
        padded = self._padded
        return padded[b] if b < len(padded) else self.sizes[-1]

    @cached_property
    def _padded(self) -> list[int]:
        """padded(b) for every b up to the largest measured size (looked up at every batch a share runs)."""
        return [0] + [self.sizes[i] for i in np.searchsorted(self.sizes, range(1, self.sizes[-1] + 1))]

    def largest_batch_within(self, budget: float) -> int:
        """Largest b with mean l(b) <= budget (0 if even b=1 does not fit)."""
        best = 0
        for b in range(1, len(self.mean)):
            if self.mean[b] <= budget:
                best = b
        return best

    @classmethod
    def from_points(cls, batch, mean_ms, std_ms=None, p99_ms=None, where: str = "", alone_ms=None,
                    step: bool = False, beside_ms: dict | None = None) -> "LatencyCurve":
        """A curve through measured points: linear between them, or with `step` each size at the next
        measured size's values (a batch padded to the next captured graph). `beside_ms`: {sibling batch:
        means beside siblings replaying it}, with `alone_ms`."""
        batch = [int(b) for b in batch]
        if not batch or batch[0] != 1:
            raise HarnessError(f"{where}: batch sizes must start at 1 (got {batch[:3]}...); "
                               "measure batch 1 or rerun the profiler")
        if any(b2 <= b1 for b1, b2 in zip(batch, batch[1:])):
            raise HarnessError(f"{where}: batch sizes must strictly increase (got {batch}); fix the profile file")
        siblings = _sibling_batches(beside_ms, alone_ms, where)
        columns = {"mean_ms": mean_ms, "std_ms": std_ms, "p99_ms": p99_ms, "alone_mean_ms": alone_ms,
                   **{f"beside_ms[{k}]": v for k, v in siblings}}
        for name, values in columns.items():
            if values is not None and len(values) != len(batch):
                raise HarnessError(f"{where}: {name} has {len(values)} values for {len(batch)} batch sizes; "
                                   "give one value per batch size")
            if values is not None and any(not np.isfinite(v) or v < 0 for v in values):
                raise HarnessError(f"{where}: {name} holds a negative or non-finite latency; fix the profile file")
        if any(v <= 0 for v in mean_ms):
            raise HarnessError(f"{where}: mean_ms must be > 0 for every batch size; fix the profile file")
        sizes = np.arange(1, batch[-1] + 1)
        # With `step`, size s takes the values of the first measured size >= s.
        at = sizes if not step else np.asarray(batch)[np.searchsorted(batch, sizes)]

        def dense(values):
            seconds = np.interp(at, batch, np.asarray(values, dtype=float)) / 1000.0
            return [0.0] + seconds.tolist()

        mean = dense(mean_ms)
        std = dense(std_ms) if std_ms is not None else [0.0] * len(mean)
        p99 = dense(p99_ms) if p99_ms is not None else list(mean)
        return cls(mean, std, p99, alone=dense(alone_ms) if alone_ms is not None else None, sizes=tuple(batch),
                   siblings=tuple((k, dense(v)) for k, v in siblings))

    @classmethod
    def linear(cls, a_ms: float, c_ms: float, max_batch: int, stages: int = 0) -> "LatencyCurve":
        """The sleep model l(b) = a*b + c (Symphony's example: a=1.082 ms, c=5.204 ms); with `stages`,
        split into that many equal stages."""
        if a_ms < 0 or c_ms <= 0 or max_batch < 1 or stages < 0:
            raise HarnessError(f"sleep model needs a_ms >= 0, c_ms > 0, max_batch >= 1, stages >= 0 "
                               f"(got a_ms={a_ms}, c_ms={c_ms}, max_batch={max_batch}, stages={stages}); "
                               "fix cluster.sleep")
        sizes = list(range(1, max_batch + 1))
        whole = cls.from_points(sizes, [a_ms * b + c_ms for b in sizes], where="sleep model")
        if not stages:
            return whole
        part = cls.linear(a_ms / stages, c_ms / stages, max_batch)
        return cls(whole.mean, whole.std, whole.p99, (part,) * stages, tuple(f"stage{k}" for k in range(stages)))

    def with_stages(self, stages: list["LatencyCurve"], names: list[str]) -> "LatencyCurve":
        return dataclasses.replace(self, stages=tuple(stages), stage_names=tuple(names))

    def costing(self, start_s: float | None, load_s: float | None) -> "LatencyCurve":
        """The curve with what starting a slot that serves it costs (see start_cost)."""
        return dataclasses.replace(self, start_s=start_s, load_s=load_s)


def _seconds(value, where: str) -> float | None:
    """A measured start or load time: None if absent, else a finite number of seconds >= 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 3600:
        raise HarnessError(f"{where} must be seconds in [0, 3600) (got {value!r}); fix the profile file")
    return float(value)


def _sibling_batches(beside_ms, alone_ms, where: str) -> list[tuple[int, list]]:
    """A profile's `beside_ms` ({"16": means, "128": means}) as [(16, means), (128, means)], checked."""
    if beside_ms is None:
        return []
    if not isinstance(beside_ms, dict) or not beside_ms:
        raise HarnessError(f"{where}: beside_ms must map sibling batch sizes to lists of means; fix the profile file")
    if alone_ms is None:
        raise HarnessError(f"{where}: beside_ms needs alone_mean_ms (what the siblings add is measured from it); "
                           "fix the profile file")
    out = []
    for key, means in beside_ms.items():
        try:
            size = int(key)
        except (TypeError, ValueError):
            size = 0
        if size < 1 or str(size) != str(key):
            raise HarnessError(f"{where}: beside_ms key {key!r} is not a sibling batch size >= 1; fix the profile file")
        if not isinstance(means, list):
            raise HarnessError(f"{where}: beside_ms[{key}] must be a list of means; fix the profile file")
        out.append((size, means))
    return sorted(out)


@dataclass(frozen=True)
class Profile:
    gpu_type: str
    partition: str
    emulated_partition: bool
    provenance: dict
    curves: dict[str, LatencyCurve]
    path: str = ""
    # The file's SHA-256 (16 hex digits): which measurement a run emulated or planned with, where a profile
    # re-measured or edited in place keeps its name.
    digest: str = ""


def profile_path(gpu_type: str, partition: str) -> Path:
    return PROFILES_DIR / gpu_type / f"{partition}.json"


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw)
    except FileNotFoundError:
        available = sorted(str(p.relative_to(PROFILES_DIR)) for p in PROFILES_DIR.glob("*/*.json"))
        raise HarnessError(f"latency profile '{path.parent.name}/{path.name}' not found; available: "
                           f"{', '.join(available) or 'none'} (choose cluster.gpu_type/partition or run the profiler)"
                           ) from None
    except (OSError, ValueError) as exc:
        raise HarnessError(f"latency profile '{path}' is unreadable ({exc}); fix or re-measure it") from None
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise HarnessError(f"latency profile '{path}' has no 'models' mapping; see harness/profiles.py for the format")
    curves = {}
    for model, points in data["models"].items():
        where = f"profile '{path.name}' model '{model}'"
        if not isinstance(points, dict) or "batch" not in points or "mean_ms" not in points:
            raise HarnessError(f"{where}: needs 'batch' and 'mean_ms' lists; fix the profile file")
        curves[model] = LatencyCurve.from_points(points["batch"], points["mean_ms"], points.get("std_ms"),
                                                 points.get("p99_ms"), where, points.get("alone_mean_ms"), step=True,
                                                 beside_ms=points.get("beside_ms"))
        stages = points.get("stages") or []
        if stages:
            parts = [LatencyCurve.from_points(s.get("batch", []), s.get("mean_ms", []), s.get("std_ms"),
                                              s.get("p99_ms"), f"{where} stage {k}", s.get("alone_mean_ms"),
                                              step=True) for k, s in enumerate(stages)]
            curves[model] = curves[model].with_stages(parts, [str(s.get("name", k)) for k, s in enumerate(stages)])
        curves[model] = curves[model].costing(_seconds(data.get("start_s"), f"profile '{path.name}' start_s"),
                                              _seconds(points.get("load_s"), f"{where}: load_s"))
    return Profile(data.get("gpu_type", path.parent.name), data.get("partition", path.stem),
                   bool(data.get("emulated_partition", False)), data.get("provenance", {}), curves, str(path),
                   hashlib.sha256(raw).hexdigest()[:16])


def curves_for(gpu_type: str, partition: str, models: list[str], sleep: dict | None = None) -> dict[str, LatencyCurve]:
    """The latency curve of each model on one kind of slot; every model must be profiled."""
    if gpu_type == SLEEP:
        sleep = sleep or {}
        curve = LatencyCurve.linear(float(sleep.get("a_ms", 1.082)), float(sleep.get("c_ms", 5.204)),
                                    int(sleep.get("max_batch", 64)), int(sleep.get("stages", 0)))
        return {m: curve for m in models}
    profile = load_profile(profile_path(gpu_type, partition))
    missing = [m for m in models if m not in profile.curves]
    if missing:
        raise HarnessError(f"profile {gpu_type}/{partition} has no latencies for {', '.join(missing)}; "
                           f"profiled models: {', '.join(sorted(profile.curves))} (choose models=... or profile them)")
    return {m: profile.curves[m] for m in models}
