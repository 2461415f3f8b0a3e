"""Small builders for driving one policy through the discrete-event runtime in tests."""

from __future__ import annotations

import numpy as np

from harness.core import FINISH, ModelSpec, Slot
from harness.ledger import Ledger
from harness.profiles import LatencyCurve
from harness.runtimes.sim import SimCluster


def linear_curve(a_ms: float, c_ms: float, max_batch: int = 64) -> LatencyCurve:
    return LatencyCurve.linear(a_ms, c_ms, max_batch)


def slots(models, n_gpus: int, partition: str = "whole") -> list[Slot]:
    return [Slot(i, f"g{i}", "test", partition, frozenset(models), device=i) for i in range(n_gpus)]


def cluster(slos_ms: dict[str, float], n_gpus: int, curve: LatencyCurve, noise: bool = False,
            slot_start_s: float = 0.0, preemption: str = FINISH) -> SimCluster:
    ledger = Ledger(slots(slos_ms, n_gpus), [{m: curve for m in slos_ms}] * n_gpus,
                    curves_of=lambda spec: {m: curve for m in spec.models})
    return SimCluster(ledger, noise=noise, slot_start_s=slot_start_s, preemption=preemption)


def specs(slos_ms: dict[str, float]) -> dict[str, ModelSpec]:
    return {m: ModelSpec(m, s / 1000.0) for m, s in slos_ms.items()}


def slo_of(slos_ms: dict[str, float]) -> dict[str, float]:
    return {m: s / 1000.0 for m, s in slos_ms.items()}


def replay(policy_cls, config, slos_ms: dict[str, float], n_gpus: int, curve: LatencyCurve,
           arrivals: list[tuple[float, str]], drain: float = 1.0, preemption: str = FINISH, prepare=None):
    """Run `arrivals` [(t, model), ...] through a fresh policy (given to `prepare` first, if named);
    returns (tasks, sim cluster, policy)."""
    sim = cluster(slos_ms, n_gpus, curve, preemption=preemption)
    policy = policy_cls(sim, specs(slos_ms), config)
    if prepare is not None:
        prepare(policy)
    times = np.array([t for t, _ in arrivals], dtype=float)
    tasks = sim.run(policy, np.arange(len(arrivals)), [m for _, m in arrivals], times, slo_of(slos_ms), drain=drain)
    return tasks, sim, policy


def poisson(rates: dict[str, float], duration: float, seed: int) -> list[tuple[float, str]]:
    """Seeded Poisson arrivals [(t, model), ...] at `rates` (req/s per model) for `duration` seconds."""
    rng = np.random.default_rng(seed)
    arrivals = []
    for m, rate in rates.items():
        gaps = rng.exponential(1.0 / rate, int(rate * duration * 1.5) + 10)
        arrivals += [(t, m) for t in np.cumsum(gaps) if t < duration]
    return sorted(arrivals)
