"""The Triton path benchmark's arithmetic, on a run directory written by hand as a live Triton run leaves it."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("triton_path", ROOT / "benchmarks" / "triton_path.py")
tp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tp)


def test_path_is_tritons_execution_time_less_our_span_per_request(tmp_path):
    # Slot 0: a batch of 1 sent to an idle worker (starts 1 ms later, runs 2 ms), then a batch of 3 sent while
    # the first ran (queued: its wait is not a hand-off). Triton held each request 9 ms on average.
    pd.DataFrame({"slot": [0, 0], "model": ["m", "m"], "size": [1, 3], "t_dispatch": [0.000, 0.002],
                  "t_start": [0.001, 0.003], "t_end": [0.003, 0.007], "status": ["ok", "ok"]}
                 ).to_parquet(tmp_path / "batches.parquet")
    (tmp_path / "server.json").write_text(json.dumps({"tritonserver": {"m": {"queue_ms": 0.5,
                                                                            "compute_infer_ms": 9.0}}}))
    (row,) = tp.path_table(tmp_path).to_dict("records")
    # Span per request: (1 x 3 ms + 3 x 5 ms) / 4 requests = 4.5 ms; the path is 9 - 4.5.
    assert row["span"] == pytest.approx(4.5) and row["path"] == pytest.approx(4.5)
    assert row["batches"] == 2 and row["mean batch"] == 2 and row["exec"] == pytest.approx(3.0)
    assert row["idle wait"] == pytest.approx(1.0)           # only the batch sent to the idle worker
    assert row["queue"] == 0.5


def test_a_run_without_tritons_statistics_is_one_clear_error(tmp_path):
    pd.DataFrame({"slot": [0], "model": ["m"], "size": [1], "t_dispatch": [0.0], "t_start": [0.0], "t_end": [0.001],
                  "status": ["ok"]}).to_parquet(tmp_path / "batches.parquet")
    (tmp_path / "server.json").write_text(json.dumps({"batches": 1}))
    done = subprocess.run([sys.executable, "benchmarks/triton_path.py", str(tmp_path), str(tmp_path / "none")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no tritonserver statistics" in done.stderr and "Traceback" not in done.stderr
