"""Runs that differ only by their seeds: grouped, mean and 95% confidence interval in every table.

Three seeds of one setting at 100 req/s drop none, every 100th and every 200th request (all of model
a): goodput 100, 99 and 99.5 req/s. Worked by hand: mean 99.5, sample standard deviation 0.5, standard
error 0.5 / sqrt(3) = 0.288675; Student's t for 2 degrees of freedom at 97.5% is 4.302653, so the
half-width is 4.302653 x 0.288675 = 1.242126.
"""

import math
from pathlib import Path

import pandas as pd
import pytest

from harness.report import analysis, load_runs, results_table, summarise
from harness.report.cli import main
from harness.report.terminal import SweepTable, comparison_table
from tests.test_report import make_run

T_2 = 4.302653                                  # Student's t, 2 degrees of freedom, 97.5th percentile
HALF = T_2 * 0.5 / math.sqrt(3)                 # 1.242126


@pytest.fixture(scope="module")
def repeats(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repeats")
    for seed, every in ((0, None), (1, 100), (2, 200)):
        make_run(root, "alpha", 100, 4, seed=seed, drop_every=every)
        # At 200 req/s seeds 1 and 2 drop every 10th request: attainment 90%, below the target.
        make_run(root, "alpha", 200, 4, seed=seed, drop_every=10 if seed else None)
    make_run(root, "beta", 100, 4)
    make_run(root, "beta", 200, 4)
    return root


def test_mean_and_confidence_interval_by_hand():
    mean, half = analysis.mean_ci([100.0, 99.0, 99.5])
    assert mean == pytest.approx(99.5) and half == pytest.approx(HALF, rel=1e-6)
    assert analysis.mean_ci([7.0]) == (7.0, pytest.approx(math.nan, nan_ok=True))


def test_runs_differing_only_by_seed_are_one_setting(repeats):
    table = results_table(load_runs([repeats]))
    assert sorted(table.loc[table["system"] == "alpha", "seed_schedule"].unique()) == [0, 1, 2]
    summary = summarise(table)
    row = summary[(summary["system"] == "alpha") & (summary["load"] == 100)].iloc[0]
    assert row["n"] == 3 and row["seeds"] == "s0,1,2 m1 p2 r3"
    assert row["goodput"] == pytest.approx(99.5) and row["goodput_ci"] == pytest.approx(HALF, rel=1e-5)
    # Attainment 1.0, 0.99, 0.995: the same numbers over 100.
    assert row["slo_attainment"] == pytest.approx(0.995)
    assert row["slo_attainment_ci"] == pytest.approx(HALF / 100, rel=1e-5)
    beta = summary[summary["system"] == "beta"].iloc[0]
    assert beta["n"] == 1 and math.isnan(beta["goodput_ci"])


def test_capacity_per_seed_then_averaged(repeats):
    cap = analysis.capacity(results_table(load_runs([repeats]))).set_index("system")
    # Seed 0 passes both rates (>= 200); seeds 1 and 2 fail at 200 (= 100): 200, 100, 100.
    assert cap.loc["alpha", "n"] == 3 and cap.loc["alpha", "bound"] == "=/>="
    assert cap.loc["alpha", "capacity"] == pytest.approx(400 / 3)
    assert cap.loc["alpha", "capacity_ci"] == pytest.approx(T_2 * (100 / math.sqrt(3)) / math.sqrt(3), rel=1e-5)


def test_per_model_table_with_intervals(repeats):
    runs = load_runs([repeats])
    summary = summarise(results_table(runs))
    focus = analysis.focus_setting(summary, "poisson", rate=100)
    per_model = analysis.per_model(focus, {r.name: r for r in runs}).set_index(["model", "system"])
    # Model a lost 0, 10 and 5 of its 500 requests: 50, 49 and 49.5 req/s; model b lost none.
    a = per_model.loc[("a", "alpha")]
    assert a["n"] == 3 and a["goodput"] == pytest.approx(49.5) and a["goodput_ci"] == pytest.approx(HALF, rel=1e-5)
    b = per_model.loc[("b", "alpha")]
    assert b["goodput"] == pytest.approx(50) and b["goodput_ci"] == pytest.approx(0)
    assert per_model.loc[("a", "beta"), "n"] == 1
    assert a["queue_mean_ms"] == pytest.approx(10) and a["exec_mean_ms"] == pytest.approx(30)


def test_report_shows_intervals_and_every_run(repeats, tmp_path):
    assert main([str(repeats), "--out", str(tmp_path), "--rate", "100"]) == 0
    md = (tmp_path / "report.md").read_text()
    results = md.split("## Results", 1)[1].split("### All runs", 1)[0]
    assert "| alpha | 3 | s0,1,2 m1 p2 r3 | 100 ± 0 | 100 ± 1 | 99.50% ± 1.24% |" in results
    # Every run still has its row, with its seeds.
    for seed in (0, 1, 2):
        assert f"| alpha | s{seed} m1 p2 r3 |" in md.split("### All runs", 1)[1]
    assert "| a | alpha | 3 |" not in md                  # per-model tables are one per model
    per_model = md.split("#### a", 1)[1].split("####", 1)[0]
    assert "| alpha | 3 | 50 ± 0 | 50 ± 1 | 99.00% ± 2.48% |" in per_model
    assert pd.read_parquet(tmp_path / "results.parquet")["seed_schedule"].tolist().count(1) == 2


def test_a_sweep_ends_with_a_comparison_table(repeats, capsys):
    from omegaconf import OmegaConf

    SweepTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(repeats)}}}))
    out = capsys.readouterr().out
    assert "Sweep results" in out and "99.50% ± 1.24%" in out
    assert "best at 99% attainment" in out and f"python -m harness.report {repeats}" in out
    table = comparison_table(summarise(results_table(load_runs([repeats]))))
    assert table.row_count == 4
