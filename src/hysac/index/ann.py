"""Lorentz nearest-neighbour search as maximum inner-product search (MIPS), and the FAISS indexes that do it.

For points ``x, q`` on the hyperboloid (space components, time component ``x_t = sqrt(1/c + |x|²)``) the Lorentz
inner product is ``<x,q>_L = x·q − x_t·q_t ≤ −1/c`` and the geodesic distance is
``d(x,q) = acosh(−c·<x,q>_L) / sqrt(c)``, a decreasing function of ``<x,q>_L``. So if the index stores

    stored vector  s(x) = [x, x_t]          (D+1 floats)
    query vector   r(q) = [q, −q_t]

then the plain (Euclidean) inner product ``s(x)·r(q)`` *is* ``<x,q>_L`` and the items with the largest inner product
are exactly the geodesically nearest ones: ``IndexFlatIP`` does exact hyperbolic kNN.

HNSW needs care. While FAISS builds the graph it uses each *stored* vector as the query, so an
``IndexHNSWFlat(METRIC_INNER_PRODUCT)`` would link points by ``s(x)·s(y) = x·y + x_t·y_t`` — not Lorentzian, and
dominated by the points far from the origin (hubs); its recall@10 on random data is ~0.1. So the graph is built with
**L2 on the stored vectors** ``[x, x_t]`` — the ambient Euclidean distance, which satisfies
``|s(x) − s(y)|² = 2(x_t − y_t)² + (2/c)(cosh(√c·d(x,y)) − 1)``, a good proxy of the geodesic neighbourhood — and
**searched with the exact Lorentz inner product**: :func:`prepare_for_search` switches the loaded index (index,
storage and ``hnsw.is_similarity``) to ``METRIC_INNER_PRODUCT``, so the greedy walk and the returned scores use
``<x,q>_L`` with the query ``[q, −q_t]``. Files on disk stay in their L2 build state, so ``hysac index add``
keeps inserting with the same construction metric. (Measured on 3000 random 16-d points, M=16, efC=40:
recall@10 0.53 / 0.83 / 0.97 at efSearch 16 / 64 / 256, vs 0.03 / 0.11 / 0.28 for an IP-built graph.)

The inner products are fp32 in FAISS; the search layer re-computes the distances of the candidates in fp64 (see
:func:`lorentz_distance_fp64`) and re-sorts them, which removes the fp32 cancellation in ``x·q − x_t·q_t``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = [
    "AnnConfig",
    "ANN_TYPES",
    "storage_vectors",
    "query_vectors",
    "time_component_np",
    "lorentz_distance_fp64",
    "new_faiss_index",
    "faiss_index_kind",
    "index_ids",
    "hnsw_m",
    "write_faiss_index",
    "read_faiss_index",
    "set_ef_search",
    "prepare_for_search",
    "in_build_state",
]

#: the first faiss-cpu release whose HNSW has ``is_similarity`` (checked: 1.14.2 has not, 1.14.3 has)
MIN_FAISS = "1.14.3"
ANN_TYPES = ("none", "hnsw")
#: at query time efSearch is at least this many times the candidates fetched (k + the re-rank margin), so that
#: larger k (and the filter mode's over-fetch) keep their recall
EF_PER_CANDIDATE = 10


@dataclass(frozen=True)
class AnnConfig:
    """``type="none"``: exact ``IndexFlatIP``; ``"hnsw"``: ``IndexHNSWFlat`` (M, efConstruction, efSearch).

    The HNSW defaults are chosen by measurement on 1M points with the neighbour structure of the shipped model's
    embeddings (``benchmarks/results/index.md``, which also shows the former 16 / 40 / 64). At query time efSearch
    also grows with the number of candidates asked for (:data:`EF_PER_CANDIDATE`)."""

    type: str = "none"
    M: int = 32
    efConstruction: int = 200
    efSearch: int = 256

    def __post_init__(self):
        if self.type not in ANN_TYPES:
            raise InputError(f"unknown ANN type {self.type!r}; use one of {', '.join(ANN_TYPES)}")
        if self.M < 2 or self.efConstruction < 1 or self.efSearch < 1:
            raise InputError("HNSW parameters must be positive (M >= 2)")

    @property
    def kind(self) -> str:
        return "flat" if self.type == "none" else "hnsw"

    def to_dict(self) -> dict[str, Any]:
        if self.type == "none":
            return {"type": "none"}
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | str | None) -> "AnnConfig":
        if d is None:
            return cls()
        if isinstance(d, str):
            return cls(type=d)
        return cls(**{k: v for k, v in d.items() if k in ("type", "M", "efConstruction", "efSearch")})


def _faiss():
    import faiss

    return faiss


def time_component_np(x: np.ndarray, curv: float) -> np.ndarray:
    """``sqrt(1/c + |x|²)`` computed in fp64. (n, D) → (n,) float64."""
    x64 = np.asarray(x, dtype=np.float64)
    return np.sqrt(1.0 / float(curv) + np.einsum("ij,ij->i", x64, x64))


def storage_vectors(x: np.ndarray, curv: float) -> np.ndarray:
    """``[x, x_t]`` as contiguous float32 (n, D+1), for the index."""
    x = np.asarray(x)
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = x
    out[:, -1] = time_component_np(x, curv)
    return out


def query_vectors(q: np.ndarray, curv: float) -> np.ndarray:
    """``[q, −q_t]`` as contiguous float32 (B, D+1): its inner product with a stored vector is ``<x,q>_L``."""
    q = np.asarray(q)
    out = np.empty((q.shape[0], q.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = q
    out[:, -1] = -time_component_np(q, curv)
    return out


def lorentz_distance_fp64(q: np.ndarray, x: np.ndarray, curv: float) -> np.ndarray:
    """Geodesic distance between each query and its candidates, in fp64.

    ``q`` (B, D), ``x`` (B, K, D) → (B, K). ``acosh(max(−c<x,q>_L, 1)) / sqrt(c)``.
    """
    c = float(curv)
    q64 = np.asarray(q, dtype=np.float64)
    x64 = np.asarray(x, dtype=np.float64)
    qt = np.sqrt(1.0 / c + np.einsum("bd,bd->b", q64, q64))
    xt = np.sqrt(1.0 / c + np.einsum("bkd,bkd->bk", x64, x64))
    inner = np.einsum("bkd,bd->bk", x64, q64) - xt * qt[:, None]
    return np.arccosh(np.maximum(-c * inner, 1.0)) / np.sqrt(c)


def new_faiss_index(dim: int, ann: AnnConfig):
    """An empty ``IndexIDMap`` over ``IndexFlatIP(dim)`` or ``IndexHNSWFlat(dim, M)`` (L2 build state).

    ``dim`` is the stored-vector width, i.e. ``embed_dim + 1``. The id map holds the global item ids.
    Call :func:`prepare_for_search` before searching an HNSW index.
    """
    faiss = _faiss()
    if ann.type == "none":
        inner = faiss.IndexFlatIP(dim)
    else:
        inner = faiss.IndexHNSWFlat(dim, int(ann.M), faiss.METRIC_L2)
        inner.hnsw.efConstruction = int(ann.efConstruction)
        inner.hnsw.efSearch = int(ann.efSearch)
    return faiss.IndexIDMap(inner)


def _inner(index):
    faiss = _faiss()
    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else faiss.downcast_index(index)


def faiss_index_kind(index) -> str:
    """``"flat"``, ``"hnsw"`` or ``"other"`` for a (possibly id-mapped) FAISS index."""
    faiss = _faiss()
    inner = _inner(index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexFlat):
        return "flat"
    return "other"


def index_ids(index) -> np.ndarray:
    """The global ids held by an ``IndexIDMap`` (in insertion order)."""
    faiss = _faiss()
    return faiss.vector_to_array(index.id_map).astype(np.int64)


def hnsw_m(index) -> int | None:
    """``M`` of an HNSW index (None for other kinds)."""
    inner = _inner(index)
    return int(inner.hnsw.nb_neighbors(1)) if hasattr(inner, "hnsw") else None


def in_build_state(index) -> bool:
    """True for a flat IP index or an HNSW index still in its L2 build state (what the files must hold)."""
    faiss = _faiss()
    inner = _inner(index)
    if hasattr(inner, "hnsw"):
        return inner.metric_type == faiss.METRIC_L2 and not inner.hnsw.is_similarity
    return inner.metric_type == faiss.METRIC_INNER_PRODUCT


def prepare_for_search(index):
    """Switch an HNSW index from its L2 build state to Lorentz inner-product search (in place; idempotent).

    Do not add vectors or write the index afterwards. Flat indexes are returned unchanged.
    """
    faiss = _faiss()
    inner = _inner(index)
    if hasattr(inner, "hnsw"):
        if not hasattr(inner.hnsw, "is_similarity"):  # older FAISS walks the IP graph as if it were L2: recall ~0
            raise InputError(f"FAISS {getattr(faiss, '__version__', '?')} cannot search an HNSW index by inner "
                             f"product (no HNSW.is_similarity); install faiss-cpu >= {MIN_FAISS}")
        ip = faiss.METRIC_INNER_PRODUCT
        inner.metric_type = ip
        faiss.downcast_index(inner.storage).metric_type = ip
        inner.hnsw.is_similarity = True
        index.metric_type = ip
    return index


def set_ef_search(index, ef: int) -> None:
    """Set ``efSearch`` of an HNSW index (no-op for flat indexes)."""
    inner = _inner(index)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(ef)


def write_faiss_index(index, path: Path) -> None:
    """Write atomically (temporary file + rename)."""
    faiss = _faiss()
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    os.replace(tmp, path)


def read_faiss_index(path: Path):
    faiss = _faiss()
    return faiss.read_index(str(path))
