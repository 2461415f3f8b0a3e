"""The report on tiny synthetic runs whose numbers are known: tables, capacity, fewest slots, the best
system, pages, figures, errors."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import metrics
from harness.errors import HarnessError
from harness.records import SCHEMA_VERSION, write_json, write_table
from harness.report import analysis, load_runs, results_table
from harness.report.cli import main
from harness.report.experiments import experiment_title

WINDOW = metrics.Window(0.0, 10.0)
LATENCY = 0.05          # every served request takes 50 ms against a 100 ms SLO: 10 queued, 30 running, 10 the rest
QUEUE, EXEC = 0.01, 0.03
SLO = 0.1
# A system serves a load within SLO when rate / GPUs <= its per-GPU capacity; else it drops 1 in 5 requests.
PER_GPU = {"alpha": 60.0, "beta": 110.0}


def make_run(root: Path, system: str, rate: int, gpus: int, requests_file: bool = True, autoscaled: bool = False,
             seed: int = 0, drop_every: int | None = None, overrides: tuple[str, ...] = ()) -> Path:
    """rate*10 evenly spaced requests over a 10 s window, batches of one on min(gpus, 2) slots.

    Requests alternate between models b (even ids) and a (odd ids); with `drop_every`, every
    drop_every-th request (ids drop_every - 1, 2 * drop_every - 1, ...: model a) is dropped instead of
    the overload rule.
    """
    run = root / (f"{system}_r{rate}_g{gpus}{'_autoscaled' if autoscaled else ''}{f'_s{seed}' if seed else ''}"
                  + "".join(f"_{o}" for o in overrides))
    run.mkdir(parents=True)
    n = rate * 10
    ids = np.arange(n)
    t = ids / rate
    if drop_every:
        dropped = ids % drop_every == drop_every - 1
    else:
        dropped = (ids % 5 == 4) if rate / gpus > PER_GPU[system] else np.zeros(n, bool)
    busy_slots = min(gpus, 2)
    requests = pd.DataFrame({
        "id": ids, "model": np.where(ids % 2, "a", "b"), "t_sched": t, "t_sent": t,
        "t_done": np.where(dropped, np.nan, t + LATENCY), "status": np.where(dropped, "dropped", "ok"),
        "reason": "", "latency": np.where(dropped, np.nan, LATENCY), "slo": SLO,
        "slot": np.where(dropped, -1, ids % busy_slots), "batch_id": np.where(dropped, -1, ids),
        "queue_time": np.where(dropped, np.nan, QUEUE), "exec_time": np.where(dropped, np.nan, EXEC)})
    requests["device"] = requests["slot"]
    served = requests[~dropped]
    batches = pd.DataFrame({
        "id": served["batch_id"], "slot": served["slot"], "device": served["slot"], "share": 1.0,
        "partition": "whole", "model": served["model"], "size": 1,
        "t_dispatch": served["t_sched"], "t_start": served["t_sched"], "t_end": served["t_sched"] + LATENCY,
        "status": "ok"})
    slots = pd.DataFrame({"slot": range(gpus), "name": [f"s{i}" for i in range(gpus)], "gpu_type": "test",
                          "partition": "whole", "device": range(gpus), "share": 1.0, "models": "a,b"})
    if requests_file:
        write_table(requests, run / "requests.parquet")
    write_table(batches, run / "batches.parquet")
    write_table(requests[["id", "model", "t_sched"]], run / "schedule.parquet")
    write_table(metrics.gpus_used(batches, WINDOW), run / "gpus_used.parquet")
    seeds = {"schedule": seed, "mapping": 1, "payload": 2, "runtime": 3}
    summary = {"schema_version": SCHEMA_VERSION, "system": system, "workload": "poisson", "cluster": "test",
               "cluster_label": f"{gpus} x TEST", "runtime": "sim", "emulated": True, "seeds": seeds,
               "window_s": [WINDOW.start, WINDOW.end], **metrics.request_metrics(requests, WINDOW),
               **metrics.batch_metrics(batches, WINDOW), **metrics.gpu_metrics(batches, WINDOW, slots),
               "per_model": metrics.per_model_metrics(requests, WINDOW),
               "oracle_goodput": float(rate), "goodput_over_oracle": math.nan,
               "validity": {"valid": True, "reasons": []},
               "provenance": {"overrides": [f"system={system}", *overrides, f"workload.rate={rate}"]}}
    # An autoscaler provisioned one slot, then a second from t = 5 s: 1.5 slots on average.
    starts = [(0.0, 0), (5.0, 1)] if autoscaled else [(0.0, i) for i in range(gpus)]
    events = pd.DataFrame([(t, slot, event, "") for t, slot in starts for event in ("starting", "joined")],
                          columns=["t", "slot", "event", "reason"])
    write_table(slots, run / "slots.parquet")
    write_table(events, run / "slot_events.parquet")
    timeline = metrics.provisioned_timeline(events, slots)
    summary["gpus_provisioned_mean"] = float(metrics.provisioned_metrics(timeline, WINDOW)["gpus_provisioned_mean"])
    write_json(summary, run / "summary.json")
    (run / "config.yaml").write_text(f"workload:\n  process: poisson\n  rate: {rate}\ncluster:\n  count: {gpus}\n"
                                     f"autoscaler:\n  enabled: {str(autoscaled).lower()}\n"
                                     f"seeds:\n  schedule: {seed}\n  mapping: 1\n  payload: 2\n  runtime: 3\n")
    return run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    for system in PER_GPU:
        for rate in (100, 200, 300):
            make_run(root, system, rate, 4)
        for gpus in (1, 2):
            make_run(root, system, 200, gpus)
    return root


@pytest.fixture(scope="module")
def built(sweep, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main([str(sweep), "--out", str(out), "--title", "Fixture"]) == 0
    return out


def test_results_table_has_one_row_per_run_with_known_numbers(built):
    runs = pd.read_parquet(built / "results.parquet")
    assert len(runs) == 10
    assert {"system", "seed_schedule", "workload", "cluster", "runtime", "goodput"} <= set(runs.columns)
    row = runs[(runs["system"] == "alpha") & (runs["load"] == 300) & (runs["slots"] == 4)].iloc[0]
    # 300 req/s on 4 GPUs is above alpha's 60 per GPU: 1 in 5 dropped.
    assert row["cluster"] == "4 x TEST (emulated)" and row["gpus"] == 4
    assert row["offered_rate"] == pytest.approx(300)
    assert row["goodput"] == pytest.approx(240) and row["throughput"] == pytest.approx(240)
    assert row["slo_attainment"] == pytest.approx(0.8)
    assert row["drop_rate"] == pytest.approx(0.2)
    assert row["latency_p99_ms"] == pytest.approx(50)
    # Batches only ever ran on two slots: two GPUs used in every 1-s bucket.
    assert row["gpus_used_mean"] == pytest.approx(2) and row["gpus_used_peak"] == 2
    ok = runs[(runs["system"] == "beta") & (runs["load"] == 100)].iloc[0]
    assert ok["goodput"] == pytest.approx(100) and ok["slo_attainment"] == pytest.approx(1.0)
    # 1000 batches of 50 ms, less the parts of the last four (t = 9.96..9.99 s) past the window's end.
    assert ok["busy_gpu_seconds"] == pytest.approx(1000 * LATENCY - (0.01 + 0.02 + 0.03 + 0.04))
    # Utilisation: busy over provisioned GPU-seconds (every slot, the whole window), in the report's table too.
    window = ok["window_end"] - ok["window_start"]
    assert ok["utilisation"] == pytest.approx(ok["busy_gpu_seconds"] / (ok["slots"] * window))
    assert "utilisation (busy / provisioned GPU-s)" in (built / "report.md").read_text()


def test_capacity_fewest_slots_and_the_best_system(sweep, built):
    table = results_table(load_runs([sweep]))
    cap = analysis.capacity(table).set_index("system")
    # alpha at 4 GPUs: 100 and 200 req/s pass, 300 fails; beta passes all three rates.
    assert (cap.loc["alpha", "bound"], cap.loc["alpha", "capacity"]) == ("=", 200)
    assert (cap.loc["beta", "bound"], cap.loc["beta", "capacity"]) == (">=", 300)
    few = analysis.fewest_slots(table).set_index("system")
    # 200 req/s: alpha needs 4 GPUs (50 per GPU), beta 2 (100 per GPU).
    assert few.loc["alpha", "fewest"] == 4 and few.loc["beta", "fewest"] == 2
    assert few.loc["beta", "cluster"] == "2 x TEST (emulated)"
    md = (built / "report.md").read_text()
    assert "by capacity (req/s): beta >= 300; then alpha 200 (0.67x)" in md
    assert "by fewest slots at 200 req/s: beta 2; then alpha 4 (2.00x)" in md
    assert "Headline" not in md             # no system is favoured unless asked


def test_reference_compares_one_system_with_each_other(sweep, tmp_path):
    assert main([str(sweep), "--out", str(tmp_path), "--reference", "beta"]) == 0
    md = (tmp_path / "report.md").read_text()
    assert "## Headline: beta against each other system" in md
    assert "beta needs 2 x TEST (emulated) vs 4 x TEST (emulated) for alpha (50% fewer)" in md


def test_queue_and_execution_breakdown_and_per_model_tables(built):
    md = (built / "report.md").read_text()
    detail = md.split("## Detail:", 1)[1]
    # Served requests waited 10 ms, ran 30 ms and spent the other 10 ms outside the server.
    assert "| alpha | 1 | 10.0 | 10.0 | 30.0 | 30.0 | 10.0 |" in detail
    assert "#### a" in detail and "#### b" in detail
    assert (built / "latency_breakdown.png").stat().st_size > 1000


def test_pages_link_what_they_should_and_embed_nothing(built, sweep):
    md = (built / "report.md").read_text()
    page = (built / "report.html").read_text()
    for stem in ("goodput_vs_rate", "attainment_vs_rate", "throughput_vs_p99", "fewest_gpus", "latency_cdf",
                 "latency_breakdown", "gpus_over_time", "batch_sizes", "batch_timeline"):
        for ext in ("png", "pdf"):
            assert (built / f"{stem}.{ext}").stat().st_size > 1000, f"{stem}.{ext}"
        assert f"]({stem}.png)" in md and f'src="{stem}.png"' in page
    # The Markdown page is committed: it links no PDF, no HTML and no run directory (all git-ignored).
    assert ".pdf)" not in md and ".html" not in md and "](../" not in md
    assert "base64" not in page and len(page) < 200_000
    assert "<nav>" in page and 'class="sortable"' in page and 'href="goodput_vs_rate.pdf"' in page
    assert f'href="../{sweep.name}/alpha_r100_g4/"' in page        # run directories, relative to the page
    assert "Fixture" in page and str(sweep) not in md and str(sweep) not in page


def test_capacity_from_a_synthetic_curve():
    rates = np.array([100, 200, 400, 800, 1600])
    table = pd.DataFrame({"system": "s", "workload": "w", "cluster": "c", "runtime": "sim", "seeds": "s0 m1 p2 r3",
                          "load": rates, "offered_rate": rates, "goodput": np.minimum(rates, 700),
                          "slo_attainment": np.where(rates <= 400, 1.0, 0.5)})
    cap = analysis.capacity(table).iloc[0]
    assert (cap["capacity"], cap["bound"], cap["peak_goodput"]) == (400, "=", 700)
    assert analysis.capacity(table.assign(slo_attainment=1.0)).iloc[0][["capacity", "bound"]].tolist() == [1600, ">="]
    assert analysis.capacity(table.assign(slo_attainment=0.9)).iloc[0]["bound"] == "<"


def test_fewest_slots_is_the_count_from_which_every_larger_one_passes():
    counts = np.arange(1, 9)
    table = pd.DataFrame({"system": "s", "workload": "w", "cluster_name": "c", "runtime": "sim", "load": 500.0,
                          "seeds": "s0 m1 p2 r3", "offered_rate": 500.0, "slots": counts,
                          "cluster": [f"{c} x GPU" for c in counts],
                          "slo_attainment": np.where(counts >= 3, 0.995, 0.9)})
    assert analysis.fewest_slots(table).iloc[0]["fewest"] == 3
    # A lone pass below a failing count does not count: the answer must hold for every larger count.
    noisy = table.assign(slo_attainment=np.where(counts == 2, 1.0, table["slo_attainment"]))
    noisy.loc[noisy["slots"] == 3, "slo_attainment"] = 0.9
    assert analysis.fewest_slots(noisy).iloc[0]["fewest"] == 4
    none = analysis.fewest_slots(table.assign(slo_attainment=0.5)).iloc[0]
    assert math.isnan(none["fewest"]) and none["max_tried"] == 8 and none["cluster"] == "more than 8 x GPU"


def test_missing_data_skips_figures_with_a_note(tmp_path):
    make_run(tmp_path / "runs", "alpha", 100, 4, requests_file=False)
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "Latency: skipped" in md and "Goodput vs offered load: skipped" in md
    assert not (out / "latency_cdf.png").exists() and (out / "gpus_over_time.png").exists()


def test_autoscaled_runs_are_their_own_configuration(tmp_path):
    make_run(tmp_path / "runs", "alpha", 100, 4)
    make_run(tmp_path / "runs", "alpha", 100, 4, autoscaled=True)
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    runs = pd.read_parquet(out / "results.parquet").set_index("system")
    assert runs.loc["alpha+autoscaler", "gpus_provisioned_mean"] == pytest.approx(1.5)
    assert runs.loc["alpha", "gpus_provisioned_mean"] == pytest.approx(4)
    assert (out / "gpus_over_time.png").exists()


def test_a_systems_options_from_the_command_line_or_a_sweep_make_it_its_own_configuration(tmp_path):
    make_run(tmp_path / "runs", "alpha", 100, 4)
    make_run(tmp_path / "runs", "alpha", 100, 4, overrides=("system.partitioning=whole", "+system.dispatch=x"))
    make_run(tmp_path / "runs", "alpha", 100, 4, autoscaled=True, overrides=("system.partitioning=whole",))
    out = tmp_path / "out"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    runs = pd.read_parquet(out / "results.parquet")
    assert sorted(runs["system"]) == ["alpha", "alpha[dispatch=x, partitioning=whole]",
                                      "alpha[partitioning=whole]+autoscaler"]
    assert runs["setting"].nunique() == 3


REFERENCE = Path(__file__).resolve().parent.parent / "results" / "reference" / "h100-mps25x4"


def test_runs_of_schema_1_read_as_today():
    """Committed reference runs predate schema 2: four 25% MPS shares of one H100, counted as 4 "GPUs" then."""
    run = load_runs([REFERENCE / "eager-gpu"])[0]
    s = run.summary
    assert s["cluster_label"] == "4 x 25% MPS shares of 1 H100"
    assert (s["gpus_total"], s["slots_total"]) == (1, 4)
    assert s["gpus_used_mean"] == pytest.approx(1.0) and s["slots_used_mean"] == pytest.approx(4.0)
    assert s["busy_gpu_seconds"] == pytest.approx(s["busy_slot_seconds"] / 4)
    assert {"slot", "device", "share"} <= set(run.table("batches").columns)
    used = run.table("gpus_used")
    assert used["gpus_used"].max() == pytest.approx(1.0) and used["slots_used"].max() == 4
    assert run.table("provisioned") is None       # it kept neither slot events nor scaling.parquet
    assert results_table([run]).iloc[0]["seeds"] == "s0 m1 p2 r3"


def one_line_error(capsys, argv: list[str]) -> str:
    """The report's error for `argv`: one line, exit status 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line_error(tmp_path, capsys, monkeypatch):
    def error(argv) -> str:
        return one_line_error(capsys, argv)

    assert "no runs found" in error([str(tmp_path)])
    assert "does not exist" in error([str(tmp_path / "nowhere")])
    run = make_run(tmp_path / "runs", "alpha", 100, 4)
    assert "is a file" in error([str(run / "summary.json")])
    (tmp_path / "file").write_text("")
    assert "--out" in error([str(tmp_path / "runs"), "--out", str(tmp_path / "file")])
    if Path("/proc/sys").is_dir():      # a directory that takes no new files: said before the figures, no traceback
        assert "cannot write the report directory '/proc/sys'" in error([str(tmp_path / "runs"), "--out", "/proc/sys"])
    assert "--reference gamma ran in none" in error([str(tmp_path / "runs"), "--out", str(tmp_path / "o"),
                                                     "--reference", "gamma"])
    (run / "summary.json").write_text("{not json")
    err = error([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert "cannot read" in err and "summary.json" in err
    (run / "summary.json").write_text(json.dumps({"system": "alpha"}))
    assert "lacks" in error([str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert "unknown experiment" in error(["--experiment", "no_such_experiment"])
    monkeypatch.chdir(tmp_path)
    assert "has no results" in error(["--experiment", "goodput_vs_rate", "--latest"])


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("good"), "alpha", 100, 4)


@pytest.mark.parametrize("field, value, says", [
    ("goodput", "abc", "goodput is 'abc', not a number"),
    ("goodput", True, "goodput is True"),
    ("goodput", -1.0, "goodput is -1.0"),
    ("validity", "yes", "validity is 'yes'"),
    ("system", 5, "system is 5, not a name"),
    ("window_s", "x", "window_s is 'x'"),
    ("window_s", [10.0, 0.0], "window_s"),
    ("slo_attainment", 5, "slo_attainment is 5, not a fraction in [0, 1]"),
    ("gpus_total", 1.5, "gpus_total is 1.5, not a whole number"),
    ("per_model", {"a": 3}, "per_model.a is 3"),
    ("status_counts", {"ok": "x"}, "status_counts.ok"),
    ("schema_version", 0, "schema_version is 0"),
])
def test_a_summary_field_of_the_wrong_kind_is_one_line_error(field, value, says, good_run, tmp_path, capsys):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    summary = json.loads((good_run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, field: value}))
    err = one_line_error(capsys, [str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert "cannot read 'r1/summary.json'" in err and says in err and "re-run that run or leave it out" in err, err


def test_a_summary_of_a_newer_schema_says_to_upgrade(good_run, tmp_path, capsys):
    run = tmp_path / "r1"
    run.mkdir()
    summary = json.loads((good_run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "schema_version": SCHEMA_VERSION + 97}))
    err = one_line_error(capsys, [str(run), "--out", str(tmp_path / "out")])
    assert f"schema {SCHEMA_VERSION + 97}, newer than this harness reads (up to {SCHEMA_VERSION}); upgrade" in err


@pytest.mark.parametrize("text, says", [
    ("workload:\n  rate: [1, 2\n bad: :\n", "at line 3, column 5"),
    ("- 1\n- 2\n", "its top level is [1, 2], not a mapping"),
    ("workload:\n  rate: abc\n", "workload.rate is 'abc', not a number"),
])
def test_a_bad_config_is_one_line_error_naming_the_file(text, says, good_run, tmp_path, capsys):
    run = tmp_path / "r1"
    run.mkdir()
    (run / "summary.json").write_text((good_run / "summary.json").read_text())
    (run / "config.yaml").write_text(text)
    err = one_line_error(capsys, [str(run), "--out", str(tmp_path / "out")])
    assert "cannot read 'r1/config.yaml'" in err and says in err, err


def test_a_run_that_measured_no_attainment_is_reported(good_run, tmp_path):
    # null: no request in the window (what strict JSON writes for NaN); not an error, and no crash in the figures
    run = tmp_path / "r1"
    shutil.copytree(good_run, run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "slo_attainment": None}))
    assert main([str(run), "--out", str(tmp_path / "out")]) == 0


@pytest.mark.parametrize("options, says", [
    (["--target", "2"], "--target 2 is no SLO attainment"),
    (["--target", "-1"], "--target -1"),
    (["--target", "nan"], "--target nan"),
    (["--rate", "-5"], "--rate -5"),
    (["--rate", "nan"], "--rate nan"),
    (["--jobs", "-3"], "--jobs -3"),
    (["--latest"], "--latest reports a named experiment's latest results"),
])
def test_options_that_make_no_report_are_refused(options, says, good_run, tmp_path, capsys):
    err = one_line_error(capsys, [str(good_run), "--out", str(tmp_path / "out"), *options])
    assert says in err, err


@pytest.mark.parametrize("argv, says", [
    (["--experiment", "goodput_vs_rate", "--jobs", "-3", "hydra.sweep.dir=SWEEP"], "--jobs -3"),
    (["--experiment", "goodput_vs_rate", "--latest", "system=eager"], "system=eager would change nothing"),
    (["--experiment", "goodput_vs_rate", "--target", "2"], "--target 2"),
])
def test_bad_experiment_options_are_refused_before_anything_runs(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: pytest.fail("the experiment ran"))
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, [a.replace("SWEEP", str(tmp_path / "sweep")) for a in argv])
    assert says in err, err
    assert not any(tmp_path.iterdir())


def test_an_experiment_writes_its_runs_to_the_hydra_sweep_dir_given(tmp_path):
    from harness.report.experiments import results_dir

    given = tmp_path / "sweep"
    assert results_dir("lazybatching", ["system=eager", f"hydra.sweep.dir={given}"]) == (given, ["system=eager"])
    given.mkdir()
    (given / "old_run").mkdir()                 # its runs would be reported as this experiment's
    with pytest.raises(HarnessError, match="not an empty directory"):
        results_dir("lazybatching", [f"hydra.sweep.dir={given}"])


EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_composes_and_documents_its_command(path):
    from harness import search

    name = path.stem
    assert experiment_title(name) != name
    assert f"python -m harness.report --experiment {name}" in path.read_text()
    cfg = search.compose([f"experiment={name}"], hydra_node=True)
    # Runnable anywhere: sim, or (reference runs) live on emulated slots when no GPU is present.
    assert cfg.runtime.name == ("live" if "reference" in cfg.tags else "sim")
    kinds = [t[len(search.SEARCH_TAG):] for t in cfg.tags if t.startswith(search.SEARCH_TAG)]
    assert set(kinds) <= set(search.KINDS)
    combos = search.expand([f"experiment={name}", "system=eager,symphony"])
    assert len(combos) >= 2 and {v["system"] for _, v in combos} == {"eager", "symphony"}


def test_the_accuracy_column_is_the_weakest_app_served():
    from harness.report.analysis import _weakest_app
    assert _weakest_app({"traffic": 0.952, "moderation": 0.909}) == 0.909
    assert _weakest_app({"traffic": 0.952, "moderation": None}) == 0.952       # one app served nothing
    assert math.isnan(_weakest_app({})) and math.isnan(_weakest_app(None))


def test_an_experiment_with_a_run_that_did_not_finish_reports_the_others_and_exits_3(tmp_path, capsys, monkeypatch):
    # A real sweep of two runs, one with a rate no run accepts: the report holds the other, and the exit
    # status says that a run is missing (a report of part of an experiment must not pass for all of it).
    monkeypatch.chdir(tmp_path)
    status = main(["--experiment", "lazybatching", "system=eager", "workload.rate=100,-5", "duration_s=2",
                   "warmup_s=0.5", "cooldown_s=0.5", "--jobs", "1", "--out", str(tmp_path / "report"),
                   f"hydra.sweep.dir={tmp_path / 'sweep'}"])             # (an override after the options)
    err = capsys.readouterr().err
    assert status == 3, err
    assert "did not finish" in err.splitlines()[-1]
    assert len(list((tmp_path / "sweep").rglob("summary.json"))) == 1 and not (tmp_path / "results").exists()
    results = pd.read_parquet(tmp_path / "report" / "results.parquet")
    assert len(results) == 1 and results["offered_rate"].iloc[0] == pytest.approx(100, rel=0.2)
