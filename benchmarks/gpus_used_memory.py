"""Peak memory and time of metrics.gpus_used over a day-long trace replayed at time_scale 1.

    python benchmarks/gpus_used_memory.py                 # 40 slots, a batch every ~30 ms each, 86,400 s
    python benchmarks/gpus_used_memory.py --hours 1       # a smaller day

The batches are synthetic: on each of 40 slots (ten GPUs as four 25% MPS
shares), one batch after another, 20-30 ms long with 0-10 ms between them:
about 115 million batches over 24 hours, against 86,400 one-second buckets.
The peak is what tracemalloc sees allocated during the call (the batches
table, built before, is printed beside it): it grows with the batches and
the buckets each one touches, where a batches x buckets matrix would take
about 10^13 cells.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pandas as pd
from _cli import Parser, above, run_main

from harness import metrics

SHARES_PER_GPU = 4


def day_of_batches(hours: float, slots: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    span = hours * 3600.0
    per_slot = int(span / 0.030) + 1
    length = rng.uniform(0.020, 0.030, (slots, per_slot))
    start = np.cumsum(length + rng.uniform(0.0, 0.010, (slots, per_slot)), axis=1) - length
    end = start + length
    del length
    inside = end <= span                                # every slot's batches end by the end of the day
    slot = np.broadcast_to(np.arange(slots)[:, None], start.shape)[inside]
    t_start, t_end = start[inside], end[inside]
    del start, end, inside
    n = t_start.size
    return pd.DataFrame({
        "slot": slot.astype(np.int64), "device": (slot // SHARES_PER_GPU).astype(np.int64),
        "share": np.full(n, 1 / SHARES_PER_GPU), "t_start": t_start, "t_end": t_end,
        "status": pd.Categorical.from_codes(np.zeros(n, np.int8), ["ok"])})


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=above(0), default=24.0)
    ap.add_argument("--slots", type=above(0, int), default=40)
    args = ap.parse_args()
    if args.hours * 3600 < 1:
        ap.error(f"--hours must span at least one 1-s bucket, 1/3600 h (got {args.hours:g})")
    batches = day_of_batches(args.hours, args.slots)
    window = metrics.Window(0.0, args.hours * 3600.0)
    buckets = int(window.length)
    print(f"{len(batches):,} batches on {args.slots} slots over {window.length:,.0f} s ({buckets:,} 1-s buckets); "
          f"the batches table holds {batches.memory_usage(deep=True).sum() / 2**30:.2f} GiB")
    tracemalloc.start()
    started = time.perf_counter()
    used = metrics.gpus_used(batches, window)
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"gpus_used: {seconds:,.1f} s, peak {peak / 2**30:.2f} GiB allocated during the call "
          f"({peak / len(batches):,.0f} bytes per batch); {used['gpus_used'].mean():.2f} GPUs used on average, "
          f"peak {used['gpus_used'].max():g}")
    return 0


if __name__ == "__main__":
    run_main(main)
