"""The real tritonserver (from the nvidia-pytriton wheel) batching dynamically, driven by the harness's Locust replay."""

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import venv
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from harness import load
from harness.errors import HarnessError
from harness.live import triton
from harness.live.protocol import infer_request, infer_response

pytest.importorskip("pytriton", reason="nvidia-pytriton is not installed (pip install nvidia-pytriton==0.5.7)")


@pytest.fixture(scope="module", autouse=True)
def stub_env():
    """With numpy 2 the Python backend stub needs its numpy<2 environment (made once, then reused)."""
    if triton.stub_env_needed():
        try:
            triton.setup_stub_env()
        except HarnessError as exc:      # only where no numpy 1.x can be had at all
            pytest.skip(f"tritonserver cannot run here: {exc}")


CONFIG = {"max_batch_size": 16, "max_queue_delay_microseconds": 2000}


class SleepModel:
    """forward(): sleeps l(b) = 1.082 ms * b + 5.204 ms (Symphony's sleep model) and records each batch."""

    def __init__(self):
        self.lock = threading.Lock()
        self.batches: list[tuple[str, int]] = []

    def __call__(self, model: str, size: int) -> int:
        time.sleep((1.082 * size + 5.204) / 1000)
        with self.lock:
            self.batches.append((model, size))
            return len(self.batches) - 1


def started_under(path) -> str:
    """The processes whose command line names `path` (pgrep -af), one a line."""
    return subprocess.run(["pgrep", "-af", str(path)], capture_output=True, text=True).stdout


def shared_memory_left() -> list[Path]:
    """The Python backend's shared-memory regions of servers started by this process (pytriton names them so)."""
    return list(Path("/dev/shm").glob(f"pytrtion{os.getpid()}-*"))


def test_dynamic_batching_of_concurrent_requests(tmp_path):
    forward = SleepModel()
    n = 100
    pd.DataFrame({"id": np.arange(n), "model": ["a", "b"] * (n // 2),
                  "t_sched": np.linspace(0.0, 0.01, n)}).to_parquet(tmp_path / "schedule.parquet", index=False)
    with triton.start_triton({"a": {}, "b": {}}, CONFIG, forward) as server:
        assert started_under(server.workspace).count("\n") >= 3      # tritonserver and a stub per model
        # Tensors cross inline: pytriton's shared-memory tensor store would add a process per model.
        tritonserver = next(psutil.Process(pid) for pid in triton.processes_under(str(server.workspace))
                            if psutil.Process(pid).name() == "tritonserver")
        assert {Path(p.cmdline()[0]).name for p in tritonserver.children(recursive=True)} == \
            {"triton_python_backend_stub"}
        # Triton's answer is the harness frontend's JSON (plus model_version), so one client reads both.
        req = urllib.request.Request(f"{server.url}/v2/models/a/infer", data=json.dumps(infer_request(7)).encode())
        with urllib.request.urlopen(req, timeout=30) as answer:
            assert json.loads(answer.read()) == {**infer_response("a", "7", 0, 0), "model_version": "1"}
        before = server.statistics()
        forward.batches.clear()
        client = load.replay(tmp_path / "schedule.parquet", server.url, time.time() + 2.5, tmp_path / "client",
                             timeout_s=10.0)
        stats = server.statistics()
    # Triton's own account matches what the client and forward saw, and its times add up.
    for model in ("a", "b"):
        served = [s for m, s in forward.batches if m == model]
        got, was = stats[model], before[model]
        assert got["requests"] - was["requests"] == (client["model"] == model).sum()
        assert got["batches"] - was["batches"] == len(served)
        assert got["queue_ms"] >= 0 and got["compute_infer_ms"] >= 5.204     # forward sleeps at least that
        assert got["request_ms"] >= got["queue_ms"] + got["compute_infer_ms"]
    assert (client["status"] == "ok").all(), client["reason"].unique()
    assert (client["batch_id"] >= 0).all()
    # Each batch Triton formed was one call of forward, and its requests carry that call's batch id.
    sizes = client.groupby("batch_id").agg(model=("model", "first"), size=("id", "size"), models=("model", "nunique"))
    assert (sizes["models"] == 1).all()
    assert sorted(zip(sizes["model"], sizes["size"])) == sorted(forward.batches)
    assert max(s for _, s in forward.batches) <= CONFIG["max_batch_size"]
    assert n / len(forward.batches) > 4                # dynamic batching happened (one by one would be 1)
    assert started_under(server.workspace) == "" and shared_memory_left() == []
    assert all(triton.bind_error(server.host, p) is None for p in server.ports.values())


def test_a_server_whose_models_cannot_load_is_one_clear_error_at_once(tmp_path, monkeypatch):
    # A stub environment without numpy: tritonserver starts, its models fail to load.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))       # the server's workspace, to look for leftovers
    broken = tmp_path / "stub"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(broken)
    (broken / triton._MARKER).write_text(json.dumps({"python": platform.python_version(),
                                                     "host_paths": triton._host_paths()}))
    monkeypatch.setenv(triton.STUB_ENV_VAR, str(broken))
    monkeypatch.setattr(triton, "stub_env_needed", lambda: True)
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match=r"tritonserver did not start \(.*No module named 'numpy'.*\): the Python "
                                           r"backend stub cannot import numpy; remake its environment"):
        triton.start_triton({"a": {}}, CONFIG, SleepModel())
    assert time.monotonic() - t0 < 60                  # not pytriton's two-minute wait
    assert started_under(tmp_path) == "" and shared_memory_left() == []


def test_config_problems_are_named():
    with pytest.raises(HarnessError, match="preferred_batch_size"):
        triton.start_triton({"a": {}}, {"max_batch_size": 8, "preferred_batch_size": [16]}, SleepModel())
    with pytest.raises(HarnessError, match="no batch size limit"):
        triton.start_triton({"a": {}}, {}, SleepModel())
    with pytest.raises(HarnessError, match="timeout_action"):
        triton.start_triton({"a": {}}, {"max_batch_size": 8, "timeout_action": "DROP"}, SleepModel())


def test_a_server_that_cannot_load_its_libraries_is_named(tmp_path, monkeypatch):
    # tritonserver dies at once; pytriton alone would wait two minutes for it.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(triton, "_server_env_hook", lambda env, stub: dict(env, LD_LIBRARY_PATH=""))
    with pytest.raises(HarnessError, match=r"tritonserver exited with code \d+ while starting: tritonserver cannot "
                                           r"load libcudart\S*; add the directory holding it to LD_LIBRARY_PATH"):
        triton.start_triton({"a": {}}, CONFIG, SleepModel())
    assert started_under(tmp_path) == "" and shared_memory_left() == []


def test_a_failed_start_does_not_hold_up_the_interpreter_exit(tmp_path):
    # pytriton's own wait for a ready server lasts two minutes, also after the server has exited, and
    # holds the lock its exit hook needs: the harness would print the error, then hang.
    script = ("from harness.errors import HarnessError\n"
              "from harness.live import triton\n"
              "triton._server_env_hook = lambda env, stub: dict(env, LD_LIBRARY_PATH='')\n"
              "try:\n"
              "    triton.start_triton({'a': {}}, {'max_batch_size': 4}, lambda model, size: 0)\n"
              "except HarnessError as exc:\n"
              "    print('failed:', exc)\n")
    env = dict(os.environ, TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and "cannot load libcudart" in done.stdout, done.stdout + done.stderr
    assert started_under(tmp_path) == ""


def serve_on_two_instances(tmp_path) -> set[int]:
    """The instances that ran batches, with instances=2 as the live runtime binds them to slots."""
    seen, lock = set(), threading.Lock()

    def forward(model: str, size: int, instance: int) -> int:
        time.sleep(0.05)                               # long enough that the batches overlap
        with lock:
            seen.add(instance)
        return instance

    n = 32
    pd.DataFrame({"id": np.arange(n), "model": "a", "t_sched": np.linspace(0.0, 0.02, n)}).to_parquet(
        tmp_path / "schedule.parquet", index=False)
    with triton.start_triton({"a": {}}, {"max_batch_size": 4}, forward, instances=2) as server:
        client = load.replay(tmp_path / "schedule.parquet", server.url, time.time() + 2.5, tmp_path / "client")
    assert (client["status"] == "ok").all() and set(client["batch_id"]) == seen
    return seen


def test_each_instance_tells_forward_who_it_is(tmp_path):
    assert serve_on_two_instances(tmp_path) == {0, 1}


def test_instances_that_lose_the_start_up_handshake_race_load_again(tmp_path, monkeypatch):
    # PyTriton's non-first instances fetch their config from the first one's socket while tritonserver
    # initialises them in parallel. A socket that is bound and not listening is what they meet when
    # they win that race on a loaded host; left in the workspace, it makes them lose it every time.
    build = triton.TritonHandle._build

    def build_with_a_deaf_handshake_socket(self):
        server = build(self)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as deaf:
            deaf.bind(str(self.workspace / "a-config.sock"))
        return server

    monkeypatch.setattr(triton.TritonHandle, "_build", build_with_a_deaf_handshake_socket)
    assert serve_on_two_instances(tmp_path) == {0, 1}


def test_only_the_handshake_race_is_loaded_again():
    race = ("[400] load failed for model 'a': version 1 is at UNAVAILABLE state: Internal: TritonModelException: "
            "Model initialize error: Traceback (most recent call last):\n  File \"model.py\", line 420, in "
            "initialize\nConnectionRefusedError: [Errno 111] Connection refused")
    assert triton.lost_handshake_race(race)
    assert triton.lost_handshake_race(race.replace("ConnectionRefusedError: [Errno 111] Connection refused",
                                                   "TimeoutError: Timeout occurred while waiting for config file x"))
    assert not triton.lost_handshake_race(race.replace("ConnectionRefusedError: [Errno 111] Connection refused",
                                                       "ModuleNotFoundError: No module named 'numpy'"))
    assert not triton.lost_handshake_race("ConnectionRefusedError: [Errno 111] Connection refused")


def test_setup_hands_every_option_after_it_to_pip(tmp_path, monkeypatch, capsys):
    # `setup --no-index --find-links DIR` is the documented offline setup; argparse must not take pip's options.
    monkeypatch.setattr(triton, "stub_env_needed", lambda: True)
    monkeypatch.setenv(triton.STUB_ENV_VAR, str(tmp_path / "stub"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    assert triton.main(["setup", "--no-index", "--find-links", str(wheels)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pip could not install") and err.count("\n") == 1


def test_pytriton_receive_patch_keeps_a_completed_receive_and_still_times_out():
    import asyncio

    from harness.live.triton import _keep_received

    ns: dict = {}
    _keep_received(ns)
    wait_for = ns["asyncio"].wait_for

    async def scenario():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(done.set_result, "msg")
        got = await wait_for(done, 0)            # completes in the iteration where the timeout expires
        never = loop.create_future()
        try:
            await wait_for(never, 0.01)
        except asyncio.TimeoutError:
            return got, never.cancelled()
        return got, "no timeout"

    assert asyncio.run(scenario()) == ("msg", True)
    assert ns["asyncio"].sleep is asyncio.sleep             # the rest of asyncio is untouched
