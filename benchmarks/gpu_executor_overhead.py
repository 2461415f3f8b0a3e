"""How much GpuExecutor.run adds to the CUDA-graph latency the profiler measures.

    python benchmarks/gpu_executor_overhead.py [--models resnet50,...] [--batch 8,16,32,64,128] [--iters 50]

For each model and batch size, in one process on one executor: the graph's
replay time by CUDA events (harness.gpu.profiler.time_replays, as in the
profiles) and the host wall time of run(model, b, None) -- launch, GPU work
and synchronisation -- measured in alternating rounds, so that clock drift
hits both alike; then run with a tensor payload of b images (its upload
included). Medians; the synthetic ratio should stay within 1.05.
"""

from __future__ import annotations


import numpy as np
from _cli import Parser, above, listed, require_cuda, run_main

from harness.gpu.profiler import ALL_MODELS, time_replays, wall_ms  # noqa: E402

TARGET = 1.05


ROUNDS = 5


def main() -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument("--batch", type=listed(above(0, int)), default="8,16,32,64,128")
    ap.add_argument("--iters", type=above(0, int), default=50)
    ap.add_argument("--channels-last", default="default", help="as the profiler's --channels-last")
    args = ap.parse_args()
    require_cuda()

    import torch

    from harness.gpu.executor import GpuExecutor

    sizes = args.batch
    rng = np.random.default_rng(0)
    channels_last = None if args.channels_last == "default" else \
        [m for m in args.channels_last.split(",") if m and m != "none"]
    per_round = max(1, args.iters // ROUNDS)
    rows = []
    for model in args.models.split(","):
        ex = GpuExecutor([model], batch_sizes=sizes, channels_last=channels_last)
        for b in sizes:
            graph, run = [], []
            for _ in range(ROUNDS):
                graph.extend(time_replays(ex.graph(model, b), per_round, warmup_s=0.02))
                run.extend(wall_ms(lambda: ex.run(model, b, None), per_round))
            graph_ms, run_ms = float(np.median(graph)), float(np.median(run))
            payload = rng.standard_normal(ex.input_nbytes(b) // 2).astype(np.float16).tobytes()
            tensor_ms = float(np.median(wall_ms(lambda: ex.run(model, b, payload), args.iters)))
            rows.append((model, b, graph_ms, run_ms, run_ms / graph_ms, tensor_ms, tensor_ms / graph_ms))
        ex.close()
    print(f"device: {torch.cuda.get_device_name(0)}; medians of {per_round * ROUNDS} in {ROUNDS} alternating "
          f"rounds; target run/graph <= {TARGET}")
    print(f"{'model':<20}{'batch':>6}{'graph ms':>10}{'run ms':>10}{'extra us':>10}{'run/graph':>11}"
          f"{'tensor ms':>11}{'tensor/graph':>14}")
    for model, b, g, r, ratio, t, tratio in rows:
        flag = "" if ratio <= TARGET else "  OVER"
        print(f"{model:<20}{b:>6}{g:>10.3f}{r:>10.3f}{(r - g) * 1000:>10.0f}{ratio:>11.3f}{t:>11.3f}{tratio:>14.3f}"
              f"{flag}")
    worst = max(r[4] for r in rows)
    print(f"worst synthetic run/graph ratio: {worst:.3f} ({'within' if worst <= TARGET else 'OVER'} target)")
    return 0


if __name__ == "__main__":
    run_main(main)
