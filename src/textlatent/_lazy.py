"""Package attributes that import their module on first use (PEP 562), so light users of a package (the simulator
workers of an evaluation, clients) do not pay for JAX."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(package: str, namespace: dict[str, Any], sources: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` resolving `name` from `sources[name]` (a module path) and caching it in `namespace`."""

    def __getattr__(name: str) -> Any:
        if name in sources:
            value = getattr(importlib.import_module(sources[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
