"""How slow a GPU's first batches are after it idles, and whether the workers' warm-up before time 0 helps.

    python benchmarks/gpu_first_batches.py [--models densenet121,resnet50,vit_b_16] [--batch 1,8,32]
                                           [--idle-s 4] [--warm-s 1] [--iters 30]

A live run's workers load their models, then the GPU idles while the load
generator starts (runtime.start_lead_s), and the run's first batches find it
idle. One executor holding the models, three starts in turn, each after
--idle-s seconds with nothing running:

- fresh: no graph replayed since its capture (a run's start without a warm-up);
- replayed: every graph replayed once before the idle (so only the idle's own cost is left);
- warmed: the idle's last --warm-s seconds spent on the workers' warm-up
  (GpuExecutor.warm_steps through harness.live.worker.warm_up, as a worker runs it before time 0).

At each start, every model's batch at each size once, in turn, timed as a
worker times a batch (host wall time of run()), over that batch's steady
time (the median of --iters afterwards); and the SM clock NVML read just
before the first batch. A warm-up that works puts the warmed start's ratios
at about 1.
"""

from __future__ import annotations

import time

import numpy as np
from _cli import Parser, above, listed, require_cuda, run_main

from harness.gpu.profiler import ALL_MODELS, wall_ms  # noqa: E402
from harness.live.worker import warm_up  # noqa: E402

STARTS = ("fresh", "replayed", "warmed")


def sm_clock_mhz() -> float:
    """The SM clock of device 0 by NVML (nan without nvidia-ml-py)."""
    try:
        import pynvml
        pynvml.nvmlInit()
        return float(pynvml.nvmlDeviceGetClockInfo(pynvml.nvmlDeviceGetHandleByIndex(0), pynvml.NVML_CLOCK_SM))
    except Exception:       # no NVML here: the table says nan
        return float("nan")


def main() -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=listed(str), default="densenet121,resnet50,vit_b_16")
    ap.add_argument("--batch", type=listed(above(0, int)), default="1,8,32")
    ap.add_argument("--idle-s", type=above(0, float), default=4.0, help="idle seconds before each start")
    ap.add_argument("--warm-s", type=above(0, float), default=1.0, help="the warm-up's seconds (runtime.warm_s)")
    ap.add_argument("--iters", type=above(0, int), default=30, help="batches timed for each steady time")
    args = ap.parse_args()
    unknown = sorted(set(args.models) - set(ALL_MODELS))
    if unknown:
        ap.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(ALL_MODELS)}")
    require_cuda()

    import torch

    from harness.gpu.executor import GpuExecutor

    ex = GpuExecutor(args.models, batch_sizes=args.batch)
    batches = [(m, b) for b in args.batch for m in args.models]
    first: dict[str, list[float]] = {}
    clocks: dict[str, float] = {}
    for start in STARTS:
        if start == "replayed":
            for step in ex.warm_steps():
                step()
        time.sleep(args.idle_s - (args.warm_s if start == "warmed" else 0.0))
        if start == "warmed":
            warm_up(ex.warm_steps(), time.perf_counter() + args.warm_s, lambda: False)
        clocks[start] = sm_clock_mhz()
        first[start] = [wall_ms(lambda: ex.run(m, b, None), 1, warmup=0)[0] for m, b in batches]
    steady = [float(np.median(wall_ms(lambda: ex.run(m, b, None), args.iters))) for m, b in batches]
    print(f"device: {torch.cuda.get_device_name(0)}; each start after {args.idle_s:g} s idle; first batch of each "
          f"model and size in turn over its steady time (median of {args.iters}); warm-up {args.warm_s:g} s")
    print("SM clock at each start (MHz): " + ", ".join(f"{s} {clocks[s]:.0f}" for s in STARTS))
    print(f"{'model':<20}{'batch':>6}{'steady ms':>11}" + "".join(f"{s:>10}" for s in STARTS))
    for k, (m, b) in enumerate(batches):
        print(f"{m:<20}{b:>6}{steady[k]:>11.3f}" + "".join(f"{first[s][k] / steady[k]:>10.2f}" for s in STARTS))
    worst = {s: max(first[s][k] / steady[k] for k in range(len(batches))) for s in STARTS}
    print("worst first/steady: " + ", ".join(f"{s} {worst[s]:.2f}" for s in STARTS))
    ex.close()
    return 0


if __name__ == "__main__":
    run_main(main)
