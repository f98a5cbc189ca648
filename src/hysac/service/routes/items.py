"""``GET /items/{id}`` and ``GET /items/{id}/image``: an indexed item, and the file of an indexed image (only
files that are items of the index, resolving under the folders the index was built from)."""

from __future__ import annotations

import logging
import mimetypes
import os
import sqlite3
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ... import safety
from ...errors import InputError
from ...images import IMAGE_EXTENSIONS
from ..answers import image_url
from ..errors import ApiError, clean
from ..schemas import ErrorResponse
from ..state import ServiceState, get_state

router = APIRouter(tags=["search"])
log = logging.getLogger("hysac.service")


def lookup(st: ServiceState, item_id: str) -> dict[str, Any]:
    """A live item of the index by its id (plain ASCII digits); 404 for anything else."""
    if st.searcher is None:
        raise ApiError(404, "not_found", "no index is loaded")
    # plain ASCII digits only: int() would also take " 5", "1_0" and other scripts' digits
    if not (item_id.isascii() and item_id.isdigit() and len(item_id) <= 19):
        raise ApiError(404, "not_found", f"no item {item_id[:40]!r} in the index")
    i = int(item_id)
    if not 0 <= i < 2**62:
        raise ApiError(404, "not_found", f"no item {i} in the index")
    try:
        # an item a rebuild retired (its source row edited or removed) is gone for every reader
        row = st.searcher.store.rows([i], live_only=True).get(i)
    except (sqlite3.Error, InputError) as e:
        log.warning("index database unreadable: %s", e)
        raise ApiError(503, "index_unavailable", "the index database cannot be read right now") from None
    if row is None:
        raise ApiError(404, "not_found", f"no item {i} in the index")
    mod = row["modality"]
    unsafe = st.unsafe(row["score"], mod) if mod in st.thresholds else row["unsafe"]
    d: dict[str, Any] = {"id": i, "key": row["key"], "modality": mod,
                         ("text" if mod == "text" else "path"): row["content"], "safety_score": row["score"],
                         "unsafe": unsafe, "categories": row["categories"], "metadata": row["metadata"],
                         "top_category": safety.top_category(row["categories"], unsafe)}
    if mod == "image":
        d["image_url"] = image_url(i)
    return d


def servable_image(st: ServiceState, stored: str) -> Path | None:
    """The stored image path if it is still a regular image file that resolves under a source root, else
    None (a path swapped for a symlink to /etc/shadow resolves elsewhere and is refused)."""
    if Path(stored).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    real = os.path.realpath(stored)
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in st.source_roots):
        return None
    if Path(real).suffix.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(real):
        return None
    return Path(real)


@router.get("/items/{item_id}", responses={404: {"model": ErrorResponse}})
async def item(item_id: str, st: ServiceState = Depends(get_state)):
    """One indexed item (text or image path, safety score, categories, metadata)."""
    return JSONResponse(clean(await run_in_threadpool(lookup, st, item_id)))


@router.get("/items/{item_id}/image", response_class=FileResponse, responses={404: {"model": ErrorResponse}})
async def item_image(item_id: str, st: ServiceState = Depends(get_state)):
    """The file of an indexed image item. Only files that are items of the index are served."""
    d = await run_in_threadpool(lookup, st, item_id)
    if d["modality"] != "image":
        raise ApiError(404, "not_found", f"item {d['id']} is a text, not an image")
    path = await run_in_threadpool(servable_image, st, d["path"])
    if path is None:
        raise ApiError(404, "not_found", f"the image file of item {d['id']} is no longer available")
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media,
                        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})
