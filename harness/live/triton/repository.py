"""The run's model repository: a config.pbtxt and the forwarding model (stub_model.py) per model.

Triton's dynamic batcher is configured from conf/system/triton.yaml (the
fields of systems.triton.TritonConfig); every model takes `x` (INT32, [1] per
request) and answers `y` (INT32) and `batch_id` (INT64), the harness's own
protocol, so one client drives both.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Mapping

from harness.errors import HarnessError

TIMEOUT_ACTIONS = ("REJECT", "DELAY")
STUB_MODEL = Path(__file__).with_name("stub_model.py")


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    name: str
    max_batch_size: int
    preferred: list[int]


def system_config(config) -> dict:
    """The batcher's settings (TritonConfig or a mapping with its fields), checked, with their defaults."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    cfg.setdefault("max_batch_size", 0)
    cfg["preferred_batch_size"] = list(cfg.get("preferred_batch_size") or [])
    for key in ("max_queue_delay_microseconds", "max_queue_size", "default_timeout_microseconds"):
        cfg[key] = int(cfg.get(key) or 0)
        if cfg[key] < 0:
            raise HarnessError(f"triton: {key} must be >= 0 (got {cfg[key]}); fix system.{key}")
    cfg["instance_count"] = int(cfg.get("instance_count") or 1)
    if cfg["instance_count"] < 1:
        raise HarnessError(f"triton: instance_count must be >= 1 (got {cfg['instance_count']}); fix "
                           "system.instance_count")
    cfg["timeout_action"] = str(cfg.get("timeout_action") or "REJECT").upper()
    if cfg["timeout_action"] not in TIMEOUT_ACTIONS:
        raise HarnessError(f"triton: timeout_action must be one of {TIMEOUT_ACTIONS} (got {cfg['timeout_action']!r})")
    return cfg


def model_plans(models: Mapping[str, Mapping], cfg: dict) -> list[ModelPlan]:
    if not models:
        raise HarnessError("triton: no models to serve; choose a models group, e.g. models=vision")
    plans = []
    for name, spec in models.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise HarnessError(f"triton: model name {name!r} may only hold letters, digits, '.', '_' and '-'")
        largest = int((spec or {}).get("max_batch_size") or 0)
        max_batch = cfg["max_batch_size"] or largest
        if max_batch < 1:
            raise HarnessError(f"triton: no batch size limit for {name}: set system.max_batch_size or give the "
                               "model its profile's largest batch as max_batch_size")
        if largest and max_batch > largest:
            raise HarnessError(f"triton: max_batch_size {max_batch} exceeds the profiled maximum {largest} of "
                               f"{name}; lower system.max_batch_size")
        preferred = sorted(set(cfg["preferred_batch_size"]))
        if preferred and (preferred[0] < 1 or preferred[-1] > max_batch):
            raise HarnessError(f"triton: preferred_batch_size {preferred} must lie in [1, {max_batch}] for {name}; "
                               "fix system.preferred_batch_size")
        plans.append(ModelPlan(name, max_batch, preferred))
    return plans


def model_config(plan: ModelPlan, cfg: dict, instances: int, forward_socket: str) -> str:
    """config.pbtxt of one model: Python backend, `instances` CPU instances, the dynamic batcher."""
    batcher = [f"max_queue_delay_microseconds: {cfg['max_queue_delay_microseconds']}"]
    if plan.preferred:
        batcher.append(f"preferred_batch_size: [{', '.join(map(str, plan.preferred))}]")
    if cfg["max_queue_size"] or cfg["default_timeout_microseconds"]:
        batcher.append(f"default_queue_policy {{ timeout_action: {cfg['timeout_action']} "
                       f"default_timeout_microseconds: {cfg['default_timeout_microseconds']} "
                       f"max_queue_size: {cfg['max_queue_size']} }}")
    return "\n".join([
        f'name: "{plan.name}"',
        'backend: "python"',
        f"max_batch_size: {plan.max_batch_size}",
        "dynamic_batching { " + " ".join(batcher) + " }",
        f"instance_group [{{ count: {instances} kind: KIND_CPU }}]",
        'input [{ name: "x" data_type: TYPE_INT32 dims: [1] }]',
        'output [{ name: "y" data_type: TYPE_INT32 dims: [1] }, { name: "batch_id" data_type: TYPE_INT64 dims: [1] }]',
        f'parameters {{ key: "forward_socket" value {{ string_value: "{forward_socket}" }} }}',
        ""])


def write_repository(root: Path, plans: list[ModelPlan], cfg: dict, instances: Mapping[str, int],
                     forward_socket: str) -> Path:
    """The model repository under `root`: <model>/config.pbtxt (with instances[model] instances) and
    <model>/1/model.py per plan."""
    for plan in plans:
        (root / plan.name / "1").mkdir(parents=True)
        (root / plan.name / "config.pbtxt").write_text(model_config(plan, cfg, instances[plan.name],
                                                                     forward_socket))
        shutil.copy(STUB_MODEL, root / plan.name / "1" / "model.py")
    return root
