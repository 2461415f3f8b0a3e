"""`system=triton` live: real tritonserver's dynamic batcher in front of the same worker processes.

Triton forms the batches (harness.live.triton starts it, configured from
conf/system/triton.yaml); each of its model instances is bound to one slot
(instance_count instances per slot, as in the sim model of systems/triton.py)
and forwards its batch to that slot's worker through the WorkerPool every
other system uses, so the executors are identical and only the scheduler
differs. The batches are recorded here, as LiveCluster records them for the
other systems. Triton does not say when a request reached it, so the
records use the client's send time as the arrival (noted in the summary).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from harness.live.loop import Clock
from harness.live.triton import _stub_env_problem, setup_stub_env, start_triton, stub_env_dir, stub_env_needed
from harness.live.workers import WorkerPool
from harness.records import BATCH_COLUMNS, write_json, write_table


class TritonBackend:
    """Runs Triton's batches on the worker pool (from pytriton's threads) and records them."""

    def __init__(self, n_slots: int, instance_count: int, partition: str, config_path: Path, epoch: float,
                 out_dir: Path, runtime):
        self.clock = Clock(epoch)
        self.instance_count = instance_count
        self.partition = partition
        self.out_dir = out_dir
        self._rows: list[tuple] = []
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="worker-pool", daemon=True)
        self._thread.start()
        self.pool = WorkerPool(n_slots, config_path, addresses=list(runtime.workers) or None,
                               executor=runtime.executor, worker_timeout_s=runtime.worker_timeout_s,
                               start_timeout_s=runtime.worker_start_timeout_s, log_dir=out_dir)
        self._call(self.pool.start())

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _submit(self, slot: int, batch_id: int, model: str, size: int) -> dict:
        return await self.pool.submit(slot, batch_id, model, size, None)

    def forward(self, model: str, size: int, instance: int) -> int:
        """One Triton batch on its instance's slot; returns the batch id once it has run."""
        slot = instance // self.instance_count
        with self._lock:
            batch_id = len(self._rows)
            self._rows.append(None)
        t_dispatch = self.clock.now()
        reply = self._call(self._submit(slot, batch_id, model, size))
        t_end = self.clock.now()
        exec_time = float(reply.get("exec") or 0.0)
        status = reply.get("status", "error")
        self._rows[batch_id] = (batch_id, slot, self.partition, model, size, t_dispatch, t_end - exec_time, t_end,
                                status)
        if status != "ok":
            raise RuntimeError(f"batch {batch_id} on slot {slot}: {status} {reply.get('error', '')}".strip())
        return batch_id

    def close(self) -> None:
        try:
            self._call(self.pool.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            rows = [r for r in self._rows if r is not None]
            batches = pd.DataFrame(rows, columns=BATCH_COLUMNS).astype(
                {"id": np.int64, "gpu": np.int64, "size": np.int64})
            write_table(batches, self.out_dir / "batches.parquet")
            lost = [{"slot": s, "reason": why} for s, why in self.pool.lost.items()]
            write_json({"lost_slots": lost, "batches": len(rows), "failures": self.failures,
                        "notes": ["triton: arrival times are the client's send times (Triton does not report them)"]},
                       self.out_dir / "server.json")


@contextmanager
def serve_triton(cfg, out_dir: Path, epoch: float):
    """Workers, then tritonserver in front of them; yields its URL. Everything stops on exit."""
    from omegaconf import OmegaConf

    from harness.profiles import curves_for

    if stub_env_needed() and _stub_env_problem(stub_env_dir()):
        print("system=triton: preparing tritonserver's numpy<2 stub environment (once per environment)...",
              file=sys.stderr, flush=True)
        setup_stub_env()
    c = cfg.cluster
    curves = curves_for(c.gpu_type, c.partition, list(cfg.models), OmegaConf.to_container(c.sleep))
    system = OmegaConf.to_container(cfg.system)
    backend = TritonBackend(c.count, int(system.get("instance_count") or 1), c.partition, out_dir / "config.yaml",
                            epoch, out_dir, cfg.runtime)
    try:
        models = {m: {"max_batch_size": curves[m].max_batch} for m in cfg.models}
        with start_triton(models, system, backend.forward, host=cfg.runtime.host,
                          instances=c.count * backend.instance_count) as triton:
            try:
                yield triton.url
            finally:
                if triton.died is not None:
                    backend.failures.append(f"tritonserver died during the run (exit code {triton.died})")
    finally:
        backend.close()
