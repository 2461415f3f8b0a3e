"""The narrow interface between scheduling policies and runtimes.

A policy (systems/*.py) is a plain object that reacts to events -- start, a
task's arrival, a batch's completion, a slot leaving or joining -- and acts
only through the `Cluster` handle it was built with: read the clock,
dispatch a batch of tasks to a slot, drop tasks, set a timer, look up a
latency profile, move to another placement, hand a long pure computation
(an allocation solve) off the event loop. It never sleeps, opens a socket,
starts a thread or reads a wall clock, so the very same object runs under
the discrete-event runtime (virtual time) and the live runtime (real time).
This is the sans-I/O style of h11 and the narrow SystemUnderTest of MLPerf
LoadGen.

Vocabulary:

- A *request* is what a client waits for: one model, or an app whose task
  graph runs several models (harness.apps). It resolves once.
- A *task* is what a slot runs: one model for one request. A plain request
  is its own single task, so the common case costs one object.
- A *slot* is a schedulable unit on one physical GPU (a *device*): the
  whole GPU, an MPS share or a MIG instance; its `share` is the fraction of
  the device it holds.
- A *placement* (harness.placement) says which slots exist on which device
  and which models each holds.

Times are float seconds on the runtime's clock; latencies are float seconds.
The runtime writes every outcome through one ledger (harness.ledger); the
policy reads tasks, batches and slots and never writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Mapping, Protocol, Sequence, TypeVar

from harness.profiles import LatencyCurve

if TYPE_CHECKING:
    from harness.calibrate import Overheads
    from harness.placement import Placement

T = TypeVar("T")

# Outcomes of requests and tasks, as written to the records.
OK, DROPPED, REJECTED, TIMEOUT, ERROR = "ok", "dropped", "rejected", "timeout", "error"
# Outcomes of batches beside ok and error: discarded unstarted past its latest start, or stopped early.
LATE, PREEMPTED = "late", "preempted"
# What a slot does with a batch preempted while it runs (runtime.preemption): FINISH runs it to its end
# before the slot takes the next, as a real GPU does (a CUDA graph cannot stop part-way); ABORT stops it
# at once, an executor that could (emulated and sim only).
FINISH, ABORT = "finish", "abort"
PREEMPTIONS = (FINISH, ABORT)
# "Not yet" for times (t_done, t_start, t_end): one float shared by every task and batch, where float("nan")
# per object costs a call each (a live run makes one task and often one batch per request).
NAN = float("nan")


class Task:
    """One unit of work as the scheduler sees it: run `model` for one request by `deadline`.

    The ledger creates it and fills in the outcome fields; the policy reads
    `model`, `t_arrival` (when the task became ready) and `deadline`.
    `request` is None for a plain request, which is its own task; a task of
    an app's graph (GraphTask) points to its `Request` and names its `node`.
    """

    __slots__ = ("id", "model", "t_arrival", "deadline", "status", "reason", "t_done", "batch_id")
    request: "Request | None" = None     # class defaults: a plain task stores none of these (the sim makes
    node = 0                             # millions); GraphTask and QueryTask do
    size = 1                             # items: a query that arrives already batched has more (QueryTask)

    def __init__(self, id: int, model: str, t_arrival: float, deadline: float):
        self.id = id
        self.model = model
        self.t_arrival = t_arrival
        self.deadline = deadline
        self.status: str | None = None   # None while pending
        self.reason = ""
        self.t_done = NAN
        self.batch_id = -1               # the batch that served it; slot and times come from that batch

    def __repr__(self) -> str:
        return f"Task({self.id}, {self.model!r}, t={self.t_arrival:.6f}, D={self.deadline:.6f})"


class QueryTask(Task):
    """A query that arrives already batched: `size` items that run together, in one batch (PARIS/ELSA's
    workload). A batch's size counts items, so its latency is the profile's at that many."""

    __slots__ = ("size",)

    def __init__(self, id: int, model: str, t_arrival: float, deadline: float, size: int):
        super().__init__(id, model, t_arrival, deadline)
        self.size = size


class GraphTask(Task):
    """A task of an app request's graph: its request's id, the request, the graph node it runs."""

    __slots__ = ("request", "node")

    def __init__(self, id: int, model: str, t_arrival: float, deadline: float, request: "Request", node: int):
        super().__init__(id, model, t_arrival, deadline)
        self.request = request
        self.node = node


class Request:
    """An app request: what a client waits for when it asks for a task graph (harness.apps).

    It resolves when every task of its graph has run (ok: t_done is the last
    task's), or at the first task that fails (that task's status and
    reason). Same outcome fields as a Task, so the records treat both alike.
    """

    __slots__ = ("id", "model", "t_arrival", "deadline", "status", "reason", "t_done", "batch_id",
                 "graph", "copies", "tasks", "left", "waiting", "open_nodes")

    def __init__(self, id: int, app: str, t_arrival: float, deadline: float, graph, copies: Sequence[int]):
        self.id = id
        self.model = app                 # the app's name, where a plain request names its model
        self.t_arrival = t_arrival
        self.deadline = deadline
        self.status: str | None = None
        self.reason = ""
        self.t_done = NAN
        self.batch_id = -1
        self.graph = graph               # harness.apps.App, which keeps the progress fields below
        self.copies = list(copies)       # tasks per graph node for this request (a detection's objects)
        self.tasks: list[Task] = []      # every task released so far
        self.left: list[int] = []        # per node: tasks not yet finished ok
        self.waiting: list[int] = []     # per node: nodes it comes after that have not finished
        self.open_nodes = 0

    def __repr__(self) -> str:
        return f"Request({self.id}, app {self.model!r}, t={self.t_arrival:.6f}, D={self.deadline:.6f})"


class Batch:
    """Tasks handed to one slot as one execution. The runtime fills in the times and status."""

    __slots__ = ("id", "slot", "model", "tasks", "t_dispatch", "t_start", "t_end", "latest_start", "status",
                 "size", "stage", "through", "final")

    def __init__(self, id: int, slot: int, model: str, tasks: list[Task], t_dispatch: float,
                 latest_start: float | None, size: int | None = None, stage: int | None = None,
                 final: bool = True, through: int | None = None):
        """`size` counts items: the tasks' sizes added up (given, for queries; else one per task).
        `stage`: the stage of the model it runs first (None: the whole model); `through`: the last
        stage it runs (default: `stage` alone), which becomes the last stage it ran if it was told to
        stop at a boundary before; `final`: its tasks are done when it ends (the whole model, or a run
        through its last stage)."""
        self.id = id
        self.slot = slot
        self.model = model
        self.tasks = tasks
        self.t_dispatch = t_dispatch
        self.latest_start = latest_start
        self.t_start = NAN
        self.t_end = NAN
        self.status = ""                 # ok | late (started after latest_start) | error | preempted
        self.size = len(tasks) if size is None else size   # Triton's batches carry no task objects
        self.stage = stage
        self.through = stage if through is None else through
        self.final = final

    @property
    def exec_time(self) -> float:
        return self.t_end - self.t_start


@dataclass
class Slot:
    """One schedulable unit on one device: a whole GPU, an MPS share, a MIG instance (or emulated).

    `busy_until` is the runtime's prediction of when the slot drains its
    queue (exact in simulation, an estimate live); `outstanding` counts
    batches dispatched and not yet finished; `alive` is False before the
    slot joins and after it leaves or is lost; `leaving` is True while a
    reconfiguration that makes before it breaks has it serving until the
    new slots of its device join (it is no longer in the placement). The
    runtime writes these.
    """

    index: int
    name: str
    gpu_type: str
    partition: str
    models: frozenset[str]
    device: int = 0                      # physical GPU within the cluster
    share: float = 1.0                   # fraction of the device this slot holds
    emulated: bool = True
    busy_until: float = 0.0
    outstanding: int = 0
    alive: bool = True
    leaving: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    slo: float                            # seconds, from arrival to response


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class HeapTimer:
    """A timer as both runtimes keep it: the entry [time, sequence, fn] in a heap of their own. cancel()
    empties its fn, so the runtime skips the entry when its time comes (no search of the heap)."""

    __slots__ = ("entry",)

    def __init__(self, entry: list):
        self.entry = entry

    def cancel(self) -> None:
        self.entry[2] = None


class Cluster(Protocol):
    """What a runtime offers a policy. Implemented by the sim and live runtimes."""

    slots: Sequence[Slot]
    overheads: "Overheads | None"   # the serving path's measured delays (harness.calibrate), when known

    def now(self) -> float: ...

    def dispatch(self, slot: int, model: str, tasks: list[Task], latest_start: float | None = None,
                 stage: int | None = None, through: int | None = None) -> Batch:
        """Queue `tasks` as one batch of `model` on `slot` (a slot runs its batches in order).

        With `latest_start`, the slot discards the batch if it cannot start
        by then (Clockwork's action window; Symphony's batch validity): its
        tasks are recorded as dropped and on_batch_done still fires.
        With `stage` k, the batch runs stage k of the model only (its latency
        is curve(model, slot).stages[k]); the tasks stay pending until a batch
        runs their last stage. The policy keeps track of where each task is.
        With `through` e as well, it runs stages k..e back to back on the
        slot, with no round trip to the policy between them (a chain), unless
        `stop_at_boundary` cuts it short.
        """

    def stop_at_boundary(self, slot: int) -> None:
        """Ask the chain of stages running on `slot` (its only batch in flight) to stop at its next stage
        boundary: on_batch_done then fires with `batch.through` the last stage it ran, its tasks still
        pending there. No effect once the chain runs its last stage. Live, the request reaches the worker
        on its way; in the sim, after the same delay as a dispatch."""

    def drop(self, tasks: Sequence[Task], reason: str, status: str = DROPPED) -> None:
        """Resolve `tasks` unserved: status dropped (the policy gave up) or rejected (admission refused)."""

    def call_at(self, t: float, fn: Callable[[], None]) -> TimerHandle: ...

    def offload(self, fn: Callable[[], T], then: Callable[[T], None]) -> None:
        """Run `fn()`, a long pure computation (an allocation solve), off the event loop; then call
        `then(result)` as an event of its own.

        Live, `fn` runs in a worker thread while arrivals and timers go on, so it must read only what
        it was given, never the cluster or the policy's state, and by the time `then` runs the cluster
        may have moved on (`then` checks that the result still applies). The sim calls `then(fn())` at
        once, at the same virtual time: a computation takes no virtual time, as when it ran inline.
        Live, `then` is not called once the run has finished, nor when `fn` raised (a policy error, as
        when a timer raises).
        """

    def curve(self, model: str, slot: int) -> LatencyCurve:
        """The latency profile of `model` on `slot`."""

    def preempt(self, slot: int) -> list[Task]:
        """Abort the batch running on `slot` (Shepherd); its tasks return to the caller, still pending.

        The tasks come back at once, in both runtimes. With runtime.preemption=finish (the default, what a
        real GPU does: a CUDA graph cannot stop part-way) the batch still runs to its end and the slot
        stays busy until then (Slot.busy_until unchanged), so what is dispatched to it next starts after;
        with abort the slot is free to the policy at once and the batch stops when the stop reaches it (an
        emulated or simulated executor only). The stop travels to the slot as a dispatch does and never
        overtakes its batch: a batch sent to an idle slot has started when it arrives (live nearly always: a
        worker slow to pick it up may still skip it), and one waiting behind another there never starts if its
        stop gets there first, either way."""

    @property
    def placement(self) -> "Placement":
        """The slots provisioned now (alive or joining) as a placement value."""

    def reconfigure(self, placement: "Placement", overlap: bool = False) -> None:
        """Move to `placement` (harness.placement).

        Slots of the current placement that are not in the new one leave at
        once (on_slot_lost; what they already hold runs to its end). Slots
        new in it join through on_slot_added once started -- after the slots
        leaving their device have drained, plus the start cost (live: the
        worker restarted with its share, models loaded; sim: the measured
        cost). A slot that leaves and later comes back with the same spec
        keeps its index. Every call is a row of the reconfigurations table.

        `overlap` makes before it breaks: the new slots start at once, and
        the slots leaving a device where new ones start keep serving until
        the last of those joins; then they leave (on_slot_lost, just before
        the on_slot_added of that last one). No device waits empty for the
        start cost. Not on real MIG instances, whose slices must be freed
        first: those leave at once as without it.
        """


@dataclass
class SystemConfig:
    """Base of every system's structured config (conf/system/<name>.yaml)."""

    name: str = ""


class Policy:
    """Base class of the scheduling policies in systems/.

    Subclasses set `Config` to their SystemConfig dataclass; the module
    systems/<name>.py, the config group entry conf/system/<name>.yaml and
    `Config.name` share one name. A request of n items (a client's input of
    shape [n, ...]) reaches a policy as n tasks of one request, or, when
    its class sets `takes_queries`, as one QueryTask of size n.
    """

    Config: ClassVar[type[SystemConfig]] = SystemConfig
    takes_queries: ClassVar[bool] = False

    def __init__(self, cluster: Cluster, models: Mapping[str, ModelSpec], config: SystemConfig):
        self.cluster = cluster
        self.models = models
        self.config = config

    def start(self) -> None:
        """Called once at time 0, before the first arrival (periodic timers go here)."""

    def on_arrival(self, task: Task) -> None:
        raise NotImplementedError

    def on_batch_done(self, batch: Batch) -> None:
        """A batch finished (ok), was discarded (late) or failed (error), on a slot still alive."""

    def on_slot_lost(self, slot: int) -> None:
        """The slot left the cluster (its worker died or hung, or a reconfiguration removed it);
        `cluster.slots[slot].alive` is now False. Batches in flight on a lost worker fail (their
        tasks are recorded as errors); on a slot removed by a reconfiguration they run to their end.
        Either way on_batch_done no longer fires for it."""

    def on_slot_added(self, slot: int) -> None:
        """The slot joined the cluster (a reconfiguration started it); it is idle and alive.
        Its index may be new (cluster.slots grew) or that of a slot that left with the same spec."""
        raise NotImplementedError(f"{type(self).__name__} does not support slots joining (reconfiguration)")


def slots_holding(slots: Sequence[Slot], model: str) -> list[int]:
    return [s.index for s in slots if model in s.models]


def take(queue, n: int) -> list:
    """The first `n` tasks of a queue (a deque), removed from it: what a policy dispatches. A batch of one,
    the common case when slots keep up, skips the comprehension (a function made and called each time)."""
    if n == 1:
        return [queue.popleft()]
    return [queue.popleft() for _ in range(n)]
