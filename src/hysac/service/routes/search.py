"""``POST /search``: a text or image query over the index under a safety mode."""

from __future__ import annotations

import time

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..answers import query_info, result_dict
from ..errors import ApiError, clean
from ..openapi import BINARY, ERRORS, body_spec
from ..requests import check_k, one_query, parse_body
from ..schemas import SearchRequest, SearchResponse
from ..state import ServiceState, get_state

router = APIRouter(tags=["search"])


@router.post("/search", response_model=SearchResponse, responses=ERRORS,
             openapi_extra=body_spec(SearchRequest, {"image": BINARY, "text": {"type": "string"},
                                                     "mode": {"type": "string"}, "k": {"type": "integer"},
                                                     "modality": {"type": "string"},
                                                     "rerank": {"type": "string"}},
                                     "JSON {text, mode, k, modality, rerank} or multipart with one image file "
                                     "and the same fields."))
async def search(request: Request, st: ServiceState = Depends(get_state)):
    """Search the index with a text or an image under a safety mode; each result carries its safety score,
    unsafe flag, categories and metadata (and `image_url` for images)."""
    t0 = time.perf_counter()
    body, uploads = await parse_body(request, SearchRequest, st.limits)
    s = st.searcher
    if s is None:
        raise ApiError(503, "no_index", "search is unavailable: the server was started without an index")
    check_k(body.k, st.limits)
    modality, text, up = one_query(body, uploads, st.limits)
    pil = (await st.decoder([up]))[0] if up is not None else None
    m = st.model

    def job(x: torch.Tensor):
        info = query_info(m, x, modality, text, up.filename if up is not None else None)
        res = s.search(x, k=body.k, mode=body.mode, modality=body.modality, rerank=body.rerank,
                       query_modality=modality)[0]
        # what the mode did to the query for each sub-gallery searched (the page's status line)
        moves = {}
        for t in ([body.modality] if body.modality else s.modalities):
            mv = s.move_queries(x, body.mode, t, modality)
            moves[t] = {"radius": mv.radius, "moved": bool(mv.moved[0]), "status": mv.describe(0),
                        "score_after": float(m.score(mv.points.float())[0])}
        return info, [result_dict(r) for r in res], moves

    info, results, moves = await st.engine.query(modality, text if modality == "text" else pil, job)
    return JSONResponse(clean({"query": info, "mode": body.mode, "k": body.k, "modality": body.modality,
                               "rerank": body.rerank, "results": results, "moves": moves,
                               "took_ms": (time.perf_counter() - t0) * 1e3}))
