"""HTTP service and web page (``hysac serve``): classify, safety-aware search and traversal over HTTP.

``create_app(model, index_dir)`` builds the FastAPI app (see :mod:`hysac.service.app`); the page lives in
``web/`` (plain HTML/JS/CSS, served by the app, nothing fetched from elsewhere). Needs the ``serve`` extra
(``pip install 'hysac[serve]'``); importing this package does not, so ``hysac serve`` can say so.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "ApiError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
