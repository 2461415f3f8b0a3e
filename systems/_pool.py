"""Which GPU slot frees first: earliest predicted free time, ties to the lowest rank.

Idle slots count as free "now", so among idle slots the lowest rank wins:
low-ranked slots stay busy and high-ranked ones stay idle, which is what makes
GPU use load-proportional (Symphony) and lets an autoscaler release the top.
Both operations are O(log n), which matters at thousands of slots.
"""

from __future__ import annotations

import heapq
from typing import Iterable


class GpuPool:
    def __init__(self, ranks: Iterable[int]):
        self.ranks = sorted(ranks)
        self.free_at = {r: 0.0 for r in self.ranks}
        self._idle = {r: True for r in self.ranks}
        self._idle_heap = list(self.ranks)          # ranks; an entry is live while _idle[r]
        self._busy_heap: list[tuple[float, int]] = []  # (free_at, rank); live while it matches

    def __len__(self) -> int:
        return len(self.ranks)

    def peek(self, now: float) -> tuple[int, float]:
        """(rank, time it frees) of the slot to use next; the time is `now` for an idle slot."""
        busy, idle, free_at, is_idle = self._busy_heap, self._idle_heap, self.free_at, self._idle
        while busy and busy[0][0] <= now:
            t, r = heapq.heappop(busy)
            if t == free_at[r] and not is_idle[r]:
                is_idle[r] = True
                heapq.heappush(idle, r)
        while idle and not is_idle[idle[0]]:
            heapq.heappop(idle)
        if idle:
            return idle[0], now
        while busy and (busy[0][0] != free_at[busy[0][1]] or is_idle[busy[0][1]]):
            heapq.heappop(busy)
        if not busy:
            return -1, float("inf")            # every slot removed
        t, r = busy[0]
        return r, t

    def book(self, rank: int, until: float) -> None:
        """The slot is busy until `until` (predicted); use float('inf') for 'until released'."""
        self.free_at[rank] = until
        self._idle[rank] = False
        heapq.heappush(self._busy_heap, (until, rank))

    def release(self, rank: int, now: float) -> None:
        """The slot has nothing left to run (its last batch finished)."""
        if self.free_at[rank] != self.free_at[rank]:
            return                            # removed (NaN): only add() brings it back
        if not self._idle[rank]:
            self.free_at[rank] = now
            self._idle[rank] = True
            heapq.heappush(self._idle_heap, rank)

    def remove(self, rank: int) -> None:
        """The slot left the cluster (worker lost or released): never pick it again."""
        self.book(rank, float("inf"))
        self.free_at[rank] = float("nan")     # matches no heap entry, so it is never returned

    def add(self, rank: int, now: float) -> None:
        """The slot (back) in the cluster, idle."""
        self.free_at[rank] = now
        self._idle[rank] = False
        self.release(rank, now)


class Pools:
    """One GpuPool per distinct set of slots that hold a model.

    When every slot holds every model (the usual cluster) this is a single
    pool; with partial placement, booking a slot updates every pool it is in.
    """

    def __init__(self, gpus):
        holders: dict[str, list[int]] = {}
        for g in gpus:
            for m in g.models:
                holders.setdefault(m, []).append(g.index)
        by_set: dict[tuple[int, ...], GpuPool] = {}
        self._of_model = {m: by_set.setdefault(tuple(sorted(r)), GpuPool(r)) for m, r in holders.items()}
        self._of_rank: dict[int, list[GpuPool]] = {}
        for pool in by_set.values():
            for r in pool.ranks:
                self._of_rank.setdefault(r, []).append(pool)

    def of(self, model: str) -> GpuPool:
        return self._of_model[model]

    def book(self, rank: int, until: float) -> None:
        for pool in self._of_rank[rank]:
            pool.book(rank, until)

    def release(self, rank: int, now: float) -> None:
        for pool in self._of_rank[rank]:
            pool.release(rank, now)

    def remove(self, rank: int) -> None:
        for pool in self._of_rank[rank]:
            pool.remove(rank)

    def add(self, rank: int, now: float) -> None:
        for pool in self._of_rank[rank]:
            pool.add(rank, now)
