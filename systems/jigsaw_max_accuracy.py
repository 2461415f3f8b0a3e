"""JigsawServe without accuracy scaling: every task runs its most accurate variant.

The same allocation program and serving as systems/jigsaw.py, each node
left only its most accurate variant: budgets and segments are still chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

from systems.jigsaw import Jigsaw, JigsawConfig


@dataclass
class JigsawMaxAccuracyConfig(JigsawConfig):
    name: str = "jigsaw_max_accuracy"
    accuracy_scaling: bool = False


class JigsawMaxAccuracy(Jigsaw):
    Config = JigsawMaxAccuracyConfig
