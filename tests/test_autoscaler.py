"""The autoscaler: slots join after the provisioning delay under sustained load and leave, highest
rank first, after the cool-down; it never goes below min_slots."""

import numpy as np
import pytest

from harness.autoscaler import Autoscaled, AutoscalerConfig
from harness.errors import HarnessError
from systems.eager import Eager, EagerConfig
from systems.symphony import Symphony, SymphonyConfig
from tests.simkit import cluster, linear_curve, specs

CURVE = linear_curve(1.0, 5.0, 64)
CFG = AutoscalerConfig(enabled=True, initial_slots=1, min_slots=1, interval_s=1.0, scale_up_utilisation=0.7,
                       scale_up_after_s=2.0, scale_down_idle_s=5.0, provision_delay_s=3.0)


def run(policy_cls, policy_cfg, arrivals, n_gpus=4, cfg=CFG):
    sim = cluster({"m": 100}, n_gpus, CURVE)
    models = specs({"m": 100})
    policy = Autoscaled(policy_cls(sim, models, policy_cfg), cfg)
    times = np.array(arrivals)
    reqs = sim.run(policy, np.arange(len(times)), ["m"] * len(times), times, models, drain=30.0)
    return reqs, sim, policy


def test_slots_join_under_load_and_leave_after_cool_down():
    # 10 s of 400 req/s, one request at a time (max_batch 1: 6 ms each -> 2.4 slots busy), then silence.
    busy = np.arange(0, 10, 1 / 400).tolist()
    reqs, sim, policy = run(Eager, EagerConfig(max_batch=1), busy + [40.0])
    counts = dict(policy.timeline)
    t_up = [t for t, n in policy.timeline if n > 1]
    # Hot from the first tick (t=1); after 2 s more (t=3) a slot is requested; it joins 3 s later.
    assert t_up[0] == pytest.approx(6.0)
    assert max(counts.values()) >= 3
    # After the load ends (t=10) slots are released, highest rank first, down to min_slots.
    downs = [t for (_, before), (t, n) in zip(policy.timeline, policy.timeline[1:]) if n < before]
    assert downs and policy.timeline[-1][1] == 1
    assert all(t >= 10 + CFG.scale_down_idle_s for t in downs)
    assert [g.alive for g in sim.gpus] == [True, False, False, False]
    assert all(r.status is not None for r in reqs)


def test_no_dispatch_to_a_slot_before_it_joins():
    # Symphony at 2,000 req/s needs more than one slot: later slots serve only after joining.
    busy = np.arange(0, 8, 1 / 2000).tolist()
    _, sim, policy = run(Symphony, SymphonyConfig(max_batch=4), busy)
    joined = sorted(t for (_, before), (t, n) in zip(policy.timeline, policy.timeline[1:]) if n > before)
    first_use = {}
    for b in sim.batches:
        first_use.setdefault(b.gpu, b.t_dispatch)
    assert len(first_use) > 1
    for gpu, t in first_use.items():
        if gpu > 0:
            assert t >= joined[gpu - 1] >= CFG.scale_up_after_s + CFG.provision_delay_s


def test_bad_autoscaler_config_is_refused():
    sim = cluster({"m": 100}, 2, CURVE)
    policy = Eager(sim, specs({"m": 100}), EagerConfig())
    with pytest.raises(HarnessError, match="min_slots"):
        Autoscaled(policy, AutoscalerConfig(enabled=True, initial_slots=3))
