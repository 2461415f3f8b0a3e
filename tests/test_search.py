"""Capacity and fewest-GPU searches: known answers on synthetic curves, and one tiny real search in the sim."""

import json

import pytest

from harness import search
from harness.errors import HarnessError
from harness.search import Probe, ProbeStopped, find_capacity, find_fewest_gpus


def curve(capacity: float):
    """A monotone system: every probe at or below `capacity` passes, above it fails."""
    calls = []

    def probe(value):
        calls.append(value)
        return Probe(value, 1.0 if value <= capacity else 0.9)

    probe.calls = calls
    return probe


@pytest.mark.parametrize("start", [100.0, 12345.0, 1e6])
def test_capacity_brackets_the_known_answer_within_tolerance(start):
    result = find_capacity(curve(12345.0), start, tolerance=0.02, max_rate=1e7)
    assert result["status"] == "found"
    assert result["answer"] <= 12345.0 < result["failed_at"] <= result["answer"] * 1.02
    assert all(p["passed"] == (p["value"] <= 12345.0) for p in result["probes"])
    assert len(result["probes"]) <= 20


def test_capacity_doubles_first_then_bisects():
    probe = curve(3000.0)
    find_capacity(probe, 1000.0, tolerance=0.1)
    assert probe.calls[:3] == [1000.0, 2000.0, 4000.0]      # doubling until a failure
    assert probe.calls[3] == 3000.0                          # then the middle of [2000, 4000]


def test_capacity_bounds_and_limits():
    assert find_capacity(curve(1e12), 1000.0, max_rate=10_000)["status"] == "lower_bound"
    assert max(p["value"] for p in find_capacity(curve(1e12), 1000.0)["probes"]) == 64_000    # default reach
    nothing = find_capacity(curve(0.0), 1000.0)
    assert nothing["status"] == "none_passed" and nothing["answer"] is None
    limited = find_capacity(curve(12345.0), 100.0, tolerance=1e-9, max_probes=8, max_rate=1e6)
    assert limited["status"] == "probe_limit" and len(limited["probes"]) == 8


@pytest.mark.parametrize("start", [1, 4, 37, 64, 100])
def test_fewest_gpus_finds_the_known_count_from_any_start(start):
    result = find_fewest_gpus(lambda n: Probe(n, 0.995 if n >= 37 else 0.5), start, max_gpus=1024)
    assert (result["status"], result["answer"], result["failed_at"]) == ("found", 37, 36)
    assert len(result["probes"]) <= 12


def test_fewest_gpus_edges():
    one = find_fewest_gpus(lambda n: Probe(n, 1.0), 8)
    assert (one["status"], one["answer"]) == ("found", 1)
    never = find_fewest_gpus(lambda n: Probe(n, 0.5), 4, max_gpus=50)
    assert never["status"] == "none_passed" and [p["value"] for p in never["probes"]] == [4, 8, 16, 32, 50]
    assert find_fewest_gpus(lambda n: Probe(n, 0.5), 4)["probes"][-1]["value"] == 64           # default reach


def test_a_probe_that_is_no_verdict_stops_the_search_with_what_was_found():
    def interrupted_at_4000(value):
        if value >= 4000:
            raise ProbeStopped("interrupted", value, "interrupted; its records are kept", "probes/02_rate=4000")
        return Probe(value, 1.0)

    result = find_capacity(interrupted_at_4000, 1000.0)
    assert (result["status"], result["answer"], result["failed_at"]) == ("interrupted", 2000.0, None)
    assert [p["value"] for p in result["probes"]] == [1000.0, 2000.0]             # not counted as a failure
    assert result["stopped_at"] == {"value": 4000.0, "reason": "interrupted; its records are kept",
                                    "run": "probes/02_rate=4000"}

    def broken_at_2(n):
        if n == 2:
            raise ProbeStopped("broken", n, "the scheduler process was killed by signal 9 during the run")
        return Probe(n, 1.0 if n >= 4 else 0.5)

    result = find_fewest_gpus(broken_at_2, 8)
    assert (result["status"], result["answer"]) == ("broken", 4)
    assert [p["value"] for p in result["probes"]] == [8, 4] and result["stopped_at"]["value"] == 2


def test_a_probe_whose_run_broke_or_was_cut_short_is_no_verdict(monkeypatch, tmp_path):
    from harness import run

    def summary(*reasons, interrupted=False, broke=False):
        # As harness.metrics.validity writes it: what broke is both a reason and a failure.
        return {"slo_attainment": 0.1, "goodput": 1.0, "offered_rate": 10.0,
                "validity": {"valid": not reasons, "reasons": list(reasons), "interrupted": interrupted,
                             "failures": list(reasons) if broke else []}}

    outcomes = iter([summary("worker(s) lost during the run: slots [1]"),          # complete: a verdict
                     summary("the scheduler process was killed by signal 9 during the run", broke=True),
                     summary("run interrupted before the end", interrupted=True)])
    monkeypatch.setattr(search, "compose", lambda overrides: None)
    monkeypatch.setattr(run, "execute", lambda cfg, run_dir, overrides: next(outcomes))
    probe = search.real_probe("capacity", [], tmp_path, "workload.rate")
    assert probe(100.0).attainment == 0.1
    for status in ("broken", "interrupted"):
        with pytest.raises(ProbeStopped) as stop:
            probe(100.0)
        assert stop.value.status == status and stop.value.run.startswith("probes/")

    def cut_short(cfg, run_dir, overrides):
        (run_dir / "schedule.parquet").parent.mkdir(parents=True)
        (run_dir / "schedule.parquet").write_text("half a sim run")
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "execute", cut_short)
    with pytest.raises(ProbeStopped) as stop:
        search.real_probe("capacity", [], tmp_path / "again", "workload.rate")(200.0)
    assert stop.value.status == "interrupted" and stop.value.run is None
    assert not (tmp_path / "again" / "probes" / "00_rate=200").exists()          # a cut-short sim run is removed


@pytest.mark.parametrize("status, code", [("interrupted", 130), ("broken", 3), ("error", 1), ("found", 0)])
def test_exit_status_says_how_the_search_ended(monkeypatch, tmp_path, status, code):
    ended = {"kind": "capacity", "status": status, "answer": None, "probes": [], "overrides": [],
             "knob": "workload.rate"}
    if status in ("interrupted", "broken"):
        ended["stopped_at"] = {"value": 100.0, "reason": "why", "run": None}
    monkeypatch.setattr(search, "search_all", lambda *args, **kwargs: [ended])
    assert search.main(["capacity", "--out", str(tmp_path)]) == code


def test_overrides_that_would_change_nothing_are_refused():
    assert search.hydra_overrides(["workload.mix={resnet50: 3}", "models=vision", "+workload.mix.bert=1"]) == \
        ["+workload.mix={resnet50: 3}", "models=vision", "+workload.mix.bert=1"]
    for empty in ("models={}", "workload.mix={ }", "++apps={}"):
        with pytest.raises(HarnessError, match="would change nothing"):
            search.hydra_overrides([empty])


def test_sweep_overrides_expand_to_one_search_each():
    combos = search.expand(["system=eager,symphony", "cluster=h200x1", "hydra.run.dir=x"])
    assert [values for _, values in combos] == [{"system": "eager"}, {"system": "symphony"}]
    assert all("cluster=h200x1" in overrides and not any(o.startswith("hydra") for o in overrides)
               for overrides, _ in combos)


def test_real_fewest_gpu_search_in_sim(tmp_path):
    # Eager serves about 8,000 req/s of the vision mix per emulated H200: 12,000 req/s needs 2.
    rc = search.main(["fewest_gpus", "runtime=sim", "system=eager", "cluster=h200x1", "workload=poisson",
                      "workload.rate=12000", "duration_s=12", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "search.json").read_text())
    assert (result["status"], result["answer"], result["knob"]) == ("found", 2, "cluster.count")
    assert [(p["value"], p["passed"]) for p in result["probes"]] == [(1, False), (2, True)]
    for p in result["probes"]:
        summary = json.loads((tmp_path / p["run"] / "summary.json").read_text())
        assert summary["gpus_total"] == p["value"] and summary["slo_attainment"] == p["attainment"]
    assert (tmp_path / "search_path.png").stat().st_size > 1000


def test_bad_override_is_one_line_error(tmp_path, capsys):
    assert search.main(["capacity", "system=no_such_system", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("argv, says", [
    (["capacity", "--target", "2"], "--target 2 is no SLO attainment"),
    (["capacity", "--target", "nan"], "--target nan"),
    (["fewest_gpus", "--target", "0"], "--target 0"),
    (["capacity", "--max-probes", "0"], "--max-probes 0"),
    (["capacity", "--max-probes", "-1"], "--max-probes -1"),
    (["capacity", "--start", "0"], "--start 0 is not a number > 0 (leave --start out"),
    (["capacity", "--start", "nan"], "--start nan"),
    (["capacity", "--tolerance", "nan"], "--tolerance nan"),
    (["capacity", "--max-rate", "-1"], "--max-rate -1"),
    (["capacity", "--start", "100", "--max-rate", "1"], "--start 100 is above --max-rate 1"),
    (["fewest_gpus", "--start", "0"], "--start 0 is not a whole GPU count"),
    (["fewest_gpus", "--start", "2.5"], "--start 2.5 is not a whole GPU count"),
    (["fewest_gpus", "--max-gpus", "0"], "--max-gpus 0"),
    (["fewest_gpus", "--start", "8", "--max-gpus", "4"], "--start 8 is above --max-gpus 4"),
    (["capacity", "--max-gpus", "4"], "--max-gpus does not apply to a capacity search"),
    (["fewest_gpus", "--max-rate", "100"], "--max-rate does not apply to a fewest_gpus search"),
    (["fewest_gpus", "--tolerance", "0.1"], "--tolerance does not apply"),
    (["capacity", "--jobs", "0"], "--jobs 0"),
])
def test_options_that_make_no_search_are_refused_before_any_probe(argv, says, monkeypatch, tmp_path, capsys):
    from harness import run

    monkeypatch.setattr(run, "execute", lambda *args: pytest.fail("a probe ran"))
    out = tmp_path / "search"
    assert search.main([*argv, "runtime=sim", "system=eager", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not out.exists()                                                   # refused before anything was made


def test_a_start_above_the_cap_is_refused_where_the_config_gives_it():
    with pytest.raises(HarnessError, match="above its highest rate"):
        find_capacity(curve(1e6), 100.0, max_rate=1.0)                        # was "100 req/s (lower_bound)"
    with pytest.raises(HarnessError, match="whole GPU count"):
        find_fewest_gpus(lambda n: Probe(n, 1.0), 2.5)


def test_a_trace_capacity_is_a_rate_scale_with_the_rate_it_offered(monkeypatch, tmp_path, capsys):
    # A trace's search varies workload.rate_scale, a multiplier: its answer is no req/s, the rate offered at it is.
    result = find_capacity(lambda s: Probe(s, 1.0 if s <= 2 else 0.5, offered_rate=1253.0 * s), 1.0, max_rate=2.0)
    assert (result["answer"], result["answer_offered_rate"]) == (2.0, 2506.0)
    result.update(knob="workload.rate_scale", overrides=[])
    assert search.describe_answer(result) == "rate_scale 2 (2,506 req/s offered)"
    assert search.describe_answer({**result, "knob": "workload.rate"}) == "2 req/s"
    monkeypatch.setattr(search, "search_all", lambda *args, **kwargs: [result])
    assert search.main(["capacity", "workload=maf_trace", "--out", str(tmp_path)]) == 0
    assert "capacity rate_scale 2 (2,506 req/s offered)" in capsys.readouterr().out
