"""One construction path for a run: config checked once, models, apps, placement, profiles, policy.

    assembly = assemble(cfg)                  # the orchestrator, from Hydra's composed config
    assembly = load("run/config.yaml")        # any other process of the run, from the saved config
    slots = assembly.slots(emulated=True)
    policy = assembly.make_policy(cluster)    # the system's policy, wrapped by the autoscaler if enabled

Every process of a run -- the orchestrator, the sim, the live scheduler,
a worker, the Triton backend, search and regression -- builds what it needs
here, so a policy cannot be built one way in one runtime and another way in
the other, and every default lives in the structured configs
(harness.config), written once.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import systems
from harness.apps import App, AppNode, variant_accuracies
from harness.autoscaler import Autoscaled, check as check_autoscaler
from harness.calibrate import Overheads, load_calibration
from harness.config import Config
from harness.core import ABORT, PREEMPTIONS, ModelSpec, Policy, Slot, SystemConfig
from harness.errors import HarnessError
from harness.live import cores
from harness.live.protocol import IMAGE_BYTES
from harness.placement import SLEEP, Placement, SlotSpec
from harness.profiles import LatencyCurve, curves_for

COPIES_DISTRIBUTIONS = ("fixed", "poisson")
# Each ingress is a process with its own event loop and connections; the automatic count is 1 to 8 (a quarter
# of the cores). Thousands of them, asked for by mistake, never came up on a small host.
MAX_INGRESSES = 64


@dataclass
class Assembly:
    cfg: Config                                  # typed, every default filled in
    models: dict[str, ModelSpec]
    apps: dict[str, App]
    placement: Placement                         # what the run starts with
    full_placement: Placement                    # the configured cluster (the autoscaler grows into it)
    policy_class: type[Policy]
    system: SystemConfig
    overheads: Overheads | None = None           # the live path's delays, when measured (runtime.calibration)
    notes: list[str] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        """What a request may name: the apps when any are configured, else the models."""
        return list(self.apps) or list(self.models)

    def curves_of(self, spec: SlotSpec) -> dict[str, LatencyCurve]:
        return profile_curves(spec.gpu_type, spec.partition, tuple(sorted(spec.models)), _sleep_key(self.cfg))

    def slots(self, emulated: bool, placement: Placement | None = None) -> list[Slot]:
        placement = placement or self.placement
        return [Slot(i, f"{s.gpu_type}-{s.partition}-d{s.device}-{i}", s.gpu_type, s.partition, s.models,
                     s.device, s.share, emulated=emulated)
                for i, s in enumerate(placement.slots)]

    def curves(self, placement: Placement | None = None) -> list[dict[str, LatencyCurve]]:
        return [self.curves_of(s) for s in (placement or self.placement).slots]

    def make_policy(self, cluster) -> Policy:
        policy = self.policy_class(cluster, self.models, self.system)
        if self.cfg.autoscaler.enabled:
            policy = Autoscaled(policy, self.cfg.autoscaler, self.full_placement)
        return policy

    def copies(self, targets: list[str], seed: int) -> list[list[int]] | None:
        """Tasks per node for each scheduled request of an app (None when no app is served)."""
        if not self.apps:
            return None
        rng = np.random.default_rng(seed)
        nodes = {name: self.cfg.apps[name].nodes for name in self.apps}
        out = []
        for target in targets:
            out.append([int(rng.poisson(n.copies)) if n.copies_dist == "poisson" else int(round(n.copies))
                        for n in nodes[target]])
        return out


def _sleep_key(cfg: Config) -> tuple:
    s = cfg.cluster.sleep
    return (s.a_ms, s.c_ms, s.max_batch, s.stages)


@lru_cache(maxsize=None)
def profile_curves(gpu_type: str, partition: str, models: tuple[str, ...], sleep: tuple) -> dict[str, LatencyCurve]:
    return curves_for(gpu_type, partition, list(models), dict(zip(("a_ms", "c_ms", "max_batch", "stages"), sleep)))


def assemble(cfg: DictConfig | Config) -> Assembly:
    """Check the config once and build what a run needs (HarnessError: one line naming the fix)."""
    notes = []
    if isinstance(cfg, DictConfig):
        notes = [n for n in [resolve_auto_cluster(cfg)] if n]
        typed = _typed(cfg)
    else:
        typed = cfg
    check_run_config(typed)
    models = model_specs(typed)
    apps = app_graphs(typed, models)
    policy_class = systems.policy_class(typed.system.name)
    full = Placement.from_config(typed.cluster, models)
    placement = full
    if typed.autoscaler.enabled:
        check_autoscaler(typed.autoscaler, len(full))
        placement = full.prefix(typed.autoscaler.initial_slots)
    overheads = None
    if typed.runtime.calibration:
        overheads = load_calibration(typed.runtime.calibration)
        notes.append(f"calibrated delays from {typed.runtime.calibration}: request {overheads.request_s * 1e3:.3f} ms, "
                     f"dispatch {overheads.dispatch_s * 1e3:.3f} ms, response {overheads.response_s * 1e3:.3f} ms")
    elif typed.runtime.name == "sim":
        rt = typed.runtime
        overheads = Overheads(rt.request_delay_ms / 1e3, rt.dispatch_delay_ms / 1e3, rt.response_delay_ms / 1e3)
    assembly = Assembly(typed, models, apps, placement, full, policy_class, typed.system, overheads, notes)
    for spec in full.slots:                    # every profile a slot needs exists: fail before any work
        assembly.curves_of(spec)
    return assembly


def load(path: str | os.PathLike) -> Assembly:
    """The run's saved config.yaml, checked against the schema as the orchestrator's was."""
    try:
        raw = OmegaConf.load(path)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read the run config '{path}': {exc}") from None
    for key in ("system", "cluster", "models", "runtime"):
        if key not in raw:
            raise HarnessError(f"run config '{path}' has no '{key}' section; pass the resolved config.yaml of a run")
    return assemble(_typed(raw))


def _typed(cfg: DictConfig) -> Config:
    """The config as dataclasses: the schema's defaults for whatever it leaves out, its types checked."""
    try:
        system_cls = systems.policy_class(str(cfg.system.name)).Config
        schema = OmegaConf.structured(Config)
        merged = OmegaConf.merge(schema, {k: v for k, v in cfg.items() if k not in ("system", "hydra")},
                                 {"system": {}})
        typed: Config = OmegaConf.to_object(merged)
        typed.system = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(system_cls), cfg.system))
    except OmegaConfBaseException as exc:
        raise HarnessError(f"the run config does not fit the schema: {str(exc).splitlines()[0]}") from None
    return typed


def _numbers(node, path: str = ""):
    """Every number of a config tree (dataclasses, dicts, lists) with its dotted path."""
    if dataclasses.is_dataclass(node):
        items = ((f.name, getattr(node, f.name)) for f in dataclasses.fields(node))
    elif isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            yield path, node
        return
    for key, value in items:
        yield from _numbers(value, f"{path}.{key}" if path else str(key))


def check_run_config(cfg: Config) -> None:
    # Python's `x < 0` is False for NaN, so a NaN knob passed every range check below and a policy's own; no
    # setting of this schema means anything at NaN or infinity (a long time is a large number). Every numeric
    # knob of every system is a count, a duration, a rate or a factor: >= 0 here, once, and a policy checks its
    # own tighter bounds (a knob a policy forgot to check ran silently wrong or never ended).
    for path, value in _numbers(cfg):
        if not math.isfinite(value):
            raise HarnessError(f"{path} must be a finite number (got {value}); set {path}=<number>")
        if path.startswith("system.") and value < 0:
            raise HarnessError(f"{path} must be a number >= 0 (got {value}); set {path}=<value>")
    if not cfg.duration_s > 0:
        raise HarnessError(f"duration_s must be > 0 (got {cfg.duration_s}); set duration_s=<seconds>")
    if cfg.warmup_s < 0 or cfg.cooldown_s < 0 or cfg.warmup_s + cfg.cooldown_s >= cfg.duration_s:
        raise HarnessError(f"warmup_s ({cfg.warmup_s}) + cooldown_s ({cfg.cooldown_s}) must be >= 0 and leave "
                           f"part of duration_s ({cfg.duration_s}) to measure; shorten them or lengthen the run")
    if cfg.cluster.count < 1:
        raise HarnessError(f"cluster.count must be >= 1 (got {cfg.cluster.count}); set cluster.count=<slots>")
    rt = cfg.runtime
    if rt.name not in ("live", "sim"):
        raise HarnessError(f"unknown runtime '{rt.name}'; choose runtime=live or runtime=sim")
    if rt.calibration and (rt.request_delay_ms or rt.dispatch_delay_ms or rt.response_delay_ms):
        raise HarnessError("runtime.calibration gives the request, dispatch and response delays; leave "
                           "runtime.*_delay_ms at 0 or drop runtime.calibration")
    for key in ("drain_s", "request_delay_ms", "dispatch_delay_ms", "response_delay_ms", "slot_start_s", "spin_us",
                "warm_s"):
        if not getattr(rt, key) >= 0:
            raise HarnessError(f"runtime.{key} must be >= 0 (got {getattr(rt, key)}); set runtime.{key}=<value>")
    for key in ("worker_timeout_s", "worker_start_timeout_s", "start_lead_s"):
        if not getattr(rt, key) > 0:
            raise HarnessError(f"runtime.{key} must be > 0 (got {getattr(rt, key)}); set runtime.{key}=<seconds>")
    if rt.max_pending < 1:
        raise HarnessError(f"runtime.max_pending must be >= 1 (got {rt.max_pending}): with {rt.max_pending} every "
                           "request would be refused; set runtime.max_pending=<requests waiting at most>")
    if rt.max_body_bytes < 1024:
        raise HarnessError(f"runtime.max_body_bytes must be >= 1024 (got {rt.max_body_bytes})")
    if not 0 <= rt.ingresses <= MAX_INGRESSES:
        raise HarnessError(f"runtime.ingresses must be 0..{MAX_INGRESSES} (got {rt.ingresses}); 0 sizes it to the "
                           "host (a quarter of its cores)")
    cores.parse(rt.scheduler_cpu)            # (the core itself is checked where the scheduler runs: run.execute)
    if rt.locust_workers < -1:
        raise HarnessError(f"runtime.locust_workers must be >= -1 (got {rt.locust_workers}); -1 sizes it to the "
                           "host, 0 is one process")
    for fault in rt.faults:
        if not 0 <= fault.slot < len(Placement.from_config(cfg.cluster, cfg.models)) or not fault.t >= 0:
            raise HarnessError(f"runtime.faults: slot {fault.slot} at t={fault.t} is not a slot of the cluster at "
                               "a time >= 0; fix runtime.faults")
        if fault.t >= cfg.duration_s:
            raise HarnessError(f"runtime.faults: t={fault.t} is not within the run (duration_s={cfg.duration_s}), "
                               "so the fault would never happen; give a time before the end")
    if rt.load not in ("locust", "external"):
        raise HarnessError(f"unknown runtime.load '{rt.load}'; choose locust (replay the schedule) or external")
    if rt.host.replace(".", "").isdigit():          # looks like an IPv4 address: is it one?
        try:
            ipaddress.ip_address(rt.host)
        except ValueError:
            raise HarnessError(f"runtime.host '{rt.host}' is not an IP address; give an address of this host "
                               "(127.0.0.1 by default)") from None
    if not 0 <= rt.port <= 65535:
        raise HarnessError(f"runtime.port must be 0..65535 (got {rt.port}); 0 picks a free port")
    if rt.executor not in ("emulated", "gpu"):
        raise HarnessError(f"unknown runtime.executor '{rt.executor}'; choose emulated or gpu")
    if rt.preemption not in PREEMPTIONS:
        raise HarnessError(f"unknown runtime.preemption '{rt.preemption}'; choose finish (a preempted batch runs "
                           "to its end, as on a real GPU) or abort (it stops at once: emulated and sim only)")
    if rt.preemption == ABORT and rt.executor == "gpu" and rt.name == "live":
        raise HarnessError("runtime.preemption=abort cannot run on a real GPU: a CUDA graph cannot stop "
                           "part-way; use runtime.preemption=finish, or emulated slots to study an ideal abort")
    if rt.payload not in ("synthetic", "tensor"):
        raise HarnessError(f"unknown runtime.payload '{rt.payload}'; choose synthetic (one INT32 per item) or "
                           "tensor (an FP16 3x224x224 image per item)")
    if rt.payload == "tensor":
        need = IMAGE_BYTES + 4096                # one image and its JSON part
        if rt.max_body_bytes < need:
            raise HarnessError(f"runtime.payload=tensor needs runtime.max_body_bytes >= {need} (one image and its "
                               f"JSON part); got {rt.max_body_bytes}")
        if rt.workers:
            raise HarnessError("runtime.payload=tensor shares memory between the ingresses and the workers, so "
                               "the workers must be local; drop runtime.workers or use runtime.payload=synthetic")
        if rt.payload_arena_mb * (1 << 20) < rt.max_body_bytes:
            raise HarnessError(f"runtime.payload_arena_mb={rt.payload_arena_mb} holds no request of up to "
                               f"runtime.max_body_bytes={rt.max_body_bytes} bytes; raise it")
    v = cfg.validity
    if not (v.min_duration_s >= 0 and v.min_requests >= 0 and v.max_send_lag_p99_ms > 0
            and 0 <= v.max_error_rate <= 1):
        raise HarnessError(f"validity needs min_duration_s >= 0 (got {v.min_duration_s}), min_requests >= 0 "
                           f"({v.min_requests}), max_send_lag_p99_ms > 0 ({v.max_send_lag_p99_ms}) and "
                           f"max_error_rate in [0, 1] ({v.max_error_rate}); fix validity.*")
    for key, value in vars(cfg.seeds).items():
        if not isinstance(value, int) or value < 0:
            raise HarnessError(f"seeds.{key} must be an integer >= 0 (got {value!r}); set seeds.{key}=<seed>")


def model_specs(cfg: Config) -> dict[str, ModelSpec]:
    if not cfg.models:
        raise HarnessError("no models configured; choose a models group, e.g. models=vision")
    specs = {}
    for name, m in cfg.models.items():
        if not m.slo_ms > 0:
            raise HarnessError(f"models.{name}.slo_ms must be > 0 (got {m.slo_ms}); set models.{name}.slo_ms=<ms>")
        specs[name] = ModelSpec(name, m.slo_ms / 1000.0)
    return specs


def app_graphs(cfg: Config, models: Mapping[str, ModelSpec]) -> dict[str, App]:
    apps = {}
    for name, a in cfg.apps.items():
        if name in models:
            raise HarnessError(f"app '{name}' has the name of a model; give it its own name")
        index = {n.name: i for i, n in enumerate(a.nodes)}
        nodes = []
        for n in a.nodes:
            where = f"apps.{name}: node '{n.name}'"
            if bool(n.model) == bool(n.variants) or len(set(n.variants)) != len(n.variants):
                raise HarnessError(f"{where} needs either `model` or a list of distinct `variants` (got model="
                                   f"{n.model!r}, variants={list(n.variants)})")
            candidates = list(n.variants) or [n.model]
            unserved = [m for m in candidates if m not in models]
            if unserved:
                raise HarnessError(f"{where} runs {unserved}, not served; served: {', '.join(models)} "
                                   "(choose a models group that has them)")
            unknown = [p for p in n.after if p not in index]
            if unknown:
                raise HarnessError(f"{where} comes after unknown node(s) {unknown}")
            if n.copies_dist not in COPIES_DISTRIBUTIONS or not n.copies >= 0:
                raise HarnessError(f"{where} needs copies >= 0 and copies_dist in "
                                   f"{COPIES_DISTRIBUTIONS} (got {n.copies}, {n.copies_dist!r})")
            accuracy: tuple[float, ...] = ()
            if len(candidates) > 1:
                known = variant_accuracies()
                missing = [m for m in candidates if m not in known]
                if missing:
                    raise HarnessError(f"{where}: no accuracy for variants {missing} in profiles/variants.json; "
                                       "add them (torchvision's weight metadata) or drop them from `variants`")
                accuracy = tuple(known[m] for m in candidates)
            best = candidates[accuracy.index(max(accuracy))] if accuracy else candidates[0]
            nodes.append(AppNode(n.name, best, tuple(index[p] for p in n.after), tuple(candidates), accuracy))
        if not a.slo_ms > 0:
            raise HarnessError(f"apps.{name}.slo_ms must be > 0 (got {a.slo_ms}); set apps.{name}.slo_ms=<ms>")
        if not 0 < a.accuracy <= 1:
            raise HarnessError(f"apps.{name}.accuracy must be in (0, 1] (got {a.accuracy}): the relative accuracy "
                               f"its requests keep; set apps.{name}.accuracy=<e.g. 0.95>")
        apps[name] = App(name, a.slo_ms / 1000.0, tuple(nodes), a.accuracy)
    return apps


def detect_gpus() -> list[str]:
    """Names of the NVIDIA GPUs NVML sees (none without a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no nvidia-ml-py, no driver, no GPU: all mean "none here"
        return []
    try:
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                 for i in range(pynvml.nvmlDeviceGetCount())]
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    finally:
        pynvml.nvmlShutdown()


def resolve_auto_cluster(cfg: DictConfig) -> str:
    """`cluster=auto`: the GPUs present when the live runtime can use them, else emulated H200s.

    Rewrites the config in place (so the saved config.yaml says what ran) and returns the sentence
    the summary records about the choice ("" when not auto).
    """
    c = cfg.cluster
    if c.gpu_type != "auto":
        return ""
    found = detect_gpus()
    if found and cfg.runtime.name == "live":
        from harness.gpu.partitions import gpu_type_from_name

        c.gpu_type = gpu_type_from_name(found[0])
        cfg.runtime.executor = "gpu"
        if c.partition == "whole":
            c.count = len(found)
        return f"auto: {len(found)} x {found[0]} found; serving on real GPUs ({c.count} slots, {c.partition})"
    c.gpu_type = "h200"
    why = "no NVIDIA GPU found" if not found else "the sim runtime always emulates"
    return f"auto: {why}; {c.count} emulated h200 slots ({c.partition}) from profiles/h200/{c.partition}.json"


def is_sleep(cfg: Config) -> bool:
    return cfg.cluster.gpu_type == SLEEP
