"""An ingress process: HTTP connections and the v2 protocol, in front of the scheduler process.

    python -m harness.live.ingress --config run/config.yaml --epoch E --scheduler unix:/tmp/s.sock \
        --index 0 --ingresses 1 --host 127.0.0.1 --port 0 --out run/

The scheduler starts one or more of these; they listen on one port
(SO_REUSEPORT: the kernel spreads the connections over them), parse and
check each request (harness.live.protocol), stamp its arrival on the run
clock, and send the scheduler compact metadata, many requests per message
(harness.live.wire). So the HTTP work, which costs far more than the
policy, spreads over processes while the policy sees every request in one
place.

HTTP is served by harness.live.http1, a plain asyncio.Protocol that calls
`Ingress.handle` for each whole request, synchronously: an infer is
parsed, registered by token (its connection and its place there) and sent
on; the scheduler's DONE message writes its answer straight to the
connection, in request order. No task or future is made per infer, which
halves the CPU an ingress spends per request against aiohttp's server
(benchmarks/ingress_rate.py). The rare routes that ask the scheduler
(ready, stats, metrics) await a query in a task of their own.

Admission at the door: an ingress with `runtime.max_pending / ingresses`
requests waiting refuses more at once (429 "rejected"), so overload costs
bounded memory and the measurement plateaus at what the system serves.

Tensor payloads (runtime.payload=tensor, --arena): a request's image is
copied once into this ingress's shared-memory arena (harness.live.arena),
the scheduler gets where it is, and the worker that runs its batch reads it
from there; the slot is freed when the request is answered. A full arena
refuses at the door, as above.

Prints `{"ready": true, "port": PORT, "pid": PID}` on stdout once
listening. On SIGTERM it stops accepting, answers new infers on open
connections 503, gives the scheduler up to DRAIN_S to answer what is
pending (it answers 504 for what it never resolved), answers what is left
500 ("error: server shutting down"), closes the connections, writes
ingress-<index>.json (counters) into --out and exits 0. It exits by itself
when the scheduler process, its parent, dies.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import sys
import time
from dataclasses import asdict
from pathlib import Path

from harness.assembly import load
from harness.core import OK
from harness.errors import HarnessError
from harness.live import wire
from harness.live.arena import Arena, ArenaFull
from harness.live.channel import Channel, connect
from harness.live.http1 import JSON, Request, Server, json_error
from harness.live.loop import Clock
from harness.live.protocol import (HEADER_LENGTH, HTTP_CODE, BadRequest, error_body, infer_answer, model_config,
                                   model_metadata, parse_infer)
from harness.live.stats import prometheus, triton_statistics
from harness.records import write_json

SERVER_NAME = "dnn-serving-harness"
EXTENSIONS = ["binary_tensor_data", "statistics", "model_configuration", "model_repository"]
DRAIN_S = 1.0                  # on SIGTERM: how long the scheduler may take to answer what is pending
QUERY_TIMEOUT_S = 2.0
TEXT = b"Content-Type: text/plain; charset=utf-8\r\n"
BINARY_LENGTH = HEADER_LENGTH.lower().encode()


def _error(code: int, message: str) -> tuple[int, bytes, bytes]:
    return code, json_error(message), JSON


def _json(value, code: int = 200) -> tuple[int, bytes, bytes]:
    return code, json.dumps(value).encode(), JSON


_HEADER_LINES: dict[tuple, bytes] = {}


def _header_lines(headers: dict[str, str]) -> bytes:
    """An infer answer's headers as header lines (the few distinct ones are kept, not rebuilt)."""
    key = tuple(headers.items())
    lines = _HEADER_LINES.get(key)
    if lines is None:
        lines = "".join(f"{name}: {value}\r\n" for name, value in key).encode()
        if len(_HEADER_LINES) < 4096:
            _HEADER_LINES[key] = lines
    return lines


class Ingress:
    def __init__(self, assembly, index: int, ingresses: int, clock: Clock, arena: Arena | None = None):
        self.assembly = assembly
        self.arena = arena                       # runtime.payload=tensor: where the requests' images wait
        self.tensor = assembly.cfg.runtime.payload == "tensor"
        self.index = index
        self.channel: Channel | None = None      # to the scheduler
        self.clock = clock
        self.targets = {name: i for i, name in enumerate(assembly.targets)}
        self.known = set(assembly.models) | set(assembly.apps)    # models of an app answer metadata, not infer
        self.apps = assembly.apps
        self.infer_targets: dict[bytes, str] = {}  # request target -> model, for the infer routes seen
        self.one_query = assembly.policy_class.takes_queries
        rt = assembly.cfg.runtime
        self.cap = max(1, rt.max_pending // ingresses)
        self.tokens = itertools.count()
        self.waiting: dict[int, tuple[Request, str, object, int]] = {}  # token -> request, model, call, arena slot
        self.outbox: list = []
        self.flush_pending = False
        self.queries: dict[int, asyncio.Future] = {}
        self.later: set[asyncio.Task] = set()    # the answers that wait on a query
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self.counters = {"index": index, "answered": 0, "refused_at_door": 0, "bad_requests": 0}

    # -- the scheduler side ------------------------------------------------------------
    def on_message(self, channel: Channel, msg) -> None:
        if msg[0] == wire.DONE:
            waiting = self.waiting
            for token, outcome, batch_id, reason in msg[1]:
                entry = waiting.pop(token, None)
                if entry is not None:
                    self.resolved(entry, wire.OUTCOMES[outcome], batch_id, reason)
        elif msg[0] == wire.ANSWER:
            fut = self.queries.pop(msg[1], None)
            if fut is not None and not fut.done():
                fut.set_result(msg[2])

    def resolved(self, entry: tuple, status: str, batch_id: int, reason: str) -> None:
        """The scheduler decided a request: write its answer (on its connection, in its turn)."""
        request, name, call, arena_slot = entry
        self.counters["answered"] += 1
        if arena_slot >= 0:
            self.arena.free(arena_slot)      # answered: its image's memory takes the next request's
        try:
            if status == OK:
                body, headers = infer_answer(name, call, batch_id)
                request.answer(200, body, _header_lines(headers))
            elif status == wire.DUPLICATE:
                request.answer(*_error(409, reason))
            else:
                request.answer(*_json(error_body(status, reason), HTTP_CODE.get(status, 500)))
        except Exception as exc:  # a bug answering one request must not take the others down
            self.internal_error(request, exc)
            request.answer(*_error(500, f"error: internal server error: {type(exc).__name__}"))

    def send(self, row: list) -> None:
        self.outbox.append(row)
        self.flush_soon()

    def refused_at_door(self) -> None:
        """Count a refusal and tell the scheduler with this turn's arrivals (or alone): whichever ingress answers a
        scrape of /metrics, the count it reports is the whole server's."""
        self.counters["refused_at_door"] += 1
        self.flush_soon()

    def flush_soon(self) -> None:
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_pending = False
        rows, self.outbox = self.outbox, []
        self.channel.send([wire.ARRIVE, rows, self.counters["refused_at_door"]])

    async def query(self, what: str):
        qid = next(self.tokens)
        fut = self.loop.create_future()
        self.queries[qid] = fut
        self.channel.send([wire.QUERY, qid, what])
        try:
            return await asyncio.wait_for(fut, QUERY_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.queries.pop(qid, None)
            return None

    # -- HTTP ---------------------------------------------------------------------------
    def handle(self, request: Request) -> None:
        """A whole request (called by the HTTP server as it reads it): answer it now, or register it and
        answer when the scheduler does (infer), or when a query comes back (ready, stats, metrics)."""
        name = self.infer_targets.get(request.target)
        if name is not None and request.method == "POST":
            answer = self.infer(request, name)
        else:
            answer = self.route(request, request.method, request.path.strip("/").split("/"))
        if answer is not None:
            request.answer(*answer)

    def internal_error(self, request: Request, exc: BaseException) -> None:
        print(f"ingress {self.index}: internal error on {request.path[:100]}: {exc!r}", file=sys.stderr, flush=True)

    def route(self, request: Request, method: str, parts: list[str]):
        if parts == ["metrics"]:
            return self._only(method, "GET") or self.later_answer(request, self.metrics())
        if parts[:1] != ["v2"]:
            return _error(404, "no such route; the routes are /v2/... (KServe v2) and /metrics")
        rest = parts[1:]
        if rest == []:
            return self._only(method, "GET") or _json({"name": SERVER_NAME, "version": "1", "extensions": EXTENSIONS})
        if rest == ["health", "live"]:
            return self._only(method, "GET") or (200, b"", b"")
        if rest == ["health", "ready"]:
            return self._only(method, "GET") or self.later_answer(request, self.ready())
        if rest == ["repository", "index"]:
            return self._only(method, "POST") or _json(
                [{"name": name, "version": "1", "state": "READY"} for name in sorted(self.known)])
        if rest == ["models", "stats"]:
            return self._only(method, "GET") or self.later_answer(request, self.stats(sorted(self.known)))
        if len(rest) < 2 or rest[0] != "models":
            return _error(404, f"no such route {'/'.join(parts)[:100]!r}; see /v2/models/{{name}}")
        name, rest = rest[1], rest[2:]
        if name not in self.known:
            return self._unknown(name)
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != "1":
                return _error(404, f"model '{name}' has one version, 1")
            rest = rest[2:]
        if rest == []:
            return self._only(method, "GET") or _json(model_metadata(name, self.tensor))
        if rest == ["ready"]:
            return self._only(method, "GET") or self.later_answer(request, self.ready())
        if rest == ["config"]:
            return self._only(method, "GET") or _json(self.config_of(name))
        if rest == ["stats"]:
            return self._only(method, "GET") or self.later_answer(request, self.stats([name]))
        if rest == ["infer"]:
            if len(self.infer_targets) < 4096:       # the next request for this target skips the routing
                self.infer_targets[request.target] = name
            return self._only(method, "POST") or self.infer(request, name)
        return _error(404, f"no such route for model '{name}'; try /ready, /config, /stats or /infer")

    @staticmethod
    def _only(method: str, allowed: str):
        if method == allowed or (allowed == "GET" and method == "HEAD"):
            return None
        return _error(405, f"method {method} not allowed here; use {allowed}")

    def later_answer(self, request: Request, coro) -> None:
        """Answer once `coro` (which asks the scheduler) returns: these routes are rare, a task is fine."""
        async def answer():
            try:
                result = await coro
            except Exception as exc:  # a bug serving one request must not take the ingress down
                self.internal_error(request, exc)
                result = _error(500, f"error: internal server error: {type(exc).__name__}")
            request.answer(*result)

        task = self.loop.create_task(answer())
        self.later.add(task)
        task.add_done_callback(self.later.discard)

    async def ready(self):
        ok = not self.closing and bool(await self.query("ready"))
        return 200 if ok else 503, b"", b""

    def config_of(self, name: str) -> dict:
        largest = 1 if name in self.assembly.apps else self.assembly.curves()[0][name].max_batch
        return model_config(name, largest, asdict(self.assembly.system), self.tensor)

    async def stats(self, names: list[str]):
        snapshot = await self.query("stats")
        if snapshot is None:
            return _error(503, "the scheduler did not answer; try again")
        return _json(triton_statistics(snapshot["models"], names))

    async def metrics(self):
        snapshot = await self.query("stats")
        if snapshot is None:
            return _error(503, "the scheduler did not answer; try again")
        gauges = {"harness_pending_requests": snapshot["pending"], "harness_slots_alive": snapshot["slots_alive"]}
        counters = {"harness_requests_refused_at_door": snapshot["refused_at_door"]}
        return 200, prometheus(snapshot["models"], gauges, counters).encode(), \
            b"X-Ingress: %d\r\n%s" % (self.index, TEXT)

    def infer(self, request: Request, name: str):
        target = self.targets.get(name)
        if target is None:
            return _error(404, f"'{name[:100]}' is served as part of an app; ask for the app: "
                               f"{', '.join(sorted(self.targets))}")
        length = request.header(BINARY_LENGTH)
        t_arrival = self.clock.now()                  # the request is whole (the HTTP server read its body)
        try:
            call = parse_infer(request.body, None if length is None else int(length) if length.isdigit() else -1,
                               self.tensor)
            copies = self._copies(name, call)
        except BadRequest as exc:
            self.counters["bad_requests"] += 1
            return _error(400, str(exc))
        if self.closing:
            return _json(error_body("error", "server shutting down"), 503)
        if len(self.waiting) >= self.cap:
            self.refused_at_door()
            return _json(error_body("rejected", f"overloaded: {len(self.waiting)} requests waiting here"),
                         HTTP_CODE["rejected"])
        arena_slot, payload = -1, None
        if call.image is not None:
            try:
                arena_slot = self.arena.alloc()
            except ArenaFull as exc:
                self.refused_at_door()
                return _json(error_body("rejected", f"overloaded: {exc}"), HTTP_CODE["rejected"])
            self.arena.write(arena_slot, call.image)
            payload = [self.index, arena_slot, 0, len(call.image)]
            call.image = request.body = None             # the bytes are in the arena; the body can go
        token = next(self.tokens)
        self.waiting[token] = (request, name, call, arena_slot)
        size = 1
        if copies is not None and self.one_query and name not in self.apps:
            copies, size = None, len(call.values)        # n items as one query, for a policy that takes them
        self.send([token, call.rid, target, t_arrival, copies, size, payload])
        return None

    def _copies(self, name: str, call) -> list[int] | None:
        """What the scheduler gets as copies: an app's tasks per node; n items of a model's request."""
        app = self.apps.get(name)
        if app is not None:
            if call.copies is None or len(call.copies) != len(app.nodes):
                raise BadRequest(f"app '{name}' needs parameters.copies: one task count per node "
                                 f"({', '.join(n.name for n in app.nodes)})")
            if len(call.values) != 1:
                raise BadRequest(f"app '{name}' takes one item per request (shape [1, 1])")
            return call.copies
        if call.copies is not None:
            raise BadRequest("parameters.copies is for app requests; this is a model")
        return [len(call.values)] if len(call.values) > 1 else None

    def _unknown(self, name: str):
        return _error(404, f"unknown model '{name[:100]}'; models: {', '.join(sorted(self.known))}")

    def answer_leftovers(self) -> None:
        """At shutdown: what the scheduler never answered gets an error."""
        waiting, self.waiting = self.waiting, {}
        for entry in waiting.values():
            self.resolved(entry, "error", -1, "server shutting down")


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    assembly = load(args.config)
    try:
        arena = Arena.attach(args.arena) if args.arena else None
    except (OSError, ValueError) as exc:
        print(f"error: cannot map the payload arena {args.arena}: {exc}", file=sys.stderr, flush=True)
        return 2
    if assembly.cfg.runtime.payload == "tensor" and arena is None:
        print("error: runtime.payload=tensor needs --arena (the scheduler passes it)", file=sys.stderr, flush=True)
        return 2
    ingress = Ingress(assembly, args.index, args.ingresses, Clock(args.epoch), arena)
    try:
        ingress.channel = await connect(args.scheduler, ingress.on_message, lambda channel: stop.set())
    except (OSError, ValueError) as exc:
        print(f"error: cannot reach the scheduler at {args.scheduler}: {exc}", file=sys.stderr, flush=True)
        return 2
    server = Server(ingress.handle, max_body=assembly.cfg.runtime.max_body_bytes, name=SERVER_NAME,
                    on_error=ingress.internal_error)
    listener = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((args.host, args.port))
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr, flush=True)
        return 2
    listener.listen(4096)
    http = await loop.create_server(server, sock=listener, backlog=4096)
    watcher = asyncio.ensure_future(_watch_parent(os.getppid(), stop))
    sweeper = asyncio.ensure_future(server.sweep())
    print(json.dumps({"ready": True, "port": listener.getsockname()[1], "pid": os.getpid()}), flush=True)
    await stop.wait()
    ingress.closing = True
    http.close()
    deadline = time.monotonic() + DRAIN_S
    while ingress.waiting and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    ingress.answer_leftovers()
    await asyncio.sleep(0.05)                  # the answers that wait on a query are written
    server.close()                             # what was written is sent, then each connection closes
    deadline = time.monotonic() + 1.0
    while server.connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    watcher.cancel()
    sweeper.cancel()
    write_json(ingress.counters, Path(args.out) / f"ingress-{args.index}.json")
    ingress.channel.close()
    return 0


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.live.ingress", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--epoch", type=float, required=True)
    ap.add_argument("--scheduler", required=True, help="the scheduler's channel address (unix:path or tcp://host:port)")
    ap.add_argument("--arena", default="", help="payload memory fd:slot_bytes:slots (runtime.payload=tensor; "
                                                "an inherited file descriptor the scheduler passes)")
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--ingresses", type=int, default=1, help="how many ingresses share the port (admission cap)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        return asyncio.run(serve(args))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
