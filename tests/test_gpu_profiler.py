"""The profile file the profiler writes, from fake measurements (no GPU needed)."""

import json

import pytest

from harness.errors import HarnessError
from harness.gpu.partitions import parse_partition
from harness.gpu.profiler import (_child_command, main, output_path, parse_args, profile_document, summarize_ms,
                                   write_profile)
from harness.profiles import load_profile


def fake_measurements():
    return {model: {b: summarize_ms([base * (1 + 0.1 * b)] * 9 + [base * (1 + 0.1 * b) * 1.5])
                    for b in (1, 2, 4, 8)}
            for model, base in (("resnet50", 1.0), ("vit_b_16", 0.7))}


def test_summary_of_replay_times():
    s = summarize_ms([1.0, 1.0, 1.0, 3.0])
    assert s["mean_ms"] == pytest.approx(1.5)
    assert s["median_ms"] == pytest.approx(1.0)
    assert s["std_ms"] == pytest.approx(0.8660254)
    assert 2.9 < s["p99_ms"] <= 3.0
    for bad in ([], [1.0, 0.0], [float("nan")]):
        with pytest.raises(HarnessError):
            summarize_ms(bad)


@pytest.mark.parametrize("partition", ["whole", "mps50", "mig-1g.10gb-emulated"])
def test_profile_round_trips_through_load_profile(tmp_path, partition):
    part = parse_partition(partition)
    prov = {"gpu_name": "NVIDIA H100 80GB HBM3", "driver": "580.159.04", "partition": partition,
            "emulated_partition": part.emulated, "mps_percentage": part.mps_percentage}
    doc = profile_document("h100", part, prov, fake_measurements())
    path = output_path(str(tmp_path / "{gpu_type}" / "{partition}.json"), "h100", partition)
    write_profile(path, doc)
    assert path == tmp_path / "h100" / f"{partition}.json"

    profile = load_profile(path)
    assert (profile.gpu_type, profile.partition) == ("h100", partition)
    assert profile.emulated_partition == part.emulated
    assert profile.provenance["driver"] == "580.159.04"
    curve = profile.curves["resnet50"]
    assert curve.max_batch == 8
    expected_mean = (1 + 0.1 * 4) * 1.05           # nine at x, one at 1.5x
    assert curve.mean[4] == pytest.approx(expected_mean / 1000, rel=1e-3)
    assert curve.p99[4] > curve.mean[4] > 0 and curve.std[4] > 0
    assert curve.mean[3] == curve.mean[4]          # a batch of 3 runs padded on the graph of 4
    raw = json.loads(path.read_text())["models"]["vit_b_16"]
    assert raw["batch"] == [1, 2, 4, 8] and len(raw["median_ms"]) == 4


def test_arguments_are_checked():
    args = parse_args(["--models", "resnet50,densenet121", "--batch", "8,1,2", "--partition", "whole"])
    assert args.models == ["resnet50", "densenet121"] and args.batch == [1, 2, 8]
    with pytest.raises(HarnessError, match="include 1"):
        parse_args(["--batch", "2,4"])
    with pytest.raises(HarnessError, match="unknown models"):
        parse_args(["--models", "resnet18"])


def test_several_partitions_need_a_partition_placeholder(capsys):
    assert main(["--partition", "whole,mps50", "--out", "x.json"]) == 2
    assert "{partition}" in capsys.readouterr().err


def test_in_process_refuses_an_mps_partition_outside_mps(monkeypatch, capsys):
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
    assert main(["--in-process", "--partition", "mps50", "--models", "resnet50", "--batch", "1"]) == 2
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50" in capsys.readouterr().err



def test_a_share_measured_beside_busy_siblings_keeps_its_alone_means(tmp_path):
    part = parse_partition("mps25")
    busy = fake_measurements()
    alone = profile_document("h100", part, {}, {m: {b: summarize_ms([v["mean_ms"] / 2] * 3) for b, v in per.items()}
                                                for m, per in busy.items()})
    doc = profile_document("h100", part, {"siblings_busy": 3}, busy, alone)
    raw = doc["models"]["resnet50"]
    assert raw["alone_mean_ms"] == [round(m / 2, 4) for m in raw["mean_ms"]]
    write_profile(tmp_path / "mps25.json", doc)
    curve = load_profile(tmp_path / "mps25.json").curves["resnet50"]
    assert curve.mean[4] == pytest.approx(raw["mean_ms"][2] / 1000)       # policies and emulation: beside busy
    alone["models"]["resnet50"]["batch"] = [1, 2]
    with pytest.raises(HarnessError, match="alone profile of resnet50"):
        profile_document("h100", part, {}, busy, alone)


def test_a_share_measured_beside_siblings_at_several_batches_keeps_each_ones_means(tmp_path):
    part = parse_partition("mps25")
    busy = fake_measurements()
    scaled = lambda k: {m: {b: summarize_ms([v["mean_ms"] * k] * 3) for b, v in per.items()}  # noqa: E731
                        for m, per in busy.items()}
    alone = profile_document("h100", part, {}, scaled(0.5))
    heavy = profile_document("h100", part, {}, scaled(1.5))
    doc = profile_document("h100", part, {"siblings_busy": 3}, busy, alone, beside={128: heavy}, sibling_batch=16)
    raw = doc["models"]["resnet50"]
    assert list(raw["beside_ms"]) == ["16", "128"] and raw["beside_ms"]["16"] == raw["mean_ms"]
    assert raw["beside_ms"]["128"] == heavy["models"]["resnet50"]["mean_ms"]
    write_profile(tmp_path / "mps25.json", doc)
    curve = load_profile(tmp_path / "mps25.json").curves["resnet50"]
    assert [size for size, _ in curve.siblings] == [16, 128]
    assert curve.beside(4, 1.0, 128) == pytest.approx(heavy["models"]["resnet50"]["mean_ms"][2] / 1000)
    heavy["models"]["resnet50"]["batch"] = [1, 2]
    with pytest.raises(HarnessError, match="beside siblings at batch 128"):
        profile_document("h100", part, {}, busy, alone, beside={128: heavy}, sibling_batch=16)


def test_several_sibling_batches_reach_the_child_that_writes_the_profile(tmp_path):
    args = parse_args(["--partition", "mps25", "--sibling-batch", "16,128,1", "--models", "resnet50"])
    assert args.sibling_batches == [16, 128, 1] and args.sibling_batch == 16
    for bad in ("0", "16,16", "x", ","):
        with pytest.raises(HarnessError, match="--sibling-batch"):
            parse_args(["--sibling-batch", bad])
    command = _child_command(parse_partition("mps25"), args, 3, "out.json", "alone.json", 16,
                             {128: "b128.json", 1: "b1.json"})
    child = parse_args(command[command.index("--in-process"):])
    assert child.sibling_batch == 16 and child.beside_profile == {128: "b128.json", 1: "b1.json"}
    assert child.alone_profile == "alone.json" and child.siblings_busy == 3


def test_a_set_of_busy_siblings_that_fails_to_start_is_ended_and_started_again(tmp_path, monkeypatch, capsys):
    # Real processes: each stands in for a sibling share that fails (exits) on the first try, as one did when
    # the GPU was busy or unavailable, and on the second replays (waits) once it has touched its ready file.
    import sys

    from harness.gpu import profiler

    script = ("import pathlib, sys, time; r = pathlib.Path(sys.argv[1]); "
              "sys.exit(1) if r.name.split('-')[2] == '1' else (r.touch(), time.sleep(60))")
    monkeypatch.setattr(profiler, "_sibling_command", lambda p, a, ready, b: [sys.executable, "-c", script, str(ready)])
    monkeypatch.setattr(profiler, "SIBLING_RETRY_S", 0.0)
    part = parse_partition("mps25")
    siblings = profiler._start_siblings(part, None, {}, 3, tmp_path, 16)
    try:
        assert len(siblings) == 3 and all(s.poll() is None for s in siblings)
        assert "did not start; trying again" in capsys.readouterr().out
    finally:
        for s in siblings:
            profiler._end(s)
    assert all(s.returncode is not None for s in siblings)          # ended, each
    # Failing every time: one line saying how many tries it made.
    monkeypatch.setattr(profiler, "_sibling_command", lambda p, a, r, b: [sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(HarnessError, match=rf"did not start \({profiler.SIBLING_TRIES} tries\)"):
        profiler._start_siblings(part, None, {}, 3, tmp_path, 16)
