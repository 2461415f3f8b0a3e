"""Segments: shared ones filled with the parts of tasks, all of them packed onto devices.

    segments = fill_shared({"mps25": 1}, [("mps25", "resnet50", car, 0.4), ("mps25", "resnet50", dog, 0.5)])
    specs = pack(current, {("mps25", frozenset({"resnet50"})): 3}, "h200", devices=4)

A segment is a slot of one partition holding the models of the tasks it
runs. `fill_shared` lays the parts of shared segments the allocation asked
for (systems/_milp.py) into them in turn, largest first, a part that does not
fit the rest of one going on into the next. `pack` keeps every current slot
that is still wanted, where it is (a reconfiguration leaves those alone:
harness.placement.diff), and places the rest best fit decreasing into the
room left on devices 0..devices-1; only if they do not fit that way does it
pack everything afresh. None: the segments do not fit. Segments are
emulated as MPS shares of their SM count, so a device holds any mix of them
up to its whole (real MIG would also need a legal layout).
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Hashable, Mapping, Sequence

from harness.gpu.partitions import parse_partition
from harness.placement import SHARE_TOLERANCE, SlotSpec


FULL = 1e-6            # a shared segment this close to full takes no more


def fill_shared(counts: Mapping[str, int], parts: Sequence[tuple[str, str, Hashable, float]]
                ) -> list[tuple[str, frozenset[str], tuple]]:
    """Shared segments as (partition, models, who), from `counts` per partition and the parts
    (partition, model, who, fraction of a segment) to lay into them."""
    out = []
    for partition, count in counts.items():
        segments: list[tuple[set, list]] = [(set(), []) for _ in range(count)]
        j, fill = 0, 0.0
        for _, model, who, fraction in sorted((p for p in parts if p[0] == partition), key=lambda p: -p[3]):
            while fraction > FULL:
                models, whos = segments[j]
                models.add(model)
                whos.append(who)
                take = min(fraction, 1.0 - fill)
                fraction -= take
                fill += take
                if fill >= 1.0 - FULL and j + 1 < count:
                    j, fill = j + 1, 0.0
                elif fill >= 1.0 - FULL:
                    break               # the solver's rounding: the last segment is full
        out.extend((partition, frozenset(models), tuple(whos)) for models, whos in segments if whos)
    return out


def pack(current: Sequence[SlotSpec], wanted: Mapping[tuple[str, frozenset[str]], int], gpu_type: str,
         devices: int) -> list[SlotSpec] | None:
    left = Counter(wanted)
    kept = []
    for spec in current:
        key = (spec.partition, spec.models)
        if spec.device < devices and left[key] > 0:
            left[key] -= 1
            kept.append(spec)
    placed = _best_fit(kept, left, gpu_type, devices)
    if placed is None:
        placed = _best_fit([], Counter(wanted), gpu_type, devices)
    return placed


def devices_needed(wanted: Mapping[tuple[str, frozenset[str]], int]) -> int:
    """Devices the segments fill when packed afresh with as many devices as they need."""
    return len({s.device for s in _best_fit([], Counter(wanted), "any", None)})


def _best_fit(kept: list[SlotSpec], left: Counter, gpu_type: str, devices: int | None) -> list[SlotSpec] | None:
    """`kept`, then the segments in `left` best fit decreasing (None: they do not fit `devices`; devices None:
    open as many as needed)."""
    free = [1.0] * (devices if devices is not None else 0)
    for spec in kept:
        free[spec.device] -= spec.share
    out = list(kept)
    todo = sorted(((parse_partition(p).share, p, sorted(m)) for (p, m), k in left.items() for _ in range(k)),
                  reverse=True)
    # Best fit: the device of least free share among those it fits, the lowest of equals, i.e. the first
    # (free, device) at or above the segment's share in this sorted list -- a bisection instead of a scan of
    # every device per segment (this runs off the event loop, but holding the GIL: live, the loop waits on it).
    room = sorted((f, d) for d, f in enumerate(free))
    for share, partition, models in todo:
        k = bisect.bisect_left(room, (share - SHARE_TOLERANCE, -1))
        if k == len(room):
            if devices is not None:
                return None
            free.append(1.0)
            d = len(free) - 1
        else:
            d = room.pop(k)[1]
        free[d] -= share
        bisect.insort(room, (free[d], d))
        out.append(SlotSpec(gpu_type, partition, d, frozenset(models)))
    return out
