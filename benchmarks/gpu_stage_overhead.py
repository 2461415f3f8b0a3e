"""What serving a model stage by stage costs over its whole-model CUDA graph, per model and batch size.

    python benchmarks/gpu_stage_overhead.py [--models resnet50,...] [--batch 1,8,32,64,128] [--iters 50]

For each model and batch size b, in one process on one executor built with stages:

- GPU time: the whole model's graph replayed back to back, and its stage graphs replayed one after
  another (each stage writing its output into the next stage's input), both timed by CUDA events
  around each inference, in alternating rounds so that clock drift hits both alike;
- as served: host wall time of run(model, b) against the stage-by-stage calls a worker makes,
  run_stage(model, k, ...) for every stage k, each taking the previous stage's rows and each
  synchronising (the scheduler's round trip between stages is not included).

Medians. The issue's bound: the staged model at batch b within 10% of the whole-model graph
(GPU ratio <= 1.10).
"""

from __future__ import annotations

import itertools

import numpy as np
from _cli import Parser, above, listed, require_cuda, run_main

from harness.gpu.profiler import ALL_MODELS, wall_ms  # noqa: E402

TARGET = 1.10
ROUNDS = 5


def replay_ms(graphs, iters: int, warmup: int = 5) -> list[float]:
    """Times of `iters` inferences, each the graphs replayed in order, by CUDA events."""
    import torch

    stream = torch.cuda.current_stream()
    for _ in range(warmup):
        for graph in graphs:
            graph.replay()
    begins = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    stream.synchronize()
    for b, e in zip(begins, ends):
        b.record(stream)
        for graph in graphs:
            graph.replay()
        e.record(stream)
    stream.synchronize()
    return [b.elapsed_time(e) for b, e in zip(begins, ends)]


def main() -> int:
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS))
    ap.add_argument("--batch", type=listed(above(0, int)), default="1,8,32,64,128")
    ap.add_argument("--iters", type=above(0, int), default=50)
    args = ap.parse_args()
    require_cuda()

    import torch

    from harness.gpu.executor import GpuExecutor

    sizes = args.batch
    per_round = max(1, args.iters // ROUNDS)
    ids = itertools.count()
    rows = []
    for model in args.models.split(","):
        ex = GpuExecutor([model], batch_sizes=sizes, stages=True)
        n_stages = len(ex.stage_names(model))

        def staged_calls(b: int) -> None:
            first = next(ids)
            ex.run_stage(model, 0, first, b, None, None)
            for k in range(1, n_stages):
                batch = next(ids)
                ex.run_stage(model, k, batch, b, None, [(first, r) for r in range(b)])
                first = batch

        for b in sizes:
            whole_graph = [ex.graph(model, b)]
            stage_graphs = [ex.stage_graph(model, k, b) for k in range(n_stages)]
            gpu_whole, gpu_staged, run, calls = [], [], [], []
            for _ in range(ROUNDS):
                gpu_whole.extend(replay_ms(whole_graph, per_round))
                gpu_staged.extend(replay_ms(stage_graphs, per_round))
                run.extend(wall_ms(lambda: ex.run(model, b, None), per_round))
                calls.extend(wall_ms(lambda: staged_calls(b), per_round))
            rows.append((model, b, n_stages, *(float(np.median(x)) for x in (gpu_whole, gpu_staged, run, calls))))
        ex.close()
    print(f"device: {torch.cuda.get_device_name(0)}; medians of {per_round * ROUNDS} in {ROUNDS} alternating "
          f"rounds; target staged/whole GPU time <= {TARGET}")
    print(f"{'model':<20}{'batch':>6}{'stages':>7}{'whole ms':>10}{'staged ms':>11}{'ratio':>8}"
          f"{'run ms':>10}{'calls ms':>10}{'ratio':>8}")
    for model, b, n, gw, gs, r, c in rows:
        flag = "" if gs / gw <= TARGET else "  OVER"
        print(f"{model:<20}{b:>6}{n:>7}{gw:>10.3f}{gs:>11.3f}{gs / gw:>8.3f}{r:>10.3f}{c:>10.3f}{c / r:>8.3f}{flag}")
    worst = max(gs / gw for _, _, _, gw, gs, _, _ in rows)
    print(f"worst staged/whole GPU-time ratio: {worst:.3f} ({'within' if worst <= TARGET else 'OVER'} target)")
    return 0


if __name__ == "__main__":
    run_main(main)
