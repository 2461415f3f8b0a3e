"""Shared by the systems that share GPUs spatially (dstack, paris_elsa): the shares a GPU type is
profiled at, and moving the cluster to a new placement a wave of devices at a time.

    shares = profiled_shares(cluster, models, ("mps", "whole"), "dstack")   # [(partition, share, curves)]
    rollout = Rollout(cluster, overlap=True)
    rollout.to(target)            # a Placement on the cluster's devices
    rollout.joined(slot)          # from the policy's on_slot_added: the next wave starts when this one is in

A right-sizing policy needs latencies at shares the cluster does not have
yet, so it reads the profile library of the cluster's GPU type
(profiles/<gpu_type>/<partition>.json) once, when it is built, as the
assembly does for the slots it starts with; the cluster's own partitions
count too (the sleep model has no files: its latency is the same at every
share, so there the configured partition is the only one).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

from harness import profiles
from harness.core import Slot
from harness.errors import HarnessError
from harness.gpu.partitions import parse_partition
from harness.placement import Placement, SlotSpec
from harness.profiles import LatencyCurve

# A move changes the devices in this many waves, so the rest of the cluster serves while a wave restarts.
ROLL_WAVES = 2

Share = tuple[str, float, Mapping[str, LatencyCurve]]    # (partition, fraction of the GPU, curve per model)


def one_gpu_type(cluster, system: str) -> str:
    """The cluster's GPU type; HarnessError if it mixes several (a share is a share of one kind of GPU)."""
    types = sorted({s.gpu_type for s in cluster.slots})
    if len(types) != 1:
        raise HarnessError(f"{system} sizes shares of one GPU type, but the cluster has {', '.join(types)}; "
                           "give a cluster of one cluster.gpu_type (no extra groups of another type)")
    return types[0]


def profiled_shares(cluster, models: Iterable[str], kinds: Sequence[str], system: str) -> list[Share]:
    """Every partition of `kinds` (harness.gpu.partitions: whole, mps, mig-emulated) at which all `models`
    are profiled for the cluster's GPU type, or that a slot holding them all has; smallest share first."""
    gpu_type = one_gpu_type(cluster, system)
    models = list(models)
    found: dict[str, Mapping[str, LatencyCurve]] = {}
    for path in sorted((profiles.PROFILES_DIR / gpu_type).glob("*.json")):
        if parse_partition(path.stem).kind in kinds:
            curves = profiles.load_profile(path).curves
            if all(m in curves for m in models):
                found[path.stem] = {m: curves[m] for m in models}
    for s in cluster.slots:
        if s.partition not in found and parse_partition(s.partition).kind in kinds and set(models) <= s.models:
            found[s.partition] = {m: cluster.curve(m, s.index) for m in models}
    if not found:
        raise HarnessError(f"{system} found no {' or '.join(kinds)} partition profiled for every served model on "
                           f"{gpu_type}; profile them (python -m harness.gpu.profiler) or choose another cluster")
    return sorted(((p, parse_partition(p).share, c) for p, c in found.items()), key=lambda s: (s[1], s[0]))


def spec_of(slot: Slot) -> SlotSpec:
    return SlotSpec(slot.gpu_type, slot.partition, slot.device, slot.models)


class Rollout:
    """Moves the cluster to a target placement in waves of the devices that change.

    A reconfiguration restarts a device's slots only after the slots leaving it have drained, so
    changing every device at once would leave the whole cluster without a slot for the start cost.
    Here each wave is a placement that takes its devices to the target and leaves the others as they
    are; the next wave goes once every slot the wave started has joined. A new target replaces the
    old one from the next wave on. With `overlap` (make before break: the old shares serve until the
    new ones of their device have joined, Cluster.reconfigure) no device waits empty, so one wave
    moves them all; without it, ROLL_WAVES waves.
    """

    def __init__(self, cluster, overlap: bool = False):
        self.cluster = cluster
        self.overlap = overlap
        self.waves = 1 if overlap else ROLL_WAVES
        self.target: Placement | None = None
        self.starting: Counter = Counter()     # specs of the current wave not yet joined

    def to(self, target: Placement) -> None:
        self.target = target
        self.starting.clear()
        self._next_wave()

    def joined(self, slot: int) -> None:
        spec = spec_of(self.cluster.slots[slot])
        if self.starting[spec] > 0:
            self.starting[spec] -= 1
            if not +self.starting:
                self._next_wave()

    def _next_wave(self) -> None:
        if self.target is None:
            return
        current = self.cluster.placement
        have, want = _by_device(current.slots), _by_device(self.target.slots)
        devices = sorted(set(have) | set(want))
        changed = [d for d in devices if not _same(have.get(d, []), want.get(d, []))]
        if not changed:
            self.target = None
            return
        wave = set(changed[:-(-len(devices) // self.waves)])
        step = Placement(tuple(s for d in devices for s in (want if d in wave else have).get(d, ())))
        self.starting = Counter(step.slots) - Counter(current.slots)
        self.cluster.reconfigure(step, overlap=self.overlap)
        if not self.starting:                  # the wave only removed slots: nothing to wait for
            self._next_wave()


def _same(a: list[SlotSpec], b: list[SlotSpec]) -> bool:
    """Whether two lists hold the same specs, in any order (as Counters would say; a plan that keeps a device
    as it is lists it alike, so the Counters are seldom needed: a plan over a hundred devices is on the loop)."""
    return a == b or (len(a) == len(b) and Counter(a) == Counter(b))


def _by_device(specs: Iterable[SlotSpec]) -> dict[int, list[SlotSpec]]:
    out: dict[int, list[SlotSpec]] = {}
    for s in specs:
        out.setdefault(s.device, []).append(s)
    return out
