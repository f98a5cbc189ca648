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

import asyncio
import functools
import io
import json
import logging
import math
import mimetypes
import os
import sqlite3
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import safety
from ..errors import HySACError, InputError
from ..inputs import text_problem
from ..policy import MODES, Mode, over_threshold
from ..images import IMAGE_EXTENSIONS
from .plot import disk_coordinates, poincare_radius
from .schemas import (ClassifyRequest, ClassifyResponse, ErrorResponse, HealthResponse, SearchRequest,
                      SearchResponse, TraverseRequest, TraverseResponse)

__all__ = ["create_app", "ApiError", "WEB_DIR"]

log = logging.getLogger("hysac.service")

WEB_DIR = Path(__file__).resolve().parent / "web"
MB = 1024 * 1024
#: a request body larger than this is not even drained before the 413 answer (the connection is closed)
DRAIN_CAP = 64 * MB


# ------------------------------------------------------------------------------------------------------ errors
class ApiError(Exception):
    """An error answered as JSON ``{"error", "code", "status"[, "details"]}``."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def _error_body(status: int, code: str, message: str, details: list | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "code": code, "status": status}
    if details:
        body["details"] = details
    return body


def _error_response(status: int, code: str, message: str, details: list | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(_error_body(status, code, message, details), status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
               413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input", 503: "unavailable"}


def _pydantic_details(e: ValidationError | RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        details.append({"field": loc, "message": str(err.get("msg", "")), "type": str(err.get("type", ""))})
    if not details:
        return "invalid request", []
    first = details[0]
    msg = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    if first["type"] == "extra_forbidden":
        msg = f"unknown field {first['field']!r}"
    if len(details) > 1:
        msg += f" (and {len(details) - 1} more problem{'s' if len(details) > 2 else ''})"
    return msg, details


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats → None, numpy scalars → Python."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


# ------------------------------------------------------------------------------------------- body size limit
class _BodyTooLarge(Exception):
    pass


#: hosts a local server answers to by default (``hysac serve --allow-host`` adds more)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: sent with every answer; the API docs pages need their inline bootstrap script
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"))
CSP = b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
CSP_DOCS = (b"default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            b"img-src 'self' data:; object-src 'none'; frame-ancestors 'none'")


def _host_only(value: str) -> str:
    """``"127.0.0.1:8000"`` → ``"127.0.0.1"``, ``"[::1]:8000"`` → ``"::1"`` (lower case)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class SiteGuardMiddleware:
    """Refuse what a web page on another site could make a browser send to this local server:

    * a ``Host`` header not among ``allowed_hosts`` (DNS rebinding) → 421;
    * a state-changing request (not GET/HEAD/OPTIONS) whose ``Origin`` is another site, or that the browser marks
      ``Sec-Fetch-Site: cross-site`` (cross-site form posts) → 403;

    and add ``nosniff`` / ``X-Frame-Options: DENY`` / ``Referrer-Policy`` / a Content-Security-Policy to every
    answer."""

    def __init__(self, app, allowed_hosts: Sequence[str]):
        self.app = app
        self.allowed = {_host_only(h) for h in allowed_hosts}

    async def _reply(self, send, status: int, code: str, message: str) -> None:
        body = json.dumps(_error_body(status, code, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *SECURITY_HEADERS, (b"content-security-policy", CSP)]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if "*" not in self.allowed and _host_only(host) not in self.allowed:
            return await self._reply(send, 421, "bad_host", f"host {host[:80]!r} is not served here; start the "
                                     "server with --allow-host for other names")
        if scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and origin != "null":
                from urllib.parse import urlsplit

                o = urlsplit(origin)
                if (o.netloc or "").lower() != host.strip().lower():
                    return await self._reply(send, 403, "cross_origin",
                                             f"cross-origin request from {origin[:80]!r} refused")
            elif origin == "null" or headers.get("sec-fetch-site") == "cross-site":
                return await self._reply(send, 403, "cross_origin", "cross-site request refused")
        docs = scope.get("path", "").startswith(("/docs", "/redoc", "/_docs"))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                if b"content-security-policy" not in have:
                    extra.append((b"content-security-policy", CSP_DOCS if docs else CSP))
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        return await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """Answer 413 (JSON) for request bodies over ``max_bytes``, by ``Content-Length`` up front or by counting the
    streamed body. The rest of an oversize body is read and dropped (up to :data:`DRAIN_CAP`) so that the client
    gets the answer instead of a reset connection."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = int(max_bytes)

    def _message(self) -> str:
        return (f"request body too large: the limit is {self.max_bytes} bytes "
                f"({self.max_bytes / MB:.1f} MiB) for JSON and uploads together")

    async def _reply(self, send, status: int, code: str, message: str) -> None:
        body = json.dumps(_error_body(status, code, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _drain(receive, already: int) -> None:
        total = already
        while total <= DRAIN_CAP:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            total += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                return

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = None
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    length = int(v)
                except ValueError:
                    await self._reply(send, 400, "bad_request", "invalid Content-Length header")
                    return
                break
        if length is not None and length > self.max_bytes:
            if length <= DRAIN_CAP:
                await self._drain(receive, 0)
            await self._reply(send, 413, "payload_too_large", self._message())
            return
        received = 0
        started = False
        more_body = True

        async def limited_receive():
            nonlocal received, more_body
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                more_body = bool(msg.get("more_body", False))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return msg

        async def tracking_send(msg):
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            if more_body:  # never receive() past the last chunk: servers block there until disconnect
                await self._drain(receive, received)
            await self._reply(send, 413, "payload_too_large", self._message())


# ------------------------------------------------------------------------------------------------ the engine
def _settle(fut: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # cancelled: the client went away
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


@dataclass
class Upload:
    field: str
    filename: str
    content_type: str | None
    data: bytes


class Engine:
    """The model, the optional index searcher and the single worker thread that runs inference on them.

    Single-query requests (``/search``, ``/traverse``) go through :meth:`query`: a batch job enters the worker
    queue when a query arrives (one per ``coalesce`` queued queries), and when it starts it takes every query
    queued by then (at most ``coalesce``), encodes them in one model call and runs each request's own work on its
    point. No added latency when the server is idle, far fewer model calls under load, and a query waits in the
    worker queue once, in arrival order with the other requests."""

    def __init__(self, model: Any, searcher: Any | None, index_dir: Path | None, max_pending: int,
                 coalesce: int = 64):
        self.model = model
        self.searcher = searcher
        self.index_dir = index_dir
        self.max_pending = int(max_pending)
        self.coalesce = max(1, int(coalesce))
        self.pending = 0
        self._executor: ThreadPoolExecutor | None = None
        self.counts = searcher.store.counts() if searcher is not None else None
        self._lock = threading.Lock()  # the queues are shared by the event loop and the worker thread
        self._queues: dict[str, list[tuple[Any, Callable, asyncio.Future]]] = {"text": [], "image": []}
        self._waiting: dict[str, int] = {"text": 0, "image": 0}  # batch jobs submitted, not started
        #: batched model calls made for :meth:`query` and the queries they carried
        self.encode_stats = {"calls": 0, "queries": 0}

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def query(self, modality: str, item: Any, then: Callable[[torch.Tensor], Any]) -> Any:
        """Encode one text (``modality="text"``) or RGB PIL image (``"image"``) into a (1, D) point ``x`` and
        return ``then(x)``, both in the inference thread; 503 when the queue is full. An exception from the model
        or from ``then`` fails this query alone."""
        self._check_room()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._queues[modality].append((item, then, fut))
        self._ensure_jobs(modality, loop)
        return await fut

    def _ensure_jobs(self, modality: str, loop: asyncio.AbstractEventLoop) -> None:
        """(event loop) Submit batch jobs until the queued queries fit in the jobs waiting for the worker."""
        while True:
            with self._lock:
                if len(self._queues[modality]) <= self._waiting[modality] * self.coalesce:
                    return
                self._waiting[modality] += 1
            self.pending += 1
            cf = self.executor.submit(self._batch_job, modality, loop)
            cf.add_done_callback(lambda _: loop.call_soon_threadsafe(self._job_done))

    def _job_done(self) -> None:
        self.pending -= 1

    def _batch_job(self, modality: str, loop: asyncio.AbstractEventLoop) -> None:
        """(worker) Take up to ``coalesce`` queued queries, answer them, settle their futures on the loop."""
        with self._lock:
            queue = self._queues[modality]
            batch = queue[:self.coalesce]
            del queue[:len(batch)]
            self._waiting[modality] -= 1
            short = len(queue) > self._waiting[modality] * self.coalesce
        if short:  # more arrived than the waiting jobs will take
            loop.call_soon_threadsafe(self._ensure_jobs, modality, loop)
        batch = [q for q in batch if not q[2].done()]  # skip queries whose client left
        if not batch:
            return
        try:
            outcomes = self._answer(modality, [(item, then) for item, then, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - never leave a request hanging
            outcomes = [(False, exc)] * len(batch)
        for (_, _, fut), (ok, value) in zip(batch, outcomes):
            loop.call_soon_threadsafe(_settle, fut, value if ok else None, None if ok else value)

    def _answer(self, modality: str, jobs: list[tuple[Any, Callable]]) -> list[tuple[bool, Any]]:
        """(worker) One model call for all queries, then each query's ``then``; a failing batch call is retried
        query by query so that one bad query fails alone."""
        encode = self.model.encode_text if modality == "text" else self.model.encode_image
        items = [item for item, _ in jobs]
        try:
            xs = encode(items)
        except Exception as exc:  # noqa: BLE001 - one query: its error; several: isolate the bad one
            if len(items) == 1:
                return [(False, exc)]
            return [self._answer(modality, [job])[0] for job in jobs]
        self.encode_stats["calls"] += 1
        self.encode_stats["queries"] += len(items)
        out: list[tuple[bool, Any]] = []
        for i, (_, then) in enumerate(jobs):
            try:
                out.append((True, then(xs[i:i + 1])))
            except Exception as e:  # noqa: BLE001 - reported to this query's request
                out.append((False, e))
        return out

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hysac-inference")
        return self._executor

    async def run(self, fn, *args, **kwargs):
        """Run ``fn`` in the inference thread; queue behind earlier requests; 503 when the queue is full."""
        self._check_room()
        self.pending += 1  # only touched from the event loop
        try:
            return await asyncio.wrap_future(self.executor.submit(fn, *args, **kwargs))
        finally:
            self.pending -= 1

    def _check_room(self) -> None:
        if self.pending + self.queued >= self.max_pending:
            raise ApiError(503, "busy", f"server busy: {self.pending + self.queued} requests already queued; "
                                        "retry later")

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        self.stop()
        if self.searcher is not None:
            self.searcher.close()


def _load(model: Any, index_dir: Path | None) -> Any:
    from ..model import load_model

    if model is None or isinstance(model, (str, Path)):
        name = None if model is None else str(model)
        if name is None and index_dir is not None:
            from ..index.store import IndexStore

            name = IndexStore.read_info(index_dir).get("model_source")
        return load_model(name)
    return model


# ---------------------------------------------------------------------------------------- OpenAPI body specs
def _json_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema()


def _body_spec(json_model: type[BaseModel], form_props: dict[str, Any], description: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": _json_schema(json_model)},
        "multipart/form-data": {"schema": {"type": "object", "properties": form_props}},
    }}}


_BIN = {"type": "string", "format": "binary"}
_ERRORS = {s: {"model": ErrorResponse, "description": d} for s, d in (
    (400, "Malformed body (JSON or multipart)"), (413, "Body over the size limit"),
    (415, "Content type other than JSON or form data"), (422, "Invalid input (empty query, unknown mode, "
                                                               "k out of range, corrupt image, too many items…)"),
    (503, "Server busy (queue full) or no index loaded"))}


# ----------------------------------------------------------------------------------------------- the factory
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
    together (1: one call per query). ``fast``: put the model on :func:`hysac.fast.optimize` (GPU when CUDA is available, else the CPU fast path).
    Raises :class:`~hysac.errors.HySACError` for a model/index that cannot be served (no bounds, mismatch).
    """
    index_path = Path(index_dir) if index_dir is not None else None
    m = _load(model, index_path)
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
    if isinstance(coalesce, bool) or int(coalesce) != coalesce or coalesce < 1:
        raise InputError(f"coalesce must be a positive integer, got {coalesce!r}")
    engine = Engine(m, searcher, index_path, max_pending, coalesce=coalesce)
    if warmup:
        m.encode_text(["warm up"])
    limits = {"max_upload_bytes": int(max_upload_bytes), "max_batch": int(max_batch), "max_k": int(max_k),
              "max_text_chars": int(max_text_chars), "max_image_pixels": int(max_image_pixels),
              "max_request_pixels": int(max_request_pixels),
              "max_pending": int(max_pending), "coalesce": int(coalesce)}
    thresholds = {mod: float(m.unsafe_threshold(mod)) for mod in ("text", "image")}
    db_path = index_path / "items.sqlite" if index_path is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.stop()  # a later startup (e.g. another TestClient block) makes a fresh worker

    docs_static = _docs_static_dir()
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
    app.state.engine = engine
    app.state.limits = limits
    from ..fast import describe

    app.state.fast = describe(m)
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_upload_bytes)
    app.add_middleware(SiteGuardMiddleware, allowed_hosts=list(allowed_hosts))  # outermost: checked first

    # ------------------------------------------------------------------------------------- error handlers
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return _error_response(e.status, e.code, e.message, e.details, headers)

    @app.exception_handler(HySACError)
    async def _hysac_error(request: Request, e: HySACError):
        return _error_response(422, "invalid_input", " ".join(str(e).split()))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        msg, details = _pydantic_details(e)
        return _error_response(422, "invalid_input", msg, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = _HTTP_CODES.get(e.status_code, "error")
        msg = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404 and msg == "Not Found":
            msg = f"no such endpoint: {request.method} {request.url.path}"
        if e.status_code == 405:
            msg = f"method {request.method} not allowed on {request.url.path}"
        return _error_response(e.status_code, code, msg, headers=getattr(e, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, e: ClientDisconnect):
        # not a server error: the client closed the connection before its body arrived; nobody reads the answer
        log.info("client disconnected during %s %s before sending its whole body", request.method,
                 request.url.path)
        return _error_response(400, "client_disconnected", "the client closed the connection mid-request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):  # pragma: no cover - a bug, not bad input
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error_response(500, "internal_error", f"internal server error ({type(e).__name__})")

    # ------------------------------------------------------------------------------------------ helpers
    async def parse(request: Request, schema: type[BaseModel], *, list_fields: tuple[str, ...] = (),
                    max_files: int = 1) -> tuple[Any, list[Upload]]:
        ctype = request.headers.get("content-type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        uploads: list[Upload] = []
        if media == "application/json" or media.endswith("+json"):
            raw = await request.body()
            if not raw.strip():
                raise ApiError(400, "empty_body", "empty request body: send a JSON object")
            try:
                data = json.loads(raw)
            except UnicodeDecodeError:
                raise ApiError(400, "malformed_json", "malformed JSON body: not UTF-8") from None
            except json.JSONDecodeError as e:
                raise ApiError(400, "malformed_json",
                               f"malformed JSON body: {e.msg} at line {e.lineno} column {e.colno}") from None
            except (ValueError, RecursionError) as e:
                raise ApiError(400, "malformed_json", f"malformed JSON body: {type(e).__name__}") from None
            if not isinstance(data, dict):
                raise ApiError(422, "invalid_input", f"the JSON body must be an object, got {type(data).__name__}")
        elif media in ("multipart/form-data", "application/x-www-form-urlencoded"):
            try:
                form = await request.form(max_files=max_files, max_fields=max_batch + 16,
                                          max_part_size=max(1 * MB, max_text_chars * 4))
            except (ValueError, KeyError, AssertionError) as e:  # malformed bodies the parser did not map to 400
                raise ApiError(400, "malformed_form", f"malformed form body: {e}") from None
            data = {}
            try:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        blob = await value.read()
                        uploads.append(Upload(key, value.filename or key, value.content_type, blob))
                        continue
                    if value == "":
                        continue  # an empty form field means "not given"
                    if key in list_fields:
                        data.setdefault(key, []).append(value)
                    elif key in data:
                        raise ApiError(422, "invalid_input", f"form field {key!r} given more than once")
                    else:
                        data[key] = value
            finally:
                await form.close()
        else:
            raise ApiError(415, "unsupported_media_type",
                           f"unsupported content type {media or '(none)'!r}: send application/json, or "
                           "multipart/form-data for image uploads")
        try:
            body = schema.model_validate(data)
        except ValidationError as e:
            msg, details = _pydantic_details(e)
            raise ApiError(422, "invalid_input", msg, details) from None
        return body, uploads

    def check_text(text: str, what: str) -> str:
        """Empty, too long, lone surrogates, control characters: refused as ``hysac classify --text`` refuses
        them (:func:`hysac.inputs.text_problem`)."""
        problem = text_problem(text, max_text_chars)
        if problem is not None:
            raise ApiError(422, problem[0], f"{what} {problem[1]}")
        return text

    spec = m.backbone.pixel_spec() if hasattr(m.backbone, "pixel_spec") else None
    # an upload is kept as the model's input crop (a few hundred KB) as soon as it is decoded, when that crop is
    # all the model reads of it (preprocessing it again is then a no-op)
    keep_crop = spec is not None and spec.crop[0] == spec.crop[1] == int(spec.size)

    def image_size(up: Upload) -> tuple[int, int]:
        """The header size of an upload, without decoding it (0x0 when it cannot be opened: decode says why)."""
        from PIL import Image

        try:
            with Image.open(io.BytesIO(up.data)) as im:
                return im.size
        except Exception:  # noqa: BLE001 - decode_image reports the reason
            return 0, 0

    def decode_image(up: Upload):
        from PIL import Image, UnidentifiedImageError

        from ..images import open_reduced

        name = up.filename[:120]
        if not up.data:
            raise ApiError(422, "invalid_image", f"upload {name!r} is empty")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(up.data)) as im:
                    w, h = im.size
                    if w * h > max_image_pixels:
                        raise ApiError(413, "image_too_large",
                                       f"upload {name!r} is {w}x{h} pixels; the limit is {max_image_pixels} pixels")
                    try:
                        rgb = open_reduced(im, f"upload {name!r}")
                    except InputError as e:
                        raise ApiError(422, "invalid_image", str(e)) from None
                    return spec.resize_crop(rgb) if keep_crop else rgb
        except ApiError:
            raise
        except UnidentifiedImageError:
            raise ApiError(422, "invalid_image", f"upload {name!r} is not a recognised image format") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ApiError(413, "image_too_large", f"refusing upload {name!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - PIL raises many types on corrupt data; all are bad input
            raise ApiError(422, "invalid_image",
                           f"upload {name!r} is a corrupt or truncated image ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]})") from None

    def decode_all(uploads: list[Upload]):
        """Check the request's decoded-pixel budget from the headers, then decode one upload at a time (each
        reduced to the model's input before the next is decoded)."""
        sizes = [image_size(u) for u in uploads]
        total = sum(w * h for w, h in sizes)
        if total > max_request_pixels:
            raise ApiError(413, "image_too_large",
                           f"the {len(uploads)} uploads hold {total} pixels together; the limit is "
                           f"{max_request_pixels} decoded pixels per request")
        return [decode_image(u) for u in uploads]

    async def decode_images(uploads: list[Upload]):
        return await run_in_threadpool(decode_all, uploads)

    def check_k(k: int, lo: int = 1) -> int:
        if not lo <= k <= max_k:
            raise ApiError(422, "invalid_input", f"k must be between {lo} and {max_k}, got {k}")
        return k

    def query_info(x: torch.Tensor, modality: str, text: str | None, image: str | None) -> dict[str, Any]:
        v = m.policy.judge(x, modality)
        score, unsafe = float(v.scores[0]), bool(v.unsafe[0])
        cat_d = v.category_dict(0) if v.categories is not None else None
        info: dict[str, Any] = {"modality": modality}
        if text is not None:
            info["text"] = text
        if image is not None:
            info["image"] = image
        info.update(safety_score=score, unsafe=unsafe, threshold=v.threshold, categories=cat_d,
                    top_category=safety.top_category(cat_d, unsafe))
        return info

    def result_dict(r: Any) -> dict[str, Any]:
        d = r.to_dict()
        d["top_category"] = safety.top_category(r.categories, d.get("unsafe"))
        if r.modality == "image":
            d["image_url"] = f"/items/{r.id}/image"
        return d

    async def one_query(body: Any, uploads: list[Upload]) -> tuple[str, str | None, Any]:
        """Validate a single text-or-image query; returns (modality, text, image upload)."""
        if len(uploads) > 1:
            raise ApiError(422, "invalid_input", f"upload one image query, not {len(uploads)}")
        if body.text is not None and uploads:
            raise ApiError(422, "invalid_input", "give a text or an image query, not both")
        if uploads:
            return "image", None, uploads[0]
        if body.text is None:
            raise ApiError(422, "empty_query", "empty query: give 'text' or upload an image")
        return "text", check_text(body.text, "query text"), None

    # ------------------------------------------------------------------------------------------- routes
    @app.get("/health", response_model=HealthResponse, tags=["service"])
    async def health():
        """Liveness and what is loaded: model id, curvature, thresholds, index item counts, limits."""
        index = None
        if engine.searcher is not None:
            index = {"path": str(index_path), "items": engine.counts["total"], "counts": engine.counts,
                     "modalities": list(engine.searcher.modalities)}
        return {"status": "ok",
                "model": {"id": m.model_id, "name": getattr(m, "name", None), "curvature": m.curvature,
                          "embed_dim": int(m.embed_dim), "thresholds": thresholds,
                          "categories": m.category_head is not None, "device": str(m.device),
                          "fast_path": app.state.fast},
                "index": index, "modes": list(MODES),
                "limits": limits, "pending": engine.pending + engine.queued,
                "encode_batching": dict(engine.encode_stats)}

    @app.post("/classify", response_model=ClassifyResponse, responses=_ERRORS, tags=["safety"],
              openapi_extra=_body_spec(ClassifyRequest, {"texts": {"type": "array", "items": {"type": "string"}},
                                                         "images": {"type": "array", "items": _BIN},
                                                         "threshold": {"type": "number"}},
                                       "JSON {texts: [...]} or multipart with image files (any field name) and "
                                       "repeated `texts` fields."))
    async def classify(request: Request):
        """Score texts and images: distance from the origin (higher = more unsafe), unsafe flag, categories.
        One result per input like `hysac classify --json`: texts first, then uploaded images in order."""
        body, uploads = await parse(request, ClassifyRequest, list_fields=("texts",), max_files=max_batch)
        texts = body.texts
        n = len(texts) + len(uploads)
        if n == 0:
            raise ApiError(422, "empty_query", "nothing to classify: give 'texts' or upload images")
        if n > max_batch:
            raise ApiError(422, "too_many_items", f"too many inputs: {n} (max {max_batch} per request)")
        for i, t in enumerate(texts):
            check_text(t, f"texts[{i}]")
        images = await decode_images(uploads)

        def job():
            from ..classify import classify_images, classify_texts

            res = classify_texts(m, texts, body.threshold) if texts else []
            if images:
                img_res = classify_images(m, images, body.threshold)
                for r, up in zip(img_res, uploads):
                    r.input = up.filename
                res += img_res
            return [r.to_dict() for r in res]

        results = await engine.run(job)
        return JSONResponse(_clean({"model_id": m.model_id, "results": results}))

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS, tags=["search"],
              openapi_extra=_body_spec(SearchRequest, {"image": _BIN, "text": {"type": "string"},
                                                       "mode": {"type": "string"}, "k": {"type": "integer"},
                                                       "modality": {"type": "string"},
                                                       "rerank": {"type": "string"}},
                                       "JSON {text, mode, k, modality, rerank} or multipart with one image file "
                                       "and the same fields."))
    async def search(request: Request):
        """Search the index with a text or an image under a safety mode; each result carries its safety score,
        unsafe flag, categories and metadata (and `image_url` for images)."""
        t0 = time.perf_counter()
        body, uploads = await parse(request, SearchRequest)
        if engine.searcher is None:
            raise ApiError(503, "no_index", "search is unavailable: the server was started without an index")
        check_k(body.k)
        modality, text, up = await one_query(body, uploads)
        pil = (await decode_images([up]))[0] if up is not None else None

        def job(x: torch.Tensor):
            info = query_info(x, modality, text, up.filename if up is not None else None)
            s = engine.searcher
            res = s.search(x, k=body.k, mode=body.mode, modality=body.modality, rerank=body.rerank,
                           query_modality=modality)[0]
            # what the mode did to the query for each sub-gallery searched (the page's status line)
            moves = {}
            for t in ([body.modality] if body.modality else s.modalities):
                mv = s.move_queries(x, body.mode, t)
                moves[t] = {"radius": mv.radius, "moved": bool(mv.moved[0]), "status": mv.describe(0),
                            "score_after": float(m.score(mv.points.float())[0])}
            return info, [result_dict(r) for r in res], moves

        info, results, moves = await engine.query(modality, text if modality == "text" else pil, job)
        return JSONResponse(_clean({"query": info, "mode": body.mode, "k": body.k, "modality": body.modality,
                                    "rerank": body.rerank, "results": results, "moves": moves,
                                    "took_ms": (time.perf_counter() - t0) * 1e3}))

    @app.post("/traverse", response_model=TraverseResponse, responses=_ERRORS, tags=["safety"],
              openapi_extra=_body_spec(TraverseRequest, {"image": _BIN, "text": {"type": "string"},
                                                         "target": {"type": "string"},
                                                         "direction": {"type": "string"},
                                                         "tau": {"type": "number"}, "k": {"type": "integer"}},
                                       "JSON {text, target, direction, tau, k} or multipart with one image file "
                                       "and the same fields."))
    async def traverse(request: Request):
        """Move a query along its geodesic toward the safe region of the target modality (`direction=in`, what
        the redirect modes search with) or away from it (`out`, seek-unsafe): scores before/after, the nearest
        target items before/after, and Poincaré-disk coordinates of all of them for a plot."""
        t0 = time.perf_counter()
        body, uploads = await parse(request, TraverseRequest)
        check_k(body.k, lo=0)
        modality, text, up = await one_query(body, uploads)
        pil = (await decode_images([up]))[0] if up is not None else None
        s = engine.searcher
        target = body.target or ("image" if s is None or s.n.get("image", 0) > 0 else "text")

        def job(x: torch.Tensor):
            info = query_info(x, modality, text, up.filename if up is not None else None)
            mv = m.policy.move(x, Mode.for_direction(body.direction), target, tau=body.tau)
            y, tau = mv.points, float(mv.radius)
            before, after = float(m.score(x)[0]), float(m.score(y)[0])
            rb: list = []
            ra: list = []
            if s is not None and body.k > 0 and s.n.get(target, 0) > 0:
                rb = s.search(x, k=body.k, mode="off", modality=target, query_modality=modality)[0]
                ra = s.search(y, k=body.k, mode="off", modality=target, query_modality=modality)[0]
            ids = list(dict.fromkeys([r.id for r in ra] + [r.id for r in rb]))
            by_id = {r.id: r for r in rb + ra}
            pts = [x[0].double().numpy(), y[0].double().numpy()]
            if ids:
                pts += list(s.store.embeddings.get(np.asarray(ids, dtype=np.int64)).astype(np.float64))
            xy = disk_coordinates(np.stack(pts), m.curvature, anchor=0)
            radii = np.hypot(xy[:, 0], xy[:, 1])
            label = text if text is not None else (up.filename if up is not None else "image")
            thr = thresholds[modality]
            points = [
                {"role": "query_before", "x": xy[0, 0], "y": xy[0, 1], "radius": radii[0], "safety_score": before,
                 "unsafe": bool(over_threshold(before, thr)), "label": label, "modality": modality},
                {"role": "query_after", "x": xy[1, 0], "y": xy[1, 1], "radius": radii[1], "safety_score": after,
                 "unsafe": bool(over_threshold(after, thr)), "label": label, "modality": modality},
            ]
            before_ids = {r.id for r in rb}
            after_ids = {r.id for r in ra}
            for j, i in enumerate(ids, start=2):
                r = by_id[i]
                p = {"role": "result", "x": xy[j, 0], "y": xy[j, 1], "radius": radii[j],
                     "safety_score": r.safety_score, "unsafe": r.unsafe, "label": r.content[:200], "id": r.id,
                     "modality": r.modality, "near_before": i in before_ids, "near_after": i in after_ids}
                if r.modality == "image":
                    p["image_url"] = f"/items/{r.id}/image"
                points.append(p)
            c = m.curvature
            rings = [{"label": f"{mod} threshold", "distance": thresholds[mod]} for mod in ("text", "image")]
            rings.append({"label": "redirect radius" if body.direction == "in" else "seek-unsafe radius",
                          "distance": tau})
            for ring in rings:
                ring["radius"] = float(poincare_radius(ring["distance"], c))
            return {"query": info, "target": target, "direction": body.direction, "tau": tau,
                    "score_before": before, "score_after": after,
                    "unsafe_before": bool(over_threshold(before, thr)), "unsafe_after": bool(over_threshold(after, thr)), "moved": bool(mv.moved[0]), "status": mv.describe(0),
                    "results_before": [result_dict(r) for r in rb], "results_after": [result_dict(r) for r in ra],
                    "plot": {"curvature": c, "points": points, "rings": rings}}

        out = await engine.query(modality, text if modality == "text" else pil, job)
        out["took_ms"] = (time.perf_counter() - t0) * 1e3
        return JSONResponse(_clean(out))

    # ---------------------------------------------------------------------------------------- items
    def lookup(item_id: str) -> dict[str, Any]:
        if db_path is None:
            raise ApiError(404, "not_found", "no index is loaded")
        # plain ASCII digits only: int() would also take " 5", "1_0" and other scripts' digits
        if not (item_id.isascii() and item_id.isdigit() and len(item_id) <= 19):
            raise ApiError(404, "not_found", f"no item {item_id[:40]!r} in the index")
        i = int(item_id)
        if not 0 <= i < 2**62:
            raise ApiError(404, "not_found", f"no item {i} in the index")
        try:
            conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
            try:
                # an item a rebuild retired (its source row edited or removed) is gone for every reader
                live = ("AND removed IS NULL" if any(c[1] == "removed" for c in conn.execute(
                    "PRAGMA table_info(items)")) else "")
                row = conn.execute("SELECT id, key, modality, content, score, unsafe, categories, metadata "
                                   f"FROM items WHERE id=? {live}", (i,)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error as e:
            log.warning("index database unreadable: %s", e)
            raise ApiError(503, "index_unavailable", "the index database cannot be read right now") from None
        if row is None:
            raise ApiError(404, "not_found", f"no item {i} in the index")
        cats = json.loads(row[6]) if row[6] else None
        d: dict[str, Any] = {"id": row[0], "key": row[1], "modality": row[2],
                             ("text" if row[2] == "text" else "path"): row[3], "safety_score": float(row[4]),
                             "unsafe": bool(float(row[4]) > thresholds[row[2]]) if row[2] in thresholds
                             else bool(row[5]), "categories": cats,
                             "metadata": json.loads(row[7]) if row[7] else {}}
        d["top_category"] = safety.top_category(cats, d["unsafe"])
        if row[2] == "image":
            d["image_url"] = f"/items/{row[0]}/image"
        return d

    @app.get("/items/{item_id}", tags=["search"], responses={404: {"model": ErrorResponse}})
    async def item(item_id: str):
        """One indexed item (text or image path, safety score, categories, metadata)."""
        return JSONResponse(_clean(await run_in_threadpool(lookup, item_id)))

    @functools.cache
    def source_roots() -> tuple[str, ...]:
        """Resolved folders image items may be served from: the image folders and the folders of the tables the
        index was built from (as recorded at build time)."""
        if db_path is None:
            return ()
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT path, kind FROM sources").fetchall()
        finally:
            conn.close()
        roots = []
        for path, kind in rows:
            p = os.path.realpath(path)
            roots.append(p if kind == "folder" else os.path.dirname(p))
        return tuple(roots)

    def servable_image(stored: str) -> Path | None:
        """The stored image path if it is still a regular image file that resolves under a source root, else
        None (a path swapped for a symlink to /etc/shadow resolves elsewhere and is refused)."""
        if Path(stored).suffix.lower() not in IMAGE_EXTENSIONS:
            return None
        real = os.path.realpath(stored)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in source_roots()):
            return None
        if Path(real).suffix.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(real):
            return None
        return Path(real)

    @app.get("/items/{item_id}/image", tags=["search"], response_class=FileResponse,
             responses={404: {"model": ErrorResponse}})
    async def item_image(item_id: str):
        """The file of an indexed image item. Only files that are items of the index are served."""
        d = await run_in_threadpool(lookup, item_id)
        if d["modality"] != "image":
            raise ApiError(404, "not_found", f"item {d['id']} is a text, not an image")
        path = await run_in_threadpool(servable_image, d["path"])
        if path is None:
            raise ApiError(404, "not_found", f"the image file of item {d['id']} is no longer available")
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media,
                            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------------------------------ page and docs
    @app.get("/", include_in_schema=False)
    async def index_page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")

    if docs_static is not None:
        app.mount("/_docs", StaticFiles(directory=str(docs_static)), name="docs-static")

        @app.get("/docs", include_in_schema=False)
        async def docs():
            return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} — API docs",
                                       swagger_js_url="/_docs/swagger-ui-bundle.js",
                                       swagger_css_url="/_docs/swagger-ui.css",
                                       swagger_favicon_url="/_docs/favicon.png")

        @app.get("/redoc", include_in_schema=False)
        async def redoc():
            return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} — ReDoc",
                                  redoc_js_url="/_docs/redoc.standalone.js", redoc_favicon_url="/_docs/favicon.png",
                                  with_google_fonts=False)

    return app


def _docs_static_dir() -> Optional[Path]:
    """Swagger UI / ReDoc assets shipped by the ``fastapi-offline`` package, so /docs works offline; None (FastAPI's
    CDN-hosted docs page) when it is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    d = Path(fastapi_offline.__file__).resolve().parent / "static"
    return d if (d / "swagger-ui-bundle.js").is_file() else None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("hysac")
    except Exception:  # noqa: BLE001
        return "0"
