"""The systems under test: one module per scheduling policy.

`system=X` on the command line selects conf/system/X.yaml, whose schema is
the `Config` dataclass of the Policy subclass defined in systems/X.py.
Modules whose names start with an underscore are shared helpers.
"""

from __future__ import annotations

import importlib
import pkgutil

from harness.core import Policy
from harness.errors import HarnessError


def names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def policy_class(name: str) -> type[Policy]:
    if name not in names():
        raise HarnessError(f"unknown system '{name}'; choose one of: {', '.join(names())}")
    module = importlib.import_module(f"{__name__}.{name}")
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Policy) and obj.__module__ == module.__name__]
    if len(found) != 1:
        raise RuntimeError(f"systems/{name}.py must define exactly one Policy subclass (found {len(found)})")
    return found[0]
