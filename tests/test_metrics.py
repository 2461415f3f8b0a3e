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

