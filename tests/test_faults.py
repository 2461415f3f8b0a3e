"""Fault injection on the live runtime (emulated GPUs, real processes, real HTTP, real Locust).

Each test runs the main job in a subprocess, injects one fault mid-run, and
checks that nothing hangs, nothing measured is lost, the run says what
happened, and no process or port is left behind. A run that loses a worker
still ran to its end (exit status 0, invalid); one in which a process of the
harness itself dies or hangs broke (exit status 3), records written all the same.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
ORPHANS_GONE_S = 10
BASE = ["runtime=live", "system=eager", "cluster=h200x1", "cluster.count=2", "workload=poisson",
        "workload.rate=150", "duration_s=10", "warmup_s=1", "cooldown_s=1", "runtime.start_lead_s=3"]


class Run:
    def __init__(self, run_dir: Path, *overrides: str):
        self.dir = run_dir
        self.proc = subprocess.Popen([sys.executable, "-m", "harness", *BASE, *overrides, f"hydra.run.dir={run_dir}"],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.ps = psutil.Process(self.proc.pid)

    def descendants(self, needle: str) -> list[psutil.Process]:
        found = []
        for p in psutil.process_iter(["cmdline"]):
            try:
                if needle in " ".join(p.info["cmdline"] or []) and str(self.dir) in " ".join(p.info["cmdline"] or []):
                    found.append(p)
            except psutil.Error:
                pass
        return found

    def wait_for(self, needle: str, timeout: float = 30.0) -> list[psutil.Process]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.descendants(needle)
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"no process matching {needle!r} appeared")

    def server_url(self, timeout: float = 30.0) -> str:
        """The HTTP address the run's ingress processes listen on."""
        ingress = self.wait_for("harness.live.ingress", timeout)[0]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports = [c.laddr.port for c in ingress.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            if ports:
                return f"http://127.0.0.1:{ports[0]}"
            time.sleep(0.2)
        raise AssertionError("the ingress never listened")

    def finish(self, timeout: float = 120.0) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def summary(self) -> dict:
        return json.loads((self.dir / "summary.json").read_text())

    def leftovers(self) -> list[str]:
        return [" ".join(p.cmdline()) for p in self.descendants("harness") if p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]


def assert_nothing_lost(run: Run) -> pd.DataFrame:
    requests = pd.read_parquet(run.dir / "requests.parquet")
    schedule = pd.read_parquet(run.dir / "schedule.parquet")
    assert sorted(requests["id"]) == sorted(schedule["id"])          # every scheduled request has a record
    assert requests["status"].notna().all()
    assert not run.leftovers()
    return requests


def assert_run_ends(run: Run, timeout: float = 120.0) -> tuple[int, str, str]:
    try:
        return run.finish(timeout)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        raise AssertionError(f"the run did not end within {timeout:g} s") from None


def assert_broke(run: Run, code: int, err: str, *words: str) -> pd.DataFrame:
    """The run ended by itself, said that something broke (exit 3), wrote its records and left nothing running."""
    assert code == 3, err
    assert "something broke during the run" in err and "Traceback" not in err
    validity = run.summary()["validity"]
    assert not validity["valid"] and not validity["interrupted"]
    assert any(all(w in r for w in words) for r in validity["reasons"]), validity
    # The processes the dead one started (its ingresses, its workers) stop by themselves, a moment later.
    deadline = time.monotonic() + ORPHANS_GONE_S
    while run.leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    return assert_nothing_lost(run)


def test_scheduler_killed_mid_run_ends_the_run_broken_with_what_the_client_measured(tmp_path):
    run = Run(tmp_path / "run")
    (scheduler,) = run.wait_for("harness.live.scheduler")
    run.server_url()
    time.sleep(6)                                                  # the schedule has started
    scheduler.send_signal(signal.SIGKILL)
    code, out, err = assert_run_ends(run)
    requests = assert_broke(run, code, err, "scheduler process was killed by signal 9")
    assert any("server.json missing" in r for r in run.summary()["validity"]["reasons"])
    assert (requests["status"] == "ok").sum() > 100                 # answered before the kill, kept
    assert (requests["status"] == "error").sum() > 100              # the rest recorded as errors


def test_scheduler_stopped_mid_run_does_not_hang_the_run(tmp_path):
    run = Run(tmp_path / "run")
    (scheduler,) = run.wait_for("harness.live.scheduler")
    run.server_url()
    time.sleep(6)
    scheduler.send_signal(signal.SIGSTOP)                          # alive, never answers again
    started = time.monotonic()
    try:
        code, out, err = assert_run_ends(run, timeout=150)
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            try:
                scheduler.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
    # Its heartbeat stops: the run ends within seconds, and the scheduler, continued, writes its records.
    assert time.monotonic() - started < 40
    requests = assert_broke(run, code, err, "scheduler process stopped answering")
    assert (run.dir / "server.json").exists() and (requests["status"] == "ok").sum() > 100


def test_ingress_killed_mid_run_ends_the_run_broken(tmp_path):
    run = Run(tmp_path / "run")
    run.server_url()
    time.sleep(6)
    run.descendants("harness.live.ingress")[0].send_signal(signal.SIGKILL)
    code, out, err = assert_run_ends(run)
    requests = assert_broke(run, code, err, "ingress", "exited with code -9")
    assert (requests["status"] == "ok").sum() > 100


@pytest.mark.parametrize("process, workers, needle", [("locust", 0, "-m locust"),
                                                     ("locust-master", 1, "--master-bind-host"),
                                                     ("locust-worker-0", 1, "--worker")])
def test_locust_killed_mid_run_keeps_what_it_measured(tmp_path, process, workers, needle):
    run = Run(tmp_path / "run", f"runtime.locust_workers={workers}")
    run.server_url()
    time.sleep(6)
    (locust,) = run.wait_for(needle)
    locust.send_signal(signal.SIGKILL)
    code, out, err = assert_run_ends(run)
    requests = assert_broke(run, code, err, "the load generator failed", f"{process} exited with code -9")
    assert (requests["status"] == "ok").sum() > 100                 # the part files flushed are the run's


def test_locust_killed_before_it_sends_leaves_every_request_marked_unsent(tmp_path):
    run = Run(tmp_path / "run", "runtime.locust_workers=0", "runtime.start_lead_s=8")
    (locust,) = run.wait_for("-m locust", timeout=60)             # killed long before the schedule starts
    locust.send_signal(signal.SIGKILL)
    code, out, err = assert_run_ends(run)
    requests = assert_broke(run, code, err, "the load generator failed", "exited with code -9")
    assert (requests["status"] == "error").all()                     # no record from the client: none served
    assert run.summary()["goodput"] == 0


def test_orchestrator_killed_leaves_a_directory_that_no_run_reuses(tmp_path):
    run = Run(tmp_path / "run")
    run.server_url()
    time.sleep(6)
    run.proc.send_signal(signal.SIGKILL)                           # no summary will be written
    run.finish()
    # The scheduler sees its parent die, writes what it measured and stops its ingresses and workers;
    # Locust stops when its schedule is replayed.
    deadline = time.monotonic() + 30
    while run.leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not run.leftovers()
    assert json.loads((run.dir / "server.json").read_text())["stop_reason"] == "parent process died"
    code, out, err = Run(run.dir).finish()
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "holds part of a run" in err and not (run.dir / "summary.json").exists()


def test_worker_killed_mid_run_is_detected_and_the_run_ends_invalid(tmp_path):
    run = Run(tmp_path / "run")
    (worker,) = run.wait_for("--slot 1 ")                          # slot 0's worker may start first
    time.sleep(6)                                                  # the schedule has started
    worker.send_signal(signal.SIGKILL)
    code, out, err = run.finish()
    assert code == 0, err
    summary = run.summary()
    assert not summary["validity"]["valid"]
    assert any("lost" in r and "[1]" in r for r in summary["validity"]["reasons"]), summary["validity"]
    requests = assert_nothing_lost(run)
    served = requests[requests["status"] == "ok"]
    late_served = served[served["t_sched"] > 8]                   # after the kill, slot 0 carries on alone
    assert len(late_served) > 50 and (late_served["slot"] == 0).all()


def test_stuck_worker_times_out_and_is_treated_as_lost(tmp_path):
    run = Run(tmp_path / "run", "runtime.worker_timeout_s=1")
    (worker,) = run.wait_for("--slot 1 ")                          # slot 0's worker may start first
    time.sleep(6)
    worker.send_signal(signal.SIGSTOP)                            # hung: alive but silent
    code, out, err = run.finish()
    assert code == 0, err
    assert any("lost" in r for r in run.summary()["validity"]["reasons"])
    assert_nothing_lost(run)


def test_interruption_writes_records_and_stops_everything(tmp_path):
    # SIGINT (Ctrl-C), then SIGTERM on a second run, which also shows the first left nothing in its way.
    for sig in (signal.SIGINT, signal.SIGTERM):
        run = Run(tmp_path / sig.name)
        url = run.server_url()
        time.sleep(5)
        run.proc.send_signal(sig)
        code, out, err = run.finish()
        assert code == 130, err                                     # records written, then "interrupted"
        summary = run.summary()
        assert "run interrupted before the end" in summary["validity"]["reasons"]
        requests = assert_nothing_lost(run)
        assert (requests["status"] == "ok").sum() > 100             # what was measured is kept
        with pytest.raises(OSError):                                # the port is closed
            urllib.request.urlopen(f"{url}/v2/health/live", timeout=2)


def test_tenfold_overload_keeps_the_server_alive_and_counts_drops(tmp_path):
    # One slot whose batches of at most 4 take 60 ms: ~66 req/s of capacity, offered 700 req/s.
    run = Run(tmp_path / "run", "cluster=sleep1000", "cluster.count=1", "cluster.sleep.a_ms=10",
              "cluster.sleep.c_ms=20", "cluster.sleep.max_batch=4", "models=sleep10", "workload.rate=700",
              "runtime.max_pending=2000")
    url = run.server_url()
    (frontend,) = run.descendants("harness.live.scheduler")
    health, rss = [], []
    while run.proc.poll() is None:
        t = time.monotonic()
        try:
            with urllib.request.urlopen(f"{url}/v2/health/live", timeout=2) as answer:
                health.append((answer.status, time.monotonic() - t))
            rss.append(frontend.memory_info().rss)
        except (OSError, psutil.Error):
            break                                                   # the run is ending
        time.sleep(0.5)
    code, out, err = run.finish()
    assert code == 0, err
    assert len(health) > 10 and all(status == 200 for status, _ in health)
    assert max(seconds for _, seconds in health) < 1.0
    assert max(rss) < 400 * 2**20
    summary = run.summary()
    assert summary["drop_rate"] > 0.5 and summary["goodput"] > 0          # it still serves some
    assert summary["status_counts"].get("dropped", 0) + summary["status_counts"].get("rejected", 0) > 3000
    assert_nothing_lost(run)


def test_tritonserver_dying_mid_run_ends_the_run_with_its_records(tmp_path):
    run = Run(tmp_path / "run", "system=triton")
    run.wait_for("locust", timeout=180)                            # Locust starts once Triton serves
    server = [p for p in psutil.process_iter(["name", "ppid", "status"]) if p.info["name"] == "tritonserver"
              and p.info["ppid"] == run.proc.pid and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert server, "tritonserver is not running"
    time.sleep(6)                                                  # the schedule has started
    server[0].send_signal(signal.SIGKILL)
    code, out, err = run.finish()
    requests = assert_broke(run, code, err, "tritonserver died")
    assert (requests["status"] == "ok").sum() > 100                 # served before the crash, kept
    assert (requests["status"] == "error").sum() > 100              # the rest recorded as errors
    assert not [p for p in psutil.process_iter(["name", "status"]) if p.info["name"] == "tritonserver"
                and p.info["status"] != psutil.STATUS_ZOMBIE]
