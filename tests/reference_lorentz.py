"""Independent float64 NumPy reference for the Lorentz-model geometry and the HySAC losses.

Written straight from the formulas of the technical reference (``hysac-spec.md`` §1 "Lorentz-model geometry" and
§4.2 "Losses"), with the clamps and eps values it lists for the official code. Nothing here imports :mod:`hysac`,
so the tests can compare the library against formulas that do not come from it.

Conventions (as in the spec): ``c > 0`` is the curvature magnitude (the hyperboloid has curvature ``-c``), a point
is given by its space components ``x ∈ R^D`` and its time component is ``x_t = sqrt(1/c + ||x||²)``; the origin is
``x = 0``. Inputs are anything ``np.asarray`` accepts (convert torch tensors with ``.double().numpy()``); every
result is float64.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

#: exp_map0 clamps ``sqrt(c)·||v||`` at asinh(2**15) (spec §1).
MAX_TANGENT_NORM = math.asinh(2.0**15)

#: The spec's seven terms in its numbering (§4.2), as (kind, first, second) with batch keys T (safe text),
#: I (safe image), Ts (unsafe text T*), Is (unsafe image I*). Contrastive: (image, text); entailment: (parent, child).
OFFICIAL_TERMS: tuple[tuple[str, str, str], ...] = (
    ("con", "I", "T"),  # 1. L_con(I, T)
    ("con", "Is", "Ts"),  # 2. L_con(I*, T*)
    ("con", "Is", "T"),  # 3. L_con(I*, T)   "safe_unsafe_a"
    ("con", "I", "Ts"),  # 4. L_con(I, T*)   "safe_unsafe_b"
    ("ent", "T", "I"),  # 5. E(T, I)
    ("ent", "Ts", "Is"),  # 6. E(T*, I*)
    ("ent", "I", "Ts"),  # 7. E(I, T*)       safety entailment
)

#: The names hysac.losses gives the seven terms above, in the same order (contrastive ``con_<text><image>``,
#: entailment ``ent_<parent>_<child>``): the tests map the reference's terms to the library's by these.
TERM_NAMES: tuple[str, ...] = tuple(
    f"con_{b}{a}" if kind == "con" else f"ent_{a}_{b}" for kind, a, b in OFFICIAL_TERMS
)


def _f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def time_component(x, c: float) -> np.ndarray:
    """``x_t = sqrt(1/c + ||x||²)``. (..., D) → (...)."""
    x = _f64(x)
    return np.sqrt(1.0 / c + np.sum(x * x, axis=-1))


def pairwise_inner(x, y, c: float) -> np.ndarray:
    """Lorentz inner product ``<x,y>_L = x·yᵀ − x_t·y_tᵀ``. (B1, D), (B2, D) → (B1, B2)."""
    x, y = _f64(x), _f64(y)
    return x @ y.T - np.outer(time_component(x, c), time_component(y, c))


def elementwise_inner(x, y, c: float) -> np.ndarray:
    """Row-wise ``<x_i, y_i>_L``. (B, D), (B, D) → (B,)."""
    x, y = _f64(x), _f64(y)
    return np.sum(x * y, axis=-1) - time_component(x, c) * time_component(y, c)


def pairwise_dist(x, y, c: float, eps: float = 1e-8) -> np.ndarray:
    """``d = acosh(max(−c·<x,y>_L, 1+eps)) / sqrt(c)`` for all pairs. (B1, D), (B2, D) → (B1, B2)."""
    return np.arccosh(np.maximum(-c * pairwise_inner(x, y, c), 1.0 + eps)) / math.sqrt(c)


def elementwise_dist(x, y, c: float, eps: float = 1e-8) -> np.ndarray:
    """Row-wise distance, same formula. (B, D), (B, D) → (B,)."""
    return np.arccosh(np.maximum(-c * elementwise_inner(x, y, c), 1.0 + eps)) / math.sqrt(c)


def dist0(x, c: float) -> np.ndarray:
    """Distance from the origin ``asinh(sqrt(c)·||x||) / sqrt(c)``. (..., D) → (...)."""
    sc = math.sqrt(c)
    return np.arcsinh(sc * np.linalg.norm(_f64(x), axis=-1)) / sc


def exp_map0(v, c: float, eps: float = 1e-8) -> np.ndarray:
    """Exponential map at the origin: ``r = sqrt(c)·||v||``,
    ``x = sinh(clip(r, eps, asinh(2**15))) · v / max(r, eps)``. (..., D) → (..., D)."""
    v = _f64(v)
    r = math.sqrt(c) * np.linalg.norm(v, axis=-1, keepdims=True)
    return np.sinh(np.clip(r, eps, MAX_TANGENT_NORM)) * v / np.maximum(r, eps)


def log_map0(x, c: float, eps: float = 1e-5) -> np.ndarray:
    """Logarithmic map at the origin: ``d0 = acosh(max(sqrt(1 + c·||x||²), 1+eps))``,
    ``v = d0 · x / max(sqrt(c)·||x||, eps)``. (..., D) → (..., D).

    The clamp makes it inexact for ``sqrt(c)·||x|| ≲ 4.5e-3`` (there ``d0`` is held at ``acosh(1+eps)``).
    """
    x = _f64(x)
    sq = np.sum(x * x, axis=-1, keepdims=True)
    d0 = np.arccosh(np.maximum(np.sqrt(1.0 + c * sq), 1.0 + eps))
    return d0 * x / np.maximum(math.sqrt(c) * np.sqrt(sq), eps)


def half_aperture(x, c: float, min_radius: float = 0.1, eps: float = 1e-5) -> np.ndarray:
    """Half-aperture of the entailment cone at ``x``:
    ``asin(clip(2K / (||x||·sqrt(c) + eps), −1+eps, 1−eps))`` with ``K = min_radius``. (..., D) → (...)."""
    arg = 2.0 * min_radius / (np.linalg.norm(_f64(x), axis=-1) * math.sqrt(c) + eps)
    return np.arcsin(np.clip(arg, -1.0 + eps, 1.0 - eps))


def oxy_angle(x, y, c: float, eps: float = 1e-5) -> np.ndarray:
    """Exterior angle at ``x`` of the triangle O-x-y. (B, D), (B, D) → (B,).

    ``c_xyl = c·(x·y − x_t·y_t)``, ``num = y_t + c_xyl·x_t``, ``den = sqrt(max(c_xyl² − 1, eps))``,
    ``angle = acos(clip(num / (||x||·den + eps), −1+eps, 1−eps))``.
    """
    x, y = _f64(x), _f64(y)
    xt, yt = time_component(x, c), time_component(y, c)
    c_xyl = c * (np.sum(x * y, axis=-1) - xt * yt)
    num = yt + c_xyl * xt
    den = np.sqrt(np.maximum(c_xyl * c_xyl - 1.0, eps))
    cos = num / (np.linalg.norm(x, axis=-1) * den + eps)
    return np.arccos(np.clip(cos, -1.0 + eps, 1.0 - eps))


def logsumexp(a, axis: int = -1) -> np.ndarray:
    """Stable ``log Σ exp(a)`` along ``axis`` (the axis is removed)."""
    a = _f64(a)
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def cross_entropy(logits) -> float:
    """Mean over rows of ``−log softmax(logits)[i, i]`` (the target of row ``i`` is column ``i``).
    (R, C) with C ≥ R → scalar."""
    logits = _f64(logits)
    n = logits.shape[0]
    return float(np.mean(logsumexp(logits, axis=1) - logits[np.arange(n), np.arange(n)]))


def contrastive_loss(img, txt, c: float, scale: float, extra_txt=None, extra_img=None) -> float:
    """Lorentzian contrastive loss ``0.5·(CE(s·(−d(img_i, txt_j))) + CE(s·(−d(txt_i, img_j))))``.

    (B, D), (B, D) → scalar; ``s = scale`` is the exp'd logit scale. Optional ``extra_txt`` (N1, D) / ``extra_img``
    (N2, D) are appended as extra negative columns of the image rows / text rows.
    """
    img, txt = _f64(img), _f64(txt)
    logits_it = -scale * pairwise_dist(img, txt, c)
    logits_ti = -scale * pairwise_dist(txt, img, c)
    if extra_txt is not None:
        logits_it = np.concatenate([logits_it, -scale * pairwise_dist(img, extra_txt, c)], axis=1)
    if extra_img is not None:
        logits_ti = np.concatenate([logits_ti, -scale * pairwise_dist(txt, extra_img, c)], axis=1)
    return 0.5 * (cross_entropy(logits_it) + cross_entropy(logits_ti))


def entailment_loss(parent, child, c: float, aperture_scale: float = 1.0, min_radius: float = 0.1) -> float:
    """``mean_i max(0, oxy_angle(parent_i, child_i) − η·half_aperture(parent_i))``, ``η = aperture_scale``.
    (B, D), (B, D) → scalar."""
    angle = oxy_angle(parent, child, c)
    aperture = half_aperture(parent, c, min_radius=min_radius)
    return float(np.mean(np.maximum(0.0, angle - aperture_scale * aperture)))


def official_terms(batch: Mapping[str, np.ndarray], c: float, scale: float, aperture_scale: float = 1.0,
                   masks: Mapping[str, np.ndarray] | None = None) -> list[float | None]:
    """The spec's seven terms ``[L1..L7]`` (order of :data:`OFFICIAL_TERMS`) on a batch of points.

    ``batch``: ``T, I, Ts, Is`` each (B, D) space components. ``masks`` (optional): ``{key: (B,) bool}`` rows where
    that member is present; a term is then computed on the rows where both of its members are present (the sliced
    batch), and is ``None`` when there is no such row. The official code has no masks (every row is a full
    quadruplet); the masked form is how the tests read rows that lack a member.
    """
    out: list[float | None] = []
    for kind, a, b in OFFICIAL_TERMS:
        xa, xb = _f64(batch[a]), _f64(batch[b])
        if masks is not None:
            keep = np.asarray(masks[a], bool) & np.asarray(masks[b], bool)
            xa, xb = xa[keep], xb[keep]
        if xa.shape[0] == 0:
            out.append(None)
        elif kind == "con":
            out.append(contrastive_loss(xa, xb, c, scale))
        else:
            out.append(entailment_loss(xa, xb, c, aperture_scale=aperture_scale))
    return out


def official_total(terms: Sequence[float], lambda_ent: float = 1.0) -> float:
    """The official combination (spec §4.2): ``λ = [1,1,1,1, λe,λe,λe]``, ``λ ← λ/Σλ``, ``L = (λ·[L1..L7]) / 7``.

    With ``λe = 1`` every term has weight 1/49. ``terms``: the seven values in :data:`OFFICIAL_TERMS` order.
    """
    if len(terms) != 7 or any(t is None for t in terms):
        raise ValueError("the official combination needs all seven terms")
    lam = np.array([1.0, 1.0, 1.0, 1.0, lambda_ent, lambda_ent, lambda_ent])
    lam = lam / lam.sum()
    return float(np.dot(lam, np.asarray(terms, dtype=np.float64)) / 7.0)


def cosine_contrastive_loss(img, txt, scale: float) -> float:
    """Euclidean CLIP InfoNCE on L2-normalised rows (the Safe-CLIP contrastive terms). (B, D), (B, D) → scalar.

    ``0.5·(CE(s·cos(img_i, txt_j)) + CE(s·cos(txt_i, img_j)))``.
    """
    img, txt = _f64(img), _f64(txt)
    img = img / np.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
    logits = scale * img @ txt.T
    return 0.5 * (cross_entropy(logits) + cross_entropy(logits.T))
