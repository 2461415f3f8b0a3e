"""Measure l(b) per model and batch size on a GPU partition and write the profile file.

    python -m harness.gpu.profiler --models resnet50,vit_b_16 --batch 1,2,4,8,16,32,64,128 \\
        --partition whole,mps50,mig-1g.10gb-emulated --iters 50

For each partition, a child process (this module with --in-process) builds a
GpuExecutor per model, and for each batch size replays the model's CUDA graph
back to back: first for at least --warmup-s seconds (clocks up, caches warm),
then --iters times, each replay between two CUDA events. The profile records
the mean, median, standard deviation and p99 of those replay times. With
--stages, each model's stages (harness.gpu.executor.stage_modules: one CUDA graph
per stage and batch size) are measured the same way into the model's `stages`, so
emulated GPUs and the sim can run it stage by stage (LazyBatching).

Partitions (see harness.gpu.partitions): `whole` and real MIG instances run
first, without MPS; then one private MPS daemon serves every `mps<percent>`
and `mig-<profile>-emulated` partition, each child limited by
CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, and the daemon is stopped at the end, also
on failure or interruption.

A share is measured beside busy siblings. MPS shares split the SMs, not the
memory bandwidth or the L2: on an H100, a 25% share runs resnet50 batch 8 in
2.3 ms alone and 3.4 ms while the three other shares work
(benchmarks/gpu_served_latency.py), and a served GPU's shares do work at the
same time. So, by default (--siblings auto), a share is measured twice:
alone, then while the shares that fill the GPU beside it (100 // percent - 1
of them) each replay the profiled models round robin at --sibling-batch,
non-stop. The profile's mean, std and p99 are the latter, a bound that
policies plan with; alone_mean_ms keeps the alone means. A served share runs
between the two, as busy as its siblings are (harness.profiles,
LatencyCurve.beside), which is what emulated GPUs run. --siblings 0 measures
alone only.

What siblings add grows with the batches they run, so --sibling-batch lists
several sizes (by default 16,1,128): the share is measured beside siblings at
each, the first giving mean, std and p99, and every one its means in the
model's `beside_ms` (by sibling batch), from which an emulated share takes
what its working siblings add at the batch they run. On an H100's 25% share
siblings at 128 added 1.1-2.0 times what siblings at 16 add (the more, the
larger the share's own batch), siblings at 1 0.4-0.8 times;
emulated with the profile beside 16 alone, Shepherd past capacity served 6%
more than the GPU did, with all three 1%. Each size costs a pass of its own
(about 80 s for the five default models on a 25% share).

It also records what starting a slot costs: `start_s`, the measuring
process's start, imports and CUDA context before its first model, and each
model's `load_s`, building, warming up and capturing it; an emulated slot a
reconfiguration adds takes as long (harness.profiles).

--out is a path template with {gpu_type} and {partition}; the default files
profiles/<gpu_type>/<partition>.json, gpu_type from the GPU's name by
harness.gpu.partitions.gpu_type_from_name ('NVIDIA H100 80GB HBM3' -> h100).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from harness.errors import ArgumentParser, HarnessError, exit_with
from harness.gpu.models import DEFAULT_CHANNELS_LAST, MODELS
from harness.gpu.mps import PERCENTAGE_ENV, mps_daemon
from harness.gpu.partitions import Partition, find_mig_instance, gpu_type_from_name, parse_partitions
from harness.profiles import PROFILES_DIR
from harness.records import write_json

ALL_MODELS = tuple(MODELS)
DEFAULT_BATCH = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_OUT = str(PROFILES_DIR / "{gpu_type}" / "{partition}.json")


# --- the profile document (no GPU needed) -------------------------------------------------------

def summarize_ms(samples_ms) -> dict[str, float]:
    """mean, median, std and p99 of replay times in milliseconds."""
    x = np.asarray(samples_ms, dtype=float)
    if x.size == 0 or not np.all(np.isfinite(x)) or np.any(x <= 0):
        raise HarnessError("replay times must be a non-empty list of positive finite milliseconds")
    return {"mean_ms": float(x.mean()), "median_ms": float(np.median(x)), "std_ms": float(x.std(ddof=0)),
            "p99_ms": float(np.percentile(x, 99))}


def profile_document(gpu_type: str, partition: Partition, provenance: dict,
                     measured: dict[str, dict[int, dict[str, float]]], alone: dict | None = None,
                     stages: dict[str, list[tuple[str, dict[int, dict[str, float]]]]] | None = None,
                     beside: dict[int, dict] | None = None, sibling_batch: int | None = None,
                     load_s: dict[str, float] | None = None, start_s: float | None = None) -> dict:
    """The profile JSON (harness/profiles.py format) from {model: {batch: summarize_ms(...)}}.

    `alone`: the profile document of the same partition measured without busy siblings; its means
    become each model's alone_mean_ms. `stages`: {model: [(stage name, {batch: summarize_ms(...)}), ...]}
    in stage order, each model's `stages`. `beside`: {sibling batch: the profile document measured
    beside siblings replaying it}, for the sibling batches other than `sibling_batch` (this measurement's):
    each model's beside_ms holds the means of all of them. `load_s`: {model: seconds to build, warm up
    and capture it}; `start_s`: seconds from the process's start until it could load a model (what
    starting a slot costs on this GPU, besides its models).
    """
    def columns(per_batch):
        batch = sorted(per_batch)
        return {"batch": batch, **{key: [round(per_batch[b][key], 4) for b in batch]
                                   for key in ("mean_ms", "std_ms", "p99_ms", "median_ms")}}

    models = {}
    for model, per_batch in measured.items():
        models[model] = columns(per_batch)
        batch = models[model]["batch"]
        if alone is not None:
            points = alone["models"][model]
            if points["batch"] != batch:
                raise HarnessError(f"the alone profile of {model} has batch sizes {points['batch']}, not {batch}")
            models[model]["alone_mean_ms"] = points["mean_ms"]
        if beside:
            means = {sibling_batch: models[model]["mean_ms"]}
            for size, doc in beside.items():
                points = doc["models"][model]
                if points["batch"] != batch:
                    raise HarnessError(f"the profile of {model} beside siblings at batch {size} has batch sizes "
                                       f"{points['batch']}, not {batch}")
                means[size] = points["mean_ms"]
            models[model]["beside_ms"] = {str(size): means[size] for size in sorted(means)}
        if load_s and model in load_s:
            models[model]["load_s"] = round(load_s[model], 3)
        if stages and model in stages:
            models[model]["stages"] = [{"name": name, **columns(per_batch)} for name, per_batch in stages[model]]
    return {"gpu_type": gpu_type, "partition": partition.name, "emulated_partition": partition.emulated,
            "provenance": provenance, **({"start_s": round(start_s, 3)} if start_s is not None else {}),
            "models": models}


def output_path(template: str, gpu_type: str, partition: str) -> Path:
    return Path(template.format(gpu_type=gpu_type, partition=partition))


def write_profile(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(document, path)


# --- measuring, in the process that owns the partition ------------------------------------------

def wall_ms(fn, iters: int, warmup: int = 2) -> list[float]:
    """Host wall time of `fn()` in ms, `iters` times after `warmup` calls (what a caller waits, launch
    and synchronisation included, where time_replays counts GPU time)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def time_replays(graph, iters: int, warmup_s: float, min_warmup: int = 5):
    """Replay times in ms of `iters` back-to-back replays of a CUDA graph, after a warm-up, by CUDA events."""
    import torch

    stream = torch.cuda.current_stream()
    start = time.perf_counter()
    done = 0
    while done < min_warmup or time.perf_counter() - start < warmup_s:
        graph.replay()
        done += 1
        if done % 10 == 0:
            stream.synchronize()     # keep the host from queueing far ahead of the warm-up clock
    begins = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iters)]
    stream.synchronize()
    for b, e in zip(begins, ends):
        b.record(stream)
        graph.replay()
        e.record(stream)
    stream.synchronize()
    return np.array([b.elapsed_time(e) for b, e in zip(begins, ends)])


def sibling_count(partition: Partition, requested: str) -> int:
    """How many busy sibling shares to run beside `partition`: 'auto' fills the GPU with shares of its size."""
    if not partition.uses_mps:
        return 0                         # a whole GPU has none; real MIG instances are isolated in hardware
    if requested == "auto":
        return partition.shares_per_gpu - 1
    return int(requested)


def sibling_load(models: list[str], batch: int, ready: Path, args) -> None:
    """Replay each model's graph at `batch`, round robin, until told to stop (SIGTERM) or orphaned; touch
    `ready` once running. Told to stop, it ends its round and leaves the GPU as a process that ends cleanly:
    on an H100 under MPS, the third set of siblings of a profile, started after the second had been killed
    mid-replay, found the GPU busy or unavailable."""
    import torch

    from harness.gpu.executor import GpuExecutor

    signal.signal(signal.SIGTERM, signal.SIG_DFL)       # ended while loading: at once (no replay under way)
    try:
        executor = GpuExecutor(models, device=args.device, dtype=args.dtype, batch_sizes=[batch],
                               channels_last=args.channels_last)
    except RuntimeError as exc:          # a CUDA error (torch.AcceleratorError is one): what it said, in a line
        raise HarnessError(f"a busy sibling share could not load its models: {str(exc).splitlines()[0]}") from None
    graphs = [executor.graph(m, batch) for m in models]
    stream = torch.cuda.current_stream()
    parent = os.getppid()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    ready.touch()
    while not stop and os.getppid() == parent:   # never outlive the profiler: an orphan would load the GPU for ever
        for graph in graphs:
            graph.replay()
        stream.synchronize()             # a few graphs ahead at most
    executor.close()


def provenance(partition: Partition, args, mig_uuid: str | None) -> dict:
    import torch
    import torchvision

    props = torch.cuda.get_device_properties(args.device)
    nvml = nvml_facts(args.device)
    return {
        "source": (f"harness.gpu.profiler: {args.dtype}, random weights, eval, one CUDA graph per batch size; "
                   f"per point {args.iters} back-to-back replays timed by CUDA events after >= {args.warmup_s} s "
                   "of warm-up replays" + (f", beside {args.siblings_busy} busy sibling shares"
                                           if args.siblings_busy else "")
                   + ("; stages likewise, one graph per stage and batch size, each writing its output into the "
                      "next stage's input" if args.stages else "")),
        "gpu_name": torch.cuda.get_device_name(args.device),
        "driver": nvml.get("driver"),
        "cuda_driver": nvml.get("cuda_driver"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "partition": partition.name,
        "emulated_partition": partition.emulated,
        "mps_percentage": partition.mps_percentage,
        "mig_profile": partition.mig_profile,
        "mig_emulated_sms": partition.emulated_sms,
        "mig_uuid": mig_uuid,
        "sm_count": props.multi_processor_count,     # as this process sees the device
        "memory_gib": round(props.total_memory / 2**30, 1),
        "dtype": args.dtype,
        "cudnn_benchmark": args.cudnn_benchmark,
        "channels_last": sorted(set(args.models) & set(args.channels_last)),
        "iters": args.iters,
        "stages": args.stages,
        "siblings_busy": args.siblings_busy,
        "sibling_load": (f"{', '.join(args.models)} round robin at batch {args.sibling_batch}, non-stop, "
                         f"each in a share of {partition.mps_percentage}%") if args.siblings_busy else None,
        # Every sibling batch measured beside (beside_ms), the first giving mean_ms.
        "sibling_batches": ([args.sibling_batch, *sorted(args.beside_profile)] if args.siblings_busy
                            else None),
    }


def nvml_facts(device: int) -> dict:
    """Driver and CUDA driver versions from NVML; {} where NVML is unavailable."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:                    # noqa: BLE001 - absent library or driver: provenance says None
        return {}
    try:
        text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
        facts = {"driver": text(pynvml.nvmlSystemGetDriverVersion())}
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        facts["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        return facts
    except Exception:                    # noqa: BLE001
        return {}
    finally:
        pynvml.nvmlShutdown()


def measure_partition(partition: Partition, args) -> Path:
    """Profile every model on the partition this process runs on; write and return the profile file."""
    if partition.uses_mps and os.environ.get(PERCENTAGE_ENV) != str(partition.mps_percentage):
        raise HarnessError(f"partition {partition.name} must run under MPS with {PERCENTAGE_ENV}="
                           f"{partition.mps_percentage}; run the profiler without --in-process")
    _require_torch()
    import torch

    if not torch.cuda.is_available():
        raise HarnessError("the profiler needs a CUDA GPU (torch.cuda.is_available() is False)")
    from harness.gpu.executor import GpuExecutor
    torch.empty(1, device=f"cuda:{args.device}")          # the CUDA context, as a worker makes it
    # What a worker process costs before its first model: its start, imports and CUDA context.
    start_s = time.time() - psutil.Process().create_time()
    load_s: dict[str, float] = {}
    gpu_type = gpu_type_from_name(torch.cuda.get_device_name(args.device))
    measured: dict[str, dict[int, dict[str, float]]] = {}
    staged: dict[str, list[tuple[str, dict[int, dict[str, float]]]]] = {}
    for model in args.models:
        t0 = time.perf_counter()
        executor = GpuExecutor([model], device=args.device, dtype=args.dtype, batch_sizes=args.batch,
                               cudnn_benchmark=args.cudnn_benchmark, channels_last=args.channels_last,
                               stages=args.stages)
        ready = load_s[model] = time.perf_counter() - t0
        warm, capture = executor.load_seconds[model]
        measured[model] = {}
        with torch.cuda.device(args.device):
            for b in executor.batch_sizes:
                measured[model][b] = summarize_ms(time_replays(executor.graph(model, b), args.iters, args.warmup_s))
            if args.stages:
                staged[model] = [(name, {b: summarize_ms(time_replays(executor.stage_graph(model, k, b), args.iters,
                                                                      args.warmup_s))
                                         for b in executor.batch_sizes})
                                 for k, name in enumerate(executor.stage_names(model))]
        executor.close()
        del executor
        row = "  ".join(f"{b}:{measured[model][b]['mean_ms']:.2f}" for b in sorted(measured[model]))
        print(f"[{partition.name}] {model} (ready in {ready:.1f} s: warm-up {warm:.1f}, capture {capture:.1f}) "
              f"mean ms by batch  {row}", flush=True)
        for name, per_batch in staged.get(model, []):
            row = "  ".join(f"{b}:{per_batch[b]['mean_ms']:.3f}" for b in sorted(per_batch))
            print(f"[{partition.name}]   stage {name}  {row}", flush=True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    mig_uuid = visible if visible.startswith("MIG-") else None
    alone = json.loads(Path(args.alone_profile).read_text()) if args.alone_profile else None
    beside = {size: json.loads(Path(path).read_text()) for size, path in args.beside_profile.items()}
    doc = profile_document(gpu_type, partition, provenance(partition, args, mig_uuid), measured, alone, staged,
                           beside, args.sibling_batch, load_s, start_s)
    path = output_path(args.out, gpu_type, partition.name)
    write_profile(path, doc)
    print(f"[{partition.name}] wrote {path}", flush=True)
    return path


# --- orchestration: one child process per partition ---------------------------------------------

def _common_options(partition: Partition, args, sibling_batch: int) -> list[str]:
    return ["--models", ",".join(args.models), "--sibling-batch", str(sibling_batch),
            "--device", "0" if partition.kind == "mig" else str(args.device),   # the MIG instance is the one visible
            "--dtype", args.dtype, "--channels-last", ",".join(args.channels_last) or "none"]


def _child_command(partition: Partition, args, siblings: int, out: str, alone: str | None,
                   sibling_batch: int, beside: dict[int, str] | None = None) -> list[str]:
    return [sys.executable, "-m", "harness.gpu.profiler", "--in-process", "--partition", partition.name,
            "--batch", ",".join(map(str, args.batch)), "--iters", str(args.iters), "--warmup-s", str(args.warmup_s),
            "--out", out, "--siblings", str(siblings), *_common_options(partition, args, sibling_batch)] + \
        (["--alone-profile", alone] if alone else []) + (["--cudnn-benchmark"] if args.cudnn_benchmark else []) + \
        (["--stages"] if args.stages else []) + \
        [arg for size, path in (beside or {}).items() for arg in ("--beside-profile", f"{size}={path}")]


def _sibling_command(partition: Partition, args, ready: Path, sibling_batch: int) -> list[str]:
    return [sys.executable, "-m", "harness.gpu.profiler", "--sibling-load", str(ready), "--partition", partition.name,
            *_common_options(partition, args, sibling_batch)]


def _end(process: subprocess.Popen, timeout: float = 30.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


SIBLING_TRIES = 3
SIBLING_RETRY_S = 5.0


def _start_siblings(partition: Partition, args, env: dict[str, str], count: int, scratch: Path,
                    sibling_batch: int, timeout_s: float = 300.0) -> list[subprocess.Popen]:
    """`count` busy sibling shares, each replaying at `sibling_batch` once its models are loaded; [] and ended
    on failure. A set that fails is ended and started again, up to SIBLING_TRIES times: the MPS server may
    still be letting the last pass's siblings go."""
    attempt = 1
    while True:
        readies = [scratch / f"sibling-{sibling_batch}-{attempt}-{i}.ready" for i in range(count)]
        for r in readies:
            r.unlink(missing_ok=True)    # (of an earlier set: ready is what this one says)
        siblings = [subprocess.Popen(_sibling_command(partition, args, r, sibling_batch), env=env) for r in readies]
        deadline = time.monotonic() + timeout_s
        try:
            while not all(r.exists() for r in readies):
                if any(s.poll() is not None for s in siblings) or time.monotonic() > deadline:
                    raise HarnessError(f"[{partition.name}] a busy sibling share did not start"
                                       + (f" ({attempt} tries)" if attempt > 1 else ""))
                time.sleep(0.2)
        except BaseException as exc:
            for s in siblings:
                _end(s)
            if not isinstance(exc, HarnessError) or attempt == SIBLING_TRIES:
                raise
            print(f"[{partition.name}] a busy sibling share did not start; trying again in {SIBLING_RETRY_S:g} s",
                  flush=True)
            time.sleep(SIBLING_RETRY_S)
            attempt += 1
            continue
        print(f"[{partition.name}] {count} busy sibling shares running at batch {sibling_batch}", flush=True)
        return siblings


def _run_child(partition: Partition, args, env: dict[str, str]) -> bool:
    print(f"[{partition.name}] profiling in a child process", flush=True)
    started = time.perf_counter()
    processes: list[subprocess.Popen] = []      # the measuring children and the busy siblings, all ended below

    def measure(siblings_busy: int, out: str, alone: str | None, sibling_batch: int,
                beside: dict[int, str] | None = None) -> int:
        processes.append(subprocess.Popen(_child_command(partition, args, siblings_busy, out, alone, sibling_batch,
                                                         beside), env=env))
        return processes[-1].wait()

    with tempfile.TemporaryDirectory(prefix="harness-profiler-") as scratch:
        try:
            count = sibling_count(partition, args.siblings)
            alone, beside = None, {}
            if count:                    # first alone, then beside siblings at each further batch, then the first
                alone = str(Path(scratch) / "alone.json")
                print(f"[{partition.name}] alone", flush=True)
                rc = measure(0, alone, None, args.sibling_batch)
                if rc != 0:
                    raise HarnessError(f"[{partition.name}] measuring alone failed (exit {rc})")
                for size in args.sibling_batches[1:]:
                    siblings = _start_siblings(partition, args, env, count, Path(scratch), size)
                    processes += siblings
                    beside[size] = str(Path(scratch) / f"beside-{size}.json")
                    rc = measure(count, beside[size], None, size)
                    for sibling in siblings:
                        _end(sibling)
                    if rc != 0:
                        raise HarnessError(f"[{partition.name}] measuring beside siblings at batch {size} failed "
                                           f"(exit {rc})")
                processes += _start_siblings(partition, args, env, count, Path(scratch), args.sibling_batch)
            rc = measure(count, args.out, alone, args.sibling_batch, beside)
        except HarnessError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            rc = 1
        finally:
            for process in processes:    # before the daemon goes
                _end(process)
    took = time.perf_counter() - started
    if rc != 0:
        print(f"[{partition.name}] FAILED (exit {rc}) after {took:.0f} s", file=sys.stderr, flush=True)
    else:
        print(f"[{partition.name}] done in {took:.0f} s", flush=True)
    return rc == 0


def profile_partitions(partitions: list[Partition], args) -> list[str]:
    """Profile each partition in its own child process; returns the names of those that failed."""
    failed = []
    direct = [p for p in partitions if not p.uses_mps]
    shared = [p for p in partitions if p.uses_mps]
    for p in direct:                     # before any MPS daemon exists
        env = dict(os.environ)
        for key in ("CUDA_MPS_PIPE_DIRECTORY", PERCENTAGE_ENV):
            env.pop(key, None)
        if p.kind == "mig":
            uuid, _name = find_mig_instance(p.mig_profile)
            env["CUDA_VISIBLE_DEVICES"] = uuid
        if not _run_child(p, args, env):
            failed.append(p.name)
    if shared:
        with mps_daemon() as mps:
            for p in shared:
                if not _run_child(p, args, mps.client_env(p.mps_percentage)):
                    failed.append(p.name)
    return failed


def _terminate_as_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m harness.gpu.profiler", description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS), help="comma-separated torchvision model names")
    ap.add_argument("--batch", default=",".join(map(str, DEFAULT_BATCH)), help="comma-separated batch sizes")
    ap.add_argument("--partition", default="whole", help="comma-separated partitions (whole, mps50, ...)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="path template with {gpu_type} and {partition}")
    ap.add_argument("--iters", type=int, default=50, help="timed replays per model and batch size")
    ap.add_argument("--warmup-s", type=float, default=0.1, help="warm-up replay seconds per model and batch size")
    ap.add_argument("--device", type=int, default=0, help="CUDA device index")
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "bf16", "fp32"))
    ap.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms at capture")
    ap.add_argument("--stages", action="store_true",
                    help="also measure each model's stages (one CUDA graph per stage and batch size), for policies "
                         "that run a model stage by stage (lazybatching)")
    ap.add_argument("--channels-last", default="default",
                    help="models run channels_last: comma-separated names, 'none', or 'default' (the CNNs)")
    ap.add_argument("--siblings", default="auto",
                    help="busy sibling shares beside an MPS share while it is measured: 'auto' (fill the GPU "
                         "with shares of its size) or a count (0: alone)")
    ap.add_argument("--sibling-batch", default="16,1,128",
                    help="the batch sizes the busy siblings replay, comma-separated: the share is measured beside "
                         "siblings at each, the first giving the profile's busy latencies (default 16,1,128)")
    ap.add_argument("--in-process", action="store_true",
                    help="measure the one partition given in this process, in the environment it has")
    ap.add_argument("--sibling-load", metavar="READY_FILE", help=argparse.SUPPRESS)
    ap.add_argument("--alone-profile", help=argparse.SUPPRESS)    # the alone measurement, for alone_mean_ms
    ap.add_argument("--beside-profile", action="append", default=[],   # SIZE=PATH: beside siblings at SIZE
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.siblings != "auto" and not (args.siblings.isdigit()):
        raise HarnessError(f"--siblings must be 'auto' or a count >= 0 (got '{args.siblings}')")
    try:
        args.sibling_batches = [int(b) for b in args.sibling_batch.split(",") if b.strip()]
    except ValueError:
        args.sibling_batches = []
    if (not args.sibling_batches or min(args.sibling_batches) < 1
            or len(set(args.sibling_batches)) != len(args.sibling_batches)):
        raise HarnessError(f"--sibling-batch must be batch sizes >= 1, comma-separated, each once "
                           f"(got '{args.sibling_batch}')")
    args.sibling_batch = args.sibling_batches[0]
    args.beside_profile = dict((int(size), path) for size, path in
                               (item.split("=", 1) for item in args.beside_profile))
    args.models = [m for m in args.models.split(",") if m]
    try:
        args.batch = sorted({int(b) for b in args.batch.split(",") if b})
    except ValueError:
        raise HarnessError(f"--batch must be comma-separated integers (got '{args.batch}')") from None
    if not args.batch or args.batch[0] < 1:
        raise HarnessError("--batch needs positive batch sizes, starting at 1 for a usable profile")
    if args.batch[0] != 1:
        raise HarnessError(f"--batch must include 1 (profiles start at batch 1; got {args.batch})")
    if args.iters < 2:
        raise HarnessError("--iters must be >= 2")
    # How many busy siblings run beside this measurement (a child is told the count; 'auto' in the parent).
    args.siblings_busy = int(args.siblings) if args.siblings != "auto" else 0
    if args.channels_last == "default":
        args.channels_last = [m for m in ALL_MODELS if m in DEFAULT_CHANNELS_LAST]
    else:
        args.channels_last = [m for m in args.channels_last.split(",") if m and m != "none"]
    unknown = [m for m in args.models + args.channels_last if m not in ALL_MODELS]
    if unknown or not args.models:
        raise HarnessError(f"unknown models {unknown}; choose from {', '.join(ALL_MODELS)}")
    return args


def _require_torch() -> None:
    """Measuring takes PyTorch: without it, one line rather than a traceback from each child process."""
    try:
        import torch  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise HarnessError(f"the profiler needs PyTorch and torchvision ({exc}); install them on the GPU host: "
                           'pip install -e ".[gpu]"') from None


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        partitions = parse_partitions(args.partition)
        if len(partitions) > 1 and "{partition}" not in args.out:
            raise HarnessError("several partitions need --out with a {partition} placeholder")
        if args.sibling_load:                    # (its own SIGTERM handler: the profiler ends it so)
            sibling_load(args.models, args.sibling_batch, Path(args.sibling_load), args)
            return 0
        if args.in_process:
            if len(partitions) != 1:
                raise HarnessError("--in-process measures exactly one partition")
            measure_partition(partitions[0], args)
            return 0
        _require_torch()                         # here, before a child would fail on it
        failed = profile_partitions(partitions, args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:        # Ctrl-C, or SIGTERM (`kill`, `timeout`) made one below
        if "--in-process" not in (sys.argv[1:] if argv is None else argv):   # a measuring child's parent says it
            print(f"interrupted ({exc or 'Ctrl-C'}): the partitions done before it are written (above), the one "
                  "under way is not; its MPS daemon and busy siblings are stopped", file=sys.stderr)
        return 130
    if failed:
        print(f"error: profiling failed on {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate_as_interrupt)   # so `kill` or `timeout` still stops the MPS daemon
    exit_with(main)
