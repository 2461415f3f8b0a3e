"""The main job end to end (a real subprocess), and its one-line errors for bad input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import HarnessError
from harness.profiles import load_profile
from harness.records import BATCH_COLUMNS, REQUEST_COLUMNS

ROOT = Path(__file__).resolve().parent.parent


def harness(*overrides, run_dir=None):
    args = [sys.executable, "-m", "harness", *overrides]
    if run_dir is not None:
        args.append(f"hydra.run.dir={run_dir}")
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_sim_run_writes_records_and_summary(tmp_path):
    run = harness("runtime=sim", "system=symphony", "workload=bursty", "duration_s=12", run_dir=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "goodput" in run.stdout
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    batches = pd.read_parquet(tmp_path / "batches.parquet")
    schedule = pd.read_parquet(tmp_path / "schedule.parquet")
    assert list(requests.columns) == REQUEST_COLUMNS
    assert list(batches.columns) == BATCH_COLUMNS
    assert len(requests) == len(schedule) > 1000
    assert set(requests["status"]) <= {"ok", "dropped", "rejected", "timeout", "error"}
    ok = requests[requests["status"] == "ok"]
    assert (ok["latency"] >= ok["exec_time"] - 1e-9).all()
    assert ok["batch_id"].isin(batches["id"]).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("system", "workload", "cluster", "offered_rate", "goodput", "slo_attainment", "drop_rate",
                "latency_p99_ms", "mean_batch_size", "gpus_used_mean", "gpus_used_peak", "busy_gpu_seconds",
                "oracle_goodput", "validity", "provenance"):
        assert key in summary
    assert summary["system"] == "symphony" and summary["validity"]["valid"]
    assert summary["provenance"]["seeds"] == {"schedule": 0, "mapping": 1, "payload": 2, "runtime": 3}
    # Which measurement it emulated: each profile's file, its digest and its provenance.
    for key, used in summary["provenance"]["profiles"].items():
        assert used["file"] == f"profiles/{key}.json" and used["date"]
        assert used["sha256"] == hashlib.sha256((ROOT / used["file"]).read_bytes()).hexdigest()[:16]
    # Same seed, same result: the sim is deterministic.
    again = harness("runtime=sim", "system=symphony", "workload=bursty", "duration_s=12",
                    run_dir=tmp_path / "again")
    assert again.returncode == 0
    assert pd.read_parquet(tmp_path / "again" / "requests.parquet").equals(requests)


def snapshot(directory: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_reader_that_goes_away_costs_no_traceback_and_no_result(tmp_path):
    # `python -m harness ... | head -1`: the run is whole and exits 0, its table goes nowhere.
    run = subprocess.Popen([sys.executable, "-m", "harness", "runtime=sim", "duration_s=10", f"hydra.run.dir={tmp_path}"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.stdout.close()
    err = run.stderr.read()
    assert run.wait(timeout=120) == 0 and "Traceback" not in err and "Error" not in err, err[-800:]
    assert json.loads((tmp_path / "summary.json").read_text())["validity"]["valid"]


def test_existing_run_directory_is_never_overwritten(tmp_path):
    assert harness("runtime=sim", "duration_s=12", run_dir=tmp_path).returncode == 0
    before = snapshot(tmp_path)
    assert tmp_path / ".hydra" / "overrides.yaml" in before
    second = harness("runtime=sim", "duration_s=12", "seeds.schedule=7", run_dir=tmp_path)
    assert second.returncode == 2 and "already holds a run" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before                             # not a byte written, Hydra's files included


def test_a_directory_holding_part_of_a_run_is_refused_untouched(tmp_path):
    (tmp_path / "schedule.parquet").write_bytes(b"from a run that never finished")
    before = snapshot(tmp_path)
    run = harness("runtime=sim", "duration_s=12", run_dir=tmp_path)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "holds part of a run" in lines[0] and "schedule.parquet" in lines[0]
    assert "remove it or choose another hydra.run.dir" in lines[0]
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["schedule.parquet"]


@pytest.mark.parametrize("overrides, expected", [
    (["system=nope"], "Could not find 'system/nope'"),
    (["workload.rate=-5"], "workload.rate must be > 0"),
    (["models.resnet50.slo_ms=0"], "models.resnet50.slo_ms must be > 0"),
    (["workload.rate=abc"], "could not be converted to Float"),
    (["workload.nope=1"], "Key 'nope' not in 'WorkloadConfig'"),
    (["workload=maf_trace", "workload.trace=no/such/trace.csv"], "not found"),
    (["cluster.gpu_type=h999"], "latency profile 'h999/whole.json' not found"),
    (["seeds.runtime=-1"], "seeds.runtime must be an integer >= 0"),
    (["~models"], "no models configured; choose a models group, e.g. models=vision"),
    (["models={}"], "models={} would change nothing"),
    (["runtime.max_pending=0"], "runtime.max_pending must be >= 1"),
    (["runtime.worker_timeout_s=0"], "runtime.worker_timeout_s must be > 0"),
    (["runtime.scheduler_cpu=fastest"], "runtime.scheduler_cpu must be auto, none or a core number"),
    (["runtime=live", "runtime.scheduler_cpu=4096"], "runtime.scheduler_cpu=4096 is not a core this host lets the scheduler use"),
    (["workload.mix={nope: 1}"], "remove it from workload.mix (~workload.mix.nope)"),
    (["workload=timestamp_trace", "workload.trace_unit=minutes"], "workload.trace_unit 'minutes' is unknown"),
])
def test_bad_input_fails_with_one_line(tmp_path, overrides, expected):
    run = harness("runtime=sim", *overrides, run_dir=tmp_path)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], run.stderr
    assert not (tmp_path / "summary.json").exists()


def test_an_empty_run_directory_is_one_line():
    """hydra.run.dir= named the working directory, which the run then refused as part of a run."""
    run = harness("runtime=sim", "hydra.run.dir=")
    assert run.returncode == 2 and run.stderr.strip() == ("error: hydra.run.dir is empty; give a directory for the "
                                                          "run, or leave hydra.run.dir out for a new one under "
                                                          "results/")


def test_the_readme_mix_syntax_sets_the_mix(tmp_path):
    run = harness("runtime=sim", "system=eager", "duration_s=12", "workload=constant", "workload.rate=400",
                  "workload.mix={resnet50: 3, vit_b_16: 1}", run_dir=tmp_path)
    assert run.returncode == 0, run.stderr
    offered = {m: v["offered_rate"] for m, v in json.loads((tmp_path / "summary.json").read_text())["per_model"].items()
               if v["offered_rate"] > 0}
    assert offered == pytest.approx({"resnet50": 300.0, "vit_b_16": 100.0}, rel=0.02)
    # The fix a wrong mix's error suggests works.
    fixed = harness("runtime=sim", "system=eager", "duration_s=12", "workload.mix={resnet50: 3, nope: 1}",
                    "~workload.mix.nope", run_dir=tmp_path / "fixed")
    assert fixed.returncode == 0, fixed.stderr


@pytest.mark.parametrize("where", ["under_a_file", "a_file"])
def test_run_directory_that_cannot_be_made_is_one_line(tmp_path, where):
    (tmp_path / "file").write_text("")
    run_dir = tmp_path / "file" / "run" if where == "under_a_file" else tmp_path / "file"
    run = harness("runtime=sim", "duration_s=12", run_dir=run_dir)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "hydra.run.dir" in lines[0], run.stderr


def test_report_into_a_file_is_one_line(tmp_path):
    assert harness("runtime=sim", "duration_s=12", run_dir=tmp_path / "run").returncode == 0
    (tmp_path / "report.md").write_text("mine")
    report = subprocess.run([sys.executable, "-m", "harness.report", str(tmp_path / "run"), "--out",
                             str(tmp_path / "report.md")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert report.returncode == 2
    lines = report.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--out" in lines[0], report.stderr
    assert (tmp_path / "report.md").read_text() == "mine"


def test_profiler_without_torch_is_one_line():
    code = ("import sys; sys.modules['torch'] = None; sys.argv[0] = 'profiler'; "      # as if torch were not installed
            "from harness.gpu.profiler import main; sys.exit(main([]))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "torch" in lines[0] and "pip install" in lines[0]


def test_profiler_stopped_by_timeout_or_kill_is_one_line():
    # What `timeout` or `kill` does to a profiling run (SIGTERM), with the measuring itself stood in for (no GPU
    # here): one line saying what is kept, exit 130, no traceback from the parent or its measuring child.
    code = ("import signal, sys, time, types; "
            "sys.modules['torch'] = sys.modules['torchvision'] = types.ModuleType('t'); "
            "from harness.gpu import profiler; "
            "profiler.profile_partitions = lambda *a: (print('measuring', flush=True), time.sleep(60)); "
            "signal.signal(signal.SIGTERM, profiler._terminate_as_interrupt); sys.exit(profiler.main([]))")
    run = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    assert run.stdout.readline().strip() == "measuring"
    run.terminate()
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted (signal 15)") and "written" in lines[0], err


def test_malformed_trace_names_file_and_line(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,3,x\n")
    run = harness("runtime=sim", "workload=maf_trace", f"workload.trace={trace}", run_dir=tmp_path / "run")
    assert run.returncode == 2
    assert "trace.csv" in run.stderr and "line 2" in run.stderr and len(run.stderr.strip().splitlines()) == 1


def test_profile_missing_batch_size_is_refused(tmp_path):
    bad = tmp_path / "whole.json"
    bad.write_text(json.dumps({"models": {"resnet50": {"batch": [8, 16], "mean_ms": [1.5, 2.0]}}}))
    with pytest.raises(HarnessError, match="must start at 1"):
        load_profile(bad)
    bad.write_text(json.dumps({"models": {"resnet50": {"batch": [1, 8, 16], "mean_ms": [1.0, 1.5]}}}))
    with pytest.raises(HarnessError, match="2 values for 3 batch sizes"):
        load_profile(bad)


def test_provenance_names_the_commit_also_in_a_copied_checkout(tmp_path, monkeypatch):
    from harness import run, search
    from harness.assembly import assemble

    monkeypatch.delenv(run.GIT_COMMIT_ENV, raising=False)
    cfg = assemble(search.compose(["runtime=sim", "cluster=sleep1000"]))
    here = run.provenance(cfg, [])
    assert len(here["git_commit"] or "") == 40 and here["git_dirty"] in (True, False)
    monkeypatch.setattr(run, "ROOT", tmp_path)                      # no .git there
    assert run.provenance(cfg, [])["git_commit"] is None
    monkeypatch.setenv(run.GIT_COMMIT_ENV, "0123abc")
    copied = run.provenance(cfg, [])
    assert copied["git_commit"] == "0123abc" and copied["git_dirty"] is None
    monkeypatch.setattr(run, "ROOT", ROOT)                          # named, it wins over what git says
    assert run.provenance(cfg, [])["git_commit"] == "0123abc"
