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
