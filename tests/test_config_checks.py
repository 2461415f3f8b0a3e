"""Settings no run can mean are refused in one line before the run, not run silently wrong or forever."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.calibrate import load_calibration
from harness.errors import HarnessError
from harness.run import execute
from harness.search import compose

ROOT = Path(__file__).resolve().parent.parent
SHORT = ["runtime=sim", "cluster=sleep1000", "models=sleep10", "cluster.count=2", "duration_s=2", "warmup_s=0.5",
         "cooldown_s=0.5", "workload=poisson", "workload.rate=100"]


@pytest.mark.parametrize("overrides, expected", [
    # NaN passes every `x < 0` check: each of these ran (a NaN window served 3%) or never ended.
    (["system=graph_batching", "system.window_ms=nan"], "system.window_ms must be a finite number"),
    (["validity.max_send_lag_p99_ms=nan"], "validity.max_send_lag_p99_ms must be a finite number"),
    (["duration_s=inf"], "duration_s must be a finite number"),
    # A negative knob of any system: no batches at all, a silent batch of 1, or a hang.
    (["system=clockwork", "system.schedule_ahead_ms=-1"], "system.schedule_ahead_ms must be a number >= 0"),
    (["system=eager", "system.max_batch=-3"], "system.max_batch must be a number >= 0"),
    (["system=triton", "system.max_queue_delay_microseconds=-1"], "system.max_queue_delay_microseconds must be"),
    # The policies' own bounds.
    (["system=nexus", "system.rate_window_s=0"], "nexus: rate_window_s and epoch_s must be > 0"),
    (["system=nexus", "system.rate_low=2", "system.rate_high=0.5"], "rate_low < rate_high"),
    (["system=shepherd", "system.preempt_lambda=0"], "shepherd: preempt_lambda must be >= 1"),
    (["system=clockwork", "system.window=0"], "clockwork: window must be >= 1"),
    # The autoscaler, the validity rule and the runtime.
    (["autoscaler.enabled=true", "autoscaler.scale_up_utilisation=2"], "scale_up_utilisation must be in (0, 1)"),
    (["autoscaler.enabled=true", "autoscaler.interval_s=1e-9"], "autoscaler.interval_s must be >= 0.01 s"),
    (["validity.min_duration_s=-1"], "validity needs min_duration_s >= 0"),
    (["validity.max_error_rate=2"], "max_error_rate in [0, 1]"),
    (["runtime.spin_us=-1"], "runtime.spin_us must be >= 0"),
    (["runtime.ingresses=1000"], "runtime.ingresses must be 0..64"),
    (["runtime.host=999.1.1.1"], "runtime.host '999.1.1.1' is not an IP address"),
    (["runtime.faults=[{t: 100, slot: 0}]"], "t=100.0 is not within the run"),
    (["runtime.preemption=pause"], "unknown runtime.preemption 'pause'; choose finish"),
    (["runtime=live", "runtime.executor=gpu", "runtime.preemption=abort"],
     "runtime.preemption=abort cannot run on a real GPU"),
])
def test_meaningless_settings_are_refused_in_one_line(tmp_path, overrides, expected):
    with pytest.raises(HarnessError) as err:
        execute(compose([*SHORT, *overrides]), tmp_path / "run", [])
    assert expected in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_every_system_runs_with_its_own_defaults(tmp_path):
    """The knob rule refuses no system's shipped settings (each system's conf file)."""
    import systems

    for name in systems.names():
        execute(compose([*SHORT, f"system={name}"]), tmp_path / name, [])


def test_a_refused_run_leaves_its_directory_free_for_the_corrected_command(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "harness", *SHORT, "system=nexus", f"hydra.run.dir={run_dir}"]
    bad = subprocess.run([*cmd, "system.epoch_s=0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "epoch_s must be > 0" in bad.stderr
    good = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert (run_dir / "summary.json").exists()


def calibration(tmp_path, **change) -> Path:
    doc = {"overheads": {"request_s": 0.001, "dispatch_s": 0.0005, "response_s": 0.001},
           "quantiles": {p: [0.0001, 0.001, 0.002] for p in ("request", "ingress", "dispatch", "response")}}
    for key, value in change.items():
        table, _, name = key.partition("__")
        doc[table][name] = value
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("change, expected", [
    ({"overheads__request_s": -1.0}, "request_s = -1.0, not a delay"),
    ({"quantiles__response": [0.002, 0.001]}, "must be non-decreasing delays"),
    ({"quantiles__dispatch": []}, "must be non-decreasing delays"),
    ({"quantiles__request": [0.001, 1e9]}, "must be non-decreasing delays of 0 to 60 s"),
    ({"overheads__request_s": "soon"}, "holds something other than delays"),
])
def test_a_calibration_that_is_no_measurement_is_refused(tmp_path, change, expected):
    with pytest.raises(HarnessError) as err:
        load_calibration(calibration(tmp_path, **change))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_a_calibration_without_its_tables_names_what_is_missing(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"quantiles": {}}))
    with pytest.raises(HarnessError, match="has no 'overheads' table"):
        load_calibration(path)
    assert load_calibration(calibration(tmp_path)).request_s == 0.001


@pytest.mark.parametrize("argv", [["harness.search", "capacity", "--bogus"], ["harness.report", "--bogus"],
                                  ["harness.regression", "--jobs", "many"], ["harness.live.triton", "nope"]])
def test_a_bad_flag_of_any_tool_is_one_line(argv):
    """argparse printed its usage block and its own wording; every other mistake is one line."""
    done = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], \
        done.stderr
