"""``GET /health``: liveness and what is loaded."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ...policy import MODES
from ..schemas import HealthResponse
from ..state import ServiceState, get_state

router = APIRouter(tags=["service"])


@router.get("/health", response_model=HealthResponse)
async def health(st: ServiceState = Depends(get_state)):
    """Liveness and what is loaded: model id, curvature, thresholds, index item counts, limits."""
    m, engine = st.model, st.engine
    index = None
    if engine.searcher is not None:
        index = {"path": str(st.index_path), "items": engine.counts["total"], "counts": engine.counts,
                 "modalities": list(engine.searcher.modalities)}
    return {"status": "ok",
            "model": {"id": m.model_id, "name": getattr(m, "name", None), "curvature": m.curvature,
                      "embed_dim": int(m.embed_dim), "thresholds": st.thresholds,
                      "categories": m.category_head is not None, "device": str(m.device), "fast_path": st.fast},
            "index": index, "modes": list(MODES), "limits": st.limits.to_dict(),
            "pending": engine.pending + engine.queued, "encode_batching": dict(engine.encode_stats)}
