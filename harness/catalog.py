"""What can be run: the config groups' choices, each with a one-line description.

    python -m harness list              # systems, workloads, clusters, models, runtimes, experiments
    python -m harness list system       # one group
    python -m harness --help            # how to run, the groups and their choices

A system is described by the first sentence of its module's docstring
(systems/<name>.py); every other choice by the first sentence of its config
file's leading comment, or, for a cluster without one, by its slots in words.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
GROUPS = {"system": "systems under test", "workload": "load", "cluster": "GPUs and their partitions",
          "models": "models and their SLOs", "runtime": "where the policy runs", "experiment": "named experiments"}


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def describe(path: Path) -> str:
    """The first sentence of the file's leading comment block ('' if it has none)."""
    block = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        words = line.lstrip("#").strip()
        if "@package" in words:
            continue
        if not words:
            if block:
                break
            continue
        block.append(words)
    return first_sentence(" ".join(block))


def first_sentence(text: str) -> str:
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(`])", text.strip(), maxsplit=1)[0].rstrip(".")


def description(group: str, name: str) -> str:
    if group == "system":
        module = ROOT / "systems" / f"{name}.py"
        if module.is_file():
            doc = ast.get_docstring(ast.parse(module.read_text())) or ""
            if doc:
                return first_sentence(" ".join(doc.split("\n\n", 1)[0].split()))
    text = describe(CONF / group / f"{name}.yaml")
    if not text and group == "cluster":
        return _cluster_in_words(CONF / group / f"{name}.yaml")
    return text


def _cluster_in_words(path: Path) -> str:
    from omegaconf import OmegaConf

    from harness.placement import Placement

    c = OmegaConf.load(path)
    cluster = SimpleNamespace(gpu_type=c.get("gpu_type", "h200"), partition=c.get("partition", "whole"),
                              count=int(c.get("count", 1)), extra=[])
    return Placement.from_config(cluster, ["any"]).describe()


def listing(groups: list[str]):
    """A rich table per group: each choice and its description."""
    from rich.table import Table

    for group in groups:
        table = Table(title=f"{group}  ({GROUPS[group]})", title_justify="left", title_style="bold", box=None,
                      show_header=False, padding=(0, 2, 0, 2))
        table.add_column(style="cyan", no_wrap=True)
        table.add_column()
        for name in choices(group):
            table.add_row(name, description(group, name))
        yield table


def help_text() -> str:
    groups = "\n".join(f"  {group:<11} {', '.join(choices(group))}" for group in GROUPS)
    return f"""usage: python -m harness [GROUP=CHOICE ...] [KEY=VALUE ...]          one run
       python -m harness -m GROUP=A,B KEY=X,Y ...                   a sweep: every combination
       python -m harness list [GROUP]                               every choice, with what it is

Config groups (conf/<group>/<choice>.yaml), defaults in conf/config.yaml:
{groups}

Any field can be overridden: workload.rate=2000 models.resnet50.slo_ms=50 cluster.count=8
(every key and type is checked). Examples:

  python -m harness system=nexus workload=poisson workload.rate=300
  python -m harness runtime=sim system=symphony cluster=h200x4 workload.rate=20000
  python -m harness -m runtime=sim system=symphony,nexus,eager workload=bursty
  python -m harness experiment=reference_gpu system=symphony

More: python -m harness --cfg job system=nexus prints the composed config; --hydra-help lists Hydra's
own flags; python -m harness.report --help and python -m harness.search --help report and search runs."""


def main(argv: list[str]) -> int:
    """`list [GROUP]` or the help text; 2 for an unknown group."""
    if argv[:1] != ["list"]:
        print(help_text())
        return 0
    groups = argv[1:] or list(GROUPS)
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        print(f"error: unknown group '{unknown[0]}'; choose from: {', '.join(GROUPS)}", file=sys.stderr)
        return 2
    from rich.console import Console

    # Piped, each choice stays on one line (for grep): a console too wide for any description to wrap.
    console = Console(width=None if sys.stdout.isatty() else 10_000)
    for table in listing(groups):
        console.print(table)
        console.print()
    return 0
