"""Backbone registry: ``build_backbone(config)`` rebuilds a backbone from the dict its ``config()`` returned."""

from __future__ import annotations

from typing import Any, Callable

from .base import Backbone

_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(kind: str):
    """Class decorator registering ``cls.from_config`` under ``kind``."""

    def deco(cls):
        _REGISTRY[kind] = cls.from_config
        cls.kind = kind
        return cls

    return deco


def build_backbone(config: dict[str, Any], *, inference: bool = False) -> Backbone:
    """Build the backbone described by ``config`` (must hold ``kind``). ``inference``: it will be used, not
    trained, so a backbone may pick a leaner implementation of the same computation (the mini text tower)."""
    _load_builtin()
    kind = config.get("kind")
    if kind not in _REGISTRY:
        raise ValueError(f"unknown backbone kind {kind!r}; known: {sorted(_REGISTRY)}")
    if kind != "clip":  # only the CLIP backbone reads preprocessing files saved beside the checkpoint
        config = {k: v for k, v in config.items() if k != "_root"}
    return _REGISTRY[kind](config, inference=inference)


def registered_kinds() -> list[str]:
    """The registered backbone kinds (``"clip"``, ``"mini"`` when its packages are installed, …)."""
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Import for the side effect of registration; kept lazy so `import hysac` stays light.
    from . import clip  # noqa: F401
    try:
        from . import mini  # noqa: F401
    except ImportError:  # mini deps missing: clip still works
        pass


__all__ = ["Backbone", "build_backbone", "register_backbone", "registered_kinds"]
