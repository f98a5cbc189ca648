"""``POST /traverse``: move a query toward (or away from) the safe region and show where it went."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ...policy import MODALITIES, Mode
from ..answers import image_url, query_info, result_dict
from ..errors import clean
from ..openapi import BINARY, ERRORS, body_spec
from ..plot import disk_coordinates, poincare_radius
from ..requests import check_k, one_query, parse_body
from ..schemas import TraverseRequest, TraverseResponse
from ..state import ServiceState, get_state

router = APIRouter(tags=["safety"])


@router.post("/traverse", response_model=TraverseResponse, responses=ERRORS,
             openapi_extra=body_spec(TraverseRequest, {"image": BINARY, "text": {"type": "string"},
                                                       "target": {"type": "string"},
                                                       "direction": {"type": "string"},
                                                       "tau": {"type": "number"}, "k": {"type": "integer"}},
                                     "JSON {text, target, direction, tau, k} or multipart with one image file "
                                     "and the same fields."))
async def traverse(request: Request, st: ServiceState = Depends(get_state)):
    """Move a query along its geodesic toward the safe region of the target modality (`direction=in`, what
    the redirect modes search with) or away from it (`out`, seek-unsafe): scores before/after, the nearest
    target items before/after, and Poincaré-disk coordinates of all of them for a plot."""
    t0 = time.perf_counter()
    body, uploads = await parse_body(request, TraverseRequest, st.limits)
    check_k(body.k, st.limits, lo=0)
    modality, text, up = one_query(body, uploads, st.limits)
    pil = (await st.decoder([up]))[0] if up is not None else None
    s = st.searcher
    target = body.target or ("image" if s is None or s.n.get("image", 0) > 0 else "text")
    label = text if text is not None else (up.filename if up is not None else "image")

    def job(x: torch.Tensor) -> dict[str, Any]:
        return _traverse_one(st, x, body, modality, target, text, up.filename if up is not None else None, label)

    out = await st.engine.query(modality, text if modality == "text" else pil, job)
    out["took_ms"] = (time.perf_counter() - t0) * 1e3
    return JSONResponse(clean(out))


def _traverse_one(st: ServiceState, x: torch.Tensor, body: Any, modality: str, target: str, text: str | None,
                  image: str | None, label: str) -> dict[str, Any]:
    """(worker thread) The policy's move of one encoded query ``x`` (1, D), the nearest target items before and
    after it, and the plot."""
    m, s = st.model, st.searcher
    info = query_info(m, x, modality, text, image)
    mv = m.policy.move(x, Mode.for_direction(body.direction), target, query=modality, tau=body.tau)
    y, tau = mv.points, float(mv.radius)
    before, after = float(m.score(x)[0]), float(m.score(y)[0])
    rb: list = []
    ra: list = []
    if s is not None and body.k > 0 and s.n.get(target, 0) > 0:
        rb = s.search(x, k=body.k, mode="off", modality=target, query_modality=modality)[0]
        ra = s.search(y, k=body.k, mode="off", modality=target, query_modality=modality)[0]
    unsafe_before, unsafe_after = st.unsafe(before, modality), st.unsafe(after, modality)
    queries = [{"role": "query_before", "safety_score": before, "unsafe": unsafe_before, "label": label,
                "modality": modality},
               {"role": "query_after", "safety_score": after, "unsafe": unsafe_after, "label": label,
                "modality": modality}]
    plot = _plot(st, x, y, queries, rb, ra, body.direction, tau)
    return {"query": info, "target": target, "direction": body.direction, "tau": tau,
            "score_before": before, "score_after": after, "unsafe_before": unsafe_before,
            "unsafe_after": unsafe_after, "moved": bool(mv.moved[0]), "status": mv.describe(0),
            "results_before": [result_dict(r) for r in rb], "results_after": [result_dict(r) for r in ra],
            "plot": plot}


def _plot(st: ServiceState, x: torch.Tensor, y: torch.Tensor, queries: list[dict[str, Any]], rb: list, ra: list,
          direction: str, tau: float) -> dict[str, Any]:
    """Poincaré-disk points for the query before / after its move and for the items near either, and the rings
    of the thresholds and the move's radius."""
    ids = list(dict.fromkeys([r.id for r in ra] + [r.id for r in rb]))
    by_id = {r.id: r for r in rb + ra}
    pts = [x[0].double().numpy(), y[0].double().numpy()]
    if ids:
        pts += list(st.searcher.store.embeddings.get(np.asarray(ids, dtype=np.int64)).astype(np.float64))
    c = st.model.curvature
    xy = disk_coordinates(np.stack(pts), c, anchor=0)
    radii = np.hypot(xy[:, 0], xy[:, 1])
    points = [{"role": q["role"], "x": xy[j, 0], "y": xy[j, 1], "radius": radii[j],
               **{k: v for k, v in q.items() if k != "role"}} for j, q in enumerate(queries)]
    before_ids, after_ids = {r.id for r in rb}, {r.id for r in ra}
    for j, i in enumerate(ids, start=2):
        r = by_id[i]
        p = {"role": "result", "x": xy[j, 0], "y": xy[j, 1], "radius": radii[j], "safety_score": r.safety_score,
             "unsafe": r.unsafe, "label": r.content[:200], "id": r.id, "modality": r.modality,
             "near_before": i in before_ids, "near_after": i in after_ids}
        if r.modality == "image":
            p["image_url"] = image_url(r.id)
        points.append(p)
    rings = [{"label": f"{mod} threshold", "distance": st.thresholds[mod]} for mod in MODALITIES]
    rings.append({"label": "redirect radius" if direction == "in" else "seek-unsafe radius", "distance": tau})
    for ring in rings:
        ring["radius"] = float(poincare_radius(ring["distance"], c))
    return {"curvature": c, "points": points, "rings": rings}
