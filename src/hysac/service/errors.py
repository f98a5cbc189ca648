"""The service's errors: :class:`ApiError` and the handlers that answer every failure as JSON
``{"error", "code", "status"[, "details"]}`` with a 4xx status for bad input (a 500 only for a bug)."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import HySACError

__all__ = ["ApiError", "error_body", "error_response", "pydantic_details", "clean", "install_error_handlers"]

log = logging.getLogger("hysac.service")


class ApiError(Exception):
    """An error answered as JSON ``{"error", "code", "status"[, "details"]}``."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details


def error_body(status: int, code: str, message: str, details: list | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message, "code": code, "status": status}
    if details:
        body["details"] = details
    return body


def error_response(status: int, code: str, message: str, details: list | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, code, message, details), status_code=status, headers=headers)


HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
               413: "payload_too_large", 415: "unsupported_media_type", 422: "invalid_input", 503: "unavailable"}


def pydantic_details(e: ValidationError | RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
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


def clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats → None, numpy scalars → Python."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return clean(obj.item())
    return obj


def install_error_handlers(app: FastAPI) -> None:
    """Answer :class:`ApiError`, library errors (bad input → 422), request validation, HTTP errors and client
    disconnects as JSON; anything else is logged and answered 500."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        headers = {"Retry-After": "1"} if e.status == 503 else None
        return error_response(e.status, e.code, e.message, e.details, headers)

    @app.exception_handler(HySACError)
    async def _hysac_error(request: Request, e: HySACError):
        return error_response(422, "invalid_input", " ".join(str(e).split()))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        msg, details = pydantic_details(e)
        return error_response(422, "invalid_input", msg, details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = HTTP_CODES.get(e.status_code, "error")
        msg = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404 and msg == "Not Found":
            msg = f"no such endpoint: {request.method} {request.url.path}"
        if e.status_code == 405:
            msg = f"method {request.method} not allowed on {request.url.path}"
        return error_response(e.status_code, code, msg, headers=getattr(e, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, e: ClientDisconnect):
        # not a server error: the client closed the connection before its body arrived; nobody reads the answer
        log.info("client disconnected during %s %s before sending its whole body", request.method,
                 request.url.path)
        return error_response(400, "client_disconnected", "the client closed the connection mid-request")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, e: Exception):  # pragma: no cover - a bug, not bad input
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"internal server error ({type(e).__name__})")
