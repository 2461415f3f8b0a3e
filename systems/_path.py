"""The serving path's time a policy plans with, written once: Symphony's model of it, which eager and
LazyBatching share. A batch dispatched now can start `d_ctrl` later (the way to the worker), costs
`d_data` per request beside its execution (its input in, its answer out), and its answers reach the
clients `response` after it ends. A policy that plans to a deadline's edge without this time misses
on a real serving path by as much (measured on one H200: the policy's view ends about 1-4 ms before
the client's)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.core import SystemConfig
from harness.errors import HarnessError

US = 1e-6


@dataclass
class ServingPathConfig(SystemConfig):
    d_ctrl_us: float = 100.0               # dispatch to the worker: before a batch can start
    d_data_us: float = 50.0                # per request of a batch: its input in, its answer out
    response_allowance_us: float = 2000.0  # returning the answers after the batch ends


@dataclass(frozen=True)
class ServingPath:
    d_ctrl: float                          # seconds, as the config's fields above
    d_data: float
    response: float

    @classmethod
    def of(cls, config: ServingPathConfig) -> "ServingPath":
        for name in ("d_ctrl_us", "d_data_us", "response_allowance_us"):
            if not getattr(config, name) >= 0:
                raise HarnessError(f"{config.name}: {name} must be >= 0 (got {getattr(config, name)}); "
                                   f"fix system.{name}")
        return cls(config.d_ctrl_us * US, config.d_data_us * US, config.response_allowance_us * US)
