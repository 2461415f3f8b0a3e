"""JigsawServe without spatial partitioning: variants and budgets chosen, whole GPUs only (Loki-style).

The baseline of the closest prior work: the same allocation program and
serving as systems/jigsaw.py with one kind of segment, the whole GPU, so
each replica of a variant takes a GPU of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from systems.jigsaw import Jigsaw, JigsawConfig


@dataclass
class JigsawWholeGpuConfig(JigsawConfig):
    name: str = "jigsaw_whole_gpu"
    segments: List[str] = field(default_factory=lambda: ["whole"])


class JigsawWholeGpu(Jigsaw):
    Config = JigsawWholeGpuConfig
