"""Run batches of torchvision models on one GPU through CUDA graphs.

At start, each model is built with random weights (nothing is downloaded),
put in eval mode in the chosen dtype (channels_last for the CNNs), warmed up
eagerly at every batch size, and captured as one CUDA graph per batch size,
largest first, all graphs of a model sharing one memory pool. A batch then
costs one graph launch: eager PyTorch launches would dominate small batches.

    ex = GpuExecutor(["resnet50"], device=0)
    ex.run("resnet50", 5, None)        # synthetic input; runs the batch-8 graph
    ex.last_padded_size                # 8

Payloads: None runs on the model's preallocated static input (synthetic
load); bytes are the batch's images as raw values of the executor's dtype in
NCHW order, (size, 3, 224, 224), copied into the static input first.

With `bucket=True` (the default) a size without its own graph runs on the
next larger captured size, padded; with `bucket=False` it runs eagerly at its
exact size (slower: every kernel is launched from the host).
"""

from __future__ import annotations

import time
import warnings
from typing import Iterable, Sequence

import torch
import torchvision

from harness.gpu.models import DEFAULT_CHANNELS_LAST, MODELS

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
IMAGE_SHAPE = (3, 224, 224)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def build_model(name: str, dtype: torch.dtype, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """A torchvision model with random weights (weights=None: nothing is downloaded), ready for inference."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(MODELS)}")
    model = torchvision.models.get_model(name, weights=None)
    model = model.eval().to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _Loaded:
    """One model on the GPU: its module, static input, graphs and their outputs."""

    def __init__(self, module, static_input, staging, pool):
        self.module = module
        self.static_input = static_input     # (max size, 3, 224, 224); graphs read its leading rows
        self.staging = staging               # NCHW buffer for payloads bound for a channels_last input
        self.pool = pool
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}


class GpuExecutor:
    """The worker's executor on one CUDA device: `run(model, size, payload)` blocks until the batch is done.

    It has the interface of harness.live.worker.Executor without importing
    it: a graph replay cannot be stopped part-way, so it is not `abortable`
    and `run` ignores `abort`. `run` makes the executor's device the calling
    thread's current device (a worker process drives one device).

    `channels_last` names the models that run in that memory format (default:
    the convolutional ones); `load_seconds[model]` is (eager warm-up, capture)
    time at start.
    """

    abortable = False

    def __init__(self, models: Sequence[str], device: int = 0, dtype: str | torch.dtype = "fp16",
                 batch_sizes: Sequence[int] | None = None, bucket: bool = True, warmup: int = 3,
                 seed: int = 0, cudnn_benchmark: bool = False, channels_last: Iterable[str] | None = None):
        if not torch.cuda.is_available():
            raise RuntimeError("GpuExecutor needs a CUDA GPU; torch.cuda.is_available() is False")
        sizes = sorted(set(int(b) for b in (batch_sizes or DEFAULT_BATCH_SIZES)))
        if not sizes or sizes[0] < 1:
            raise ValueError(f"batch sizes must be positive integers (got {batch_sizes})")
        unknown = [m for m in models if m not in MODELS]
        if unknown or not models:
            raise ValueError(f"unknown or no models {unknown}; available: {', '.join(MODELS)}")
        self.device = torch.device("cuda", device)
        self.dtype = resolve_dtype(dtype)
        self.batch_sizes = tuple(sizes)
        self.bucket = bucket
        wanted = DEFAULT_CHANNELS_LAST if channels_last is None else frozenset(channels_last)
        self.channels_last = frozenset(m for m in models if m in wanted)
        self.last_padded_size = 0
        self.load_seconds: dict[str, tuple[float, float]] = {}
        self._last: tuple[torch.Tensor, int] | None = None
        torch.backends.cudnn.benchmark = cudnn_benchmark
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self._models: dict[str, _Loaded] = {}
        with torch.cuda.device(self.device), torch.inference_mode():
            torch.manual_seed(seed)          # random weights, the same on every run
            for name in models:
                self._models[name] = self._load(name, generator, warmup)
            torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()             # give back what the eager warm-up cached outside the pools

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._models)

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def input_nbytes(self, size: int) -> int:
        """Bytes of a tensor payload for a batch of `size` images."""
        c, h, w = IMAGE_SHAPE
        return size * c * h * w * torch.empty((), dtype=self.dtype).element_size()

    def graph(self, model: str, size: int) -> torch.cuda.CUDAGraph:
        """The captured graph of `model` at exactly `size` (a captured size)."""
        return self._loaded(model).graphs[size]

    def padded_size(self, size: int) -> int:
        """The batch size `size` actually runs at: its own graph's, the next larger captured one, or itself eagerly."""
        if not 1 <= size <= self.max_batch:
            raise ValueError(f"batch size {size} is outside 1..{self.max_batch}, the captured range")
        if not self.bucket:
            return size
        return next(b for b in self.batch_sizes if b >= size)

    @property
    def last_output(self) -> torch.Tensor | None:
        """The logits of the last batch's `size` real rows; valid until the next run."""
        if self._last is None:
            return None
        out, size = self._last
        return out[:size]

    def run(self, model: str, size: int, payload: bytes | None, abort=None) -> None:
        # The hot path of every batch: a handful of host calls around one graph launch.
        loaded = self._models.get(model) or self._loaded(model)
        padded = self.padded_size(size)
        if torch.cuda.current_device() != self.device.index:
            torch.cuda.set_device(self.device)
        if payload is not None:
            with torch.inference_mode():
                self._copy_payload(loaded, model, size, payload)
        graph = loaded.graphs.get(padded)
        if graph is not None:
            graph.replay()
            out = loaded.outputs[padded]
        else:                                # bucket=False and no graph of this size: eager, exact size
            with torch.inference_mode():
                out = loaded.module(loaded.static_input[:padded])
        torch.cuda.current_stream().synchronize()
        self.last_padded_size = padded
        self._last = (out, size)

    def close(self) -> None:
        self._models.clear()
        self._last = None
        torch.cuda.empty_cache()

    def _loaded(self, model: str) -> _Loaded:
        try:
            return self._models[model]
        except KeyError:
            raise ValueError(f"model '{model}' is not loaded on this executor; loaded: "
                             f"{', '.join(self._models)}") from None

    def _copy_payload(self, loaded: _Loaded, model: str, size: int, payload) -> None:
        expected = self.input_nbytes(size)
        if len(payload) != expected:
            c, h, w = IMAGE_SHAPE
            raise ValueError(f"{model}: tensor payload has {len(payload)} bytes, but a batch of {size} needs "
                             f"{expected} ({size} x {c} x {h} x {w} {str(self.dtype).removeprefix('torch.')}, "
                             f"NCHW)")
        with warnings.catch_warnings():      # a bytes payload is read-only; it is only read from
            warnings.simplefilter("ignore", UserWarning)
            host = torch.frombuffer(payload, dtype=self.dtype).view(size, *IMAGE_SHAPE)
        if loaded.staging is None:
            loaded.static_input[:size].copy_(host)
        else:                                # contiguous upload, then the layout change on the GPU
            loaded.staging[:size].copy_(host)
            loaded.static_input[:size].copy_(loaded.staging[:size])

    def _load(self, name: str, generator: torch.Generator, warmup: int) -> _Loaded:
        module = build_model(name, self.dtype, self.device, name in self.channels_last)
        shape = (self.max_batch, *IMAGE_SHAPE)
        static = torch.randn(shape, generator=generator, device=self.device, dtype=self.dtype)
        staging = None
        if name in self.channels_last:
            static = static.contiguous(memory_format=torch.channels_last)
            staging = torch.empty(shape, device=self.device, dtype=self.dtype)
        loaded = _Loaded(module, static, staging, torch.cuda.graph_pool_handle())
        t0 = time.perf_counter()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):        # eager warm-up off the default stream, as capture wants
            for b in self.batch_sizes:
                for _ in range(warmup):
                    module(static[:b])
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        t1 = time.perf_counter()
        # Largest first, so the smaller graphs fit into memory the larger ones already took from the pool.
        for b in reversed(self.batch_sizes):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=loaded.pool):
                loaded.outputs[b] = module(static[:b])
            loaded.graphs[b] = graph
        torch.cuda.synchronize(self.device)
        self.load_seconds[name] = (t1 - t0, time.perf_counter() - t1)
        return loaded
