"""Stage 5 — safety-aware hyperbolic kNN over an index directory.

Search = maximum inner-product search of ``[q, −q_t]`` against the stored ``[x, x_t]`` (see
:mod:`hysac.index.ann`), then an fp64 re-computation of the candidates' geodesic distances and a re-sort.
The gallery is split by modality (``faiss.text.index``, ``faiss.image.index``); a query searches each
sub-gallery it is allowed to (``modality=None``: all; ``"text"``/``"image"``: just that one) and the lists are
merged by distance. Items removed by a sync (:mod:`hysac.index.sync`) stay in the FAISS files but are dropped
from every candidate list before anything else (in every mode), and the search fetches more candidates until it
has enough live ones.

Safety modes (``mode=``), applied per sub-gallery (its modality is the *target* modality):

``off``
    plain kNN.
``filter``
    drop the items whose stored safety score exceeds ``model.unsafe_threshold(item modality)`` (decided at query
    time, so re-fitted thresholds apply without a rebuild). The search over-fetches ``k' = overfetch·k`` and, for
    the queries left with fewer than ``k`` safe items, searches again with ``k' ×4`` until ``k`` are found or the
    sub-gallery is exhausted — the result is the exact safe top-``k`` (for the exact index).
``redirect``
    pull the query toward the safe region of the target modality before searching:
    ``model.policy.move(q, "redirect", target, query=query_modality)`` (queries already inside stay put; with the
    model's ``trigger: threshold`` rule, so do queries judged safe; :mod:`hysac.policy`).
``redirect+filter``
    both.
``seek-unsafe``
    push the query out: ``model.policy.move(q, "seek-unsafe", target)``.

Optional entailment re-rank (``rerank="entail"``): the top ``k' = overfetch·k`` candidates are stably
re-ordered so that the pairs that satisfy the entailment cone test come first (each group keeps the distance
order). Which point is the cone's apex (``entail=``):

* ``"query"`` — ``safety.entails(query, item)``: the item is a specialisation of the query;
* ``"item"`` — ``safety.entails(item, query)``: the query is a specialisation of the item;
* ``"auto"`` (default) — the more *generic* of the two is the parent: a text query over images uses
  ``entails(query, item)`` and an image query over texts ``entails(item, query)``, because HySAC/MERU train
  texts (generic) to entail their images (specific), i.e. texts lie nearer the origin; for a same-modality pair
  the point nearer the origin (lower safety score) is the parent. A cone is only meaningful with the generic
  concept at its apex (apertures shrink as points move away from the origin), so testing the other way round
  would reject nearly everything.

The traversed query (not the raw one) is used for the cone test, since that is the point actually searched.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .. import safety
from ..errors import InputError
from .ann import (
    faiss_index_kind,
    in_build_state,
    index_ids,
    lorentz_distance_fp64,
    new_faiss_index,
    prepare_for_search,
    query_vectors,
    read_faiss_index,
    EF_PER_CANDIDATE,
    set_ef_search,
    storage_vectors,
)
from ..policy import MODES, Mode, Moved, check_modality, over_threshold
from .store import MODALITIES, IndexStore, faiss_file, file_sha256

__all__ = ["MODES", "RERANKS", "ENTAIL_PARENTS", "SearchResult", "QueryResult", "IndexSearcher", "open_searcher"]

RERANKS = ("none", "entail")
ENTAIL_PARENTS = ("auto", "query", "item")
#: extra candidates re-scored in fp64 beyond the ones needed, to absorb fp32 rank noise
REFINE_MARGIN = 16


@dataclass
class SearchResult:
    rank: int
    id: int
    key: str
    modality: str
    content: str  # the text, or the image path
    distance: float  # geodesic distance to the (possibly traversed) query
    safety_score: float
    unsafe: bool | None  # None: the model has no threshold for this modality
    categories: dict[str, float] | None
    metadata: dict[str, Any]
    entailed: bool | None = None

    @property
    def similarity(self) -> float:
        return -self.distance

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rank": self.rank, "id": self.id, "key": self.key, "modality": self.modality}
        d["text" if self.modality == "text" else "path"] = self.content
        d.update(similarity=self.similarity, distance=self.distance, safety_score=self.safety_score,
                 unsafe=self.unsafe, categories=self.categories, metadata=self.metadata)
        if self.entailed is not None:
            d["entailed"] = self.entailed
        return d


@dataclass
class QueryResult:
    query: str | None
    query_modality: str
    mode: str
    k: int
    query_safety_score: float
    query_unsafe: bool | None
    results: list[SearchResult] = field(default_factory=list)
    #: a text query longer than the model reads (``HySAC.text_cut``): judged and searched by its opening only;
    #: None for images and for models that cannot tell
    query_truncated: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "query_modality": self.query_modality,
            "mode": self.mode,
            "k": self.k,
            "query_safety_score": self.query_safety_score,
            "query_unsafe": self.query_unsafe,
            "query_truncated": self.query_truncated,
            "results": [r.to_dict() for r in self.results],
        }


@contextlib.contextmanager
def _omp_threads_for(nq: int) -> Iterator[None]:
    """Use at most ``nq`` OpenMP threads for a FAISS search of ``nq`` queries.

    FAISS parallelises flat and HNSW searches over the queries, so a single query gains nothing from more threads
    and only pays their wake-up/barrier cost — 0.9 ms vs 24 ms per query on a busy 2-core machine (20k × 257).
    The setting is process-wide, so it is restored right after the call.
    """
    import faiss

    before = faiss.omp_get_max_threads()
    if nq >= before:
        yield
        return
    faiss.omp_set_num_threads(max(1, nq))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _as_numpy_queries(queries: Any, dim: int) -> np.ndarray:
    if isinstance(queries, torch.Tensor):
        q = queries.detach().to("cpu", torch.float64).numpy()
    else:
        q = np.asarray(queries, dtype=np.float64)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise InputError(f"queries must have shape (B, {dim}), got {tuple(q.shape)}")
    if not np.isfinite(q).all():
        raise InputError("queries contain NaN/inf")
    return q


class IndexSearcher:
    """Searches one index directory with the model that built it (another model → ModelMismatchError)."""

    def __init__(self, index_dir: str | Path, model: Any, *, ef_search: int | None = None):
        self.store = IndexStore(index_dir)
        try:
            self.store.check_model(model)
        except BaseException:
            self.store.close()
            raise
        self.model = model
        self.curv = self.store.curvature
        self.dim = self.store.embed_dim
        self.ann = self.store.ann
        self.ef_search = int(ef_search or self.ann.efSearch)
        self.scores, self._mod_codes = self.store.scores_modalities()
        #: (N,) bool by item id: False for an item removed by a sync (kept in the FAISS files, never returned)
        self.live = self.store.live_mask()
        self._has_removed = not bool(self.live.all())
        #: vectors per sub-gallery (what its FAISS index holds, removed items included) and live items per modality
        self._stored = {m: int((self._mod_codes == i).sum()) for i, m in enumerate(MODALITIES)}
        self.n = {m: int(((self._mod_codes == i) & self.live).sum()) for i, m in enumerate(MODALITIES)}
        self._faiss: dict[str, Any] = {}
        self._thr: dict[str, float] = {}

    # -- plumbing -------------------------------------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        return [m for m in MODALITIES if self.n[m] > 0]

    def threshold(self, modality: str) -> float | None:
        """``model.unsafe_threshold(modality)``, or None for a model without one (no fitted bounds)."""
        if modality not in self._thr:
            try:
                self._thr[modality] = float(self.model.unsafe_threshold(modality))
            except InputError:
                self._thr[modality] = None
        return self._thr[modality]

    def _is_unsafe(self, score: float, modality: str) -> bool | None:
        thr = self.threshold(modality)
        return None if thr is None else bool(over_threshold(score, thr))

    def faiss_index(self, modality: str):
        """The FAISS index of one sub-gallery: the file if it is current, else rebuilt in memory."""
        if modality in self._faiss:
            return self._faiss[modality]
        ids = self.store.ids_of(modality)
        path = self.store.root / faiss_file(modality)
        index = None
        usable = path.is_file()
        recorded = ((self.store.info.get("faiss") or {}).get(modality) or {}).get("sha256")
        if usable and recorded and file_sha256(path) != recorded:
            warnings.warn(f"{path.name} of index {self.store.root} does not match its recorded checksum "
                          "(damaged or edited); not using it", stacklevel=2)
            usable = False  # rebuilt below from the (verified) shards
        if usable:
            try:
                index = read_faiss_index(path)
                have = index_ids(index)
                if not (index.d == self.dim + 1 and faiss_index_kind(index) == self.ann.kind
                        and in_build_state(index) and have.size == ids.size and np.array_equal(have, ids)):
                    index = None
            except Exception:
                index = None
        if index is None:
            if ids.size:
                warnings.warn(
                    f"{path.name} of index {self.store.root} is missing or stale; rebuilding it in memory "
                    "(rerun the build or `hysac index add` to persist it)",
                    stacklevel=2,
                )
            index = new_faiss_index(self.dim + 1, self.ann)
            for part, vecs in self.store.embeddings.iter_chunks(ids):
                index.add_with_ids(storage_vectors(vecs, self.curv), part)
        self._faiss[modality] = prepare_for_search(index)
        return index

    def prepare_queries(self, queries: Any, mode: str, target: str,
                        query_modality: str | Sequence[str] = "text") -> np.ndarray:
        """The query points actually searched in the ``target`` sub-gallery under ``mode`` (fp64, (B, D))."""
        return self.move_queries(queries, mode, target, query_modality).points.numpy()

    def move_queries(self, queries: Any, mode: str, target: str,
                     query_modality: str | Sequence[str] = "text") -> Moved:
        """:meth:`SafetyPolicy.move` of the queries (fp64, of ``query_modality``: one, or one per query) for the
        ``target`` sub-gallery under ``mode``."""
        mode_ = Mode.parse(mode)
        q = torch.from_numpy(_as_numpy_queries(queries, self.dim))
        return self.model.policy.move(q, mode_, target, query=query_modality)

    # -- core ---------------------------------------------------------------------------------------------------
    def _candidates(
        self, modality: str, q: np.ndarray, want: int, filt: bool, overfetch: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: (ids, fp64 distances) of up to ``want`` nearest (safe if ``filt``) live items, sorted."""
        n_m = self._stored[modality]
        B = q.shape[0]
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.int64), np.zeros(0))] * B
        if self.n[modality] == 0 or want <= 0:
            return out
        index = self.faiss_index(modality)
        qv = query_vectors(q, self.curv)
        thr = self.threshold(modality) if filt else math.inf
        if thr is None:
            raise InputError(
                f"filter mode needs the model's unsafe threshold for {modality} items, and the model has none "
                "(fit its safety bounds first)"
            )
        need = want + REFINE_MARGIN
        dropping = filt or self._has_removed  # candidates may be dropped: over-fetch, search again if short
        kprime = min(n_m, max(need, want * overfetch) if dropping else need)
        pending = np.arange(B)
        chosen: list[np.ndarray | None] = [None] * B
        while pending.size:
            set_ef_search(index, max(self.ef_search, EF_PER_CANDIDATE * kprime))
            with _omp_threads_for(len(pending)):
                _, I = index.search(qv[pending], kprime)
            still = []
            for row, b in enumerate(pending):
                ids = I[row]
                ids = ids[ids >= 0]
                if self._has_removed:
                    ids = ids[self.live[ids]]
                if filt:
                    ids = ids[~over_threshold(self.scores[ids], thr)]
                if ids.size >= need or kprime >= n_m:
                    chosen[b] = ids[:need]
                else:
                    still.append(b)
            pending = np.asarray(still, dtype=np.int64)
            kprime = min(n_m, kprime * 4)
        # fp64 re-scoring of the chosen candidates, vectorised over the queries
        width = max(len(c) for c in chosen)  # type: ignore[arg-type]
        if width == 0:
            return out
        pad = np.full((B, width), -1, dtype=np.int64)
        for b, c in enumerate(chosen):
            pad[b, : len(c)] = c  # type: ignore[arg-type]
        for s in range(0, B, 256):
            ids = pad[s : s + 256]
            x = self.store.embeddings.get(np.where(ids >= 0, ids, 0))
            d = lorentz_distance_fp64(q[s : s + 256], x, self.curv)
            d[ids < 0] = np.inf
            order = np.argsort(d, axis=1, kind="stable")
            for r in range(ids.shape[0]):
                o = order[r]
                o = o[ids[r, o] >= 0][:want]
                out[s + r] = (ids[r, o], d[r, o])
        return out

    def search(
        self,
        queries: Any,
        *,
        k: int = 10,
        mode: str = "off",
        modality: str | None = None,
        rerank: str = "none",
        entail: str = "auto",
        query_modality: str | Sequence[str] = "text",
        overfetch: int = 4,
    ) -> list[list[SearchResult]]:
        """Search a batch of query points (B, D) (tensor or array, space components). One list per query."""
        mode_ = Mode.parse(mode)
        if rerank not in RERANKS:
            raise InputError(f"unknown rerank {rerank!r}; use one of {', '.join(RERANKS)}")
        if entail not in ENTAIL_PARENTS:
            raise InputError(f"unknown entailment parent {entail!r}; use one of {', '.join(ENTAIL_PARENTS)}")
        if modality is not None:
            check_modality(modality)
        if int(k) < 1:
            raise InputError(f"k must be >= 1, got {k}")
        k = int(k)
        overfetch = max(1, int(overfetch))
        q = _as_numpy_queries(queries, self.dim)
        B = q.shape[0]
        qmods = [query_modality] * B if isinstance(query_modality, str) else list(query_modality)
        if len(qmods) != B or any(m not in MODALITIES for m in qmods):
            raise InputError("query_modality must be 'text'/'image' or one of them per query")
        targets = [modality] if modality is not None else self.modalities
        filt = mode_.filters
        want = k * overfetch if rerank == "entail" else k
        # per target: the searched query points and the candidates
        per_target = {}
        for t in targets:
            qt = self.prepare_queries(q, mode, t, qmods)
            per_target[t] = (qt, self._candidates(t, qt, want, filt, overfetch))
        results: list[list[SearchResult]] = []
        final: list[list[tuple[int, float, bool | None]]] = []
        for b in range(B):
            ids_l, d_l, t_l = [], [], []
            for t in targets:
                ids, d = per_target[t][1][b]
                ids_l.append(ids)
                d_l.append(d)
                t_l += [t] * len(ids)
            ids = np.concatenate(ids_l) if ids_l else np.zeros(0, np.int64)
            d = np.concatenate(d_l) if d_l else np.zeros(0)
            order = np.argsort(d, kind="stable")[:want]
            ids, d = ids[order], d[order]
            tgt = [t_l[i] for i in order]
            ent: list[bool | None] = [None] * len(ids)
            if rerank == "entail" and len(ids):
                qpts = np.stack([per_target[t][0][b] for t in tgt])
                flags = self._entailed(qpts, ids, qmods[b], entail)
                ent = [bool(f) for f in flags]
                order = np.lexsort((np.arange(len(ids)), ~flags))  # entailed first, distance order within
                ids, d, ent = ids[order], d[order], [ent[i] for i in order]
            final.append([(int(i), float(dd), e) for i, dd, e in zip(ids[:k], d[:k], ent[:k])])
        rows = self.store.rows(sorted({i for f in final for i, _, _ in f}))
        for f in final:
            res = []
            for r, (i, dist, e) in enumerate(f, start=1):
                row = rows[i]
                res.append(SearchResult(
                    rank=r, id=i, key=row["key"], modality=row["modality"], content=row["content"],
                    distance=dist, safety_score=row["score"],
                    unsafe=self._is_unsafe(row["score"], row["modality"]),
                    categories=row["categories"], metadata=row["metadata"], entailed=e,
                ))
            results.append(res)
        return results

    def _entailed(self, qpts: np.ndarray, ids: np.ndarray, qmod: str, entail: str) -> np.ndarray:
        x = self.store.embeddings.get(ids).astype(np.float64)
        qt = torch.from_numpy(qpts)
        xt = torch.from_numpy(x)
        if entail == "query":
            parent_is_query = np.ones(len(ids), bool)
        elif entail == "item":
            parent_is_query = np.zeros(len(ids), bool)
        else:
            imods = np.where(self._mod_codes[ids] == 1, "image", "text")
            qscore = safety.safety_score(qt, self.curv).numpy()
            iscore = self.scores[ids]
            parent_is_query = np.where(
                (qmod == "text") & (imods == "image"), True,
                np.where((qmod == "image") & (imods == "text"), False, qscore <= iscore),
            )
        piq = torch.from_numpy(parent_is_query)[:, None]
        parent = torch.where(piq, qt, xt)
        child = torch.where(piq, xt, qt)
        return safety.entails(parent, child, self.curv).numpy().astype(bool)

    # -- encoding front-ends ----------------------------------------------------------------------------------
    def _wrap(
        self, labels: Sequence[str | None], qmods: Sequence[str], x: torch.Tensor, results, mode: str, k: int
    ) -> list[QueryResult]:
        scores = safety.safety_score(x.detach().to(torch.float32).cpu(), self.curv).numpy()
        return [
            QueryResult(query=lab, query_modality=m, mode=mode, k=k, query_safety_score=float(s),
                        query_unsafe=self._is_unsafe(float(s), m), results=r)
            for lab, m, s, r in zip(labels, qmods, scores, results)
        ]

    def search_queries(
        self,
        texts: Sequence[str] = (),
        images: Sequence[Any] = (),
        *,
        k: int = 10,
        mode: str = "off",
        **kwargs: Any,
    ) -> list[QueryResult]:
        """Encode and search texts then images (in that order). Empty text → InputError ("empty query")."""
        texts = list(texts)
        images = list(images)
        Mode.parse(mode)
        if not texts and not images:
            raise InputError("empty query: give at least one text or image")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"empty query (text #{i + 1})")
        parts = []
        if texts:
            parts.append((texts, ["text"] * len(texts), self.model.encode_text(texts)))
        if images:
            parts.append(([str(p) if isinstance(p, (str, Path)) else None for p in images], ["image"] * len(images),
                          self.model.encode_image(images)))
        labels = [lab for p in parts for lab in p[0]]
        qmods = [m for p in parts for m in p[1]]
        x = torch.cat([torch.as_tensor(p[2]).to(torch.float32) for p in parts], dim=0)
        results = self.search(x, k=k, mode=mode, query_modality=qmods, **kwargs)
        out = self._wrap(labels, qmods, x, results, mode, k)
        cut = getattr(self.model, "text_cut", None)  # optional in the index's model protocol
        if texts and cut is not None:
            for qr, c in zip(out, cut(texts)):
                qr.query_truncated = c
        return out

    def search_text(self, texts: Sequence[str], **kwargs: Any) -> list[QueryResult]:
        return self.search_queries(texts=texts, **kwargs)

    def search_image(self, images: Sequence[Any], **kwargs: Any) -> list[QueryResult]:
        return self.search_queries(images=images, **kwargs)

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_searcher(index_dir: str | Path, model: Any, **kwargs: Any) -> IndexSearcher:
    return IndexSearcher(index_dir, model, **kwargs)
