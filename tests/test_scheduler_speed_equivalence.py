"""Speed-ups that must not change a decision: each checked against the plain algorithm it replaced."""

from __future__ import annotations

import random
from collections import Counter

from harness.gpu.partitions import parse_partition
from harness.placement import SHARE_TOLERANCE, SlotSpec
from systems import _segments

PARTS = ["mps10", "mps25", "mps30", "mps50", "whole", "mig-1g.10gb-emulated", "mig-3g.40gb-emulated"]


def _best_fit_by_scan(kept, left, gpu_type, devices):
    """systems._segments._best_fit as it was: every device scanned for every segment."""
    free = [1.0] * (devices if devices is not None else 0)
    for spec in kept:
        free[spec.device] -= spec.share
    out = list(kept)
    todo = sorted(((parse_partition(p).share, p, sorted(m)) for (p, m), k in left.items() for _ in range(k)),
                  reverse=True)
    for share, partition, models in todo:
        fits = [d for d in range(len(free)) if free[d] >= share - SHARE_TOLERANCE]
        if not fits:
            if devices is not None:
                return None
            free.append(1.0)
            fits = [len(free) - 1]
        d = min(fits, key=lambda d: (free[d], d))
        free[d] -= share
        out.append(SlotSpec(gpu_type, partition, d, frozenset(models)))
    return out


def test_best_fit_by_bisection_places_every_segment_where_the_scan_did():
    rng = random.Random(7)
    for _ in range(2000):
        devices = rng.choice([None, 1, 2, 3, 4, 8, 16])
        left = Counter({(rng.choice(PARTS), frozenset(rng.sample("abc", rng.randint(1, 2)))): rng.randint(0, 6)
                        for _ in range(rng.randint(0, 5))})
        kept = [SlotSpec("h200", rng.choice(PARTS), rng.randrange(devices), frozenset("a"))
                for _ in range(rng.randint(0, devices or 0))]
        assert _segments._best_fit(list(kept), Counter(left), "h200", devices) == \
            _best_fit_by_scan(list(kept), Counter(left), "h200", devices)
