"""A worker process: one GPU slot, the models it holds, and a FIFO of batches.

    python -m harness.live.worker --slot 0 --config run/config.yaml [--bind unix: | tcp://0.0.0.0:5555]

prints one line `{"ready": true, "address": "unix:/tmp/.../w.sock", ...}` on
stdout once bound (a private Unix socket by default; port 0 of a tcp://
address picks a free port); everything else goes to stderr. Threads:

- the main thread accepts connections (the pool's; one per client);
- a reader per connection timestamps each arriving batch and queues it,
  answers pings at once (so a long batch never looks like a hang) and
  flags aborts;
- the executor thread runs the queued batches one at a time, in arrival
  order, discarding a batch as "late" if the batches before it held it
  longer than its `start_within`, and answers on the batch's connection.

Messages are msgpack maps in length-prefixed frames (harness.live.channel;
the client is harness.live.workers.WorkerPool):

    {"op": "run", "batch": int, "model": str, "size": int, "start_within": float | None,
     "payload": [[ingress, arena slot, offset, bytes] or None, ...] | None,
     "stage": int | None, "rows": [[batch, row], ...] | None, "through": int | None}
        -> {"batch", "status": "ok" | "late" | "error" | "preempted",
            "exec": seconds executing, "wait": seconds queued here, "error": str,
            "reached": the last stage run, where a chain was cut short}
    {"op": "abort", "batch": int}   stop that batch: one not started never starts; one running stops early
                                    (reply "preempted") if the executor can, else runs to its end
    {"op": "cut", "batch": int}     stop that chain of stages at its next stage boundary
    {"op": "warm", "seconds": float} run the slot's models back to back for that long, a batch at a time,
                                    giving way at once to any batch that comes -> {"warmed": slot,
                                    "batches": int, "seconds": float}; the pool sends it just before a
                                    run's time 0 (a graph's first replay, and a batch after an idle, run slow)
    {"op": "ping"}                  -> {"pong": slot}
    {"op": "stop"}                  -> {"stopped": slot}, then the process exits

With `through`, a batch is a chain: stages `stage`..`through` of the model
run back to back, each reading the rows the one before left, with no round
trip to the scheduler between them; a cut ends it at the next boundary, and
its activations stay held for a later batch, as after any stage.

`payload` says where each task's tensor is in the ingresses' shared memory
(harness.live.arena; the worker maps the arenas it is given with
--arenas); the executor gets the views, one per task, and the time it takes
to read them counts as execution. `start_within` counts from the batch's arrival here (the transfer from the
frontend, tens of microseconds on one host, is not included) to the end of the batch before it; the
executor thread's own wake-up is not the queue's doing and does not count. The worker
exits by itself when the process that started it dies (its parent pid
changes), so an orchestrator killed with SIGKILL leaves nothing behind.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import queue
import socket
import sys
import threading
import time
from typing import ClassVar, Mapping

import numpy as np

from harness.core import ABORT
from harness.errors import HarnessError
from harness.live.arena import Arena, gather
from harness.live.board import Board
from harness.live.channel import BlockingChannel, listen_socket, remove_socket
from harness.live.protocol import IMAGE_BYTES
from harness.profiles import LatencyCurve

EXECUTORS = ("emulated", "gpu")
PARENT_CHECK_S = 0.2
MIN_WARM_STEP_S = 0.001


class Aborted(Exception):
    """The running batch was stopped by an abort request."""


class Executor:
    """Runs one batch at a time on the slot's device; `run` blocks until the batch is done.

    An executor that can stop a batch early sets `abortable = True` and
    raises Aborted from `run` soon after `abort` is set. One that serves a
    model in stages implements `run_stage`: stage 0 reads the payload, a
    later stage reads the activations earlier stages left, one row per task
    as `rows` [(batch, row), ...] says, and keeps its own under `batch`
    (until the last stage); `free` drops rows no stage will take.
    """

    abortable: ClassVar[bool] = False
    # `payload`, where given: the batch's input tensors, one buffer per task in batch order (None where a
    # task brought none), together `size` items.
    # `busy`: the fraction of the rest of the device at work when the batch starts (None: unknown). A real
    # GPU has its own siblings; an emulated one runs slower by it (see `begin`).
    busy: float | None = None

    def begin(self, expected_busy: float | None) -> None:
        """A batch starts; `expected_busy` is how busy the scheduler expected the rest of the device."""
        self.busy = expected_busy

    def run(self, model: str, size: int, payload: bytes | None,
            abort: threading.Event | None = None) -> None:
        raise NotImplementedError

    def run_stage(self, model: str, stage: int, batch: int, size: int, payload: bytes | None,
                  rows: list | None, abort: threading.Event | None = None) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not run models in stages")

    def free(self, rows: list) -> None:
        pass

    def warm_steps(self) -> list:
        """Callables that each run one batch to its end, for a warm-up (none: nothing to warm)."""
        return []


class EmulatedExecutor(Executor):
    """Reproduces the profiled latency: sleeps, then busy-waits the last `spin` seconds.

    A share's latency is its profile's beside `busy` of the rest of the device
    at work (LatencyCurve.beside; the busy-sibling profile where not told).
    With a device board (harness.live.board) the worker reads `busy`, and the
    batch its working siblings run, off it when each batch starts, and posts
    there until when it runs and at what size; without one (a worker on
    another host) it runs as busy as the scheduler expected.

    With `noise`, each batch takes the profile's mean plus Gaussian noise of
    its std, clipped at half the mean (as the sim runtime draws it). A tensor
    payload is checked (whole images, no more than the batch holds) but not
    copied anywhere: an emulated GPU has no memory to move it to, and its
    profile, measured on static inputs, holds no transfer time.
    """

    spin = 0.0003

    def __init__(self, curves: Mapping[str, LatencyCurve], noise: bool = False, seed: int | list = 0,
                 board: Board | None = None, row: int = -1, abortable: bool = False):
        self.curves = dict(curves)
        # Whether a preempted batch stops at once (runtime.preemption=abort) or, as on the real GPU whose
        # CUDA graphs cannot stop part-way, runs to its end (finish).
        self.abortable = abortable
        self.noise = noise
        self._rng = np.random.default_rng(seed)
        self.board, self.row = board, row

    # The share-weighted mean batch the working siblings run (None: unknown), read off the board.
    sibling_batch: float | None = None

    def begin(self, expected_busy: float | None) -> None:
        if self.board is None:
            self.busy = expected_busy
        else:
            self.busy, self.sibling_batch = self.board.beside(self.row)

    def duration(self, model: str, size: int) -> float:
        curve = self.curves.get(model)
        if curve is None:
            raise ValueError(f"model {model!r} is not held here (held: {', '.join(sorted(self.curves))})")
        return self._draw(curve, size, model)

    def _draw(self, curve: LatencyCurve, size: int, what: str) -> float:
        if not 1 <= size <= curve.max_batch:
            raise ValueError(f"batch of {size} outside the profiled sizes 1..{curve.max_batch} of {what}")
        mean = curve.mean[size] if self.busy is None else curve.beside(size, self.busy, self.sibling_batch)
        if self.noise and curve.std[size] > 0:
            return max(0.5 * mean, mean + curve.std[size] * float(self._rng.standard_normal()))
        return mean

    def run_stage(self, model, stage, batch, size, payload, rows, abort=None):
        curve = self.curves.get(model)
        if curve is None or not 0 <= stage < len(curve.stages):
            raise ValueError(f"model {model!r} has no stage {stage} here")
        if payload is not None and stage == 0:
            _check_images(payload, size)
        stage_curve = curve.stages[stage]
        self._sleep(self._draw(stage_curve, size, f"{model} stage {stage}"), abort, stage_curve.padded(size))

    def run(self, model, size, payload, abort=None):
        if payload is not None:
            _check_images(payload, size)
        self._sleep(self.duration(model, size), abort, self.curves[model].padded(size))

    def warm_steps(self) -> list:
        # A batch of each model: the host path the run's batches take (an emulated GPU has no graphs to replay
        # first), so both executors start a run the same way. The largest, whose busy-wait is the least of its
        # time; a model emulated as (nearly) instant is left out, whose batches back to back would only spin.
        return [functools.partial(self.run, model, curve.max_batch, None) for model, curve in self.curves.items()
                if curve.mean[curve.max_batch] >= MIN_WARM_STEP_S]

    def _sleep(self, seconds: float, abort: threading.Event | None, batch: int) -> None:
        end = time.perf_counter() + seconds
        if self.board is not None:
            self.board.hold(self.row, time.monotonic() + seconds, batch)     # its siblings read both
        try:
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
        except Aborted:
            if self.board is not None:
                self.board.hold(self.row, time.monotonic())      # stopped early: its share works no more
            raise


def warm_up(steps: list, deadline: float, interrupted) -> int:
    """Run `steps` (callables, a batch each) round and round until `deadline` (perf_counter) or until
    `interrupted()`; returns how many ran. A step starts only if it ends in time by its last duration (the
    longest so far where it has none yet; else the shortest step, where that fits), so the device idles at
    most about one short step before the deadline."""
    perf = time.perf_counter
    took = [math.nan] * len(steps)           # each step's last duration (nan: not run yet)
    longest = 0.0
    done = 0
    while steps and not interrupted():
        now = perf()
        i = done % len(steps)
        if now + (longest if math.isnan(took[i]) else took[i]) > deadline:
            i = min(range(len(steps)), key=lambda k: math.inf if math.isnan(took[k]) else took[k])
            if not now + took[i] <= deadline:            # (nan: no step has run; none is known to fit)
                break
        steps[i]()
        took[i] = perf() - now
        longest = max(longest, took[i])
        done += 1
    return done


def _check_images(views: list, size: int) -> None:
    """A batch's tensor views hold whole images, at most one per item of the batch (ValueError if not)."""
    items = 0
    for view in views:
        if view is not None:
            if len(view) % IMAGE_BYTES:
                raise ValueError(f"a tensor payload of {len(view)} bytes is not whole {IMAGE_BYTES}-byte images")
            items += len(view) // IMAGE_BYTES
        else:
            items += 1
    if items > size:
        raise ValueError(f"the payload holds {items} images for a batch of {size}")


class _Job:
    __slots__ = ("channel", "batch", "model", "size", "start_within", "payload", "stage", "rows", "through",
                 "busy", "t_arrival", "abort", "cut")

    def __init__(self, channel: BlockingChannel, msg: dict, t_arrival: float):
        self.channel = channel
        self.batch = msg["batch"]
        self.model = msg["model"]
        self.size = msg["size"]
        self.start_within = msg.get("start_within")
        self.payload = msg.get("payload")
        self.stage = msg.get("stage")
        self.rows = msg.get("rows")
        self.through = msg.get("through")
        self.busy = msg.get("busy")
        self.t_arrival = t_arrival
        self.abort = threading.Event()
        self.cut = False                 # set by a cut message; read at each stage boundary of a chain


class _Free:
    """Activations of earlier stages that no later stage will take (their tasks were given up)."""

    __slots__ = ("rows",)

    def __init__(self, rows: list):
        self.rows = rows


class _Warm:
    """Run the executor's warm-up steps until `deadline` (perf_counter), then answer on `channel`."""

    __slots__ = ("channel", "deadline")

    def __init__(self, channel: BlockingChannel, deadline: float):
        self.channel, self.deadline = channel, deadline


class Worker:
    """The listening socket, a reader thread per client, and the executor thread of one slot (module doc)."""

    def __init__(self, slot: int, executor: Executor, bind: str = "unix:", parent_pid: int | None = None,
                 arenas: list[Arena] = ()):
        self.slot = slot
        self.executor = executor
        self.arenas = list(arenas)
        pin = getattr(executor, "pin_host_memory", None)
        for arena in self.arenas if pin is not None else ():
            pin(arena.buffer)                    # a GPU copies from pinned memory by DMA, without staging
        self.parent_pid = parent_pid
        self._listener, self.address = listen_socket(bind)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._jobs: dict[tuple[int, int], _Job] = {}    # (client, batch) -> queued or running, for aborts
        self._stopped = threading.Event()
        self._why = ""
        self._thread = threading.Thread(target=self._execute_loop, name=f"executor-{slot}", daemon=True)

    def serve(self) -> str:
        """Run until a stop message or the parent's death; returns why it stopped."""
        self._thread.start()
        self._listener.settimeout(PARENT_CHECK_S)
        try:
            while not self._stopped.is_set():
                try:
                    conn, _ = self._listener.accept()
                except socket.timeout:
                    if self.parent_pid is not None and os.getppid() != self.parent_pid:
                        return "parent process died"
                    continue
                conn.settimeout(None)
                threading.Thread(target=self._read, args=(BlockingChannel(conn),), daemon=True).start()
            return self._why
        except BaseException:
            self.close()
            raise

    def _read(self, channel: BlockingChannel) -> None:
        """One client's messages: batches queued (timestamped on arrival), pings answered at once (so a long
        batch never looks like a hang), aborts flagged, stop obeyed."""
        client = id(channel)
        perf = time.perf_counter
        while True:
            msg = channel.recv()
            if msg is None:
                channel.close()
                return
            t = perf()
            op = msg.get("op") if isinstance(msg, dict) else None
            if op == "run":
                try:
                    job = _Job(channel, msg, t)
                except (KeyError, TypeError) as exc:
                    channel.send({"batch": msg.get("batch", -1), "status": "error", "exec": 0.0, "wait": 0.0,
                                  "error": f"bad run message: missing {exc}"})
                    continue
                self._jobs[(client, job.batch)] = job
                self._queue.put(job)
            elif op == "ping":
                channel.send({"pong": self.slot})
            elif op == "abort":
                job = self._jobs.get((client, msg.get("batch")))
                if job is not None:
                    job.abort.set()
            elif op == "cut":
                job = self._jobs.get((client, msg.get("batch")))
                if job is not None:
                    job.cut = True
            elif op == "free":
                self._queue.put(_Free(msg.get("rows") or []))      # after what is queued: the executor's own
            elif op == "warm":
                seconds = msg.get("seconds")
                if not isinstance(seconds, (int, float)) or not seconds >= 0:
                    channel.send({"status": "error", "error": f"warm needs seconds >= 0 (got {seconds!r})"})
                else:
                    self._queue.put(_Warm(channel, t + seconds))
            elif op == "stop":
                channel.send({"stopped": self.slot})
                self._why = "stop message"
                self._stopped.set()
                return
            else:
                channel.send({"status": "error", "error": f"unknown op {op!r}" if op else "bad message"})

    def close(self, timeout: float = 1.0) -> None:
        """Stop the executor (aborting its batch if it can) and release the socket; bounded by `timeout`
        even if the executor cannot abort its batch."""
        for job in list(self._jobs.values()):
            job.abort.set()
        self._queue.put(None)
        self._thread.join(timeout)
        self._listener.close()
        if self.address.startswith("unix:"):
            remove_socket(self.address)

    def _execute_loop(self) -> None:
        run, perf = self.executor.run, time.perf_counter
        abortable = self.executor.abortable
        idle_since = 0.0                         # when the executor finished its last batch
        while True:
            job = self._queue.get()
            if job is None:
                return
            if isinstance(job, _Free):
                self.executor.free(job.rows)
                continue
            if isinstance(job, _Warm):
                self._warm(job)
                idle_since = perf()
                continue
            start = perf()
            wait = start - job.t_arrival
            reply = {"batch": job.batch, "status": "ok", "exec": 0.0, "wait": wait, "error": ""}
            if job.abort.is_set():
                reply["status"] = "preempted"
            elif job.start_within is not None and idle_since - job.t_arrival > job.start_within:
                # Late: it waited longer than it could behind the batches before it. The hand-off to this
                # thread after it arrived or after the last batch ended (the host's scheduling, not the
                # slot's queue: up to a millisecond on a loaded 2-core host) does not count.
                reply["status"] = "late"
            else:
                try:
                    payload = gather(self.arenas, job.payload) if job.payload else None
                    self.executor.begin(job.busy)
                    if job.stage is None:
                        run(job.model, job.size, payload, job.abort if abortable else None)
                    elif job.through is None or job.through == job.stage:
                        self.executor.run_stage(job.model, job.stage, job.batch, job.size, payload, job.rows,
                                                job.abort if abortable else None)
                    else:
                        reached = self._run_chain(job, payload, abortable)
                        if reached < job.through:
                            reply["reached"] = reached
                except Aborted:
                    reply["status"] = "preempted"
                except Exception as exc:  # a failing batch is reported, the slot goes on
                    reply["status"], reply["error"] = "error", f"{type(exc).__name__}: {exc}"
                reply["exec"] = perf() - start
            self._jobs.pop((id(job.channel), job.batch), None)
            idle_since = perf()
            job.channel.send(reply)              # a client gone (stopping) is nobody to answer


    def _warm(self, job: _Warm) -> None:
        start, reply = time.perf_counter(), {"warmed": self.slot}
        try:
            reply["batches"] = warm_up(self.executor.warm_steps(), job.deadline, lambda: not self._queue.empty())
            said = f"warmed up on {reply['batches']} batches"
        except Exception as exc:  # a warm-up that fails says so and leaves the slot to its batches
            reply["error"] = said = f"warm-up failed: {type(exc).__name__}: {exc}"
        reply["seconds"] = time.perf_counter() - start
        print(f"worker slot {self.slot}: {said} in {reply['seconds']:.3f} s "
              f"({max(0.0, job.deadline - time.perf_counter()) * 1e3:.1f} ms before the time asked)",
              file=sys.stderr, flush=True)
        job.channel.send(reply)

    def _run_chain(self, job: _Job, payload, abortable: bool) -> int:
        """Stages job.stage..job.through back to back, each reading what the one before left under the
        batch's own id; returns the last stage run (earlier than job.through where a cut came)."""
        run_stage, abort = self.executor.run_stage, job.abort if abortable else None
        own = [(job.batch, row) for row in range(job.size)]
        stage = job.stage
        run_stage(job.model, stage, job.batch, job.size, payload, job.rows, abort)
        while stage < job.through and not job.cut:
            stage += 1
            run_stage(job.model, stage, job.batch, job.size, None, own, abort)
        return stage


def build_executor(kind: str, config_path: str, slot: int, spec: dict | None = None,
                   board: Board | None = None, row: int = -1) -> Executor:
    """The executor of `slot`: its spec (gpu_type, partition, device, models) as given by the process
    that started it, or else the slot of that index in the run's configured cluster. An emulated one
    keeps row `row` of the device `board`, where given."""
    from harness.assembly import load
    from harness.placement import SlotSpec

    assembly = load(config_path)
    if spec is None:
        slots = assembly.full_placement.slots
        if not 0 <= slot < len(slots):
            raise HarnessError(f"the run's cluster has {len(slots)} slots; there is no slot {slot}")
        slot_spec = slots[slot]
    else:
        slot_spec = SlotSpec(spec["gpu_type"], spec["partition"], int(spec["device"]), frozenset(spec["models"]))
    curves = assembly.curves_of(slot_spec)
    if kind == "gpu":
        try:
            from harness.gpu.executor import GpuExecutor
        except ImportError as exc:
            raise HarnessError(f"executor 'gpu' needs torch and torchvision ({exc}); "
                               "pip install -e '.[gpu]' on a machine with a CUDA GPU") from None
        from harness.profiles import load_profile, profile_path

        # The slot's GPU is device 0 of what CUDA_VISIBLE_DEVICES shows it (the pool sets that per slot).
        profile = load_profile(profile_path(slot_spec.gpu_type, slot_spec.partition))
        # A graph at each profiled size: a batch in between runs padded on the next, as the profile assumes.
        sizes = sorted({b for c in curves.values() for b in c.sizes})
        # Stage graphs where the profile has stage latencies: only there can a policy dispatch a stage.
        return GpuExecutor(sorted(slot_spec.models), device=0, batch_sizes=sizes,
                           channels_last=profile.provenance.get("channels_last"),
                           stages=any(curve.stages for curve in curves.values()))
    if kind != "emulated":
        raise HarnessError(f"unknown executor '{kind}'; use --executor emulated or gpu")
    return EmulatedExecutor(curves, noise=assembly.cfg.runtime.noise, seed=[assembly.cfg.seeds.runtime, slot],
                            board=board, row=row, abortable=assembly.cfg.runtime.preemption == ABORT)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.live.worker", description=__doc__.split("\n")[0])
    ap.add_argument("--bind", default="unix:", help="where to listen: unix: (a private Unix socket, the default) or "
                                                    "tcp://host:port for a pool on another host (port 0: any free)")
    ap.add_argument("--slot", type=int, required=True, help="index of the GPU slot this worker serves")
    ap.add_argument("--config", required=True, help="the run's resolved config.yaml (cluster, models, runtime)")
    ap.add_argument("--executor", choices=EXECUTORS, default="emulated")
    ap.add_argument("--spec", default=None, help="the slot as JSON: gpu_type, partition, device, models "
                                                 "(default: slot --slot of the run's configured cluster)")
    ap.add_argument("--arenas", default="", help="the ingresses' payload memory: fd:slot_bytes:slots,... "
                                                  "(inherited file descriptors; the scheduler passes them)")
    ap.add_argument("--board", default="", help="the emulated devices' board and this worker's row there: "
                                                 "fd:rows:row (an inherited file descriptor; the pool passes it)")
    ap.add_argument("--orphan-ok", action="store_true",
                    help="keep running when the parent process dies (for workers started by hand on other hosts)")
    args = ap.parse_args(argv)
    parent = None if args.orphan_ok else os.getppid()
    started = time.perf_counter()
    try:
        spec = json.loads(args.spec) if args.spec else None
        board, row = None, -1
        if args.board:
            board_spec, _, row_text = args.board.rpartition(":")
            board, row = Board.attach(board_spec), int(row_text)
            if not 0 <= row < board.rows:
                raise ValueError(f"row {row} is outside the device board's {board.rows} rows")
        executor = build_executor(args.executor, args.config, args.slot, spec, board, row)
    except (HarnessError, OSError, ValueError, KeyError, AttributeError, RuntimeError, ImportError) as exc:
        print(f"error: slot {args.slot}: {exc}", file=sys.stderr)
        return 2
    # Where a slot's start goes (on a GPU most of a run's time before it serves), in the worker's log.
    loads = getattr(executor, "load_seconds", {})
    print(f"worker slot {args.slot}: {args.executor} executor built in {time.perf_counter() - started:.1f} s"
          + "".join(f"; {m} warm-up {w:.1f} s, capture {c:.1f} s" for m, (w, c) in loads.items()),
          file=sys.stderr, flush=True)
    try:
        arenas = [Arena.attach(spec) for spec in args.arenas.split(",") if spec]
        worker = Worker(args.slot, executor, args.bind, parent_pid=parent, arenas=arenas)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: slot {args.slot}: cannot start (listening at {args.bind}, payload arenas "
              f"{args.arenas or 'none'}): {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"ready": True, "address": worker.address, "slot": args.slot, "pid": os.getpid()}), flush=True)
    why = worker.serve()
    worker.close()
    print(f"worker slot {args.slot}: exiting ({why})", file=sys.stderr, flush=True)
    # An executor that could not abort its batch may still hold a thread: do not wait for it.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
