"""Scheduler-only scale benchmark: simulated requests per wall second in the discrete-event runtime.

Default: Symphony on 1,000 slots of the sleep model (l(b) = 1.082 ms*b + 5.204 ms,
ten models, 100 ms SLO) offered 1,000,000 requests/s of Poisson load. The
number printed is schedule requests over the wall time of the event loop
alone (building the schedule and writing records are timed separately).

    python benchmarks/sim_scale.py [--system symphony] [--gpus 1000] [--rate 1e6] [--seconds 2]
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

from _cli import Parser, above, run_main
from hydra import compose, initialize_config_dir

from harness.assembly import assemble
from harness.config import register
from harness.records import ledger_tables, server_frame
from harness.run import make_schedule
from harness.runtimes.sim import sim_cluster

CONF = Path(__file__).resolve().parent.parent / "conf"


def main() -> int:
    ap = Parser(description=__doc__.splitlines()[0])
    # The config group's names, as Hydra looks them up: a name it lacks is one line here, not Hydra's traceback.
    ap.add_argument("--system", default="symphony",
                    choices=sorted(p.stem for p in (CONF / "system").glob("*.yaml")))
    ap.add_argument("--gpus", type=above(0, int), default=1000)
    ap.add_argument("--rate", type=above(0), default=1e6)
    ap.add_argument("--seconds", type=above(0), default=2.0)
    args = ap.parse_args()

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"system={args.system}", "cluster=sleep1000",
                                           f"cluster.count={args.gpus}", "models=sleep10", "workload=poisson", "runtime=sim",
                                           f"workload.rate={args.rate}", f"duration_s={args.seconds}",
                                           "warmup_s=0", "cooldown_s=0"])
    assembly = assemble(cfg)
    t = time.perf_counter()
    schedule = make_schedule(assembly)
    t_schedule = time.perf_counter() - t
    sim = sim_cluster(assembly)
    policy = assembly.make_policy(sim)
    ids, names, times = schedule["id"].to_numpy(), schedule["model"].tolist(), schedule["t_sched"].to_numpy()
    slo = {m: s.slo for m, s in assembly.models.items()}
    if not len(ids):
        print(f"error: {args.rate:g} req/s for {args.seconds:g} s made no request; raise --rate or --seconds",
              file=sys.stderr)
        return 2
    t = time.perf_counter()
    reqs = sim.run(policy, ids, names, times, slo, drain=1.0)
    t_loop = time.perf_counter() - t
    t = time.perf_counter()
    ledger_tables(sim.ledger), server_frame(reqs)
    t_records = time.perf_counter() - t
    ok = sum(r.status == "ok" for r in reqs)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"{args.system} on {args.gpus} slots, {args.rate:,.0f} req/s offered for {args.seconds:g} s "
          f"({len(reqs):,} requests, {len(sim.batches):,} batches, {ok / len(reqs):.1%} served)")
    print(f"schedule build   {t_schedule:7.2f} s")
    print(f"event loop       {t_loop:7.2f} s   -> {len(reqs) / t_loop:,.0f} simulated requests per wall second")
    print(f"record tables    {t_records:7.2f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
