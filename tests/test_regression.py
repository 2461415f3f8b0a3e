"""The regression suite: today's policies reproduce the committed baseline, and a planted
regression (Symphony without batching) fails it with a message naming the metric."""

import json

import pytest

import systems
from harness import regression
from systems.symphony import Symphony


@pytest.fixture(scope="module")
def baseline():
    return json.loads(regression.BASELINE.read_text())


def test_every_system_matches_the_baseline(baseline):
    results = regression.run_matrix(systems.names(), capacity=True)
    findings = regression.compare(results, baseline)
    print(regression.table(findings))
    assert all(f.passed for f in findings), regression.failures_message(findings)
    assert {k.split("/")[0] for k in results} == set(systems.names())


def test_planted_regression_is_named(baseline, monkeypatch):
    # Largest batch 1: Symphony runs every request alone -- the batching gone.
    load_profile = Symphony._load_profile

    def batches_of_one(self, st):
        load_profile(self, st)
        st.cap, st.l, st.target = 1, st.l[:2] + [float("inf")], 1

    monkeypatch.setattr(Symphony, "_load_profile", batches_of_one)
    results = regression.run_matrix(["symphony"], capacity=False)
    findings = regression.compare(results, {k: v for k, v in baseline.items()
                                            if k.startswith("symphony/") and not k.endswith("capacity")})
    message = regression.failures_message(findings)
    assert not all(f.passed for f in findings)
    assert "symphony/sleep-bursty-16 goodput" in message
    assert "mean_batch_size" in message
    assert "REGRESSION" in regression.table(findings)


def test_compare_applies_each_tolerance():
    old = {"s/c": {"goodput": 100.0, "slo_attainment": 0.99}}
    assert all(f.passed for f in regression.compare({"s/c": {"goodput": 101.9, "slo_attainment": 0.981}}, old))
    bad = regression.compare({"s/c": {"goodput": 97.0, "slo_attainment": 0.97}}, old)
    assert {f.metric for f in bad if not f.passed} == {"goodput", "slo_attainment"}
    # A cell in the baseline that the run lost is a failure; a brand-new cell is not.
    assert not all(f.passed for f in regression.compare({"s/c": {"goodput": 100.0}}, old))
    assert all(f.passed for f in regression.compare({**old, "s/new": {"goodput": 1.0}}, old))


def test_updating_some_systems_keeps_the_others_entries(tmp_path, monkeypatch):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({"eager/c": {"goodput": 1.0}, "symphony/c": {"goodput": 2.0},
                                "symphony/capacity": {"capacity": 9.0}}))
    monkeypatch.setattr(regression, "BASELINE", path)
    monkeypatch.setattr(regression, "run_matrix", lambda names, capacity, out=None, jobs=0: {"symphony/c": {"goodput": 3.0}})
    assert regression.main(["--systems", "symphony", "--no-capacity", "--update"]) == 0
    assert json.loads(path.read_text()) == {"eager/c": {"goodput": 1.0}, "symphony/c": {"goodput": 3.0},
                                            "symphony/capacity": {"capacity": 9.0}}


@pytest.mark.parametrize("argv, expected", [
    (["--systems", ""], "--systems names no system"),
    (["--systems", ","], "--systems names no system"),
    (["--systems", "eager,eager"], "names a system twice"),
    (["--jobs", "-3"], "--jobs must be >= 0"),
])
def test_a_systems_list_that_names_nothing_runs_nothing(argv, expected, capsys):
    """An empty list ran the whole suite; a repeated name ran a system twice into one directory."""
    assert regression.main(argv) == 2
    assert expected in capsys.readouterr().err
