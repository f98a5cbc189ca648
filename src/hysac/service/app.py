"""HTTP service: classification, safety-aware search and traversal over a HySAC model and an index, plus a small
web page (``/``) and OpenAPI docs (``/docs``).

Endpoints (JSON in, JSON out; image queries as ``multipart/form-data`` uploads):

* ``GET  /health`` — model id, curvature, thresholds, index item counts, limits.
* ``POST /classify`` — ``{"texts": [...]}`` and/or uploaded images → one result per input (``hysac classify
  --json``), texts first, then images in upload order.
* ``POST /search`` — ``{"text": ..., "mode": ..., "k": ..., "modality": ..., "rerank": ...}`` or an uploaded image
  with the same form fields → the query's safety and its top-k items.
* ``POST /traverse`` — text or image → score before/after moving it toward (or away from) the safe region, the
  nearest items before and after, and 2-D Poincaré-disk coordinates of all of them (:mod:`hysac.service.plot`).
* ``GET  /items/{id}`` and ``GET /items/{id}/image`` — an indexed item, and the file of an indexed image (only
  files the index holds; nothing else on disk is reachable).

Bad input gets a JSON error ``{"error", "code", "status"}`` with a 4xx status — 400 malformed body, 413 too
large, 415 wrong content type, 422 invalid values (empty query, unknown mode, k out of range, corrupt image...)
— never a 500. Model inference and index search run in one dedicated worker thread: concurrent requests queue
for it (the event loop stays free to answer ``/health``, static files and images); beyond ``max_pending`` queued
requests the service answers 503 (busy) instead of piling up work.
"""

from __future__ import annotations

import warnings
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI

from ..errors import InputError
from .engine import Engine, load_served_model
from .errors import ApiError, install_error_handlers
from .middleware import LOCAL_HOSTS, MB, BodyLimitMiddleware, SiteGuardMiddleware
from .requests import ImageDecoder, Limits
from .routes import ROUTERS
from .routes.pages import WEB_DIR, docs_static_dir, mount_static
from .state import ServiceState

__all__ = ["create_app", "ApiError", "WEB_DIR", "LOCAL_HOSTS"]


def create_app(model: Any = None, index_dir: str | Path | None = None, *, max_upload_bytes: int = 8 * MB,
               max_batch: int = 16, max_k: int = 100, max_text_chars: int = 10_000,
               max_image_pixels: int = 25_000_000, max_request_pixels: int = 100_000_000,
               max_pending: int = 1024, warmup: bool = True,
               fast: bool = False, coalesce: int = 64, allowed_hosts: Sequence[str] = LOCAL_HOSTS) -> FastAPI:
    """Build the service.

    ``model``: a loaded :class:`~hysac.model.HySAC`, a name/folder for :func:`~hysac.model.load_model`, or None
    (the model recorded in the index, else the shipped default). ``index_dir``: an index built with that model
    (optional; without it ``/search`` answers 503 and ``/traverse`` shows no items). ``max_upload_bytes``: the
    largest request body (JSON, or all multipart parts together). ``max_batch``: most inputs per ``/classify``.
    ``max_image_pixels`` / ``max_request_pixels``: the largest upload, and all uploads of one request together, in
    decoded pixels (checked from the image headers before anything is decoded; images more elongated than
    :data:`hysac.images.MAX_ASPECT` are refused too).
    ``allowed_hosts``: the ``Host`` names answered (default: this machine's loopback names; ``"*"``: any).
    ``coalesce``: most single queries (``/search``, ``/traverse``) encoded in one model call when they arrive
    together (1: one call per query). ``fast``: put the model on :func:`hysac.fast.optimize` (GPU when CUDA is
    available, else the CPU fast path).
    Raises :class:`~hysac.errors.HySACError` for a model/index that cannot be served (no bounds, mismatch).
    """
    state = _build_state(model, index_dir, Limits(max_upload_bytes, max_batch, max_k, max_text_chars,
                                                  max_image_pixels, max_request_pixels, max_pending, coalesce),
                         fast=fast, warmup=warmup)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.engine.stop()  # a later startup (e.g. another TestClient block) makes a fresh worker

    docs_static = docs_static_dir()
    app = FastAPI(
        title="HySAC service",
        version=_version(),
        description="Safety-aware vision-language embeddings in hyperbolic space: classify texts and images, "
                    "search an index with safety modes, and see queries redirected toward the safe region. "
                    "Errors are JSON `{error, code, status}` with a 4xx status for bad input.",
        lifespan=lifespan,
        docs_url=None if docs_static else "/docs",
        redoc_url=None if docs_static else "/redoc",
    )
    app.state.service = state
    app.state.engine, app.state.limits, app.state.fast = state.engine, state.limits.to_dict(), state.fast
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.limits.max_upload_bytes)
    app.add_middleware(SiteGuardMiddleware, allowed_hosts=list(allowed_hosts))  # outermost: checked first
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    mount_static(app, docs_static)
    return app


def _build_state(model: Any, index_dir: str | Path | None, limits: Limits, *, fast: bool,
                 warmup: bool) -> ServiceState:
    """Load the model (and its fast path), open the index searcher and its ANN files, start nothing yet."""
    index_path = Path(index_dir) if index_dir is not None else None
    m = load_served_model(model, index_path)
    if fast:
        from ..fast import optimize

        optimize(m)
    if getattr(m, "bounds", None) is None:
        raise InputError("the service needs a model with safety bounds (hysac_bounds.json); this one has none")
    searcher = None
    if index_path is not None:
        from ..index.search import IndexSearcher

        searcher = IndexSearcher(index_path, m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a missing/stale FAISS file is rebuilt in memory, once, here
            for mod in searcher.modalities:
                searcher.faiss_index(mod)
    engine = Engine(m, searcher, index_path, limits.max_pending, coalesce=limits.coalesce)
    if warmup:
        m.encode_text(["warm up"])
    from ..fast import describe

    return ServiceState(model=m, engine=engine, limits=limits, decoder=ImageDecoder(m.backbone.pixel_spec(), limits),
                        index_path=index_path, fast=describe(m))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("hysac")
    except Exception:  # noqa: BLE001
        return "0"
