"""The 7 unsafe categories of I2P / ViSU and helpers to parse and encode them.

:func:`parse_categories` is lenient: names are matched case/whitespace/``_``/``-`` insensitively and a few aliases
are accepted (``"illegal activities"``, ``"self harm"``, ``"suicide"``, ``"nudity"``...). Unknown names are dropped
and logged at WARNING level (once per distinct name); :func:`split_categories` returns them instead.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable

import numpy as np

logger = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking",
                               "illegal activity")
CATEGORY_INDEX: dict[str, int] = {c: i for i, c in enumerate(CATEGORIES)}

_ALIASES: dict[str, str] = {
    "hate": "hate", "hateful": "hate", "hate speech": "hate",
    "harassment": "harassment", "harassing": "harassment", "harrassment": "harassment", "bullying": "harassment",
    "violence": "violence", "violent": "violence",
    "self harm": "self-harm", "selfharm": "self-harm", "suicide": "self-harm",
    "sexual": "sexual", "sex": "sexual", "sexual content": "sexual", "nudity": "sexual",
    "shocking": "shocking",
    "illegal activity": "illegal activity", "illegal activities": "illegal activity", "illegal": "illegal activity",
    "illegal activites": "illegal activity",
}
_SEP = re.compile(r"[,;|]")
_warned: set[str] = set()


def _key(name: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", name.lower()).split())


def normalize_category(name: str) -> str | None:
    """The canonical name of one category (``"Illegal_Activities"`` -> ``"illegal activity"``), or None."""
    return _ALIASES.get(_key(name))


def _items(value: object) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [s for s in (p.strip() for p in _SEP.split(value)) if s]
    if isinstance(value, Iterable):
        out: list[str] = []
        for v in value:
            out.extend(_items(v))
        return out
    raise TypeError(f"categories must be a string or a list of strings, got {type(value).__name__}")


def split_categories(value: str | Iterable[str] | None) -> tuple[list[str], list[str]]:
    """``(known, unknown)``: the canonical categories in :data:`CATEGORIES` order without duplicates, and the
    names that matched none (as written). Accepts ``"violence, self-harm"``, a list of names, None or NaN."""
    known: set[str] = set()
    unknown: list[str] = []
    for raw in _items(value):
        canon = normalize_category(raw)
        if canon is None:
            if raw not in unknown:
                unknown.append(raw)
        else:
            known.add(canon)
    return [c for c in CATEGORIES if c in known], unknown


def parse_categories(value: str | Iterable[str] | None) -> list[str]:
    """The canonical categories named in ``value`` (see :func:`split_categories`); unknown names are ignored and
    logged once each."""
    known, unknown = split_categories(value)
    for name in unknown:
        if name not in _warned:
            _warned.add(name)
            logger.warning("ignoring unknown category %r (known: %s)", name, ", ".join(CATEGORIES))
    return known


def categories_to_multihot(value: str | Iterable[str] | None) -> np.ndarray:
    """A float32 vector of shape ``(7,)`` with 1 at each category named in ``value`` (parsed leniently)."""
    out = np.zeros(len(CATEGORIES), dtype=np.float32)
    for c in parse_categories(value):
        out[CATEGORY_INDEX[c]] = 1.0
    return out


def multihot_to_categories(vec: Iterable[float]) -> list[str]:
    """Inverse of :func:`categories_to_multihot` (entries > 0.5 are on)."""
    arr = np.asarray(list(vec) if not isinstance(vec, np.ndarray) else vec, dtype=np.float32).reshape(-1)
    if arr.shape[0] != len(CATEGORIES):
        raise ValueError(f"expected {len(CATEGORIES)} entries, got {arr.shape[0]}")
    return [c for c, v in zip(CATEGORIES, arr, strict=True) if v > 0.5]
