"""The regression suite: today's policies reproduce the committed baseline, and a planted
regression (Symphony dispatching eagerly) fails it with a message naming the metric."""

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
    # Target batch 1: Symphony sends every request at once, alone -- eager dispatch without batching.
    monkeypatch.setattr(Symphony, "target_batch", lambda self, st, rate: 1)
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
