"""The real-versus-emulated benchmark's bookkeeping: what it still has to run, and its table over seeds.

Its runs need a GPU host; here the summaries are written by hand, as those runs would leave them.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("real_vs_emulated", ROOT / "benchmarks" / "real_vs_emulated.py")
rve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rve)


OLD = {"sha256": "0123456789abcdef", "date": "2026-11-22T05:04:51Z"}
NEW = {"sha256": "fedcba9876543210", "date": "2026-12-06T10:00:00Z"}


def summary(path: Path, goodput: float, valid: bool = True, emulated: bool = False, profile: dict = OLD) -> None:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"goodput": goodput, "offered_rate": 1500.0, "emulated": emulated,
                                                   "slo_attainment": round(goodput / 1500, 2),
                                                   "latency_p50_ms": 20.0, "validity": {"valid": valid},
                                                   "gpu_type": "h100", "partition": "mps25",
                                                   "provenance": {"profiles": {"h100/mps25": profile}}}))


def test_plan_skips_what_is_done_and_goes_seed_by_seed(tmp_path):
    summary(rve.run_dir(tmp_path, "whole", "reference", "eager", 0, "gpu"), 1500)
    todo = rve.plan(tmp_path, ["eager", "nexus"], ["whole"], ["reference"], [0, 1])
    assert todo[0] == ("whole", "reference", "eager", 0, "emulated")      # its real half is there already
    assert [t[3] for t in todo] == [0, 0, 0, 1, 1, 1, 1]                  # every system at seed 0 first
    assert ("whole", "reference", "eager", 0, "gpu") not in todo


def test_runs_made_with_another_profile_are_made_again_and_the_old_ones_kept(tmp_path):
    summary(rve.run_dir(tmp_path, "mps25x4", "overload", "eager", 0, "gpu"), 1400)
    summary(rve.run_dir(tmp_path, "mps25x4", "overload", "eager", 0, "emulated"), 1450)
    summary(rve.run_dir(tmp_path, "mps25x4", "overload", "eager", 1, "gpu"), 1400, profile=NEW)
    todo = rve.plan(tmp_path, ["eager"], ["mps25x4"], ["overload"], [0, 1], {"mps25x4": NEW})
    assert todo == [("mps25x4", "overload", "eager", 0, "gpu"), ("mps25x4", "overload", "eager", 0, "emulated"),
                    ("mps25x4", "overload", "eager", 1, "emulated")]
    # Runs of before the digest was kept match the profile by its date of measurement.
    assert rve.plan(tmp_path, ["eager"], ["mps25x4"], ["overload"], [0], {"mps25x4": {"date": OLD["date"]}}) == []
    old = rve.run_dir(tmp_path, "mps25x4", "overload", "eager", 0, "emulated")
    moved = rve.set_aside(old)
    assert moved.name == "eager-seed0-emulated.profile-2026-11-22T05-04-51Z" and (moved / "summary.json").exists()
    assert not old.exists() and rve.set_aside(old) is None
    summary(old, 1300)
    assert rve.set_aside(old).name.endswith("-2")                      # a second one made with it: kept too
    # The real run of the old profile has no emulated twin of it any more: no pair. Seed 1's pair is mixed.
    summary(rve.run_dir(tmp_path, "mps25x4", "overload", "eager", 1, "emulated"), 1450)
    t = rve.table(tmp_path)
    assert t.empty and t.attrs["mixed"] == ["mps25x4/overload/eager-seed1"]


def test_seeds_made_with_different_profiles_are_never_averaged(tmp_path):
    for seed, profile in ((0, OLD), (1, NEW), (2, NEW)):
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "eager", seed, "gpu"), 1400, profile=profile)
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "eager", seed, "emulated"), 1500, profile=profile)
    t = rve.table(tmp_path).set_index("profile")
    assert t.loc[NEW["date"], "seeds"] == 2 and t.loc[OLD["date"], "seeds"] == 1 and not t.attrs["mixed"]


def test_table_is_the_mean_ratio_over_seeds_with_its_interval_and_the_5_percent_flag(tmp_path):
    for seed, (real, emu) in enumerate([(1400, 1500), (1450, 1500), (1420, 1500)]):
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "symphony", seed, "gpu"), real)
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "symphony", seed, "emulated"), emu)
    for seed in range(3):
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "eager", seed, "gpu"), 1500, valid=seed != 2)
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "eager", seed, "emulated"), 1500)
    summary(rve.run_dir(tmp_path, "whole", "overload", "nexus", 0, "gpu"), 900)   # no emulated half: left out
    for seed, sim in enumerate((1500, 1500, 1200)):      # the sim judged apart: within 5% of symphony's, not eager's
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "symphony", seed, "sim"), 1440, emulated=True)
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "eager", seed, "sim"), sim, emulated=True)
    t = rve.table(tmp_path).set_index("system")
    assert list(t.index) == ["eager", "symphony"]
    sym = t.loc["symphony"]
    assert sym["seeds"] == 3 and sym["real / emulated"] == pytest.approx((1400 + 1450 + 1420) / 4500)
    assert sym["95% CI +-"] > 0 and sym["within 5%"] == "no"                 # 0.947: more than 5% off
    assert t.loc["eager", "real / emulated"] == 1 and t.loc["eager", "within 5%"] == "invalid run"
    assert sym["real / sim"] == pytest.approx((1400 + 1450 + 1420) / 1440 / 3) and sym["sim within 5%"] == "yes"
    assert t.loc["eager", "real / sim"] == pytest.approx((2 + 1500 / 1200) / 3) and t.loc["eager", "sim within 5%"] == "no"
    assert sym["real attainment"] == pytest.approx((0.93 + 0.97 + 0.95) / 3) and sym["emulated attainment"] == 1.0
    assert sym["gap / offered"] == pytest.approx(((1400 + 1450 + 1420) / 3 - 1500) / 1500)


def test_the_table_comes_with_its_figure(tmp_path, capsys):
    for seed, real in enumerate((1400, 1480)):
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "symphony", seed, "gpu"), real, valid=seed == 0)
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "symphony", seed, "emulated"), 1500)
    summary(rve.run_dir(tmp_path, "mps25x4", "overload", "triton", 0, "gpu"), 45)      # drawn at the floor
    summary(rve.run_dir(tmp_path, "mps25x4", "overload", "triton", 0, "emulated"), 360)
    assert rve.main(["--out", str(tmp_path), "--table"]) == 0
    assert "wrote real_vs_emulated.png, real_vs_emulated.pdf" in capsys.readouterr().out
    assert (tmp_path / "real_vs_emulated.png").stat().st_size > 10_000 and (tmp_path / "real_vs_emulated.pdf").exists()


def test_several_calls_directories_read_as_one_the_last_named_winning(tmp_path, capsys):
    first, later = tmp_path / "first", tmp_path / "later"
    for seed in (0, 1):
        summary(rve.run_dir(first, "mps25x4", "reference", "eager", seed, "gpu"), 1350)
        summary(rve.run_dir(first, "mps25x4", "reference", "eager", seed, "emulated"), 1500)
    summary(rve.run_dir(later, "mps25x4", "reference", "eager", 0, "gpu"), 1500)       # seed 0 made again
    summary(rve.run_dir(later, "mps25x4", "reference", "eager", 0, "emulated"), 1500)
    row = rve.table(first, later).iloc[0]
    assert row["seeds"] == 2 and row["real / emulated"] == pytest.approx((1.0 + 0.9) / 2)
    assert rve.table(later, first).iloc[0]["real / emulated"] == pytest.approx(0.9)
    assert rve.main(["--out", str(first), "--out", str(later), "--table"]) == 0
    assert (later / "real_vs_emulated.csv").exists() and not (first / "real_vs_emulated.csv").exists()
    for argv, says in ((["--out", str(first), "--out", str(tmp_path / "nope"), "--table"], "nope is not a directory"),
                       (["--out", str(first), "--out", str(later)], "by --table and --sim only")):
        run = subprocess.run([sys.executable, "benchmarks/real_vs_emulated.py", *argv], cwd=ROOT,
                             capture_output=True, text=True)
        assert run.returncode != 0 and says in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_a_reader_that_goes_away_costs_no_traceback(tmp_path):
    for system in ("eager", "symphony", "nexus", "clockwork", "shepherd", "triton"):
        for seed in range(3):
            summary(rve.run_dir(tmp_path, "mps25x4", "reference", system, seed, "gpu"), 1490)
            summary(rve.run_dir(tmp_path, "mps25x4", "reference", system, seed, "emulated"), 1500)
    run = subprocess.Popen([sys.executable, "benchmarks/real_vs_emulated.py", "--out", str(tmp_path), "--table"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.stdout.close()
    err = run.stderr.read()
    assert run.wait(timeout=120) in (0, 141) and err == "", err[-800:]


def test_a_collapse_on_both_sides_is_measured_against_the_offered_rate_too(tmp_path):
    summary(rve.run_dir(tmp_path, "mps25x4", "overload", "triton", 0, "gpu"), 45)
    summary(rve.run_dir(tmp_path, "mps25x4", "overload", "triton", 0, "emulated"), 360)
    row = rve.table(tmp_path).iloc[0]
    assert row["real / emulated"] == pytest.approx(0.125) and row["within 5%"] == "no"
    assert row["gap / offered"] == pytest.approx(-315 / 1500)


def test_sim_twins_are_made_without_a_gpu_and_join_the_table(tmp_path):
    current = rve.current_profile("h100", "mps25x4")
    overrides = ["experiment=reference_gpu", "system=eager", "runtime.locust_workers=-1", "duration_s=4",
                 "warmup_s=1", "cooldown_s=1", "seeds.schedule=0", "seeds.mapping=0", "seeds.runtime=0"]
    for system, profile in (("eager", current), ("nexus", OLD)):
        for side in ("gpu", "emulated"):
            summary(rve.run_dir(tmp_path, "mps25x4", "reference", system, 0, side), 1450, profile=profile)
        path = rve.run_dir(tmp_path, "mps25x4", "reference", system, 0, "gpu") / "summary.json"
        real = json.loads(path.read_text())
        real["provenance"]["overrides"] = [o.replace("eager", system) for o in overrides]
        path.write_text(json.dumps(real))
    calibration = ROOT / "results" / "reference" / "vm-live-vs-sim-2" / "calibration.json"
    said = rve.sim_twins(tmp_path, calibration, [])
    assert said[0].startswith("mps25x4/reference/eager-seed0 sim: goodput") and "real 1,450.0" in said[0]
    sim = json.loads((rve.run_dir(tmp_path, "mps25x4", "reference", "eager", 0, "sim") / "summary.json").read_text())
    # Its line says how it served: past capacity a run settles in small batches that drop more, or not.
    assert f"(mean batch {sim['mean_batch_size']:.1f}, dropped {sim['drop_rate']:.1%})" in said[0]
    assert said[1] == ("mps25x4/reference/nexus-seed0: made with another profile than profiles/ holds now; "
                       "no sim twin")
    assert sim["runtime"] == "sim" and sim["emulated"] and sim["gpu_type"] == "h100"
    assert rve.made_with(sim)["sha256"] == current["sha256"] and sim["goodput"] > 1000
    # Named from the project's root, as the run read it: a committed twin names no machine's directories.
    assert "runtime.calibration=results/reference/vm-live-vs-sim-2/calibration.json" in sim["provenance"]["overrides"]
    assert rve.sim_twins(tmp_path, calibration, []) == said[1:]             # made once
    # Only the runs asked for: --systems and the other selections hold for the twins too.
    assert rve.selected(rve.run_dir(tmp_path, "mps25x4", "reference", "nexus", 0, "gpu"), ["eager"], ["mps25x4"],
                        ["reference"], [0]) is False
    assert rve.sim_twins(tmp_path, calibration, [], lambda run: "nexus" not in run.name) == []
    t = rve.table(tmp_path).set_index("system")
    assert t.loc["eager", "real / sim"] == pytest.approx(1450 / sim["goodput"])
    assert t.loc["nexus", "real / sim"] != t.loc["nexus", "real / sim"]     # none: NaN
    assert t.loc["nexus", "sim within 5%"] == ""
    # Several directories: each gets its runs' twins, and the table of them all goes to the last named.
    later = tmp_path / "later"
    for side in ("gpu", "emulated"):
        summary(rve.run_dir(later, "mps25x4", "reference", "eager", 1, side), 1450, profile=current)
    path = rve.run_dir(later, "mps25x4", "reference", "eager", 1, "gpu") / "summary.json"
    real = json.loads(path.read_text())
    real["provenance"]["overrides"] = [o.replace("=0", "=1") for o in overrides]
    path.write_text(json.dumps(real))
    assert rve.main(["--out", str(tmp_path), "--out", str(later), "--sim", str(calibration), "--systems", "eager"]) == 0
    sims = [json.loads((rve.run_dir(out, "mps25x4", "reference", "eager", seed, "sim") / "summary.json").read_text())
            for out, seed in ((tmp_path, 0), (later, 1))]
    assert sims[0] == sim                                                   # made once: not made again
    both = pd.read_csv(later / "real_vs_emulated.csv").set_index("system")
    assert both.loc["eager", "seeds"] == 2
    assert both.loc["eager", "real / sim"] == pytest.approx(sum(1450 / s["goodput"] for s in sims) / 2, rel=1e-3)


def test_sim_twins_charge_each_real_runs_own_delays_and_are_made_again_with_another_calibration(tmp_path):
    overrides = ["experiment=reference_gpu", "system=eager", "duration_s=3", "warmup_s=1", "cooldown_s=1"]
    current = rve.current_profile("h100", "mps25x4")
    for system in ("eager", "nexus"):
        real = rve.run_dir(tmp_path, "mps25x4", "reference", system, 0, "gpu")
        summary(real, 1450, profile=current)
        doc = json.loads((real / "summary.json").read_text())
        doc["provenance"]["overrides"] = [o.replace("eager", system) for o in overrides]
        (real / "summary.json").write_text(json.dumps(doc))
    own = rve.run_dir(tmp_path, "mps25x4", "reference", "eager", 0, "gpu") / "calibration.json"
    own.write_text((ROOT / "results" / "reference" / "vm-live-vs-sim-2" / "calibration.json").read_text())
    summary(rve.run_dir(tmp_path, "mps25x4", "reference", "eager", 0, "sim"), 1400, profile=OLD)  # an old twin
    said = rve.sim_twins(tmp_path, None, [])
    assert (tmp_path / "mps25x4" / "reference" / f"eager-seed0-sim.profile-{OLD['date'].replace(':', '-')}"
            / "summary.json").exists()                                           # kept beside, not deleted
    assert said[0].startswith("mps25x4/reference/eager-seed0 sim: goodput")
    # A real run whose records measured no delays (no calibration.json) gets no twin, and the line says what to do.
    assert said[1].startswith("mps25x4/reference/nexus-seed0: no sim twin with its own delays (no calibration.json")
    assert "python -m harness.calibrate --from-run" in said[1]
    assert said[1].endswith("or name one: --sim CALIBRATION --systems nexus")
    twin = rve.run_dir(tmp_path, "mps25x4", "reference", "eager", 0, "sim")
    assert rve.calibrated_with(json.loads((twin / "summary.json").read_text())) == str(own)   # outside the root
    assert rve.sim_twins(tmp_path, None, []) == said[1:]                       # made once
    other = ROOT / "results" / "reference" / "vm-live-vs-sim-3" / "calibration.json"
    again = rve.sim_twins(tmp_path, other, [], lambda run: "eager" in run.name)
    assert len(again) == 1 and again[0].startswith("mps25x4/reference/eager-seed0 sim: goodput")
    assert rve.calibrated_with(json.loads((twin / "summary.json").read_text())) == \
        "results/reference/vm-live-vs-sim-3/calibration.json"


def test_repeated_sim_twins_draw_afresh_over_the_same_arrivals_and_real_over_sim_is_over_their_mean(tmp_path):
    current = rve.current_profile("h100", "mps25x4")
    for side in ("gpu", "emulated"):
        summary(rve.run_dir(tmp_path, "mps25x4", "reference", "eager", 3, side), 1450, profile=current)
    real = rve.run_dir(tmp_path, "mps25x4", "reference", "eager", 3, "gpu")
    doc = json.loads((real / "summary.json").read_text())
    doc["provenance"]["overrides"] = ["experiment=reference_gpu", "system=eager", "duration_s=3", "warmup_s=1",
                                      "cooldown_s=1", "seeds.schedule=3", "seeds.runtime=3"]
    doc["seeds"] = {"schedule": 3, "mapping": 0, "payload": 2, "runtime": 3}      # as a run's summary says them
    (real / "summary.json").write_text(json.dumps(doc))
    calibration = ROOT / "results" / "reference" / "vm-live-vs-sim-2" / "calibration.json"
    heard = []
    said = rve.sim_twins(tmp_path, calibration, [], repeats=2, say=heard.append)
    assert heard == said                                                # each line told as its twin is made
    assert said[0].startswith("mps25x4/reference/eager-seed3 sim: goodput")
    assert said[1].startswith("mps25x4/reference/eager-seed3 sim (runtime seed 1003): goodput")
    twins = [json.loads((rve.sim_twin(real, k) / "summary.json").read_text()) for k in (0, 1)]
    assert [t["seeds"]["runtime"] for t in twins] == [3, 1003] and [t["seeds"]["schedule"] for t in twins] == [3, 3]
    assert rve.sim_twins(tmp_path, calibration, [], repeats=2) == []          # made once
    t = rve.table(tmp_path).set_index("system")
    assert t.loc["eager", "sim twins"] == 2
    assert t.loc["eager", "real / sim"] == pytest.approx(1450 / ((twins[0]["goodput"] + twins[1]["goodput"]) / 2))
    # A repeat left from another calibration is no twin of this one's.
    stale = json.loads((rve.sim_twin(real, 1) / "summary.json").read_text())
    stale["provenance"]["overrides"][-2] = "runtime.calibration=elsewhere.json"
    stale["goodput"] = 1.0
    (rve.sim_twin(real, 1) / "summary.json").write_text(json.dumps(stale))
    t = rve.table(tmp_path).set_index("system")
    assert t.loc["eager", "sim twins"] == 1 and t.loc["eager", "real / sim"] == pytest.approx(
        1450 / twins[0]["goodput"])


def test_without_a_gpu_it_runs_nothing_and_says_why(tmp_path):
    if rve.detect_gpus():
        pytest.skip("a GPU is here: the benchmark would run")
    done = subprocess.run([sys.executable, "benchmarks/real_vs_emulated.py", "--out", str(tmp_path / "x")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no NVIDIA GPU here" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_eager_capacity_is_searched_once_in_the_sim_and_kept_small(tmp_path):
    capacity = rve.eager_capacity(tmp_path, "whole", "h200", [])
    kept = tmp_path / "whole"
    search = json.loads((kept / "eager-capacity-search" / "search.json").read_text())
    assert search["status"] == "found" and capacity == search["answer"] > 1000
    assert len(search["probes"]) >= 3                      # every probe's rate and result stay in search.json
    assert not (kept / "eager-capacity-search" / "probes").exists()          # their sim runs do not
    # It names its search by where it lies beside it, not by a path of the machine that made it.
    assert json.loads((kept / "eager-capacity.json").read_text())["search"] == "eager-capacity-search"
    (kept / "eager-capacity-search").rename(kept / "moved")                   # read from the file, not searched again
    assert rve.eager_capacity(tmp_path, "whole", "h200", []) == capacity


def test_a_real_run_gets_its_own_calibration_beside_it_where_its_records_measure_one(tmp_path):
    # A GPU run's per-request records stay on its host; the delays they give (this host at this load) go beside
    # the run. One whose slot never idled before a dispatch (a queue kept full) measures no hop: it says so.
    import numpy as np
    import pandas as pd

    def run(name: str, queued: bool, host: str = "gpu-host-1") -> Path:
        where = tmp_path / name
        where.mkdir()
        t = np.arange(60) * 0.005
        end = t + (0.010 if queued else 0.004)         # queued: each batch sent before the last one ended
        pd.DataFrame({"id": range(60), "slot": 0, "model": "m", "size": 8, "t_dispatch": t, "t_start": t + 8e-5,
                      "t_end": end, "status": "ok"}).to_parquet(where / "batches.parquet")
        pd.DataFrame({"id": range(60), "model": "m", "t_sched": t - 4e-4, "t_sent": t - 4e-4, "t_done": end + 3e-4,
                      "batch_id": range(60), "status": "ok"}).to_parquet(where / "requests.parquet")
        pd.DataFrame({"id": range(60), "t_arrival": t - 3e-4, "t_scheduler": t - 1e-4}).to_parquet(
            where / "server_requests.parquet")
        (where / "summary.json").write_text(json.dumps({"runtime": "live", "window_s": [0.0, 1.0],
                                                        "provenance": {"host": host}}))
        return where

    # Alone, a run that cannot measure its hop gets no calibration, and says why.
    busy = run("clockwork-seed0-gpu", queued=True)
    assert "too few to measure the dispatch hop" in rve.calibrate_beside(busy) and not (busy / "calibration.json").exists()
    idle = run("eager-seed0-gpu", queued=False)
    said = rve.calibrate_beside(idle)
    assert said.startswith("wrote calibration.json: request 0.300 ms") and "dispatch 0.080 ms" in said
    assert json.loads((idle / "calibration.json").read_text())["run"]["from_run"] == str(idle)
    # Beside a run of the same host at the same load, it measures its own way in and out and takes the hop
    # from that run's calibration; one made on another host, or a Triton run (tritonserver's path), does not.
    said = rve.calibrate_beside(busy)
    assert said.startswith("wrote calibration.json: request 0.300 ms") and said.endswith("from the base: dispatch")
    made = json.loads((busy / "calibration.json").read_text())["run"]
    assert made["base"] == str(idle / "calibration.json") and made["from_base"] == ["dispatch"]
    for name, host in (("nexus-seed0-gpu", "gpu-host-2"), ("triton-seed0-gpu", "gpu-host-1")):
        other = run(name, queued=True, host=host)
        assert "too few to measure the dispatch hop" in rve.calibrate_beside(other), name
        assert not (other / "calibration.json").exists()


@pytest.mark.parametrize("keep", ["all", "batches"])
def test_keep_batches_deletes_a_runs_per_request_records_after_its_calibration_is_written(tmp_path, monkeypatch, keep):
    # The harness run is stood in for by what a finished live run leaves (its records as in the test above);
    # the calibration is measured from the records before they go, and what the table reads stays.
    import numpy as np

    def made(*overrides):
        where = Path(next(o for o in overrides if o.startswith("hydra.run.dir=")).split("=", 1)[1])
        where.mkdir(parents=True)
        t = np.arange(60) * 0.005
        pd.DataFrame({"id": range(60), "slot": 0, "model": "m", "size": 8, "t_dispatch": t, "t_start": t + 8e-5,
                      "t_end": t + 0.004, "status": "ok"}).to_parquet(where / "batches.parquet")
        pd.DataFrame({"id": range(60), "model": "m", "t_sched": t - 4e-4, "t_sent": t - 4e-4,
                      "t_done": t + 0.0043, "batch_id": range(60), "status": "ok"}).to_parquet(where / "requests.parquet")
        pd.DataFrame({"id": range(60), "t_arrival": t - 3e-4, "t_scheduler": t - 1e-4}).to_parquet(
            where / "server_requests.parquet")
        pd.DataFrame({"id": range(60), "t_sched": t - 4e-4}).to_parquet(where / "schedule.parquet")
        (where / "client").mkdir()
        (where / "client" / "locust.log").write_text("Locust's summary")
        (where / "summary.json").write_text(json.dumps({"runtime": "live", "window_s": [0.0, 1.0], "goodput": 1500.0,
                                                        "emulated": False, "validity": {"valid": True},
                                                        "provenance": {"host": "gpu-host-1"}}))
        return subprocess.CompletedProcess([], 0, "", "")

    monkeypatch.setattr(rve, "harness", made)
    said = rve.one_run(tmp_path, "whole", "reference", "eager", 0, "gpu", None, "h100", [], keep)
    where = rve.run_dir(tmp_path, "whole", "reference", "eager", 0, "gpu")
    assert "wrote calibration.json: request 0.300 ms" in said and (where / "calibration.json").exists()
    left = {p.name for p in where.iterdir()}
    assert {"summary.json", "batches.parquet", "calibration.json"} <= left
    made_records = {"requests.parquet", "server_requests.parquet", "schedule.parquet", "client"}
    assert made_records <= set(rve.RECORDS)
    assert (left & made_records) == (set() if keep == "batches" else made_records)


def test_the_h100_shares_past_capacity_with_the_profile_beside_siblings_at_1_16_128_are_within_5_percent():
    # Committed: one H100 as four 25% shares at 1.5 x eager's capacity, five systems, three seeds each, all made
    # with the share's profile measured beside siblings at 1, 16 and 128. A second emulated run of Clockwork's
    # seed 2 (kept as `.repeat`, 6,269.5 against 6,253.0 req/s) is not a seed of its own: the table reads the
    # named pairs only. Clockwork's emulation is the farthest (1.045, its seed 2 1.092). The sim twins charge each
    # GPU run's own delays, spread and slot turnaround (Clockwork's 0.952 before the turnaround, 0.981 with it),
    # four twins a run (each its own runtime seed over the run's arrivals): Clockwork's 0.965 over their mean.
    out = ROOT / "results" / "reference" / "h100-shares-sibling-profile"
    t = rve.table(out).set_index("system")
    assert sorted(t.index) == ["clockwork", "eager", "nexus", "shepherd", "symphony"] and (t["seeds"] == 3).all()
    assert (t["within 5%"] == "yes").all() and (t["sim within 5%"] == "yes").all(), t
    assert (t["sim twins"] == 12).all(), t
    assert t["real / emulated"].between(0.99, 1.05).all() and t["real / sim"].between(0.96, 1.02).all(), t
    runs = out / "mps25x4" / "overload"
    emulated = [json.loads((runs / f"clockwork-seed{s}-emulated" / "summary.json").read_text())["goodput"]
                for s in (0, 1, 2)]
    assert t.loc["clockwork", "emulated goodput"] == pytest.approx(sum(emulated) / 3)
