"""What every route shares, built once by :func:`~hysac.service.app.create_app` and injected with
``Depends(get_state)``: the model, the engine (worker thread, optional index searcher), the limits, the image
decoder and the thresholds the answers report."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from fastapi import Request

from ..policy import MODALITIES, over_threshold
from .engine import Engine
from .requests import ImageDecoder, Limits

__all__ = ["ServiceState", "get_state"]


@dataclass
class ServiceState:
    model: Any
    engine: Engine
    limits: Limits
    decoder: ImageDecoder
    index_path: Path | None = None
    fast: dict[str, Any] | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.thresholds:
            self.thresholds = {mod: float(self.model.unsafe_threshold(mod)) for mod in MODALITIES}

    @property
    def searcher(self) -> Any | None:
        return self.engine.searcher

    @cached_property
    def source_roots(self) -> tuple[str, ...]:
        """Resolved folders indexed image files may be served from: the image folders and the folders of the
        tables the index was built from (as recorded at build time)."""
        if self.searcher is None:
            return ()
        return tuple(os.path.realpath(s["path"]) if s["kind"] == "folder" else
                     os.path.dirname(os.path.realpath(s["path"])) for s in self.searcher.store.sources())

    def unsafe(self, score: float, modality: str) -> bool:
        """The policy's verdict for a stored score (:func:`hysac.policy.over_threshold`)."""
        return bool(over_threshold(score, self.thresholds[modality]))


def get_state(request: Request) -> ServiceState:
    """FastAPI dependency: the app's :class:`ServiceState`."""
    return request.app.state.service
