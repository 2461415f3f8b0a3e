"""Metric definitions that the summary's validity verdict rests on."""

import pandas as pd
import pytest

from harness import metrics


def test_send_lag_counts_the_window_only_not_the_warm_up():
    # 100 requests a second for 10 s; those of the first second (warm-up: connections opening) went 500 ms late.
    t = pd.Series([i / 100 for i in range(1000)])
    late = (t < 1.0) * 0.5
    requests = pd.DataFrame({"t_sched": t, "t_sent": t + 0.0002 + late})
    assert metrics.send_lag_p99_ms(requests, metrics.Window(1.0, 9.0)) == pytest.approx(0.2, abs=1e-6)
    assert metrics.send_lag_p99_ms(requests, metrics.Window(0.0, 9.0)) > 400


def test_latency_mean_and_percentiles_are_of_the_served_requests_in_the_window():
    # In the window: three served (10, 20 and 60 ms; one past its 50 ms SLO) and one dropped; one served before it.
    requests = pd.DataFrame({
        "t_sched": [0.5, 1.0, 1.1, 1.2, 1.3],
        "status": ["ok", "ok", "ok", "ok", "dropped"],
        "latency": [0.9, 0.010, 0.020, 0.060, float("nan")],
        "slo": [0.05] * 5,
    })
    m = metrics.request_metrics(requests, metrics.Window(1.0, 2.0))
    assert m["requests"] == 4 and m["slo_attainment"] == pytest.approx(0.5)
    assert m["latency_mean_ms"] == pytest.approx(30.0)
    assert m["latency_p50_ms"] == pytest.approx(20.0)


def _verdict(statuses: list[str], reasons: list[str]) -> dict:
    requests = pd.DataFrame({"t_sched": [1.0 + i / 1000 for i in range(len(statuses))], "status": statuses,
                             "latency": [0.01] * len(statuses), "slo": [0.05] * len(statuses), "reason": reasons})
    window = metrics.Window(1.0, 3.0)
    summary = metrics.request_metrics(requests, window)
    return metrics.validity(summary, duration=20, min_duration=10, min_requests=100, max_send_lag_p99_ms=2,
                            send_lag_p99_ms=0.1, crashed_slots=[], interrupted=False, max_error_rate=0.01,
                            first_error=metrics.first_error(requests, window))


def test_a_run_whose_system_fails_requests_is_invalid_and_says_what_failed():
    # 1,000 requests: 30 failed (20 for one cause, 10 for another) -> invalid, naming the frequent cause.
    statuses = ["ok"] * 970 + ["error"] * 30
    reasons = [""] * 970 + ["worker: AttributeError: no attribute 'begin'"] * 20 + ["HTTP 500"] * 10
    verdict = _verdict(statuses, reasons)
    assert not verdict["valid"]
    (why,) = verdict["reasons"]
    assert "3.0% of the window's requests failed with an error" in why and "no attribute 'begin'" in why
    # Five failures in 1,000 stay within the 1% bound; drops and client timeouts (the system's answer to
    # overload) do not count at all.
    assert _verdict(["ok"] * 995 + ["error"] * 5, [""] * 1000)["valid"]
    assert _verdict(["ok"] * 500 + ["dropped"] * 300 + ["timeout"] * 200, [""] * 1000)["valid"]


def test_a_run_whose_load_generator_fell_behind_is_invalid_and_names_the_fix_and_the_host():
    summary = metrics.request_metrics(pd.DataFrame({"t_sched": [1.0 + i / 1000 for i in range(200)],
                                                    "status": ["ok"] * 200, "latency": [0.01] * 200,
                                                    "slo": [0.05] * 200, "reason": [""] * 200}),
                                      metrics.Window(1.0, 3.0))
    verdict = metrics.validity(summary, duration=20, min_duration=10, min_requests=100, max_send_lag_p99_ms=2,
                               send_lag_p99_ms=2.6, crashed_slots=[], interrupted=False, max_error_rate=0.01,
                               host_cores=2)
    (why,) = verdict["reasons"]
    assert not verdict["valid"] and why.startswith("p99 send lag 2.600 ms > bound 2 ms")
    assert "runtime.locust_workers=N" in why and "this host has 2" in why
