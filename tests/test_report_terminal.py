"""What the terminal shows while a live run goes on: the progress line, from the records Locust flushed."""

import re
import time

import numpy as np
import pandas as pd
import pytest

from harness.load import CLIENT_COLUMNS
from harness.runtimes.live import _progress

SLO = 0.1


def flushed(out_dir, answered_until: float) -> None:
    """100 req/s from t = 0; answered (50 ms, 1 ms late on the wire) up to `answered_until`; every 10th
    request of the window (from 2 s) dropped."""
    t = np.arange(0, answered_until, 0.01)
    dropped = (np.arange(len(t)) % 10 == 9) & (t >= 2.0)
    records = pd.DataFrame({"id": np.arange(len(t)), "model": "m", "t_sched": t, "t_sent": t + 0.001,
                            "t_done": np.where(dropped, t + 0.002, t + 0.05),
                            "status": np.where(dropped, "dropped", "ok"), "reason": "", "batch_id": 0})
    (out_dir / "client").mkdir(exist_ok=True)
    records[CLIENT_COLUMNS].to_parquet(out_dir / "client" / "client-000.parquet")


def test_live_progress_shows_the_window_not_the_warm_up(tmp_path, capfd):
    flushed(tmp_path, answered_until=7.9)
    epoch = time.time() - 8.0                   # 8 s into a 20 s run; the window is [2, 19)
    with _progress(tmp_path, lambda: epoch, 20.0, {"m": SLO}, (2.0, 19.0), every_s=0.2):
        time.sleep(0.5)
    line = capfd.readouterr().err.splitlines()[0]
    assert line.startswith("[live]   8.") and "/20 s" in line
    assert "790 answered" in line and "drops 10.0%" in line and "p99 50.0 ms" in line
    assert "send lag p99 1.00 ms" in line
    # Goodput over [2 s, 8 s - 2 s flush - 0.1 s SLO): 90 of every 100 requests a second, the warm-up left out
    # (give or take a request at the window's moving end).
    goodput = float(re.search(r"goodput ([0-9.]+) req/s \(window\)", line).group(1))
    assert goodput == pytest.approx(90, abs=0.5)


def test_no_line_before_anything_could_be_answered(tmp_path, capfd):
    epoch = time.time()
    with _progress(tmp_path, lambda: epoch, 20.0, {"m": SLO}, (2.0, 19.0), every_s=0.2):
        time.sleep(0.5)
    assert capfd.readouterr().err == ""


def test_external_load_says_so_instead_of_counting_nothing(tmp_path, capfd):
    epoch = time.time() - 5.0
    with _progress(tmp_path, lambda: epoch, 20.0, {"m": SLO}, (2.0, 19.0), every_s=0.2, external=True):
        time.sleep(0.5)
    line = capfd.readouterr().err.splitlines()[0]
    assert "serving external clients" in line and "answered" not in line
