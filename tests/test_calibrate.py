"""Calibration: the live path's delays measured from a run's records, and the sim charging them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.calibrate import Overheads, load_calibration, measure
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parent.parent
MS = 1e-3


def write_run(run: Path, requests: list[dict], batches: list[dict], arrivals: list[dict] | None) -> Path:
    run.mkdir()
    requests = [{"t_sched": r["t_sent"], **r} for r in requests]     # sent on schedule unless a test says
    pd.DataFrame(requests).assign(status="ok").to_parquet(run / "requests.parquet")
    pd.DataFrame(batches).assign(status="ok").to_parquet(run / "batches.parquet")
    if arrivals is not None:
        pd.DataFrame(arrivals).to_parquet(run / "server_requests.parquet")
    return run


def sim_run(run: Path, calibration: Path, *overrides: str) -> Path:
    """Eager in the sim on sleep-model slots (ten models, Poisson), charging `calibration`; its directory."""
    sim = subprocess.run([sys.executable, "-m", "harness", "runtime=sim", "system=eager", "cluster=sleep1000",
                          "models=sleep10", "workload=poisson", *overrides, f"runtime.calibration={calibration}",
                          f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert sim.returncode == 0, sim.stderr
    return run


def test_frontend_delays_come_from_the_scheduler_and_ingress_stamps(tmp_path):
    # 60 requests, each alone on an idle slot: scheduled at i*10 ms - 0.05 ms and sent 0.05 ms late (the load
    # generator's lag, which the latency counts and so the sim must charge), stamped by the ingress 0.1 ms after
    # the send, read by the scheduler at 0.3 ms, its batch dispatched at 0.4, started at 0.6, ended at 2.6,
    # answered at 3.1 ms.
    t = np.arange(60) * 10 * MS
    requests = [{"id": i, "model": "m", "t_sched": s - 0.05 * MS, "t_sent": s, "t_done": s + 3.1 * MS, "batch_id": i}
                for i, s in enumerate(t)]
    batches = [{"id": i, "slot": 0, "model": "m", "size": 1, "t_dispatch": s + 0.4 * MS, "t_start": s + 0.6 * MS,
                "t_end": s + 2.6 * MS} for i, s in enumerate(t)]
    arrivals = [{"id": i, "t_arrival": s + 0.1 * MS, "t_scheduler": s + 0.3 * MS} for i, s in enumerate(t)]
    o = measure(write_run(tmp_path / "run", requests, batches, arrivals))
    assert (o.request_s, o.ingress_s, o.dispatch_s, o.response_s) == pytest.approx((0.35 * MS, 0.15 * MS, 0.2 * MS,
                                                                                     0.5 * MS))
    assert len(o.quantiles["request"]) == 101


def test_triton_request_path_counts_only_requests_that_found_their_model_idle(tmp_path):
    # No arrival stamps (tritonserver). 60 requests found their model idle: Triton called the model 1.5 ms
    # after each send. 60 more were sent while their model's batch ran and waited for it: they must not count.
    requests, batches = [], []
    for i in range(60):
        s = i * 20 * MS
        requests.append({"id": i, "model": "m", "t_sent": s, "t_done": s + 5 * MS, "batch_id": i})
        batches.append({"id": i, "slot": i % 2, "model": "m", "size": 1, "t_dispatch": s + 1.5 * MS,
                        "t_start": s + 1.7 * MS, "t_end": s + 3.7 * MS})
        queued = 100 + i                          # sent 0.5 ms into the batch above, dispatched after it ended
        requests.append({"id": queued, "model": "m", "t_sent": s + 2.0 * MS, "t_done": s + 9 * MS,
                         "batch_id": queued})
        batches.append({"id": queued, "slot": i % 2, "model": "m", "size": 1, "t_dispatch": s + 3.9 * MS,
                        "t_start": s + 4.1 * MS, "t_end": s + 6.1 * MS})
    o = measure(write_run(tmp_path / "run", requests, batches, None))
    assert o.request_s == pytest.approx(1.5 * MS) and o.request_p99_s == pytest.approx(1.5 * MS)
    assert o.ingress_s == o.request_s                       # Triton plans with no deadline: the same span


def test_only_the_runs_measurement_window_is_measured(tmp_path):
    # 60 requests in the window, each 0.3 ms from send to scheduler; two warm-up requests before it met cold
    # paths (200 ms). With the run's summary giving its window, they are not the distribution's top.
    t = np.concatenate([[0.0, 0.5], 1.0 + np.arange(60) * 10 * MS])
    stretch = np.where(t < 1.0, 200.0, 1.0)
    requests = [{"id": i, "model": "m", "t_sched": s, "t_sent": s, "t_done": s + 3.1 * MS * k, "batch_id": i}
                for i, (s, k) in enumerate(zip(t, stretch))]
    batches = [{"id": i, "slot": 0, "model": "m", "size": 1, "t_dispatch": s + 0.4 * MS * k,
                "t_start": s + 0.6 * MS * k, "t_end": s + 2.6 * MS * k} for i, (s, k) in enumerate(zip(t, stretch))]
    arrivals = [{"id": i, "t_arrival": s + 0.1 * MS * k, "t_scheduler": s + 0.3 * MS * k}
                for i, (s, k) in enumerate(zip(t, stretch))]
    run = write_run(tmp_path / "run", requests, batches, arrivals)
    assert max(measure(run).quantiles["request"]) == pytest.approx(60 * MS)       # without a window: all
    (run / "summary.json").write_text(json.dumps({"window_s": [1.0, 2.0]}))
    o = measure(run)
    for part, ms in (("request", 0.3), ("ingress", 0.1), ("dispatch", 0.2), ("response", 0.5)):
        assert max(o.quantiles[part]) == pytest.approx(ms * MS), part


def test_too_few_requests_and_missing_files_say_what_to_do(tmp_path):
    requests = [{"id": 0, "model": "m", "t_sent": 0.0, "t_done": 0.003, "batch_id": 0}]
    batches = [{"id": 0, "slot": 0, "model": "m", "size": 1, "t_dispatch": 0.001, "t_start": 0.001, "t_end": 0.002}]
    with pytest.raises(HarnessError, match="served too few requests"):
        measure(write_run(tmp_path / "run", requests, batches, None))
    with pytest.raises(HarnessError, match="not found; make one: python -m harness.calibrate"):
        load_calibration(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(HarnessError, match="unreadable"):
        load_calibration(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(HarnessError, match="has no 'overheads' table"):
        load_calibration(tmp_path / "empty.json")


def test_a_live_calibration_is_what_the_sim_then_charges(tmp_path):
    # The real command: a short live run (processes, HTTP, Locust), its delays written, then a sim run that
    # draws each request's way in and out from them: its latency is execution plus those delays.
    out = tmp_path / "calibration.json"
    made = subprocess.run([sys.executable, "-m", "harness.calibrate", "--out", str(out), "duration_s=6",
                           "warmup_s=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    doc = json.loads(out.read_text())
    o = load_calibration(out)
    assert 0 < o.ingress_s <= o.request_s < 0.05 and 0 < o.dispatch_s < 0.05 and 0 < o.response_s < 0.05
    spread = doc["quantiles"]["exec"]           # a sleep's overshoot over the typical one of its batch kind
    assert spread[50] == pytest.approx(1.0, abs=0.01) and spread[0] <= 1.0 <= spread[100]
    # Clockwork sends some batches to a slot still busy: the same light run gives the slot's hand-over to them
    # (tens of microseconds on any host; a calibration made with eager had none, and the sim charged none).
    handover = doc["quantiles"]["turnaround"]
    assert 0 <= handover[50] < 0.005 and handover[50] <= handover[99] and o.turnaround(0) is not None
    assert doc["host"]["cores"] and doc["run"][:2] == ["runtime=live", "system=clockwork"]
    run = sim_run(tmp_path / "sim", out, "cluster.count=2", "cluster.sleep.a_ms=0.1", "cluster.sleep.c_ms=2",
                  "workload.rate=50", "duration_s=10")
    r = pd.read_parquet(run / "requests.parquet")
    b = pd.read_parquet(run / "batches.parquet").set_index("id")
    ok = r[r["status"] == "ok"]
    beyond = ok["latency"].to_numpy() - (b.loc[ok["batch_id"], "t_end"] - b.loc[ok["batch_id"], "t_start"]).to_numpy()
    # At 50 req/s nothing queues: what is not execution is the way in, the dispatch and the way out.
    expected = o.request_s + o.dispatch_s + o.response_s
    assert np.median(beyond) == pytest.approx(expected, rel=0.35)


def test_bad_calibrate_arguments_are_refused_before_the_run(tmp_path):
    """An --out under a file, or in a directory that exists but takes no new files (/proc), failed only after the
    run (its measurement lost, with a traceback); an unknown option went on to the run as an override and the
    error named a temporary directory."""
    (tmp_path / "afile").write_text("")
    cases = [(["--out", str(tmp_path / "afile" / "c.json")], "cannot write --out"),
             (["--out", str(tmp_path / "c.json"), "--bogus"], "unknown option --bogus")]
    if Path("/proc/self").is_dir():
        cases.append((["--out", "/proc/calibration.json"], "cannot write --out /proc/calibration.json"))
    for argv, expected in cases:
        done = subprocess.run([sys.executable, "-m", "harness.calibrate", *argv], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and expected in done.stderr and len(done.stderr.strip().splitlines()) == 1


def _loaded_run(run: Path) -> Path:
    """A live run at load that kept only its batches: 60 batches, each sent 0.08 ms before it started (the
    hop under load), none queued behind another."""
    run.mkdir()
    t = np.arange(60) * 5 * MS
    pd.DataFrame([{"id": i, "slot": 0, "model": "m", "size": 8, "t_dispatch": s, "t_start": s + 0.08 * MS,
                   "t_end": s + 4 * MS, "status": "ok"} for i, s in enumerate(t)]).to_parquet(run / "batches.parquet")
    (run / "summary.json").write_text(json.dumps({"runtime": "live", "window_s": [0.0, 1.0], "offered_rate": 9000.0,
                                                  "send_lag_p99_ms": 0.5,
                                                  "provenance": {"host": "gpu-host", "overrides": ["system=nexus"]}}))
    return run


def test_a_calibration_from_a_run_at_load_takes_its_dispatch_hop_and_the_rest_from_a_base(tmp_path):
    # The light calibration's hop (0.2 ms here) is not the hop under load (0.08 ms): --from-run measures the run's
    # own, and a run without requests.parquet takes the request and response delays from --base.
    t = np.arange(60) * 10 * MS
    write_run(tmp_path / "light",
              [{"id": i, "model": "m", "t_sent": s, "t_done": s + 3.1 * MS, "batch_id": i} for i, s in enumerate(t)],
              [{"id": i, "slot": 0, "model": "m", "size": 1, "t_dispatch": s + 0.4 * MS, "t_start": s + 0.6 * MS,
                "t_end": s + 2.6 * MS} for i, s in enumerate(t)],
              [{"id": i, "t_arrival": s + 0.1 * MS, "t_scheduler": s + 0.3 * MS} for i, s in enumerate(t)])
    base = tmp_path / "base.json"
    light = measure(tmp_path / "light")
    base.write_text(json.dumps({"overheads": {f"{p}_s": getattr(light, f"{p}_s") for p in
                                              ("request", "ingress", "dispatch", "response")},
                                "quantiles": light.quantiles}))
    run, out = _loaded_run(tmp_path / "loaded"), tmp_path / "at-load.json"
    done = subprocess.run([sys.executable, "-m", "harness.calibrate", "--out", str(out), "--from-run", str(run),
                           "--base", str(base)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    o = load_calibration(out)
    assert o.dispatch_s == pytest.approx(0.08 * MS) and max(o.quantiles["dispatch"]) == pytest.approx(0.08 * MS)
    assert (o.request_s, o.response_s) == pytest.approx((0.3 * MS, 0.5 * MS))
    assert o.quantiles["request"] == pytest.approx(light.quantiles["request"])
    doc = json.loads(out.read_text())
    assert doc["run"]["from_run"] == str(run) and doc["run"]["base"] == str(base) and doc["host"]["name"] == "gpu-host"
    assert doc["run"]["from_base"] == ["request", "ingress", "response"] and "from the base: request" in done.stdout
    # A run that kept its slot's queue full (each batch sent before the last ended) measures its way in and
    # out but no dispatch hop: that one comes from the base, and the calibration says so.
    queued = tmp_path / "queued"
    write_run(queued,
              [{"id": i, "model": "m", "t_sent": s, "t_done": s + 9.2 * MS, "batch_id": i} for i, s in enumerate(t)],
              [{"id": i, "slot": 0, "model": "m", "size": 1, "t_dispatch": s + 0.2 * MS, "t_start": s + 6 * MS,
                "t_end": s + 9 * MS} for i, s in enumerate(t)],   # 9 ms batches every 10 ms, sent 0.2 ms in
              [{"id": i, "t_arrival": s + 0.05 * MS, "t_scheduler": s + 0.1 * MS} for i, s in enumerate(t)])
    pd.read_parquet(queued / "batches.parquet").assign(t_end=lambda d: d["t_dispatch"] + 12 * MS).to_parquet(
        queued / "batches.parquet")
    o = measure(queued, load_calibration(base))
    assert o.measured == ("request", "ingress", "response", "exec", "turnaround")
    assert o.dispatch_s == pytest.approx(0.2 * MS)
    # Each batch waited at the slot 2 ms before the one before ended, and started 3.8 ms after it did.
    assert o.quantiles["turnaround"][50] == pytest.approx(3.8 * MS)
    assert (o.request_s, o.ingress_s) == pytest.approx((0.1 * MS, 0.05 * MS))
    with pytest.raises(HarnessError, match="too few to measure the dispatch hop"):
        measure(queued)


def test_bad_from_run_arguments_say_what_to_do(tmp_path):
    run = _loaded_run(tmp_path / "loaded")
    sim = tmp_path / "sim"
    sim.mkdir()
    (sim / "summary.json").write_text(json.dumps({"runtime": "sim"}))
    out = str(tmp_path / "c.json")
    cases = [(["--from-run", str(run)], "holds no requests.parquet"),
             (["--from-run", str(tmp_path / "none")], "holds no summary.json"),
             (["--from-run", str(sim)], "but the run in"),
             (["--base", str(tmp_path / "b.json")], "--base completes a run's records"),
             (["--from-run", str(run), "workload.rate=5"], "drop one of them"),
             (["--from-run", str(run), "--base", str(tmp_path / "b.json")], "not found")]
    for argv, expected in cases:
        done = subprocess.run([sys.executable, "-m", "harness.calibrate", "--out", out, *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, argv
    assert not Path(out).exists()


def _batches_measured(run: Path, took: list[float], every: float) -> Overheads:
    """The calibration of a run of batches of one taking `took` (model m for the first 60, n after), one
    every `every` seconds, each dispatched 0.2 ms before it starts."""
    t = np.arange(len(took)) * every
    batches = [{"id": i, "slot": 0, "model": "m" if i < 60 else "n", "size": 1, "t_dispatch": s,
                "t_start": s + 0.2 * MS, "t_end": s + 0.2 * MS + d} for i, (s, d) in enumerate(zip(t, took))]
    requests = [{"id": i, "model": "m", "t_sent": s - 0.3 * MS, "t_done": s + 0.8 * every, "batch_id": i}
                for i, s in enumerate(t)]
    return measure(write_run(run, requests, batches, None))


def test_the_execution_spread_is_each_batch_over_its_kinds_median_and_the_sim_draws_by_it(tmp_path):
    # 60 batches of one kind, every third 20% slower than the rest: the spread's median is 1, its top 1.2.
    # Four batches of another kind are too few to say what is typical for it and are left out.
    took = [2.4 * MS if i % 3 == 0 else 2.0 * MS for i in range(60)] + [5.0 * MS] * 4
    o = _batches_measured(tmp_path / "run", took, 10 * MS)
    spread = o.quantiles["exec"]
    assert len(spread) == 101 and spread[50] == pytest.approx(1.0) and spread[100] == pytest.approx(1.2)
    assert "exec" in o.measured
    # A calibration whose spread is x1.5 throughout: every sim batch takes 1.5 times the model's time.
    cal = tmp_path / "slow.json"
    cal.write_text(json.dumps({"overheads": {f"{p}_s": 0.0 for p in ("request", "ingress", "dispatch", "response")},
                               "quantiles": {**{p: [0.0] * 101 for p in ("request", "ingress", "dispatch",
                                                                          "response")}, "exec": [1.5] * 101}}))
    run = sim_run(tmp_path / "sim", cal, "cluster.count=1", "cluster.sleep.a_ms=1", "cluster.sleep.c_ms=4",
                  "workload.rate=20", "duration_s=5")
    b = pd.read_parquet(run / "batches.parquet")
    b = b[b["status"] == "ok"]
    assert len(b) > 20
    assert (b["t_end"] - b["t_start"]).to_numpy() == pytest.approx(1.5 * (1.0 * b["size"] + 4.0).to_numpy() * MS)
    # A spread that is no factor is refused in one line.
    bad = json.loads(cal.read_text())
    bad["quantiles"]["exec"] = [0.0] * 101
    cal.write_text(json.dumps(bad))
    with pytest.raises(HarnessError, match="execution spread's quantiles"):
        load_calibration(cal)


def test_the_spread_is_measured_by_batch_length_and_the_sim_draws_each_batch_from_its_lengths(tmp_path):
    # 60 short batches (1.8 ms, every third 20% slower) and 60 long ones (20 ms, every third 5% slower): the
    # pooled spread mixes them, the spread by length keeps each (bins up to 2 ms and up to 32 ms).
    took = [(2.16 if i % 3 == 0 else 1.8) * MS for i in range(60)] + [(21.0 if i % 3 == 0 else 20.0) * MS
                                                                      for i in range(60)]
    o = _batches_measured(tmp_path / "run", took, 30 * MS)
    by_length = o.quantiles["exec_by_length"]
    assert sorted(by_length) == ["2", "32"]
    assert by_length["2"][100] == pytest.approx(1.2) and by_length["32"][100] == pytest.approx(1.05)
    assert o.quantiles["exec"][100] == pytest.approx(1.2)
    # A calibration with batches up to 2 ms x2 and longer ones x1.5: a sleep slot's batch of one takes 1.5 ms,
    # of more 2.5 ms or longer; each is drawn from its own length's spread.
    none = {p: [0.0] * 101 for p in ("request", "ingress", "dispatch", "response")}
    cal = tmp_path / "by-length.json"
    cal.write_text(json.dumps({"overheads": {f"{p}_s": 0.0 for p in none},
                               "quantiles": {**none, "exec": [1.0] * 101,
                                             "exec_by_length": {"2": [2.0] * 101, "inf": [1.5] * 101}}}))
    run = sim_run(tmp_path / "sim", cal, "cluster.count=1", "cluster.sleep.a_ms=1", "cluster.sleep.c_ms=0.5",
                  "workload.rate=400", "duration_s=5")
    b = pd.read_parquet(run / "batches.parquet")
    b = b[b["status"] == "ok"]
    assert (b["size"] == 1).sum() > 20 and (b["size"] > 1).sum() > 20
    model_ms = (1.0 * b["size"] + 0.5).to_numpy()
    factor = np.where(model_ms <= 2.0, 2.0, 1.5)
    assert (b["t_end"] - b["t_start"]).to_numpy() == pytest.approx(factor * model_ms * MS)
    # A bin the calibration does not know is refused in one line.
    bad = json.loads(cal.read_text())
    bad["quantiles"]["exec_by_length"] = {"3": [1.0] * 101}
    cal.write_text(json.dumps(bad))
    with pytest.raises(HarnessError, match="spread by length"):
        load_calibration(cal)


def test_a_queued_run_that_kept_only_its_batches_still_gives_its_execution_spread(tmp_path):
    # Clockwork past capacity on a GPU host: no requests kept, its slot's queue never empty (no hop), but
    # 60 batches of one kind, every fourth 10% slower: the spread is measured, every delay is the base's.
    run = tmp_path / "queued"
    run.mkdir()
    # Each batch is sent 3 ms before it starts and starts 0.05 ms after the one before it ended.
    took = np.where(np.arange(60) % 4 == 0, 5.5 * MS, 5.0 * MS)
    start = 3 * MS + np.concatenate([[0.0], np.cumsum(took[:-1] + 0.05 * MS)])
    pd.DataFrame({"id": range(60), "slot": 0, "model": "m", "size": 4, "t_dispatch": start - 3 * MS,
                  "t_start": start, "t_end": start + took, "status": "ok"}).to_parquet(run / "batches.parquet")
    base = Overheads(0.3 * MS, 0.1 * MS, 0.2 * MS, 0.4 * MS, quantiles={})
    o = measure(run, base)
    assert o.measured == ("exec", "turnaround") and o.quantiles["exec"][100] == pytest.approx(1.1)
    assert o.quantiles["turnaround"][0] == pytest.approx(0.05 * MS) == o.quantiles["turnaround"][100]
    assert (o.request_s, o.dispatch_s, o.response_s) == (0.3 * MS, 0.2 * MS, 0.4 * MS)
    with pytest.raises(HarnessError, match="holds no requests.parquet"):
        measure(run)


def test_the_sim_starts_a_batch_that_waited_at_its_slot_the_calibrated_turnaround_after_the_one_before(tmp_path):
    # Clockwork past capacity keeps batches waiting at their slots. A calibration with no delays and a 1 ms
    # turnaround: every batch that reached its slot before the one ahead ended starts 1 ms after that one's
    # end, on a whole slot (timed when sent) and on a share beside siblings (timed when it starts) alike, and
    # one sent to an idle slot starts at once. A discarded (late) batch costs the slot no turnaround.
    cal = tmp_path / "turnaround.json"
    none = {p: [0.0] * 101 for p in ("request", "ingress", "dispatch", "response")}
    cal.write_text(json.dumps({"overheads": {f"{p}_s": 0.0 for p in none},
                               "quantiles": {**none, "turnaround": [1 * MS] * 101}}))
    assert load_calibration(cal).turnaround(0)(3) == pytest.approx([1 * MS] * 3)
    clusters = {"whole": ["cluster=sleep1000", "cluster.count=1", "models=sleep10", "workload=poisson",
                          "workload.rate=400"],
                "shares": ["experiment=reference_gpu", "cluster.gpu_type=h100", "workload.rate=9000"]}
    for name, overrides in clusters.items():
        run = subprocess.run([sys.executable, "-m", "harness", "runtime=sim", "system=clockwork", *overrides,
                              "duration_s=3", "warmup_s=1", "cooldown_s=1", f"runtime.calibration={cal}",
                              f"hydra.run.dir={tmp_path / name}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        b = pd.read_parquet(tmp_path / name / "batches.parquet")
        if name == "shares":              # discarded batches between ok ones: each ok one still waits 1 ms only
            assert (b["status"] == "late").sum() > 20
        b = b[b["status"] == "ok"].sort_values(["slot", "t_start"])
        ahead_ended = b.groupby("slot")["t_end"].shift()
        waited = b["t_dispatch"] < ahead_ended
        assert waited.sum() > 100 and (~waited).sum() > 0, name
        assert (b["t_start"] - ahead_ended)[waited].to_numpy() == pytest.approx(1 * MS, abs=1e-9), name
        assert (b["t_start"] - b["t_dispatch"])[~waited].to_numpy() == pytest.approx(0.0, abs=1e-9), name
    # A turnaround that is no delay is refused in one line.
    bad = json.loads(cal.read_text())
    bad["quantiles"]["turnaround"] = [-1.0] * 101
    cal.write_text(json.dumps(bad))
    with pytest.raises(HarnessError, match="turnaround delay's quantiles"):
        load_calibration(cal)
