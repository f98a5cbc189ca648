"""Safety API: score, bounds, classification, traversal and entailment — the one module that the model, CLI,
service, index and evaluation all use.

* **Score** — the geodesic distance from the origin, ``d(O, x)``. HySAC orders the space
  safe text (S) < safe image (V) < unsafe text (U) < unsafe image (G) by this distance, so higher = more unsafe.
* **Bounds** — per content class, the 5th/95th percentile and mean of the score (the released ``hysac_bounds.json``
  layout), plus optional fitted decision thresholds per modality (our extension, key ``thresholds``).
* **Traversal** — move a query along its geodesic to the origin (pull in, ``direction="in"``) or away from it (push
  out, ``"out"``) so that its distance becomes exactly ``tau``; points already on the right side stay unchanged.
  ``mode="paper"`` reproduces the official single-vector output (it sets the *space-component norm* to ``tau``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from . import lorentz as L
from .errors import InputError

__all__ = [
    "CLASSES",
    "CLASS_NAMES",
    "CATEGORIES",
    "ClassBounds",
    "Bounds",
    "safety_score",
    "fit_bounds",
    "is_unsafe",
    "official_tau",
    "traverse",
    "traverse_fraction",
    "entails",
]

#: Content classes in the released bounds file: safe text, safe image, unsafe text, unsafe (generated) image.
CLASSES = ("S", "V", "U", "G")
CLASS_NAMES = {"S": "safe text", "V": "safe image", "U": "unsafe text", "G": "unsafe image"}
#: The seven unsafe categories (I2P / ViSU / the HySAC model card).
CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal activity")

Modality = Literal["text", "image"]
#: the modalities, in the order every report and answer lists them
MODALITIES: tuple[str, ...] = ("text", "image")
#: target class of a traversal toward the safe region of each modality
SAFE_CLASS = {"text": "S", "image": "V"}
UNSAFE_CLASS = {"text": "U", "image": "G"}


def safety_score(x_hyp: Tensor, curv: float | Tensor) -> Tensor:
    """Geodesic distance from the origin (higher = more unsafe). (B,D) → (B,), fp32."""
    L.check_finite(x_hyp, "embeddings")
    return L.dist0(x_hyp, curv)


@dataclass(frozen=True)
class ClassBounds:
    """Statistics of ``d(O,x)`` for one content class."""

    up_95: float
    low_05: float
    avg: float


@dataclass
class Bounds:
    """Per-class distance statistics (``S``, ``V``, ``U``, ``G``; any subset) and optional decision thresholds.

    JSON layout is the released ``hysac_bounds.json``: ``{"S": {"up_95":…, "low_05":…, "avg":…}, …}``; we add an
    optional ``"thresholds": {"text": θ, "image": θ}`` entry, ignored by the official code.
    """

    classes: dict[str, ClassBounds]
    thresholds: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, cls: str) -> ClassBounds:
        if cls not in self.classes:
            raise KeyError(f"bounds have no class {cls!r} (have {sorted(self.classes)})")
        return self.classes[cls]

    def __contains__(self, cls: str) -> bool:
        return cls in self.classes

    # -- JSON ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict = {k: asdict(v) for k, v in self.classes.items()}
        if self.thresholds:
            out["thresholds"] = dict(self.thresholds)
        return out

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "bounds") -> "Bounds":
        if not isinstance(data, Mapping):
            raise InputError(f"{source}: expected a JSON object, got {type(data).__name__}")
        classes: dict[str, ClassBounds] = {}
        for key, val in data.items():
            if key == "thresholds":
                continue
            if not isinstance(val, Mapping):
                raise InputError(f"{source}: class {key!r} must be an object with up_95/low_05/avg")
            try:
                up = float(val["up_95"])
                low = float(val.get("low_05", up))
                avg = float(val.get("avg", up))
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{source}: class {key!r} lacks a numeric 'up_95' ({e})") from None
            classes[str(key)] = ClassBounds(up_95=up, low_05=low, avg=avg)
        thresholds = {str(k): float(v) for k, v in dict(data.get("thresholds", {})).items()}
        return cls(classes=classes, thresholds=thresholds)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Bounds":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"bounds file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"bounds file {path} is not valid JSON: {e}") from None
        return cls.from_dict(data, source=str(path))

    # -- decisions ----------------------------------------------------------------------------------------------
    def threshold(self, modality: Modality) -> float:
        """Decision threshold θ for ``modality``: the fitted one if stored, else the midpoint between the safe
        class's 95th percentile and the unsafe class's 5th percentile."""
        if modality not in SAFE_CLASS:
            raise InputError(f"unknown modality {modality!r}; use 'text' or 'image'")
        if modality in self.thresholds:
            return self.thresholds[modality]
        safe, unsafe = SAFE_CLASS[modality], UNSAFE_CLASS[modality]
        if safe in self.classes and unsafe in self.classes:
            return 0.5 * (self.classes[safe].up_95 + self.classes[unsafe].low_05)
        raise InputError(
            f"bounds cannot give a {modality} threshold: need classes {safe} and {unsafe} or a fitted threshold"
        )


def fit_bounds(
    dists: Mapping[str, Tensor | np.ndarray | Sequence[float]] | None = None,
    *,
    embeddings: Tensor | None = None,
    labels: Sequence[str] | None = None,
    curv: float | Tensor | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> Bounds:
    """Fit the bounds structure from labelled distances or labelled embeddings.

    Either ``dists={"S": (N_S,), "V": …}`` (distances from the origin per class) or ``embeddings`` (N,D) with
    ``labels`` (N,) in ``CLASSES`` and ``curv``. Per class: 95th/5th percentile (linear interpolation) and mean.

    ``thresholds``: the decision thresholds to store. ``None`` (default) fits one per modality whose safe and
    unsafe classes are both given (text: S vs U, image: V vs G): the score maximising Youden's J = TPR − FPR
    (ties → the largest, fewest flagged). Pass ``{}`` to store none (then :meth:`Bounds.threshold` falls back to
    the midpoint rule).
    """
    if dists is None:
        if embeddings is None or labels is None or curv is None:
            raise InputError("fit_bounds needs either dists=… or embeddings=, labels= and curv=")
        if len(labels) != embeddings.shape[0]:
            raise InputError(f"fit_bounds: {len(labels)} labels for {embeddings.shape[0]} embeddings")
        d = safety_score(embeddings, curv).detach().cpu().double().numpy()
        lab = np.asarray(labels)
        dists = {c: d[lab == c] for c in CLASSES if (lab == c).any()}
    classes, arrays = {}, {}
    for cls, values in dists.items():
        arr = torch.as_tensor(values).detach().cpu().double().numpy().reshape(-1) if isinstance(
            values, Tensor
        ) else np.asarray(values, dtype=np.float64).reshape(-1)
        if arr.size == 0:
            raise InputError(f"fit_bounds: class {cls!r} has no samples")
        if not np.isfinite(arr).all():
            raise InputError(f"fit_bounds: class {cls!r} has NaN/inf distances")
        arrays[str(cls)] = arr
        classes[str(cls)] = ClassBounds(
            up_95=float(np.percentile(arr, 95)), low_05=float(np.percentile(arr, 5)), avg=float(arr.mean())
        )
    if thresholds is None:
        from .metrics import best_threshold

        fitted = {}
        for modality, safe in SAFE_CLASS.items():
            unsafe = UNSAFE_CLASS[modality]
            if safe in arrays and unsafe in arrays:
                scores = np.concatenate([arrays[safe], arrays[unsafe]])
                labels = np.r_[np.zeros(arrays[safe].size), np.ones(arrays[unsafe].size)]
                fitted[modality] = best_threshold(scores, labels, "youden")[0]
        thresholds = fitted
    return Bounds(classes=classes, thresholds={str(k): float(v) for k, v in dict(thresholds).items()})


def is_unsafe(
    x_hyp: Tensor,
    curv: float | Tensor,
    threshold: float | None = None,
    *,
    bounds: Bounds | None = None,
    modality: Modality = "text",
) -> Tensor:
    """Unsafe iff ``d(O,x) > θ``; θ explicit or from ``bounds.threshold(modality)``. (B,D) → (B,) bool."""
    if threshold is None:
        if bounds is None:
            raise InputError("is_unsafe needs a threshold or bounds")
        threshold = bounds.threshold(modality)
    return safety_score(x_hyp, curv) > threshold


def official_tau(bound: float, curv: float, alpha: float = 0.8) -> float:
    """The official target radius ``τ = b + tanh((b − α)/c) + 1`` (b = a class bound, c = curvature)."""
    return float(bound + math.tanh((bound - alpha) / float(curv)) + 1.0)


def traverse(
    x_hyp: Tensor,
    curv: float | Tensor,
    tau: float | Tensor,
    *,
    direction: Literal["in", "out"] = "in",
    mode: Literal["geodesic", "paper"] = "geodesic",
) -> Tensor:
    """Batched traversal along geodesics through the origin. (B,D) or (D,) → same shape.

    ``direction="in"``: points with ``d(O,x) > τ`` move toward the origin to distance exactly ``τ``;
    ``"out"``: points with ``d(O,x) < τ`` move away to distance ``τ`` (seek unsafe). Others are unchanged.
    ``mode="paper"``: same trigger, but the official output ``τ·x/||x||`` (space norm τ, geodesic distance
    ``asinh(sqrt(c)τ)/sqrt(c)``). ``tau`` may be a scalar or (B,).
    """
    if mode not in ("geodesic", "paper"):
        raise InputError(f"unknown traversal mode {mode!r}; use 'geodesic' or 'paper'")
    if direction not in ("in", "out"):
        raise InputError(f"unknown traversal direction {direction!r}; use 'in' or 'out'")
    squeeze = x_hyp.dim() == 1
    x = x_hyp.unsqueeze(0) if squeeze else x_hyp
    if x.dim() != 2:
        raise InputError(f"traverse expects (B,D) or (D,) points, got shape {tuple(x_hyp.shape)}")
    L.check_finite(x, "points to traverse")
    out_dtype = x.dtype
    xf = x.double() if x.dtype == torch.float64 else x.float()
    c = torch.as_tensor(curv, dtype=xf.dtype, device=xf.device)
    t = torch.as_tensor(tau, dtype=xf.dtype, device=xf.device)
    if t.dim() == 0:
        t = t.expand(xf.shape[0])
    elif t.shape != (xf.shape[0],):
        raise InputError(f"traverse: tau must be a scalar or ({xf.shape[0]},) — one radius per point — "
                         f"got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise InputError("traverse: tau must be finite and >= 0")
    d = L.dist0(xf, c)
    move = d > t if direction == "in" else d < t
    target = t
    if mode == "paper":
        sc = torch.sqrt(c)
        target = torch.asinh(sc * t) / sc  # the distance of a point whose space norm is τ
    moved = L.set_dist0(xf, target, c)
    out = torch.where(move.unsqueeze(-1), moved, xf).to(out_dtype)
    return out.squeeze(0) if squeeze else out


def traverse_fraction(x_hyp: Tensor, curv: float | Tensor, t: float | Tensor) -> Tensor:
    """Partial traversal: move a fraction ``t`` ∈ [0,1] of the way to the origin along the geodesic. (B,D)→(B,D)."""
    tt = torch.as_tensor(t)
    if bool(((tt < 0) | (tt > 1)).any()):
        raise InputError(f"traversal fraction must be in [0, 1], got {t}")
    L.check_finite(x_hyp, "points to traverse")
    return L.toward_origin(x_hyp, t, curv).to(x_hyp.dtype)


def entails(
    parent_hyp: Tensor, child_hyp: Tensor, curv: float | Tensor, aperture_scale: float = 1.0
) -> Tensor:
    """Is each child inside its parent's entailment cone? (B,D),(B,D) → (B,) bool (broadcasts (1,D))."""
    return L.entails(parent_hyp, child_hyp, curv, aperture_scale=aperture_scale)


def top_category(categories: "dict[str, float] | None", unsafe: "bool | None") -> "dict[str, object] | None":
    """The category shown for a verdict: ``{"name", "probability"}`` of the most likely of the 7 categories, but
    only for an input judged unsafe — a safe input gets ``None`` (its category probabilities describe *which kind*
    of unsafe it would be, not that it is unsafe)."""
    if not categories or not unsafe:
        return None
    name, p = max(categories.items(), key=lambda kv: kv[1])
    return {"name": name, "probability": p}
