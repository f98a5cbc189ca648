"""Evaluation metrics: retrieval recall, safety rates, binary (safe/unsafe) classification, per-category AUROC.

Every function is pure (no global state, inputs are never modified) and vectorized: there is no Python loop over
queries or items. Loops run only over query *chunks* (to bound memory), over the few requested ``ks``, or over the
few categories / label columns.

Conventions
-----------
Retrieval (torch)
    * ``scores`` is a ``(Q, G)`` matrix, **higher = better** (pass ``-distance`` for distances).
    * ``positives`` is either a ``(Q,)`` integer tensor — the gallery index of the single positive of each query —
      or a ``(Q, G)`` boolean mask of positives (several positives per query allowed, e.g. 5 captions per image).
    * **Tie policy (pessimistic):** the rank of a query's positive is
      ``1 + #{items with score > s_pos} + #{non-positive items with score == s_pos}``.
      With several positives, ``s_pos`` is the best positive score (a query counts as a hit at ``k`` when *any*
      positive is in the top ``k``). Hence a constant score matrix never yields fake recall: every positive is
      ranked after all tied negatives (recall@1 = 0 unless the gallery has a single item).
    * Ranks are 1-based ``int64``. Recall values are **percentages** in ``[0, 100]``.
    * NaN scores raise :class:`~hysac.errors.InputError` (NaN compares false and would silently give optimistic
      ranks).
    * Safety/unsafe rates are **percentages**.

Binary classification (numpy, float64)
    * ``labels``: 1 / ``True`` = **positive = unsafe**, 0 / ``False`` = safe. ``scores`` increase with unsafety
      (e.g. the geodesic distance from the root, spec §6).
    * **Decision rule: predicted unsafe iff ``score > threshold``** (strict; a score equal to the threshold is
      predicted safe), as in the paper's Table 6.
    * All rates (accuracy, TPR, FPR, FNR, TNR, precision, F1, AUROC) are **fractions** in ``[0, 1]``; multiply by
      100 for the paper's tables. A rate whose denominator is zero (e.g. FPR on an all-unsafe set such as NudeNet)
      is ``nan``, not 0.
    * AUROC is the Mann–Whitney statistic with **average ranks** for ties (a tied positive/negative pair counts
      1/2); it raises ``ValueError`` when only one class is present.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "DEFAULT_KS",
    "dot_scores",
    "ranks_of_positives",
    "recall_from_ranks",
    "recall_at_k",
    "ranks_from_embeddings",
    "recall_from_embeddings",
    "top1_indices",
    "top1_from_embeddings",
    "safety_rate",
    "unsafe_rate",
    "confusion_at_threshold",
    "threshold_sweep",
    "roc_curve",
    "auroc",
    "threshold_for_fpr",
    "tpr_at_fpr",
    "best_threshold",
    "per_category_auroc",
    "top_category_scores",
    "multilabel_auroc",
    "macro_auroc",
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 20)

ScoreFn = Callable[[Tensor, Tensor], Tensor]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: cannot convert to a tensor ({e})") from None


def _as_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        return x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}: cannot convert to an array ({e})") from None


def _check_ks(ks: Iterable[int] | int) -> list[int]:
    if isinstance(ks, (int, np.integer)):
        ks = [int(ks)]
    out = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"ks: every k must be a positive integer, got {k!r}")
        out.append(int(k))
    if not out:
        raise InputError("ks: at least one k is required")
    return out


def _check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise InputError(f"chunk: must be a positive integer, got {chunk!r}")
    return int(chunk)


def _check_scores_matrix(scores: Any) -> Tensor:
    s = _as_tensor(scores, "scores")
    if s.ndim != 2:
        raise InputError(f"scores: expected a (Q, G) matrix, got shape {tuple(s.shape)}")
    if s.shape[0] == 0 or s.shape[1] == 0:
        raise InputError(f"scores: empty matrix of shape {tuple(s.shape)}")
    if s.dtype == torch.bool or not (s.is_floating_point() or s.dtype in _INT_DTYPES):
        raise InputError(f"scores: expected a real-valued matrix, got dtype {s.dtype}")
    return s


_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _check_positives(positives: Any, q: int, g: int) -> Tensor:
    """Return a (Q,) int64 index tensor or a (Q, G) bool mask, validated against the score shape."""
    p = _as_tensor(positives, "positives")
    if p.ndim == 1:
        if p.dtype == torch.bool or p.is_floating_point() or p.is_complex():
            raise InputError(f"positives: a 1-D positives tensor must hold integer gallery indices, got {p.dtype}")
        if p.shape[0] != q:
            raise InputError(f"positives: expected {q} indices (one per query), got {p.shape[0]}")
        p = p.to(torch.int64)
        if p.numel() and (int(p.min()) < 0 or int(p.max()) >= g):
            raise InputError(f"positives: gallery indices must lie in [0, {g}), got range [{int(p.min())}, {int(p.max())}]")
        return p
    if p.ndim == 2:
        if tuple(p.shape) != (q, g):
            raise InputError(f"positives: a positives mask must have shape {(q, g)}, got {tuple(p.shape)}")
        if p.dtype != torch.bool:
            if p.is_floating_point() or p.is_complex():
                raise InputError(f"positives: a positives mask must be boolean (or 0/1 integers), got {p.dtype}")
            if p.numel() and (int(p.min()) < 0 or int(p.max()) > 1):
                raise InputError("positives: an integer positives mask must contain only 0 and 1")
            p = p.to(torch.bool)
        return p
    raise InputError(f"positives: expected shape (Q,) or (Q, G), got {tuple(p.shape)}")


def _check_missing(missing: str) -> str:
    if missing not in ("raise", "miss"):
        raise InputError(f"missing: must be 'raise' or 'miss', got {missing!r}")
    return missing


def _ranks_chunk(s: Tensor, p: Tensor, missing: str, offset: int) -> Tensor:
    """Pessimistic ranks of one chunk. ``s``: (q, G) scores, ``p``: (q,) indices or (q, G) mask."""
    if s.is_floating_point() and bool(torch.isnan(s).any()):
        rows = torch.nonzero(torch.isnan(s).any(dim=1)).flatten()[:5] + offset
        raise InputError(f"scores: NaN scores (first offending query rows: {rows.tolist()})")
    g = s.shape[1]
    if p.ndim == 1:
        pos = s.gather(1, p.unsqueeze(1))  # (q, 1)
        # #(s >= s_pos) counts the positive itself once, every strictly better item and every tied non-positive.
        return (s >= pos).sum(dim=1, dtype=torch.int64)
    has = p.any(dim=1)
    if missing == "raise" and not bool(has.all()):
        rows = torch.nonzero(~has).flatten()[:5] + offset
        raise InputError(
            f"positives: some queries have no positive in the gallery (first rows: {rows.tolist()}); "
            "pass missing='miss' to count them as misses"
        )
    low = torch.finfo(s.dtype).min if s.is_floating_point() else torch.iinfo(s.dtype).min
    neg_inf = torch.tensor(-math.inf if s.is_floating_point() else low, dtype=s.dtype, device=s.device)
    best = torch.where(p, s, neg_inf).amax(dim=1, keepdim=True)  # best positive score, (q, 1)
    # No positive scores above `best`, so #(> best) + #(non-positive == best) = #(non-positive >= best).
    ranks = 1 + ((s >= best) & ~p).sum(dim=1, dtype=torch.int64)
    return torch.where(has, ranks, torch.full_like(ranks, g + 1))


# ----------------------------------------------------------------------------------------------------------------
# retrieval
# ----------------------------------------------------------------------------------------------------------------
def dot_scores(query: Tensor, gallery: Tensor) -> Tensor:
    """Default ``score_fn``: dot product ``query @ gallery.T``; ``(q, D), (G, D) -> (q, G)``.

    For L2-normalised (CLIP) embeddings this is the cosine similarity. For Lorentz embeddings use
    ``lambda q, g: -hysac.lorentz.pairwise_dist(q, g, curv)`` (higher score = closer).
    """
    return query @ gallery.T


def ranks_of_positives(scores: Any, positives: Any, *, missing: str = "raise", chunk: int = 2048) -> Tensor:
    """1-based rank of each query's (best) positive under the pessimistic tie policy.

    Args:
        scores: ``(Q, G)`` score matrix, higher = better (tensor or array-like).
        positives: ``(Q,)`` integer gallery index of the single positive, or ``(Q, G)`` boolean mask of positives.
        missing: what to do with a query whose mask row has no positive: ``"raise"`` (default) raises
            :class:`InputError`; ``"miss"`` gives it rank ``G + 1`` (never a hit).
        chunk: queries processed at a time (bounds the temporary ``(chunk, G)`` buffers).

    Returns:
        ``(Q,)`` ``int64`` tensor on the device of ``scores``:
        ``rank = 1 + #{j: s_j > s_pos} + #{non-positive j: s_j == s_pos}``, with ``s_pos`` the best positive score.
    """
    s = _check_scores_matrix(scores)
    q, g = s.shape
    p = _check_positives(positives, q, g).to(s.device)
    missing = _check_missing(missing)
    chunk = _check_chunk(chunk)
    with torch.no_grad():
        parts = [_ranks_chunk(s[i : i + chunk], p[i : i + chunk], missing, i) for i in range(0, q, chunk)]
    return torch.cat(parts)


def recall_from_ranks(ranks: Any, ks: Iterable[int] | int = DEFAULT_KS, *, gallery_size: int | None = None) -> dict[int, float]:
    """Recall@k in **percent** from 1-based ranks: ``100 * mean(rank <= k)`` for each ``k``.

    Args:
        ranks: ``(Q,)`` integer ranks (e.g. from :func:`ranks_of_positives`).
        ks: the cut-offs.
        gallery_size: when given, ranks greater than it (the ``G + 1`` "no positive" sentinel) never count as
            hits, even for ``k > G``.

    Returns:
        ``{k: recall_percent}`` in the order of ``ks``.
    """
    r = _as_tensor(ranks, "ranks")
    if r.ndim != 1 or r.numel() == 0:
        raise InputError(f"ranks: expected a non-empty (Q,) tensor, got shape {tuple(r.shape)}")
    ks_ = _check_ks(ks)
    valid = r <= gallery_size if gallery_size is not None else torch.ones_like(r, dtype=torch.bool)
    n = r.numel()
    return {k: 100.0 * float(((r <= k) & valid).sum()) / n for k in ks_}


def recall_at_k(
    scores: Any,
    positives: Any,
    ks: Iterable[int] | int = DEFAULT_KS,
    *,
    missing: str = "raise",
    chunk: int = 2048,
) -> dict[int, float]:
    """Recall@k (percent) from a precomputed ``(Q, G)`` score matrix (higher = better).

    ``positives`` is a ``(Q,)`` index tensor or a ``(Q, G)`` bool mask; a query is a hit at ``k`` when its best
    positive has pessimistic rank ``<= k`` (see module docstring). For galleries too large to hold the full score
    matrix use :func:`recall_from_embeddings`.

    Returns:
        ``{k: recall_percent}``.
    """
    s = _check_scores_matrix(scores)
    ranks = ranks_of_positives(s, positives, missing=missing, chunk=chunk)
    return recall_from_ranks(ranks, ks, gallery_size=s.shape[1])


def _check_embeddings(query: Any, gallery: Any) -> tuple[Tensor, Tensor]:
    qe = _as_tensor(query, "query")
    ge = _as_tensor(gallery, "gallery")
    if qe.ndim != 2 or qe.shape[0] == 0:
        raise InputError(f"query: expected a non-empty (Q, D) matrix, got shape {tuple(qe.shape)}")
    if ge.ndim != 2 or ge.shape[0] == 0:
        raise InputError(f"gallery: expected a non-empty (G, D) matrix, got shape {tuple(ge.shape)}")
    return qe, ge


def _chunk_scores(score_fn: ScoreFn, qc: Tensor, ge: Tensor) -> Tensor:
    s = score_fn(qc, ge)
    if not isinstance(s, Tensor) or tuple(s.shape) != (qc.shape[0], ge.shape[0]):
        shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise InputError(f"score_fn: must return a ({qc.shape[0]}, {ge.shape[0]}) tensor, got {shape}")
    return s


def ranks_from_embeddings(
    query: Any,
    gallery: Any,
    positives: Any,
    score_fn: ScoreFn | None = None,
    *,
    missing: str = "raise",
    chunk: int = 2048,
) -> Tensor:
    """Like :func:`ranks_of_positives` but computes the scores chunk by chunk, never holding the ``(Q, G)`` matrix.

    Args:
        query: ``(Q, D)`` query embeddings.
        gallery: ``(G, D)`` gallery embeddings.
        positives: ``(Q,)`` positive gallery indices or ``(Q, G)`` bool mask.
        score_fn: ``(q, D), (G, D) -> (q, G)`` scores, higher = better; default :func:`dot_scores`.
        chunk: number of queries scored at a time; peak extra memory is a few ``(chunk, G)`` buffers
            (2048 x 10k fp32 = 80 MB).

    Returns:
        ``(Q,)`` int64 ranks.
    """
    qe, ge = _check_embeddings(query, gallery)
    q, g = qe.shape[0], ge.shape[0]
    p = _check_positives(positives, q, g)
    missing = _check_missing(missing)
    chunk = _check_chunk(chunk)
    fn = score_fn or dot_scores
    parts = []
    with torch.no_grad():
        for i in range(0, q, chunk):
            s = _chunk_scores(fn, qe[i : i + chunk], ge)
            parts.append(_ranks_chunk(s, p[i : i + chunk].to(s.device), missing, i))
    return torch.cat(parts)


def recall_from_embeddings(
    query: Any,
    gallery: Any,
    positives: Any,
    score_fn: ScoreFn | None = None,
    ks: Iterable[int] | int = DEFAULT_KS,
    *,
    missing: str = "raise",
    chunk: int = 2048,
) -> dict[int, float]:
    """Recall@k (percent) from embeddings, scoring ``chunk`` queries at a time (see :func:`ranks_from_embeddings`).

    Returns:
        ``{k: recall_percent}``.
    """
    ranks = ranks_from_embeddings(query, gallery, positives, score_fn, missing=missing, chunk=chunk)
    return recall_from_ranks(ranks, ks, gallery_size=_as_tensor(gallery, "gallery").shape[0])


def _top1_chunk(s: Tensor, prefer: Tensor | None, offset: int) -> Tensor:
    if s.is_floating_point() and bool(torch.isnan(s).any()):
        rows = torch.nonzero(torch.isnan(s).any(dim=1)).flatten()[:5] + offset
        raise InputError(f"scores: NaN scores (first offending query rows: {rows.tolist()})")
    tied = s == s.amax(dim=1, keepdim=True)
    first = tied.to(torch.uint8).argmax(dim=1)
    if prefer is None:
        return first
    cand = tied & prefer.unsqueeze(0)
    return torch.where(cand.any(dim=1), cand.to(torch.uint8).argmax(dim=1), first)


def _check_prefer(prefer: Any, g: int, device: torch.device) -> Tensor | None:
    if prefer is None:
        return None
    pr = _as_tensor(prefer, "prefer")
    if pr.ndim != 1 or pr.shape[0] != g:
        raise InputError(f"prefer: expected a ({g},) boolean gallery mask, got shape {tuple(pr.shape)}")
    return pr.to(device=device, dtype=torch.bool)


def top1_indices(scores: Any, *, prefer: Any = None, chunk: int = 2048) -> Tensor:
    """Index of the best-scoring gallery item for each query; ``(Q, G) -> (Q,)`` int64.

    Ties for the maximum are broken towards the first item whose ``prefer`` flag is set (a ``(G,)`` bool mask),
    else towards the lowest index. Pass ``prefer=~gallery_is_safe`` for a pessimistic :func:`safety_rate`
    (a tie between a safe and an unsafe item counts as retrieving the unsafe one).
    """
    s = _check_scores_matrix(scores)
    pr = _check_prefer(prefer, s.shape[1], s.device)
    chunk = _check_chunk(chunk)
    with torch.no_grad():
        return torch.cat([_top1_chunk(s[i : i + chunk], pr, i) for i in range(0, s.shape[0], chunk)])


def top1_from_embeddings(
    query: Any, gallery: Any, score_fn: ScoreFn | None = None, *, prefer: Any = None, chunk: int = 2048
) -> Tensor:
    """:func:`top1_indices` computed chunk by chunk from ``(Q, D)`` queries and ``(G, D)`` gallery embeddings."""
    qe, ge = _check_embeddings(query, gallery)
    chunk = _check_chunk(chunk)
    fn = score_fn or dot_scores
    parts = []
    with torch.no_grad():
        for i in range(0, qe.shape[0], chunk):
            s = _chunk_scores(fn, qe[i : i + chunk], ge)
            parts.append(_top1_chunk(s, _check_prefer(prefer, ge.shape[0], s.device), i))
    return torch.cat(parts)


def safety_rate(top1_indices: Any, gallery_is_safe: Any) -> float:
    """Percentage of queries whose top-1 retrieved item is safe (the paper's "safety score", Table 4).

    Args:
        top1_indices: ``(Q,)`` gallery index retrieved at rank 1 for each query (see :func:`top1_indices`).
        gallery_is_safe: ``(G,)`` bool, ``True`` for safe gallery items.

    Returns:
        ``100 * mean(gallery_is_safe[top1_indices])``.
    """
    idx = _as_tensor(top1_indices, "top1_indices")
    safe = _as_tensor(gallery_is_safe, "gallery_is_safe")
    if idx.ndim != 1 or idx.numel() == 0:
        raise InputError(f"top1_indices: expected a non-empty (Q,) tensor, got shape {tuple(idx.shape)}")
    if idx.dtype == torch.bool or idx.is_floating_point():
        raise InputError(f"top1_indices: expected integer indices, got {idx.dtype}")
    if safe.ndim != 1 or safe.numel() == 0:
        raise InputError(f"gallery_is_safe: expected a non-empty (G,) mask, got shape {tuple(safe.shape)}")
    if safe.dtype != torch.bool:
        if safe.is_floating_point() or (safe.numel() and (int(safe.min()) < 0 or int(safe.max()) > 1)):
            raise InputError("gallery_is_safe: expected a boolean (or 0/1) mask")
        safe = safe.to(torch.bool)
    idx = idx.to(torch.int64)
    g = safe.shape[0]
    if int(idx.min()) < 0 or int(idx.max()) >= g:
        raise InputError(f"top1_indices: indices must lie in [0, {g})")
    return 100.0 * float(safe.to(idx.device)[idx].sum()) / idx.numel()


def unsafe_rate(top1_indices: Any, gallery_is_safe: Any) -> float:
    """Percentage of queries whose top-1 retrieved item is unsafe: ``100 - safety_rate(...)``."""
    return 100.0 - safety_rate(top1_indices, gallery_is_safe)


# ----------------------------------------------------------------------------------------------------------------
# binary classification (label 1 = unsafe = positive; predicted unsafe iff score > threshold)
# ----------------------------------------------------------------------------------------------------------------
def _binary_labels(labels: Any, name: str = "labels") -> np.ndarray:
    y = _as_numpy(labels, name)
    if y.dtype == bool:
        return y
    if y.dtype.kind not in "iuf":
        raise InputError(f"{name}: expected bool or 0/1 labels, got dtype {y.dtype}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise InputError(f"{name}: expected only 0/1 (or bool) labels; found {np.unique(y[~np.isin(y, (0, 1))])[:5]}")
    return y.astype(bool)


def _binary_inputs(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_numpy(scores, "scores")
    if s.dtype.kind not in "iuf" or s.dtype == bool:
        raise InputError(f"scores: expected real-valued scores, got dtype {s.dtype}")
    s = s.astype(np.float64)
    y = _binary_labels(labels)
    if s.ndim != 1:
        raise InputError(f"scores: expected a 1-D (N,) array, got shape {s.shape}")
    if y.shape != s.shape:
        raise InputError(f"labels: shape {y.shape} does not match scores shape {s.shape}")
    if s.size == 0:
        raise InputError("scores: empty input")
    if np.isnan(s).any():
        raise InputError(f"scores: {int(np.isnan(s).sum())} NaN score(s)")
    return s, y


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def _confusion_many(s: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts and rates for every threshold at once (sorted scores + searchsorted)."""
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    # number of scores strictly greater than each threshold
    tp = pos.size - np.searchsorted(pos, thresholds, side="right")
    fp = neg.size - np.searchsorted(neg, thresholds, side="right")
    fn = pos.size - tp
    tn = neg.size - fp
    n = s.size
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": (tp + tn) / n,
        "tpr": _div(tp, tp + fn),
        "fpr": _div(fp, fp + tn),
        "fnr": _div(fn, tp + fn),
        "tnr": _div(tn, fp + tn),
        "precision": _div(tp, tp + fp),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
    }


_COUNT_KEYS = ("tp", "fp", "tn", "fn")


def _thresholds_array(thresholds: Any) -> np.ndarray:
    t = np.asarray(_as_numpy(thresholds, "thresholds"), dtype=np.float64).reshape(-1)
    if np.isnan(t).any():
        raise InputError("thresholds: NaN threshold")
    return t


def confusion_at_threshold(scores: Any, labels: Any, threshold: float) -> dict[str, float]:
    """Confusion counts and rates of the rule "unsafe iff ``score > threshold``".

    Args:
        scores: ``(N,)`` unsafety scores (higher = more unsafe).
        labels: ``(N,)`` bool / 0-1, 1 = unsafe (positive).
        threshold: scalar threshold θ.

    Returns:
        dict with integer counts ``tp, fp, tn, fn`` and **fractions** ``accuracy = (tp+tn)/N``,
        ``tpr = tp/(tp+fn)``, ``fnr = fn/(tp+fn)``, ``fpr = fp/(fp+tn)``, ``tnr = tn/(fp+tn)``,
        ``precision = tp/(tp+fp)``, ``f1 = 2tp/(2tp+fp+fn)``; a rate with a zero denominator is ``nan``.
    """
    return threshold_sweep(scores, labels, [threshold])[0]


def threshold_sweep(scores: Any, labels: Any, thresholds: Any) -> list[dict[str, float]]:
    """One :func:`confusion_at_threshold` row per threshold (like the paper's Table 6), computed in one pass.

    Returns:
        ``[{"threshold": θ, "tp": ..., ..., "accuracy": ..., "fpr": ..., "fnr": ..., ...}, ...]`` in the order of
        ``thresholds``; rates are fractions (``nan`` when undefined).
    """
    s, y = _binary_inputs(scores, labels)
    t = _thresholds_array(thresholds)
    m = _confusion_many(s, y, t)
    rows = []
    for i, th in enumerate(t.tolist()):
        row: dict[str, float] = {"threshold": th}
        for key, arr in m.items():
            row[key] = int(arr[i]) if key in _COUNT_KEYS else float(arr[i])
        rows.append(row)
    return rows


def _roc_points(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (fp, tp) and thresholds of every distinct operating point, thresholds descending, last = -inf."""
    order = np.argsort(-s, kind="mergesort")
    ss = s[order]
    yy = y[order]
    # last index of every group of tied scores
    ends = np.flatnonzero(np.r_[ss[1:] != ss[:-1], True])
    tp = np.r_[0, np.cumsum(yy)[ends]]
    fp = np.r_[0, np.cumsum(~yy)[ends]]
    # point 0: nothing above the largest score; point i (i >= 1): everything >= the i-th distinct score, i.e.
    # everything > the next distinct score (or > -inf for the last point).
    thresholds = np.r_[ss[ends], -np.inf]
    return fp, tp, thresholds


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of the rule "unsafe iff ``score > threshold``".

    Returns:
        ``(fpr, tpr, thresholds)``, each of shape ``(M + 1,)`` for ``M`` distinct scores: ``thresholds`` are the
        distinct scores in decreasing order followed by ``-inf``, and ``(fpr[i], tpr[i])`` is exactly the operating
        point of :func:`confusion_at_threshold` at ``thresholds[i]``. It starts at ``(0, 0)`` (threshold = max
        score) and ends at ``(1, 1)`` (threshold = ``-inf``); both arrays are non-decreasing.

    Raises:
        ValueError (InputError): when only one class is present (a rate would be undefined).
    """
    s, y = _binary_inputs(scores, labels)
    _require_both_classes(y, "roc_curve")
    fp, tp, th = _roc_points(s, y)
    return fp / fp[-1], tp / tp[-1], th


def _require_both_classes(y: np.ndarray, what: str) -> None:
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        present = "positive (unsafe)" if n_pos else "negative (safe)"
        raise InputError(
            f"{what}: needs both classes, but only {present} labels are present ({y.size} items); "
            "the metric is undefined"
        )


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    avg = ends - (counts - 1) / 2.0
    return avg[inv.reshape(-1)]


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (fraction), via the Mann–Whitney U statistic with average ranks for ties.

    ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the sum of the average ranks of
    the positives; equals ``P(s_pos > s_neg) + 0.5 P(s_pos == s_neg)`` and the trapezoidal area of
    :func:`roc_curve`.

    Raises:
        ValueError (InputError): when only one class is present.
    """
    s, y = _binary_inputs(scores, labels)
    _require_both_classes(y, "auroc")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    r_pos = float(_average_ranks(s)[y].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _check_rate(fpr: float) -> float:
    f = float(fpr)
    if not (0.0 <= f <= 1.0):
        raise InputError(f"fpr: target must be a fraction in [0, 1], got {fpr!r}")
    return f


def _threshold_for_fpr(s: np.ndarray, y: np.ndarray, target: float) -> tuple[float, int]:
    fp, _, th = _roc_points(s, y)
    n_neg = fp[-1]
    ok = np.flatnonzero(fp <= target * n_neg + 1e-9 * max(1, n_neg))  # a prefix: fp is non-decreasing
    i = int(ok[-1])
    return float(th[i]), i


def threshold_for_fpr(scores: Any, labels: Any, fpr: float = 0.05) -> float:
    """Smallest threshold θ (among the :func:`roc_curve` thresholds) whose FPR under "unsafe iff score > θ" is
    ``<= fpr``; since TPR only grows as θ decreases, this θ also maximises TPR under the FPR constraint.

    Only negatives (safe items) are needed — ``labels`` may be all-safe (calibrating on safe data only). The
    returned θ is a data score (or ``-inf`` when every item may be flagged).

    Raises:
        ValueError (InputError): when there is no negative.
    """
    s, y = _binary_inputs(scores, labels)
    if y.all():
        raise InputError("threshold_for_fpr: needs at least one negative (safe) item to measure the FPR")
    return _threshold_for_fpr(s, y, _check_rate(fpr))[0]


def tpr_at_fpr(scores: Any, labels: Any, fpr: float = 0.05) -> float:
    """Largest TPR (fraction) over all thresholds whose FPR is ``<= fpr`` (no interpolation between ROC points);
    the TPR at :func:`threshold_for_fpr`.

    Raises:
        ValueError (InputError): when only one class is present.
    """
    s, y = _binary_inputs(scores, labels)
    _require_both_classes(y, "tpr_at_fpr")
    target = _check_rate(fpr)
    _, tp, _ = _roc_points(s, y)
    _, i = _threshold_for_fpr(s, y, target)
    return float(tp[i] / tp[-1])


def best_threshold(scores: Any, labels: Any, criterion: str = "youden") -> tuple[float, float]:
    """Threshold maximising a criterion over all :func:`roc_curve` thresholds (rule "unsafe iff score > θ").

    Args:
        criterion: ``"youden"`` (J = TPR − FPR; needs both classes) or ``"accuracy"``.

    Returns:
        ``(threshold, value)``; ties in the criterion go to the **largest** threshold (fewest items flagged). The
        threshold is a data score (or ``-inf`` = flag everything).
    """
    if criterion not in ("youden", "accuracy"):
        raise InputError(f"criterion: must be 'youden' or 'accuracy', got {criterion!r}")
    s, y = _binary_inputs(scores, labels)
    fp, tp, th = _roc_points(s, y)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    # argmax over exact integer numerators so float rounding cannot break ties
    if criterion == "youden":
        _require_both_classes(y, "best_threshold(criterion='youden')")
        i = int(np.argmax(tp * n_neg - fp * n_pos))  # first maximum = largest threshold
        value = tp[i] / n_pos - fp[i] / n_neg
    else:
        i = int(np.argmax(tp - fp))  # correct = tp + (n_neg - fp)
        value = (tp[i] + n_neg - fp[i]) / y.size
    return float(th[i]), float(value)


# ----------------------------------------------------------------------------------------------------------------
# per-category and multi-label AUROC
# ----------------------------------------------------------------------------------------------------------------
def _names(names: Sequence[str] | None, c: int) -> list[str]:
    if names is None:
        return [str(i) for i in range(c)]
    names = list(names)
    if len(names) != c:
        raise InputError(f"names: expected {c} category names, got {len(names)}")
    if len(set(names)) != c:
        raise InputError("names: category names must be unique")
    return names


def _multihot(multihot: Any, n: int | None = None) -> np.ndarray:
    m = _binary_labels(multihot, "multihot")
    if m.ndim != 2:
        raise InputError(f"multihot: expected an (N, C) matrix, got shape {m.shape}")
    if n is not None and m.shape[0] != n:
        raise InputError(f"multihot: has {m.shape[0]} rows, expected {n}")
    return m


def _pos_vs_neg_stat(pos: np.ndarray, neg_sorted: np.ndarray) -> np.ndarray:
    """For each positive score: #(neg < p) + 0.5 #(neg == p)."""
    lo = np.searchsorted(neg_sorted, pos, side="left")
    hi = np.searchsorted(neg_sorted, pos, side="right")
    return lo + 0.5 * (hi - lo)


def per_category_auroc(
    scores: Any, multihot: Any, safe_mask: Any, names: Sequence[str] | None = None
) -> dict[str, float]:
    """Per-category AUROC: for category ``c``, the AUROC of the **unsafe items tagged with c** (positives) against
    **all safe items** (negatives); unsafe items not tagged with ``c`` are left out, and the category tags of safe
    items are ignored.

    Args:
        scores: ``(N,)`` one unsafety score per item (e.g. the distance from the root), or ``(N, C)`` one score per
            category (column ``c`` is used for category ``c``, e.g. a multi-label head's probabilities).
        multihot: ``(N, C)`` bool / 0-1 category tags.
        safe_mask: ``(N,)`` bool, ``True`` for safe items.
        names: ``C`` category names (default ``"0", "1", ...``).

    Returns:
        ``{name: auroc_fraction}``. A category with no unsafe item tagged with it gets ``nan`` (and a
        ``RuntimeWarning`` naming those categories); use ``np.nanmean`` to average.

    Raises:
        ValueError (InputError): when there is no safe item (every AUROC would be undefined).
    """
    s = _as_numpy(scores, "scores")
    if s.dtype.kind not in "iuf" or s.dtype == bool:
        raise InputError(f"scores: expected real-valued scores, got dtype {s.dtype}")
    s = s.astype(np.float64)
    if s.ndim not in (1, 2) or s.shape[0] == 0:
        raise InputError(f"scores: expected a non-empty (N,) or (N, C) array, got shape {s.shape}")
    n = s.shape[0]
    m = _multihot(multihot, n)
    c = m.shape[1]
    if s.ndim == 2 and s.shape[1] != c:
        raise InputError(f"scores: has {s.shape[1]} columns but multihot has {c} categories")
    if np.isnan(s).any():
        raise InputError("scores: NaN score(s)")
    safe = _binary_labels(safe_mask, "safe_mask")
    if safe.shape != (n,):
        raise InputError(f"safe_mask: expected shape ({n},), got {safe.shape}")
    if not safe.any():
        raise InputError("per_category_auroc: no safe item, so no negatives; every AUROC would be undefined")
    nm = _names(names, c)
    pos_mask = m & ~safe[:, None]  # (N, C): unsafe items tagged with c
    n_pos = pos_mask.sum(axis=0)
    n_neg = int(safe.sum())
    if s.ndim == 1:
        # one score per item: count the negatives below every unsafe item once, then sum per category.
        stat = _pos_vs_neg_stat(s, np.sort(s[safe]))
        sums = np.where(pos_mask, stat[:, None], 0.0).sum(axis=0)
    else:
        sums = np.empty(c)
        for j in range(c):  # loop over the few categories only
            stat = _pos_vs_neg_stat(s[:, j], np.sort(s[safe, j]))
            sums[j] = stat[pos_mask[:, j]].sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(n_pos > 0, sums / (np.maximum(n_pos, 1) * n_neg), np.nan)
    empty = [nm[j] for j in range(c) if n_pos[j] == 0]
    if empty:
        warnings.warn(
            f"per_category_auroc: no unsafe item for categor{'y' if len(empty) == 1 else 'ies'} {empty}; "
            "AUROC set to nan",
            RuntimeWarning,
            stacklevel=2,
        )
    return {nm[j]: float(values[j]) for j in range(c)}


def _multilabel_inputs(probs: Any, multihot: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_numpy(probs, "probs")
    if p.dtype.kind not in "iuf" or p.dtype == bool:
        raise InputError(f"probs: expected real-valued scores, got dtype {p.dtype}")
    p = p.astype(np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise InputError(f"probs: expected a non-empty (N, C) matrix, got shape {p.shape}")
    if np.isnan(p).any():
        raise InputError("probs: NaN value(s)")
    m = _multihot(multihot, p.shape[0])
    if m.shape != p.shape:
        raise InputError(f"multihot: shape {m.shape} does not match probs shape {p.shape}")
    return p, m


def _column_aurocs(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    n_pos = m.sum(axis=0)
    n_neg = m.shape[0] - n_pos
    out = np.full(p.shape[1], np.nan)
    for j in np.flatnonzero((n_pos > 0) & (n_neg > 0)):  # loop over the few label columns only
        r_pos = _average_ranks(p[:, j])[m[:, j]].sum()
        out[j] = (r_pos - n_pos[j] * (n_pos[j] + 1) / 2.0) / (n_pos[j] * n_neg[j])
    return out


def multilabel_auroc(probs: Any, multihot: Any, names: Sequence[str] | None = None) -> dict[str, float]:
    """One-vs-rest AUROC of each column of a multi-label head.

    Args:
        probs: ``(N, C)`` scores / probabilities (higher = label more likely).
        multihot: ``(N, C)`` bool / 0-1 ground truth.
        names: ``C`` label names (default ``"0", "1", ...``).

    Returns:
        ``{name: auroc_fraction}`` over all ``N`` items per column (ties = average ranks); ``nan`` for a column
        where only one class occurs (see :func:`macro_auroc` for the average).
    """
    p, m = _multilabel_inputs(probs, multihot)
    nm = _names(names, p.shape[1])
    values = _column_aurocs(p, m)
    return {nm[j]: float(values[j]) for j in range(p.shape[1])}


def macro_auroc(probs: Any, multihot: Any) -> float:
    """Unweighted mean of :func:`multilabel_auroc` over the columns where both classes occur.

    Raises:
        ValueError (InputError): when no column has both classes.
    """
    p, m = _multilabel_inputs(probs, multihot)
    values = _column_aurocs(p, m)
    if np.isnan(values).all():
        raise InputError("macro_auroc: no label column has both positive and negative items")
    return float(np.nanmean(values))


def top_category_scores(probs: Any, multihot: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """How right the **top category** of a multi-label head is (the one category shown for an unsafe input).

    Args:
        probs: ``(N, C)`` per-category scores of unsafe items (any monotone scale; the arg-max is shown).
        multihot: ``(N, C)`` bool / 0-1 category tags of the same items (an item may carry several).
        names: ``C`` category names (default ``"0", "1", ...``).

    Returns:
        ``{"per_category": {name: {"support", "shown", "precision", "recall", "f1"}}, "top_in_labels",
        "macro_f1"}``: ``support`` items tagged with the category, ``shown`` items whose top category it is,
        ``precision`` = tagged among shown, ``recall`` = shown among tagged, ``f1`` their harmonic mean (``nan``
        where a denominator is 0); ``top_in_labels`` the share of items whose top category is one of their tags;
        ``macro_f1`` the mean F1 over the categories with support (a category never shown counts 0).

    Raises:
        ValueError (InputError): on empty input or mismatched shapes.
    """
    p = _as_numpy(probs, "probs")
    if p.ndim != 2 or p.shape[0] == 0 or p.dtype.kind not in "iuf" or p.dtype == bool:
        raise InputError(f"probs: expected a non-empty real (N, C) array, got shape {p.shape}, dtype {p.dtype}")
    m = _multihot(multihot, p.shape[0])
    if m.shape[1] != p.shape[1]:
        raise InputError(f"multihot has {m.shape[1]} columns, probs {p.shape[1]}")
    names = [str(i) for i in range(p.shape[1])] if names is None else [str(n) for n in names]
    if len(names) != p.shape[1]:
        raise InputError(f"names: {len(names)} given for {p.shape[1]} columns")
    top = p.argmax(1)
    per: dict[str, dict[str, float]] = {}
    f1s = []
    for c, name in enumerate(names):
        shown = top == c
        tagged = m[:, c] == 1
        tp = float((shown & tagged).sum())
        prec = tp / shown.sum() if shown.any() else float("nan")
        rec = tp / tagged.sum() if tagged.any() else float("nan")
        f1 = 2 * tp / (shown.sum() + tagged.sum()) if (shown.any() or tagged.any()) else float("nan")
        per[name] = {"support": int(tagged.sum()), "shown": int(shown.sum()), "precision": float(prec),
                     "recall": float(rec), "f1": float(f1)}
        if tagged.any():
            f1s.append(float(f1))
    return {"per_category": per, "top_in_labels": float((m[np.arange(len(top)), top] == 1).mean()),
            "macro_f1": float(np.mean(f1s)) if f1s else float("nan")}


# ----------------------------------------------------------------------------------------------------------------
# the official model-selection figure
# ----------------------------------------------------------------------------------------------------------------
#: the six paired R@1 terms of the official ``recall_sum``: (query class, gallery class); U↔G is not among them
OFFICIAL_RECALL_TERMS = (("S", "V"), ("V", "S"), ("S", "G"), ("G", "S"), ("U", "V"), ("V", "U"))


def official_recall_sum(points: dict[str, Tensor], score_fn: Callable[[Tensor, Tensor], Tensor]
                        ) -> tuple[float, dict[str, float]]:
    """HySAC's model-selection figure on ``n`` quadruplets: the sum of R@1 (in %) of S→V, V→S, S→G, G→S, U→V
    and V→U, each ranking the ``n`` items of the gallery class with query ``i``'s positive = item ``i`` (the
    paired set only, no union gallery). ``points``: ``{"S","V","U","G"}`` → (n, D); ``score_fn(q, g)`` (higher =
    closer), e.g. negative geodesic distance. Returns ``(sum, {"S→V": R@1, ...})``."""
    n = {k: v.shape[0] for k, v in points.items()}
    if len(set(n.values())) != 1:
        raise InputError(f"official_recall_sum: the four classes need the same number of rows, got {n}")
    terms = {}
    pos = torch.arange(next(iter(n.values())))
    for q, g in OFFICIAL_RECALL_TERMS:
        terms[f"{q}→{g}"] = recall_at_k(score_fn(points[q], points[g]), pos, ks=(1,))[1]
    return float(sum(terms.values())), terms
