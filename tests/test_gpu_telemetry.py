"""NvmlSampler: an empty frame and a reason without NVML; the frame's shape with a fake NVML."""

import math
import time

import pytest

from harness.gpu import telemetry
from harness.gpu.telemetry import NvmlSampler
from harness.records import GPU_COLUMNS


class FakeNvml:
    class NVMLError(Exception):
        pass

    NVML_CLOCK_SM = 1

    class _Util:
        gpu = 42

    class _Mem:
        used = 3 * 2**30

    def nvmlInit(self): pass
    def nvmlShutdown(self): pass
    def nvmlDeviceGetCount(self): return 2
    def nvmlDeviceGetHandleByIndex(self, i): return i
    def nvmlDeviceGetUtilizationRates(self, h): return self._Util()
    def nvmlDeviceGetMemoryInfo(self, h): return self._Mem()
    def nvmlDeviceGetClockInfo(self, h, kind): return 1980

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise self.NVMLError("Not Supported")
        return 350_000


def test_without_nvml_library_the_frame_is_empty_with_a_reason(monkeypatch):
    monkeypatch.setattr(telemetry, "pynvml", None)
    sampler = NvmlSampler(epoch=0.0)
    assert not sampler.available and "not installed" in sampler.reason
    frame = sampler.start().stop()
    assert list(frame.columns) == GPU_COLUMNS and frame.empty


def test_without_a_driver_the_frame_is_empty_with_a_reason(monkeypatch):
    fake = FakeNvml()

    def no_driver():
        raise fake.NVMLError("Driver Not Loaded")

    fake.nvmlInit = no_driver
    monkeypatch.setattr(telemetry, "pynvml", fake)
    sampler = NvmlSampler()
    assert not sampler.available and "Driver Not Loaded" in sampler.reason
    assert sampler.start().stop().empty


def test_on_this_machine_the_sampler_never_fails():
    sampler = NvmlSampler(interval_s=0.01)
    frame = sampler.start().stop()
    assert list(frame.columns) == GPU_COLUMNS
    assert sampler.available or (frame.empty and sampler.reason)


def test_samples_are_timed_from_the_epoch_and_unsupported_readings_are_nan(monkeypatch):
    monkeypatch.setattr(telemetry, "pynvml", FakeNvml())
    clock = iter(range(100, 10_000)).__next__
    sampler = NvmlSampler(epoch=90.0, clock=lambda: float(clock()))
    sampler.sample()
    sampler.sample()
    frame = sampler.stop()
    assert list(frame.columns) == GPU_COLUMNS and len(frame) == 4
    assert frame["t"].tolist() == [10.0, 10.0, 11.0, 11.0]
    assert frame["gpu"].tolist() == [0, 1, 0, 1]
    row = frame.iloc[0]
    assert (row.util, row.mem_used, row.power, row.sm_clock) == (42.0, 3072.0, 350.0, 1980.0)
    assert math.isnan(frame.iloc[1].power)


def test_background_thread_samples_at_the_interval(monkeypatch):
    monkeypatch.setattr(telemetry, "pynvml", FakeNvml())
    sampler = NvmlSampler(interval_s=0.01, gpus=[0]).start()
    time.sleep(0.2)
    frame = sampler.stop()
    assert 5 <= len(frame) <= 40
    assert frame["t"].is_monotonic_increasing


def test_unknown_gpu_index_is_a_reason_not_a_crash(monkeypatch):
    monkeypatch.setattr(telemetry, "pynvml", FakeNvml())
    sampler = NvmlSampler(gpus=[5])
    assert not sampler.available and "5" in sampler.reason


def test_interval_must_be_positive():
    with pytest.raises(ValueError):
        NvmlSampler(interval_s=0)
