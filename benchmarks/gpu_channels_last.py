"""Where channels_last helps: each CNN's CUDA-graph latency and start-up time in both memory formats.

    python benchmarks/gpu_channels_last.py [--models resnet50,...] [--batch 1,8,64] [--iters 30]

Prints a table, then one line `CHANNELS_LAST=<models>` naming the models
whose geometric-mean latency over the batch sizes is lower channels_last
(the value for the profiler's --channels-last).
"""

from __future__ import annotations


import numpy as np
from _cli import Parser, above, listed, require_cuda, run_main

from harness.gpu.models import MODELS  # noqa: E402
from harness.gpu.profiler import time_replays  # noqa: E402

CNNS = [m for m in MODELS if m != "vit_b_16"]


def main() -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(CNNS))
    ap.add_argument("--batch", type=listed(above(0, int)), default="1,8,64")
    ap.add_argument("--iters", type=above(0, int), default=30)
    args = ap.parse_args()
    require_cuda()

    import time

    import torch

    from harness.gpu.executor import GpuExecutor

    sizes = args.batch
    print(f"device: {torch.cuda.get_device_name(0)}; medians of {args.iters} graph replays (ms)")
    print(f"{'model':<20}{'format':<15}{'ready s':>9}{'warm-up s':>11}{'capture s':>11}"
          + "".join(f"{'b=' + str(b):>9}" for b in sizes))
    helps = []
    for model in args.models.split(","):
        means = {}
        for layout in ("channels_last", "nchw"):
            t0 = time.perf_counter()
            ex = GpuExecutor([model], batch_sizes=sizes, channels_last=[model] if layout == "channels_last" else [])
            ready = time.perf_counter() - t0
            ms = [float(np.median(time_replays(ex.graph(model, b), args.iters, warmup_s=0.05))) for b in sizes]
            ex.close()
            means[layout] = ms
            warm, capture = ex.load_seconds[model]
            print(f"{model:<20}{layout:<15}{ready:>9.1f}{warm:>11.1f}{capture:>11.1f}"
                  + "".join(f"{v:>9.3f}" for v in ms))
        ratio = float(np.exp(np.mean(np.log(np.array(means["channels_last"]) / np.array(means["nchw"])))))
        print(f"{model:<20}channels_last/nchw geometric-mean latency ratio {ratio:.3f}")
        if ratio < 1.0:
            helps.append(model)
    print(f"CHANNELS_LAST={','.join(helps) or 'none'}")
    return 0


if __name__ == "__main__":
    run_main(main)
