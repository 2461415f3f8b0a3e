"""The ingress's HTTP/1.1 server (harness.live.http1) over real loopback sockets: keep-alive, pipelining in
order while answers complete out of order, request bodies (Content-Length, chunked, Expect: 100-continue),
HTTP/1.0, Connection: close, limits (413, 431, 400), slow and idle clients, HEAD, backpressure; then a real
ingress process in front of a fake scheduler that answers out of order."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.config import register
from harness.live import http1, wire
from harness.live.protocol import infer_request

ROOT = Path(__file__).resolve().parent.parent
MAX_BODY = 4096
HEAD_TIMEOUT = 0.6
IDLE_TIMEOUT = 1.0


class Loop:
    """An asyncio loop in a thread, for servers the test talks to over sockets."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def handler(request: http1.Request) -> None:
    """/echo answers at once; /later/<ms> after ms milliseconds; /big/<kib> a large body; /fail raises."""
    parts = request.path.strip("/").split("/")
    body = json.dumps({"method": request.method, "path": request.path, "seq": request.seq,
                       "body": request.body.decode("latin-1"), "query": request.query.decode()}).encode()
    if parts[0] == "later":
        asyncio.get_running_loop().call_later(int(parts[1]) / 1e3, request.answer, 200, body, http1.JSON)
    elif parts[0] == "big":
        request.answer(200, b"x" * (int(parts[1]) << 10))
    elif parts[0] == "fail":
        raise RuntimeError("boom")
    else:
        request.answer(200, body, http1.JSON)


@pytest.fixture(scope="module")
def served():
    loop = Loop()

    async def start():
        server = http1.Server(handler, max_body=MAX_BODY, head_timeout=HEAD_TIMEOUT, idle_timeout=IDLE_TIMEOUT,
                              linger=0.5)
        listener = await asyncio.get_running_loop().create_server(server, "127.0.0.1", 0)
        sweeper = asyncio.ensure_future(server.sweep())
        return server, listener, sweeper

    server, listener, sweeper = loop.run(start())
    yield server, listener.sockets[0].getsockname()[1], loop

    async def stop():
        sweeper.cancel()
        listener.close()
        server.close()
        await asyncio.gather(sweeper, return_exceptions=True)

    loop.run(stop())
    loop.stop()


class Client:
    """A raw socket that reads answers one by one (status, headers, body)."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("closed")
        self.buf += chunk

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(marker, 1)
        return head

    def answer(self, head_request: bool = False) -> tuple[str, dict[str, str], bytes]:
        head = self.read_until(b"\r\n\r\n").decode("latin-1")
        status, *lines = head.split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
        n = 0 if head_request else int(headers.get("content-length", 0))
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return status, headers, body

    def closed(self, within: float = 3.0) -> bool:
        """True if the server closes the connection within `within` seconds (what it still sends is read)."""
        self.sock.settimeout(within)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def get(path: str, version: str = "1.1", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/{version}\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_keep_alive_serves_many_requests_on_one_connection(served):
    server, port, _ = served
    c = Client(port)
    for i in range(5):
        c.send(post(f"/echo?i={i}", b"hello %d" % i))
        status, headers, body = c.answer()
        assert status == "HTTP/1.1 200 OK" and "connection" not in headers
        assert headers["content-type"] == "application/json; charset=utf-8" and "date" in headers
        answer = json.loads(body)
        assert answer == {"method": "POST", "path": "/echo", "seq": i, "body": f"hello {i}", "query": f"i={i}"}
    assert not c.closed(within=0.2)
    c.close()


def test_pipelined_requests_are_answered_in_request_order_when_answers_complete_out_of_order(served):
    _, port, _ = served
    c = Client(port)
    paths = ["/later/300", "/later/20", "/echo", "/later/150", "/echo"]
    c.send(b"".join(get(p) for p in paths))          # one write: every request arrives before any answer
    t0 = time.monotonic()
    got = [json.loads(c.answer()[2])["path"] for _ in paths]
    assert got == paths
    assert time.monotonic() - t0 >= 0.28             # the first answer held the others back
    c.close()


def test_many_pipelined_requests_past_the_read_ahead_cap_are_all_answered_in_order(served):
    _, port, _ = served
    c = Client(port)
    n = http1.MAX_PIPELINE * 3
    c.send(b"".join(get(f"/later/{(7 * i) % 30}?{i}") for i in range(n)))
    assert [json.loads(c.answer()[2])["query"] for _ in range(n)] == [str(i) for i in range(n)]
    c.close()


def test_a_chunked_body_is_read_across_writes(served):
    _, port, _ = served
    c = Client(port)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    time.sleep(0.05)
    c.send(b"lo\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n")
    status, _, body = c.answer()
    assert status == "HTTP/1.1 200 OK" and json.loads(body)["body"] == "hello, world"
    c.send(get("/echo"))                              # the connection goes on after the trailers
    assert json.loads(c.answer()[2])["seq"] == 1
    c.close()


def test_expect_100_continue_is_answered_before_the_body_is_sent(served):
    _, port, _ = served
    c = Client(port)
    body = b"y" * 2000
    c.send(f"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode())
    c.sock.settimeout(0.5)                             # libcurl would wait a second for it
    assert c.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
    c.sock.settimeout(5)
    c.send(body)
    status, _, answer = c.answer()
    assert status == "HTTP/1.1 200 OK" and json.loads(answer)["body"] == body.decode()
    # Behind a request still being answered, the 100 waits its turn (it must not overtake that answer).
    c.send(get("/later/200") + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                               b"Expect: 100-continue\r\n\r\n")
    assert json.loads(c.answer()[2])["path"] == "/later/200"
    assert c.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
    c.send(b"abc")
    assert json.loads(c.answer()[2])["body"] == "abc"
    c.close()


def test_http_1_0_closes_unless_keep_alive_and_connection_close_is_honoured(served):
    _, port, _ = served
    c = Client(port)
    c.send(get("/echo", version="1.0"))
    status, headers, _ = c.answer()
    assert status == "HTTP/1.0 200 OK" and headers["connection"] == "close"
    assert c.closed()
    c = Client(port)
    c.send(get("/echo", version="1.0", extra="Connection: keep-alive\r\n"))
    status, headers, _ = c.answer()
    assert status == "HTTP/1.0 200 OK" and headers["connection"] == "keep-alive"
    c.send(get("/echo", version="1.0", extra="Connection: keep-alive\r\n"))
    assert c.answer()[0] == "HTTP/1.0 200 OK" and not c.closed(within=0.2)
    c.close()
    c = Client(port)                                    # answered, then closed; what follows is not read
    c.send(get("/later/50", extra="Connection: close\r\n") + get("/echo"))
    status, headers, body = c.answer()
    assert headers["connection"] == "close" and json.loads(body)["path"] == "/later/50"
    assert c.buf == b"" and c.closed()


def test_a_body_over_the_limit_answers_413_and_closes(served):
    _, port, _ = served
    for request in (post("/echo", b"z" * (MAX_BODY + 1)),
                    post("/echo", b"z" * (1 << 20)),    # still being sent when the answer comes: not reset
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n%s\r\n" % (MAX_BODY + 1, b"z" * (MAX_BODY + 1)) + b"0\r\n\r\n"):
        c = Client(port)
        c.send(request)
        status, headers, body = c.answer()
        assert status == "HTTP/1.1 413 Request Entity Too Large" and headers["connection"] == "close"
        assert json.loads(body) == {"error": f"request body larger than {MAX_BODY} bytes"}
        assert c.closed()


@pytest.mark.parametrize("garbage, words", [
    (b"GARBAGE\r\n\r\n", "malformed request line"),
    (b"GET /echo HTTP/1.1\r\nHost: t\r\nBad Header Line\r\n\r\n", "invalid header line"),
    (b"GET /echo HTTP/1.1\r\nHost: t\r\n Folded: x\r\n\r\n", "invalid header line"),
    (b"GET /echo HTTP/2.0\r\nHost: t\r\n\r\n", "unsupported HTTP version"),
    (b"GET /echo HTTP/1.1\r\n\r\n", "needs a Host header"),
    (b"GET /echo HTTP/1.1\nHost: t\n\n", "without CR LF"),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1x\r\n\r\n", "invalid Content-Length"),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "given twice"),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both"),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
    (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x1\r\n", "invalid chunk size"),
])
def test_malformed_requests_answer_400_with_a_json_error_and_close(served, garbage, words):
    _, port, _ = served
    c = Client(port)
    c.send(get("/later/100") + garbage)                # answered after the good request before it
    assert json.loads(c.answer()[2])["path"] == "/later/100"
    status, headers, body = c.answer()
    assert status == "HTTP/1.1 400 Bad Request" and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert error.startswith("bad request: ") and words in error
    assert c.closed()


def test_a_header_block_over_the_limit_answers_431(served):
    _, port, _ = served
    c = Client(port)
    c.send(b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (http1.HEAD_LIMIT + 10))
    status, _, body = c.answer()
    assert status == "HTTP/1.1 431 Request Header Fields Too Large"
    assert json.loads(body)["error"].startswith("bad request: ")
    assert c.closed()


def test_slow_clients_are_closed(served):
    _, port, _ = served
    loris = Client(port)
    loris.send(b"GET /echo HTTP/1.1\r\nHost: t\r\n")
    slow_body = Client(port)
    slow_body.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
    t0 = time.monotonic()
    while time.monotonic() - t0 < HEAD_TIMEOUT * 2:     # bytes that keep coming do not reset the clock
        time.sleep(HEAD_TIMEOUT / 5)
        for c, more in ((loris, b"X-Slow: 1\r\n"), (slow_body, b"x")):
            try:
                c.send(more)
            except OSError:
                pass
    assert loris.closed(within=0.3) and slow_body.closed(within=0.3)


def test_idle_keep_alive_connections_are_closed(served):
    _, port, _ = served
    idle = Client(port)
    idle.send(get("/echo"))
    idle.answer()
    assert not idle.closed(within=IDLE_TIMEOUT / 2)
    assert idle.closed(within=IDLE_TIMEOUT * 2)


def test_head_answers_the_length_without_a_body(served):
    _, port, _ = served
    c = Client(port)
    c.send(get("/big/3", method="HEAD") + get("/echo"))
    status, headers, body = c.answer(head_request=True)
    assert status == "HTTP/1.1 200 OK" and headers["content-length"] == str(3 << 10) and body == b""
    assert json.loads(c.answer()[2])["method"] == "GET"     # no stray body bytes came between
    c.close()


def test_a_handler_that_fails_answers_500_and_the_connection_goes_on(served):
    _, port, _ = served
    c = Client(port)
    c.send(get("/fail") + get("/echo"))
    status, _, body = c.answer()
    assert status == "HTTP/1.1 500 Internal Server Error" and "RuntimeError" in json.loads(body)["error"]
    assert c.answer()[0] == "HTTP/1.1 200 OK"
    c.close()


def test_a_client_that_does_not_read_stops_being_read(served):
    server, port, loop = served
    c = Client(port)
    c.send(b"".join(get("/big/1024") for _ in range(24)))    # more than the kernel's buffers hold
    time.sleep(0.3)

    async def paused():
        return [conn.read_paused for conn in server.connections if conn.write_paused]

    assert loop.run(paused()) == [True]               # its answers back up: reading it paused
    for _ in range(24):
        assert len(c.answer()[2]) == 1 << 20
    assert loop.run(paused()) == []
    c.send(get("/echo"))
    assert c.answer()[0] == "HTTP/1.1 200 OK"
    c.close()


def test_eof_after_pipelined_requests_still_answers_them(served):
    _, port, _ = served
    c = Client(port)
    c.send(get("/later/100") + get("/echo"))
    c.sock.shutdown(socket.SHUT_WR)
    assert [json.loads(c.answer()[2])["path"] for _ in range(2)] == ["/later/100", "/echo"]
    assert c.closed()


# -- a real ingress process ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ingress(tmp_path_factory):
    """An ingress process in front of a fake scheduler that answers requests with an even id after 200 ms
    and the others at once (so answers come back out of order)."""
    tmp = tmp_path_factory.mktemp("ingress")
    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["system=eager", "cluster=sleep1000", "cluster.count=2", "models=sleep10",
                                           "workload=poisson"])
    (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    loop = Loop()
    arrived = []

    def on_message(channel, msg):
        if msg[0] == wire.ARRIVE:
            for token, rid, *_ in msg[1]:
                arrived.append(rid)
                done = [wire.DONE, [[token, 0, 1000 + (rid or 0), ""]]]
                loop.loop.call_later(0.2 if rid is not None and rid % 2 == 0 else 0, channel.send, done)
        else:
            channel.send([wire.ANSWER, msg[1], True])

    from harness.live.channel import serve

    async def start():
        return await serve("unix:", lambda channel: None, on_message)

    server, address = loop.run(start())
    proc = subprocess.Popen([sys.executable, "-m", "harness.live.ingress", "--config", str(tmp / "config.yaml"),
                             "--epoch", repr(time.time()), "--scheduler", address, "--port", "0", "--out", str(tmp)],
                            stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    port = json.loads(proc.stdout.readline())["port"]
    yield port, arrived, proc, tmp
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)
    loop.loop.call_soon_threadsafe(server.close)
    loop.stop()


def infer(rid: int, extra: str = "") -> bytes:
    return post("/v2/models/m1/infer", json.dumps(infer_request(rid, value=rid)).encode(), extra)


def test_the_ingress_answers_pipelined_infers_in_order_when_the_scheduler_answers_out_of_order(ingress):
    port, _, _, _ = ingress
    c = Client(port)
    ids = [10, 11, 12, 13, 14, 15]
    c.send(b"".join(infer(i) for i in ids) + get("/v2/health/live"))
    for i in ids:
        status, headers, body = c.answer()
        answer = json.loads(body)
        assert status == "HTTP/1.1 200 OK" and headers["content-type"] == "application/json"
        assert answer["id"] == str(i) and answer["outputs"][1]["data"] == [1000 + i]
    assert c.answer()[0] == "HTTP/1.1 200 OK"
    c.close()


def test_the_ingress_reads_chunked_and_expect_100_continue_infers(ingress):
    port, _, _, _ = ingress
    c = Client(port)
    body = json.dumps(infer_request(21, value=3)).encode()
    c.send(b"POST /v2/models/m2/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert json.loads(c.answer()[2])["id"] == "21"
    padded = json.dumps({**infer_request(23, value=4), "pad": "p" * 2000}).encode()     # over 1 KiB, as libcurl
    c.send(f"POST /v2/models/m2/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {len(padded)}\r\n"
           f"Expect: 100-continue\r\n\r\n".encode())
    c.sock.settimeout(0.5)
    assert c.read_until(b"\r\n\r\n") == b"HTTP/1.1 100 Continue"
    c.sock.settimeout(5)
    c.send(padded)
    assert json.loads(c.answer()[2])["outputs"][0]["data"] == [4]
    c.send(get("/v2", method="HEAD") + get("/v2/models/m2/infer"))
    status, headers, body = c.answer(head_request=True)
    assert status == "HTTP/1.1 200 OK" and int(headers["content-length"]) > 0 and body == b""
    status, _, body = c.answer()
    assert status == "HTTP/1.1 405 Method Not Allowed"
    assert json.loads(body) == {"error": "method GET not allowed here; use POST"}
    c.close()


def test_the_ingress_stops_on_sigterm_and_writes_its_counters(ingress):
    port, arrived, proc, tmp = ingress
    c = Client(port)
    c.send(infer(40))                                  # answered 200 ms later, within the drain
    time.sleep(0.05)
    proc.terminate()
    status, _, body = c.answer()
    assert status == "HTTP/1.1 200 OK" and json.loads(body)["id"] == "40"
    assert proc.wait(10) == 0
    counters = json.loads((tmp / "ingress-0.json").read_text())
    assert counters["answered"] == len(arrived) and counters["bad_requests"] == 0
