"""Which GPU slot frees first: earliest predicted free time, ties to the lowest rank.

Idle slots count as free "now", so among idle slots the lowest rank wins:
low-ranked slots stay busy and high-ranked ones stay idle, which is what makes
GPU use load-proportional (Symphony) and lets an autoscaler release the top.
Both operations are O(log n), which matters at thousands of slots.
"""

from __future__ import annotations

import heapq
from typing import Iterable

INF = float("inf")


class GpuPool:
    def __init__(self, ranks: Iterable[int]):
        self.ranks = sorted(ranks)
        self.free_at = {r: 0.0 for r in self.ranks}
        self._idle = {r: True for r in self.ranks}
        self._idle_heap = list(self.ranks)          # ranks; an entry is live while _idle[r]
        self._busy_heap: list[tuple[float, int]] = []  # (free_at, rank); live while it matches
        # No slot enters the idle heap twice, nor the busy heap twice 'until released'. Else a heap gains
        # an entry per batch wherever no peek meets the old one at its top (a slot booked until released
        # again and again; one free again before the next peek, as instant slots are), and the peek that
        # finally does pops them all: 100,000 entries at 100,000 req/s within a second, tens of ms at once.
        self._in_idle_heap = set(self.ranks)
        self._booked_inf: set[int] = set()          # ranks with an (inf, rank) entry in the busy heap

    def __len__(self) -> int:
        return len(self.ranks)

    def copy(self) -> "GpuPool":
        other = GpuPool([])
        other.ranks = list(self.ranks)
        other.free_at = dict(self.free_at)
        other._idle = dict(self._idle)
        other._idle_heap = list(self._idle_heap)
        other._busy_heap = list(self._busy_heap)
        other._in_idle_heap = set(self._in_idle_heap)
        other._booked_inf = set(self._booked_inf)
        return other

    def peek(self, now: float) -> tuple[int, float]:
        """(rank, time it frees) of the slot to use next; the time is `now` for an idle slot."""
        busy, idle, free_at, is_idle = self._busy_heap, self._idle_heap, self.free_at, self._idle
        in_idle = self._in_idle_heap
        while busy and busy[0][0] <= now:
            t, r = heapq.heappop(busy)
            if t == INF:
                self._booked_inf.discard(r)
            if t == free_at[r] and not is_idle[r]:
                is_idle[r] = True
                if r not in in_idle:                  # else its entry there is live again
                    in_idle.add(r)
                    heapq.heappush(idle, r)
        while idle and not is_idle[idle[0]]:
            in_idle.discard(heapq.heappop(idle))
        if idle:
            return idle[0], now
        while busy and (busy[0][0] != free_at[busy[0][1]] or is_idle[busy[0][1]]):
            t, r = heapq.heappop(busy)
            if t == INF:
                self._booked_inf.discard(r)
        if not busy:
            return -1, INF                     # every slot removed
        t, r = busy[0]
        return r, t

    def book(self, rank: int, until: float) -> None:
        """The slot is busy until `until` (predicted); use float('inf') for 'until released'."""
        self.free_at[rank] = until
        self._idle[rank] = False
        if until != INF:
            heapq.heappush(self._busy_heap, (until, rank))
        elif rank not in self._booked_inf:            # else its entry there is live again
            self._booked_inf.add(rank)
            heapq.heappush(self._busy_heap, (until, rank))

    def release(self, rank: int, now: float) -> None:
        """The slot has nothing left to run (its last batch finished)."""
        if self.free_at[rank] != self.free_at[rank]:
            return                            # removed (NaN): only add() brings it back
        if not self._idle[rank]:
            self.free_at[rank] = now
            self._idle[rank] = True
            self._push_idle(rank)

    def _push_idle(self, rank: int) -> None:
        if rank not in self._in_idle_heap:            # else its entry there is live again
            self._in_idle_heap.add(rank)
            heapq.heappush(self._idle_heap, rank)

    def remove(self, rank: int) -> None:
        """The slot left the cluster (worker lost or released): never pick it again."""
        self.book(rank, INF)
        self.free_at[rank] = float("nan")     # matches no heap entry, so it is never returned

    def add(self, rank: int, now: float) -> None:
        """The slot (back, or new) in the cluster, idle."""
        if rank not in self.free_at:
            self.ranks.append(rank)
        self.free_at[rank] = now
        self._idle[rank] = False
        self.release(rank, now)

    def adopt(self, rank: int, source: "GpuPool") -> None:
        """Take slot `rank` in as it stands in `source`: idle or busy, with its predicted free time."""
        self.ranks.append(rank)
        if source._idle[rank]:
            self.free_at[rank] = source.free_at[rank]
            self._idle[rank] = True
            self._push_idle(rank)
        else:
            self.book(rank, source.free_at[rank])


class Pools:
    """One GpuPool per distinct set of slots that hold a model.

    When every slot holds every model (the usual cluster) this is a single
    pool; with partial placement, booking a slot updates every pool it is in.
    A policy may narrow each model's pool further (restrict): Symphony's
    sub-clusters.
    """

    def __init__(self, slots):
        holders: dict[str, list[int]] = {}
        for s in slots:
            if s.alive:
                for m in s.models:
                    holders.setdefault(m, []).append(s.index)
        by_set: dict[tuple[int, ...], GpuPool] = {}
        self._of_model = {m: by_set.setdefault(tuple(sorted(r)), GpuPool(r)) for m, r in holders.items()}
        self._of_rank: dict[int, list[GpuPool]] = {}
        for pool in by_set.values():
            for r in pool.ranks:
                self._of_rank.setdefault(r, []).append(pool)
        self._slots = slots

    def add(self, rank: int, now: float) -> None:
        """A slot joined: into the pool of every model it holds. A new slot that holds only some of
        the models sharing a pool splits that pool, so no model is routed to a slot without it."""
        if rank not in self._of_rank:
            held = self._slots[rank].models
            pools: list[GpuPool] = []
            for m in sorted(held):
                pool = self._of_model.get(m)
                if pool is None:
                    pool = self._of_model[m] = GpuPool([])
                elif any(self._of_model.get(o) is pool for o in self._of_model if o not in held):
                    split = pool.copy()
                    for o in held:
                        if self._of_model.get(o) is pool:
                            self._of_model[o] = split
                    for r in split.ranks:
                        self._of_rank[r].append(split)
                    pool = split
                if pool not in pools:
                    pools.append(pool)
            self._of_rank[rank] = pools
        for pool in self._of_rank[rank]:
            pool.add(rank, now)

    def restrict(self, allotted: dict[str, list[int]]) -> None:
        """Serve every model only from the slots `allotted` to it (Symphony's sub-clusters); name every model.

        Each slot keeps its predicted free time and idle state, so a batch
        booked before the change still holds its slot after it; a slot
        allotted to no model keeps them too, for a later restriction. Slots
        that have left are skipped; one that joins later goes into the pool of
        every model it holds (add) until the next restriction.
        """
        current = {r: pools[0] for r, pools in self._of_rank.items()
                   if pools and pools[0].free_at[r] == pools[0].free_at[r]}    # alive: a removed slot's is NaN
        by_set: dict[tuple[int, ...], GpuPool] = {}

        def pool_of(ranks) -> GpuPool:
            key = tuple(sorted(r for r in ranks if r in current))
            if key not in by_set:
                by_set[key] = pool = GpuPool([])
                for r in key:
                    pool.adopt(r, current[r])
            return by_set[key]

        self._of_model = {m: pool_of(ranks) for m, ranks in allotted.items()}
        used = {r for pool in by_set.values() for r in pool.ranks}
        pool_of(r for r in current if r not in used)
        self._of_rank = {}
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

