"""Small builders for driving one policy through the discrete-event runtime in tests."""

from __future__ import annotations

import numpy as np

from harness.core import GpuSlot, ModelSpec
from harness.profiles import LatencyCurve
from harness.runtimes.sim import SimCluster


def linear_curve(a_ms: float, c_ms: float, max_batch: int = 64) -> LatencyCurve:
    return LatencyCurve.linear(a_ms, c_ms, max_batch)


def cluster(slos_ms: dict[str, float], n_gpus: int, curve: LatencyCurve, noise: bool = False) -> SimCluster:
    models = frozenset(slos_ms)
    gpus = [GpuSlot(i, f"g{i}", "test", "whole", models) for i in range(n_gpus)]
    return SimCluster(gpus, [{m: curve for m in models}] * n_gpus, noise=noise)


def specs(slos_ms: dict[str, float]) -> dict[str, ModelSpec]:
    return {m: ModelSpec(m, s / 1000.0) for m, s in slos_ms.items()}


def replay(policy_cls, config, slos_ms: dict[str, float], n_gpus: int, curve: LatencyCurve,
           arrivals: list[tuple[float, str]], drain: float = 1.0):
    """Run `arrivals` [(t, model), ...] through a fresh policy; returns (requests, sim cluster, policy)."""
    sim = cluster(slos_ms, n_gpus, curve)
    models = specs(slos_ms)
    policy = policy_cls(sim, models, config)
    times = np.array([t for t, _ in arrivals], dtype=float)
    reqs = sim.run(policy, np.arange(len(arrivals)), [m for _, m in arrivals], times, models, drain=drain)
    return reqs, sim, policy


def poisson(rates: dict[str, float], duration: float, seed: int) -> list[tuple[float, str]]:
    """Seeded Poisson arrivals [(t, model), ...] at `rates` (req/s per model) for `duration` seconds."""
    rng = np.random.default_rng(seed)
    arrivals = []
    for m, rate in rates.items():
        gaps = rng.exponential(1.0 / rate, int(rate * duration * 1.5) + 10)
        arrivals += [(t, m) for t in np.cumsum(gaps) if t < duration]
    return sorted(arrivals)
