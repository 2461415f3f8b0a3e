"""Where a live Triton run's batch time goes: tritonserver's own account against the harness's records.

    python benchmarks/triton_path.py RUN_DIR [RUN_DIR ...]

For each live `system=triton` run (its server.json holds tritonserver's
statistics, its batches.parquet the batches as the workers ran them), per
model, all in ms:

  queue      mean time a request waited in Triton's queue (Triton's account)
  infer      mean time Triton's backend held a request's batch (compute_infer)
  span       mean time from our callable's dispatch to the batch's end, over
             the same requests (each batch counted once per request it held)
  path       infer - span: the batch's time between tritonserver's Python
             backend stub and our forward (the forwarding socket), there and back
  exec       mean time a batch ran on its worker
  idle wait  median time from dispatch to start for batches sent to a worker
             that was idle (no batch of its own before it): the hand-off alone

Triton's statistics cover the whole run (warm-up included), the batches every
batch; both are means, so read the differences, not single batches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

# This directory, for _cli, also where a test loads this file by its path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import Parser, run_main  # noqa: E402

COLUMNS = ["run", "model", "batches", "mean batch", "queue", "infer", "span", "path", "exec", "idle wait"]


def path_table(run: Path) -> pd.DataFrame:
    """One row per model of a live Triton run (ValueError if `run` is not one)."""
    if not run.is_dir():
        raise ValueError(f"{run}: no such directory (give a live system=triton run's directory)")
    missing = [name for name in ("server.json", "batches.parquet") if not (run / name).is_file()]
    if missing:
        raise ValueError(f"{run}: no {' and no '.join(missing)} (give a live run's directory)")
    try:
        server = json.loads((run / "server.json").read_text())
    except ValueError as exc:
        raise ValueError(f"{run / 'server.json'}: not JSON ({exc})") from None
    stats = server.get("tritonserver") if isinstance(server, dict) else None
    if not isinstance(stats, dict) or not stats:
        raise ValueError(f"{run}: server.json holds no tritonserver statistics (not a live system=triton run, "
                         "or one made before they were recorded)")
    try:
        b = pd.read_parquet(run / "batches.parquet", columns=["slot", "model", "size", "t_dispatch", "t_start",
                                                              "t_end", "status"])
    except (OSError, ValueError, KeyError) as exc:     # (pyarrow's errors are ValueErrors and OSErrors)
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{run / 'batches.parquet'}: not a live run's batches ({said})") from None
    b = b[b["status"] == "ok"].sort_values(["slot", "t_start"])
    before = b.groupby("slot")["t_end"].shift()
    b = b.assign(span=(b["t_end"] - b["t_dispatch"]) * 1e3, exec=(b["t_end"] - b["t_start"]) * 1e3,
                 wait=(b["t_start"] - b["t_dispatch"]) * 1e3, idle=~(before >= b["t_dispatch"]))
    rows = []
    for model, g in b.groupby("model", sort=True):
        st = stats.get(model, {})
        span = (g["span"] * g["size"]).sum() / g["size"].sum()
        rows.append({"run": run.name, "model": model, "batches": len(g), "mean batch": g["size"].mean(),
                     "queue": st.get("queue_ms", float("nan")), "infer": st.get("compute_infer_ms", float("nan")),
                     "span": span, "path": st.get("compute_infer_ms", float("nan")) - span,
                     "exec": g["exec"].mean(), "idle wait": g.loc[g["idle"], "wait"].median()})
    return pd.DataFrame(rows, columns=COLUMNS)


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="live system=triton run directories")
    args = ap.parse_args(argv)
    tables = []
    for run in args.runs:
        try:
            tables.append(path_table(run))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(pd.concat(tables).to_string(index=False, float_format=lambda v: f"{v:,.2f}"))
    return 0


if __name__ == "__main__":
    run_main(main)
