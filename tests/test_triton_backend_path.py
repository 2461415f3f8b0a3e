"""The forwarding benchmark runs the harness's tritonserver and prints what a batch's forwarding costs."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install nvidia-pytriton==0.5.7)")

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("triton_backend_path", ROOT / "benchmarks" / "triton_backend_path.py")
tbp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tbp)


def test_the_path_is_measured_on_the_real_server(capsys):
    assert tbp.main(["--requests", "40", "--clients", "2", "--instances", "2", "--forward-ms", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = {line[:16].strip(): [float(v) for v in line[16:].split()] for line in lines[2:]}
    assert set(rows) == {"harness"}
    for rtt, infer, forward, path, mean_batch in rows.values():
        assert forward >= 2.0 and infer > forward and rtt > forward   # Triton holds the batch while forward runs
        assert 0 < path < 100 and mean_batch >= 1


def test_bad_arguments_are_one_line():
    with pytest.raises(SystemExit) as exit:
        tbp.main(["--clients", "0"])
    assert exit.value.code == 2
