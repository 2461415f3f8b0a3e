"""Locust replays a saved request schedule open loop.

    locust -f harness/load/locustfile.py --headless -u 1 -r 1 --exit-code-on-error 0 \\
        --host http://127.0.0.1:8000 --schedule run/schedule.parquet --epoch 1767225600.0 --out-dir run/client

harness.load.replay runs it so, alone or as a master with N workers (each
worker replays the rows whose index % N is its worker index; the master
hands its options and its --expect-workers to the workers, so a worker on
another host needs only `--worker --master-host H`, and --out-dir if its
records are to go elsewhere than the master's path). One `ScheduleReplay`
user per process does the work:

- open loop: the request of schedule row i is sent at epoch + t_sched[i]
  whatever is still in flight -- a loop over the sorted times blocks in libev
  until SPIN before each time, then yields in a tight loop (libev's epoll
  wakes up to a millisecond late) that also yields the core to other
  processes (the system under test may share it), and spawns a greenlet per
  request (the method of harness.live.loop.PreciseSelector, for gevent);
  the loop yields with gevent.idle(), which polls sockets first: sleep(0)
  runs ready greenlets for up to gevent's switch interval (5 ms) without
  polling, and the answers in flight would be read that much late;
- a keep-alive connection per request in flight (harness.load.http, a lean
  client; `--max-connections`, default as many as open files allow), the
  likely number of them opened before the first send; a request that must
  wait for a free connection counts the wait as send lag, so lag is never
  hidden;
- `--payload tensor`: each item carries an FP16 3x224x224 image as binary
  tensor data (what a real deployment moves; the server copies it to the
  GPU), where the default synthetic payload is one INT32 per item;
- before the first send, first-call costs are paid and everything alive is
  frozen out of the garbage collector's full passes (a 30 ms pause else);
- per request it records id, model, t_sched, t_sent, t_done (seconds since
  the epoch, on harness.live.loop.Clock), status, reason and batch_id, and
  fires Locust's request event (response time from t_sched);
- records go to <out-dir>/client-<shard>.parquet when the shard is done
  (atomically), and every --flush-interval seconds the requests finished
  since the last flush go to client-<shard>.part-<k>.arrow (Arrow IPC, built
  from the code arrays: ~0.2 ms where Parquet costs several, all of it send
  lag), so a killed run keeps what it measured (harness.load.read_records
  reads either);
- a process whose parent (the orchestrator) dies stops replaying and
  writes what it measured;
- the run ends by itself once every request has an answer or timed out
  (--request-timeout, from the send): a lone process quits when its shard is
  done; a worker reports to the master, which quits (and with it every
  worker) when all shards are done.

Answers: 200 with a batch_id output is ok; 503 is dropped, 429 rejected,
504 timeout (the reason is the error text, without its "<status>: " prefix
where the harness's frontend adds one; Triton's queue-full and queue-timeout
rejections are 503); any other answer or a failed connection is an error.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import gevent
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.feather as feather
from gevent.lock import BoundedSemaphore
from gevent.pool import Group
from locust import User, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # Locust puts only this file's directory on the path

from harness.core import DROPPED, ERROR, OK, REJECTED, TIMEOUT  # noqa: E402
from harness.live.loop import Clock  # noqa: E402
from harness.live.protocol import (HEADER_LENGTH, HTTP_CODE, IMAGE, IMAGE_BYTES, infer_request,  # noqa: E402
                                   infer_response, outcome)
from harness.load import peak_in_window  # noqa: E402
from harness.load.http import Connection, Endpoint, HttpError  # noqa: E402
from harness.records import write_table  # noqa: E402

STATUSES = [OK, DROPPED, REJECTED, TIMEOUT, ERROR]
STATUS_OF_CODE = {code: status for status, code in HTTP_CODE.items() if status not in (OK, ERROR)}
SPIN = 0.0005             # seconds before a send time at which blocking stops and yielding starts
HEADERS = {"Content-Type": "application/json"}
INPUTS_JSON = json.dumps(infer_request(0)["inputs"], separators=(",", ":"))   # the synthetic payload
REASON_CHARS = 200
INFLIGHT_WINDOW_S = 0.1   # connections opened ahead: the most requests scheduled within this window


@events.init_command_line_parser.add_listener
def _arguments(parser) -> None:
    group = parser.add_argument_group("schedule replay (harness)")
    group.add_argument("--schedule", env_var="HARNESS_REPLAY_SCHEDULE", default="",
                       help="Parquet schedule: id, model, t_sched (seconds since the epoch)")
    group.add_argument("--epoch", env_var="HARNESS_REPLAY_EPOCH", type=float, default=0.0,
                       help="unix time of t_sched = 0 (every process of the run shares it)")
    group.add_argument("--out-dir", env_var="HARNESS_REPLAY_OUT", default="",
                       help="directory for the client records (client-<shard>.parquet)")
    group.add_argument("--request-timeout", type=float, default=30.0,
                       help="seconds from send after which a request counts as timed out")
    group.add_argument("--max-connections", type=int, default=0,
                       help="connections per process (0: as many as open files allow)")
    group.add_argument("--flush-interval", type=float, default=2.0,
                       help="seconds between flushes of finished requests to part files")
    group.add_argument("--payload", choices=("synthetic", "tensor"), default="synthetic",
                       help="synthetic: one INT32 per item | tensor: an FP16 3x224x224 image per item (binary)")
    group.add_argument("--payload-seed", type=int, default=0, help="seed of the tensor payload's values")


def batched_inputs(n: int) -> str:
    """The `inputs` of a request of n items (shape [n, 1]), as JSON."""
    tensor = {**infer_request(0)["inputs"][0], "shape": [n, 1], "data": [0] * n}
    return json.dumps([tensor], separators=(",", ":"))


class TensorBodies:
    """Infer bodies that carry images (Triton's binary tensor extension): the JSON part, then the bytes.
    Every request sends the same random image: what is measured is moving it, not its values."""

    def __init__(self, seed: int):
        image = np.random.default_rng(seed).standard_normal(IMAGE_BYTES // 2).astype(np.float16)
        self.image = image.tobytes()

    def body(self, rid: int, items: int, parameters: str | None) -> tuple[bytes, bytes]:
        """(body, extra header lines) of a request of `items` images."""
        extra = f',"parameters":{parameters}' if parameters else ""
        head = (f'{{"id":"{rid}"{extra},"inputs":[{{"name":"{IMAGE["name"]}","datatype":"{IMAGE["datatype"]}",'
                f'"shape":[{items},3,224,224],"parameters":{{"binary_data_size":{items * IMAGE_BYTES}}}}}]}}').encode()
        return head + self.image * items, b"%s: %d\r\n" % (HEADER_LENGTH.encode(), len(head))


def classify(code: int, body: bytes) -> tuple[int, str, int]:
    """(index into STATUSES, reason, batch id) of one answer."""
    status, reason, batch_id = outcome(code, body)
    if status == ERROR and code in STATUS_OF_CODE:
        # An answer without the frontend's "<status>: " prefix (Triton's own 503s): the code decides.
        status, reason = STATUS_OF_CODE[code], reason.removeprefix(f"http {code}: ")
    return STATUSES.index(status), reason[:REASON_CHARS], batch_id


class ReplayFailure(Exception):
    """What Locust's failure table shows for a request that was not served (the reason is in the records)."""


class Connections:
    """One keep-alive connection per request in flight, up to `limit`; a broken or timed-out one is closed."""

    def __init__(self, endpoint: Endpoint, limit: int, timeout_s: float):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.idle: list[Connection] = []
        self.slots = BoundedSemaphore(limit)
        self.limit = limit

    def acquire(self) -> Connection:
        """A connection to send on (waiting for one if `limit` are busy); OSError if none can be opened."""
        self.slots.acquire()
        if self.idle:
            return self.idle.pop()
        try:
            return self.endpoint.connect(self.timeout_s + 1.0)
        except BaseException:
            self.slots.release()
            raise

    def release(self, conn: Connection | None) -> None:
        if conn is not None and conn.open:
            self.idle.append(conn)
        elif conn is not None:
            conn.close()
        self.slots.release()

    def open(self, count: int) -> None:
        """Connect `count` connections ahead: connecting during the run (handshakes) costs send lag."""
        for _ in range(min(count, self.limit)):
            try:
                self.idle.append(self.endpoint.connect(self.timeout_s + 1.0))
            except OSError:
                break                 # the server is not there (yet): the requests will say so

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


def open_files_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


class Replay:
    """One process's shard of the schedule: its send loop, its records and their files."""

    def __init__(self, environment, shard: int, shards: int):
        opts = environment.parsed_options
        if not opts.schedule or not opts.out_dir or not opts.epoch:
            raise ValueError("--schedule, --epoch and --out-dir are required (or HARNESS_REPLAY_SCHEDULE, "
                             "HARNESS_REPLAY_EPOCH, HARNESS_REPLAY_OUT)")
        self.environment = environment
        self.shard = shard
        self.out_dir = Path(_own_out_dir.get("path") or opts.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.timeout_s = opts.request_timeout
        self.flush_s = opts.flush_interval
        self.clock = Clock(opts.epoch)

        schedule = pd.read_parquet(opts.schedule)
        rows = schedule.iloc[shard::shards]
        rows = rows.iloc[np.argsort(rows["t_sched"].to_numpy(), kind="stable")]
        self.ids = rows["id"].to_numpy(np.int64)
        # An app request carries its tasks per graph node (how many objects the detection finds); a query
        # already batched carries its items (an input of shape [size, 1]).
        self.copies = ([json.dumps({"copies": [int(c) for c in v]}, separators=(",", ":")) for v in rows["copies"]]
                       if "copies" in rows else None)
        self.sizes = rows["size"].to_numpy(np.int64) if "size" in rows else None
        self.tensors = TensorBodies(opts.payload_seed) if opts.payload == "tensor" else None
        self.inputs = ([batched_inputs(int(n)) for n in self.sizes]
                       if self.sizes is not None and self.tensors is None else None)
        self.t_sched = rows["t_sched"].to_numpy(np.float64)
        codes, models = pd.factorize(rows["model"].astype(str))
        self.models = [str(m) for m in models]
        self.model_of = codes.astype(np.int32)
        self.endpoint = Endpoint(environment.host)
        self.paths = [f"/v2/models/{m}/infer" for m in self.models]

        n = len(self.ids)
        self.t_sent = np.full(n, np.nan)
        self.t_done = np.full(n, np.nan)
        self.status = np.full(n, -1, np.int8)
        self.batch_id = np.full(n, -1, np.int64)
        self.reason_of = np.zeros(n, np.int32)         # index into self.reasons
        self.reasons = [""]
        self._reason_code = {"": 0}
        self.finished: list[int] = []                  # rows answered since the last flush
        self.parts = 0
        self.written = False
        limit = opts.max_connections or max(16, open_files_limit() - 256)
        self.connections = Connections(self.endpoint, min(limit, max(n, 1)), self.timeout_s)
        self.requests = Group()

    # -- sending -------------------------------------------------------------------------------------------
    def run(self) -> None:
        self._warm_up()
        flusher = gevent.spawn(self._flush_every)
        try:
            self._send_all()
            self.requests.join()
        finally:
            flusher.kill()
            self.write_final()
            self.connections.close()

    def _warm_up(self) -> None:
        """Before the first send: first-call costs out of the way, and the collector's pauses short."""
        self.connections.open(max(8, peak_in_window(self.t_sched, INFLIGHT_WINDOW_S)))
        classify(200, json.dumps(infer_response("m", "0", 0, 0)).encode())
        self._table(np.zeros(0, np.int64))
        # Everything alive now (Locust, pandas, the schedule) is permanent: full collections skip it.
        gc.collect()
        gc.freeze()

    def _send_all(self) -> None:
        due = self.clock.to_monotonic(self.t_sched).tolist()
        spawn, monotonic, sleep, idle, floor = self.requests.spawn, time.monotonic, gevent.sleep, gevent.idle, math.floor
        yield_core = os.sched_yield
        i, n = 0, len(due)
        while i < n:
            left = due[i] - monotonic()
            if left > 0:
                # libev waits in epoll, whose timeout is whole ms rounded up: block for the whole ms that
                # end at least SPIN before the send time, then yield (to answers in flight, and the core
                # to other processes) until it.
                block_ms = floor((left - SPIN) * 1e3)
                if block_ms >= 1:
                    sleep((block_ms - 0.5) * 1e-3)
                else:
                    yield_core()
                    idle()            # answers in flight are read here: sleep(0) would not poll for them
                continue
            now = monotonic()
            while i < n and due[i] <= now:
                spawn(self._send, i)
                i += 1
            sleep(0)

    def _send(self, i: int) -> None:
        m = self.model_of[i]
        if self.tensors is not None:
            body, headers = self.tensors.body(self.ids[i], 1 if self.sizes is None else int(self.sizes[i]),
                                              None if self.copies is None else self.copies[i])
            request = self.endpoint.post(self.paths[m], body, b"application/octet-stream", headers)
        else:
            inputs = INPUTS_JSON if self.inputs is None else self.inputs[i]
            if self.copies is None:
                body = f'{{"id":"{self.ids[i]}","inputs":{inputs}}}'.encode()
            else:
                body = f'{{"id":"{self.ids[i]}","parameters":{self.copies[i]},"inputs":{INPUTS_JSON}}}'.encode()
            request = self.endpoint.post(self.paths[m], body)
        conn, t_sent, code, answer = None, None, 0, b""
        timer = gevent.Timeout.start_new(self.timeout_s)
        try:
            conn = self.connections.acquire()     # waiting for a free connection counts as send lag
            t_sent = self.clock.now()
            code, answer = conn.exchange(request)
            status, reason, batch_id = classify(code, answer)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            if conn is not None:
                conn.close()                      # an answer may still come on it: never reuse it
            status, reason, batch_id = STATUSES.index(TIMEOUT), f"no answer within {self.timeout_s:g} s", -1
        except (HttpError, OSError) as exc:       # a refused, reset or garbled connection is the request's error
            status, reason, batch_id = STATUSES.index(ERROR), f"{type(exc).__name__}: {exc}"[:REASON_CHARS], -1
        finally:
            timer.close()
        t_done = self.clock.now()
        if t_sent is None:                        # no connection could be had: it was never sent
            t_sent = t_done
        self.connections.release(conn)
        self.t_sent[i], self.t_done[i], self.status[i], self.batch_id[i] = t_sent, t_done, status, batch_id
        if reason:
            code_of_reason = self._reason_code.get(reason)
            if code_of_reason is None:
                code_of_reason = self._reason_code[reason] = len(self.reasons)
                self.reasons.append(reason)
            self.reason_of[i] = code_of_reason
        self.finished.append(i)
        failure = None if status == 0 else ReplayFailure(f"{STATUSES[status]} (HTTP {code})" if code
                                                         else STATUSES[status])
        self.environment.events.request.fire(request_type="POST", name=self.models[m],
                                             response_time=(t_done - self.t_sched[i]) * 1000.0,
                                             response_length=len(answer), exception=failure, context={})

    # -- records -------------------------------------------------------------------------------------------
    def _flush_every(self) -> None:
        """Flush every flush_s; and stop the replay if the process that started this one died (an orchestrator
        killed outright): what was measured is written, nothing is left sending."""
        parent = os.getppid()
        while True:
            gevent.sleep(self.flush_s)
            self.flush()
            if os.getppid() != parent:
                gevent.spawn(self.environment.runner.quit)
                return

    def _table(self, rows: np.ndarray) -> pa.Table:
        # Dictionary columns from the code arrays: no per-row Python work while requests are being sent.
        return pa.table({
            "id": self.ids[rows],
            "model": pa.DictionaryArray.from_arrays(self.model_of[rows], pa.array(self.models, pa.string())),
            "t_sched": self.t_sched[rows], "t_sent": self.t_sent[rows], "t_done": self.t_done[rows],
            "status": pa.DictionaryArray.from_arrays(self.status[rows], pa.array(STATUSES)),
            "reason": pa.DictionaryArray.from_arrays(self.reason_of[rows], pa.array(self.reasons, pa.string())),
            "batch_id": self.batch_id[rows],
        })

    def flush(self) -> None:
        """Requests answered since the last flush, to an Arrow IPC part file (a fraction of Parquet's cost)."""
        if not self.finished or self.written:
            return
        rows, self.finished = np.asarray(self.finished, np.int64), []
        table = self._table(rows)
        _atomic(self.out_dir / f"client-{self.shard:03d}.part-{self.parts:05d}.arrow",
                lambda tmp: feather.write_feather(table, tmp, compression="uncompressed"))
        self.parts += 1

    def write_final(self) -> None:
        """Every answered request of the shard, in one Parquet file; the part files go."""
        if self.written:
            return
        self.written = True
        rows = np.flatnonzero(self.status >= 0)
        write_table(self._table(rows).to_pandas().astype({c: str for c in ("model", "status", "reason")}),
                    self.out_dir / f"client-{self.shard:03d}.parquet")
        for part in self.out_dir.glob(f"client-{self.shard:03d}.part-*.arrow"):
            part.unlink(missing_ok=True)


_current: list[Replay] = []          # this process's replay (one per process, whatever the master asks)
_done: set[str] = set()              # on the master (or a lone process): who has finished its shard
_own_out_dir: dict[str, str] = {}    # a worker's own --out-dir, before the master's options replace its own


def _shard(environment) -> tuple[int, int]:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        return runner.worker_index, max(1, int(environment.parsed_options.expect_workers or 1))
    return 0, 1


@events.init.add_listener
def _on_init(environment, **_kw) -> None:
    if isinstance(environment.runner, WorkerRunner):
        # A worker on another host writes where it was told, else at the master's --out-dir path.
        _own_out_dir["path"] = environment.parsed_options.out_dir
    else:
        # The run ends when every shard is done, not when the first worker leaves: a master rebalances a
        # leaving worker's users onto the others, which would replay their shards twice.
        environment.runner.register_message("replay_done", _on_replay_done)


def _on_replay_done(environment, msg, **_kw) -> None:
    _done.add(msg.node_id)
    expected = environment.parsed_options.expect_workers if isinstance(environment.runner, MasterRunner) else 1
    if len(_done) >= expected:
        gevent.spawn(environment.runner.quit)


@events.quitting.add_listener
def _keep_what_was_measured(environment, **_kw) -> None:
    for replay in _current:
        replay.write_final()


class ScheduleReplay(User):
    """Replays this process's shard of the schedule once, open loop; the run ends when every shard is done."""

    @task
    def replay(self) -> None:
        if _current:
            raise StopUser()          # a user the master sent on top: this process has its shard
        runner = self.environment.runner
        try:
            replay = Replay(self.environment, *_shard(self.environment))
            _current.append(replay)
            replay.run()
        except Exception:
            self.environment.process_exit_code = 2     # Locust logs the traceback
            gevent.spawn(runner.quit)
            raise
        send_stats = getattr(runner, "_send_stats", None) if isinstance(runner, WorkerRunner) else None
        if send_stats is not None:
            send_stats()              # the last seconds of Locust's stats reach the master before it quits
        runner.send_message("replay_done", {"requests": len(replay.ids)})
        raise StopUser()
