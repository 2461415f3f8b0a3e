"""WorkerPool: the worker processes of a run's GPU slots, and the client side of their protocol.

    pool = WorkerPool("run/config.yaml", runtime_cfg, log_dir="run")
    await pool.start({0: spec0, 1: spec1})     # one local worker per slot; ready or HarnessError naming it
    reply = await pool.submit(slot, batch_id, model, size, start_within, expected=l_b)
    pool.abort(slot, batch_id)                 # ask the worker to stop that batch early
    await pool.add(2, spec2)                   # a slot a reconfiguration starts
    await pool.remove(0)                       # ... and one it stopped
    await pool.close()                         # stops and reaps every process it started

With `runtime.workers` (tcp://host:port per slot, started by hand on other
hosts) the pool connects instead of spawning, and slots cannot be added.
`pool.on_lost = lambda slot, reason: ...` is told once per slot lost.

`submit` returns an asyncio future (await it, or add a done callback) that
always resolves to the worker's reply map (or, given `on_reply`, calls it
with the map as the reply is read: no future, no extra turn of the loop --
what the scheduler uses, at tens of thousands of batches a second)
(see harness.live.worker):
{"batch", "status": "ok" | "late" | "error" | "preempted", "exec", "wait",
"error"}; it never raises. Batch ids need only be unique among a slot's
outstanding batches.

A local worker runs its slot's spec: on a whole GPU it sees that device; an
MPS share runs under one private MPS daemon (started here, stopped by
close()) with its thread percentage; a real MIG slot uses an existing MIG
instance by UUID. GPU settings are never changed. Local emulated workers
share a device board (harness.live.board): each has a row there, so a share
runs as slow as its device's other shares are busy when its batch starts.

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
import functools
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
from typing import Callable, Mapping, Sequence

from harness.errors import HarnessError
from harness.live import cores
from harness.live.board import Board, BoardFull
from harness.live.channel import Channel, connect, remove_socket
from harness.processes import log_tail, signal_group

ROOT = Path(__file__).resolve().parents[2]     # the directory holding the harness package
HUNG_BATCH_FACTOR = 10.0
WARM_MARGIN_S = 0.005      # a warm-up ends this long before time 0: the first batch finds the slot free


class _Slot:
    __slots__ = ("index", "spec", "address", "proc", "log", "channel", "outstanding", "last_seen", "last_reply",
                 "lost", "stopping", "gone", "row")

    def __init__(self, index: int, spec):
        self.index = index
        self.spec = spec                      # harness.placement.SlotSpec
        self.address = ""
        self.proc: subprocess.Popen | None = None
        self.log = None                       # the worker's stderr file (local workers)
        self.channel: Channel | None = None
        self.outstanding: dict[int, tuple[Callable, float, float]] = {}  # batch -> (on_reply, sent, expected)
        self.last_seen = 0.0
        self.last_reply = 0.0
        self.lost = ""
        self.stopping = False                 # removed on purpose: not a loss
        self.gone = False                     # its process is stopped and its socket closed
        self.row = -1                         # its row of the pool's device board, if it has one


class WorkerPool:
    """One worker per slot, local (spawned here) or remote (`runtime.workers`); see module doc."""

    def __init__(self, config_path: str | os.PathLike, runtime, *, log_dir: str | os.PathLike | None = None,
                 ping_interval_s: float = 0.5, on_lost: Callable[[int, str], None] | None = None,
                 arenas: Sequence = ()):
        self.config_path = str(config_path)
        self.arenas = list(arenas)            # the ingresses' payload memory (harness.live.arena), for every worker
        self.addresses = list(runtime.workers) or None
        self.executor = runtime.executor
        self.host = runtime.host
        self.worker_timeout_s = runtime.worker_timeout_s
        self.start_timeout_s = runtime.worker_start_timeout_s
        self.ping_interval_s = ping_interval_s
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.on_lost = on_lost
        self.lost: dict[int, str] = {}        # slot -> why it was lost
        self._slots: dict[int, _Slot] = {}
        self._watchdog: asyncio.Task | None = None
        self._closed = False
        self._resources = ExitStack()         # the private MPS daemon of GPU partitions, while it is needed
        self._mps = None
        # What the emulated shares of each device are doing, for local emulated workers (memfd: Linux).
        self.board = (Board.create() if self.executor == "emulated" and self.addresses is None
                      and hasattr(os, "memfd_create") else None)

    # -- public API ---------------------------------------------------------------
    async def start(self, specs: Mapping[int, object]) -> None:
        """Spawn (or reach) a worker for every slot and wait until each answers a ping; HarnessError otherwise."""
        if self.addresses is not None and len(self.addresses) != len(specs):
            raise HarnessError(f"{len(self.addresses)} worker addresses given for {len(specs)} slots; "
                               "give one per slot in runtime.workers")
        try:
            if self.addresses is None:
                await self._launch([_Slot(i, spec) for i, spec in specs.items()])
            else:
                slots = [_Slot(i, spec) for i, spec in specs.items()]
                for s, address in zip(slots, self.addresses):
                    self._slots[s.index] = s
                    await self._connect(s, address)
                await self._await_pongs(slots)
        except BaseException:
            await self.close()
            raise
        self._watchdog = asyncio.ensure_future(self._watch())

    async def add(self, index: int, spec) -> None:
        """Start a worker for a slot a reconfiguration adds (HarnessError if it fails to start)."""
        if self.addresses is not None:
            raise HarnessError("workers started by hand (runtime.workers) cannot be reconfigured; "
                               "let the run start its workers")
        old = self._slots.get(index)
        if old is not None and not old.lost and not old.stopping:
            raise HarnessError(f"slot {index} already has a worker")
        await self._launch([_Slot(index, spec)])

    async def remove(self, index: int, grace_s: float = 2.0) -> None:
        """Stop the worker of a slot a reconfiguration removed (what it still runs fails)."""
        s = self._slots.get(index)
        if s is None or s.lost or s.stopping:
            return
        s.stopping = True
        await self._stop([s], grace_s)
        self._release(s, "slot removed by a reconfiguration")

    def kill(self, slot: int) -> None:
        """Kill the slot's worker without telling on_lost (the caller already recorded the loss)."""
        s = self._slots.get(slot)
        if s is None or s.lost:
            return
        s.lost = "killed on purpose"
        if s.proc is not None and s.proc.poll() is None:
            signal_group(s.proc, signal.SIGKILL)
        self._release(s, f"slot {slot} killed on purpose")

    def alive(self, slot: int) -> bool:
        """The slot has a worker taking batches."""
        s = self._slots.get(slot)
        return s is not None and not s.lost and not s.stopping

    def submit(self, slot: int, batch_id: int, model: str, size: int, start_within: float | None,
               payload: list | None = None, expected: float = 0.0, stage: int | None = None,
               rows: list | None = None, on_reply: Callable[[dict], None] | None = None,
               through: int | None = None, busy: float | None = None) -> asyncio.Future | None:
        """Send a batch to `slot`; the future resolves to the worker's reply (never raises).

        `start_within`: seconds from now by which the batch must start, else
        the worker discards it ("late"); None: no limit. `expected`: its
        profiled time, for hang detection. `payload`: where each task's tensor
        is, [[ingress, arena slot, offset, bytes] or None, ...] (the worker reads
        them from the arenas). `stage`: the model's stage to run
        (None: all of it); `rows`: for a stage after the first, where each
        task's activations are: [(batch, row), ...] of earlier stages' batches;
        `through`: the last stage to run, stages `stage`..`through` back to
        back (a chain; None: `stage` alone). `busy`: the fraction of the rest of the
        slot's device expected at work when the batch starts, which an emulated
        share runs slower by (None: as profiled, beside busy siblings).
        """
        s = self._slots.get(slot)
        fut = None
        if on_reply is None:
            fut = asyncio.get_running_loop().create_future()
            on_reply = functools.partial(_settle, fut)
        if s is None or s.lost or s.stopping or self._closed:
            why = (f"slot {slot} lost: {s.lost}" if s is not None and s.lost else
                   "worker pool closed" if self._closed else f"slot {slot} has no worker")
            # Never from inside submit: the caller (a policy dispatching) must not be re-entered.
            asyncio.get_running_loop().call_soon(on_reply, _error_reply(batch_id, why))
            return fut
        s.outstanding[batch_id] = (on_reply, time.monotonic(), expected)
        s.channel.send({"op": "run", "batch": batch_id, "model": model, "size": size,
                        "start_within": start_within, "payload": payload, "stage": stage, "rows": rows,
                        "through": through, "busy": busy})
        return fut

    def warm_before(self, epoch: float, seconds: float) -> None:
        """Have every worker run its models back to back over the `seconds` before `epoch` (unix time), ending
        just before it: each graph's first replay, and a batch after the GPU idled while the load generator
        started, would run slow. Call it on the pool's loop; the workers' logs say what each ran."""
        def send() -> None:
            left = epoch - WARM_MARGIN_S - time.time()
            for slot in list(self._slots):
                self._tell(slot, {"op": "warm", "seconds": max(0.0, left)})

        if seconds > 0:
            asyncio.get_running_loop().call_later(max(0.0, epoch - seconds - time.time()), send)

    def free(self, slot: int, rows: list) -> None:
        """Tell `slot` that these (batch, row) activations of earlier stages will not be needed."""
        self._tell(slot, {"op": "free", "rows": rows})

    def stop_at_boundary(self, slot: int, batch_id: int) -> None:
        """Ask `slot` to stop the chain `batch_id` at its next stage boundary; its reply says where it stopped."""
        self._tell(slot, {"op": "cut", "batch": batch_id})

    def abort(self, slot: int, batch_id: int) -> None:
        """Ask `slot` to stop `batch_id` early; its reply then says "preempted" (or "ok" if it had finished)."""
        self._tell(slot, {"op": "abort", "batch": batch_id})

    def _tell(self, slot: int, msg: dict) -> None:
        """A message that needs no answer, to a slot whose worker still takes batches (else nobody to tell)."""
        s = self._slots.get(slot)
        if s is not None and not s.lost and not s.stopping and not self._closed:
            s.channel.send(msg)

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop every worker this pool started (stop message, then SIGTERM, then SIGKILL) and reap it."""
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        slots = list(self._slots.values())
        await self._stop(slots, grace_s)
        for s in slots:
            self._release(s, "worker pool closed")
        self._resources.close()               # the MPS daemon goes once its clients are gone
        if self.board is not None:
            self.board.close()

    # -- starting and stopping workers ----------------------------------------------------
    def _gpu_env(self, spec) -> dict[str, str]:
        """What a GPU worker's environment needs for its slot: its GPU, its MPS share, its MIG slice."""
        from harness.gpu.mps import mps_daemon
        from harness.gpu.partitions import find_mig_instance, parse_partition

        part = parse_partition(spec.partition)
        if part.kind == "whole":
            return {"CUDA_VISIBLE_DEVICES": str(spec.device)}
        if part.kind == "mig":
            return {"CUDA_VISIBLE_DEVICES": find_mig_instance(part.mig_profile)[0]}
        if self._mps is None:
            self._mps = self._resources.enter_context(mps_daemon())
        return {"CUDA_VISIBLE_DEVICES": str(spec.device), **self._mps.client_env(part.mps_percentage, base={})}

    async def _launch(self, slots: list[_Slot]) -> None:
        """Spawn local workers for `slots`, read their ready lines, connect, wait for their pongs."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        for s in slots:
            self._slots[s.index] = s
            slot_env = {**env, **self._gpu_env(s.spec)} if self.executor == "gpu" else env
            spec = json.dumps({"gpu_type": s.spec.gpu_type, "partition": s.spec.partition,
                               "device": s.spec.device, "models": sorted(s.spec.models)})
            cmd = [sys.executable, "-m", "harness.live.worker", "--bind", f"tcp://{self.host}:0",
                   "--slot", str(s.index), "--config", self.config_path, "--executor", self.executor,
                   "--spec", spec]
            if self.arenas:
                cmd += ["--arenas", ",".join(arena.spec for arena in self.arenas)]
            fds = [arena.fd for arena in self.arenas]
            if self.board is not None:
                try:
                    s.row = self.board.take(s.spec.device, s.spec.share)
                except BoardFull as exc:
                    raise HarnessError(f"cannot start a worker for slot {s.index}: {exc}") from None
                cmd += ["--board", f"{self.board.spec}:{s.row}"]
                fds.append(self.board.fd)
            s.log = (open(self.log_dir / f"worker-{s.index}.log", "a+b") if self.log_dir is not None
                     else tempfile.TemporaryFile("w+b"))
            # Own session: a terminal's Ctrl-C reaches the orchestrator only, which stops us in order.
            s.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=s.log,
                                      env=slot_env, start_new_session=True,
                                      pass_fds=fds)
            cores.keep_off(s.proc.pid)           # off the scheduler's core, when it has one of its own
        addresses = await asyncio.get_running_loop().run_in_executor(None, self._wait_ready, slots)
        for s in slots:
            await self._connect(s, addresses[s.index])
        await self._await_pongs(slots)

    async def _connect(self, s: _Slot, address: str) -> None:
        s.address = address
        s.last_seen = 0.0
        try:
            # (partial, not a lambda: one Python call per reply, not two)
            s.channel = await connect(address, functools.partial(self._on_message, s),
                                      lambda channel, s=s: self._on_closed(s))
        except (OSError, ValueError) as exc:
            raise HarnessError(f"cannot reach the worker of slot {s.index} at {address}: {exc}{_tail(s.log)}") \
                from None

    def _wait_ready(self, slots: list[_Slot]) -> dict[int, str]:
        """Read each worker's ready line (blocking; runs in a thread)."""
        deadline = time.monotonic() + self.start_timeout_s
        sel = selectors.DefaultSelector()
        buffers: dict[int, bytes] = {}
        addresses: dict[int, str] = {}
        for s in slots:
            sel.register(s.proc.stdout, selectors.EVENT_READ, s)
            buffers[s.index] = b""
        try:
            while len(addresses) < len(slots):
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    waiting = [s for s in slots if s.index not in addresses]
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
        for s in slots:
            s.proc.stdout.close()       # the worker writes nothing more there
        return addresses

    async def _await_pongs(self, slots: list[_Slot]) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        for s in slots:
            s.channel.send({"op": "ping"})
        while True:
            silent = [s for s in slots if s.last_seen == 0.0]
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

    async def _stop(self, slots: list[_Slot], grace_s: float) -> None:
        for s in slots:
            if s.proc is not None and s.proc.poll() is None and s.channel is not None and not s.lost:
                s.channel.send({"op": "stop"})
        deadline = time.monotonic() + grace_s
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            running = [s.proc for s in slots if s.proc is not None and s.proc.poll() is None]
            if not running:
                break
            if sig is not None:
                for p in running:
                    signal_group(p, sig)
                deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < deadline and any(p.poll() is None for p in running):
                await asyncio.sleep(0.02)

    def _release(self, s: _Slot, why: str) -> None:
        s.gone = True
        if s.row >= 0:
            if s.proc is None or s.proc.poll() is not None:
                self.board.give_back(s.row)          # exited: nobody writes the row any more
                s.row = -1
            else:
                self.board.hold(s.row, 0.0)          # being killed: its share works no more
        outstanding, s.outstanding = s.outstanding, {}
        for on_reply, _, _ in outstanding.values():     # later: whoever released the slot is not re-entered
            asyncio.get_running_loop().call_soon(on_reply, _error_reply(-1, why))
        if s.channel is not None:
            s.channel.close()
        if s.proc is not None and s.address.startswith("unix:"):
            remove_socket(s.address)                 # a worker killed outright leaves its socket behind
        if s.log is not None:
            s.log.close()
        if s.proc is not None and s.proc.stdout is not None and not s.proc.stdout.closed:
            s.proc.stdout.close()

    # -- running ----------------------------------------------------------------
    def _on_message(self, s: _Slot, channel: Channel, msg) -> None:
        now = time.monotonic()
        s.last_seen = now
        batch = msg.get("batch") if isinstance(msg, dict) else None
        if batch is None:
            return                          # pong or stopped (or garbage from a peer: ignored)
        entry = s.outstanding.pop(batch, None)
        s.last_reply = now
        if entry is not None:
            entry[0](msg)

    def _on_closed(self, s: _Slot) -> None:
        """The worker's end of the connection closed: it died (its process), unless we stopped it."""
        if not (s.lost or s.stopping or self._closed):
            code = None
            if s.proc is not None:
                try:
                    code = s.proc.wait(timeout=0.2)     # it is exiting: its code says how
                except subprocess.TimeoutExpired:
                    pass
            self._lose(s, f"worker process exited with code {code}" if code is not None
                       else "its connection closed")

    async def _watch(self) -> None:
        ping = {"op": "ping"}
        while True:
            await asyncio.sleep(self.ping_interval_s)
            now = time.monotonic()
            for s in list(self._slots.values()):
                if s.lost or s.stopping or s.channel is None or s.last_seen == 0.0:
                    continue                  # (not answered its first ping yet: starting, _await_pongs watches)
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
                s.channel.send(ping)

    def _lose(self, s: _Slot, reason: str) -> None:
        s.lost = reason
        self.lost[s.index] = reason
        print(f"worker pool: slot {s.index} lost: {reason}", file=sys.stderr, flush=True)
        if s.proc is not None and s.proc.poll() is None:
            signal_group(s.proc, signal.SIGKILL)      # hung: make sure it never answers again
        if s.channel is not None:
            s.channel.close()
        if self.on_lost is not None:
            try:
                self.on_lost(s.index, reason)
            except Exception as exc:  # the pool must go on watching the other slots
                print(f"worker pool: on_lost({s.index}) failed: {exc!r}", file=sys.stderr, flush=True)
        outstanding, s.outstanding = s.outstanding, {}
        for batch, (on_reply, _, _) in outstanding.items():
            asyncio.get_running_loop().call_soon(on_reply, _error_reply(batch, f"slot {s.index} lost: {reason}"))


def _settle(fut: asyncio.Future, reply: dict) -> None:
    if not fut.done():
        fut.set_result(reply)


def _error_reply(batch: int, error: str) -> dict:
    return {"batch": batch, "status": "error", "exec": 0.0, "wait": 0.0, "error": error}


def _tail(log) -> str:
    text = log_tail(log, 2000)
    return f"; its stderr ends with:\n{text}" if text else ""
