"""Tests of the workloads package: arrival statistics, trace replay, errors."""

import csv
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from harness.errors import HarnessError
import workloads.arrivals
from workloads import WorkloadConfig, build_schedule, validate
from workloads.traces import DATA_DIR, REPO_ROOT, round_robin, write_samples, write_synthetic_maf

MODELS = ["resnet50", "bert", "yolo"]
MAF_SAMPLE = DATA_DIR / "maf_sample.csv"
TS_SAMPLE = DATA_DIR / "timestamps_sample.csv"


def build(models=MODELS, duration=100.0, seed=1, mapping_seed=2, **cfg):
    return build_schedule(WorkloadConfig(**cfg), models, duration, seed, mapping_seed)


def gaps_cv(t):
    g = np.diff(np.asarray(t))
    return g.std() / g.mean()


def write_maf(path, counts):
    """A MAF-format file with the given counts (functions x windows)."""
    counts = np.asarray(counts)
    names = [str(i) for i in range(1, counts.shape[1] + 1)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["HashOwner", "HashApp", "HashFunction", "Trigger", *names])
        for i, row in enumerate(counts):
            w.writerow(["o", "a", f"f{i}", "http", *row.tolist()])
    return str(path)


# --- the schedule table ---------------------------------------------------------------


@pytest.mark.parametrize("process", ["constant", "poisson", "gamma", "mmpp"])
@pytest.mark.parametrize("shape", ["flat", "ramp", "diurnal"])
def test_schedule_table_contract(process, shape):
    df = build(process=process, shape=shape, rate=300.0, duration=20.0)
    assert list(df.columns) == ["id", "model", "t_sched"]
    assert df["id"].dtype == np.int64
    assert df["t_sched"].dtype == np.float64
    assert (df["id"].to_numpy() == np.arange(len(df))).all()
    t = df["t_sched"].to_numpy()
    assert len(t) > 1000
    assert (np.diff(t) >= 0).all() and t[0] >= 0 and t[-1] < 20.0
    assert set(df["model"]) <= set(MODELS)
    assert isinstance(df["model"].iloc[0], str)


# --- synthetic processes --------------------------------------------------------------


@pytest.mark.parametrize(
    "process, extra, duration",
    [
        ("constant", {}, 100.0),
        ("poisson", {}, 100.0),
        ("gamma", {"cv": 4.0}, 100.0),
        ("mmpp", {}, 5000.0),  # the MMPP rate wanders: average over ~1000 state cycles
    ],
)
def test_mean_rate(process, extra, duration):
    rate = 2_000_000 / duration
    df = build(process=process, rate=rate, duration=duration, **extra)
    assert len(df) / duration == pytest.approx(rate, rel=0.03)


def test_constant_is_evenly_spaced_per_model():
    df = build(process="constant", rate=300.0, duration=10.0)
    for _, t in df.groupby("model")["t_sched"]:
        assert np.allclose(np.diff(t), 0.01)


def test_gamma_cv_matches_config():
    for cv in (0.5, 2.0, 4.0):
        df = build(models=["m"], process="gamma", cv=cv, rate=10_000.0, duration=100.0)
        assert gaps_cv(df["t_sched"]) == pytest.approx(cv, rel=0.05)


def test_poisson_cv_is_one_and_mmpp_burstier():
    poisson = build(models=["m"], process="poisson", rate=1000.0, duration=500.0)
    mmpp = build(models=["m"], process="mmpp", rate=1000.0, duration=500.0)
    assert gaps_cv(poisson["t_sched"]) == pytest.approx(1.0, rel=0.02)
    assert gaps_cv(mmpp["t_sched"]) > 1.1
    # Counts per second vary far more than Poisson's sqrt(mean).
    per_second = np.bincount(mmpp["t_sched"].astype(int), minlength=500)
    assert per_second.std() > 5 * np.sqrt(per_second.mean())


def test_ramp_rises():
    df = build(process="poisson", shape="ramp", ramp_start=0.2, ramp_end=1.0, rate=1000.0, duration=100.0)
    t = df["t_sched"].to_numpy()
    first, second = (t < 50).sum(), (t >= 50).sum()
    # Integral of 0.2 + 0.8 t/D: 0.2 D in the first half, 0.4 D in the second.
    assert second / first == pytest.approx(2.0, rel=0.03)
    assert len(t) == pytest.approx(0.6 * 1000 * 100, rel=0.02)


@pytest.mark.parametrize("duration", [600.0, 75.0])  # whole periods and a partial one
def test_diurnal_keeps_mean_and_swings(duration):
    df = build(process="poisson", shape="diurnal", rate=1000.0, duration=duration, diurnal_period_s=60.0)
    t = df["t_sched"].to_numpy()
    assert len(t) / duration == pytest.approx(1000.0, rel=0.02)
    # Rate 1 + 0.8 sin(2 pi t/60 - pi/2): trough at t = 0, peak at t = 30.
    trough, peak = (t < 5).sum(), ((t >= 27.5) & (t < 32.5)).sum()
    assert peak > 5 * trough


def test_mix_weights_respected():
    df = build(process="poisson", rate=10_000.0, duration=50.0, mix={"resnet50": 3.0, "bert": 1.0})
    share = df["model"].value_counts(normalize=True)
    assert share["resnet50"] == pytest.approx(0.75, abs=0.01)
    assert share["bert"] == pytest.approx(0.25, abs=0.01)
    assert "yolo" not in share  # missing from a non-empty mix: weight 0


def test_equal_weights_without_mix():
    share = build(process="gamma", cv=2.0, rate=30_000.0, duration=50.0)["model"].value_counts(normalize=True)
    assert np.allclose(share.to_numpy(), 1 / 3, atol=0.01)


@pytest.mark.parametrize("process", ["constant", "poisson", "gamma", "mmpp"])
def test_deterministic_for_seed(process):
    a = build(process=process, shape="diurnal", seed=7, duration=20.0)
    b = build(process=process, shape="diurnal", seed=7, duration=20.0)
    c = build(process=process, shape="diurnal", seed=8, duration=20.0)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


def test_tiny_rate_gives_empty_schedule():
    df = build(process="mmpp", rate=1e-6, duration=1.0)
    assert len(df) == 0 and list(df.columns) == ["id", "model", "t_sched"]


def test_million_requests_build():
    df = build(process="gamma", cv=4.0, rate=1_000_000.0, duration=1.0)
    assert len(df) == pytest.approx(1_000_000, rel=0.02)


# --- MAF per-minute count traces ------------------------------------------------------


def maf_counts(path):
    return pd.read_csv(path).iloc[:, 4:].to_numpy()


@pytest.mark.parametrize("trace_cv", [1.0, 4.0])
def test_maf_total_matches_counts(trace_cv):
    counts = maf_counts(MAF_SAMPLE)
    # 30 trace minutes from minute 10, at 60x speed, with doubled counts.
    df = build(
        process="maf_trace",
        trace=str(MAF_SAMPLE),
        trace_start_s=600.0,
        time_scale=60.0,
        duration=30.0,
        rate_scale=2.0,
        trace_cv=trace_cv,
    )
    expected = counts[:, 10:40].sum() * 2.0
    assert len(df) == pytest.approx(expected, rel=0.04)
    assert df["t_sched"].max() < 30.0


def test_maf_partial_windows(tmp_path):
    path = write_maf(tmp_path / "t.csv", [[6000, 12000, 3000]])
    # Trace seconds [30, 150): half of window 1, all of window 2, half of window 3.
    df = build(process="maf_trace", trace=path, trace_start_s=30.0, duration=120.0, models=["m"])
    assert len(df) == pytest.approx(3000 + 12000 + 1500, rel=0.03)
    t = df["t_sched"].to_numpy()
    assert (t < 30).sum() == pytest.approx(3000, rel=0.06)


def test_maf_round_robin_mapping(tmp_path):
    # Function i is active only in window i, so each window's model is i's model.
    path = write_maf(tmp_path / "t.csv", np.eye(6, dtype=int) * 600)
    df = build(process="maf_trace", trace=path, duration=6.0, time_scale=60.0, mapping_seed=5)
    window = df["t_sched"].astype(int)
    model_of_window = df.groupby(window)["model"].agg(lambda m: set(m))
    assert all(len(m) == 1 for m in model_of_window)
    perm = np.random.default_rng(5).permutation(6)
    assert [m.pop() for m in model_of_window] == [MODELS[perm[i] % 3] for i in range(6)]


def test_maf_mapping_seed_moves_models_not_times():
    kw = dict(process="maf_trace", trace=str(MAF_SAMPLE), time_scale=60.0, duration=20.0)
    a, b = build(mapping_seed=1, **kw), build(mapping_seed=2, **kw)
    assert np.array_equal(a["t_sched"], b["t_sched"])
    assert not a["model"].equals(b["model"])
    pd.testing.assert_frame_equal(a, build(mapping_seed=1, **kw))


def test_maf_time_scale_halves_span():
    kw = dict(process="maf_trace", trace=str(MAF_SAMPLE), duration=100.0)
    slow, fast = build(time_scale=60.0, **kw), build(time_scale=120.0, **kw)
    assert slow["t_sched"].max() == pytest.approx(60.0, abs=0.5)
    assert fast["t_sched"].max() == pytest.approx(30.0, abs=0.5)
    assert len(fast) == pytest.approx(len(slow), rel=0.03)


def test_maf_mix_restricts_models():
    df = build(process="maf_trace", trace=str(MAF_SAMPLE), time_scale=60.0, duration=10.0, mix={"bert": 1.0})
    assert set(df["model"]) == {"bert"}


def test_round_robin_turns():
    assert round_robin(np.full(3, 1 / 3), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    turns = round_robin(np.array([0.5, 0.0, 0.25, 0.25]), 1000)
    assert np.bincount(turns, minlength=4).tolist() == [500, 0, 250, 250]


# --- per-invocation timestamp traces --------------------------------------------------


def test_timestamps_sample_replayed_exactly():
    df = build(process="timestamp_trace", trace=str(TS_SAMPLE), duration=1000.0)
    raw = pd.read_csv(TS_SAMPLE)
    start = np.sort(raw["end_timestamp"] - raw["duration"])  # invocation start = end - duration
    assert len(df) == len(raw)
    assert np.allclose(df["t_sched"], start - start[0])


def test_timestamps_time_scale_halves_times():
    kw = dict(process="timestamp_trace", trace=str(TS_SAMPLE), duration=1000.0)
    assert np.allclose(build(time_scale=2.0, **kw)["t_sched"], build(**kw)["t_sched"] / 2)


def test_timestamps_span_selection():
    df = build(process="timestamp_trace", trace=str(TS_SAMPLE), trace_start_s=30.0, time_scale=2.0, duration=20.0)
    full = build(process="timestamp_trace", trace=str(TS_SAMPLE), duration=1000.0)["t_sched"]
    assert len(df) == ((full >= 30) & (full < 70)).sum()


def test_timestamps_function_mapping_is_per_function():
    df = build(process="timestamp_trace", trace=str(TS_SAMPLE), duration=1000.0)
    raw = pd.read_csv(TS_SAMPLE)
    raw["t"] = raw["end_timestamp"] - raw["duration"]
    raw = raw.sort_values("t", kind="stable").reset_index(drop=True)
    # Every invocation of a function goes to the same model, and all models get some.
    assert (pd.DataFrame({"func": raw["func"], "model": df["model"]}).groupby("func")["model"].nunique() == 1).all()
    assert set(df["model"]) == set(MODELS)


@pytest.mark.parametrize("rate_scale", [0.5, 2.5])
def test_timestamps_rate_scale(rate_scale):
    kw = dict(process="timestamp_trace", trace=str(TS_SAMPLE), duration=1000.0)
    df = build(rate_scale=rate_scale, **kw)
    assert len(df) == pytest.approx(6000 * rate_scale, rel=0.05)
    pd.testing.assert_frame_equal(df, build(rate_scale=rate_scale, **kw))


def test_timestamps_without_function_column_take_turns(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_time\n" + "".join(f"{10 + 0.1 * i}\n" for i in range(10)))
    df = build(process="timestamp_trace", trace=str(path), duration=5.0)
    assert np.allclose(df["t_sched"], 0.1 * np.arange(10))
    assert df["model"].tolist() == (MODELS * 4)[:10]


def test_timestamps_iso_datetimes(tmp_path):
    # Azure LLM inference trace style.
    path = tmp_path / "llm.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:16:47.1000000,879,20\n"
    )
    df = build(process="timestamp_trace", trace=str(path), duration=100.0, models=["llm"])
    assert np.allclose(df["t_sched"], [0.0, 4.314579, 60.41941])


def test_timestamps_header_with_bom_and_spaces(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes("\ufefffunc, timestamp\nf,1.5\ng,2.0\n".encode())
    df = build(process="timestamp_trace", trace=str(path), duration=5.0)
    assert np.allclose(df["t_sched"], [0.0, 0.5])


# --- shipped files --------------------------------------------------------------------


def test_shipped_samples_regenerate(tmp_path):
    write_samples(tmp_path)
    for name in ("maf_sample.csv", "timestamps_sample.csv"):
        assert (tmp_path / name).read_bytes() == (DATA_DIR / name).read_bytes(), name


def test_synthetic_maf_writer_shape(tmp_path):
    write_synthetic_maf(tmp_path / "m.csv", n_functions=5, n_minutes=7, seed=3)
    df = pd.read_csv(tmp_path / "m.csv")
    assert list(df.columns) == ["HashOwner", "HashApp", "HashFunction", "Trigger", *map(str, range(1, 8))]
    assert len(df) == 5 and (df.iloc[:, 4:] >= 0).all().all()


CONF_DIR = REPO_ROOT / "conf" / "workload"


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_config_group_files(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative trace paths must resolve against the repository root
    cfg = OmegaConf.merge(OmegaConf.structured(WorkloadConfig), OmegaConf.load(path))
    assert cfg.name == path.stem
    df = build_schedule(cfg, MODELS, 10.0, 0, 0)
    assert 100 <= len(df) / 10.0 <= 1500


def test_config_group_covers_every_process():
    names = {p.stem for p in CONF_DIR.glob("*.yaml")}
    assert {"constant", "poisson", "bursty", "mmpp", "ramp", "diurnal", "maf_trace", "timestamp_trace"} <= names


# --- bad input ------------------------------------------------------------------------


def raises(fragments, **kw):
    with pytest.raises(HarnessError) as e:
        build(**kw)
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    "fragments, kw",
    [
        (["workload.rate", "-5"], {"rate": -5.0}),
        (["workload.rate", "1e+08"], {"rate": 1e9}),
        (["workload.rate"], {"rate": float("nan")}),
        (["workload.cv"], {"process": "gamma", "cv": 0.0}),
        (["workload.process", "'weibull'", "mmpp"], {"process": "weibull"}),
        (["workload.shape", "'zigzag'", "diurnal"], {"shape": "zigzag"}),
        (["workload.diurnal_amplitude"], {"shape": "diurnal", "diurnal_amplitude": 1.5}),
        (["workload.ramp_start", "workload.ramp_end"], {"shape": "ramp", "ramp_start": 0.0, "ramp_end": 0.0}),
        (["workload.mmpp_mean_high_s"], {"process": "mmpp", "mmpp_mean_high_s": 0.0}),
        (["workload.mix", "'gpt2'", "~workload.mix.gpt2"], {"mix": {"gpt2": 1.0}}),
        (["workload.mix.bert"], {"mix": {"bert": -1.0}}),
        (["workload.mix", "all 0"], {"mix": {"bert": 0.0, "yolo": 0}}),
        (["model list"], {"models": []}),
        (["'bert'", "twice"], {"models": ["bert", "bert"]}),
        (["duration"], {"duration": 0.0}),
        (["duration"], {"duration": -3.0}),
        (["seed"], {"seed": -1}),
        (["mapping_seed"], {"mapping_seed": 1.5}),
        (["workload.trace", "not set"], {"process": "maf_trace"}),
        (["'nope.csv'", "not found", "workload.trace"], {"process": "maf_trace", "trace": "nope.csv"}),
        (["'nope.csv'", "not found"], {"process": "timestamp_trace", "trace": "nope.csv"}),
        (["workload.shape"], {"process": "maf_trace", "trace": str(MAF_SAMPLE), "shape": "ramp"}),
        (["workload.trace_window_s"], {"process": "maf_trace", "trace": str(MAF_SAMPLE), "trace_window_s": 0.0}),
        (["workload.time_scale"], {"time_scale": -1.0}),
        (["workload.rate_scale"], {"rate_scale": 0.0}),
        (["workload.trace_cv"], {"trace_cv": 0.0}),
        (["workload.trace_start_s"], {"trace_start_s": -1.0}),
        (
            ["workload.trace_start_s", "past the end"],
            {"process": "maf_trace", "trace": str(MAF_SAMPLE), "trace_start_s": 1e6},
        ),
    ],
)
def test_bad_config_raises(fragments, kw):
    raises(fragments, **kw)


def test_validate_alone():
    validate(WorkloadConfig(), MODELS)
    with pytest.raises(HarnessError):
        validate(WorkloadConfig(rate=0.0), MODELS)


def write(tmp_path, text, name="t.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


HEADER = "HashOwner,HashApp,HashFunction,Trigger,1,2,3\n"


@pytest.mark.parametrize(
    "text, fragments",
    [
        (HEADER + "o,a,f,http,1,2,3\no,a,g,http,1,abc,3\n", ["line 3", "'abc'", "column '2'", "non-negative integer"]),
        (HEADER + "o,a,f,http,1,2,3\n\no,a,g,http,1,-2,3\n", ["line 4", "'-2'"]),
        (HEADER + "o,a,f,http,1,2\n", ["line 2", "fields"]),
        (HEADER + "o,a,f,http,1,2,3\no,a,g,http,1,2,3,4\n", ["line 3", "8 fields", "header has 7"]),
        ("HashOwner,HashFunction,1,2\no,f,1,2\n", ["'HashApp'", "'Trigger'"]),
        ("HashOwner,HashApp,HashFunction,Trigger\no,a,f,http\n", ["'1'"]),
        ("HashOwner,HashApp,HashFunction,Trigger,1,3\no,a,f,http,1,2\n", ["1..N"]),
        ("", ["empty"]),
        (HEADER, ["no invocations"]),
        (HEADER + "o,a,f,http,0,0,0\n", ["no invocations"]),
        (HEADER + "o,a,f,http,1,2,3\no,a,g,http,1,99999999999999999999,3\n",
         ["line 3", "'99999999999999999999'", "column '2'", "too large"]),
        (HEADER + "o,a,f,http,1,1e30,3\n", ["line 2", "'1e30'", "non-negative integer"]),
        # int64 max overflowed the row sum: "no invocations" before; now too many requests.
        (HEADER + "o,a,f,http,0,9223372036854775807,9223372036854775807\n", ["would hold", "requests"]),
    ],
)
def test_bad_maf_file(tmp_path, text, fragments):
    path = write(tmp_path, text)
    raises(["t.csv", *fragments], process="maf_trace", trace=path, duration=1000.0)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("app,func,duration\na,f,1\n", ["timestamp column", "end_timestamp"]),
        ("func,timestamp\nf,1.0\nf,2.0\nf,oops\n", ["line 4", "'oops'", "timestamp"]),
        ("func,timestamp\nf,1.0\nf,nan\n", ["line 3", "'nan'"]),
        ("func,time\nf,2023-11-16 18:15:46\nf,yesterday\n", ["line 3", "'yesterday'", "ISO datetime"]),
        ("app,func,end_timestamp,duration\na,f,5.0,x\n", ["line 2", "duration", "'x'"]),
        ("func,timestamp\nf,1.0\nf\n", ["line 3", "fields"]),
        ("func,timestamp\nf,1.0\nf,2.0,9\nf,3.0\n", ["line 3", "3 fields", "header has 2"]),
        ("func,timestamp\n", ["no invocations"]),
        ("timestamp\n0\n1e300\n", ["line 3", "'1e300'", "every unit"]),
        ("timestamp\n0.5\n-1e200\n", ["line 3", "'-1e200'", "every unit"]),
        ("app,func,end_timestamp,duration\na,f,5.0,0.1\na,f,6.0,-2\n", ["line 3", "duration '-2'", "negative"]),
        ("app,func,end_timestamp,duration\na,f,5.0,0.1\na,f,6.0,inf\n", ["line 3", "duration 'inf'"]),
        ("app,func,end_timestamp,duration\na,f,5.0,0.1\na,f,6.0,1e200\n", ["line 3", "'1e200'", "every unit"]),
        ("app,func,end_timestamp,duration\na,f,5.0,0.1\na,f,6.0,1e12\n", ["line 3", "line 2", "3000 years"]),
        ("timestamp\n0.5\n-2e11\n5\n", ["line 3", "line 4", "3000 years"]),
    ],
)
def test_bad_timestamp_file(tmp_path, text, fragments):
    path = write(tmp_path, text)
    raises(["t.csv", *fragments], process="timestamp_trace", trace=path, duration=100.0)


def test_quoted_numbers_read_as_numbers(tmp_path):
    plain = write(tmp_path, HEADER + "o,a,f,http,600,0,600\n", "plain.csv")
    quoted = write(tmp_path, HEADER + 'o,a,f,http,"600","0", "600"\n'.replace(", ", ","), "quoted.csv")
    kw = {"process": "maf_trace", "duration": 180.0}
    assert build(trace=quoted, **kw).equals(build(trace=plain, **kw))
    plain = write(tmp_path, "func,timestamp\nf,1.5\ng,2.0\n", "plain_t.csv")
    quoted = write(tmp_path, 'func,timestamp\n"f","1.5"\ng,"2.0"\n', "quoted_t.csv")
    kw = {"process": "timestamp_trace", "duration": 5.0}
    assert build(trace=quoted, **kw).equals(build(trace=plain, **kw))


def test_trace_unit_is_explicit_for_times_that_look_like_milliseconds(tmp_path):
    ms = np.arange(0, 120_000, 20)                        # 50 req/s for two minutes, in whole milliseconds
    path = write(tmp_path, "timestamp\n" + "\n".join(map(str, ms)) + "\n")
    raises(["t.csv", "whole number", "20 apart", "workload.trace_unit=ms"], process="timestamp_trace", trace=path)
    df = build(process="timestamp_trace", trace=path, trace_unit="ms", duration=60.0)
    assert len(df) == 3000 and np.allclose(np.diff(df["t_sched"]), 0.02)
    seconds = write(tmp_path, "timestamp\n" + "\n".join(f"{t / 1000:.3f}" for t in ms) + "\n", "s.csv")
    same = build(process="timestamp_trace", trace=seconds, duration=60.0)
    assert same["model"].equals(df["model"]) and np.allclose(same["t_sched"], df["t_sched"])
    # Said explicitly, whole seconds are seconds.
    assert len(build(process="timestamp_trace", trace=path, trace_unit="s", duration=200.0)) == 10


def test_trace_unit_refuses_epoch_times_in_a_smaller_unit(tmp_path):
    epoch_ms = 1_700_000_000_000 + np.arange(0, 10_000, 20)
    path = write(tmp_path, "timestamp\n" + "\n".join(map(str, epoch_ms)) + "\n")
    for unit in (None, "s"):
        raises(["t.csv", "after the year 5000", "workload.trace_unit=ms"], process="timestamp_trace", trace=path,
               trace_unit=unit)
    assert len(build(process="timestamp_trace", trace=path, trace_unit="ms", duration=10.0)) == 500
    raises(["workload.trace_unit", "'minutes'", "s, ms, us"], process="timestamp_trace", trace=path,
           trace_unit="minutes")


def test_binary_trace_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(bytes(range(128, 256)))
    raises(["t.csv", "UTF-8"], process="maf_trace", trace=str(path))


def test_timestamps_empty_span(tmp_path):
    path = write(tmp_path, "timestamp\n0\n1\n")
    raises(["no invocations", "workload.trace_start_s"], process="timestamp_trace", trace=path, trace_start_s=50.0)


def test_relative_trace_path_prefers_cwd(tmp_path, monkeypatch):
    # A file at the same relative path as the shipped sample, in the current directory, wins.
    (tmp_path / "workloads" / "data").mkdir(parents=True)
    write_maf(tmp_path / "workloads" / "data" / "maf_sample.csv", [[600, 600]])
    monkeypatch.chdir(tmp_path)
    df = build(process="maf_trace", trace="workloads/data/maf_sample.csv", duration=120.0, models=["m"])
    assert len(df) == pytest.approx(1200, rel=0.15)


@pytest.mark.parametrize("process", ["maf_trace", "timestamp_trace"])
def test_trace_path_is_a_directory(tmp_path, process):
    raises([repr(str(tmp_path)), "is a directory", "workload.trace="], process=process, trace=str(tmp_path))


@pytest.fixture
def address_space_cap():
    """Cap this process's address space 2 GiB above its size during the test: a schedule that the
    size check fails to refuse then dies at once with MemoryError rather than filling the machine."""
    resource = pytest.importorskip("resource")
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs Linux /proc to size the address space")
    size = int(re.search(r"VmSize:\s+(\d+) kB", status.read_text()).group(1)) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + 2**31 if hard == resource.RLIM_INFINITY else min(hard, size + 2**31)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize(
    "fragments, kw",
    [
        (["3e+08 requests", "workload.rate"], {"rate": 1e8, "duration": 3.0}),
        (["1e+09 requests", "duration_s"], {"rate": 1.0, "duration": 1e9}),
        (["requests", "ramp_end"], {"shape": "ramp", "ramp_end": 1e12, "duration": 3.0}),
        (["diurnal rate grid", "workload.diurnal_period_s"], {"shape": "diurnal", "diurnal_period_s": 1e-7}),
        (["MMPP sojourns", "workload.mmpp_mean_high_s"],
         {"process": "mmpp", "mmpp_mean_high_s": 1e-8, "mmpp_mean_low_s": 1e-8}),
        (["requests", "workload.rate_scale"],
         {"process": "timestamp_trace", "trace": str(TS_SAMPLE), "rate_scale": 1e8}),
        (["requests", "workload.rate_scale"], {"process": "maf_trace", "trace": str(MAF_SAMPLE), "rate_scale": 1e8}),
    ],
)
def test_schedule_too_big_for_memory_is_refused(address_space_cap, fragments, kw):
    raises(["the schedule would hold", "> 5e+07", *fragments], **kw)


def test_maf_huge_count_is_refused_before_allocating(address_space_cap, tmp_path):
    path = write(tmp_path, HEADER + "o,a,f,http,1000000000000,0,0\n")
    raises(["1e+12 requests", "workload.rate_scale"], process="maf_trace", trace=path,
           duration=60.0)


def test_maf_count_1e30_leaks_no_warning(tmp_path):
    path = write(tmp_path, HEADER + "o,a,f,http,1,1e30,3\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leaked RuntimeWarning would surface as that exception
        raises(["line 2", "'1e30'"], process="maf_trace", trace=path, duration=1000.0)


@pytest.mark.parametrize(
    "kw",
    [
        {"rate": 100.0},
        {"process": "timestamp_trace", "trace": str(TS_SAMPLE), "rate_scale": 2.0},
        {"process": "maf_trace", "trace": str(MAF_SAMPLE), "rate_scale": 0.25, "time_scale": 60.0},
    ],
    ids=["synthetic", "timestamp", "maf"],
)
def test_size_cap_refuses_only_above_it(monkeypatch, kw):
    # The estimate is the mean: a schedule well below the cap builds, the same one above it is refused.
    n = len(build(duration=10.0, **kw))
    assert n > 500
    monkeypatch.setattr(workloads.arrivals, "MAX_REQUESTS", 2 * n)
    assert len(build(duration=10.0, **kw)) == n
    monkeypatch.setattr(workloads.arrivals, "MAX_REQUESTS", n // 2)
    raises(["the schedule would hold", "requests"], duration=10.0, **kw)
