"""One construction path, two runtimes: the same scenario through the sim and the live runtime.

Each test runs harness.run.execute twice on one config -- runtime=sim and runtime=live (real
scheduler, ingress and worker processes on emulated slots, real HTTP, real Locust) -- and checks
that both tell the same story: request by request for a scripted scenario with a slot lost,
reconfigurations that re-size shares, an app whose requests are a two-task graph, and the
autoscaler growing the cluster from one slot.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from harness.assembly import assemble
from harness.config import AppConfig, FaultConfig, ModelConfig
from harness.run import execute, make_schedule
from harness.search import compose

LIVE = ["runtime.start_lead_s=2", "runtime.drain_s=2", "validity.min_duration_s=1"]


def config(*overrides: str, system: dict | None = None, models: dict | None = None, apps: dict | None = None):
    cfg = compose(["system=eager", "cluster=sleep1000", "models=sleep10", *overrides])
    with open_dict(cfg):
        if system is not None:
            cfg.system = system
        if models is not None:
            cfg.models = {name: OmegaConf.structured(ModelConfig(**m)) for name, m in models.items()}
        if apps is not None:
            cfg.apps = {name: OmegaConf.merge(OmegaConf.structured(AppConfig), app) for name, app in apps.items()}
    return cfg


def both(tmp_path: Path, cfg) -> dict[str, Path]:
    """Run `cfg` in the sim and live; returns each run's directory."""
    dirs = {}
    for runtime in ("sim", "live"):
        run_cfg = cfg.copy()
        with open_dict(run_cfg):
            run_cfg.runtime.name = runtime
            for override in LIVE:
                key, value = override.split("=")
                section, field = key.split(".")
                run_cfg[section][field] = float(value)
        dirs[runtime] = tmp_path / runtime
        execute(run_cfg, dirs[runtime], [])
    return dirs


def table(run: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(run / f"{name}.parquet")


def test_a_scripted_scenario_with_a_slot_lost_ends_the_same_request_by_request(tmp_path):
    # One model, 20 req/s evenly spaced, every batch takes 30 ms, two slots taking arrivals in turn.
    cfg = config("workload=constant", "workload.rate=20", "duration_s=4", "warmup_s=0.5", "cooldown_s=0.5",
                 "cluster.count=2", "cluster.sleep.a_ms=0", "cluster.sleep.c_ms=30",
                 system={"name": "tests.policies:Scripted"}, models={"m0": {"slo_ms": 500}})
    # Slot 1 is lost halfway through the batch of the first request it takes after t = 2 s.
    times = make_schedule(assemble(cfg))["t_sched"].to_numpy()
    k = next(k for k in range(1, len(times), 2) if times[k] > 2.0)
    with open_dict(cfg):
        cfg.runtime.faults = [OmegaConf.structured(FaultConfig(t=float(times[k] + 0.015), slot=1))]
    dirs = both(tmp_path, cfg)
    sim, live = (table(dirs[r], "requests").set_index("id") for r in ("sim", "live"))
    assert len(sim) == len(live) == len(times)
    pd.testing.assert_series_equal(sim["status"], live["status"])
    pd.testing.assert_series_equal(sim["slot"], live["slot"])
    assert sim.loc[k, "status"] == "error" and "slot 1 lost" in sim.loc[k, "reason"]
    assert "slot 1 lost" in live.loc[k, "reason"]
    assert (sim.loc[k + 1:, "slot"] == 0).all() and (sim.drop(index=k)["status"] == "ok").all()
    for run in dirs.values():
        events = table(run, "slot_events")
        assert events[events["event"] == "lost"]["slot"].tolist() == [1]


@pytest.mark.parametrize("preemption", ["finish", "abort"])
def test_a_preempted_batch_holds_its_slot_as_long_in_both_runtimes(tmp_path, preemption):
    # One slot, 10 req/s evenly spaced, every batch 130 ms: the first runs [0, 130] ms and the second
    # arrival, at 100 ms, preempts it. Run to its end (finish, a CUDA graph's lot), it holds the slot
    # until 130 ms; stopped at once (abort), until 100 ms. The re-sent pair starts then, the rest queue.
    cfg = config("workload=constant", "workload.rate=10", "duration_s=1.2", "warmup_s=0.1", "cooldown_s=0.1",
                 "cluster.count=1", "cluster.sleep.a_ms=0", "cluster.sleep.c_ms=130",
                 f"runtime.preemption={preemption}",
                 system={"name": "tests.policies:PreemptSecond"}, models={"m0": {"slo_ms": 3000}})
    dirs = both(tmp_path, cfg)
    sim, live = (table(dirs[r], "batches").sort_values("id").reset_index(drop=True) for r in ("sim", "live"))
    assert sim[["size", "status"]].equals(live[["size", "status"]])
    assert sim["status"].tolist()[:2] == ["preempted", "ok"] and sim["size"].tolist()[:2] == [1, 2]
    held = 0.130 if preemption == "finish" else 0.100
    for run in (sim, live):
        t0 = run["t_start"][0]
        assert run["t_end"][0] - t0 == pytest.approx(held, abs=0.01)
        assert run["t_start"][1] - t0 == pytest.approx(held, abs=0.01)
    for runtime in dirs:
        assert (table(dirs[runtime], "requests")["status"] == "ok").all(), runtime


def test_reconfiguring_shares_mid_run_accounts_for_every_request_in_both_runtimes(tmp_path):
    # Four 25% shares of one device -> two 50% shares at t = 2 s -> four 25% shares at t = 5 s.
    cfg = config("workload=constant", "workload.rate=40", "duration_s=8", "warmup_s=0.5", "cooldown_s=0.5",
                 "cluster.partition=mps25", "cluster.count=4", "cluster.sleep.a_ms=0", "cluster.sleep.c_ms=20",
                 "runtime.slot_start_s=0.5",
                 system={"name": "tests.policies:Reshaper"}, models={"m0": {"slo_ms": 3000}})
    dirs = both(tmp_path, cfg)
    for runtime, run in dirs.items():
        requests, batches = table(run, "requests"), table(run, "batches")
        recs, events, slots = table(run, "reconfigurations"), table(run, "slot_events"), table(run, "slots")
        assert (requests["status"] == "ok").all(), (runtime, requests["status"].value_counts())
        assert recs["after"].tolist() == ["2 x 50% MPS shares of 1 sleep-model GPU",
                                          "4 x 25% MPS shares of 1 sleep-model GPU"], runtime
        assert (recs["cost_s"] > 0).all() and recs["t_done"].notna().all(), runtime
        if runtime == "sim":
            assert recs["cost_s"].tolist() == pytest.approx([0.5 + 0.02, 0.5 + 0.02], abs=0.021)
        # Every batch ran on a slot while it was in the cluster.
        lives = _lifetimes(events)
        for batch in batches.itertuples():
            assert any(a - 1e-9 <= batch.t_dispatch <= b + 1e-9 for a, b in lives[batch.slot]), (runtime, batch)
        # The device is never over-subscribed: shares alive at once add up to at most 100%.
        share = dict(zip(slots["slot"], slots["share"]))
        for t in sorted({t for spans in lives.values() for span in spans for t in span if np.isfinite(t)}):
            in_use = sum(share[s] for s, spans in lives.items() for a, b in spans if a <= t < b)
            assert in_use <= 1.0 + 1e-9, (runtime, t, in_use)
        assert set(slots.loc[slots["partition"] == "mps50", "slot"]) == {4, 5}
        assert set(batches["slot"]) == {0, 1, 2, 3, 4, 5}


def test_a_reconfiguration_that_makes_before_it_breaks_leaves_no_gap_in_both_runtimes(tmp_path):
    # The same reshaping, the new shares started beside the old ones: those serve until the new ones join.
    cfg = config("workload=constant", "workload.rate=40", "duration_s=8", "warmup_s=0.5", "cooldown_s=0.5",
                 "cluster.partition=mps25", "cluster.count=4", "cluster.sleep.a_ms=0", "cluster.sleep.c_ms=20",
                 "runtime.slot_start_s=0.5",
                 system={"name": "tests.policies:Reshaper", "overlap": True}, models={"m0": {"slo_ms": 3000}})
    dirs = both(tmp_path, cfg)
    for runtime, run in dirs.items():
        requests, batches = table(run, "requests"), table(run, "batches")
        recs, events, slots = table(run, "reconfigurations"), table(run, "slot_events"), table(run, "slots")
        assert (requests["status"] == "ok").all(), (runtime, requests["status"].value_counts())
        # No request waited for a share to start: 20 ms batches and the way there and back, nothing queued.
        assert requests["latency"].max() < 0.2, (runtime, requests["latency"].max())
        # Each move left its old shares when its last new one joined, and lists them as left.
        left = events[events["event"] == "left"]
        assert (left["reason"] == "replaced").all() and sorted(left["slot"]) == [0, 1, 2, 3, 4, 5], runtime
        for rec in recs.itertuples():
            gone = left[left["slot"].isin([int(i) for i in rec.left.split(",")])]
            assert len(gone) in (2, 4) and (gone["t"] - rec.t_done).abs().max() < 1e-6, (runtime, rec)
        lives = _lifetimes(events)
        for batch in batches.itertuples():
            assert any(a - 1e-9 <= batch.t_dispatch <= b + 1e-9 for a, b in lives[batch.slot]), (runtime, batch)
        # One GPU provisioned all along, though old and new shares add up to more while the new ones start.
        summary = json.loads((run / "summary.json").read_text())
        assert summary["gpus_provisioned_peak"] == 1.0 and summary["slots_provisioned_peak"] > 4, runtime
        # Live, how long the system under test took to be ready to serve; the sim has no start.
        ready = summary["ready_seconds"]
        assert (0 < ready < summary["wall_seconds"]) if runtime == "live" else ready is None, (runtime, ready)
        # The device is never without shares; it holds more than all of it only from the first new share's
        # join to the last's, when the old ones leave.
        share = dict(zip(slots["slot"], slots["share"]))
        handovers = [(events[(events["event"] == "joined") & events["slot"].isin([int(i) for i in r.joining.split(",")])]
                      ["t"].min(), r.t_done) for r in recs.itertuples()]
        for t in sorted({t for spans in lives.values() for span in spans for t in span if np.isfinite(t)}):
            in_use = sum(share[s] for s, spans in lives.items() for a, b in spans if a <= t < b)
            assert in_use >= 0.5 - 1e-9, (runtime, t, in_use)
            assert in_use <= 1.0 + 1e-9 or any(a - 1e-9 <= t < b for a, b in handovers), (runtime, t, in_use)


def _lifetimes(events: pd.DataFrame) -> dict[int, list[tuple[float, float]]]:
    """slot -> its [joined, left) spans in the run (left inf: still there at the end)."""
    lives: dict[int, list[tuple[float, float]]] = {}
    for row in events.sort_values("t", kind="stable").itertuples():
        spans = lives.setdefault(row.slot, [])
        if row.event == "joined":
            spans.append((row.t, np.inf))
        elif row.event in ("left", "lost") and spans and spans[-1][1] == np.inf:
            spans[-1] = (spans[-1][0], row.t)
    return lives


def test_a_two_task_app_is_served_and_its_tasks_recorded_in_both_runtimes(tmp_path):
    apps = {"pair": {"slo_ms": 500, "nodes": [{"name": "first", "model": "m0"},
                                              {"name": "second", "model": "m1", "after": ["first"]}]}}
    cfg = config("workload=poisson", "workload.rate=30", "duration_s=3", "warmup_s=0.5", "cooldown_s=0.5",
                 "cluster.count=2", apps=apps)
    dirs = both(tmp_path, cfg)
    for runtime, run in dirs.items():
        requests, tasks = table(run, "requests"), table(run, "tasks")
        assert (requests["model"] == "pair").all() and (requests["status"] == "ok").all(), runtime
        assert len(tasks) == 2 * len(requests)
        per = tasks.pivot(index="request_id", columns="node", values=["t_ready", "t_done", "model"])
        assert (per["model"][0] == "m0").all() and (per["model"][1] == "m1").all()
        assert (per["t_ready"][1] >= per["t_done"][0] - 1e-9).all(), runtime
        done = requests.set_index("id")["t_done"]
        # The client hears of a request once its last task is done (live: plus the way back).
        assert (done.loc[per.index] >= per["t_done"][1] - 1e-9).all(), runtime
        assert tasks["slot"].isin([0, 1]).all() and (tasks["status"] == "ok").all()


def test_the_autoscaler_starts_on_one_slot_and_grows_with_the_load_in_both_runtimes(tmp_path):
    cfg = config("workload=poisson", "workload.rate=300", "duration_s=10", "warmup_s=1", "cooldown_s=1",
                 "cluster.count=3", "cluster.sleep.a_ms=0", "cluster.sleep.c_ms=5", "system.max_batch=1",
                 "autoscaler.enabled=true", "autoscaler.initial_slots=1", "autoscaler.scale_up_after_s=1",
                 "autoscaler.scale_up_utilisation=0.6", "runtime.slot_start_s=0.5")
    dirs = both(tmp_path, cfg)
    joined = {}
    for runtime, run in dirs.items():
        summary = json.loads((run / "summary.json").read_text())
        events, batches = table(run, "slot_events"), table(run, "batches")
        joins = events[(events["event"] == "joined") & (events["t"] > 0)]
        assert len(joins) >= 1, runtime                          # it grew
        first = batches.groupby("slot")["t_dispatch"].min()
        for row in joins.itertuples():                           # no slot served before it joined
            assert first.get(row.slot, np.inf) >= row.t - 1e-9, runtime
        assert 1.0 < summary["gpus_provisioned_mean"] < 3.0, (runtime, summary["gpus_provisioned_mean"])
        assert summary["slo_attainment"] > 0.8, (runtime, summary["slo_attainment"])
        joined[runtime] = (len(joins), summary["gpus_provisioned_mean"])
    # The same growth in both: as many slots joined, GPUs provisioned within 10% (a tick may fall either side).
    assert joined["sim"][0] == joined["live"][0]
    assert joined["live"][1] == pytest.approx(joined["sim"][1], rel=0.1)


def test_a_model_run_stage_by_stage_finishes_each_request_after_its_last_stage_in_both_runtimes(tmp_path):
    # Three equal stages of l(b) = 1*b + 9 ms: each request runs 3 batches of 10/3 ms, one after another.
    cfg = config("workload=poisson", "workload.rate=40", "duration_s=3", "warmup_s=0.5", "cooldown_s=0.5",
                 "cluster.count=2", "cluster.sleep.a_ms=1", "cluster.sleep.c_ms=9", "cluster.sleep.stages=3",
                 system={"name": "tests.policies:Staged"})
    dirs = both(tmp_path, cfg)
    for runtime, run in dirs.items():
        requests, batches = table(run, "requests"), table(run, "batches")
        assert (requests["status"] == "ok").all(), runtime
        assert len(batches) == 3 * len(requests) and sorted(batches["stage"].unique()) == [0, 1, 2]
        last = batches[batches["stage"] == 2].set_index("id")
        assert requests["batch_id"].isin(last.index).all(), runtime     # a request is done by its last stage
        per_stage = (batches["t_end"] - batches["t_start"]).to_numpy()
        # Each stage runs its third of l(b); live, one may overrun when the OS preempts its worker.
        assert np.median(per_stage) == pytest.approx(10e-3 / 3, abs=1e-3), runtime
        assert per_stage.min() > 10e-3 / 3 - 1e-3 and np.mean(per_stage > 10e-3 / 3 + 2e-3) < 0.05, runtime


def test_a_chain_of_stages_runs_back_to_back_and_stops_at_the_next_boundary_when_told_in_both_runtimes(tmp_path):
    # Three equal stages of l(b) = 1*b + 9 ms (10/3 ms each at batch 1). Each request runs all three as one
    # chain; one arriving at a busy slot stops the chain there at its next boundary, and the stopped request
    # runs the rest afterwards. At 40 req/s over two slots a few arrive at a busy slot.
    cfg = config("workload=poisson", "workload.rate=40", "duration_s=3", "warmup_s=0.5", "cooldown_s=0.5",
                 "cluster.count=2", "cluster.sleep.a_ms=1", "cluster.sleep.c_ms=9", "cluster.sleep.stages=3",
                 system={"name": "tests.policies:Chained"})
    dirs = both(tmp_path, cfg)
    stage_s = 10e-3 / 3
    for runtime, run in dirs.items():
        requests, batches = table(run, "requests"), table(run, "batches")
        assert (requests["status"] == "ok").all() and (batches["status"] == "ok").all(), runtime
        # Every request ran each stage exactly once, and is done by the batch that ran its last stage.
        for k in range(3):
            assert batches.loc[(batches["stage"] <= k) & (batches["through"] >= k), "size"].sum() == len(requests)
        assert requests["batch_id"].isin(batches.loc[batches["through"] == 2, "id"]).all(), runtime
        cut = batches[(batches["stage"] == 0) & (batches["through"] < 2)]
        assert len(cut) >= 2, runtime                             # some chains were stopped short
        # A batch runs whole stages: its time is that of the stages it ran, stopped or not (live, allow
        # for an OS preemption of the worker now and then).
        stages = (batches["through"] - batches["stage"] + 1).to_numpy()
        per_stage = (batches["t_end"] - batches["t_start"]).to_numpy() / stages
        assert np.median(per_stage) == pytest.approx(stage_s, abs=0.5e-3), runtime
        assert np.mean(np.abs(per_stage - stage_s) > 1e-3) < 0.05, runtime
