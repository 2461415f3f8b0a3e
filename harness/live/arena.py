"""Shared memory for request payloads: an ingress writes a request's tensor once, a worker reads it in place.

With `runtime.payload=tensor` every request carries its input tensor (an
FP16 3x224x224 image per item, Triton's binary tensor extension). The bytes
must reach the worker of the slot that runs the request's batch without
passing through the scheduler, which sees only metadata. Each ingress owns
one Arena: fixed-size slots in a memfd (anonymous shared memory: bounded
by the host's memory, not by the size of /dev/shm, which containers often
keep at 64 MiB). The scheduler creates the arenas before it starts the
ingresses and the workers and hands every process the file descriptors, so
nothing is named in the file system and nothing outlives the run.

An ingress allocates a slot when a request is read, copies the tensor into
it, sends the scheduler a reference (ingress, slot, offset, bytes) with the
request's metadata, and frees the slot once it has answered. A worker maps
every arena and gathers its batch's tensors from them (a GPU worker also
pins the arenas, so the copy to the GPU is a DMA from where the ingress
wrote). A request answered early (dropped, timed out) while its batch
still runs frees its slot: a later request may overwrite the bytes a worker
is reading. The cost of the copy is what is measured, not its content, so
this is accepted rather than paid for with reference counts.

    arena = Arena.create(slot_bytes=1 << 20, slots=1024)      # the scheduler
    Arena.attach(fd, slot_bytes, slots)                       # an ingress, a worker
    slot = arena.alloc(); arena.write(slot, data); ...; arena.free(slot)
    arena.view(slot, offset, nbytes)                          # a memoryview, no copy
"""

from __future__ import annotations

import mmap
import os

PAGE = mmap.PAGESIZE


class ArenaFull(Exception):
    """Every slot holds a request still waiting for its answer."""


class Arena:
    """`slots` slots of `slot_bytes` each (rounded up to whole pages) in one shared mapping."""

    def __init__(self, fd: int, slot_bytes: int, slots: int):
        if slot_bytes < 1 or slots < 1:
            raise ValueError(f"an arena needs slots of at least one byte (got {slots} x {slot_bytes} bytes)")
        self.fd = fd
        self.slot_bytes = -(-slot_bytes // PAGE) * PAGE
        self.slots = slots
        self.size = self.slot_bytes * slots
        self.mm = mmap.mmap(fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.buffer = memoryview(self.mm)
        # Last freed, first reused: the pages a run touches are those of its peak concurrency, not of the arena.
        self._free = list(range(slots - 1, -1, -1))

    @classmethod
    def create(cls, slot_bytes: int, slots: int, name: str = "harness-payloads") -> "Arena":
        """A new arena in anonymous shared memory; its fd is inheritable (pass it to child processes)."""
        fd = os.memfd_create(name, 0)           # no MFD_CLOEXEC: children started with pass_fds inherit it
        size = -(-slot_bytes // PAGE) * PAGE * slots
        try:
            os.ftruncate(fd, size)               # sparse: memory is used only where slots are written
        except OSError:
            os.close(fd)
            raise
        return cls(fd, slot_bytes, slots)

    @classmethod
    def attach(cls, spec: str) -> "Arena":
        """The arena another process created, from its spec string (`fd:slot_bytes:slots`, see `spec`)."""
        try:
            fd, slot_bytes, slots = (int(part) for part in spec.split(":"))
        except ValueError:
            raise ValueError(f"an arena spec is fd:slot_bytes:slots (got {spec!r})") from None
        return cls(fd, slot_bytes, slots)

    @property
    def spec(self) -> str:
        return f"{self.fd}:{self.slot_bytes}:{self.slots}"

    @property
    def in_use(self) -> int:
        return self.slots - len(self._free)

    def alloc(self) -> int:
        if not self._free:
            raise ArenaFull(f"all {self.slots} payload slots hold requests waiting for an answer")
        return self._free.pop()

    def free(self, slot: int) -> None:
        self._free.append(slot)

    def write(self, slot: int, data) -> None:
        n = len(data)
        if n > self.slot_bytes:
            raise ValueError(f"a payload of {n} bytes does not fit a slot of {self.slot_bytes}")
        start = slot * self.slot_bytes
        self.buffer[start:start + n] = data

    def view(self, slot: int, offset: int, nbytes: int) -> memoryview:
        if not 0 <= slot < self.slots or offset < 0 or offset + nbytes > self.slot_bytes:
            raise ValueError(f"payload reference ({slot}, {offset}, {nbytes}) is outside the arena")
        start = slot * self.slot_bytes + offset
        return self.buffer[start:start + nbytes]

    def close(self) -> None:
        self.buffer.release()
        self.mm.close()
        os.close(self.fd)


def gather(arenas: list[Arena], refs: list) -> list[memoryview | None]:
    """The views of a batch's payload references [[ingress, slot, offset, bytes] or None, ...]."""
    return [None if ref is None else arenas[ref[0]].view(ref[1], ref[2], ref[3]) for ref in refs]
