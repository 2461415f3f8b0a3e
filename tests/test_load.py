"""Locust's open-loop replay (harness.load) against a real HTTP server in a subprocess.

The server answers by model name, so one short schedule covers every status:
ok (200, batch id = request id + 1000), dropped (503 with the frontend's
prefix, and Triton's own 503 without it), rejected (429), error (500) and
timeout (an answer later than the client's timeout).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import load
from harness.load import records as records_module
from harness.load import runner
from harness.errors import HarnessError

ANSWERS = {   # model -> (HTTP code, error text); "ok" answers 200, "slow" answers after SLOW_S
    "dropped": (503, "dropped: deadline"),
    "queue-full": (503, "[request id: 7] Exceeds maximum queue size"),
    "rejected": (429, "rejected: over capacity"),
    "broken": (500, "boom"),
}
SLOW_S = 3.0
TIMEOUT_S = 1.0


def serve() -> None:
    import asyncio

    from aiohttp import web

    async def infer(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        rid = (await request.json())["id"]
        if model in ANSWERS:
            code, text = ANSWERS[model]
            return web.json_response({"error": text}, status=code)
        if model == "slow":
            await asyncio.sleep(SLOW_S)
        return web.json_response({"model_name": model, "id": rid, "outputs": [
            {"name": "y", "datatype": "INT32", "shape": [1, 1], "data": [0]},
            {"name": "batch_id", "datatype": "INT64", "shape": [1, 1], "data": [int(rid) + 1000]}]})

    async def main():
        app = web.Application()
        app.router.add_post("/v2/models/{model}/infer", infer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=1024).start()
        print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


@pytest.fixture(scope="module")
def server_url():
    proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)))
    try:
        line = proc.stdout.readline()
        yield f"http://127.0.0.1:{json.loads(line)['port']}"
    finally:
        proc.terminate()
        proc.wait(10)


def write_schedule(path: Path, models: list[str], n: int, seconds: float) -> pd.DataFrame:
    t = np.sort(np.random.default_rng(1).uniform(0.0, seconds, n))
    schedule = pd.DataFrame({"id": np.arange(n, dtype=np.int64),
                             "model": [models[i % len(models)] for i in range(n)], "t_sched": t})
    schedule.to_parquet(path, index=False)
    return schedule


def assert_replayed(client: pd.DataFrame, schedule: pd.DataFrame) -> None:
    assert client["id"].tolist() == schedule["id"].tolist()          # every request once, sorted by id
    assert list(client.columns) == load.CLIENT_COLUMNS
    assert (client["model"] == schedule["model"]).all()
    assert np.allclose(client["t_sched"], schedule["t_sched"])
    lag = client["t_sent"] - client["t_sched"]
    assert lag.min() >= -1e-4                                           # never early
    # Open loop: no send waits for an answer. A sender that did would be late by a slow request's timeout
    # (1 s) from the first on; how close to the schedule it keeps is a speed, which
    # benchmarks/load_rate.py measures (a bound here in ms would fail on a loaded machine).
    assert lag.quantile(0.99) < 0.25
    assert (client["t_done"] >= client["t_sent"]).all()


def test_replay_records_every_request_with_its_status(server_url, tmp_path):
    models = ["ok", "ok", "ok", "dropped", "queue-full", "rejected", "broken", "ok", "ok", "ok"]
    schedule = write_schedule(tmp_path / "schedule.parquet", models, 300, 1.0)
    schedule.loc[[5, 150], "model"] = "slow"
    schedule.to_parquet(tmp_path / "schedule.parquet", index=False)
    t0 = time.time()
    client = load.replay(tmp_path / "schedule.parquet", server_url, time.time() + 2.5, tmp_path / "client",
                         timeout_s=TIMEOUT_S)
    assert time.time() - t0 < 2.5 + 1.0 + TIMEOUT_S + 10          # quits once the last request timed out
    assert_replayed(client, schedule)
    by = client.set_index("id")
    ok = by[by["model"] == "ok"]
    assert (ok["status"] == "ok").all() and (ok["batch_id"] == ok.index + 1000).all() and (ok["reason"] == "").all()
    expected = {"dropped": ("dropped", "deadline"),
                "queue-full": ("dropped", "[request id: 7] Exceeds maximum queue size"),
                "rejected": ("rejected", "over capacity"), "broken": ("error", "http 500: boom"),
                "slow": ("timeout", f"no answer within {TIMEOUT_S:g} s")}
    for model, (status, reason) in expected.items():
        rows = by[by["model"] == model]
        assert len(rows) and (rows["status"] == status).all() and (rows["reason"] == reason).all(), model
        assert (rows["batch_id"] == -1).all()
    slow = by.loc[[5, 150]]
    assert ((slow["t_done"] - slow["t_sent"]).between(TIMEOUT_S, TIMEOUT_S + 0.5)).all()
    assert sorted(p.name for p in (tmp_path / "client").glob("client-*")) == ["client-000.parquet"]
    # Locust's own statistics saw every request, the unserved ones as failures.
    summary = (tmp_path / "client" / "locust.log").read_text()
    assert re.search(r"Aggregated\s+300\s+(\d+)\(", summary).group(1) == str((client["status"] != "ok").sum())


def test_two_workers_cover_every_request_once(server_url, tmp_path):
    schedule = write_schedule(tmp_path / "schedule.parquet", ["ok", "dropped"], 200, 0.8)
    client = load.replay(tmp_path / "schedule.parquet", server_url, time.time() + 3.0, tmp_path / "client",
                         workers=2, timeout_s=5.0)
    assert_replayed(client, schedule)
    shards = [pd.read_parquet(tmp_path / "client" / f"client-{k:03d}.parquet") for k in (0, 1)]
    assert sorted(len(s) for s in shards) == [100, 100]
    assert {tuple(sorted(set(s["id"] % 2))) for s in shards} == {(0,), (1,)}
    assert (client["status"] == np.where(client["model"] == "ok", "ok", "dropped")).all()


def test_workers_of_another_host_join_the_master(server_url, tmp_path):
    # "Host A" runs the master and one worker and expects two; "host B" runs one worker that joins it.
    schedule = write_schedule(tmp_path / "schedule.parquet", ["ok"], 100, 0.5)
    port, epoch, on_a = runner._free_port(), time.time() + 4.0, {}

    def host_a():
        on_a["records"] = load.replay(tmp_path / "schedule.parquet", server_url, epoch, tmp_path / "a", workers=1,
                                      expect_workers=2, master_port=port)

    a = threading.Thread(target=host_a)
    a.start()
    on_b = load.replay(tmp_path / "schedule.parquet", server_url, epoch, tmp_path / "b", workers=1,
                       master_host="127.0.0.1", master_port=port)
    a.join(60)
    assert sorted(len(r) for r in (on_a["records"], on_b)) == [50, 50]
    assert_replayed(pd.concat([on_a["records"], on_b]).sort_values("id", ignore_index=True), schedule)


def test_interrupted_replay_keeps_what_it_measured_and_leaves_no_process(server_url, tmp_path):
    # Requests every 10 ms for 30 s; Ctrl-C after about 1 s of them.
    n = 3000
    pd.DataFrame({"id": np.arange(n), "model": "ok", "t_sched": np.arange(n) * 0.01}).to_parquet(
        tmp_path / "schedule.parquet", index=False)
    epoch = time.time() + 2.0

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, epoch + 1.0 - time.time())
    try:
        with pytest.raises(KeyboardInterrupt):
            load.replay(tmp_path / "schedule.parquet", server_url, epoch, tmp_path / "client")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    kept = load.read_records(tmp_path / "client")
    assert 50 <= len(kept) < n and (kept["status"] == "ok").all()
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert leftover == []


def test_a_killed_process_leaves_its_periodic_flushes(server_url, tmp_path):
    # Locust run by hand (options from the environment), then SIGKILL: no final file, only the flushed parts.
    n = 1000
    pd.DataFrame({"id": np.arange(n), "model": "ok", "t_sched": np.arange(n) * 0.01}).to_parquet(
        tmp_path / "schedule.parquet", index=False)
    env = dict(os.environ, HARNESS_REPLAY_SCHEDULE=str(tmp_path / "schedule.parquet"),
               HARNESS_REPLAY_EPOCH=repr(time.time() + 2.0), HARNESS_REPLAY_OUT=str(tmp_path / "client"))
    proc = subprocess.Popen([sys.executable, "-m", "locust", "-f", str(runner.LOCUSTFILE), "--headless", "-u", "1",
                             "-r", "1", "--host", server_url, "--flush-interval", "0.5"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(4.5)
    finally:
        proc.kill()
        proc.wait(10)
    assert not (tmp_path / "client" / "client-000.parquet").exists()
    assert len(list((tmp_path / "client").glob("client-000.part-*.arrow"))) >= 2
    kept = load.read_records(tmp_path / "client")
    assert 50 <= len(kept) < n
    assert kept["id"].is_unique and kept["id"].is_monotonic_increasing and kept["id"].max() < n
    assert (kept["status"] == "ok").all() and (kept["batch_id"] == kept["id"] + 1000).all()
    assert kept["model"].map(type).eq(str).all() and kept["reason"].eq("").all()


def test_locust_failing_to_start_is_one_clear_error(server_url, tmp_path, monkeypatch):
    write_schedule(tmp_path / "schedule.parquet", ["ok"], 10, 0.1)
    monkeypatch.setattr(runner, "LOCUSTFILE", tmp_path / "missing_locustfile.py")
    with pytest.raises(HarnessError, match=r"locust exited with code \d+; its log ends: .*missing_locustfile"):
        load.replay(tmp_path / "schedule.parquet", server_url, time.time() + 1.0, tmp_path / "client")


if __name__ == "__main__":
    serve()


def test_reading_while_a_shard_folds_its_parts_into_its_final_file(tmp_path, monkeypatch):
    # The progress reader lists a part; before it opens it, the shard finishes: parts deleted, final written.
    import pyarrow as pa
    import pyarrow.feather as feather

    rows = pd.DataFrame({"id": [0, 1], "model": ["m", "m"], "t_sched": [0.0, 0.1], "t_sent": [0.0, 0.1],
                         "t_done": [0.01, 0.11], "status": ["ok", "ok"], "reason": ["", ""], "batch_id": [0, 0]})
    part = tmp_path / "client-000.part-00000.arrow"
    feather.write_feather(pa.Table.from_pandas(rows.iloc[:1], preserve_index=False), part)
    real_read = feather.read_table

    def shard_finishes_first(path, *a, **k):
        if Path(path) == part and part.exists():
            rows.to_parquet(tmp_path / "client-000.parquet", index=False)
            part.unlink()
        return real_read(path, *a, **k)

    monkeypatch.setattr(records_module.feather, "read_table", shard_finishes_first)
    records = load.read_records(tmp_path)
    assert records["id"].tolist() == [0, 1]


def test_default_workers_follow_the_host_and_the_schedules_busiest_second():
    from harness.load import default_workers, peak_rate
    assert default_workers(2, peak_rate=50_000) == 0              # a small host: one process whatever the rate
    assert default_workers(16) == 4                                # a quarter of the cores
    assert default_workers(16, peak_rate=32_816) == 10             # one per 3,500 req/s of the busiest second
    assert default_workers(16, peak_rate=1e6) == 10                # never past five eighths of the cores
    bursty = np.concatenate([np.arange(0, 10, 1 / 1000), 10 + np.arange(0, 1, 1 / 20_000)])
    assert peak_rate(bursty) == pytest.approx(20_000, rel=1e-3)    # the burst, not the mean rate
    assert peak_rate(np.array([])) == 0
