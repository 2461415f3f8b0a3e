"""WorkerPool: the worker processes of a run's GPU slots, and the client side of their protocol.

    pool = WorkerPool(2, config_path="run/config.yaml", log_dir="run")  # spawns 2 local workers
    pool = WorkerPool(2, addresses=["tcp://gpu1:5555", "tcp://gpu2:5555"])  # workers started by hand
    pool.on_lost = lambda slot, reason: ...      # optional: told once per slot lost
    await pool.start()                           # ready or HarnessError naming the slot
    reply = await pool.submit(slot, batch_id, model, size, start_within, expected=l_b)
    pool.abort(slot, batch_id)                   # ask the worker to stop that batch early
    await pool.close()                           # stops and reaps every process it started

`submit` returns an asyncio future (await it, or add a done callback) that
always resolves to the worker's reply map (see harness.live.worker):
{"batch", "status": "ok" | "late" | "error" | "preempted", "exec", "wait",
"error"}; it never raises. Batch ids need only be unique among a slot's
outstanding batches.

Liveness: every `ping_interval_s` each slot is pinged. A slot is declared
lost when its local process has exited, when it has answered nothing for
`worker_timeout_s`, or when the batch at the head of its queue has been
running for more than max(`worker_timeout_s`, 10x its expected time). A
lost slot's outstanding futures resolve with status "error", `on_lost` is
called first, and later submits to it fail at once. A lost local worker is
killed, so a hung one does not come back.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import msgpack
import zmq
import zmq.asyncio

from harness.errors import HarnessError
from harness.processes import log_tail, signal_group

ROOT = Path(__file__).resolve().parents[2]     # the directory holding the harness package
HUNG_BATCH_FACTOR = 10.0


class _Slot:
    __slots__ = ("index", "address", "proc", "log", "sock", "outstanding", "last_seen", "last_reply",
                 "lost", "reader")

    def __init__(self, index: int):
        self.index = index
        self.address = ""
        self.proc: subprocess.Popen | None = None
        self.log = None                       # the worker's stderr file (local workers)
        self.sock: zmq.asyncio.Socket | None = None
        self.outstanding: dict[int, tuple[asyncio.Future, float, float]] = {}  # batch -> (future, sent, expected)
        self.last_seen = 0.0
        self.last_reply = 0.0
        self.lost = ""
        self.reader: asyncio.Task | None = None


class WorkerPool:
    """One worker per slot, local (spawned here) or remote (`addresses`); see module doc."""

    def __init__(self, slots: int, config_path: str | os.PathLike | None = None, *,
                 addresses: list[str] | None = None, executor: str = "emulated", host: str = "127.0.0.1",
                 worker_timeout_s: float = 5.0, start_timeout_s: float = 30.0, ping_interval_s: float = 0.5,
                 log_dir: str | os.PathLike | None = None,
                 on_lost: Callable[[int, str], None] | None = None):
        if addresses is not None and len(addresses) != slots:
            raise HarnessError(f"{len(addresses)} worker addresses given for {slots} slots; give one per slot")
        if addresses is None and config_path is None:
            raise HarnessError("WorkerPool needs the run's config_path to start local workers, or their addresses")
        self.n = slots
        self.config_path = str(config_path) if config_path is not None else None
        self.addresses = addresses
        self.executor = executor
        self.host = host
        self.worker_timeout_s = worker_timeout_s
        self.start_timeout_s = start_timeout_s
        self.ping_interval_s = ping_interval_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.on_lost = on_lost
        self.lost: dict[int, str] = {}        # slot -> why it was lost
        self._slots = [_Slot(i) for i in range(slots)]
        self._ctx: zmq.asyncio.Context | None = None
        self._watchdog: asyncio.Task | None = None
        self._closed = False
        self._resources = ExitStack()         # the private MPS daemon of GPU partitions, while it is needed
        self._mps = None

    # -- public API ---------------------------------------------------------------
    async def start(self) -> None:
        """Spawn (or reach) every worker and wait until each answers a ping; HarnessError otherwise."""
        try:
            if self.addresses is None:
                self._spawn()
                loop = asyncio.get_running_loop()
                addresses = await loop.run_in_executor(None, self._wait_ready)
            else:
                addresses = list(self.addresses)
            self._ctx = zmq.asyncio.Context()
            for s, address in zip(self._slots, addresses):
                s.address = address
                s.sock = self._ctx.socket(zmq.DEALER)
                s.sock.setsockopt(zmq.LINGER, 0)
                s.sock.setsockopt(zmq.SNDHWM, 0)
                s.sock.setsockopt(zmq.RCVHWM, 0)
                s.sock.connect(address)
                s.reader = asyncio.ensure_future(self._read(s))
            await self._await_pongs()
        except BaseException:
            await self.close()
            raise
        self._watchdog = asyncio.ensure_future(self._watch())

    def alive(self, slot: int) -> bool:
        return not self._slots[slot].lost

    def submit(self, slot: int, batch_id: int, model: str, size: int, start_within: float | None,
               payload: bytes | None = None, expected: float = 0.0) -> asyncio.Future:
        """Send a batch to `slot`; the future resolves to the worker's reply (never raises).

        `start_within`: seconds from now by which the batch must start, else
        the worker discards it ("late"); None: no limit. `expected`: its
        profiled time, for hang detection.
        """
        s = self._slots[slot]
        fut = asyncio.get_running_loop().create_future()
        if s.lost or self._closed:
            fut.set_result(_error_reply(batch_id, f"slot {slot} lost: {s.lost}" if s.lost else "worker pool closed"))
            return fut
        s.outstanding[batch_id] = (fut, time.monotonic(), expected)
        s.sock.send(msgpack.packb({"op": "run", "batch": batch_id, "model": model, "size": size,
                                   "start_within": start_within, "payload": payload}))
        return fut

    def abort(self, slot: int, batch_id: int) -> None:
        """Ask `slot` to stop `batch_id` early; its reply then says "preempted" (or "ok" if it had finished)."""
        s = self._slots[slot]
        if not s.lost and not self._closed:
            s.sock.send(msgpack.packb({"op": "abort", "batch": batch_id}))

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop every worker this pool started (stop message, then SIGTERM, then SIGKILL) and reap it."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for s in self._slots:
            if s.proc is not None and s.proc.poll() is None and s.sock is not None and not s.lost:
                try:
                    s.sock.send(msgpack.packb({"op": "stop"}), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        deadline = time.monotonic() + grace_s
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            running = [s.proc for s in self._slots if s.proc is not None and s.proc.poll() is None]
            if not running:
                break
            if sig is not None:
                for p in running:
                    signal_group(p, sig)
                deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < deadline and any(p.poll() is None for p in running):
                await asyncio.sleep(0.02)
        for s in self._slots:
            for fut, _, _ in s.outstanding.values():
                if not fut.done():
                    fut.set_result(_error_reply(-1, "worker pool closed"))
            s.outstanding.clear()
            if s.reader is not None:
                s.reader.cancel()
            if s.sock is not None:
                s.sock.close(linger=0)
            if s.log is not None:
                s.log.close()
            if s.proc is not None and s.proc.stdout is not None and not s.proc.stdout.closed:
                s.proc.stdout.close()
        if self._ctx is not None:
            self._ctx.term()
        self._resources.close()               # the MPS daemon goes once its clients are gone

    # -- starting local workers ---------------------------------------------------------
    def _gpu_env(self, slot: int) -> dict[str, str]:
        """What a GPU worker's environment needs for its partition: its GPU, its MPS share, its MIG slice.

        Whole GPUs: slot i runs on GPU i. MPS shares and emulated MIG slices fill GPUs in slot order
        (four mps25 slots to a GPU), each with its share of the SMs under one private MPS daemon
        (started here, stopped by close()).
        Real MIG: the existing instance of the profile, by UUID. GPU settings are never changed.
        """
        from omegaconf import OmegaConf

        from harness.gpu.mps import mps_daemon
        from harness.gpu.partitions import find_mig_instance, parse_partition

        part = parse_partition(str(OmegaConf.load(self.config_path).cluster.partition))
        if part.kind == "whole":
            return {"CUDA_VISIBLE_DEVICES": str(slot)}
        if part.kind == "mig":
            return {"CUDA_VISIBLE_DEVICES": find_mig_instance(part.mig_profile)[0]}
        if self._mps is None:
            self._mps = self._resources.enter_context(mps_daemon())
        gpu = slot // part.shares_per_gpu          # shares fill GPUs in slot order: four mps25 slots to a GPU
        return {"CUDA_VISIBLE_DEVICES": str(gpu), **self._mps.client_env(part.mps_percentage, base={})}

    def _spawn(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        for s in self._slots:
            slot_env = {**env, **self._gpu_env(s.index)} if self.executor == "gpu" else env
            cmd = [sys.executable, "-m", "harness.live.worker", "--bind", f"tcp://{self.host}:0",
                   "--slot", str(s.index), "--config", self.config_path, "--executor", self.executor]
            s.log = (open(self.log_dir / f"worker-{s.index}.log", "w+b") if self.log_dir is not None
                     else tempfile.TemporaryFile("w+b"))
            # Own session: a terminal's Ctrl-C reaches the orchestrator only, which stops us in order.
            s.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=s.log,
                                      env=slot_env, start_new_session=True)

    def _wait_ready(self) -> list[str]:
        """Read each worker's ready line (blocking; runs in a thread)."""
        deadline = time.monotonic() + self.start_timeout_s
        sel = selectors.DefaultSelector()
        buffers: dict[int, bytes] = {}
        addresses: dict[int, str] = {}
        for s in self._slots:
            sel.register(s.proc.stdout, selectors.EVENT_READ, s)
            buffers[s.index] = b""
        try:
            while len(addresses) < self.n:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    waiting = [s for s in self._slots if s.index not in addresses]
                    raise HarnessError(f"worker for slot {waiting[0].index} not ready after "
                                       f"{self.start_timeout_s:g} s{_tail(waiting[0].log)}")
                for key, _ in sel.select(min(left, 0.5)):
                    s = key.data
                    chunk = os.read(key.fd, 4096)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        code = s.proc.wait(timeout=5)
                        raise HarnessError(f"worker for slot {s.index} exited with code {code} before it was "
                                           f"ready{_tail(s.log)}")
                    buffers[s.index] += chunk
                    if b"\n" in buffers[s.index]:
                        line = buffers[s.index].split(b"\n", 1)[0]
                        try:
                            addresses[s.index] = json.loads(line)["address"]
                        except (ValueError, KeyError, TypeError):
                            raise HarnessError(f"worker for slot {s.index} printed {line[:200]!r} instead of "
                                               f"its ready line{_tail(s.log)}") from None
                        sel.unregister(key.fileobj)
        finally:
            sel.close()
        for s in self._slots:
            s.proc.stdout.close()       # the worker writes nothing more there
        return [addresses[i] for i in range(self.n)]

    async def _await_pongs(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        for s in self._slots:
            s.sock.send(msgpack.packb({"op": "ping"}))
        while True:
            silent = [s for s in self._slots if s.last_seen == 0.0]
            if not silent:
                return
            dead = [s for s in silent if s.proc is not None and s.proc.poll() is not None]
            if dead:
                s = dead[0]
                raise HarnessError(f"worker for slot {s.index} exited with code {s.proc.returncode} "
                                   f"after it was ready{_tail(s.log)}")
            if time.monotonic() > deadline:
                s = silent[0]
                raise HarnessError(f"worker for slot {s.index} at {s.address} did not answer a ping within "
                                   f"{self.start_timeout_s:g} s; is it running and reachable?{_tail(s.log)}")
            await asyncio.sleep(0.01)

    # -- running ----------------------------------------------------------------
    async def _read(self, s: _Slot) -> None:
        unpack = msgpack.unpackb
        while True:
            data = await s.sock.recv()
            now = time.monotonic()
            s.last_seen = now
            try:
                msg = unpack(data)
                batch = msg.get("batch")
            except Exception:               # garbage from a peer must not stop the reader
                continue
            if batch is None:
                continue                    # pong or stopped
            entry = s.outstanding.pop(batch, None)
            s.last_reply = now
            if entry is not None and not entry[0].done():
                entry[0].set_result(msg)

    async def _watch(self) -> None:
        ping = msgpack.packb({"op": "ping"})
        while True:
            await asyncio.sleep(self.ping_interval_s)
            now = time.monotonic()
            for s in self._slots:
                if s.lost:
                    continue
                if s.proc is not None and s.proc.poll() is not None:
                    self._lose(s, f"worker process exited with code {s.proc.returncode}")
                    continue
                if now - s.last_seen > self.worker_timeout_s:
                    self._lose(s, f"no answer for {now - s.last_seen:.1f} s")
                    continue
                if s.outstanding:
                    # The head of the slot's FIFO has been running since it was sent or since the
                    # batch before it finished, whichever is later.
                    head, (_, sent, expected) = next(iter(s.outstanding.items()))
                    running = now - max(sent, s.last_reply)
                    limit = max(self.worker_timeout_s, HUNG_BATCH_FACTOR * expected)
                    if running > limit:
                        self._lose(s, f"batch {head} running for {running:.1f} s (limit {limit:.1f} s)")
                        continue
                s.sock.send(ping)

    def _lose(self, s: _Slot, reason: str) -> None:
        s.lost = reason
        self.lost[s.index] = reason
        print(f"worker pool: slot {s.index} lost: {reason}", file=sys.stderr, flush=True)
        if s.proc is not None and s.proc.poll() is None:
            signal_group(s.proc, signal.SIGKILL)      # hung: make sure it never answers again
        if s.reader is not None:
            s.reader.cancel()
        if self.on_lost is not None:
            try:
                self.on_lost(s.index, reason)
            except Exception as exc:  # the pool must go on watching the other slots
                print(f"worker pool: on_lost({s.index}) failed: {exc!r}", file=sys.stderr, flush=True)
        for batch, (fut, _, _) in s.outstanding.items():
            if not fut.done():
                fut.set_result(_error_reply(batch, f"slot {s.index} lost: {reason}"))
        s.outstanding.clear()


def _error_reply(batch: int, error: str) -> dict:
    return {"batch": batch, "status": "error", "exec": 0.0, "wait": 0.0, "error": error}


def _tail(log) -> str:
    text = log_tail(log, 2000)
    return f"; its stderr ends with:\n{text}" if text else ""
