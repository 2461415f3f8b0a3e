"""The real tritonserver (the binary in the nvidia-pytriton wheel) batching dynamically, driven by the harness's
Locust replay, each batch handed to forward by the model every instance runs."""

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import venv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from harness import load
from harness.errors import HarnessError
from harness.live import triton
from harness.live.triton import server as triton_server
from harness.live.triton import stub_env as stub_environment
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
NOT_STARTED = r"tritonserver (exited with code \d+ while starting|did not start): "   # as the log shows it first


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
    """The Python backend's shared-memory regions of servers started by this process (they are named so)."""
    return list(Path("/dev/shm").glob(f"harness-triton-{os.getpid()}-*"))


def test_dynamic_batching_of_concurrent_requests(tmp_path):
    forward = SleepModel()
    n = 100
    pd.DataFrame({"id": np.arange(n), "model": ["a", "b"] * (n // 2),
                  "t_sched": np.linspace(0.0, 0.01, n)}).to_parquet(tmp_path / "schedule.parquet", index=False)
    with triton.start_triton({"a": {}, "b": {}}, CONFIG, forward) as server:
        assert started_under(server.workspace).count("\n") >= 3      # tritonserver and a stub per model
        # Nothing but tritonserver and its stubs: no process of a proxy between them and forward.
        tritonserver = next(psutil.Process(pid) for pid in triton.processes_under(str(server.workspace))
                            if psutil.Process(pid).name() == "tritonserver")
        assert {Path(p.cmdline()[0]).name for p in tritonserver.children(recursive=True)} == \
            {"triton_python_backend_stub"}
        # Triton's answer is the harness frontend's JSON (plus model_version), so one client reads both.
        req = urllib.request.Request(f"{server.url}/v2/models/a/infer", data=json.dumps(infer_request(7)).encode())
        with urllib.request.urlopen(req, timeout=30) as answer:
            assert json.loads(answer.read()) == {**infer_response("a", "7", 0, 0), "model_version": "1"}
        req = urllib.request.Request(f"{server.url}/v2/models/b/infer",
                                     data=json.dumps(infer_request(8, value=5)).encode())
        with urllib.request.urlopen(req, timeout=30) as answer:       # y echoes x
            assert json.loads(answer.read()) == {**infer_response("b", "8", 5, 1), "model_version": "1"}
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
    (broken / stub_environment.MARKER).write_text(json.dumps({"python": platform.python_version()}))
    monkeypatch.setenv(triton.STUB_ENV_VAR, str(broken))
    monkeypatch.setattr(stub_environment, "stub_env_needed", lambda: True)
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match=NOT_STARTED + r"the Python backend stub cannot import numpy; remake its "
                                                         r"environment"):
        triton.start_triton({"a": {}}, CONFIG, SleepModel())
    assert time.monotonic() - t0 < 60                  # not a long wait for a server that has given up
    assert started_under(tmp_path) == "" and shared_memory_left() == []


def test_config_problems_are_named():
    with pytest.raises(HarnessError, match="preferred_batch_size"):
        triton.start_triton({"a": {}}, {"max_batch_size": 8, "preferred_batch_size": [16]}, SleepModel())
    with pytest.raises(HarnessError, match="no batch size limit"):
        triton.start_triton({"a": {}}, {}, SleepModel())
    with pytest.raises(HarnessError, match="timeout_action"):
        triton.start_triton({"a": {}}, {"max_batch_size": 8, "timeout_action": "DROP"}, SleepModel())


def test_a_server_that_cannot_load_its_libraries_is_named(tmp_path, monkeypatch):
    # tritonserver dies at once, and the start ends at once with the cause.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(triton_server, "_server_env_hook", lambda env, dist, stub: dict(env, LD_LIBRARY_PATH=""))
    with pytest.raises(HarnessError, match=NOT_STARTED + r"tritonserver cannot load libcudart\S*; add the directory "
                                                         r"holding it to LD_LIBRARY_PATH"):
        triton.start_triton({"a": {}}, CONFIG, SleepModel())
    assert started_under(tmp_path) == "" and shared_memory_left() == []


def test_a_failed_start_does_not_hold_up_the_interpreter_exit(tmp_path):
    # Nothing a failed start leaves behind (a thread, a process) may hold up the exit: the harness would
    # print the error, then hang.
    script = ("from harness.errors import HarnessError\n"
              "from harness.live import triton\n"
              "from harness.live.triton import server\n"
              "server._server_env_hook = lambda env, dist, stub: dict(env, LD_LIBRARY_PATH='')\n"
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


def test_setup_hands_its_package_sources_to_pip(tmp_path, monkeypatch, capsys):
    # `setup --no-index --find-links DIR` is the documented offline setup.
    from harness.live.triton.__main__ import main
    monkeypatch.setattr("harness.live.triton.__main__.stub_env_needed", lambda: True)
    monkeypatch.setenv(triton.STUB_ENV_VAR, str(tmp_path / "stub"))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    assert main(["setup", "--no-index", "--find-links", str(wheels)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: pip could not install") and err.count("\n") == 1


@pytest.mark.parametrize("needed", [True, False])
def test_setup_refuses_a_wrong_option_even_with_nothing_to_set_up(tmp_path, monkeypatch, capsys, needed):
    # Before, every option went to pip, which never ran when the environment was there: `--bogus` said ready.
    from harness.live.triton.__main__ import main
    monkeypatch.setattr("harness.live.triton.__main__.stub_env_needed", lambda: needed)
    monkeypatch.setattr("harness.live.triton.__main__.setup_stub_env", lambda sources: tmp_path)   # "there already"
    for argv, named in [(["setup", "--bogus"], "--bogus"),
                        (["setup", "--find-links", str(tmp_path / "none")], "no such directory"),
                        (["setup", "--no-index"], "--no-index needs --find-links")]:
        try:
            code = main(argv)
        except SystemExit as exit:       # a flag argparse refuses
            code = exit.code
        assert code == 2
        err = capsys.readouterr().err
        assert named in err and err.count("\n") == 1 and "Traceback" not in err and "ready" not in err
    assert main(["setup", "--no-index", "--find-links", str(tmp_path)]) == 0


def send_at_once(url: str, n: int, threads: int) -> list[int]:
    """The HTTP status of each of n requests to model a, sent from `threads` threads at once."""
    def one(_) -> int:
        req = urllib.request.Request(f"{url}/v2/models/a/infer", data=json.dumps(infer_request(1)).encode())
        try:
            with urllib.request.urlopen(req, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as err:
            return err.code

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(n)))


def test_what_forward_raises_answers_the_batch_and_the_next_batches_are_served():
    calls = []

    def forward(model: str, size: int) -> int:
        calls.append(size)
        if len(calls) == 1:
            raise RuntimeError("the worker is gone")
        return len(calls)

    body = json.dumps(infer_request(1)).encode()
    with triton.start_triton({"a": {"max_batch_size": 4}}, {}, forward) as server:
        url = f"{server.url}/v2/models/a/infer"
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30)
        assert failed.value.code == 500
        assert "RuntimeError: the worker is gone" in json.loads(failed.value.read())["error"]
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as answer:
            assert json.loads(answer.read())["outputs"][1]["data"] == [2]


def test_the_queue_policy_reaches_tritonserver():
    # One instance held for 0.3 s per batch of one, a queue of 2: of 8 requests sent at once, the ones
    # beyond the running batch and the queue are refused by Triton itself.
    def forward(model: str, size: int) -> int:
        time.sleep(0.3)
        return 0

    config = {"max_batch_size": 1, "max_queue_size": 2}
    with triton.start_triton({"a": {}}, config, forward) as server:
        codes = send_at_once(server.url, 8, threads=8)
    assert 1 <= codes.count(200) <= 4 and codes.count(200) + codes.count(503) == 8, codes


def test_a_stub_that_tritonserver_restarts_keeps_its_instance_number(tmp_path):
    # The live runtime ties instance i to a slot: a stub restarted after a crash must come back as a number
    # a connected stub does not hold, within [0, instances), not as a third instance.
    seen, lock = [], threading.Lock()

    def forward(model: str, size: int, instance: int) -> int:
        time.sleep(0.02)                                # long enough that concurrent requests need both
        with lock:
            seen.append(instance)
        return instance

    with triton.start_triton({"a": {}}, {"max_batch_size": 1}, forward, instances=2) as server:
        tritonserver = next(psutil.Process(pid) for pid in triton.processes_under(str(server.workspace))
                            if psutil.Process(pid).name() == "tritonserver")
        first, second = tritonserver.children()
        second.kill()                                 # tritonserver reaps it when it next needs it
        send_at_once(server.url, 60, threads=4)       # the dead stub's first batch fails; Triton restarts it
        deadline = time.monotonic() + 30
        while "will be restarted" not in server.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        seen.clear()
        codes = send_at_once(server.url, 60, threads=4)
    assert codes.count(200) == len(codes)
    assert set(seen) == {0, 1}


def test_each_model_can_have_its_own_instance_count(tmp_path):
    # The live runtime gives a model an instance per slot holding it: models on fewer slots, fewer instances.
    seen, lock = {}, threading.Lock()

    def forward(model: str, size: int, instance: int) -> int:
        time.sleep(0.05)
        with lock:
            seen.setdefault(model, set()).add(instance)
        return instance

    n = 48
    pd.DataFrame({"id": np.arange(n), "model": ["a", "b"] * (n // 2), "t_sched": np.linspace(0.0, 0.02, n)}
                 ).to_parquet(tmp_path / "schedule.parquet", index=False)
    with triton.start_triton({"a": {}, "b": {}}, {"max_batch_size": 2}, forward, instances={"a": 1, "b": 3}) as server:
        client = load.replay(tmp_path / "schedule.parquet", server.url, time.time() + 2.5, tmp_path / "client")
    assert (client["status"] == "ok").all()
    assert seen == {"a": {0}, "b": {0, 1, 2}}
    with pytest.raises(HarnessError, match=r"every model needs at least one instance \(got \{'b': 0\}\)"):
        triton.start_triton({"a": {}, "b": {}}, {"max_batch_size": 2}, forward, instances={"a": 1})
