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
    """The policy of `system=name`; a name `package.module:Class` names a policy defined elsewhere (a test's,
    or one under development) whose config the run's config.yaml gives in full."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise HarnessError(f"cannot load the policy '{name}' ({exc}); give module:Class of a Policy") from None
        if not (isinstance(found, type) and issubclass(found, Policy)):
            raise HarnessError(f"'{name}' is not a Policy subclass")
        return found
    if name not in names():
        raise HarnessError(f"unknown system '{name}'; choose one of: {', '.join(names())}")
    module = importlib.import_module(f"{__name__}.{name}")
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Policy) and obj.__module__ == module.__name__]
    if len(found) != 1:
        raise RuntimeError(f"systems/{name}.py must define exactly one Policy subclass (found {len(found)})")
    return found[0]
