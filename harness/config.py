"""Structured configs: the schema every conf/ file is checked against.

Hydra merges conf/<group>/<choice>.yaml into these dataclasses, so a wrong
key or a wrong type fails at composition with a message naming the key. The
groups mirror the code: system/ (systems/<name>.py, whose Config dataclass
is registered here as schema/system/<name>), workload/ (workloads), cluster/,
models/, runtime/ and experiment/ (named overrides of the others).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

import systems
from harness.autoscaler import AutoscalerConfig
from harness.core import FINISH
from workloads.config import WorkloadConfig


@dataclass
class ModelConfig:
    slo_ms: float = 100.0               # latency objective, from arrival to response


@dataclass
class SleepModelConfig:
    """l(b) = a*b + c for every model, for scheduler-only studies (cluster.gpu_type=sleep)."""

    a_ms: float = 1.082
    c_ms: float = 5.204
    max_batch: int = 64
    stages: int = 0                     # > 0: each model also runs in this many equal stages (LazyBatching)


@dataclass
class SlotGroupConfig:
    """A group of slots of one kind, on devices of its own (harness.placement)."""

    gpu_type: str = "h200"
    partition: str = "whole"
    count: int = 1                      # slots
    models: List[str] = field(default_factory=list)   # empty: every model served


@dataclass
class ClusterConfig:
    name: str = "h200x4"
    gpu_type: str = "h200"              # profile family under profiles/, or `sleep`
    partition: str = "whole"            # whole | mps<percent> | mig-<profile>
    count: int = 4                      # slots of this first group (mps25: four to a device)
    extra: List[SlotGroupConfig] = field(default_factory=list)   # more groups: other GPU types or shares
    sleep: SleepModelConfig = field(default_factory=SleepModelConfig)


@dataclass
class AppNodeConfig:
    """One task of an app: `model`, or `variants` (served models that can do the task; its tasks name the
    most accurate, by profiles/variants.json, and a system that chooses variants may run any)."""

    name: str = MISSING
    model: str = ""
    variants: List[str] = field(default_factory=list)
    after: List[str] = field(default_factory=list)    # nodes whose tasks must finish first
    copies: float = 1.0                 # tasks per request (mean, e.g. objects a detection finds)
    copies_dist: str = "fixed"          # fixed: round(copies) every time | poisson: drawn per request


@dataclass
class AppConfig:
    """A compound app: a task graph of served models with one end-to-end SLO (harness.apps)."""

    slo_ms: float = MISSING
    accuracy: float = 1.0               # target relative accuracy of every request's paths (1: best variants only)
    nodes: List[AppNodeConfig] = field(default_factory=list)


@dataclass
class FaultConfig:
    """A scripted fault, the same in both runtimes: slot `slot` is lost at run time `t` (live: its worker
    is killed then)."""

    t: float = MISSING
    slot: int = MISSING


@dataclass
class RuntimeConfig:
    """Both runtimes' settings; the live-only ones are ignored by the sim."""

    name: str = "live"                  # live: real HTTP, real time, worker processes | sim: virtual time
    noise: bool = False                 # draw batch latencies around the profile mean with its std
    drain_s: float = 5.0                # after the last arrival, wait this long for requests in flight
    request_delay_ms: float = 0.0       # sim only: client-to-scheduler transport, a fixed delay
    dispatch_delay_ms: float = 0.0      # sim only: from a dispatch to when an idle slot can start the batch
    response_delay_ms: float = 0.0      # sim only: batch end to the client's answer (live measures the real ones)
    calibration: str = ""               # a file of python -m harness.calibrate: the three delays above, measured
    host: str = "127.0.0.1"             # where the server listens; another interface only on purpose
    port: int = 0                       # its HTTP port; 0: any free one (the run prints it)
    load: str = "locust"                # locust: replay the schedule | external: serve for duration_s,
                                        # driven by any client (perf_analyzer, genai-perf, your own)
    executor: str = "emulated"          # emulated | gpu (real GPUs; `cluster=auto` chooses)
    workers: List[str] = field(default_factory=list)   # tcp://host:port of remote workers; empty: spawn local
    worker_timeout_s: float = 5.0       # a worker silent this long is declared lost
    worker_start_timeout_s: float = 300.0   # loading models and capturing CUDA graphs takes a while
    max_body_bytes: int = 1048576       # larger request bodies get 413
    payload: str = "synthetic"          # synthetic: one INT32 per item (scheduler studies) | tensor: each item
                                        # carries an FP16 3x224x224 image, moved to the GPU (the data path's cost)
    payload_arena_mb: int = 1024        # tensor: shared memory per ingress for requests waiting (full: 429)
    max_pending: int = 20000            # admission cap: beyond it new requests are rejected (429)
    ingresses: int = 0                  # HTTP ingress processes; 0: a quarter of the cores, 1 to 8
    spin_us: float = 200.0              # the scheduler's loop polls this close to a timer (blocks until then)
    scheduler_cpu: str = "none"         # the scheduler's core: none (the OS places it) | a core number | auto (the
                                        # fastest, measured, on hosts of 8+ cores); the run's other processes kept off it
    preemption: str = FINISH            # a batch preempted while it runs: finish (runs to its end first, as a CUDA
                                        # graph on a real GPU must) | abort (stops when the stop reaches the slot:
                                        # emulated and sim only)
    slot_start_s: float = 0.5           # sim: seconds a slot takes to start where its profile measured none
                                        # (an emulated worker, measured live)
    faults: List[FaultConfig] = field(default_factory=list)   # scripted slot losses, for fault studies
    locust_workers: int = -1            # -1: sized to the host and the rate (harness.load.default_workers); 0: one process;
                                        # N: a master and N workers
    start_lead_s: float = 4.0           # the schedule starts this long after the load generator is launched
    warm_s: float = 1.0                 # the workers run their models back to back over this long before time 0
                                        # (0: not at all): a graph's first replay, and a GPU's after an idle, run slow


@dataclass
class SeedConfig:
    schedule: int = 0                   # arrival times
    mapping: int = 1                    # trace functions -> models
    payload: int = 2                    # request payloads (live runtime)
    runtime: int = 3                    # latency noise and anything else random inside the runtime


@dataclass
class ValidityConfig:
    min_duration_s: float = 10.0
    min_requests: int = 100
    max_send_lag_p99_ms: float = 2.0    # Symphony's own stress test bound
    max_error_rate: float = 0.01        # requests answered with an error (drops and timeouts are the system's)


@dataclass
class Config:
    runtime: RuntimeConfig = MISSING
    system: Any = MISSING
    workload: WorkloadConfig = MISSING
    cluster: ClusterConfig = MISSING
    models: Dict[str, ModelConfig] = MISSING
    apps: Dict[str, AppConfig] = field(default_factory=dict)   # requests then name apps, not models
    duration_s: float = 30.0            # schedule length
    warmup_s: float = 3.0               # excluded from the measurement window at the start
    cooldown_s: float = 1.0             # ... and at the end
    seeds: SeedConfig = field(default_factory=SeedConfig)
    validity: ValidityConfig = field(default_factory=ValidityConfig)
    autoscaler: AutoscalerConfig = field(default_factory=AutoscalerConfig)
    tags: List[str] = field(default_factory=list)


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for name in systems.names():
        # Kept out of the `system` group so that `system=` lists only real choices.
        cs.store(group="schema/system", name=name, node=systems.policy_class(name).Config)
