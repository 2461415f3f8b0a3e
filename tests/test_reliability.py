"""No run, sweep or search ends with a wrong, mixed or lost result: Ctrl-C, two at once, reused ids, sweeps
with a failed run, an oracle bound with an unservable model (real subprocesses, the sim unless said)."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness import rundir
from harness.config import register
from harness.live.protocol import infer_request
from harness.live.server import start_server
from harness.processes import wait_for as wait_for_child
from tests.test_live_server import call

ROOT = Path(__file__).resolve().parent.parent
SIM = ["runtime=sim", "system=eager", "workload=poisson"]
LONG_SIM = [*SIM, "workload.rate=40000", "duration_s=120"]      # ~5M requests: tens of seconds on two cores


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def eager_server(tmp_path: Path):
    """A real scheduler process serving eager on one sleep-model slot, its run directory tmp_path/run."""
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["system=eager", "cluster=sleep1000", "cluster.count=1", "models=sleep10"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return start_server(tmp_path / "config.yaml", time.time(), tmp_path / "run", start=time.time())


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 120.0) -> tuple[int, str, str]:
    """Ctrl-C, as a terminal sends it to the foreground command (or SIGTERM, which ends a run the same way)."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- Ctrl-C -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_during_a_sim_run_leaves_no_half_written_run(tmp_path, sig):
    run_dir = tmp_path / "run"
    proc = start("-m", "harness", *LONG_SIM, f"hydra.run.dir={run_dir}")
    wait_for(run_dir / "schedule.parquet", proc)                   # simulating now
    code, out, err = interrupt(proc, sig)
    assert code == 130 and "Traceback" not in err, err
    assert "interrupted" in err and not run_dir.exists()            # removed: a cut-short sim measured nothing
    again = subprocess.run([sys.executable, "-m", "harness", *SIM, "duration_s=12", f"hydra.run.dir={run_dir}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr


def test_ctrl_c_during_a_sim_sweep_keeps_the_finished_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = start("-m", "harness", "-m", *SIM, "duration_s=120", "workload.rate=100,40000", f"hydra.sweep.dir={sweep}")
    wait_for(sweep / "0_eager_poisson" / "summary.json", proc)
    wait_for(sweep / "1_eager_poisson" / "schedule.parquet", proc)
    code, out, err = interrupt(proc)
    assert code == 130 and "Traceback" not in err, err
    first = json.loads((sweep / "0_eager_poisson" / "summary.json").read_text())
    assert first["validity"]["valid"] and first["offered_rate"] == pytest.approx(100, rel=0.1)
    assert not (sweep / "1_eager_poisson").exists()
    again = subprocess.run([sys.executable, "-m", "harness", "-m", *SIM, f"hydra.sweep.dir={sweep}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "choose another hydra.sweep.dir" in one_line(again.stderr)


def probe_lines(proc: subprocess.Popen, n: int) -> list[str]:
    """The search's first n probe lines ("  <dir>: <knob>=<value> -> attainment ...")."""
    lines = []
    while len(lines) < n:
        line = proc.stdout.readline()
        assert line, proc.communicate()
        if "-> attainment" in line:
            lines.append(line)
    return lines


def test_ctrl_c_during_a_sim_search_writes_what_it_found_marked_interrupted(tmp_path):
    out = tmp_path / "search"
    proc = start("-m", "harness.search", "capacity", *SIM, "cluster=h200x4", "workload.rate=16000", "duration_s=20",
                 "--out", str(out))
    probe_lines(proc, 1)                                            # the second probe runs now
    code, stdout, err = interrupt(proc)
    assert code == 130 and "Traceback" not in err, err
    assert "interrupted" in err
    result = json.loads((out / "search.json").read_text())
    (first,) = result["probes"]
    assert result["status"] == "interrupted" and first["value"] == 16000
    assert (result["answer"], result["stopped_at"]["value"]) == ((16000, 32000) if first["passed"] else (None, 8000))
    assert [p.name for p in (out / "probes").iterdir()] == ["00_rate=16000"]    # the cut-short probe is gone
    again = subprocess.run([sys.executable, "-m", "harness.search", "capacity", *SIM, "--out", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already holds a search; choose another --out" in one_line(again.stderr)


def test_ctrl_c_between_probes_waits_for_the_next_probe_and_keeps_the_one_measured(tmp_path):
    # Ctrl-C at the worst moment, deterministically: the instant a probe has measured, while the search does
    # its own bookkeeping (records the probe, prints its line). It stops the next probe, not the record.
    script = """
import os, signal, sys
import harness.search as search
measure = search.real_probe
def stop_after_each(*args):
    probe = measure(*args)
    def probed(value):
        p = probe(value)
        os.kill(os.getpid(), signal.SIGINT)
        return p
    return probed
search.real_probe = stop_after_each
sys.exit(search.main(sys.argv[1:]))
"""
    out = tmp_path / "search"
    done = subprocess.run([sys.executable, "-c", script, "capacity", *SIM, "cluster=h200x4", "workload.rate=16000",
                           "duration_s=5", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    result = json.loads((out / "search.json").read_text())
    (first,) = result["probes"]
    assert result["status"] == "interrupted" and first["value"] == 16000
    assert result["stopped_at"]["value"] == (32000 if first["passed"] else 8000)


def test_ctrl_c_during_a_live_search_is_not_a_failed_probe(tmp_path):
    out = tmp_path / "search"
    proc = start("-m", "harness.search", "capacity", "runtime=live", "system=eager", "cluster=h200x1",
                 "cluster.count=2", "workload=poisson", "workload.rate=150", "duration_s=10", "warmup_s=1",
                 "cooldown_s=1", "runtime.start_lead_s=3", "--out", str(out))
    deadline = time.monotonic() + 60
    while not any("locust" in " ".join(p.info["cmdline"] or []) and str(out) in " ".join(p.info["cmdline"] or [])
                  for p in psutil.process_iter(["cmdline"])):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(4)                                                   # the probe's schedule is under way
    children = psutil.Process(proc.pid).children(recursive=True)
    code, stdout, err = interrupt(proc)
    assert code == 130 and "Traceback" not in err, err
    result = json.loads((out / "search.json").read_text())
    assert result["status"] == "interrupted" and result["probes"] == []      # no verdict on 150 req/s
    assert result["stopped_at"]["value"] == 150 and "interrupted" in stdout
    kept = json.loads((out / result["stopped_at"]["run"] / "summary.json").read_text())
    assert kept["validity"]["interrupted"]                          # what the probe measured is kept
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running: {alive}"


def test_a_stop_after_a_ctrl_c_inside_poll_still_reaps_the_scheduler(tmp_path):
    """CPython's Popen.poll() takes the object's wait lock before the `try` that releases it: a Ctrl-C landing
    between the two (a live run polls its scheduler and Locust ten times a second, so one did, in a live
    search) leaves it held, and every later wait times out though the child has exited: the stop waited 40 s
    for a scheduler that had stopped, then ended in a traceback. Real scheduler process, the lock left as
    such an interrupt leaves it."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child._waitpid_lock.acquire()
    with pytest.raises(subprocess.TimeoutExpired):              # what any wait does then
        child.wait(1.0)
    assert wait_for_child(child, 5) == 0                        # the stops' wait reaps it
    with eager_server(tmp_path) as server:
        assert call(server.url, "/v2/models/m1/infer", infer_request(7, value=1))[0] == 200
        server.proc._waitpid_lock.acquire()
        began = time.monotonic()
    assert time.monotonic() - began < 15 and server.proc.returncode == 0    # SIGTERM: it wrote its records
    assert (tmp_path / "run" / "server_requests.parquet").exists()


# --- two at once ------------------------------------------------------------------------------------------

def test_two_runs_with_one_directory_do_not_mix(tmp_path):
    run_dir = tmp_path / "run"
    first = start("-m", "harness", *LONG_SIM[:-1], "duration_s=60", "seeds.schedule=1", f"hydra.run.dir={run_dir}")
    wait_for(run_dir / "config.yaml", first)
    second = subprocess.run([sys.executable, "-m", "harness", *SIM, "duration_s=12", "seeds.schedule=2",
                             f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    line = one_line(second.stderr)
    assert second.returncode == 2 and str(run_dir) in line and "in use by another run" in line
    assert f"pid {first.pid}" in line and "choose another hydra.run.dir" in line
    out, err = first.communicate(timeout=180)
    assert first.returncode == 0, err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "seeds.schedule=1" in summary["provenance"]["overrides"]
    assert "seeds.schedule=1" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")   # Hydra's files too


def test_a_search_directory_in_use_is_refused_at_once(tmp_path):
    out = tmp_path / "search"
    rundir.claim(rundir.SEARCH, out)                                # as a search running in this process would
    t = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "harness.search", "capacity", *SIM, "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    line = one_line(second.stderr)
    assert second.returncode == 2 and "in use by another search" in line and "choose another --out" in line
    assert time.monotonic() - t < 30 and sorted(p.name for p in out.iterdir()) == [rundir.LOCK]


def test_searches_started_at_once_get_their_own_default_directories(tmp_path):
    args = [sys.executable, "-m", "harness.search", "fewest_gpus", *SIM, "cluster=sleep1000", "models=sleep10",
            "workload.rate=500", "duration_s=12", "--max-probes", "1"]
    searches = [subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    for s in searches:
        out, err = s.communicate(timeout=120)
        assert s.returncode == 0, err
    made = sorted((tmp_path / "results" / "searches").iterdir())
    assert len(made) == 2 and all((d / "search.json").exists() for d in made)
    assert {d.name.split("_")[2] for d in made} == {str(s.pid) for s in searches}


# --- sweeps -----------------------------------------------------------------------------------------------

def test_a_sweep_with_a_failed_run_exits_non_zero_after_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    run = subprocess.run([sys.executable, "-m", "harness", "-m", *SIM, "duration_s=12", "workload.rate=-5,500",
                          f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 2, run.stderr
    assert "workload.rate must be > 0" in run.stderr and "1 run(s) failed (0_eager_poisson) of 2" in run.stderr
    assert json.loads((sweep / "1_eager_poisson" / "summary.json").read_text())["validity"]["valid"]
    ok = subprocess.run([sys.executable, "-m", "harness", "-m", *SIM, "duration_s=12", "workload.rate=300,500",
                         f"hydra.sweep.dir={tmp_path / 'ok'}"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stderr


# --- records ----------------------------------------------------------------------------------------------

def test_a_reused_request_id_is_refused_and_the_first_request_keeps_its_record(tmp_path):
    with eager_server(tmp_path) as server:
        assert call(server.url, "/v2/models/m1/infer", infer_request(7, value=1))[0] == 200
        time.sleep(1.0)
        code, answer = call(server.url, "/v2/models/m2/infer", infer_request(7, value=2))
        assert code == 409 and "request id 7 was already used" in answer["error"]
        assert call(server.url, "/v2/models/m3/infer", infer_request(8, value=3))[0] == 200
    requests = pd.read_parquet(tmp_path / "run" / "server_requests.parquet").set_index("id")
    assert sorted(requests.index) == [7, 8]                        # the refused duplicate is no request of the run
    first = requests.loc[7]
    assert first["model"] == "m1" and first["status"] == "ok"
    assert requests.loc[8, "t_arrival"] - first["t_arrival"] > 0.9   # the first arrival's time, not the reuse's
    assert first["t_done"] - first["t_arrival"] < 0.5


def test_the_oracle_bound_leaves_out_and_names_a_model_no_slot_can_serve(tmp_path):
    run = subprocess.run([sys.executable, "-m", "harness", *SIM, "duration_s=12", "workload.rate=2000",
                          "models.resnet50.slo_ms=0.1", f"hydra.run.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["oracle_unservable"] == ["resnet50"]
    assert summary["oracle_goodput"] == pytest.approx(summary["offered_rate"] * 4 / 5, rel=0.05)
    assert 0.9 < summary["goodput_over_oracle"] <= 1.01

