"""Real GPUs: CUDA-graph executors, the latency profiler, MPS shares and NVML telemetry.

Importing this package needs neither torch nor a GPU; `harness.gpu.executor`
and `harness.gpu.profiler`'s measuring code import torch when they run.
"""
