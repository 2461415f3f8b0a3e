"""The narrow interface between scheduling policies and runtimes.

A policy (systems/*.py) is a plain object that reacts to three events --
start, a request's arrival, a batch's completion -- and acts only through the
`Cluster` handle it was built with: read the clock, dispatch a batch to a GPU
slot, drop requests, set a timer, look up a latency profile. It never sleeps,
opens a socket or reads a wall clock, so the very same object runs under the
discrete-event runtime (virtual time) and the live runtime (real time). This
is the sans-I/O style of h11 and the narrow SystemUnderTest of MLPerf LoadGen.

Times are float seconds on the runtime's clock; latencies are float seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Protocol, Sequence

from harness.profiles import LatencyCurve

# Request outcomes, as written to the records (DESIGN.md section 5).
OK, DROPPED, REJECTED, TIMEOUT, ERROR = "ok", "dropped", "rejected", "timeout", "error"


class Request:
    """One inference request as the scheduler sees it.

    The runtime creates it on arrival and fills in the outcome fields; the
    policy reads `model`, `t_arrival` and `deadline` and never writes.
    """

    __slots__ = ("id", "model", "t_arrival", "deadline", "status", "reason", "t_done", "batch_id")

    def __init__(self, id: int, model: str, t_arrival: float, deadline: float):
        self.id = id
        self.model = model
        self.t_arrival = t_arrival
        self.deadline = deadline
        self.status: str | None = None   # None while pending
        self.reason = ""
        self.t_done = float("nan")
        self.batch_id = -1               # the batch that served it; GPU and times come from that batch

    def __repr__(self) -> str:
        return f"Request({self.id}, {self.model!r}, t={self.t_arrival:.6f}, D={self.deadline:.6f})"


class Batch:
    """A batch handed to one GPU slot. The runtime fills in the times."""

    __slots__ = ("id", "gpu", "model", "requests", "t_dispatch", "t_start", "t_end",
                 "latest_start", "status")

    def __init__(self, id: int, gpu: int, model: str, requests: list[Request],
                 t_dispatch: float, latest_start: float | None):
        self.id = id
        self.gpu = gpu
        self.model = model
        self.requests = requests
        self.t_dispatch = t_dispatch
        self.latest_start = latest_start
        self.t_start = float("nan")
        self.t_end = float("nan")
        self.status = ""                 # ok | late (started after latest_start) | error | preempted

    @property
    def size(self) -> int:
        return len(self.requests)

    @property
    def exec_time(self) -> float:
        return self.t_end - self.t_start


@dataclass
class GpuSlot:
    """One schedulable unit: a whole GPU, an MPS share, a MIG instance or an emulated GPU.

    `busy_until` is the runtime's prediction of when the slot drains its
    queue (exact in simulation, an estimate live); `outstanding` counts
    batches dispatched and not yet finished; `alive` turns False when the
    slot's worker is lost.
    """

    index: int
    name: str
    gpu_type: str
    partition: str
    models: frozenset[str]
    emulated: bool = True
    busy_until: float = 0.0
    outstanding: int = 0
    alive: bool = True


@dataclass(frozen=True)
class ModelSpec:
    name: str
    slo: float                            # seconds, from arrival to response


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Cluster(Protocol):
    """What a runtime offers a policy. Implemented by the sim and live runtimes."""

    gpus: Sequence[GpuSlot]

    def now(self) -> float: ...

    def dispatch(self, gpu: int, model: str, reqs: list[Request],
                 latest_start: float | None = None) -> Batch:
        """Queue `reqs` as one batch on slot `gpu` (slots run their batches in order).

        With `latest_start`, the slot discards the batch if it cannot start
        by then (Clockwork's action window; Symphony's batch validity): its
        requests are recorded as dropped and on_batch_done still fires.
        """

    def drop(self, reqs: Sequence[Request], reason: str, status: str = DROPPED) -> None:
        """Resolve `reqs` unserved: status dropped (the policy gave up) or rejected (admission refused)."""

    def call_at(self, t: float, fn: Callable[[], None]) -> TimerHandle: ...

    def curve(self, model: str, gpu: int) -> LatencyCurve:
        """The latency profile of `model` on slot `gpu`."""

    def preempt(self, gpu: int) -> list[Request]:
        """Abort the batch running on `gpu` (Shepherd); its requests return to the caller, still pending.

        Live, it returns at once and the worker stops the batch as soon as its executor can
        (the emulated executor at once; a CUDA graph runs to its end)."""


@dataclass
class SystemConfig:
    """Base of every system's structured config (conf/system/<name>.yaml)."""

    name: str = ""


class Policy:
    """Base class of the scheduling policies in systems/.

    Subclasses set `Config` to their SystemConfig dataclass; the module
    systems/<name>.py, the config group entry conf/system/<name>.yaml and
    `Config.name` share one name.
    """

    Config: ClassVar[type[SystemConfig]] = SystemConfig

    def __init__(self, cluster: Cluster, models: Mapping[str, ModelSpec], config: SystemConfig):
        self.cluster = cluster
        self.models = models
        self.config = config

    def start(self) -> None:
        """Called once at time 0, before the first arrival (periodic timers go here)."""

    def on_arrival(self, req: Request) -> None:
        raise NotImplementedError

    def on_batch_done(self, batch: Batch) -> None:
        """A batch finished (status ok), was discarded (late) or failed (error)."""

    def on_gpu_lost(self, gpu: int) -> None:
        """The slot left the cluster (its worker died or hung, or the autoscaler released it);
        `cluster.gpus[gpu].alive` is now False. Batches in flight on a lost worker fail (their
        requests are recorded as errors) without on_batch_done."""

    def on_gpu_added(self, gpu: int) -> None:
        """The slot joined the cluster (the autoscaler provisioned it); it is idle and alive."""
        raise NotImplementedError(f"{type(self).__name__} does not support slots joining (autoscaling)")


def checked_curve(slot: GpuSlot, model: str, reqs: Sequence[Request],
                  curves: Mapping[str, LatencyCurve]) -> LatencyCurve:
    """The runtimes' checks on a dispatch, before anything is recorded; a failure is a bug in the policy."""
    if not reqs:
        raise ValueError("dispatch of an empty batch")
    if model not in slot.models:
        raise ValueError(f"slot {slot.index} does not hold model {model!r}")
    if not slot.alive:
        raise ValueError(f"dispatch to slot {slot.index}, which has left the cluster")
    curve = curves[model]
    if len(reqs) > curve.max_batch:
        raise ValueError(f"batch of {len(reqs)} exceeds the profiled maximum {curve.max_batch} for {model}")
    return curve


def slots_holding(gpus: Sequence[GpuSlot], model: str) -> list[int]:
    return [g.index for g in gpus if model in g.models]

