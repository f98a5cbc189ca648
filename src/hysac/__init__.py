"""hysac: safety-aware vision-language embeddings in hyperbolic space (after HySAC, CVPR 2025).

Distance from the origin of the Lorentz hyperboloid is a safety score; see :mod:`hysac.safety`.

The package imports lazily: ``import hysac`` (and ``hysac --help``) loads no torch; ``hysac.HySAC``,
``hysac.load_model``, ``hysac.lorentz`` and ``hysac.safety`` load their modules on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import CheckpointError, HySACError, InputError, ModelMismatchError

__version__ = "0.1.0"
__all__ = ["HySAC", "load_model", "lorentz", "safety", "HySACError", "InputError", "CheckpointError",
           "ModelMismatchError", "__version__"]

#: attribute → the module that defines it (None: the attribute is that submodule)
_LAZY = {"HySAC": "model", "load_model": "model", "lorentz": None, "safety": None}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
