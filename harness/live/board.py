"""What each emulated device is doing: shared memory the workers of its shares read and write.

A share of a real GPU runs slower the more of the rest of the GPU works
when its batch starts (harness.profiles, LatencyCurve.beside). A real GPU
knows that by itself; emulated shares are separate worker processes, so
they keep it here: one row per worker, (device, share, busy until, batch
size), in a memfd every local worker maps. A worker writes its row when a
batch starts (until when it will run, and the size it runs at) and when it
stops early; before each batch it sums the shares of the other rows of its
device busy past now, and averages the sizes they run. That is the
device as it is when the batch starts, including batches its siblings were
sent after this one was queued, which the scheduler could not know when it
sent it.

The pool (harness.live.workers) creates the board, gives each worker it
starts a row (`--board fd:rows:row`) and takes the row back once the
worker's process has exited. Times are time.monotonic(), one clock for
every process of the host. Workers on other hosts get no row and run as
busy as the scheduler expected.

    board = Board.create(rows=4096)                    # the pool
    row = board.take(device=0, share=0.25)             # for a worker it starts; board.give_back(row)
    Board.attach("fd:rows").beside(row, now)           # a worker: (busy, their batch); .hold(row, until, size)
"""

from __future__ import annotations

import mmap
import os
import time

import numpy as np

DEVICE, SHARE, UNTIL, BATCH = range(4)
COLUMNS = BATCH + 1


def _nbytes(rows: int) -> int:
    return rows * COLUMNS * 8 + 8            # the table, then the count of rows ever taken


class BoardFull(Exception):
    """Every row belongs to a worker still running."""


class Board:
    """`rows` rows of (device, share, busy until, batch size) in one shared mapping."""

    def __init__(self, fd: int, rows: int):
        if rows < 1:
            raise ValueError(f"a board needs at least one row (got {rows})")
        self.fd = fd
        self.rows = rows
        self.mm = mmap.mmap(fd, _nbytes(rows), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.table = np.ndarray((rows, COLUMNS), dtype=np.float64, buffer=self.mm)
        # After the table: how many rows have ever been taken (rows are taken lowest first), so a worker
        # reads those, not all 4096, before each batch (about 20 us that an emulated batch would add).
        self._used = np.ndarray((1,), dtype=np.float64, buffer=self.mm, offset=rows * COLUMNS * 8)
        self._free = list(range(rows - 1, -1, -1))

    @classmethod
    def create(cls, rows: int = 4096) -> "Board":
        """A new board in anonymous shared memory, every row empty; its fd is inheritable (pass_fds)."""
        fd = os.memfd_create("harness-devices", 0)
        try:
            os.ftruncate(fd, _nbytes(rows))
        except OSError:
            os.close(fd)
            raise
        board = cls(fd, rows)
        board.table[:, DEVICE] = -1.0                # a row no worker holds is on no device
        return board

    @classmethod
    def attach(cls, spec: str) -> "Board":
        """The board another process created, from its spec string (`fd:rows`)."""
        try:
            fd, rows = (int(part) for part in spec.split(":"))
        except ValueError:
            raise ValueError(f"a board spec is fd:rows (got {spec!r})") from None
        return cls(fd, rows)

    @property
    def spec(self) -> str:
        return f"{self.fd}:{self.rows}"

    def take(self, device: int, share: float) -> int:
        """A row for a worker of a `share` of `device`, idle."""
        if not self._free:
            raise BoardFull(f"all {self.rows} rows of the device board belong to running workers")
        row = self._free.pop()
        self.table[row] = (device, share, 0.0, 0.0)
        self._used[0] = max(self._used[0], row + 1)
        return row

    def give_back(self, row: int) -> None:
        """The row's worker has exited: its share works no more, and the row may go to another worker."""
        self.table[row] = (-1.0, 0.0, 0.0, 0.0)
        self._free.append(row)

    def hold(self, row: int, until: float, batch: int = 0) -> None:
        """The row's share works until `until` (time.monotonic()), on a batch of `batch` (as it runs: padded)."""
        self.table[row, BATCH] = batch
        self.table[row, UNTIL] = until

    def beside(self, row: int, now: float | None = None) -> tuple[float, float | None]:
        """What works beside the row's share at `now`: the fraction of the rest of its device at work (the
        other rows' shares of that device busy past it, over what the row's share leaves; 0 for a whole
        one), and the share-weighted mean batch those rows run (None where none works)."""
        t = self.table[:int(self._used[0])]
        device, share = t[row, DEVICE], t[row, SHARE]
        rest = 1.0 - share
        if rest <= 1e-9:
            return 0.0, None
        if now is None:
            now = time.monotonic()
        working = (t[:, DEVICE] == device) & (t[:, UNTIL] > now)
        working[row] = False
        shares = t[working, SHARE]
        total = float(shares.sum())
        if total <= 0:
            return 0.0, None
        return min(1.0, total / rest), float((shares * t[working, BATCH]).sum()) / total

    def close(self) -> None:
        del self.table, self._used
        self.mm.close()
        os.close(self.fd)
