"""Placement as a value: which slots exist on which device, with which share, holding which models.

    placement = Placement.from_config(cfg.cluster, models)   # the configured cluster
    placement.describe()          # '4 x 25% MPS shares of 1 H200'
    cluster.reconfigure(placement.prefix(2))                 # a policy or the autoscaler moves the cluster

A `SlotSpec` is what a slot is (GPU type, partition, device, models); a
`Placement` is an ordered tuple of them (the order is the slots' rank) and
checks itself: the shares on one device never add up to more than the
whole device, and a device has one GPU type. Values are frozen and
hashable, so two placements compare by content and a runtime can tell
which slots a reconfiguration keeps, removes and adds (harness.ledger).

A cluster config describes groups of slots: the first group is
`gpu_type`, `partition` and `count`, and `extra` lists more groups (another
GPU type, another share size, a subset of the models). Each group fills
devices of its own in slot order: four mps25 slots to a device, seven
MIG 1g slices, one whole GPU.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from harness.errors import HarnessError
from harness.gpu.partitions import parse_partition

SLEEP = "sleep"
SHARE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class SlotSpec:
    gpu_type: str
    partition: str
    device: int
    models: frozenset[str]

    @property
    def share(self) -> float:
        return parse_partition(self.partition).share

    def label(self) -> str:
        """What one such slot is, in words: 'H200', '25% MPS share of an H200', 'MIG 1g.10gb of an H200'."""
        gpu = self.gpu_type.upper() if self.gpu_type != SLEEP else "sleep-model GPU"
        part = parse_partition(self.partition)
        if part.kind == "whole":
            return gpu
        if part.kind == "mps":
            return f"{part.mps_percentage}% MPS share of {gpu}"
        emulated = " (emulated)" if part.emulated else ""
        return f"MIG {part.mig_profile}{emulated} of {gpu}"


@dataclass(frozen=True)
class Placement:
    slots: tuple[SlotSpec, ...]

    def __post_init__(self):
        object.__setattr__(self, "slots", tuple(self.slots))
        self.verify()

    def verify(self) -> None:
        """HarnessError naming the first rule broken: every slot holds a model; per device one GPU type
        and shares that add up to at most the whole device."""
        used: dict[int, float] = {}
        types: dict[int, str] = {}
        for s in self.slots:
            if not s.models:
                raise HarnessError(f"a slot on device {s.device} holds no model; give every slot at least one")
            if types.setdefault(s.device, s.gpu_type) != s.gpu_type:
                raise HarnessError(f"device {s.device} is given two GPU types ({types[s.device]}, {s.gpu_type}); "
                                   "a device is one GPU")
            used[s.device] = used.get(s.device, 0.0) + s.share
            if used[s.device] > 1.0 + SHARE_TOLERANCE:
                raise HarnessError(f"the slots on device {s.device} hold {used[s.device]:.0%} of it; the shares of "
                                   "one device must add up to at most 100%")

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def devices(self) -> list[int]:
        return sorted({s.device for s in self.slots})

    @property
    def gpus(self) -> float:
        """Share-weighted GPUs: the sum of the slots' shares."""
        return sum(s.share for s in self.slots)

    def prefix(self, n: int) -> "Placement":
        """The first n slots (the autoscaler provisions the lowest ranks)."""
        return Placement(self.slots[:n])

    def describe(self) -> str:
        """'4 x H200', '4 x 25% MPS shares of 1 H200', '2 x H200 + 7 x MIG 1g.10gb (emulated) of 1 H100'."""
        if not self.slots:
            return "no slots"
        parts = []
        groups: list[tuple[tuple[str, str], list[SlotSpec]]] = []
        for s in self.slots:
            key = (s.gpu_type, s.partition)
            if groups and groups[-1][0] == key:
                groups[-1][1].append(s)
            else:
                groups.append((key, [s]))
        for (gpu_type, partition), specs in groups:
            one = specs[0].label()
            n = len(specs)
            if parse_partition(partition).kind == "whole":
                parts.append(f"{n} x {one}")
                continue
            devices = len({s.device for s in specs})
            kind, _, gpu = one.partition(" of ")
            plural = kind.replace("share", "shares") if n > 1 else kind
            parts.append(f"{n} x {plural} of {devices} {gpu}" + ("s" if devices > 1 else ""))
        return " + ".join(parts)

    @classmethod
    def from_config(cls, cluster, models: Iterable[str]) -> "Placement":
        """The configured cluster: the first group (gpu_type, partition, count) and its `extra` groups."""
        everything = list(models)
        groups = [{"gpu_type": cluster.gpu_type, "partition": cluster.partition, "count": cluster.count,
                   "models": []}]
        for i, g in enumerate(cluster.extra):
            groups.append({"gpu_type": g.gpu_type, "partition": g.partition, "count": g.count,
                           "models": list(g.models)})
        slots: list[SlotSpec] = []
        next_device = 0
        for i, g in enumerate(groups):
            where = "cluster" if i == 0 else f"cluster.extra[{i - 1}]"
            if g["count"] < 1:
                raise HarnessError(f"{where}.count must be >= 1 (got {g['count']}); set {where}.count=<slots>")
            unknown = sorted(set(g["models"]) - set(everything))
            if unknown:
                raise HarnessError(f"{where}.models names {unknown}, which are not served; served: {everything}")
            held = frozenset(g["models"] or everything)
            per_device = parse_partition(g["partition"]).shares_per_gpu
            for k in range(g["count"]):
                slots.append(SlotSpec(g["gpu_type"], g["partition"], next_device + k // per_device, held))
            next_device += -(-g["count"] // per_device)
        return cls(tuple(slots))


def diff(old: Sequence[SlotSpec], new: Sequence[SlotSpec]) -> tuple[list[int], list[int], list[int]]:
    """How to move from `old` to `new`: (indices into old that stay, indices into old that leave,
    indices into new that must start). A spec stays when the new placement holds an equal one."""
    want = Counter(new)
    stay, leave = [], []
    for i, s in enumerate(old):
        if want[s] > 0:
            want[s] -= 1
            stay.append(i)
        else:
            leave.append(i)
    kept = Counter(old[i] for i in stay)
    start = []
    for j, s in enumerate(new):
        if kept[s] > 0:
            kept[s] -= 1
        else:
            start.append(j)
    return stay, leave, start
