"""The live frontend: a KServe v2 HTTP server with a scheduling policy inside.

    python -m harness.live.frontend --config run/config.yaml --epoch 1760000000.0 --out run/ \
        [--host 127.0.0.1] [--port 0] [--workers tcp://h1:p1,tcp://h2:p2] [--exit-with-parent]

starts one worker per slot (harness.live.workers.WorkerPool), builds the
policy exactly as harness.run does for the simulation, serves the v2 routes
(harness.live.protocol) and prints one line
`{"ready": true, "url": "http://127.0.0.1:PORT", ...}` on stdout when it
accepts requests; logs go to stderr.

On SIGTERM or SIGINT (or, with --exit-with-parent, when its parent dies) it
stops accepting, records the requests still pending as "timeout" with reason
"unresolved at shutdown" (the sim runtime's word for what its drain leaves
unresolved: the system never answered within the run), answers their HTTP
calls 504, writes server_requests.parquet, batches.parquet and server.json
(lost slots, timer lag, policy errors) into --out, stops the workers and
exits 0. A lost worker does not stop the frontend: the policy hears of it
and the run goes on with the other slots.

Runtime settings come from the config's `runtime` group when present
(executor, workers, worker_timeout_s, max_body_bytes, spin_us) and can be
overridden by flags. Once serving, the cyclic garbage collector's full
collections are turned off (harness.live.loop.quiet_gc) so that they do not
pause the loop inside the measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
from aiohttp import web
from omegaconf import OmegaConf

import systems
from harness.core import OK, ModelSpec, Policy, SystemConfig
from harness.errors import HarnessError
from harness.live import loop as precise
from harness.live.cluster import LiveCluster
from harness.live.protocol import (HTTP_CODE, BadRequest, error_body, infer_response, model_metadata,
                                   parse_infer_request)
from harness.live.workers import WorkerPool

MAX_BODY_BYTES = 1 << 20
# Admission cap: beyond this many requests waiting in the policy, new ones are rejected (429) at once,
# so a 10x overload costs bounded memory and the server stays responsive.
MAX_PENDING = 20000
SERVER_NAME = "dnn-serving-harness"


def _error(code: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=code)


class Frontend:
    """The aiohttp application serving the v2 routes over a LiveCluster."""

    def __init__(self, cluster: LiveCluster, models: Mapping[str, ModelSpec], max_body_bytes: int = MAX_BODY_BYTES,
                 max_pending: int = MAX_PENDING):
        self.cluster = cluster
        self.models = models
        self.max_body_bytes = max_body_bytes
        self.max_pending = max_pending
        self.closing = False
        self._auto_ids = itertools.count(-1, -1)     # ids for requests that bring none: negative, never a client's

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[_json_errors])
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/health/live", self.live)
        app.router.add_get("/v2/health/ready", self.ready)
        app.router.add_get("/v2/models/{name}", self.model_metadata)
        app.router.add_get("/v2/models/{name}/ready", self.model_ready)
        app.router.add_post("/v2/models/{name}/infer", self.infer)
        return app

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": SERVER_NAME, "version": "1", "extensions": []})

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        ok = not self.closing and any(g.alive for g in self.cluster.gpus)
        return web.Response(status=200 if ok else 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.models:
            return self._unknown(name)
        return web.json_response(model_metadata(name))

    async def model_ready(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.models:
            return self._unknown(name)
        ok = not self.closing and any(g.alive and name in g.models for g in self.cluster.gpus)
        return web.Response(status=200 if ok else 503)

    async def infer(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.models:
            return self._unknown(name)
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._too_large()
        if "Inference-Header-Content-Length" in request.headers:
            return _error(400, "binary tensor data is not supported; send the tensors as JSON")
        try:
            data = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        try:
            rid, rid_text, value = parse_infer_request(data)
        except BadRequest as exc:
            return _error(400, str(exc))
        if self.closing:
            return web.json_response(error_body("error", "server shutting down"), status=503)
        if self.cluster.pending >= self.max_pending:
            return web.json_response(error_body("rejected", f"overloaded: {self.cluster.pending} requests pending"),
                                     status=HTTP_CODE["rejected"])
        if rid is None:
            rid = next(self._auto_ids)
            rid_text = str(rid)
        req, done = self.cluster.arrive(name, rid)
        await done
        if req.status == OK:
            return web.json_response(infer_response(name, rid_text, value, req.batch_id))
        return web.json_response(error_body(req.status, req.reason), status=HTTP_CODE.get(req.status, 500))

    def _unknown(self, name: str) -> web.Response:
        return _error(404, f"unknown model '{name[:100]}'; models: {', '.join(sorted(self.models))}")

    def _too_large(self) -> web.Response:
        return _error(413, f"request body larger than {self.max_body_bytes} bytes")


@web.middleware
async def _json_errors(request: web.Request, handler):
    """Every error answer carries a v2 error body {"error": "..."}."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.text or exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug serving one request must not take the server down
        print(f"frontend: internal error on {request.path}: {exc!r}", file=sys.stderr, flush=True)
        return _error(500, f"error: internal server error: {type(exc).__name__}")


def load_run_config(path: str | os.PathLike):
    """The run's resolved config.yaml -> (config, model specs, policy class, the policy's typed config)."""
    from harness.run import model_specs

    try:
        cfg = OmegaConf.load(path)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read the run config '{path}': {exc}") from None
    for key in ("system", "cluster", "models"):
        if key not in cfg:
            raise HarnessError(f"run config '{path}' has no '{key}' section; pass the resolved config.yaml of a run")
    policy_cls = systems.policy_class(cfg.system.name)
    system_cfg: SystemConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(policy_cls.Config),
                                                                   cfg.system))
    return cfg, model_specs(cfg), policy_cls, system_cfg


def _setting(value, cfg, key: str, default):
    return value if value is not None else OmegaConf.select(cfg, f"runtime.{key}", default=default)


async def serve(args: argparse.Namespace) -> int:
    from harness.records import batches_frame, server_frame, write_json, write_table
    from harness.run import build_cluster

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    stop = asyncio.Event()
    state = {"serving": False, "stop_reason": ""}

    def request_stop(reason: str) -> None:
        state["stop_reason"] = state["stop_reason"] or reason
        if state["serving"]:
            stop.set()
        else:
            main_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, signal.Signals(sig).name)

    cfg, models, policy_cls, system_cfg = load_run_config(args.config)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpus, curves = build_cluster(cfg, models)
    workers = _setting(args.workers, cfg, "workers", None)
    if isinstance(workers, str):
        workers = [w for w in workers.split(",") if w]
    pool = WorkerPool(len(gpus), args.config, addresses=list(workers) if workers else None,
                      executor=_setting(args.executor, cfg, "executor", "emulated"),
                      worker_timeout_s=float(_setting(args.worker_timeout, cfg, "worker_timeout_s", 5.0)),
                      start_timeout_s=float(_setting(None, cfg, "worker_start_timeout_s", 300.0)),
                      log_dir=out)
    max_body = int(_setting(args.max_body_bytes, cfg, "max_body_bytes", MAX_BODY_BYTES))
    max_pending = int(_setting(None, cfg, "max_pending", MAX_PENDING))
    cluster = frontend = runner = watcher = None
    code = 0
    try:
        await pool.start()
        cluster = LiveCluster(gpus, curves, pool, precise.Clock(args.epoch), models)
        policy: Policy = policy_cls(cluster, models, system_cfg)
        frontend = Frontend(cluster, models, max_body, max_pending)
        runner = web.AppRunner(frontend.app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1]
        cluster.start(policy)
        if args.exit_with_parent:
            watcher = asyncio.ensure_future(_watch_parent(os.getppid(), request_stop))
        state["serving"] = True
        precise.quiet_gc()
        print(json.dumps({"ready": True, "url": f"http://{args.host}:{port}", "pid": os.getpid(),
                          "slots": len(gpus)}), flush=True)
        await stop.wait()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except asyncio.CancelledError:
        print(f"frontend: stopped while starting ({state['stop_reason']})", file=sys.stderr, flush=True)
    finally:
        if watcher is not None:
            watcher.cancel()
        if frontend is not None:
            frontend.closing = True
        if cluster is not None:
            cluster.finish()
        try:
            if runner is not None:
                await runner.cleanup()
            if cluster is not None:
                report = _server_report(cluster, args.epoch, state["stop_reason"])
                write_table(server_frame(cluster.requests), out / "server_requests.parquet")
                write_table(batches_frame(cluster.batches, gpus), out / "batches.parquet")
                write_json(report, out / "server.json")
        finally:
            await pool.close()
    return code


async def _watch_parent(parent: int, request_stop) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    request_stop("parent process died")


def _server_report(cluster: LiveCluster, epoch: float, stop_reason: str) -> dict:
    lag = np.frombuffer(cluster.timer_lag, dtype=float) * 1e3
    timers = {"timers": len(lag)}
    if len(lag):
        timers.update(p50=float(np.percentile(lag, 50)), p99=float(np.percentile(lag, 99)), max=float(lag.max()))
    gc.unfreeze()
    return {
        "epoch": epoch,
        "stop_reason": stop_reason,
        "requests": len(cluster.requests),
        "batches": len(cluster.batches),
        "lost_slots": cluster.lost,
        "policy_errors": cluster.policy_errors,
        "timer_lag_ms": timers,
        # Cyclic garbage left by quiet_gc() (harness.live.loop) for the exit: should stay small.
        "gc_unreachable_at_exit": gc.collect(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.live.frontend", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the run's resolved config.yaml")
    ap.add_argument("--epoch", type=float, required=True,
                    help="unix time of run time 0 (shared with the load generator)")
    ap.add_argument("--out", required=True, help="run directory for the records and worker logs")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    ap.add_argument("--port", type=int, default=0, help="port (0: any free port; the ready line names it)")
    ap.add_argument("--workers", default=None, help="comma-separated tcp://host:port of workers started by hand, "
                                                    "one per slot (default: start local workers)")
    ap.add_argument("--executor", default=None, help="worker executor: emulated (default) or gpu")
    ap.add_argument("--worker-timeout", type=float, default=None, help="seconds of silence before a slot is lost (5)")
    ap.add_argument("--max-body-bytes", type=int, default=None, help=f"largest request body ({MAX_BODY_BYTES})")
    ap.add_argument("--exit-with-parent", action="store_true", help="shut down cleanly when the parent process dies")
    ap.add_argument("--spin-us", type=float, default=None,
                    help=f"poll this long before each timer for precision ({precise.SPIN * 1e6:g}; "
                         "0: plain epoll, timers up to 1 ms late, no CPU spent polling)")
    args = ap.parse_args(argv)
    try:
        spin = args.spin_us
        if spin is None:
            try:
                spin = OmegaConf.select(OmegaConf.load(args.config), "runtime.spin_us", default=None)
            except Exception:           # serve() reports an unreadable config
                spin = None
        spin = precise.SPIN if spin is None else float(spin) * 1e-6
        return precise.run(serve(args), spin=spin)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
