"""A worker process: one GPU slot, the models it holds, and a FIFO of batches.

    python -m harness.live.worker --bind tcp://127.0.0.1:0 --slot 0 --config run/config.yaml

prints one line `{"ready": true, "address": "tcp://127.0.0.1:PORT", ...}` on
stdout once bound (port 0 picks a free port); everything else goes to
stderr. Two threads:

- the receiver (main thread) owns the ZeroMQ ROUTER socket: it timestamps
  each arriving batch and queues it, answers pings at once (so a long batch
  never looks like a hang), and forwards the executor's replies;
- the executor thread runs the queued batches one at a time, in arrival
  order, discarding a batch as "late" if it could not start within its
  `start_within`.

Messages are msgpack maps (the client is harness.live.workers.WorkerPool):

    {"op": "run", "batch": int, "model": str, "size": int,
     "start_within": float | None, "payload": bytes | None}
        -> {"batch", "status": "ok" | "late" | "error" | "preempted",
            "exec": seconds executing, "wait": seconds queued here, "error": str}
    {"op": "abort", "batch": int}   stop that batch early (reply "preempted") if the executor can
    {"op": "ping"}                  -> {"pong": slot}
    {"op": "stop"}                  -> {"stopped": slot}, then the process exits

`start_within` counts from the batch's arrival here (the transfer from the
frontend, tens of microseconds on one host, is not included). The worker
exits by itself when the process that started it dies (its parent pid
changes), so an orchestrator killed with SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from typing import ClassVar, Mapping

import msgpack
import numpy as np
import zmq

from harness.errors import HarnessError
from harness.profiles import LatencyCurve

EXECUTORS = ("emulated", "gpu")
PARENT_CHECK_S = 0.2


class Aborted(Exception):
    """The running batch was stopped by an abort request."""


class Executor:
    """Runs one batch at a time on the slot's device; `run` blocks until the batch is done.

    An executor that can stop a batch early sets `abortable = True` and
    raises Aborted from `run` soon after `abort` is set.
    """

    abortable: ClassVar[bool] = False

    def run(self, model: str, size: int, payload: bytes | None,
            abort: threading.Event | None = None) -> None:
        raise NotImplementedError


class EmulatedExecutor(Executor):
    """Reproduces the profiled latency: sleeps, then busy-waits the last `spin` seconds.

    With `noise`, each batch takes the profile's mean plus Gaussian noise of
    its std, clipped at half the mean (as the sim runtime draws it).
    """

    abortable = True
    spin = 0.0003

    def __init__(self, curves: Mapping[str, LatencyCurve], noise: bool = False, seed: int | list = 0):
        self.curves = dict(curves)
        self.noise = noise
        self._rng = np.random.default_rng(seed)

    def duration(self, model: str, size: int) -> float:
        curve = self.curves.get(model)
        if curve is None:
            raise ValueError(f"model {model!r} is not held here (held: {', '.join(sorted(self.curves))})")
        if not 1 <= size <= curve.max_batch:
            raise ValueError(f"batch of {size} outside the profiled sizes 1..{curve.max_batch} of {model}")
        mean = curve.mean[size]
        if self.noise and curve.std[size] > 0:
            return max(0.5 * mean, mean + curve.std[size] * float(self._rng.standard_normal()))
        return mean

    def run(self, model, size, payload, abort=None):
        end = time.perf_counter() + self.duration(model, size)
        block = end - self.spin - time.perf_counter()
        if block > 0:
            if abort is not None:
                if abort.wait(block):
                    raise Aborted
            else:
                time.sleep(block)
        while time.perf_counter() < end:
            if abort is not None and abort.is_set():
                raise Aborted


class _Job:
    __slots__ = ("client", "batch", "model", "size", "start_within", "payload", "t_arrival", "abort")

    def __init__(self, client: bytes, msg: dict, t_arrival: float):
        self.client = client
        self.batch = msg["batch"]
        self.model = msg["model"]
        self.size = msg["size"]
        self.start_within = msg.get("start_within")
        self.payload = msg.get("payload")
        self.t_arrival = t_arrival
        self.abort = threading.Event()


class Worker:
    """The receiver loop and the executor thread of one slot (see module doc)."""

    def __init__(self, slot: int, executor: Executor, bind: str = "tcp://127.0.0.1:0",
                 parent_pid: int | None = None, context: zmq.Context | None = None):
        self.slot = slot
        self.executor = executor
        self.parent_pid = parent_pid
        self._ctx = context or zmq.Context.instance()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.setsockopt(zmq.SNDHWM, 0)         # never drop a reply, however far the client lags
        self._router.setsockopt(zmq.RCVHWM, 0)
        if bind.startswith("tcp://") and bind.endswith(":0"):
            bind = bind[:-1] + "*"
        self._router.bind(bind)
        self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
        inproc = f"inproc://replies-{id(self)}"
        self._replies_in = self._ctx.socket(zmq.PULL)
        self._replies_in.bind(inproc)
        self._replies_out = self._ctx.socket(zmq.PUSH)   # used by the executor thread only
        self._replies_out.setsockopt(zmq.SNDHWM, 0)
        self._replies_out.setsockopt(zmq.LINGER, 0)
        self._replies_out.connect(inproc)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._jobs: dict[tuple[bytes, int], _Job] = {}  # queued or running, for aborts
        self._thread = threading.Thread(target=self._execute_loop, name=f"executor-{slot}", daemon=True)

    def serve(self) -> str:
        """Run until a stop message or the parent's death; returns why it stopped."""
        self._thread.start()
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._replies_in, zmq.POLLIN)
        router, replies = self._router, self._replies_in
        pack, unpack = msgpack.packb, msgpack.unpackb
        next_check = time.monotonic() + PARENT_CHECK_S
        try:
            while True:
                events = dict(poller.poll(int(PARENT_CHECK_S * 1000)))
                if router in events:
                    while True:
                        try:
                            client, data = router.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        except ValueError:           # not [identity, body]: ignore the frame set
                            continue
                        t = time.perf_counter()
                        try:
                            msg = unpack(data)
                            op = msg["op"]
                        except Exception as exc:     # a malformed message must not stop the slot
                            router.send_multipart([client, pack({"status": "error", "error": f"bad message: {exc}"})])
                            continue
                        if op == "run":
                            try:
                                job = _Job(client, msg, t)
                            except (KeyError, TypeError) as exc:
                                router.send_multipart([client, pack({"batch": msg.get("batch", -1), "status": "error",
                                                                     "exec": 0.0, "wait": 0.0,
                                                                     "error": f"bad run message: missing {exc}"})])
                                continue
                            self._jobs[(client, job.batch)] = job
                            self._queue.put(job)
                        elif op == "ping":
                            router.send_multipart([client, pack({"pong": self.slot})])
                        elif op == "abort":
                            job = self._jobs.get((client, msg.get("batch")))
                            if job is not None:
                                job.abort.set()
                        elif op == "stop":
                            router.send_multipart([client, pack({"stopped": self.slot})])
                            return "stop message"
                        else:
                            router.send_multipart([client, pack({"status": "error", "error": f"unknown op {op!r}"})])
                if replies in events:
                    while True:
                        try:
                            client, data = replies.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        router.send_multipart([client, data])
                now = time.monotonic()
                if now >= next_check:
                    next_check = now + PARENT_CHECK_S
                    if self.parent_pid is not None and os.getppid() != self.parent_pid:
                        return "parent process died"
        except BaseException:
            self.close()
            raise

    def close(self, timeout: float = 1.0) -> None:
        """Stop the executor (aborting its batch if it can), flush the last replies, release the sockets.

        Bounded by about 2x `timeout` even if the executor cannot abort its batch.
        """
        for job in list(self._jobs.values()):
            job.abort.set()
        self._queue.put(None)
        self._thread.join(timeout)
        self._replies_in.close(linger=0)
        self._router.close(linger=int(timeout * 1000))   # e.g. the "stopped" answer still queued
        term = threading.Thread(target=self._ctx.term, daemon=True)
        term.start()
        term.join(timeout)

    def _execute_loop(self) -> None:
        pack, sock = msgpack.packb, self._replies_out

        def send(frames):
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:       # the receiver is gone (stopping): nobody to answer
                pass

        run, perf = self.executor.run, time.perf_counter
        abortable = self.executor.abortable
        while True:
            job = self._queue.get()
            if job is None:
                sock.close(linger=0)
                return
            start = perf()
            wait = start - job.t_arrival
            reply = {"batch": job.batch, "status": "ok", "exec": 0.0, "wait": wait, "error": ""}
            if job.abort.is_set():
                reply["status"] = "preempted"
            elif job.start_within is not None and wait > job.start_within:
                reply["status"] = "late"
            else:
                try:
                    run(job.model, job.size, job.payload, job.abort if abortable else None)
                except Aborted:
                    reply["status"] = "preempted"
                except Exception as exc:  # a failing batch is reported, the slot goes on
                    reply["status"], reply["error"] = "error", f"{type(exc).__name__}: {exc}"
                reply["exec"] = perf() - start
            self._jobs.pop((job.client, job.batch), None)
            send([job.client, pack(reply)])


def build_executor(kind: str, config_path: str, slot: int) -> Executor:
    """The executor of `slot` as the run's resolved config describes it."""
    from omegaconf import OmegaConf

    from harness.profiles import curves_for

    cfg = OmegaConf.load(config_path)
    c = cfg.cluster
    if kind == "gpu":
        try:
            from harness.gpu.executor import GpuExecutor
        except ImportError as exc:
            raise HarnessError(f"executor 'gpu' needs torch and torchvision ({exc}); "
                               "pip install -e '.[gpu]' on a machine with a CUDA GPU") from None
        from harness.profiles import load_profile, profile_path

        # The slot's GPU is device 0 of what CUDA_VISIBLE_DEVICES shows it (the pool sets that per slot).
        profile = load_profile(profile_path(c.gpu_type, c.partition))
        first = profile.curves[next(iter(cfg.models))]
        sizes = [b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if b <= first.max_batch]
        return GpuExecutor(list(cfg.models), device=0, batch_sizes=sizes,
                           channels_last=profile.provenance.get("channels_last"))
    if kind != "emulated":
        raise HarnessError(f"unknown executor '{kind}'; use --executor emulated or gpu")
    sleep = OmegaConf.to_container(c.sleep) if "sleep" in c else None
    curves = curves_for(c.gpu_type, c.partition, list(cfg.models), sleep)
    noise = bool(OmegaConf.select(cfg, "runtime.noise", default=False))
    seed = int(OmegaConf.select(cfg, "seeds.runtime", default=0))
    return EmulatedExecutor(curves, noise=noise, seed=[seed, slot])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.live.worker", description=__doc__.split("\n")[0])
    ap.add_argument("--bind", default="tcp://127.0.0.1:0", help="ZeroMQ endpoint to bind (port 0: any free port)")
    ap.add_argument("--slot", type=int, required=True, help="index of the GPU slot this worker serves")
    ap.add_argument("--config", required=True, help="the run's resolved config.yaml (cluster, models, runtime)")
    ap.add_argument("--executor", choices=EXECUTORS, default="emulated")
    ap.add_argument("--orphan-ok", action="store_true",
                    help="keep running when the parent process dies (for workers started by hand on other hosts)")
    args = ap.parse_args(argv)
    parent = None if args.orphan_ok else os.getppid()
    try:
        executor = build_executor(args.executor, args.config, args.slot)
        worker = Worker(args.slot, executor, args.bind, parent_pid=parent)
    except (HarnessError, OSError, ValueError, KeyError, AttributeError, RuntimeError, ImportError) as exc:
        print(f"error: slot {args.slot}: {exc}", file=sys.stderr)
        return 2
    except zmq.ZMQError as exc:
        print(f"error: slot {args.slot}: cannot bind {args.bind}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"ready": True, "address": worker.address, "slot": args.slot, "pid": os.getpid()}), flush=True)
    why = worker.serve()
    worker.close()
    print(f"worker slot {args.slot}: exiting ({why})", file=sys.stderr, flush=True)
    # An executor that could not abort its batch may still hold a thread: do not wait for it.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
