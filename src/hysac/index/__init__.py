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

from .ann import AnnConfig, lorentz_distance_fp64, query_vectors, storage_vectors
from .mapper import EncodedBatch, ItemError, Mapper
from .reader import Item, Source, open_source
from .runner import BuildReport, add_to_index, build_index
from .search import MODES, IndexSearcher, QueryResult, SearchResult, open_searcher
from .store import IndexStore
from .sync import SyncPlan
from .writer import IndexWriter

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
