"""Lazy public names for a package, so that ``import groundiff_core`` does not import torch."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_getattr(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``package``: ``table`` maps a public name to the submodule
    (relative to ``package``) that defines it; a name that is the submodule's own last part is the
    submodule itself (``"metrics": "evaluation.metrics"``)."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f".{table[name]}", package)
        return module if table[name].rpartition(".")[2] == name else getattr(module, name)

    return __getattr__
