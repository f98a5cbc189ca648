"""OpenAPI descriptions shared by the routes: request bodies that are JSON *or* multipart, and the error answers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .schemas import ErrorResponse

__all__ = ["body_spec", "BINARY", "ERRORS"]

BINARY = {"type": "string", "format": "binary"}

ERRORS = {s: {"model": ErrorResponse, "description": d} for s, d in (
    (400, "Malformed body (JSON or multipart)"), (413, "Body over the size limit"),
    (415, "Content type other than JSON or form data"),
    (422, "Invalid input (empty query, unknown mode, k out of range, corrupt image, too many items…)"),
    (503, "Server busy (queue full) or no index loaded"))}


def body_spec(json_model: type[BaseModel], form_props: dict[str, Any], description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its body itself: the JSON schema and the multipart fields."""
    return {"requestBody": {"required": True, "description": description, "content": {
        "application/json": {"schema": json_model.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": form_props}},
    }}}
