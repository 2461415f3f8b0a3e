"""The scheduler process: the policy on compact request metadata, behind one or more ingress processes.

    python -m harness.live.scheduler --config run/config.yaml --epoch 1760000000.0 --out run/ \
        [--host 127.0.0.1] [--port 0] [--ingresses N] [--exit-with-parent]

starts one worker per slot (harness.live.workers.WorkerPool), starts N
ingress processes (harness.live.ingress) that share one HTTP port and
forward arrivals here in batches (harness.live.wire), and prints one line
`{"ready": true, "url": "http://127.0.0.1:PORT", "pid": ..., "ingresses": [pids]}`
on stdout; logs go to stderr. --epoch is when its processes started
counting time. It then reads one line `{"start": E}` on stdin: E (unix
seconds) is the run's time 0, when the load's schedule starts. From then on
its clock is the run clock, so every record it writes is on the run's one
clock; it builds the policy through the run's assembly (harness.assembly:
the same construction as the sim, the autoscaler included) and starts it at
run time 0, as the sim does (or at the first arrival, if that comes first).
Requests wait for the start line.

The policy runs on the precise event loop (harness.live.loop): its timers
fire within tens of microseconds, and no HTTP parsing competes with them.

On SIGTERM or SIGINT (or, with --exit-with-parent, when its parent dies, or
when an ingress dies) it stops, records the requests still pending as
"timeout" with reason "unresolved at shutdown" (the sim runtime's word for
what its drain leaves unresolved), answers their HTTP calls 504 through the
ingresses, writes server_requests.parquet, the ledger's tables as
server_<table>.parquet (this process's clock) and server.json (stop reason,
failures, timer lag, policy errors, ingress counters) into --out, stops the
ingresses and the workers and exits 0. A lost worker does not stop it: the
policy hears of it and the run goes on with the other slots.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from harness.assembly import Assembly, load
from harness.errors import HarnessError
from harness.ledger import Ledger
from harness.live import cores
from harness.live import loop as precise
from harness.live import wire
from harness.live.arena import Arena
from harness.live.channel import Channel, remove_socket
from harness.live.channel import serve as serve_channels
from harness.live.cluster import LiveCluster
from harness.live.server import HEARTBEAT, HEARTBEAT_S
from harness.live.stats import Stats
from harness.live.workers import ROOT, WorkerPool
from harness.processes import log_tail, signal_group
from harness.records import ledger_tables, server_frame, write_json, write_table

INGRESS_READY_S = 30.0


def default_ingresses(cores: int | None = None) -> int:
    """Ingress processes for a host: a quarter of its cores, 1 to 8 (the load generator and the
    workers need the rest; one ingress serves about 10,000 requests per second)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(8, cores // 4))


class Scheduler:
    """The scheduler's side of the wire: arrivals in, outcomes out, queries answered.

    It exists before the run starts (ingresses ask whether it is ready); `begin` gives it the run's
    cluster once the start line came; arrivals that come first wait for that."""

    def __init__(self, assembly: Assembly):
        self.assembly = assembly
        self.cluster: LiveCluster | None = None
        self.policy = None
        self.offset = 0.0                             # run clock = ingress clock - offset
        self.started = False
        self.early: list[tuple[Channel, list]] = []   # arrivals before the start line
        self.seen: dict[int, float] = {}              # request id -> when this process read its arrival
        self.targets = assembly.targets
        self.auto_ids = itertools.count(-1, -1)       # for requests that bring no id: negative, never a client's
        self.external = assembly.cfg.runtime.load == "external"
        self.outbox: dict[Channel, list] = {}
        self.flush_pending = False
        self.loop = asyncio.get_running_loop()
        self.stopping = False
        self.stats = Stats(list(assembly.models) + list(assembly.apps))
        self.refused_at_door: dict[Channel, int] = {}  # per ingress, its count so far (it sends it with arrivals)

    def begin(self, cluster: LiveCluster, offset: float) -> None:
        self.cluster, self.offset = cluster, offset
        self.policy = self.assembly.make_policy(cluster)
        cluster.on_answer = self.answer
        cluster.on_batch_ok = self.stats.batch
        early, self.early = self.early, []
        for channel, rows in early:
            self.arrive(channel, rows)

    def on_message(self, channel: Channel, msg) -> None:
        try:
            kind = msg[0]
        except (TypeError, IndexError, KeyError):     # garbage on the wire must not stop the scheduler
            return
        if kind == wire.ARRIVE:
            if len(msg) > 2:
                self.refused_at_door[channel] = msg[2]
            if self.cluster is None:
                self.early.append((channel, msg[1]))
            else:
                self.arrive(channel, msg[1])
        elif kind == wire.QUERY:
            channel.send([wire.ANSWER, msg[1], self.query(msg[2])])

    def arrive(self, channel: Channel, rows: list) -> None:
        clock, offset = self.cluster.clock, self.offset
        for token, rid, target, t_arrival, copies, size, payload in rows:
            if self.stopping:
                self._send(channel, [token, wire.OUTCOME_INDEX["error"], -1, "server shutting down"])
                continue
            if self.external and clock.now() < 0:
                # An external client that did not wait for readiness: its request would precede the window,
                # and the slots count as free only from time 0, so deadline-aware policies would drop it.
                self._send(channel, [token, wire.OUTCOME_INDEX["dropped"], -1,
                                     f"the run starts in {-clock.now():.1f} s: wait until /v2/health/ready "
                                     "answers 200"])
                continue
            self.start_policy()                       # an arrival at time 0 may come before the start timer
            if rid is None or self.external:          # an external client's ids are its own, not the schedule's
                rid = next(self.auto_ids)
            elif rid in self.seen:
                self._send(channel, [token, wire.OUTCOME_INDEX[wire.DUPLICATE], -1,
                                     f"request id {rid} was already used in this run; give each request its own id"])
                continue
            now = self.seen[rid] = clock.now()
            if self.cluster.pending >= self.assembly.cfg.runtime.max_pending:
                self._send(channel, [token, wire.OUTCOME_INDEX["rejected"], -1,
                                     f"overloaded: {self.cluster.pending} requests pending"])
                continue
            # The ingress's clock reading is the arrival (the hop here is the system's own time); the
            # ingress counts from the processes' start, the run clock from the schedule's.
            self.cluster.arrive(self.targets[target], rid, min(t_arrival - offset, now), copies, (channel, token),
                                size, payload)

    def answer(self, origin, item) -> None:
        self.stats.request(item, self.cluster.clock.now())
        channel, token = origin
        self._send(channel, [token, wire.OUTCOME_INDEX[item.status], item.batch_id, item.reason])

    def _send(self, channel: Channel, row: list) -> None:
        self.outbox.setdefault(channel, []).append(row)
        if not self.flush_pending:
            self.flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """What resolved during this turn of the loop, one message per ingress."""
        self.flush_pending = False
        outbox, self.outbox = self.outbox, {}
        for channel, rows in outbox.items():
            channel.send([wire.DONE, rows])

    def start_policy(self) -> None:
        if not self.started and self.cluster is not None:
            self.started = True
            self.cluster.start(self.policy)

    def query(self, what: str):
        cluster = self.cluster
        if what == "ready":
            # Ready once the run's clock has started: what a client sends from then on is served and measured.
            return (not self.stopping and cluster is not None and cluster.now() >= 0
                    and any(s.alive for s in cluster.slots))
        if what == "stats":
            return {"models": self.stats.snapshot(), "pending": cluster.pending if cluster else 0,
                    "slots_alive": sum(s.alive for s in cluster.slots) if cluster else 0,
                    "refused_at_door": sum(self.refused_at_door.values())}
        return None


class Ingresses:
    """The ingress processes: started one after another (the first picks the port), watched, stopped."""

    def __init__(self, n: int, config: str, epoch: float, scheduler: str, host: str, port: int, out: Path,
                 arenas: list[Arena] = ()):
        self.n, self.config, self.epoch, self.scheduler = n, config, epoch, scheduler
        self.host, self.port, self.out = host, port, out
        self.arenas = list(arenas)            # one per ingress (runtime.payload=tensor), else none
        self.procs: list[subprocess.Popen] = []
        self.logs = []

    async def start(self) -> int:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        port = self.port
        for i in range(self.n):
            log = open(self.out / f"ingress-{i}.log", "w+b")
            self.logs.append(log)
            cmd = [sys.executable, "-m", "harness.live.ingress", "--config", self.config, "--epoch",
                   repr(self.epoch), "--scheduler", self.scheduler, "--index", str(i), "--ingresses", str(self.n),
                   "--host", self.host, "--port", str(port), "--out", str(self.out)]
            fds = ()
            if self.arenas:
                cmd += ["--arena", self.arenas[i].spec]
                fds = (self.arenas[i].fd,)
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
                                    start_new_session=True, pass_fds=fds)
            self.procs.append(proc)
            cores.keep_off(proc.pid)
            line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
            try:
                port = int(json.loads(line)["port"])
            except (ValueError, KeyError, TypeError):
                proc.wait(10)
                raise HarnessError(f"ingress {i} did not start (exit code {proc.returncode}): "
                                   f"{log_tail(log, 1500) or line[:200]!r}") from None
            proc.stdout.close()
        return port

    def dead(self) -> str:
        for i, p in enumerate(self.procs):
            if p.poll() is not None:
                return f"ingress {i} exited with code {p.returncode}"
        return ""

    async def stop(self, grace_s: float = 3.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = asyncio.get_running_loop().time() + grace_s
        while any(p.poll() is None for p in self.procs) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for p in self.procs:
            if p.poll() is None:
                signal_group(p, signal.SIGKILL)
                p.wait(5)
        for log in self.logs:
            log.close()

    def counters(self) -> list[dict]:
        out = []
        for i in range(len(self.procs)):
            path = self.out / f"ingress-{i}.json"
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                out.append({"index": i, "missing": True})
        return out


def payload_arenas(rt, ingresses: int) -> list[Arena]:
    """With tensor payloads, an arena per ingress, each slot a whole request body (HarnessError if the memory
    cannot be had)."""
    if rt.payload != "tensor":
        return []
    slots = max(1, rt.payload_arena_mb * (1 << 20) // rt.max_body_bytes)
    try:
        return [Arena.create(rt.max_body_bytes, slots, f"harness-payloads-{i}") for i in range(ingresses)]
    except OSError as exc:
        raise HarnessError(f"cannot create {ingresses} payload arenas of {rt.payload_arena_mb} MB: {exc}; lower "
                           "runtime.payload_arena_mb") from None


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    stop = asyncio.Event()
    state = {"serving": False, "stop_reason": "", "failures": []}

    def request_stop(reason: str, failure: bool = False) -> None:
        state["stop_reason"] = state["stop_reason"] or reason
        if failure:
            state["failures"].append(reason)
        if state["serving"]:
            stop.set()
        else:
            main_task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop, signal.Signals(sig).name)

    assembly = load(args.config)
    rt = assembly.cfg.runtime
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Pinned before anything starts: the processes started from here on are kept off its core.
    core, measured = cores.choose(rt.scheduler_cpu)
    if core is not None:
        cores.pin(core)
        loop.set_default_executor(cores.executor())
    print(cores.describe(core, measured), file=sys.stderr, flush=True)
    state["cpu"] = {"core": core, "speeds_ms": measured}
    ledger = Ledger(assembly.slots(emulated=rt.executor != "gpu"), assembly.curves(), assembly.curves_of)
    n_ingresses = args.ingresses or rt.ingresses or default_ingresses()
    arenas = payload_arenas(rt, n_ingresses)
    pool = WorkerPool(args.config, rt, log_dir=out, arenas=arenas)
    scheduler = Scheduler(assembly)
    channels, address = await serve_channels("unix:", lambda channel: None, scheduler.on_message)
    ingresses = Ingresses(n_ingresses, str(args.config), args.epoch, address, args.host, args.port, out, arenas)
    cluster = None
    tasks: list[asyncio.Task] = []
    code = 0
    try:
        await pool.start(dict(enumerate(assembly.placement.slots)))
        http_port = await ingresses.start()
        tasks.append(asyncio.ensure_future(_watch(ingresses, request_stop, args.exit_with_parent,
                                                  out / HEARTBEAT)))
        state["serving"] = True
        print(json.dumps({"ready": True, "url": f"http://{args.host}:{http_port}", "pid": os.getpid(),
                          "slots": len(ledger.slots), "ingresses": [p.pid for p in ingresses.procs],
                          "cpu": core}), flush=True)
        epoch = await _start_line(stop)
        if epoch is None:
            request_stop("no start line")
        else:
            clock = precise.Clock(epoch)
            deadline_of = {m: s.slo for m, s in assembly.models.items()}
            cluster = LiveCluster(ledger, pool, clock, deadline_of, assembly.apps, assembly.overheads,
                                  assembly.cfg.runtime.preemption)
            scheduler.begin(cluster, epoch - args.epoch)
            pool.warm_before(epoch, rt.warm_s)
            for fault in rt.faults:
                cluster.call_at(fault.t, lambda fault=fault: cluster.inject_loss(fault.slot))
            # The policy starts at run time 0, as in the sim (its timers count from there).
            def start_policy() -> None:
                state["busy_from"] = _busy_reading()
                scheduler.start_policy()
            cluster.call_at(0.0, start_policy)
            precise.quiet_gc()
            await stop.wait()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except asyncio.CancelledError:
        print(f"scheduler: stopped while starting ({state['stop_reason']})", file=sys.stderr, flush=True)
    finally:
        for task in tasks:
            task.cancel()
        scheduler.stopping = True
        if "busy_from" in state:
            state["busy_to"] = _busy_reading()
        if cluster is not None:
            cluster.finish()                     # pending -> timeouts, answered 504 through the ingresses
            scheduler.flush()
            await asyncio.sleep(0.05)            # let the last answers leave
        await ingresses.stop()
        try:
            if cluster is not None:
                _write_records(out, scheduler, ingresses, args.epoch, state)
        finally:
            await pool.close()
            channels.close()
            remove_socket(address)
    return code


async def _start_line(stop: asyncio.Event) -> float | None:
    """The run's time 0 from the start line on stdin; None if the run is stopped first, or stdin closes
    or holds something else (the caller then stops)."""
    loop = asyncio.get_running_loop()
    line = loop.create_future()

    def read() -> None:                          # a daemon thread: a stdin that never speaks cannot block exit
        text = sys.stdin.readline()
        loop.call_soon_threadsafe(lambda: line.done() or line.set_result(text))

    threading.Thread(target=read, name="start-line", daemon=True).start()
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([line, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not line.done():
        return None
    try:
        return float(json.loads(line.result())["start"])
    except (ValueError, KeyError, TypeError):
        print(f"scheduler: expected a start line {{\"start\": <unix time>}} on stdin, got {line.result()[:100]!r}",
              file=sys.stderr, flush=True)
        return None


async def _watch(ingresses: Ingresses, request_stop, exit_with_parent: bool, heartbeat: Path) -> None:
    """The ingresses and the parent watched; a heartbeat file touched while this loop runs (the orchestrator
    tells a stuck scheduler from a busy one by it)."""
    parent = os.getppid()
    beat = 0.0
    while True:
        await asyncio.sleep(0.2)
        if time.monotonic() - beat >= HEARTBEAT_S:
            beat = time.monotonic()
            heartbeat.touch()
        dead = ingresses.dead()
        if dead:
            request_stop(dead, failure=True)
            return
        if exit_with_parent and os.getppid() != parent:
            request_stop("parent process died")
            return


def _write_records(out: Path, scheduler: Scheduler, ingresses: Ingresses, epoch: float, state: dict) -> None:
    cluster = scheduler.cluster
    requests = server_frame(cluster.ledger.items)
    # When this process read each arrival: the ingress-to-scheduler hop, for the per-stage timings.
    requests["t_scheduler"] = requests["id"].map(scheduler.seen).astype(float)
    write_table(requests, out / "server_requests.parquet")
    for name, table in ledger_tables(cluster.ledger).items():
        write_table(table, out / f"server_{name}.parquet")
    lag = np.frombuffer(cluster.timer_lag, dtype=float) * 1e3
    timers = {"timers": len(lag)}
    if len(lag):
        timers.update(p50=float(np.percentile(lag, 50)), p99=float(np.percentile(lag, 99)), max=float(lag.max()))
    gc.unfreeze()
    lost = [{"slot": slot, "t": t, "reason": why} for t, slot, event, why in cluster.ledger.slot_events
            if event == "lost"]
    write_json({
        "epoch": epoch,
        "stop_reason": state["stop_reason"],
        "failures": state["failures"] + cluster.reconfiguration_errors
                    + [f"the policy raised {cluster.policy_errors} time(s); see scheduler.log"] * bool(cluster.policy_errors),
        "requests": len(cluster.ledger.items),
        "batches": len(cluster.batches),
        "lost_slots": lost,
        "policy_errors": cluster.policy_errors,
        "timer_lag_ms": timers,
        "scheduler_busy": _busy(state),
        "scheduler_cpu": state["cpu"],
        "ingresses": ingresses.counters(),
        # Cyclic garbage left by quiet_gc() (harness.live.loop) for the exit: should stay small.
        "gc_unreachable_at_exit": gc.collect(),
    }, out / "server.json")


def _busy_reading() -> tuple[float, float, float | None]:
    """(wall, this process's CPU, the loop's time waiting in select) now, in seconds."""
    return time.monotonic(), time.process_time(), precise.waited_s(asyncio.get_running_loop())


def _busy(state: dict) -> dict:
    """How busy the scheduler was from the run's time 0 to the stop. `loop_share`: the share of that wall time its
    one event loop was not waiting for something to do; near 1, every arrival, reply and timer waited for the
    ones before it, a delay the sim (whose policy decides in no time) does not charge. `cpu_share`: its CPU
    seconds (all its threads) over the wall seconds: above `loop_share` by the loop's polling in the last
    `runtime.spin_us` before each timer (CPU spent for a timer's precision, not work: a policy that keeps
    timers set, Clockwork, Symphony, polls much of the time). Empty where the run never started."""
    if "busy_to" not in state:
        return {}
    (wall_0, cpu_0, waited_0), (wall_1, cpu_1, waited_1) = state["busy_from"], state["busy_to"]
    wall, cpu = wall_1 - wall_0, cpu_1 - cpu_0
    out = {"wall_s": wall, "cpu_s": cpu, "cpu_share": cpu / wall if wall > 0 else None}
    if waited_0 is not None and wall > 0:
        out["loop_share"] = max(0.0, 1.0 - (waited_1 - waited_0) / wall)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.live.scheduler", description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, help="the run's resolved config.yaml")
    ap.add_argument("--epoch", type=float, required=True,
                    help="unix time of run time 0 (shared with the load generator)")
    ap.add_argument("--out", required=True, help="run directory for the records and the processes' logs")
    ap.add_argument("--host", default="127.0.0.1", help="address to serve HTTP on (default: loopback only)")
    ap.add_argument("--port", type=int, default=0, help="HTTP port (0: any free port; the ready line names it)")
    ap.add_argument("--ingresses", type=int, default=0,
                    help=f"ingress processes (0: a quarter of the cores, 1..8; here {default_ingresses()})")
    ap.add_argument("--exit-with-parent", action="store_true", help="shut down cleanly when the parent process dies")
    args = ap.parse_args(argv)
    if not 0 <= args.port <= 65535:
        print(f"error: --port must be 0..65535 (got {args.port})", file=sys.stderr)
        return 2
    if args.ingresses < 0:
        print(f"error: --ingresses must be >= 0 (got {args.ingresses})", file=sys.stderr)
        return 2
    try:
        spin = load(args.config).cfg.runtime.spin_us * 1e-6
        return precise.run(serve(args), spin=spin)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
