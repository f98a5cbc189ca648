"""Persistent safety-aware search index over hyperbolic (Lorentz) embeddings.

A clip-retrieval-like pipeline, one concept per module:

* :mod:`~hysac.index.reader` — SRC (image folder or CSV/JSONL/parquet table) → batches of :class:`Item`
* :mod:`~hysac.index.mapper` — items → :class:`EncodedBatch` (points, safety scores, unsafe flags, categories);
  bad items are logged, not fatal
* :mod:`~hysac.index.store` / :mod:`~hysac.index.writer` — the index directory; atomic per-batch commits,
  resumable builds
* :mod:`~hysac.index.sync` — a rebuild over a changed source: unchanged items kept, changed ones re-encoded,
  vanished ones removed (tombstoned) from search
* :mod:`~hysac.index.runner` / :mod:`~hysac.index.distributor` — local (tqdm) or Ray Data execution
* :mod:`~hysac.index.ann` — Lorentz kNN as inner-product search (FAISS flat / HNSW)
* :mod:`~hysac.index.search` — safety modes (off, filter, redirect, redirect+filter, seek-unsafe), modality
  filter, entailment re-rank
* :mod:`~hysac.index.cli` — ``hysac index build|add|info`` and ``hysac search``

The CLI module (typer) is not imported here; import :mod:`hysac.index.cli` for ``index_app``/``search_command``.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name → the submodule that defines it (imported on first use: FAISS and torch load only when needed)
_WHERE = {
    "AnnConfig": "ann", "lorentz_distance_fp64": "ann", "query_vectors": "ann", "storage_vectors": "ann",
    "EncodedBatch": "mapper", "ItemError": "mapper", "Mapper": "mapper",
    "Item": "reader", "Source": "reader", "open_source": "reader",
    "BuildReport": "runner", "add_to_index": "runner", "build_index": "runner",
    "MODES": "search", "IndexSearcher": "search", "QueryResult": "search", "SearchResult": "search",
    "open_searcher": "search", "IndexStore": "store", "SyncPlan": "sync", "IndexWriter": "writer",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


__all__ = [
    "AnnConfig",
    "BuildReport",
    "EncodedBatch",
    "IndexSearcher",
    "IndexStore",
    "IndexWriter",
    "Item",
    "ItemError",
    "MODES",
    "Mapper",
    "QueryResult",
    "SearchResult",
    "Source",
    "SyncPlan",
    "add_to_index",
    "build_index",
    "lorentz_distance_fp64",
    "open_searcher",
    "open_source",
    "query_vectors",
    "storage_vectors",
]
