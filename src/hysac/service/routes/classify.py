"""``POST /classify``: scores, verdicts and categories for texts and uploaded images."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..errors import ApiError, clean
from ..openapi import BINARY, ERRORS, body_spec
from ..requests import check_text, parse_body
from ..schemas import ClassifyRequest, ClassifyResponse
from ..state import ServiceState, get_state

router = APIRouter(tags=["safety"])


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS,
             openapi_extra=body_spec(ClassifyRequest, {"texts": {"type": "array", "items": {"type": "string"}},
                                                       "images": {"type": "array", "items": BINARY},
                                                       "threshold": {"type": "number"}},
                                     "JSON {texts: [...]} or multipart with image files (any field name) and "
                                     "repeated `texts` fields."))
async def classify(request: Request, st: ServiceState = Depends(get_state)):
    """Score texts and images: distance from the origin (higher = more unsafe), unsafe flag, categories.
    One result per input like `hysac classify --json`: texts first, then uploaded images in order."""
    lim = st.limits
    body, uploads = await parse_body(request, ClassifyRequest, lim, list_fields=("texts",),
                                     max_files=lim.max_batch)
    texts = body.texts
    n = len(texts) + len(uploads)
    if n == 0:
        raise ApiError(422, "empty_query", "nothing to classify: give 'texts' or upload images")
    if n > lim.max_batch:
        raise ApiError(422, "too_many_items", f"too many inputs: {n} (max {lim.max_batch} per request)")
    for i, t in enumerate(texts):
        check_text(t, f"texts[{i}]", lim)
    images = await st.decoder(uploads)
    m = st.model

    def job():
        from ...classify import classify_images, classify_texts

        res = classify_texts(m, texts, body.threshold) if texts else []
        if images:
            img_res = classify_images(m, images, body.threshold)
            for r, up in zip(img_res, uploads):
                r.input = up.filename
            res += img_res
        return [r.to_dict() for r in res]

    results = await st.engine.run(job)
    return JSONResponse(clean({"model_id": m.model_id, "results": results}))
