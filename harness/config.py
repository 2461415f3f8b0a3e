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


@dataclass
class ClusterConfig:
    name: str = "h200x4"
    gpu_type: str = "h200"              # profile family under profiles/, or `sleep`
    partition: str = "whole"            # whole | mps<percent> | mig-<profile>
    count: int = 4                      # slots
    sleep: SleepModelConfig = field(default_factory=SleepModelConfig)


@dataclass
class RuntimeConfig:
    """Both runtimes' settings; the live-only ones are ignored by the sim."""

    name: str = "live"                  # live: real HTTP, real time, worker processes | sim: virtual time
    noise: bool = False                 # draw batch latencies around the profile mean with its std
    drain_s: float = 5.0                # after the last arrival, wait this long for requests in flight
    request_delay_ms: float = 0.0       # sim only: client-to-scheduler transport, a fixed delay
    response_delay_ms: float = 0.0      # sim only: scheduler-to-client transport (live measures the real ones)
    host: str = "127.0.0.1"             # where the frontend listens; another interface only on purpose
    executor: str = "emulated"          # emulated | gpu (real GPUs; `cluster=auto` chooses)
    workers: List[str] = field(default_factory=list)   # tcp://host:port of remote workers; empty: spawn local
    worker_timeout_s: float = 5.0       # a worker silent this long is declared lost
    worker_start_timeout_s: float = 300.0   # loading models and capturing CUDA graphs takes a while
    max_body_bytes: int = 1048576       # larger request bodies get 413
    max_pending: int = 20000            # admission cap: beyond it new requests are rejected (429)
    spin_us: float = 500.0              # the event loop busy-waits this close to a timer
    locust_workers: int = 0             # 0: one Locust process; N: a master and N workers
    start_lead_s: float = 4.0           # the schedule starts this long after the load generator is launched


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


@dataclass
class Config:
    runtime: RuntimeConfig = MISSING
    system: Any = MISSING
    workload: WorkloadConfig = MISSING
    cluster: ClusterConfig = MISSING
    models: Dict[str, ModelConfig] = MISSING
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
