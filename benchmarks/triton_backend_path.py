"""What forwarding a Triton batch costs: pytriton's proxy against a Python backend of our own, side by side.

    python benchmarks/triton_backend_path.py [--requests 300] [--clients 1] [--instances 1] [--forward-ms 1]

The live `system=triton` hands each batch from tritonserver's Python backend
stub to the harness through pytriton's proxy (ZeroMQ, an asyncio loop and two
threads per model instance, all in the harness's one process). The
alternative measured here: a model.py of our own in each stub that sends the
batch size over a unix socket to the harness and reads back a batch id, one
thread per instance on the harness's side. Both run the same tritonserver
(the one in the nvidia-pytriton wheel), the same model config (one model,
dynamic batching, `--instances` instances) and a forward that sleeps
`--forward-ms`; `--clients` threads send requests back to back. Printed per
backend: the client's round-trip p50, Triton's mean execution time per
request (compute_infer), forward's mean time, and the path between them
(execution - forward): what the forwarding itself costs a batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.errors import HarnessError  # noqa: E402
from harness.live import triton  # noqa: E402
from harness.live.protocol import infer_request  # noqa: E402

MODEL_PY = '''
import os, socket, struct
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(os.environ["FORWARD_SOCKET"])

    def execute(self, requests):
        sizes = [pb_utils.get_input_tensor_by_name(r, "x").as_numpy().shape[0] for r in requests]
        self.sock.sendall(struct.pack("!I", sum(sizes)))
        got = b""
        while len(got) < 8:
            chunk = self.sock.recv(8 - len(got))
            if not chunk:
                raise RuntimeError("the harness closed the forwarding socket")
            got += chunk
        (batch_id,) = struct.unpack("!q", got)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", np.zeros((k, 1), np.int32)),
                                            pb_utils.Tensor("batch_id", np.full((k, 1), batch_id, np.int64))])
                for k in sizes]
'''


class Forward:
    """forward(model, size[, instance]) -> batch id: sleeps the given time and records it."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.lock = threading.Lock()
        self.times: list[float] = []

    def __call__(self, model: str, size: int, instance: int | None = None) -> int:
        t = time.perf_counter()
        time.sleep(self.seconds)
        with self.lock:
            self.times.append(time.perf_counter() - t)
            return len(self.times)


def drive(url: str, requests: int, clients: int) -> list[float]:
    body = json.dumps(infer_request(1)).encode()

    def one(_) -> float:
        t = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(f"{url}/v2/models/m/infer", data=body), timeout=30) as a:
            a.read()
        return time.perf_counter() - t

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(20 * clients)))            # warm-up
        return list(pool.map(one, range(requests)))


def infer_ms(url: str) -> tuple[int, float]:
    with urllib.request.urlopen(f"{url}/v2/models/m/stats", timeout=10) as a:
        stats = json.loads(a.read())["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"]), int(stats["compute_infer"]["ns"]) / 1e6


def measure(url: str, forward: Forward, args) -> dict:
    n0, ms0 = infer_ms(url)
    forward.times.clear()
    rtt = sorted(drive(url, args.requests, args.clients))
    n1, ms1 = infer_ms(url)
    infer = (ms1 - ms0) / (n1 - n0)
    fwd = 1e3 * sum(forward.times) / len(forward.times)
    return {"rtt p50 ms": 1e3 * rtt[len(rtt) // 2], "infer ms": infer, "forward ms": fwd, "path ms": infer - fwd,
            "mean batch": (n1 - n0) / len(forward.times)}


def with_pytriton(forward: Forward, args) -> dict:
    with triton.start_triton({"m": {"max_batch_size": 8}}, {}, forward, instances=args.instances) as server:
        return measure(server.url, forward, args)


def with_own_backend(forward: Forward, args) -> dict:
    import pytriton
    work = Path(tempfile.mkdtemp(prefix="harness-triton-own-"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = None
    try:
        dist = Path(pytriton.__file__).resolve().parent / "tritonserver"
        shutil.copytree(dist, work / "tritonserver", ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy(dist / "python_backend_stubs" / f"{sys.version_info[0]}.{sys.version_info[1]}" /
                    "triton_python_backend_stub", work / "tritonserver" / "backends" / "python")
        (work / "models" / "m" / "1").mkdir(parents=True)
        (work / "models" / "m" / "1" / "model.py").write_text(MODEL_PY)
        (work / "models" / "m" / "config.pbtxt").write_text(
            'name: "m"\nbackend: "python"\nmax_batch_size: 8\ndynamic_batching { }\n'
            f"instance_group [{{ count: {args.instances}, kind: KIND_CPU }}]\n"
            'input [{ name: "x", data_type: TYPE_INT32, dims: [1] }]\n'
            'output [{ name: "y", data_type: TYPE_INT32, dims: [1] }, '
            '{ name: "batch_id", data_type: TYPE_INT64, dims: [1] }]\n')
        listener.bind(str(work / "forward.sock"))
        listener.listen(64)

        def serve(conn: socket.socket) -> None:    # one thread per instance: size in, batch id out
            with conn:
                while len(head := conn.recv(4)) == 4:
                    conn.sendall(struct.pack("!q", forward("m", struct.unpack("!I", head)[0])))

        def accept() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                threading.Thread(target=serve, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        ports = [triton._free_port("127.0.0.1") for _ in range(3)]
        env = triton._server_env_hook(dict(os.environ, FORWARD_SOCKET=str(work / "forward.sock")),
                                      triton.stub_env_dir() if triton.stub_env_needed() else None)
        log = open(work / "server.log", "w")
        proc = subprocess.Popen([str(work / "tritonserver" / "bin" / "tritonserver"), "--model-repository",
                                 str(work / "models"), "--backend-directory", str(work / "tritonserver" / "backends"),
                                 "--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port",
                                 str(ports[2]), "--log-verbose", "0"], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{ports[0]}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise HarnessError("tritonserver with our own backend did not start: "
                                       + (work / "server.log").read_text()[-500:].replace("\n", " | "))
                time.sleep(0.1)
        return measure(url, forward, args)
    finally:
        listener.close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--clients", type=int, default=1, help="threads sending requests back to back")
    ap.add_argument("--instances", type=int, default=1, help="model instances")
    ap.add_argument("--forward-ms", type=float, default=1.0, help="what forward sleeps per batch")
    args = ap.parse_args(argv)
    if min(args.requests, args.clients, args.instances) < 1 or args.forward_ms < 0:
        print("error: --requests, --clients and --instances must be >= 1, --forward-ms >= 0", file=sys.stderr)
        return 2
    try:
        import pytriton  # noqa: F401
        if triton.stub_env_needed():
            triton.setup_stub_env()
        rows = {name: run(Forward(args.forward_ms / 1e3), args)
                for name, run in (("pytriton proxy", with_pytriton), ("own backend", with_own_backend))}
    except ImportError:
        print("error: this needs nvidia-pytriton (its tritonserver): pip install nvidia-pytriton==0.5.7",
              file=sys.stderr)
        return 2
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.requests} requests, {args.clients} client(s), {args.instances} instance(s), "
          f"forward {args.forward_ms:g} ms")
    print(f"{'backend':16s}" + "".join(f"{k:>13s}" for k in next(iter(rows.values()))))
    for name, row in rows.items():
        print(f"{name:16s}" + "".join(f"{v:13.3f}" for v in row.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
