"""Training losses: HySAC (hyperbolic, CVPR 2025), Safe-CLIP (Euclidean unlearning, ECCV 2024), category head.

Written from the formulas (spec §4.2), not from the official code.

Conventions
-----------
* Hyperbolic embeddings are **space components** on the hyperboloid of curvature ``-c`` (see :mod:`hysac.lorentz`),
  shape ``(B, D)``. ``curv`` is the positive curvature ``c`` (a float, or a 0-d tensor — then it receives gradients).
* ``logit_scale`` is the **exponentiated** scale ``s = exp(log_scale)`` (e.g. ``1/0.07``), a float or 0-d tensor.
* ``mask`` arguments are boolean ``(B,)`` tensors (or anything ``torch.as_tensor`` turns into one; non-bool values
  are read as ``!= 0``) selecting the rows that take part. Rows outside the mask may hold anything, even NaN: they are
  replaced by the origin / zero before any computation, so they get exactly zero gradient and cannot poison the loss.
  A masked loss equals the loss of the sliced batch (``x[mask]``). The standalone losses never synchronise with
  the host: masking is done with ``where``/fills, not boolean indexing.
* An empty mask gives an exact ``0`` that still has a ``grad_fn`` connected to the inputs (gradients are zeros,
  never NaN).
* Numerics: every loss computes in fp32 (fp64 if given fp64) with autocast disabled, so bf16/fp16 inputs and
  ``torch.autocast`` are fine; losses are returned in that compute dtype. Gradients are finite at coincident points
  (``T == I``) thanks to the clamps in :mod:`hysac.lorentz`.

Public API
----------
* :func:`lorentz_contrastive` — symmetric InfoNCE with logits ``s·(−d_L(img, txt))``, optional extra negatives.
* :func:`clip_contrastive` — the same with cosine logits on L2-normalised Euclidean embeddings.
* :func:`entailment_loss` — ``relu(oxy_angle(parent, child) − η·half_aperture(parent))`` averaged over rows.
* :func:`radial_order_loss` — ``relu(d0(parent) + margin − d0(child))`` (our extension).
* :class:`HySACLossWeights`, :class:`HySACLoss` — the paper's 7-term objective (+ optional text-only extensions).
* :class:`SafeCLIPLossWeights`, :func:`safeclip_loss` — the Safe-CLIP unlearning objective.
* :func:`category_loss` — multi-label BCE-with-logits for the 7-category head.
* :func:`weighted_mean` — ``Σ λ_i L_i / Σ λ_i`` over the given terms (the single normalisation we use).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import Any, Callable, Literal, Mapping, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hysac import lorentz as L
from hysac.errors import InputError

__all__ = [
    "lorentz_contrastive",
    "clip_contrastive",
    "entailment_loss",
    "radial_order_loss",
    "weighted_mean",
    "HySACLossWeights",
    "HySACLoss",
    "PAPER_TERMS",
    "EXTENSION_TERMS",
    "SafeCLIPLossWeights",
    "safeclip_loss",
    "SAFECLIP_TERMS",
    "category_loss",
]

#: Fill value for logits of masked-out columns: effectively −inf after softmax, but finite (no NaN in logsumexp
#: even when a whole row is masked).
_NEG = -1e9

Fn = TypeVar("Fn", bound=Callable[..., Any])


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def _compute_dtype(*objs: Any) -> torch.dtype:
    for o in objs:
        if isinstance(o, Tensor) and o.dtype == torch.float64:
            return torch.float64
    return torch.float32


def _cast(o: Any, dtype: torch.dtype) -> Any:
    if isinstance(o, Tensor) and o.is_floating_point():
        return o.to(dtype)
    return o


def _fp32(fn: Fn) -> Fn:
    """Run ``fn`` with autocast disabled and floating tensor args upcast to fp32 (fp64 if any arg is fp64)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        dtype = _compute_dtype(*tensors)
        ref = next((t for t in tensors if t.is_floating_point()), None)
        device_type = ref.device.type if ref is not None else "cpu"
        args = tuple(_cast(a, dtype) for a in args)
        kwargs = {k: _cast(v, dtype) for k, v in kwargs.items()}
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _check_2d(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise InputError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise InputError(f"{name} must have shape (B, D), got {tuple(x.shape)}")


def _check_pair(a: Tensor, b: Tensor, na: str, nb: str) -> None:
    _check_2d(a, na)
    _check_2d(b, nb)
    if a.shape != b.shape:
        raise InputError(f"{na} and {nb} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _as_mask(mask: Any, n: int, device: torch.device, name: str = "mask") -> Tensor:
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    m = torch.as_tensor(mask, device=device)
    if m.dim() != 1 or m.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},), got {tuple(m.shape)}")
    if m.dtype != torch.bool:
        m = m != 0
    return m


def _keep(x: Tensor, m: Tensor) -> Tensor:
    """Rows outside ``m`` replaced by zeros (the origin): finite values, zero gradient, whatever they held."""
    return torch.where(m.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def _masked_mean(values: Tensor, m: Tensor) -> Tensor:
    """Mean of ``values`` over the rows in ``m``; exact 0 (with grad_fn) when ``m`` is empty."""
    total = torch.where(m, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    count = m.sum().to(values.dtype).clamp(min=1.0)
    return total / count


def _scale(logit_scale: float | Tensor, like: Tensor) -> Tensor:
    if not isinstance(logit_scale, Tensor):
        if not (math.isfinite(float(logit_scale)) and float(logit_scale) > 0):
            raise InputError(f"logit_scale must be a positive finite number (the exp'd scale), got {logit_scale}")
    s = torch.as_tensor(logit_scale, dtype=like.dtype, device=like.device)
    if s.numel() != 1:
        raise InputError(f"logit_scale must be a scalar, got shape {tuple(s.shape)}")
    return s.reshape(())


def _check_curv(curv: float | Tensor) -> None:
    if not isinstance(curv, Tensor):
        if not (math.isfinite(float(curv)) and float(curv) > 0):
            raise InputError(f"curv must be the positive curvature magnitude c (not its log), got {curv}")
    elif curv.numel() != 1:
        raise InputError(f"curv must be a scalar, got shape {tuple(curv.shape)}")


def _prep_extra(extra: Tensor | None, extra_mask: Any, d: int, name: str, like: Tensor) -> tuple[Tensor, Tensor] | None:
    if extra is None:
        return None
    _check_2d(extra, name)
    if extra.shape[1] != d:
        raise InputError(f"{name} must have {d} columns like the batch, got {tuple(extra.shape)}")
    m = _as_mask(extra_mask, extra.shape[0], like.device, f"{name}_mask")
    return _keep(extra.to(like.dtype), m), m


def _row_ce(logits: Tensor, row_mask: Tensor, col_mask: Tensor) -> Tensor:
    """Cross-entropy of rows of ``logits`` (R, C≥R) with target column i for row i, masked mean over rows."""
    logits = logits.masked_fill(~col_mask.unsqueeze(0), _NEG)
    lse = torch.logsumexp(logits, dim=-1)
    return _masked_mean(lse - logits.diagonal(), row_mask)


def _symmetric_ce(
    scale: Tensor,
    sim: Tensor,
    m: Tensor,
    sim_extra_txt: tuple[Tensor, Tensor] | None,
    sim_extra_img: tuple[Tensor, Tensor] | None,
) -> Tensor:
    """0.5·(CE(image rows over text columns) + CE(text rows over image columns)); extras are extra columns."""
    logits_it = scale * sim
    logits_ti = logits_it.transpose(0, 1)
    cols_it, cols_ti = m, m
    if sim_extra_txt is not None:
        s, em = sim_extra_txt
        logits_it = torch.cat([logits_it, scale * s], dim=1)
        cols_it = torch.cat([m, em])
    if sim_extra_img is not None:
        s, em = sim_extra_img
        logits_ti = torch.cat([logits_ti, scale * s], dim=1)
        cols_ti = torch.cat([m, em])
    return 0.5 * (_row_ce(logits_it, m, cols_it) + _row_ce(logits_ti, m, cols_ti))


def _zero_from(*objs: Any) -> Tensor:
    """An exact 0 with a grad_fn connected to every tensor in ``objs`` that requires grad (values never read)."""
    out = None
    for o in objs:
        if isinstance(o, Tensor) and o.is_floating_point():
            z = o.reshape(-1)[:0].sum().float() if o.dtype != torch.float64 else o.reshape(-1)[:0].sum()
            out = z if out is None else out + z
    if out is None:
        return torch.zeros(())
    return out


# ----------------------------------------------------------------------------------------------------------------
# elementary losses
# ----------------------------------------------------------------------------------------------------------------


@_fp32
def lorentz_contrastive(
    img_hyp: Tensor,
    txt_hyp: Tensor,
    curv: float | Tensor,
    logit_scale: float | Tensor,
    mask: Tensor | None = None,
    *,
    extra_txt: Tensor | None = None,
    extra_img: Tensor | None = None,
    extra_txt_mask: Tensor | None = None,
    extra_img_mask: Tensor | None = None,
) -> Tensor:
    """Symmetric hyperbolic InfoNCE (MERU/HySAC ``LorentzianCLIPContrastive``). Returns a 0-d tensor.

    ``logits[i, j] = logit_scale · (−d_L(img_i, txt_j))``; the loss is
    ``0.5 · (CE(logits, arange) + CE(logitsᵀ, arange))`` over the rows/columns selected by ``mask`` (B,).

    ``extra_txt`` (N1, D) / ``extra_img`` (N2, D) are extra **negatives** (e.g. embeddings gathered from other
    processes): ``extra_txt`` adds columns to the image→text rows, ``extra_img`` to the text→image rows. They must not
    contain this batch's own positives. ``extra_*_mask`` (N,) select which extra rows are valid. The official code
    gathers such features and then ignores them; we use them.
    """
    _check_pair(img_hyp, txt_hyp, "img_hyp", "txt_hyp")
    _check_curv(curv)
    b, d = img_hyp.shape
    m = _as_mask(mask, b, img_hyp.device)
    img, txt = _keep(img_hyp, m), _keep(txt_hyp, m)
    scale = _scale(logit_scale, img)
    sim = -L.pairwise_dist(img, txt, curv)
    ex_t = _prep_extra(extra_txt, extra_txt_mask, d, "extra_txt", img)
    ex_i = _prep_extra(extra_img, extra_img_mask, d, "extra_img", img)
    sim_et = None if ex_t is None else (-L.pairwise_dist(img, ex_t[0], curv), ex_t[1])
    sim_ei = None if ex_i is None else (-L.pairwise_dist(txt, ex_i[0], curv), ex_i[1])
    return _symmetric_ce(scale, sim, m, sim_et, sim_ei)


@_fp32
def clip_contrastive(
    img: Tensor,
    txt: Tensor,
    logit_scale: float | Tensor,
    mask: Tensor | None = None,
    *,
    extra_txt: Tensor | None = None,
    extra_img: Tensor | None = None,
    extra_txt_mask: Tensor | None = None,
    extra_img_mask: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """Symmetric Euclidean InfoNCE (CLIP): logits ``logit_scale · cos(img_i, txt_j)``. Same conventions as
    :func:`lorentz_contrastive`; inputs are L2-normalised here unless ``normalize=False``."""
    _check_pair(img, txt, "img", "txt")
    b, d = img.shape
    m = _as_mask(mask, b, img.device)
    img, txt = _keep(img, m), _keep(txt, m)
    if normalize:
        img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    scale = _scale(logit_scale, img)
    ex_t = _prep_extra(extra_txt, extra_txt_mask, d, "extra_txt", img)
    ex_i = _prep_extra(extra_img, extra_img_mask, d, "extra_img", img)

    def nrm(x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) if normalize else x

    sim_et = None if ex_t is None else (img @ nrm(ex_t[0]).T, ex_t[1])
    sim_ei = None if ex_i is None else (txt @ nrm(ex_i[0]).T, ex_i[1])
    return _symmetric_ce(scale, img @ txt.T, m, sim_et, sim_ei)


@_fp32
def entailment_loss(
    parent_hyp: Tensor,
    child_hyp: Tensor,
    curv: float | Tensor,
    aperture_scale: float = 1.0,
    min_radius: float = 0.1,
    mask: Tensor | None = None,
) -> Tensor:
    """Entailment-cone loss ``mean_i relu(oxy_angle(parent_i, child_i) − η·half_aperture(parent_i))``.

    ``parent ⊒ child``: zero when every child lies inside its parent's cone. ``η = aperture_scale``,
    ``K = min_radius`` (0.1 in MERU/HySAC). Mean over the rows in ``mask``. Returns a 0-d tensor.
    """
    _check_pair(parent_hyp, child_hyp, "parent_hyp", "child_hyp")
    _check_curv(curv)
    m = _as_mask(mask, parent_hyp.shape[0], parent_hyp.device)
    parent, child = _keep(parent_hyp, m), _keep(child_hyp, m)
    angle = L.oxy_angle(parent, child, curv)
    aperture = L.half_aperture(parent, curv, min_radius=min_radius)
    return _masked_mean(F.relu(angle - aperture_scale * aperture), m)


@_fp32
def radial_order_loss(
    parent_hyp: Tensor,
    child_hyp: Tensor,
    curv: float | Tensor,
    margin: float = 0.05,
    mask: Tensor | None = None,
) -> Tensor:
    """Radial ordering hinge ``mean_i relu(d0(parent_i) + margin − d0(child_i))`` (our extension, not the paper's).

    Pushes each child at least ``margin`` (geodesic units) farther from the origin than its parent — the radial part
    of the entailment hierarchy, useful when the cone loss alone is slack (parents near the origin have ~π/2 cones).
    """
    _check_pair(parent_hyp, child_hyp, "parent_hyp", "child_hyp")
    _check_curv(curv)
    m = _as_mask(mask, parent_hyp.shape[0], parent_hyp.device)
    parent, child = _keep(parent_hyp, m), _keep(child_hyp, m)
    return _masked_mean(F.relu(L.dist0(parent, curv) + margin - L.dist0(child, curv)), m)


def weighted_mean(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """``Σ λ_i L_i / Σ λ_i`` over the terms present in ``terms`` with ``λ_i > 0`` (missing weights count as 0).

    This is the **single** normalisation of our objectives. The official HySAC code divides by ``Σλ`` and then
    again by the number of terms (7), i.e. its loss is ours / 7 with all terms active. Adam(W) is invariant to such
    a constant factor except through ``eps`` (AdamW's decoupled weight decay never sees the loss scale), but a
    gradient-clipping threshold does scale with it; ``loss.scale: 0.142857`` in a training config reproduces the
    official magnitude. Raises ``InputError`` when no term has positive weight.
    """
    num, den = None, 0.0
    for name, value in terms.items():
        w = float(weights.get(name, 0.0))
        if w > 0:
            v = w * value
            num = v if num is None else num + v
            den += w
    if num is None:
        raise InputError("weighted_mean: no term with a positive weight")
    return num / den


def _check_weights(weights: Mapping[str, float], cls_name: str) -> None:
    for k, w in weights.items():
        if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
            raise InputError(f"{cls_name}.{k} must be a finite non-negative number, got {w!r}")


# ----------------------------------------------------------------------------------------------------------------
# batch helpers shared by HySACLoss and safeclip_loss
# ----------------------------------------------------------------------------------------------------------------


def _unpack(batch: Mapping[str, Any] | None, keys: tuple[str, ...], mask_of: Mapping[str, str]) -> tuple[dict, dict]:
    """→ (embeddings {key: Tensor}, masks {key: bool (B,)}) for the keys present; checks shapes agree."""
    if batch is None:
        return {}, {}
    emb = {k: batch[k] for k in keys if batch.get(k) is not None}
    if not emb:
        return {}, {}
    first = next(iter(emb))
    for k, v in emb.items():
        _check_2d(v, k)
        if v.shape != emb[first].shape:
            raise InputError(
                f"batch[{k!r}] has shape {tuple(v.shape)} but batch[{first!r}] has {tuple(emb[first].shape)}"
            )
    b, device = emb[first].shape[0], emb[first].device
    masks = {k: _as_mask(batch.get(mask_of[k]), b, device, mask_of[k]) for k in emb}
    return emb, masks


# ----------------------------------------------------------------------------------------------------------------
# HySAC
# ----------------------------------------------------------------------------------------------------------------

#: The paper's 7 terms, as ``name: (first, second)`` batch keys.
#: Contrastive: (text, image); entailment: (parent, child).
_HYSAC_CON = {"con_TI": ("T", "I"), "con_TsIs": ("Ts", "Is"), "con_TIs": ("T", "Is"), "con_TsI": ("Ts", "I")}
_HYSAC_ENT = {"ent_T_I": ("T", "I"), "ent_Ts_Is": ("Ts", "Is"), "ent_I_Ts": ("I", "Ts")}
#: Our extensions for text-only batches (safe text T paired with unsafe text Ts) and radial ordering.
_EXT_CON = {"con_TTs": ("T", "Ts")}
_EXT_ENT = {"ent_T_Ts": ("T", "Ts")}
_EXT_RAD = {
    "radial_T_I": ("T", "I"),
    "radial_Ts_Is": ("Ts", "Is"),
    "radial_I_Ts": ("I", "Ts"),
    "radial_T_Ts": ("T", "Ts"),
}
PAPER_TERMS: tuple[str, ...] = (*_HYSAC_CON, *_HYSAC_ENT)
EXTENSION_TERMS: tuple[str, ...] = (*_EXT_CON, *_EXT_ENT, *_EXT_RAD)
_HYSAC_KEYS = ("T", "I", "Ts", "Is")
_HYSAC_MASKS = {k: f"has_{k}" for k in _HYSAC_KEYS}


@dataclass(frozen=True)
class HySACLossWeights:
    """Per-term weights λ of :class:`HySACLoss`. The total is ``Σ λ_i L_i / Σ λ_i`` over the *active* terms.

    Paper terms (default 1.0): contrastive ``con_TI`` (T,I), ``con_TsIs`` (T*,I*), ``con_TIs`` (T,I*),
    ``con_TsI`` (T*,I); entailment ``ent_T_I`` (T⊒I), ``ent_Ts_Is`` (T*⊒I*), ``ent_I_Ts`` (I⊒T*, "S-Ent").

    Extensions (ours, not the paper's; default 0 = off): ``con_TTs`` contrastive (T,T*) and ``ent_T_Ts`` (T⊒T*) for
    text-only batches (e.g. I2P prompts paired with their nearest safe captions), and the radial hinges
    ``radial_<parent>_<child>`` for each entailment pair (see :func:`radial_order_loss`).
    """

    con_TI: float = 1.0
    con_TsIs: float = 1.0
    con_TIs: float = 1.0
    con_TsI: float = 1.0
    ent_T_I: float = 1.0
    ent_Ts_Is: float = 1.0
    ent_I_Ts: float = 1.0
    con_TTs: float = 0.0
    ent_T_Ts: float = 0.0
    radial_T_I: float = 0.0
    radial_Ts_Is: float = 0.0
    radial_I_Ts: float = 0.0
    radial_T_Ts: float = 0.0

    def __post_init__(self) -> None:
        _check_weights(self.as_dict(), type(self).__name__)

    @classmethod
    def from_lambdas(
        cls, lambda_con: float = 1.0, lambda_ent: float = 1.0, lambda_text: float = 0.0, lambda_radial: float = 0.0
    ) -> "HySACLossWeights":
        """λ_con for the 4 contrastive terms, λ_ent for the 3 entailment terms (the paper's
        ``--entailment-loss-lambda``); ``lambda_text`` switches on the text-only extension (``con_TTs`` and
        ``ent_T_Ts``); ``lambda_radial`` the radial hinge of every entailment pair that is on."""
        return cls(
            con_TI=lambda_con,
            con_TsIs=lambda_con,
            con_TIs=lambda_con,
            con_TsI=lambda_con,
            ent_T_I=lambda_ent,
            ent_Ts_Is=lambda_ent,
            ent_I_Ts=lambda_ent,
            con_TTs=lambda_text,
            ent_T_Ts=lambda_text,
            radial_T_I=lambda_radial if lambda_ent > 0 else 0.0,
            radial_Ts_Is=lambda_radial if lambda_ent > 0 else 0.0,
            radial_I_Ts=lambda_radial if lambda_ent > 0 else 0.0,
            radial_T_Ts=lambda_radial if lambda_text > 0 else 0.0,
        )

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


def _weights_from(weights: Any, cls: type) -> Any:
    """None → defaults; a dataclass → itself; a mapping → the defaults with the named terms overridden."""
    if weights is None:
        return cls()
    if isinstance(weights, cls):
        return weights
    if isinstance(weights, Mapping):
        known = {f.name for f in fields(cls)}
        unknown = set(weights) - known
        if unknown:
            raise InputError(f"unknown loss term(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in weights.items()})
    raise InputError(f"weights must be a {cls.__name__} or a mapping, got {type(weights).__name__}")


def _active_counts(pairs: Mapping[str, tuple[str, str]], masks: Mapping[str, Tensor]) -> dict[str, int]:
    """Number of rows of each term (both members present); one host sync for all terms."""
    names = [n for n, (a, b) in pairs.items() if a in masks and b in masks]
    if not names:
        return {}
    counts = torch.stack([(masks[pairs[n][0]] & masks[pairs[n][1]]).sum() for n in names]).tolist()
    return dict(zip(names, counts))


class HySACLoss(nn.Module):
    """HySAC training objective on a batch dict (spec §4.2).

    ``forward(batch, curv, logit_scale, extra=None) -> (total, terms)``

    * ``batch``: ``T`` (safe text), ``I`` (safe image), ``Ts`` (unsafe text), ``Is`` (unsafe image), each (B, D)
      hyperbolic space components, and optional masks ``has_T, has_I, has_Ts, has_Is`` (B,) bool. A missing key
      (or ``None``) means that modality is absent from the whole batch (e.g. text-only batches have no ``I``/``Is``);
      a missing mask means all rows present.
    * A pair term uses the rows where both members are present. Terms with no such row, or whose inputs are
      absent, are **skipped**: they are left out of ``terms`` and the weights are renormalised over the active terms:
      ``total = Σ_active λ_i L_i / Σ_active λ_i`` — a single normalisation (the official code additionally divides
      by 7). With no active term, ``total`` is an exact 0 connected to the inputs.
    * ``terms``: ``{name: 0-d tensor}`` (not detached; ``.item()`` them for logging) for every active term whose
      weight is positive, plus the paper's 7 terms even at weight 0 (for monitoring ablations; not in the total).
      Extension terms at weight 0 are not computed.
    * ``extra``: optional dict with the same keys/masks holding negatives gathered from other processes (the local
      batch excluded); the contrastive term (A, B) then gets ``extra[A]`` / ``extra[B]`` as extra columns.

    * ``weights``: a :class:`HySACLossWeights` or a mapping overriding the defaults of the terms it names.
    * Deciding which terms are active costs one host sync per call (one ``.tolist()`` of all row counts); the
      elementary losses themselves are sync-free.

    Curvature ``curv`` is ``c > 0`` (a 0-d tensor to learn it), ``logit_scale`` the exp'd scale.
    ``aperture_scale`` is η, ``min_radius`` K (0.1), ``radial_margin`` the margin of the radial hinge terms.
    """

    def __init__(
        self,
        weights: HySACLossWeights | Mapping[str, float] | None = None,
        aperture_scale: float = 1.0,
        min_radius: float = 0.1,
        radial_margin: float = 0.05,
    ) -> None:
        super().__init__()
        self.weights = _weights_from(weights, HySACLossWeights)
        if not (aperture_scale > 0 and min_radius > 0 and radial_margin >= 0):
            raise InputError("aperture_scale and min_radius must be > 0, radial_margin >= 0")
        self.aperture_scale = float(aperture_scale)
        self.min_radius = float(min_radius)
        self.radial_margin = float(radial_margin)

    def extra_repr(self) -> str:
        on = {k: v for k, v in self.weights.as_dict().items() if v > 0}
        return (
            f"weights={on}, aperture_scale={self.aperture_scale}, min_radius={self.min_radius}, "
            f"radial_margin={self.radial_margin}"
        )

    def forward(
        self,
        batch: Mapping[str, Any],
        curv: float | Tensor,
        logit_scale: float | Tensor,
        extra: Mapping[str, Any] | None = None,
        contrastive: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        emb, masks = _unpack(batch, _HYSAC_KEYS, _HYSAC_MASKS)
        if not emb:
            raise InputError(f"HySACLoss: the batch holds none of {list(_HYSAC_KEYS)}")
        # the contrastive terms may read other points of the same rows (e.g. with the radius detached: alignment
        # then trains only directions and the distance from the origin is left to the safety terms)
        con = {**emb, **{k: v for k, v in (contrastive or {}).items() if k in emb}}
        ex_emb, ex_masks = _unpack(extra, _HYSAC_KEYS, _HYSAC_MASKS)
        w = self.weights.as_dict()

        def wanted(name: str) -> bool:
            return w[name] > 0 or name in PAPER_TERMS

        pairs = {
            n: p
            for group in (_HYSAC_CON, _EXT_CON, _HYSAC_ENT, _EXT_ENT, _EXT_RAD)
            for n, p in group.items()
            if wanted(n)
        }
        counts = _active_counts(pairs, masks)
        terms: dict[str, Tensor] = {}
        for name, (a, b) in pairs.items():
            if counts.get(name, 0) == 0:
                continue
            m = masks[a] & masks[b]
            if name in _HYSAC_CON or name in _EXT_CON:
                # (a, b) = (text-like, image-like): image rows over text columns and vice versa.
                terms[name] = lorentz_contrastive(
                    con[b],
                    con[a],
                    curv,
                    logit_scale,
                    m,
                    extra_txt=ex_emb.get(a),
                    extra_txt_mask=ex_masks.get(a),
                    extra_img=ex_emb.get(b),
                    extra_img_mask=ex_masks.get(b),
                )
            elif name in _HYSAC_ENT or name in _EXT_ENT:
                terms[name] = entailment_loss(
                    emb[a], emb[b], curv, aperture_scale=self.aperture_scale, min_radius=self.min_radius, mask=m
                )
            else:
                terms[name] = radial_order_loss(emb[a], emb[b], curv, margin=self.radial_margin, mask=m)
        if any(w[n] > 0 for n in terms):
            total = weighted_mean(terms, w)
        else:
            total = _zero_from(*emb.values(), curv, logit_scale)
            dtype = _compute_dtype(*emb.values())
            total = total.to(dtype)
        return total, terms


# ----------------------------------------------------------------------------------------------------------------
# Safe-CLIP
# ----------------------------------------------------------------------------------------------------------------

_SAFECLIP_KEYS = ("T", "Ts", "I", "Is", "T0", "Ts0", "I0", "Is0")
_SAFECLIP_MASKS = {k: f"has_{k.rstrip('0')}" for k in _SAFECLIP_KEYS}


@dataclass(frozen=True)
class SafeCLIPLossWeights:
    """Per-term weights of :func:`safeclip_loss` (total = ``Σ λ_i L_i / Σ λ_i`` over active terms).

    * redirection: ``redir_T`` = dist(Ts, T0) (unsafe text → frozen embedding of its safe counterpart),
      ``redir_I`` = dist(Is, I0);
    * preservation: ``pres_T`` = dist(T, T0), ``pres_I`` = dist(I, I0);
    * contrastive InfoNCE: ``con_TI`` (T, I) safe pairs, ``con_TsI`` (Ts, I_ref) unsafe texts paired with safe
      images, ``con_TIs`` (T_ref, Is) safe texts paired with unsafe images;
    * extension (ours, default 0): ``sep_Ts`` = relu(cos(Ts, Ts0) − cos(Ts, T0) + margin), i.e. the unsafe text must
      end closer to its safe reference than to its own original embedding; ``sep_Is`` likewise.
    """

    redir_T: float = 1.0
    redir_I: float = 1.0
    pres_T: float = 1.0
    pres_I: float = 1.0
    con_TI: float = 1.0
    con_TsI: float = 1.0
    con_TIs: float = 1.0
    sep_Ts: float = 0.0
    sep_Is: float = 0.0

    def __post_init__(self) -> None:
        _check_weights(self.as_dict(), type(self).__name__)

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}


SAFECLIP_TERMS: tuple[str, ...] = tuple(f.name for f in fields(SafeCLIPLossWeights))


def _row_dist(a: Tensor, b: Tensor, kind: str) -> Tensor:
    if kind == "cosine":
        return 1.0 - (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(1e-12) * b.norm(dim=-1).clamp_min(1e-12))
    return ((a - b) ** 2).sum(-1)


def safeclip_loss(
    batch: Mapping[str, Any],
    logit_scale: float | Tensor,
    weights: SafeCLIPLossWeights | Mapping[str, float] | None = None,
    *,
    distance: Literal["cosine", "l2"] = "cosine",
    cross_reference: Literal["frozen", "finetuned"] = "frozen",
    normalize: bool = True,
    sep_margin: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Safe-CLIP unlearning objective (Poppi et al., ECCV 2024) on Euclidean embeddings. ``-> (total, terms)``.

    ``batch`` keys (each (B, D), any may be missing/None): fine-tuned encoders' outputs ``T`` (safe text), ``Ts``
    (unsafe text), ``I`` (safe image), ``Is`` (unsafe image); frozen original encoder's outputs ``T0, I0`` (and
    optionally ``Ts0, Is0``, used only by the ``sep_*`` extension); masks ``has_T, has_Ts, has_I, has_Is`` (B,)
    bool — ``X0`` shares the mask of ``X``. Terms: see :class:`SafeCLIPLossWeights`.

    * ``distance``: ``"cosine"`` = 1 − cos, or ``"l2"`` = squared Euclidean distance (of the L2-normalised vectors
      when ``normalize``, = 2·(1 − cos) then). Embeddings are L2-normalised first unless ``normalize=False``.
    * ``cross_reference``: the safe side of the cross terms ``con_TsI``/``con_TIs`` is the **frozen** embedding
      (``I0``/``T0``, default, anchoring the unsafe side to the original space) or the fine-tuned one (``I``/``T``).
      Falls back to the fine-tuned one when the frozen one is absent.
    * ``logit_scale`` is the exp'd temperature scale of the contrastive terms.
    * ``weights``: a :class:`SafeCLIPLossWeights` or a mapping that overrides the defaults of the terms it names
      (same for :class:`HySACLoss`).
    * Masking/skipping/normalisation exactly as :class:`HySACLoss`; ``terms`` holds every active term whose weight is
      positive (and the non-``sep`` terms even at weight 0).
    """
    if distance not in ("cosine", "l2"):
        raise InputError(f"distance must be 'cosine' or 'l2', got {distance!r}")
    if cross_reference not in ("frozen", "finetuned"):
        raise InputError(f"cross_reference must be 'frozen' or 'finetuned', got {cross_reference!r}")
    wts = _weights_from(weights, SafeCLIPLossWeights).as_dict()
    emb, masks = _unpack(batch, _SAFECLIP_KEYS, _SAFECLIP_MASKS)
    if not emb:
        raise InputError(f"safeclip_loss: the batch holds none of {list(_SAFECLIP_KEYS)}")
    dtype = _compute_dtype(*emb.values())
    device_type = next(iter(emb.values())).device.type
    with torch.autocast(device_type=device_type, enabled=False):
        raw = {k: v.to(dtype) for k, v in emb.items()}
        x = {k: (F.normalize(v, dim=-1) if normalize else v) for k, v in raw.items()}

        def ref(frozen: str, tuned: str) -> str:
            return frozen if cross_reference == "frozen" and frozen in x else tuned

        spec: dict[str, tuple[str, str]] = {
            "redir_T": ("Ts", "T0"),
            "redir_I": ("Is", "I0"),
            "pres_T": ("T", "T0"),
            "pres_I": ("I", "I0"),
            "con_TI": ("T", "I"),  # (text, image)
            "con_TsI": ("Ts", ref("I0", "I")),
            "con_TIs": (ref("T0", "T"), "Is"),
            "sep_Ts": ("Ts", "T0"),
            "sep_Is": ("Is", "I0"),
        }
        own = {"sep_Ts": "Ts0", "sep_Is": "Is0"}
        pairs = {n: p for n, p in spec.items() if (wts[n] > 0 or not n.startswith("sep_"))}
        pairs = {n: p for n, p in pairs.items() if n not in own or own[n] in x}
        counts = _active_counts(pairs, masks)
        terms: dict[str, Tensor] = {}
        for name, (a, b) in pairs.items():
            if counts.get(name, 0) == 0:
                continue
            m = masks[a] & masks[b]
            if name.startswith("con_"):
                terms[name] = clip_contrastive(x[b], x[a], logit_scale, m, normalize=False)
            elif name.startswith("sep_"):
                c = own[name]
                m = m & masks[c]
                xa, xb, xc = _keep(x[a], m), _keep(x[b], m), _keep(x[c], m)
                gap = (1.0 - _row_dist(xa, xc, "cosine")) - (1.0 - _row_dist(xa, xb, "cosine"))
                terms[name] = _masked_mean(F.relu(gap + sep_margin), m)
            else:
                terms[name] = _masked_mean(_row_dist(_keep(x[a], m), _keep(x[b], m), distance), m)
        if any(wts[n] > 0 for n in terms):
            total = weighted_mean(terms, wts)
        else:
            total = _zero_from(*raw.values(), logit_scale).to(dtype)
    return total, terms


# ----------------------------------------------------------------------------------------------------------------
# category head
# ----------------------------------------------------------------------------------------------------------------


@_fp32
def category_loss(
    logits: Tensor, multihot: Tensor, mask: Tensor | None = None, pos_weight: Tensor | None = None
) -> Tensor:
    """Multi-label BCE-with-logits for the category head (7 unsafe categories, any K works).

    ``logits`` (B, K), ``multihot`` (B, K) in {0, 1} (bool/int/float; soft labels in [0, 1] also work),
    optional ``pos_weight`` (K,) as in ``F.binary_cross_entropy_with_logits``. Mean over the K categories and over
    the rows in ``mask`` (e.g. only unsafe samples carry category labels). Returns a 0-d tensor.
    """
    _check_2d(logits, "logits")
    if tuple(multihot.shape) != tuple(logits.shape):
        raise InputError(f"multihot must have the shape of logits {tuple(logits.shape)}, got {tuple(multihot.shape)}")
    m = _as_mask(mask, logits.shape[0], logits.device)
    z = _keep(logits, m)
    y = _keep(multihot.to(z.dtype), m)
    if pos_weight is not None:
        pos_weight = pos_weight.to(z.dtype)
    per = F.binary_cross_entropy_with_logits(z, y, pos_weight=pos_weight, reduction="none").mean(-1)
    return _masked_mean(per, m)


def class_order_loss(dists: Tensor, classes: Tensor, n_classes: int = 4, margin: float = 0.05,
                     log_space: bool = False) -> Tensor:
    """Batch-level radial ordering of content classes (our extension): for every pair of rows (a, b) with
    ``classes[b] == classes[a] + 1``, ``relu(d_a + margin − d_b)``, averaged over the pairs of each adjacent class
    pair and then over the class pairs present. (N,), (N,) int in [0, n_classes) → 0-d.

    With classes S=0, V=1, U=2, G=3 this asks for the paper's ordering safe text < safe image < unsafe text <
    unsafe image of distances from the origin without needing semantically paired rows. With ``log_space`` the
    hinge is on ``log d`` (a ratio margin), so it keeps its meaning when the whole embedding grows or shrinks.
    """
    d = dists.float()
    if log_space:
        d = torch.log(d.clamp_min(1e-6))
    losses = []
    for k in range(n_classes - 1):
        a = d[classes == k]
        b = d[classes == k + 1]
        if a.numel() and b.numel():
            losses.append(F.relu(a[:, None] + margin - b[None, :]).mean())
    if not losses:
        return d.sum() * 0.0
    return torch.stack(losses).mean()


def safety_rank_loss(dists: Tensor, unsafe: Tensor, temperature: float = 0.05, log_space: bool = True) -> Tensor:
    """Pairwise logistic ranking of safety scores (our extension): the mean over every (safe a, unsafe b) pair of
    rows of ``softplus((d_a − d_b) / temperature)``, a smooth surrogate of ``1 − AUROC`` of the distance from the
    origin as a safe-vs-unsafe score. (N,) distances, (N,) bool ``unsafe`` → 0-d (zero when a class is absent).

    Unlike the hinge of :func:`class_order_loss` it never saturates: every pair keeps pulling the two classes
    apart in proportion to how badly it is ranked, which is what a logistic-regression probe optimises. With
    ``log_space`` the differences are of ``log d`` (ratios), so the temperature keeps its meaning as radii grow.
    """
    if temperature <= 0:
        raise ValueError(f"safety_rank temperature must be > 0, got {temperature}")
    d = dists.float()
    if log_space:
        d = torch.log(d.clamp_min(1e-6))
    u = unsafe.to(torch.bool)
    a, b = d[~u], d[u]
    if not (a.numel() and b.numel()):
        return d.sum() * 0.0
    return F.softplus((a[:, None] - b[None, :]) / temperature).mean()
