"""The benchmarks' command lines: each stress benchmark runs at a tiny size, a broken run fails loudly, and bad
input is one line `error: ...` with exit 2, never a traceback."""

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.live.workers import WorkerPool

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def bench(script: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def patched(module: str, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run benchmark `module` with `code` run first (to break its stand-in pool), as its script would run."""
    run = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import {module} as m\n{code}\n"
           f"sys.argv = [{module!r}, *{list(args)!r}]; m.run_main(m.main)")
    return subprocess.run([sys.executable, "-c", run], cwd=ROOT, capture_output=True, text=True, timeout=60)


def one_line_error(run: subprocess.CompletedProcess, *words: str, code: int = 2) -> None:
    lines = run.stderr.strip().splitlines()
    assert run.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize("module, pool", [("live_stress", "FakePool"), ("live_reconfigure", "DrainingPool")])
def test_stand_in_pools_take_what_the_worker_pool_takes(module, pool):
    # LiveCluster calls pool.submit positionally: a stand-in must keep WorkerPool.submit's parameters, in order.
    sys.path.insert(0, str(BENCH))
    try:
        fake = getattr(__import__(module), pool).submit
    finally:
        sys.path.remove(str(BENCH))
    params = lambda f: [(p.name, p.default) for p in inspect.signature(f).parameters.values()]  # noqa: E731
    assert params(fake) == params(WorkerPool.submit)


@pytest.mark.parametrize("script, args", [
    ("live_stress.py", ["--system", "eager", "--rates", "200", "--seconds", "0.3"]),
    ("symphony_stress.py", ["--systems", "eager", "--models", "2", "--seconds", "0.3", "--start", "200",
                            "--max-rate", "200", "--repeats", "1"]),
    ("live_reconfigure.py", ["--slots", "2", "--rounds", "1", "--drain-ms", "5"]),
])
def test_stress_benchmarks_run_at_a_tiny_size(script, args):
    run = bench(script, *args)
    assert run.returncode == 0 and "Traceback" not in run.stderr and "error" not in run.stderr, run.stderr
    if script != "live_reconfigure.py":
        assert "served 0.0%" not in run.stdout and " 0.0% " not in run.stdout, run.stdout


@pytest.mark.parametrize("module, args", [
    ("live_stress", ["--system", "eager", "--rates", "200", "--seconds", "0.3"]),
    ("symphony_stress", ["--systems", "eager", "--models", "2", "--seconds", "0.3", "--start", "200",
                         "--max-rate", "200", "--repeats", "1"]),
])
def test_a_run_whose_dispatches_raise_fails(module, args):
    run = patched(module, "import live_stress\n"
                          "def submit(self, *args): raise RuntimeError('broken pool')\n"
                          "live_stress.FakePool.submit = submit", *args)
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].startswith("error: eager at 200"), run.stderr


def test_a_reconfiguration_whose_batches_fail_fails():
    run = patched("live_reconfigure", "import asyncio\n"
                                      "def submit(self, slot, batch_id, *args):\n"
                                      "    asyncio.get_running_loop().call_soon(args[7], {'batch': batch_id, "
                                      "'status': 'error', 'exec': 0.0, 'wait': 0.0, 'error': 'broken'})\n"
                                      "m.DrainingPool.submit = submit", "--slots", "2", "--rounds", "1",
                  "--drain-ms", "5")
    one_line_error(run, "2 batches did not run ok", code=1)


@pytest.mark.parametrize("script, args, words", [
    ("sim_scale.py", ["--gpus", "0"], ["--gpus", "> 0", "got 0"]),
    ("sim_scale.py", ["--rate", "nan"], ["--rate"]),
    ("sim_scale.py", ["--system", "nosuch"], ["--system", "nosuch", "symphony"]),
    ("gpus_used_memory.py", ["--hours", "0"], ["--hours"]),
    ("gpus_used_memory.py", ["--slots", "0"], ["--slots"]),
    ("live_stress.py", ["--models", "0"], ["--models"]),
    ("live_stress.py", ["--gpus", "-1"], ["--gpus", ">= 0"]),
    ("symphony_stress.py", ["--systems", "nosuch"], ["unknown system 'nosuch'", "symphony"]),
    ("symphony_stress.py", ["--start", "0"], ["--start"]),
    ("symphony_stress.py", ["--repeats", "0"], ["--repeats"]),
    ("load_rate.py", ["--rates", "abc"], ["--rates", "abc"]),
    ("load_rate.py", ["--workers", "abc"], ["--workers", "abc"]),
    ("load_rate.py", ["--seconds", "0"], ["--seconds"]),
    ("live_rate.py", ["--rates", "-5"], ["--rates"]),
    ("live_rate.py", ["--seconds", "1"], ["--seconds", "> 3"]),
    ("ingress_rate.py", ["--rounds", "0"], ["--rounds"]),
    ("ingress_rate.py", ["--clients", "0"], ["--clients"]),
    ("ingress_rate.py", ["--ingress", "nosuch.module"], ["--ingress", "nosuch.module"]),
    ("live_vs_sim.py", ["--systems", "nosuch"], ["unknown system 'nosuch'"]),
    ("gpu_overload.py", ["--out", "x", "--seconds", "1"], ["--seconds", "> 5"]),
    ("live_reconfigure.py", ["--slots", "4,x"], ["--slots", "'x'"]),
    ("gpu_start_interference.py", ["--serve", "resnet50"], ["--serve", "MODEL:BATCH"]),
    ("gpu_start_interference.py", ["--start", "resnet50,nosuch"], ["--start", "unknown model 'nosuch'"]),
    ("gpu_start_interference.py", ["--servers", "4"], ["5 shares of 25%", "--servers"]),
    ("gpu_start_interference.py", ["--json", "/"], ["--json", "'/' is a directory"]),
    ("gpu_served_latency.py", ["--json", "/dev/null/rows.json"], ["--json", "cannot write '/dev/null/rows.json'"]),
    ("gpu_first_batches.py", ["--models", "resnet50,nosuch"], ["--models", "unknown nosuch"]),
    ("gpu_first_batches.py", ["--idle-s", "0"], ["--idle-s", "> 0"]),
])
def test_bad_arguments_are_one_line(script, args, words):
    one_line_error(bench(script, *args), *words)


def test_live_vs_sim_into_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("mine")
    one_line_error(bench("live_vs_sim.py", "--out", str(tmp_path / "file")), "--out")


def test_batch_time_without_profiles_of_the_gpu_type_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "batches.parquet").write_text("")        # (never read: the GPU type is checked first)
    one_line_error(bench("batch_time.py", str(run_dir), "--gpu-type", "nosuch"), "'nosuch'", "--gpu-type", "h200")
    (run_dir / "summary.json").write_text(json.dumps({"gpu_type": "sleep"}))     # a run on emulated sleep slots
    one_line_error(bench("batch_time.py", str(run_dir)), "'sleep'", "--gpu-type")
    (run_dir / "summary.json").write_text("{broken")
    one_line_error(bench("batch_time.py", str(run_dir)), "summary.json", "--gpu-type")
    one_line_error(bench("batch_time.py", str(run_dir), "--by-sibling-batch", "--by-siblings-at-work"),
                   "--by-sibling-batch", "--by-siblings-at-work")


@pytest.mark.parametrize("script", ["gpu_channels_last.py", "gpu_executor_overhead.py", "gpu_served_latency.py",
                                    "gpu_stage_overhead.py", "gpu_start_interference.py", "gpu_first_batches.py"])
def test_gpu_benchmarks_without_torch_are_one_line(script):
    code = ("import runpy, sys; sys.modules['torch'] = None; "        # as if torch were not installed
            f"sys.argv = [{script!r}]; runpy.run_path({str(BENCH / script)!r}, run_name='__main__')")
    run = subprocess.run([sys.executable, "-c", code], cwd=BENCH, capture_output=True, text=True, timeout=60)
    one_line_error(run, "PyTorch", "GPU", 'pip install -e ".[gpu]"')


def test_gpu_overload_fails_when_its_runs_fail(tmp_path):
    # A GPU seen (as on a GPU host), and runs the harness refuses (the warm-up leaves nothing to measure).
    run = patched("gpu_overload", "m.detect_gpus = lambda: ['fake']", "--out", str(tmp_path), "--systems", "eager",
                  "--factors", "1", "--seconds", "6", "warmup_s=100")
    one_line_error(run, "1 of 1 runs failed", code=1)


def refused(run: subprocess.CompletedProcess, *words: str) -> None:
    """A bad argument: exit 2 and one line `error: ...` naming it, never argparse's usage block or a traceback."""
    assert "Traceback" not in run.stderr and "usage:" not in run.stderr, run.stderr
    one_line_error(run, *words)


@pytest.mark.parametrize("args, words", [
    (["--seeds", "0,x"], ["--seeds", "'x'", "whole number >= 0"]),
    (["--seeds", "-1"], ["--seeds", ">= 0", "got -1"]),
    (["--seeds", "1.5"], ["--seeds", "'1.5'"]),
    (["--stop-after-s", "0"], ["--stop-after-s", "> 0", "got 0"]),
    (["--stop-after-s", "soon"], ["--stop-after-s", "'soon'"]),
    (["--systems", "eager,nosuch"], ["--systems", "'nosuch'", "symphony"]),
    (["--clusters", "big"], ["--clusters", "'big'", "mps25x4", "whole"]),
    (["--loads", "reference,peak"], ["--loads", "'peak'", "reference", "overload"]),
    (["--sim", "nosuch.json"], ["calibration file 'nosuch.json' not found", "harness.calibrate"]),
    (["--sim", "results/reference/vm-live-vs-sim-2/calibration.json"], ["is not a directory of real runs"]),
    (["--sim", "results/reference/vm-live-vs-sim-2/calibration.json", "--table"], ["not allowed with"]),
    (["--sim", "own", "--sim-repeats", "0"], ["--sim-repeats", ">= 1", "got 0"]),
    (["--sim-repeats", "4"], ["--sim-repeats 4 makes sim twins", "--sim own"]),
])
def test_real_vs_emulated_refuses_bad_arguments_before_looking_for_a_gpu(tmp_path, args, words):
    refused(bench("real_vs_emulated.py", "--out", str(tmp_path / "x"), *args), *words)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, words", [
    (["--rate", "0"], ["--rate", "> 0", "got 0"]),
    (["--rate", "fast"], ["--rate", "'fast'"]),
    (["--seconds", "-1"], ["--seconds", "> 0"]),
    (["--jobs", "0"], ["--jobs", ">= 1", "got 0"]),
    (["--window-ms", "0"], ["--window-ms", ">= 1"]),
    (["--window-ms", "8.5"], ["--window-ms", "'8.5'"]),
    (["--stability", "0"], ["--stability", ">= 1"]),
    (["--repeats", "0"], ["--repeats", ">= 1", "got 0"]),
    (["--systems", "nosuch"], ["--systems", "'nosuch'", "symphony"]),
])
def test_perf_analyzer_refuses_bad_arguments_before_looking_for_perf_analyzer(tmp_path, args, words):
    refused(bench("perf_analyzer.py", "--out", str(tmp_path / "x"), *args), *words)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, words", [
    (["--requests", "0"], ["--requests", ">= 1", "got 0"]),
    (["--clients", "0"], ["--clients", ">= 1", "got 0"]),
    (["--instances", "two"], ["--instances", "'two'"]),
    (["--forward-ms", "-1"], ["--forward-ms", ">= 0", "got -1"]),
    (["--forward-ms", "inf"], ["--forward-ms"]),
    (["--bogus"], ["--bogus"]),
])
def test_triton_backend_path_refuses_bad_arguments_before_starting_tritonserver(args, words):
    refused(bench("triton_backend_path.py", *args), *words)


def test_triton_path_refuses_what_is_not_a_live_triton_run(tmp_path):
    refused(bench("triton_path.py"), "runs")
    refused(bench("triton_path.py", str(tmp_path), "--bogus"), "--bogus")
    refused(bench("triton_path.py", str(tmp_path / "none")), "none", "no such directory")
    refused(bench("triton_path.py", str(tmp_path)), "no server.json and no batches.parquet")
    (tmp_path / "server.json").write_text("{broken")
    (tmp_path / "batches.parquet").write_text("")
    refused(bench("triton_path.py", str(tmp_path)), "server.json", "not JSON")
    (tmp_path / "server.json").write_text(json.dumps({"tritonserver": {"m": {"compute_infer_ms": 1.0}}}))
    refused(bench("triton_path.py", str(tmp_path)), "batches.parquet")
    pd.DataFrame({"slot": [0]}).to_parquet(tmp_path / "batches.parquet")       # not the batches a run records
    refused(bench("triton_path.py", str(tmp_path)), "batches.parquet", "not a live run's batches")


def test_start_interference_splits_batches_by_when_they_ended():
    sys.path.insert(0, str(BENCH))
    import gpu_start_interference as m
    times = [(9.0, 1.0), (10.0, 2.0), (10.5, 3.0), (12.0, 4.0), (12.1, 5.0)]
    assert m.phases(times, began=10.0, ready=12.0) == {"before": [1.0], "starting": [2.0, 3.0, 4.0], "after": [5.0]}


def test_live_vs_sim_at_load_calibrates_each_sim_from_its_live_run(tmp_path):
    # Real: eager live on two sleep-model slots for a few seconds, its sim with the light calibration given,
    # then a calibration from the live run itself (what it does not measure from the light one) and the sim
    # again with it. The second calibration is the live run's, and the table carries both ratios.
    light = ROOT / "results" / "reference" / "vm-live-vs-sim-3" / "calibration.json"
    out = tmp_path / "out"
    run = bench("live_vs_sim.py", "--systems", "eager", "--calibration", str(light), "--at-load", "--out", str(out),
                "cluster=sleep1000", "cluster.count=2", "models=sleep10", "workload=poisson", "workload.rate=100",
                "duration_s=4", "warmup_s=1", "cooldown_s=1", timeout=240)
    assert run.returncode == 0, run.stderr
    made = json.loads((out / "calibration-eager-at-load.json").read_text())
    assert made["run"]["from_run"] == str(out / "eager-live") and made["run"]["base"] == str(light)
    sim = json.loads((out / "eager-sim-at-load" / "summary.json").read_text())
    assert f"runtime.calibration={out / 'calibration-eager-at-load.json'}" in sim["provenance"]["overrides"]
    header = next(line for line in run.stdout.splitlines() if line.strip().startswith("system"))
    assert "live/sim at load" in header and "live sched. loop" in header and "eager: live" in run.stdout
    row = run.stdout.splitlines()[-1].split()
    assert row[0] == "eager" and 0 < float(row[-2]) < 0.9          # its scheduler's loop, a few requests a second
