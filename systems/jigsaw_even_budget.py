"""JigsawServe without graph-aware budgets: each task's latency budget is SLO / (tasks on its longest path).

The same allocation program and serving as systems/jigsaw.py with the SLO
split evenly along each path instead of by the solver.
"""

from __future__ import annotations

from dataclasses import dataclass

from systems._milp import EVEN
from systems.jigsaw import Jigsaw, JigsawConfig


@dataclass
class JigsawEvenBudgetConfig(JigsawConfig):
    name: str = "jigsaw_even_budget"
    budget_split: str = EVEN


class JigsawEvenBudget(Jigsaw):
    Config = JigsawEvenBudgetConfig
