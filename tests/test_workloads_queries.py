"""Batched queries: a log-normal number of items per request, written as the schedule's `size` column."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from harness.errors import HarnessError
from workloads import WorkloadConfig, build_schedule

ROOT = Path(__file__).resolve().parent.parent
MODELS = ["a", "b"]


def build(duration=50.0, **cfg):
    return build_schedule(WorkloadConfig(**cfg), MODELS, duration, 1, 2)


def test_sizes_are_log_normal_rounded_and_clipped():
    df = build(rate=2000.0, sizes="lognormal", size_mean=8.0, size_sigma=1.0, size_max=64)
    sizes = df["size"].to_numpy()
    assert list(df.columns) == ["id", "model", "t_sched", "size"] and df["size"].dtype == np.int64
    assert sizes.min() == 1 and sizes.max() == 64               # 100,000 draws reach both clips
    # log(size) ~ N(mu, 1) with mu = log 8 - 1/2: the median is e^mu = 4.85, rounded 5; P(size > 64) is
    # P(z > (log 64 - mu) / 1 = 2.58) = 0.5%, all clipped to 64; the mean stays near 8, a little under.
    assert np.median(sizes) == 5
    assert (sizes == 64).mean() == pytest.approx(0.005, abs=0.001)
    assert 7.5 < sizes.mean() < 8.0


def test_sizes_leave_the_arrivals_as_they_were():
    plain = build(rate=500.0)
    queries = build(rate=500.0, sizes="lognormal")
    assert "size" not in plain
    assert plain.equals(queries[["id", "model", "t_sched"]])


def test_sigma_zero_gives_one_size():
    assert set(build(rate=100.0, sizes="lognormal", size_mean=6.0, size_sigma=0.0)["size"]) == {6}


@pytest.mark.parametrize("key, value", [("sizes", "gamma"), ("size_mean", 0.5), ("size_mean", float("nan")),
                                        ("size_sigma", -1.0), ("size_max", 0)])
def test_bad_size_settings_fail_with_one_line_naming_the_key(key, value):
    with pytest.raises(HarnessError, match=f"workload.{key}"):
        build(**{key: value})


def test_the_batched_queries_config_builds_queries():
    raw = OmegaConf.load(ROOT / "conf" / "workload" / "batched_queries.yaml")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(WorkloadConfig), raw))
    df = build_schedule(cfg, MODELS, 10.0, 0, 0)
    assert cfg.sizes == "lognormal" and 3000 < len(df) < 5000 and df["size"].between(1, cfg.size_max).all()


def test_a_system_that_does_not_take_queries_refuses_them_in_one_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness", "runtime=sim", "system=eager", "workload=batched_queries",
                          "duration_s=10", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and "paris_elsa" in run.stderr and "Traceback" not in run.stderr
