"""How much Clockwork's goodput in the sim hangs on the first batches a real run measured.

Clockwork plans with the p99 of the last ten durations it measured at each
batch size. On a real GPU each model's first batches in a run are slow (the
GPU idled while the run started), and a size Clockwork then seldom runs again
keeps that estimate. Past capacity the estimate for one request decides how
early heads are dropped, and so how large the batches left can be: a high
one serves about twice as much (tests/test_clockwork.py shows it on one
slot). The sim's estimates are exact, so its twin of such a run may serve
like the other regime.

For each real Clockwork run named (a `<system>-seed<k>-gpu` directory of
benchmarks/real_vs_emulated.py, with its `batches.parquet`), the sim runs the
run's overrides three ways: as its twin does; with Clockwork's estimator given
first the duration of the first batch of each model and size the real run
measured; and the same from the run's emulated twin, where it kept its
batches. It prints goodput and mean batch size beside the real and emulated
runs'.

    python benchmarks/clockwork_first_batches.py RUN_DIR [RUN_DIR ...] --sim CALIBRATION [--out DIR]
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pandas as pd
from _cli import Parser, run_main
from real_vs_emulated import _summary, sim_overrides, twin

from harness.errors import HarnessError
from systems.clockwork import Clockwork


def first_measurements(batches: pd.DataFrame) -> dict[str, dict[int, float]]:
    """The duration (s) of the first batch of each model and size that ran to its end, as Clockwork measured it."""
    ok = batches[batches["status"] == "ok"].sort_values("t_end")
    ok = ok.assign(took=ok["t_end"] - ok["t_start"]).groupby(["model", "size"], sort=False)["took"].first()
    first: dict[str, dict[int, float]] = {}
    for (model, size), took in ok.items():
        first.setdefault(model, {})[int(size)] = float(took)
    return first


@contextlib.contextmanager
def estimates_measured_first(first: dict[str, dict[int, float]]):
    """Every Clockwork made inside starts with `first` in its windows of measurements, as if it had run them."""
    made = Clockwork.__init__

    def init(self, cluster, models, config):
        made(self, cluster, models, config)
        for model, sizes in first.items():
            for size, took in sizes.items():
                if model in self.state and size < len(self.state[model].est):
                    self.measure(model, size, took)

    Clockwork.__init__ = init
    try:
        yield
    finally:
        Clockwork.__init__ = made


def simulate(overrides: list[str], out: Path) -> dict:
    from harness.run import execute
    from harness.search import compose

    return execute(compose(overrides), out, overrides)


def compare(real_run: Path, calibration: Path, out: Path) -> dict:
    emulated_run = twin(real_run, "emulated")
    real, emulated = _summary(real_run), _summary(emulated_run)
    if real is None or real.get("system") != "clockwork":
        raise HarnessError(f"{real_run}: not a real Clockwork run (no summary.json of system clockwork); name a "
                           "clockwork-seed<k>-gpu directory of benchmarks/real_vs_emulated.py")
    if not (real_run / "batches.parquet").exists():
        raise HarnessError(f"{real_run}: no batches.parquet, so no first measurements to start from; name a run "
                           "that kept its batches")
    overrides = sim_overrides(real, calibration)
    row = {"run": real_run.name[: -len("-gpu")], "real": real["goodput"], "real batch": real["mean_batch_size"],
           "emulated": emulated["goodput"] if emulated else float("nan")}
    sim = simulate(overrides, out / "exact")
    row.update({"sim": sim["goodput"], "sim batch": sim["mean_batch_size"]})
    for side, where in (("real", real_run), ("emulated", emulated_run)):
        if (where / "batches.parquet").exists():
            with estimates_measured_first(first_measurements(pd.read_parquet(where / "batches.parquet"))):
                seeded = simulate(overrides, out / f"first-{side}")
            row.update({f"sim, {side}'s first": seeded["goodput"], f"sim, {side}'s first batch":
                        seeded["mean_batch_size"]})
    return row


def main(argv: list[str] | None = None) -> int:
    ap = Parser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="real Clockwork runs (clockwork-seed<k>-gpu directories)")
    ap.add_argument("--sim", type=Path, required=True, help="the GPU host's calibration (python -m harness.calibrate)")
    ap.add_argument("--out", type=Path, help="where the sim runs go (default: a temporary directory, removed)")
    args = ap.parse_args(argv)
    if not args.sim.is_file():
        raise HarnessError(f"--sim {args.sim}: no such calibration file; name one written by python -m "
                           "harness.calibrate")
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        rows = []
        for run in (run.resolve() for run in args.runs):
            rows.append(compare(run, args.sim, root / run.parent.name / run.name))
            print(f"{rows[-1]['run']}: real {rows[-1]['real']:,.1f}, sim {rows[-1]['sim']:,.1f} req/s", flush=True)
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    return 0


if __name__ == "__main__":
    run_main(main)
