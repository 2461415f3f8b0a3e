"""GPU telemetry from NVML (nvidia-ml-py), sampled on a background thread.

    sampler = NvmlSampler(epoch=t0, interval_s=0.1)      # t0 on the same clock as `clock`
    sampler.start(); ...; gpus = sampler.stop()          # DataFrame with harness.records.GPU_COLUMNS

Columns: t (seconds since `epoch` on `clock`), gpu (NVML device index),
util (% of time a kernel ran), mem_used (MiB), power (W), sm_clock (MHz).
A reading the GPU does not support is NaN. Without nvidia-ml-py, the driver
or a GPU the sampler is not `available`, `reason` says why, and stop()
returns an empty frame with the same columns.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable, Sequence

import pandas as pd

from harness.records import GPU_COLUMNS, empty_gpus_frame

try:
    import pynvml
except ImportError:                      # reported through NvmlSampler.reason
    pynvml = None


class NvmlSampler:
    def __init__(self, epoch: float | None = None, interval_s: float = 0.1,
                 clock: Callable[[], float] = time.perf_counter, gpus: Sequence[int] | None = None):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0 (got {interval_s})")
        self.interval_s = interval_s
        self.clock = clock
        self.epoch = clock() if epoch is None else epoch
        self.available = False
        self.reason = ""
        self._handles: list[tuple[int, object]] = []
        self._rows: list[tuple] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open(gpus)

    def _open(self, gpus: Sequence[int] | None) -> None:
        if pynvml is None:
            self.reason = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.reason = f"NVML is unavailable: {exc} (no NVIDIA driver?)"
            return
        try:
            count = pynvml.nvmlDeviceGetCount()
            indices = list(range(count)) if gpus is None else list(gpus)
            bad = [i for i in indices if not 0 <= i < count]
            if count == 0 or not indices:
                self.reason = "NVML found no GPU"
            elif bad:
                self.reason = f"GPU indices {bad} do not exist (NVML sees {count})"
            else:
                self._handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(i)) for i in indices]
                self.available = True
        except pynvml.NVMLError as exc:
            self.reason = f"NVML failed: {exc}"
        if not self.available:
            pynvml.nvmlShutdown()

    def sample(self) -> None:
        """Take one reading of every GPU now (nothing once stopped or when unavailable)."""
        t = self.clock() - self.epoch
        for index, handle in self._handles:
            self._rows.append((t, index, _read(lambda: pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                               _read(lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20),
                               _read(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0),
                               _read(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))))

    def start(self) -> "NvmlSampler":
        if self.available and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="nvml-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> pd.DataFrame:
        """Stop sampling and return every reading taken (empty when unavailable)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._handles:
            pynvml.nvmlShutdown()
            self._handles = []
        if not self._rows:
            return empty_gpus_frame()
        frame = pd.DataFrame(self._rows, columns=GPU_COLUMNS).astype({"gpu": "int64"})
        return frame.astype({c: float for c in GPU_COLUMNS if c != "gpu"})

    def _loop(self) -> None:
        next_at = self.clock()
        while not self._stop.is_set():
            self.sample()
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - self.clock()))


def _read(get) -> float:
    try:
        return float(get())
    except pynvml.NVMLError:
        return math.nan
