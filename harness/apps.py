"""Compound apps: a request that runs a task graph (a DAG) of models, with one end-to-end SLO.

    App("traffic", slo=0.25, nodes=(AppNode("detect", "fasterrcnn"),
                                    AppNode("car", "resnet50", after=(0,)),
                                    AppNode("person", "efficientnet_b0", after=(0,))))

A node may name candidate variants of its task (models that do the same job
at different speed and accuracy) with their accuracy, and the app an
accuracy target:

    AppNode("car", "resnet50", after=(0,), variants=("resnet50", "mobilenet_v3_large"),
            accuracy=(80.858, 75.274))
    App("traffic", 0.25, nodes, accuracy=0.95)

Its tasks name the most accurate variant (`model`); a system that chooses
variants may run any of them. Accuracies are in each task's own metric
(ImageNet top-1, COCO box mAP), so they are compared as *relative
accuracy*: a variant's accuracy over its node's best. A request's accuracy
is that of its weakest root-to-leaf path, a path's the product of its nodes'
relative accuracies (Loki's multiplicative end-to-end accuracy); the target
is a bound on it (1.0: only the most accurate variants). profiles/variants.json
holds the variants' accuracies, from torchvision's weight metadata.

Each request carries how many tasks each node has (`copies`): a detection
that finds three cars releases three tasks of the `car` node. A node is
released once every node it comes after has finished; a node with zero
copies finishes at once. The request is done when every node is.

The ledger (harness.ledger) drives this: it releases the root nodes on
arrival, calls `finished` for each task that ran ok, and hands the tasks it
returns to the policy as new arrivals. A plain request (one model) never
comes here: it is its own single task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from harness.core import GraphTask, Request, Task
from harness.errors import HarnessError

VARIANTS_FILE = Path(__file__).resolve().parent.parent / "profiles" / "variants.json"


@dataclass(frozen=True)
class AppNode:
    name: str
    model: str                          # the model its tasks name: the most accurate variant
    after: tuple[int, ...] = ()         # indices of the nodes it waits for
    variants: tuple[str, ...] = ()      # candidate models for its task; empty: `model` alone
    accuracy: tuple[float, ...] = ()    # each variant's accuracy, in its task's own metric

    def __post_init__(self):
        object.__setattr__(self, "after", tuple(self.after))
        object.__setattr__(self, "variants", tuple(self.variants) or (self.model,))
        object.__setattr__(self, "accuracy", tuple(self.accuracy))
        if len(self.variants) > 1 and (len(self.accuracy) != len(self.variants) or min(self.accuracy) <= 0):
            raise HarnessError(f"node '{self.name}': give one accuracy > 0 per variant ({len(self.variants)} variants, "
                               f"accuracies {list(self.accuracy)})")
        if self.model not in self.variants:
            raise HarnessError(f"node '{self.name}': its model '{self.model}' is not one of its variants")

    def relative_accuracy(self, model: str) -> float:
        """`model`'s accuracy over the node's most accurate variant's (1.0 for a node of one model)."""
        if len(self.variants) == 1:
            return 1.0
        return self.accuracy[self.variants.index(model)] / max(self.accuracy)


@dataclass(frozen=True)
class App:
    name: str
    slo: float                          # seconds, from the request's arrival to its last task's end
    nodes: tuple[AppNode, ...]
    accuracy: float = 1.0               # target: the relative accuracy every request's paths keep at least
    children: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)
    paths: tuple[tuple[int, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        nodes = tuple(self.nodes)
        object.__setattr__(self, "nodes", nodes)
        if not nodes:
            raise HarnessError(f"app '{self.name}' has no nodes; give it at least one model")
        for i, n in enumerate(nodes):
            if any(not 0 <= p < i for p in n.after):
                raise HarnessError(f"app '{self.name}': node '{n.name}' must come after earlier nodes only "
                                   f"(after={list(n.after)}); list the nodes in an order the graph allows")
        if not self.slo > 0:
            raise HarnessError(f"app '{self.name}': slo must be > 0 (got {self.slo})")
        if not 0 < self.accuracy <= 1:
            raise HarnessError(f"app '{self.name}': the accuracy target must be in (0, 1] (got {self.accuracy})")
        children = tuple(tuple(c for c, m in enumerate(nodes) if i in m.after) for i in range(len(nodes)))
        object.__setattr__(self, "children", children)
        roots = [i for i, n in enumerate(nodes) if not n.after]
        object.__setattr__(self, "paths", tuple(p for r in roots for p in _paths_down(r, children)))

    @property
    def models(self) -> list[str]:
        return sorted({n.model for n in self.nodes})

    def accuracy_of(self, node_accuracy: Sequence[float]) -> float:
        """A request's accuracy from its nodes' relative accuracies: the smallest product along a path."""
        worst = 1.0
        for path in self.paths:
            product = 1.0
            for i in path:
                product *= node_accuracy[i]
            worst = min(worst, product)
        return worst

    def start(self, request: Request, t: float) -> list[Task]:
        """The tasks of the root nodes, released at `t` (the request's arrival)."""
        if len(request.copies) != len(self.nodes):
            raise HarnessError(f"app '{self.name}' request {request.id}: {len(request.copies)} copy counts for "
                               f"{len(self.nodes)} nodes")
        request.left = list(request.copies)
        request.waiting = [len(n.after) for n in self.nodes]
        request.open_nodes = len(self.nodes)
        released: list[Task] = []
        for i, n in enumerate(self.nodes):
            if not n.after:
                self._release(request, i, t, released)
        return released

    def finished(self, task: Task, t: float) -> list[Task]:
        """`task` ran ok at `t`: the tasks this releases (maybe none). Marks the request done when all are."""
        request = task.request
        request.left[task.node] -= 1
        released: list[Task] = []
        if request.left[task.node] == 0:
            self._node_done(request, task.node, t, released)
        return released

    def _release(self, request: Request, i: int, t: float, released: list[Task]) -> None:
        n = self.nodes[i]
        copies = request.copies[i]
        if copies == 0:
            self._node_done(request, i, t, released)
            return
        for _ in range(copies):
            task = GraphTask(request.id, n.model, t, request.deadline, request, i)
            request.tasks.append(task)
            released.append(task)

    def _node_done(self, request: Request, i: int, t: float, released: list[Task]) -> None:
        request.open_nodes -= 1
        if request.open_nodes == 0:
            request.t_done = t
            return
        for c in self.children[i]:
            request.waiting[c] -= 1
            if request.waiting[c] == 0:
                self._release(request, c, t, released)


def _paths_down(i: int, children: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Every path from node i down to a leaf."""
    if not children[i]:
        return [(i,)]
    return [(i, *rest) for c in children[i] for rest in _paths_down(c, children)]


@lru_cache(maxsize=None)
def variant_accuracies(path: Path = VARIANTS_FILE) -> dict[str, float]:
    """Model -> its accuracy (percent, in its task's own metric) from the variants file."""
    try:
        models = json.loads(Path(path).read_text())["models"]
        return {name: float(m["accuracy"]) for name, m in models.items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HarnessError(f"cannot read variant accuracies from '{path}' ({exc!r}); restore profiles/variants.json"
                           ) from None


def check_copies(app: App, copies: Sequence[int]) -> None:
    if len(copies) != len(app.nodes) or any(c < 0 for c in copies):
        raise HarnessError(f"app '{app.name}' needs one copy count >= 0 per node ({len(app.nodes)}); got {list(copies)}")
