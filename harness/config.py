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
    name: str = "sim"                   # sim: discrete-event, virtual time
    noise: bool = False                 # draw batch latencies around the profile mean with its std
    drain_s: float = 5.0                # after the last arrival, wait this long for requests in flight


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
