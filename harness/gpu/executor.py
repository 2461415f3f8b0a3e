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
NCHW order, (size, 3, 224, 224), copied into the static input first; a list
holds one buffer per task (views of the ingresses' shared memory, which
`pin_host_memory` page-locks so each copy is a DMA), copied row by row.

With `bucket=True` (the default) a size without its own graph runs on the
next larger captured size, padded; with `bucket=False` it runs eagerly at its
exact size (slower: every kernel is launched from the host).

With `stages=True` each model is also served in stages (`stage_modules` names them:
ResNet-50's stem, four layers and head; ViT-B/16's embedding, blocks in groups
of three and head; the others split where their resolution halves), one CUDA
graph per stage and batch size. A stage's graph reads the stage's input buffer
and writes its output into the next stage's, so a batch that runs its stages
back to back costs no copy beyond that write. What a stage leaves is kept per
batch id until later stages have taken every row (or `free` gives them up):

    ex.run_stage("resnet50", 0, batch=7, size=3, payload=None, rows=None)
    ex.run_stage("resnet50", 1, batch=9, size=3, payload=None, rows=[(7, 0), (7, 1), (7, 2)])

The activation store lives here, not in the worker, because it is GPU memory
in this executor's buffers: the worker only passes on the rows each batch takes.
"""

from __future__ import annotations

import functools
import sys
import time
import warnings
from typing import Iterable, Sequence

import torch
import torchvision
from torch import nn

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


class _VitEmbedding(nn.Module):
    """ViT's forward up to its encoder's blocks: patches, class token, position embedding."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        x = self.vit._process_input(x)
        x = torch.cat([self.vit.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.vit.encoder.dropout(x + self.vit.encoder.pos_embedding)


class _VitHead(nn.Module):
    """ViT's forward after its encoder's blocks: the final norm, the class token, the classifier."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return self.vit.heads(self.vit.encoder.ln(x)[:, 0])


def _pooled_head(*modules) -> nn.Module:
    return nn.Sequential(*modules, nn.Flatten(1))


def stage_modules(name: str, model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`model` (torchvision's `name`) as named stages whose composition is its forward pass; they share
    its parameters."""
    if name == "resnet50":
        m = model
        return [("stem", nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)), ("layer1", m.layer1),
                ("layer2", m.layer2), ("layer3", m.layer3), ("layer4", m.layer4),
                ("head", nn.Sequential(_pooled_head(m.avgpool), m.fc))]
    if name == "vit_b_16":
        blocks = list(model.encoder.layers)
        return [("embedding", _VitEmbedding(model)),
                *((f"blocks{i}-{i + 2}", nn.Sequential(*blocks[i:i + 3])) for i in range(0, len(blocks), 3)),
                ("head", _VitHead(model))]
    f = model.features
    if name == "efficientnet_b0":              # split where the resolution halves: 112, 56, 28, 14, 7
        return [("stem", f[0:2]), ("stage2", f[2]), ("stage3", f[3]), ("stage4-5", f[4:6]),
                ("stage6-7", f[6:8]), ("head", nn.Sequential(f[8], _pooled_head(model.avgpool), model.classifier))]
    if name == "mobilenet_v3_large":
        return [("stem", f[0:2]), ("blocks2-3", f[2:4]), ("blocks4-6", f[4:7]), ("blocks7-12", f[7:13]),
                ("blocks13-15", f[13:16]), ("head", nn.Sequential(f[16], _pooled_head(model.avgpool),
                                                                  model.classifier))]
    if name == "densenet121":                  # DenseNet's forward ends with a ReLU before its pooling
        return [("stem", f[0:4]), ("block1", f[4:6]), ("block2", f[6:8]), ("block3", f[8:10]),
                ("block4", f[10:12]),
                ("head", nn.Sequential(_pooled_head(nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1))), model.classifier))]
    raise ValueError(f"no stages defined for model '{name}'")


class _Stage:
    """One stage of a model served in stages: its module, the buffer it reads (the model's static input
    for the first; the previous stage's output otherwise), its graphs per batch size and the last
    stage's outputs. `owner`: the batch whose rows sit in `input` where its previous stage wrote them."""

    def __init__(self, name: str, module: nn.Module, input: torch.Tensor):
        self.name = name
        self.module = module
        self.input = input
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.owner: int | None = None


class _Held:
    """Rows a stage left for the next, kept under the batch id that made them: `rows` is a view of the next
    stage's input buffer until another batch is about to overwrite it, then a copy."""

    __slots__ = ("model", "stage", "rows", "left")

    def __init__(self, model: str, stage: int, rows: torch.Tensor):
        self.model = model
        self.stage = stage                   # the stage that takes them
        self.rows = rows
        self.left = set(range(rows.shape[0]))


class _Loaded:
    """One model on the GPU: its module, static input, graphs and their outputs (and its stages)."""

    def __init__(self, module, static_input, staging, pool):
        self.module = module
        self.static_input = static_input     # (max size, 3, 224, 224); graphs read its leading rows
        self.staging = staging               # NCHW buffer for payloads bound for a channels_last input
        self.pool = pool
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.stages: list[_Stage] = []


class GpuExecutor:
    """The worker's executor on one CUDA device: `run(model, size, payload)` blocks until the batch is done.

    It has the interface of harness.live.worker.Executor without importing
    it: a graph replay cannot be stopped part-way, so it is not `abortable`
    and `run` ignores `abort`. `run` makes the executor's device the calling
    thread's current device (a worker process drives one device).

    `channels_last` names the models that run in that memory format (default:
    the convolutional ones); `load_seconds[model]` is (eager warm-up, capture)
    time at start. `stages=True` also serves each model in stages (module doc):
    `run_stage` and `free`, the worker's Executor interface for staged models.
    """

    abortable = False

    def __init__(self, models: Sequence[str], device: int = 0, dtype: str | torch.dtype = "fp16",
                 batch_sizes: Sequence[int] | None = None, bucket: bool = True, warmup: int = 3,
                 seed: int = 0, cudnn_benchmark: bool = False, channels_last: Iterable[str] | None = None,
                 stages: bool = False):
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
        self.staged = stages
        self._last: tuple[torch.Tensor, int] | None = None
        self._held: dict[int, _Held] = {}   # batch id -> the activations its stage left for the next
        self._pinned: dict[int, int] = {}    # id of a pinned host buffer -> its address
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

    def stage_names(self, model: str) -> list[str]:
        return [stage.name for stage in self._loaded(model).stages]

    def stage_graph(self, model: str, stage: int, size: int) -> torch.cuda.CUDAGraph:
        """The captured graph of stage `stage` of `model` at exactly `size` (a captured size)."""
        return self._loaded(model).stages[stage].graphs[size]

    @property
    def held_batches(self) -> int:
        """Batches whose activations are kept for a later stage."""
        return len(self._held)

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

    def begin(self, expected_busy: float | None) -> None:
        """A batch starts. How busy the rest of the device is changes nothing here: a real GPU's siblings
        slow it down by themselves (an emulated one is told, to do the same)."""

    def run(self, model: str, size: int, payload: bytes | list | None, abort=None) -> None:
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

    def warm_steps(self) -> list:
        """One callable per captured graph, whole models' and their stages', each replaying it to its end.

        Run back to back just before a run's time 0 they take each graph's first replay and the cost of the
        idle before it, where the run's first batches would pay them: on an H100 a graph's first replay took
        up to 1.48 x its steady time, a batch after 4 s idle up to 1.11 x (the SM clock stayed at 1,980 MHz),
        a batch after the warm-up up to 1.06 x (benchmarks/gpu_first_batches.py); a policy that learns from
        its measurements (Clockwork) keeps what the first batches cost.
        A stage graph writes the next stage's input, so it is skipped while activations are held there.
        """
        steps = []
        for loaded in self._models.values():
            steps += [functools.partial(self._replay, graph, False) for graph in loaded.graphs.values()]
            steps += [functools.partial(self._replay, graph, True)
                      for stage in loaded.stages for graph in stage.graphs.values()]
        return steps

    def _replay(self, graph: torch.cuda.CUDAGraph, writes_stage_input: bool) -> None:
        if writes_stage_input and self._held:
            return
        if torch.cuda.current_device() != self.device.index:
            torch.cuda.set_device(self.device)
        graph.replay()
        torch.cuda.current_stream().synchronize()

    def run_stage(self, model: str, stage: int, batch: int, size: int, payload: bytes | list | None, rows: list | None,
                  abort=None) -> None:
        """Run stage `stage` of `model` for `size` rows: the payload's (stage 0) or `rows` [(batch, row), ...]
        of what earlier stages left; keep what it leaves under `batch`, unless it is the last stage."""
        loaded = self._models.get(model) or self._loaded(model)
        stages = loaded.stages
        if not 0 <= stage < len(stages):
            raise ValueError(f"{model} has {len(stages)} stages here; no stage {stage}"
                             + ("" if stages else " (start the executor with stages=True)"))
        if (stage == 0) != (rows is None) or (rows is not None and len(rows) != size):
            raise ValueError(f"stage {stage} of {model} takes {'no rows' if stage == 0 else f'{size} rows'} "
                             f"(got {None if rows is None else len(rows)})")
        padded = self.padded_size(size)
        if torch.cuda.current_device() != self.device.index:
            torch.cuda.set_device(self.device)
        current, last = stages[stage], stage == len(stages) - 1
        with torch.inference_mode():
            if payload is not None and stage == 0:
                self._copy_payload(loaded, model, size, payload)
            elif rows is not None:
                self._gather(current, [(int(b), int(r)) for b, r in rows])
            if not last:
                self._make_room(stages[stage + 1])
            graph = current.graphs.get(padded)
            if graph is not None:
                graph.replay()
                out = current.outputs.get(padded)
            else:                            # bucket=False and no graph of this size: eager, exact size
                out = current.module(current.input[:padded])
                if not last:
                    stages[stage + 1].input[:padded].copy_(out)
        torch.cuda.current_stream().synchronize()
        self.last_padded_size = padded
        if last:
            self._last = (out, size)
        else:
            following = stages[stage + 1]
            self._held[batch] = _Held(model, stage + 1, following.input[:size])
            following.owner = batch

    def free(self, rows: list) -> None:
        """Give up these (batch, row) activations: no stage will take them."""
        for b, r in rows:
            self._taken(int(b), int(r))

    def _make_room(self, stage: _Stage) -> None:
        """The batch whose rows sit in `stage`'s input is about to have them overwritten: it keeps a copy."""
        if stage.owner is not None:
            held = self._held[stage.owner]
            held.rows = held.rows.clone()
            stage.owner = None

    def _gather(self, stage: _Stage, rows: list[tuple[int, int]]) -> None:
        """Put `rows` into `stage`'s input in order. Rows already in place (where the previous stage wrote
        them) stay; the rest are copied in runs of consecutive rows of one batch."""
        missing = [(b, r) for b, r in rows if b not in self._held or r not in self._held[b].left]
        if missing:
            raise ValueError(f"no activations held for (batch, row) {missing[:3]}; taken, freed or never made")
        owner = stage.owner
        if owner is not None:
            mine = {r for b, r in rows if b == owner}
            stays = {i for i, (b, r) in enumerate(rows) if b == owner and r == i}
            still_needed = self._held[owner].left - mine
            written = set(range(len(rows))) - stays
            if len(stays) < len(mine) or written & still_needed:
                self._make_room(stage)       # its rows move or are overwritten: work from a copy
                owner = None
        i = 0
        while i < len(rows):
            b, r = rows[i]
            n = 1
            while i + n < len(rows) and rows[i + n] == (b, r + n):
                n += 1
            if not (b == owner and r == i):
                stage.input[i:i + n].copy_(self._held[b].rows[r:r + n])
            i += n
        for b, r in rows:
            self._taken(b, r)

    def _taken(self, batch: int, row: int) -> None:
        held = self._held.get(batch)
        if held is None:
            return
        held.left.discard(row)
        if not held.left:
            del self._held[batch]
            stage = self._models[held.model].stages[held.stage]
            if stage.owner == batch:
                stage.owner = None

    def close(self) -> None:
        self._models.clear()
        self._held.clear()
        self._last = None
        torch.cuda.empty_cache()

    def _loaded(self, model: str) -> _Loaded:
        try:
            return self._models[model]
        except KeyError:
            raise ValueError(f"model '{model}' is not loaded on this executor; loaded: "
                             f"{', '.join(self._models)}") from None

    def pin_host_memory(self, buffer) -> bool:
        """Page-lock `buffer` (shared memory payloads are read from) so copies from it to the GPU are DMA
        transfers; False (and a note on stderr) if CUDA refuses, and copies then stage through the driver."""
        import ctypes
        ptr = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
        err = torch.cuda.cudart().cudaHostRegister(ptr, len(buffer), 0)
        if int(err) != 0:
            print(f"note: cannot pin {len(buffer)} bytes of payload memory ({err}); copies will be staged",
                  file=sys.stderr, flush=True)
            return False
        self._pinned[id(buffer)] = ptr
        return True

    def unpin_host_memory(self, buffer) -> None:
        ptr = self._pinned.pop(id(buffer), None)
        if ptr is not None:
            torch.cuda.cudart().cudaHostUnregister(ptr)

    def _copy_payload(self, loaded: _Loaded, model: str, size: int, payload) -> None:
        if isinstance(payload, list):
            self._copy_views(loaded, model, size, payload)
            return
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

    def _copy_views(self, loaded: _Loaded, model: str, size: int, views: list) -> None:
        """One buffer per task (None: a task without a tensor, whose row keeps what it held), each copied
        to its rows without a host-side gather."""
        item = self.input_nbytes(1)
        target = loaded.static_input if loaded.staging is None else loaded.staging
        row = 0
        for view in views:
            if view is None:
                row += 1
                continue
            n = len(view) // item
            if n * item != len(view) or row + n > size:
                raise ValueError(f"{model}: a tensor payload of {len(view)} bytes does not fit rows {row}.. of a "
                                 f"batch of {size} ({item} bytes an item)")
            host = torch.frombuffer(view, dtype=self.dtype).view(n, *IMAGE_SHAPE)
            target[row:row + n].copy_(host, non_blocking=True)
            row += n
        if loaded.staging is not None:   # the layout change on the GPU
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
        warm, capture = t1 - t0, time.perf_counter() - t1
        if self.staged:
            t2 = time.perf_counter()
            stage_warm = self._load_stages(name, loaded, side, warmup)
            warm, capture = warm + stage_warm, capture + time.perf_counter() - t2 - stage_warm
        self.load_seconds[name] = (warm, capture)
        return loaded

    def _load_stages(self, name: str, loaded: _Loaded, side: torch.cuda.Stream, warmup: int) -> float:
        """Buffers, eager warm-up and graphs of the model's stages (module doc); returns the warm-up's seconds."""
        parts = stage_modules(name, loaded.module)
        # Each later stage's input buffer is allocated outside the graphs' memory pool: what a stage leaves
        # must survive other graphs' replays, whose scratch memory the pool hands out again.
        x = loaded.static_input
        for k, (stage_name, part) in enumerate(parts):
            loaded.stages.append(_Stage(stage_name, part, x))
            if k + 1 < len(parts):
                shape = part(x[:1]).shape[1:]
                layout = torch.channels_last if name in self.channels_last and len(shape) == 3 \
                    else torch.contiguous_format
                x = torch.empty((self.max_batch, *shape), device=self.device, dtype=self.dtype, memory_format=layout)
        t0 = time.perf_counter()
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for b in self.batch_sizes:
                for _ in range(warmup):
                    self._stages_eagerly(loaded, b)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        warm = time.perf_counter() - t0
        for b in reversed(self.batch_sizes):
            for k, stage in enumerate(loaded.stages):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=loaded.pool):
                    out = stage.module(stage.input[:b])
                    if k + 1 < len(loaded.stages):
                        loaded.stages[k + 1].input[:b].copy_(out)
                    else:
                        stage.outputs[b] = out
                stage.graphs[b] = graph
        torch.cuda.synchronize(self.device)
        return warm

    @staticmethod
    def _stages_eagerly(loaded: _Loaded, size: int) -> None:
        stages = loaded.stages
        for k, stage in enumerate(stages):
            out = stage.module(stage.input[:size])
            if k + 1 < len(stages):
                stages[k + 1].input[:size].copy_(out)
