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
        # The table as flat doubles, row-major, read and written a cell at a time in plain Python. A worker
        # reads a few rows before each batch, which an emulated batch adds to its time: with numpy views
        # that took 7 us in a loop and 50-70 us a batch in a live run on a loaded 2-core host; so, 1 us
        # and 7-11 us. After the table, one cell: how many rows have ever been taken (rows are taken
        # lowest first), so a worker reads those, not all 4096.
        self.cells = memoryview(self.mm).cast("d")
        self._count_at = rows * COLUMNS
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
        for row in range(rows):
            board.cells[row * COLUMNS + DEVICE] = -1.0      # a row no worker holds is on no device
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
        self._write(row, device, share)
        self.cells[self._count_at] = max(self.cells[self._count_at], row + 1)
        return row

    def give_back(self, row: int) -> None:
        """The row's worker has exited: its share works no more, and the row may go to another worker."""
        self._write(row, -1.0, 0.0)
        self._free.append(row)

    def _write(self, row: int, device: float, share: float) -> None:
        for column, value in enumerate((device, share, 0.0, 0.0)):        # idle, batch 0
            self.cells[row * COLUMNS + column] = value

    def read(self, row: int) -> tuple[float, ...]:
        """The row's (device, share, busy until, batch size)."""
        return tuple(self.cells[row * COLUMNS:(row + 1) * COLUMNS])

    def hold(self, row: int, until: float, batch: int = 0) -> None:
        """The row's share works until `until` (time.monotonic()), on a batch of `batch` (as it runs: padded)."""
        self.cells[row * COLUMNS + BATCH] = batch
        self.cells[row * COLUMNS + UNTIL] = until

    def beside(self, row: int, now: float | None = None) -> tuple[float, float | None]:
        """What works beside the row's share at `now`: the fraction of the rest of its device at work (the
        other rows' shares of that device busy past it, over what the row's share leaves; 0 for a whole
        one), and the share-weighted mean batch those rows run (None where none works)."""
        cells = self.cells
        at = row * COLUMNS
        device, rest = cells[at + DEVICE], 1.0 - cells[at + SHARE]
        if rest <= 1e-9:
            return 0.0, None
        if now is None:
            now = time.monotonic()
        total = weighted = 0.0
        for other in range(0, int(cells[self._count_at]) * COLUMNS, COLUMNS):
            if cells[other + DEVICE] == device and cells[other + UNTIL] > now and other != at:
                share = cells[other + SHARE]
                total += share
                weighted += share * cells[other + BATCH]
        if total <= 0:
            return 0.0, None
        return min(1.0, total / rest), weighted / total

    def close(self) -> None:
        self.cells.release()
        self.mm.close()
        os.close(self.fd)
