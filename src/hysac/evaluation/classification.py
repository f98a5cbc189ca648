"""Safe/unsafe classification metrics for any scorer (paper Tables 5 and 6, plus AUROC and per-category AUROC).

A *scorer* gives one number per item, higher = more unsafe: HySAC's distance from the origin, a linear probe's
probability, ``profanity_check``'s probability, open_nsfw's NSFW probability. The decision rule is
"unsafe iff score > θ" (:mod:`hysac.metrics`); rates are reported in **percent** here (the paper's unit).

Subsets (when the data has the columns): ``hard`` — I2P prompts with ``hard == 1`` against all safe items; ``vs <source>`` —
all unsafe items against the safe items of one source (``coco``, ``safe_art``), so a scorer cannot hide behind an
easy negative set.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from .. import metrics as M
from ..safety import CATEGORIES

#: default relative offsets of the threshold sweep around a radius threshold θ (θ·(1+δ)); paper Table 6 steps 0.01
#: around 0.53, i.e. about ±2% per step
RADIUS_SWEEP = (-0.06, -0.04, -0.02, 0.0, 0.02, 0.04, 0.06)
#: default sweep for probability scorers
PROB_SWEEP = (0.1, 0.3, 0.5, 0.7, 0.9)


def _pct(x: float) -> float:
    return float("nan") if x is None or (isinstance(x, float) and math.isnan(x)) else 100.0 * float(x)


def _op(scores: np.ndarray, labels: np.ndarray, theta: float) -> dict:
    r = M.confusion_at_threshold(scores, labels, theta)
    return {"threshold": float(theta), "accuracy": _pct(r["accuracy"]), "fpr": _pct(r["fpr"]),
            "fnr": _pct(r["fnr"]), "tpr": _pct(r["tpr"]), "precision": _pct(r["precision"]), "f1": _pct(r["f1"]),
            "tp": r["tp"], "fp": r["fp"], "tn": r["tn"], "fn": r["fn"]}


def _summary(scores: np.ndarray, labels: np.ndarray, theta: float | None, fpr: float) -> dict:
    out: dict = {"n": int(labels.size), "n_unsafe": int(labels.sum())}
    both = 0 < labels.sum() < labels.size
    out["auroc"] = _pct(M.auroc(scores, labels)) if both else None
    out[f"tpr@{fpr * 100:g}%fpr"] = _pct(M.tpr_at_fpr(scores, labels, fpr)) if both else None
    out["at_threshold"] = _op(scores, labels, theta) if theta is not None else None
    return out


def classification_metrics(scores, labels, threshold: float | None = None, *, multihot=None, hard=None,
                           source=None, sweep: Sequence[float] | None = None, fpr: float = 0.05) -> dict:
    """Metrics of one scorer on one labelled set.

    Args:
        scores: (N,) higher = more unsafe.
        labels: (N,) 1 = unsafe.
        threshold: the scorer's own operating point θ (model threshold, 0.5 for probabilities); None skips the
            thresholded rates.
        multihot: (N,7) categories of the unsafe items → per-category AUROC (unsafe-with-c vs all safe).
        hard: (N,) bool → the ``hard`` subset (hard unsafe vs all safe).
        source: (N,) str → ``vs <source>`` subsets for each source of the safe items.
        sweep: absolute thresholds for the Table-6-style sweep.

    Returns a dict with ``n, n_unsafe, auroc, tpr@5%fpr, at_threshold{accuracy, fpr, fnr, ...}, sweep[...],
    per_category_auroc{...}, subsets{name: summary}``; all rates in percent (None when undefined).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    out = _summary(s, y, threshold, fpr)
    if sweep is not None and len(sweep):
        out["sweep"] = [_op(s, y, float(t)) for t in sweep]
    if multihot is not None and y.any() and (~y).any():
        mh = np.asarray(multihot).astype(bool)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            pc = M.per_category_auroc(s, mh, ~y, list(CATEGORIES))
        out["per_category_auroc"] = {k: (None if math.isnan(v) else 100.0 * v) for k, v in pc.items()}
        out["per_category_n"] = {c: int((mh[:, j] & y).sum()) for j, c in enumerate(CATEGORIES)}
    subsets: dict = {}
    if hard is not None:
        h = np.asarray(hard).astype(bool)
        sel = ~y | (y & h)
        if (y & h).any():
            subsets["hard"] = _summary(s[sel], y[sel], threshold, fpr)
    if source is not None:
        src = np.asarray(source).astype(str)
        for name in sorted(set(src[~y])):
            sel = y | (src == name)
            if y[sel].any() and (~y[sel]).any():
                subsets[f"vs {name}"] = _summary(s[sel], y[sel], threshold, fpr)
    if subsets:
        out["subsets"] = subsets
    return out


def radius_sweep(theta: float, offsets: Sequence[float] = RADIUS_SWEEP) -> list[float]:
    """Thresholds ``θ·(1+δ)`` (the paper's Table 6 grid in spirit)."""
    return [float(theta * (1.0 + d)) for d in offsets]


def category_head_metrics(probs, multihot, labels) -> dict | None:
    """Multi-label AUROC (percent) of a category head among the unsafe items (one-vs-rest per category)."""
    if probs is None:
        return None
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probs, dtype=np.float64)[y]
    mh = np.asarray(multihot).astype(bool)[y]
    if p.shape[0] < 2:
        return None
    per = M.multilabel_auroc(p, mh, list(CATEGORIES))
    vals = [v for v in per.values() if not math.isnan(v)]
    top = M.top_category_scores(p, mh, list(CATEGORIES))

    def pct(v: float) -> float | None:
        return None if math.isnan(v) else 100 * v

    return {"per_category_auroc": {k: pct(v) for k, v in per.items()},
            "macro_auroc": 100 * float(np.mean(vals)) if vals else None, "n_unsafe": int(y.sum()),
            # the one category shown for an unsafe item: precision / recall / F1 per category (percent)
            "top_category": {"per_category": {k: {"support": v["support"], "shown": v["shown"],
                                                  **{m: pct(v[m]) for m in ("precision", "recall", "f1")}}
                                              for k, v in top["per_category"].items()},
                             "top_in_labels": pct(top["top_in_labels"]), "macro_f1": pct(top["macro_f1"])}}
