"""The JSON shape of what the service reports about a query and about indexed items (one place for the routes)."""

from __future__ import annotations

from typing import Any

import torch

from .. import safety

__all__ = ["query_info", "result_dict", "image_url"]


def image_url(item_id: int) -> str:
    return f"/items/{item_id}/image"


def query_info(model: Any, x: torch.Tensor, modality: str, text: str | None, image: str | None) -> dict[str, Any]:
    """The policy's verdict on one encoded query ``x`` (1, D): score, unsafe flag, threshold, categories (and, for
    a text, whether it was longer than the model reads)."""
    v = model.policy.judge(x, modality)
    unsafe = bool(v.unsafe[0])
    cats = v.category_dict(0) if v.categories is not None else None
    info: dict[str, Any] = {"modality": modality}
    if text is not None:
        info["text"] = text
    if image is not None:
        info["image"] = image
    info.update(safety_score=float(v.scores[0]), unsafe=unsafe, threshold=v.threshold, categories=cats,
                top_category=safety.top_category(cats, unsafe))
    if text is not None:  # longer than the text tower reads: judged (and searched) by its opening only
        info["truncated"] = model.text_cut([text])[0]
    return info


def result_dict(r: Any) -> dict[str, Any]:
    """A search result (:class:`~hysac.index.search.SearchResult`) as JSON, with its top category and image URL."""
    d = r.to_dict()
    d["top_category"] = safety.top_category(r.categories, d.get("unsafe"))
    if r.modality == "image":
        d["image_url"] = image_url(r.id)
    return d
