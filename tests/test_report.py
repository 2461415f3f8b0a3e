"""The report on tiny synthetic runs whose numbers are known: table, capacity, fewest GPUs, figures, errors."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import metrics, report
from harness.records import write_json, write_table

WINDOW = metrics.Window(0.0, 10.0)
LATENCY = 0.05          # every served request takes 50 ms against a 100 ms SLO
SLO = 0.1
# A system serves a load within SLO when rate / GPUs <= its per-GPU capacity; else it drops 1 in 5 requests.
PER_GPU = {"alpha": 60.0, "beta": 110.0}


def make_run(root: Path, system: str, rate: int, gpus: int, requests_file: bool = True,
             autoscaled: bool = False) -> Path:
    """rate*10 evenly spaced requests over a 10 s window, batches of one on min(gpus, 2) slots."""
    run = root / f"{system}_r{rate}_g{gpus}{'_autoscaled' if autoscaled else ''}"
    run.mkdir(parents=True)
    n = rate * 10
    t = np.arange(n) / rate
    fails = rate / gpus > PER_GPU[system]
    dropped = (np.arange(n) % 5 == 4) if fails else np.zeros(n, bool)
    busy_slots = min(gpus, 2)
    requests = pd.DataFrame({
        "id": np.arange(n), "model": np.where(np.arange(n) % 2, "a", "b"), "t_sched": t, "t_sent": t,
        "t_done": np.where(dropped, np.nan, t + LATENCY), "status": np.where(dropped, "dropped", "ok"),
        "reason": "", "latency": np.where(dropped, np.nan, LATENCY), "slo": SLO,
        "gpu": np.where(dropped, -1, np.arange(n) % busy_slots), "batch_id": np.where(dropped, -1, np.arange(n)),
        "queue_time": 0.0, "exec_time": LATENCY})
    served = requests[~dropped]
    batches = pd.DataFrame({
        "id": served["batch_id"], "gpu": served["gpu"], "partition": "whole", "model": served["model"], "size": 1,
        "t_dispatch": served["t_sched"], "t_start": served["t_sched"], "t_end": served["t_sched"] + LATENCY,
        "status": "ok"})
    if requests_file:
        write_table(requests, run / "requests.parquet")
    write_table(batches, run / "batches.parquet")
    write_table(requests[["id", "model", "t_sched"]], run / "schedule.parquet")
    write_table(metrics.gpus_used(batches, WINDOW), run / "gpus_used.parquet")
    summary = {"system": system, "workload": "poisson", "cluster": "test", "runtime": "sim",
               "window_s": [WINDOW.start, WINDOW.end], **metrics.request_metrics(requests, WINDOW),
               **metrics.batch_metrics(batches, WINDOW), **metrics.gpu_metrics(batches, WINDOW, gpus),
               "oracle_goodput": float(rate), "goodput_over_oracle": math.nan,
               "validity": {"valid": True, "reasons": []}}
    # An autoscaler provisioned one slot, then a second from t = 5 s: 1.5 slots on average.
    scaling = pd.DataFrame({"t": [0.0, 5.0], "slots": [1, 2]} if autoscaled else {"t": [0.0], "slots": [gpus]})
    write_table(scaling, run / "scaling.parquet")
    summary["slots_provisioned_mean"] = float(metrics.provisioned_metrics(scaling, WINDOW)["slots_provisioned_mean"])
    write_json(summary, run / "summary.json")
    (run / "config.yaml").write_text(f"workload:\n  process: poisson\n  rate: {rate}\ncluster:\n  count: {gpus}\n"
                                     f"autoscaler:\n  enabled: {str(autoscaled).lower()}\n")
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
    assert report.main([str(sweep), "--out", str(out), "--title", "Fixture", "--reference", "beta"]) == 0
    return out


def test_table_has_known_goodput_attainment_and_gpus_used(built):
    runs = pd.read_csv(built / "runs.csv")
    assert len(runs) == 10
    row = runs[(runs["system"] == "alpha") & (runs["load"] == 300) & (runs["gpus"] == 4)].iloc[0]
    # 300 req/s on 4 GPUs is above alpha's 60 per GPU: 1 in 5 dropped.
    assert row["offered_rate"] == pytest.approx(300)
    assert row["goodput"] == pytest.approx(240)
    assert row["slo_attainment"] == pytest.approx(0.8)
    assert row["drop_rate"] == pytest.approx(0.2)
    assert row["latency_p99_ms"] == pytest.approx(50)
    # Batches only ever ran on two slots: two GPUs used in every 1-s bucket.
    assert row["gpus_used_mean"] == pytest.approx(2) and row["gpus_used_peak"] == 2
    ok = runs[(runs["system"] == "beta") & (runs["load"] == 100)].iloc[0]
    assert ok["goodput"] == pytest.approx(100) and ok["slo_attainment"] == pytest.approx(1.0)
    # 1000 batches of 50 ms, less the parts of the last four (t = 9.96..9.99 s) past the window's end.
    assert ok["busy_gpu_seconds"] == pytest.approx(1000 * LATENCY - (0.01 + 0.02 + 0.03 + 0.04))


def test_capacity_and_fewest_gpus_in_the_report(built):
    md = (built / "report.md").read_text()
    # alpha at 4 GPUs: 100 and 200 req/s pass, 300 fails; beta passes all three rates.
    assert "| alpha | poisson | test | 4 | = | 200 |" in md
    assert "| beta | poisson | test | 4 | >= | 300 |" in md
    # 200 req/s: alpha needs 4 GPUs (50 per GPU), beta 2 (100 per GPU).
    assert "beta needs 2 GPUs vs 4 for alpha (50% fewer)" in md


def test_report_writes_markdown_html_and_every_figure(built, sweep):
    for stem in ("goodput_vs_rate", "attainment_vs_rate", "fewest_gpus", "latency_cdf", "gpus_over_time",
                 "batch_sizes", "batch_timeline"):
        for ext in ("png", "pdf"):
            assert (built / f"{stem}.{ext}").stat().st_size > 1000, f"{stem}.{ext}"
        assert f"]({stem}.png)" in (built / "report.md").read_text()
    page = (built / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 7
    assert "<table" in page and "Fixture" in page
    md = (built / "report.md").read_text()
    assert str(sweep) not in md and str(sweep) not in page      # no machine path: the sweep shows by name
    assert "Search paths: skipped" in md


def test_capacity_from_a_synthetic_curve():
    rates = np.array([100, 200, 400, 800, 1600])
    table = pd.DataFrame({"system": "s", "workload": "w", "cluster": "c", "gpus": 4, "load": rates,
                          "offered_rate": rates, "goodput": np.minimum(rates, 700),
                          "slo_attainment": np.where(rates <= 400, 1.0, 0.5)})
    cap = report.capacity(table).iloc[0]
    assert (cap["capacity"], cap["bound"], cap["peak_goodput"]) == (400, "=", 700)
    assert report.capacity(table.assign(slo_attainment=1.0)).iloc[0][["capacity", "bound"]].tolist() == [1600, ">="]
    assert report.capacity(table.assign(slo_attainment=0.9)).iloc[0]["bound"] == "<"


def test_fewest_gpus_is_the_count_from_which_every_larger_one_passes():
    counts = np.arange(1, 9)
    table = pd.DataFrame({"system": "s", "workload": "w", "cluster": "c", "load": 500.0, "offered_rate": 500.0,
                          "gpus": counts, "slo_attainment": np.where(counts >= 3, 0.995, 0.9)})
    assert report.fewest_gpus(table).iloc[0]["fewest_gpus"] == 3
    # A lone pass below a failing count does not count: the answer must hold for every larger count.
    noisy = table.assign(slo_attainment=np.where(counts == 2, 1.0, table["slo_attainment"]))
    noisy.loc[noisy["gpus"] == 3, "slo_attainment"] = 0.9
    assert report.fewest_gpus(noisy).iloc[0]["fewest_gpus"] == 4
    none = report.fewest_gpus(table.assign(slo_attainment=0.5)).iloc[0]
    assert math.isnan(none["fewest_gpus"]) and none["max_tried"] == 8


def test_missing_data_skips_figures_with_a_note(tmp_path):
    make_run(tmp_path / "runs", "alpha", 100, 4, requests_file=False)
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "Latency CDF: skipped" in md and "Goodput vs offered load: skipped" in md
    assert "Fewest GPUs needed: skipped" in md
    assert not (out / "latency_cdf.png").exists() and (out / "gpus_over_time.png").exists()


def test_autoscaled_runs_are_their_own_configuration(tmp_path):
    make_run(tmp_path / "runs", "alpha", 100, 4)
    make_run(tmp_path / "runs", "alpha", 100, 4, autoscaled=True)
    out = tmp_path / "out"
    assert report.main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv").set_index("system")
    assert runs.loc["alpha+autoscaler", "gpus_provisioned_mean"] == pytest.approx(1.5)
    assert runs.loc["alpha", "gpus_provisioned_mean"] == pytest.approx(4)
    assert (out / "gpus_over_time.png").exists()


def test_bad_input_is_one_line_error(tmp_path, capsys, monkeypatch):
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no runs found") and err.count("\n") == 1
    run = make_run(tmp_path / "runs", "alpha", 100, 4)
    (run / "summary.json").write_text("{not json")
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and "summary.json" in err and err.count("\n") == 1
    (run / "summary.json").write_text(json.dumps({"system": "alpha"}))
    assert report.main([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 2
    assert "lacks" in capsys.readouterr().err
    assert report.main(["--experiment", "no_such_experiment"]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert report.main(["--experiment", "goodput_vs_rate", "--latest"]) == 2
    assert "has no results" in capsys.readouterr().err


EXPERIMENTS = sorted((Path(__file__).resolve().parent.parent / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_experiment_composes_and_documents_its_command(path):
    from harness import search

    name = path.stem
    assert report.experiment_title(name) != name
    assert f"python -m harness.report --experiment {name}" in path.read_text()
    cfg = search.compose([f"experiment={name}"], hydra_node=True)
    # Runnable anywhere: sim, or (reference runs) live on emulated slots when no GPU is present.
    assert cfg.runtime.name == ("live" if "reference" in cfg.tags else "sim")
    kinds = [t[len(search.SEARCH_TAG):] for t in cfg.tags if t.startswith(search.SEARCH_TAG)]
    assert set(kinds) <= set(search.KINDS)
    combos = search.expand([f"experiment={name}", "system=eager,symphony"])
    assert len(combos) >= 2 and {v["system"] for _, v in combos} == {"eager", "symphony"}
