"""benchmarks/clockwork_first_batches.py: Clockwork's estimator started from a real run's first batches."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

from systems.clockwork import Clockwork, ClockworkConfig
from tests.simkit import linear_curve, replay

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import clockwork_first_batches as cfb  # noqa: E402

RUNS = ROOT / "results" / "reference" / "h100-real-vs-emulated" / "whole" / "overload"
CALIBRATION = ROOT / "results" / "reference" / "h200-benchmarks" / "triton-20-models" / "rate200" / "calibration.json"


def test_first_measurements_are_each_model_and_sizes_first_batch_run_to_its_end():
    batches = pd.DataFrame({"model": ["a", "a", "a", "b", "a"], "size": [1, 1, 2, 1, 2],
                            "t_start": [0.0, 1.0, 2.0, 0.0, 0.5], "t_end": [0.003, 1.001, 2.25, 0.5, 0.5],
                            "status": ["ok", "ok", "ok", "ok", "late"]})
    assert cfb.first_measurements(batches) == {"a": {1: 0.003, 2: 0.25}, "b": {1: 0.5}}


def test_clockworks_made_inside_start_from_them_and_none_after():
    with cfb.estimates_measured_first({"m": {1: 0.05}, "other": {1: 1.0}}):
        _, _, policy = replay(Clockwork, ClockworkConfig(), {"m": 100}, 1, linear_curve(1.0, 5.0), [])
    assert policy.estimate("m", 1) == 0.05 and policy.estimate("m", 2) == 0.007   # size 2: the profile's
    _, _, fresh = replay(Clockwork, ClockworkConfig(), {"m": 100}, 1, linear_curve(1.0, 5.0), [])
    assert fresh.estimate("m", 1) == 0.006


def test_a_real_runs_first_batches_take_its_sim_to_the_large_batch_regime(tmp_path, capsys):
    # The whole H100 at 1.5 x eager's capacity: the GPU's first batch of densenet121 took 3.3 ms (1.8 ms after).
    assert cfb.main([str(RUNS / "clockwork-seed0-gpu"), "--sim", str(CALIBRATION), "--out", str(tmp_path)]) == 0
    exact = pd.read_json(tmp_path / "overload" / "clockwork-seed0-gpu" / "exact" / "summary.json", typ="series")
    seeded = pd.read_json(tmp_path / "overload" / "clockwork-seed0-gpu" / "first-real" / "summary.json",
                          typ="series")
    assert seeded["goodput"] > 1.5 * exact["goodput"] and seeded["mean_batch_size"] > 2 * exact["mean_batch_size"]
    assert "clockwork-seed0" in capsys.readouterr().out


def test_bad_input_is_one_line():
    def run(*args):
        return subprocess.run([sys.executable, "benchmarks/clockwork_first_batches.py", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    for done, words in ((run(str(RUNS / "eager-seed0-gpu"), "--sim", str(CALIBRATION)), "not a real Clockwork run"),
                        (run(str(RUNS / "clockwork-seed0-gpu"), "--sim", "nope.json"), "no such calibration")):
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and words in lines[0], done.stderr
