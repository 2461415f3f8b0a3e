"""Any Triton or KServe client drives the live system under test: tritonclient over HTTP with binary
tensors and batched inputs, the model configuration, statistics and Prometheus metrics -- which must
agree with the run's own records -- and what fails before a request is whole answers a v2 error."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.http as httpclient
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.config import register
from harness.live.server import start_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients")
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["system=eager", "cluster=sleep1000", "cluster.count=2", "models=sleep10",
                                           "workload=poisson"])
    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    server = start_server(tmp / "config.yaml", time.time(), tmp / "run", start=time.time())
    yield server, tmp / "run"
    server.stop()


def client(server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"))


def x(values) -> httpclient.InferInput:
    tensor = httpclient.InferInput("x", [len(values), 1], "INT32")
    tensor.set_data_from_numpy(np.array(values, dtype=np.int32).reshape(-1, 1), binary_data=True)
    return tensor


def test_tritonclient_reads_config_and_metadata_and_infers_with_binary_tensors(served):
    server, _ = served
    c = client(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("m1")
    assert "binary_tensor_data" in c.get_server_metadata()["extensions"]
    config = c.get_model_config("m1")
    assert config["max_batch_size"] == 64 and config["input"][0]["name"] == "x"
    assert config["parameters"]["drop_late"]["string_value"] == "True"          # the system's settings
    assert {m["name"] for m in c.get_model_repository_index()} == {f"m{i}" for i in range(10)}
    answer = c.infer("m1", [x([7])], request_id="100")                            # binary in, binary out
    assert answer.as_numpy("y").tolist() == [[7]] and answer.as_numpy("batch_id")[0, 0] >= 0
    four = c.infer("m2", [x([1, 2, 3, 4])], request_id="101")                     # a batched input: 4 items
    assert four.as_numpy("y").ravel().tolist() == [1, 2, 3, 4]
    json_out = c.infer("m3", [x([5])], request_id="102",
                       outputs=[httpclient.InferRequestedOutput("y", binary_data=False)])
    assert json_out.as_numpy("y").tolist() == [[5]] and json_out.get_output("batch_id") is None


def test_the_grafana_dashboard_asks_only_for_metrics_the_server_exports(served):
    """dashboards/grafana.json: every query parses as PromQL and names metrics (and labels) that /metrics of a
    live run exports, with the types its functions need (rate of counters, histogram_quantile of a histogram)."""
    promql = pytest.importorskip("promql_parser", reason="pip install -e .[dev] (promql-parser)")
    server, _ = served
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    types = dict(line.split()[2:4] for line in text.splitlines() if line.startswith("# TYPE "))
    labels = set(re.findall(r"[{,]([a-z_]+)=", text))
    board = json.loads((ROOT / "dashboards" / "grafana.json").read_text())
    queries = [t["expr"] for p in board["panels"] for t in p["targets"]] + \
              [v["query"]["query"] for v in board["templating"]["list"]]
    assert len(queries) >= 10
    for query in queries:
        expr = query.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$model", ".*")
        if expr.startswith("label_values("):                  # Grafana's own function around a selector
            expr = expr[len("label_values("):].rsplit(",", 1)[0]
        promql.parse(expr)                                    # ValueError: not PromQL
        for name in re.findall(r"\b(nv_inference_\w+|harness_\w+)\b", expr):
            if name.endswith("_bucket"):
                assert types.get(name.removesuffix("_bucket")) == "histogram", (name, query)
            else:
                assert name in types, (name, query)
                assert "rate(" + name not in expr or types[name] == "counter", (name, query)
        for group in re.findall(r"by \(([^)]*)\)", expr):
            assert {g.strip() for g in group.split(",")} <= labels | {"le"}, (group, query)


def test_statistics_and_metrics_agree_with_the_records(served, tmp_path):
    server, run = served
    c = client(server)
    for i in range(20):
        c.infer("m4", [x([i])], request_id=str(200 + i))
    stats = {s["name"]: s for s in c.get_inference_statistics()["model_stats"]}
    m4 = stats["m4"]
    assert m4["inference_stats"]["success"]["count"] == 20 and m4["inference_stats"]["fail"]["count"] == 0
    assert m4["execution_count"] >= 1 and m4["inference_count"] == 20
    assert m4["inference_stats"]["compute_infer"]["ns"] > 0
    # perf_analyzer refuses statistics whose compute phases count differently.
    counts = {m4["inference_stats"][phase]["count"] for phase in ("compute_input", "compute_infer", "compute_output")}
    assert counts == {m4["inference_stats"]["queue"]["count"]} and counts != {0}
    for per_size in m4["batch_stats"]:
        assert per_size["compute_input"]["count"] == per_size["compute_infer"]["count"] == \
            per_size["compute_output"]["count"]
    with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'nv_inference_request_success{model="m4",version="1"} 20' in text
    assert f'nv_inference_exec_count{{model="m4",version="1"}} {m4["execution_count"]}' in text
    # Once stopped, the run's records tell the same story.
    before = {name: s for name, s in stats.items()}
    server.stop()
    requests = pd.read_parquet(run / "server_requests.parquet")
    batches = pd.read_parquet(run / "server_batches.parquet")
    for name, s in before.items():
        ok = requests[(requests["model"] == name) & (requests["status"] == "ok")]
        ran = batches[(batches["model"] == name) & (batches["status"] == "ok")]
        assert s["inference_stats"]["success"]["count"] == len(ok), name
        assert s["execution_count"] == len(ran) and s["inference_count"] == ran["size"].sum(), name
        exec_ns = ((ran["t_end"] - ran["t_start"]) * ran["size"] * 1e9).sum()
        assert s["inference_stats"]["compute_infer"]["ns"] == pytest.approx(exec_ns, rel=1e-3, abs=1e4), name


def test_what_fails_before_a_request_is_whole_answers_a_v2_error(tmp_path):
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["system=eager", "cluster=sleep1000", "cluster.count=1", "models=sleep10",
                                           "workload=poisson"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    with start_server(tmp_path / "config.yaml", time.time(), tmp_path / "run", start=time.time()) as server:
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as s:      # a broken request line
            s.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
            answer = s.recv(4096).decode(errors="replace")
        assert answer.split("\r\n", 1)[0].endswith("400 Bad Request") and "application/json" in answer
        assert json.loads(answer.split("\r\n\r\n", 1)[1])["error"].startswith("bad request")
        with socket.create_connection((host, int(port)), timeout=30) as s:     # slow-loris: never finishes
            s.sendall(b"POST /v2/models/m0/infer HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 25:
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed = True
                    break
                time.sleep(1.0)
        assert closed and time.monotonic() - started < 20


def test_an_external_client_drives_a_run_and_its_requests_are_the_records(tmp_path):
    # runtime.load=external: no schedule, any client; its ids are its own (numeric ones repeat here).
    import subprocess
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.Popen([sys.executable, "-m", "harness", "runtime.load=external", f"runtime.port={port}",
                            "system=eager", "cluster=sleep1000", "cluster.count=2", "models=sleep10",
                            "duration_s=5", "warmup_s=0", "cooldown_s=0", "validity.min_duration_s=5",
                            "runtime.start_lead_s=3",
                            f"hydra.run.dir={tmp_path}"], cwd=ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)

    def get(route: str, body: bytes | None = None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}", data=body, timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if get("/v2/health/live")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        # Up but not yet at the run's start: not ready, and a request sent anyway is refused, saying why.
        assert get("/v2/health/ready")[0] == 503
        code, answer = get("/v2/models/m0/infer", json.dumps(
            {"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 1], "data": [1]}]}).encode())
        assert code == 503 and b"wait until /v2/health/ready" in answer, answer
        while time.time() < deadline and get("/v2/health/ready")[0] != 200:
            time.sleep(0.05)
        c = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        x = httpclient.InferInput("x", [1, 1], "INT32")
        x.set_data_from_numpy(np.array([[3]], dtype=np.int32))
        ids = ["", "1", "1", "perf-7"] * 3
        for rid in ids:
            assert c.infer("m0", [x], request_id=rid).get_response().get("id", "") == rid   # "": no id sent
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, err[-2000:]
    requests = pd.read_parquet(tmp_path / "requests.parquet")
    assert len(requests) == len(ids) and (requests["status"] == "ok").all()
    assert json.loads((tmp_path / "summary.json").read_text())["status_counts"] == {"ok": len(ids)}


def test_metrics_count_the_refusals_of_every_ingress_whichever_answers_the_scrape(tmp_path):
    # Two ingresses in front of one slot whose batches take a second: each holds 2 requests waiting at most
    # and refuses more at the door (429). A scrape reaches one ingress or the other; both must report the
    # server's refusals, all of them (a counter Prometheus can take a rate of), not their own share.
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["system=eager", "system.drop_late=false", "cluster=sleep1000",
                                           "cluster.count=1", "cluster.sleep.c_ms=1000", "models=sleep10",
                                           "workload=poisson", "runtime.max_pending=4"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 1], "datatype": "INT32", "data": [1]}]}).encode()

    def infer(_) -> tuple[int, str]:
        request = urllib.request.Request(server.url + "/v2/models/m0/infer", body, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, ""
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def scraped() -> int:
        with urllib.request.urlopen(server.url + "/metrics", timeout=5) as r:
            line = next(x for x in r.read().decode().splitlines() if x.startswith("harness_requests_refused_at_door "))
        return int(float(line.split()[1]))

    from concurrent.futures import ThreadPoolExecutor
    with start_server(tmp_path / "config.yaml", time.time(), tmp_path / "run", start=time.time(),
                      extra_args=["--ingresses", "2"]) as server:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(infer, range(16)))
        at_door = sum(code == 429 and "waiting here" in text for code, text in answers)
        assert at_door >= 8 and all(code in (200, 429) for code, _ in answers)     # 4 held, at most, at once
        deadline = time.monotonic() + 5
        while scraped() != at_door and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [scraped() for _ in range(12)] == [at_door] * 12
    counters = json.loads((tmp_path / "run" / "server.json").read_text())["ingresses"]
    assert sum(c["refused_at_door"] for c in counters) == at_door
