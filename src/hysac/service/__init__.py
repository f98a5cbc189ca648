"""HTTP service and web page (``hysac serve``): classify, safety-aware search and traversal over HTTP.

``create_app(model, index_dir)`` builds the FastAPI app (see :mod:`hysac.service.app`); the page lives in
``web/`` (plain HTML/JS/CSS, served by the app, nothing fetched from elsewhere).
"""

from .app import ApiError, create_app

__all__ = ["create_app", "ApiError"]
