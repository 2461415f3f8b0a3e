"""`system=triton` live: real tritonserver's dynamic batcher in front of the same worker processes.

Triton forms the batches (harness.live.triton.server starts it, configured from
conf/system/triton.yaml); each of its model instances is bound to one slot
(instance_count instances per slot, as in the sim model of systems/triton.py)
and forwards its batch to that slot's worker through the WorkerPool every
other system uses, so the executors are identical and only the scheduler
differs. The batches are recorded through the run's ledger (harness.ledger)
exactly as the other systems' are; Triton does not say which requests a
batch held nor when a request reached it, so the records use the client's
send time as the arrival (noted in the summary).
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from harness.core import OK
from harness.ledger import Ledger
from harness.live.loop import Clock
from harness.live.triton.server import start_triton
from harness.live.triton.stub_env import setup_stub_env, stub_env_dir, stub_env_needed, stub_env_problem
from harness.live.workers import WorkerPool
from harness.records import ledger_tables, write_json, write_table
from systems.triton import instance_slots


class TritonBackend:
    """Runs Triton's batches on the worker pool (from the forwarding threads, one per model instance) and records
    them in a ledger."""

    def __init__(self, assembly, config_path: Path, epoch: float, out_dir: Path):
        rt = assembly.cfg.runtime
        self.clock = Clock(epoch)              # until start(): the run clock from then on
        self.warm_s = rt.warm_s
        self.instance_count = max(1, int(assembly.system.instance_count))
        # Each model's instances sit on its slots, as the sim model places them (instance_gpus).
        self.slots_of = instance_slots(list(assembly.models), assembly.slots(emulated=True),
                                       int(assembly.system.instance_gpus))
        self.instances = {m: len(s) * self.instance_count for m, s in self.slots_of.items()}
        self.out_dir = out_dir
        self.ledger = Ledger(assembly.slots(emulated=rt.executor != "gpu"), assembly.curves(), t0=self.clock.now())
        self.failures: list[str] = []
        self.statistics: dict = {}             # tritonserver's own per-model account, read before it stops
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="worker-pool", daemon=True)
        self._thread.start()
        self.pool = WorkerPool(config_path, rt, log_dir=out_dir, on_lost=self._on_lost)
        self._call(self.pool.start(dict(enumerate(assembly.placement.slots))))

    def start(self, epoch: float) -> None:
        self.clock = Clock(epoch)
        self._loop.call_soon_threadsafe(self.pool.warm_before, epoch, self.warm_s)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _submit(self, slot: int, batch_id: int, model: str, size: int, busy: float) -> dict:
        return await self.pool.submit(slot, batch_id, model, size, None, busy=busy)

    def _on_lost(self, slot: int, reason: str) -> None:
        with self._lock:
            self.ledger.lose(slot, self.clock.now(), reason)

    def forward(self, model: str, size: int, instance: int) -> int:
        """One Triton batch on its instance's slot; returns the batch id once it has run."""
        slot = self.slots_of[model][instance // self.instance_count]
        with self._lock:
            now = self.clock.now()
            batch = self.ledger.open_external_batch(slot, model, size, now)
            busy = self.ledger.beside(slot, now)[0]
            self.ledger.slots[slot].busy_until = math.inf     # at work until its instances' batches reply
        reply = self._call(self._submit(slot, batch.id, model, size, busy))
        t_end = self.clock.now()
        exec_time = float(reply.get("exec") or 0.0)
        status = reply.get("status", "error")
        with self._lock:
            if batch.status:
                pass                             # its slot was lost meanwhile: already failed
            elif status == OK:
                self.ledger.complete(batch, t_end - exec_time, t_end)
            else:
                self.ledger.fail(batch, t_end, reply.get("error") or f"worker replied {status!r}", exec_time)
            if not self.ledger.slots[slot].outstanding:
                self.ledger.slots[slot].busy_until = t_end
        if status != OK:
            raise RuntimeError(f"batch {batch.id} on slot {slot}: {status} {reply.get('error', '')}".strip())
        return batch.id

    def close(self) -> None:
        try:
            self._call(self.pool.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            with self._lock:
                for name, table in ledger_tables(self.ledger).items():
                    write_table(table, self.out_dir / f"server_{name}.parquet")
                lost = [{"slot": slot, "t": t, "reason": why} for t, slot, event, why in self.ledger.slot_events
                        if event == "lost"]
                write_json({"lost_slots": lost, "batches": len(self.ledger.batches), "failures": self.failures,
                            "tritonserver": self.statistics,
                            "notes": ["triton: arrival times are the client's send times "
                                      "(Triton does not report them)"]},
                           self.out_dir / "server.json")


class _Served:
    def __init__(self, url: str, triton, backend: TritonBackend):
        self.url = url
        self._triton = triton
        self.start = backend.start

    def died(self) -> str:
        code = self._triton.died
        return "" if code is None else f"tritonserver died during the run (exit code {code})"


@contextmanager
def serve_triton(assembly, out_dir: Path, epoch: float):
    """Workers, then tritonserver in front of them; yields its url, start(epoch) and died(). Everything
    stops on exit."""
    if stub_env_needed() and stub_env_problem(stub_env_dir()):
        print("system=triton: preparing tritonserver's numpy<2 stub environment (once per environment)...",
              file=sys.stderr, flush=True)
        setup_stub_env()
    rt = assembly.cfg.runtime
    backend = TritonBackend(assembly, out_dir / "config.yaml", epoch, out_dir)
    try:
        curves = assembly.curves()[0]
        models = {m: {"max_batch_size": curves[m].max_batch} for m in assembly.models}
        with start_triton(models, assembly.system, backend.forward, host=rt.host, http_port=rt.port,
                          instances=backend.instances) as triton:
            served = _Served(triton.url, triton, backend)
            try:
                yield served
            finally:
                if served.died():
                    backend.failures.append(served.died())
                else:
                    try:
                        backend.statistics = triton.statistics()
                    except (OSError, ValueError) as exc:   # a diagnostic: the run's records stand without it
                        print(f"system=triton: tritonserver's statistics could not be read ({exc})",
                              file=sys.stderr, flush=True)
    finally:
        backend.close()
