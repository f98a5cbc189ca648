"""Lorentz-model (hyperboloid) geometry.

Conventions
-----------
* The hyperboloid has constant curvature ``-c`` with ``c > 0``. A point is stored by its **space components**
  ``x ∈ R^D`` only; its time component is ``x_t = sqrt(1/c + ||x||²)``. The origin (root) is ``x = 0``.
* Tangent vectors at the origin (``*_tan``) are plain ``R^D`` vectors; points on the manifold (``*_hyp``) are
  space components. ``exp_map0`` goes tangent → manifold, ``log_map0`` goes manifold → tangent.
* ``curv`` is the positive curvature magnitude ``c`` (float or 0-d tensor), **not** its log.

Numerics
--------
Every function computes in fp32 (or fp64 when given fp64) with autocast disabled, so the geometry is exact enough
under bf16/fp16 autocast; results are returned in that compute dtype. Clamps come *before* ``acosh``/``asin``/
``acos`` so both values and gradients stay finite, also at coincident points. Near the origin we use series
expansions of ``sinh(r)/r`` and ``asinh(r)/r`` instead of dividing by a clamped norm.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, TypeVar

import torch
from torch import Tensor

from .errors import InputError

__all__ = [
    "MAX_TANGENT_NORM",
    "time_component",
    "pairwise_inner",
    "elementwise_inner",
    "pairwise_dist",
    "elementwise_dist",
    "dist0",
    "exp_map0",
    "log_map0",
    "half_aperture",
    "oxy_angle",
    "entails",
    "set_dist0",
    "toward_origin",
    "space_norm_for_dist",
    "check_finite",
]

#: exp_map0 clamps sqrt(c)·||v|| at asinh(2**15) (as MERU/HySAC do) so sinh never overflows fp32.
MAX_TANGENT_NORM = math.asinh(2.0**15)

F = TypeVar("F", bound=Callable[..., Tensor])


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _fp32(fn: F) -> F:
    """Run ``fn`` with autocast disabled and all floating tensor args — positional or keyword — upcast to fp32, or
    to fp64 when any of them is fp64; the autocast device is the first floating tensor's."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        floats = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor) and a.is_floating_point()]
        ref = floats[0] if floats else None
        dtype = torch.float64 if any(a.dtype == torch.float64 for a in floats) else torch.float32
        device_type = ref.device.type if ref is not None else "cpu"

        def cast(a):
            return a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a

        args = tuple(cast(a) for a in args)
        kwargs = {k: cast(v) for k, v in kwargs.items()}
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _curv(curv: float | Tensor, like: Tensor) -> Tensor:
    c = torch.as_tensor(curv, dtype=like.dtype, device=like.device)
    return c


def _sinhc(r: Tensor) -> Tensor:
    """sinh(r)/r, exact at r = 0 (series below 1e-3). Shape-preserving."""
    small = r < 1e-3
    safe = torch.where(small, torch.ones_like(r), r)
    return torch.where(small, 1.0 + r * r / 6.0, torch.sinh(safe) / safe)


def _asinhc(r: Tensor) -> Tensor:
    """asinh(r)/r, exact at r = 0 (series below 1e-3). Shape-preserving."""
    small = r < 1e-3
    safe = torch.where(small, torch.ones_like(r), r)
    return torch.where(small, 1.0 - r * r / 6.0, torch.asinh(safe) / safe)


def _norm(x: Tensor, keepdim: bool = False) -> Tensor:
    """Euclidean norm over the last dim with a zero-safe gradient (0 at x = 0)."""
    sq = (x * x).sum(-1, keepdim=keepdim)
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


@_fp32
def time_component(x_hyp: Tensor, curv: float | Tensor) -> Tensor:
    """Time component ``sqrt(1/c + ||x||²)``. (..., D) → (...)."""
    c = _curv(curv, x_hyp)
    return torch.sqrt(1.0 / c + (x_hyp * x_hyp).sum(-1))


@_fp32
def pairwise_inner(x_hyp: Tensor, y_hyp: Tensor, curv: float | Tensor) -> Tensor:
    """Lorentz inner product ``<x,y>_L = x·y − x_t·y_t`` for all pairs. (B1,D),(B2,D) → (B1,B2)."""
    xt = time_component(x_hyp, curv)
    yt = time_component(y_hyp, curv)
    return x_hyp @ y_hyp.transpose(-1, -2) - xt.unsqueeze(-1) * yt.unsqueeze(-2)


@_fp32
def elementwise_inner(x_hyp: Tensor, y_hyp: Tensor, curv: float | Tensor) -> Tensor:
    """Row-wise Lorentz inner product. (B,D),(B,D) → (B,)."""
    return (x_hyp * y_hyp).sum(-1) - time_component(x_hyp, curv) * time_component(y_hyp, curv)


def _acosh_dist(neg_c_inner: Tensor, c: Tensor, eps: float | None) -> Tensor:
    if eps is None:
        eps = 1e-12 if neg_c_inner.dtype == torch.float64 else 1e-6
    # The clamp (1 + eps must be representable: 1e-8 is not in fp32) keeps acosh' finite at coincident points.
    return torch.acosh(torch.clamp(neg_c_inner, min=1.0 + eps)) / torch.sqrt(c)


@_fp32
def pairwise_dist(x_hyp: Tensor, y_hyp: Tensor, curv: float | Tensor, eps: float | None = None) -> Tensor:
    """Geodesic distance for all pairs. (B1,D),(B2,D) → (B1,B2).

    ``d = acosh(clamp(−c<x,y>_L, min=1+eps)) / sqrt(c)``; eps defaults to 1e-6 (fp32) / 1e-12 (fp64).
    """
    c = _curv(curv, x_hyp)
    return _acosh_dist(-c * pairwise_inner(x_hyp, y_hyp, c), c, eps)


@_fp32
def elementwise_dist(x_hyp: Tensor, y_hyp: Tensor, curv: float | Tensor, eps: float | None = None) -> Tensor:
    """Row-wise geodesic distance. (B,D),(B,D) → (B,)."""
    c = _curv(curv, x_hyp)
    return _acosh_dist(-c * elementwise_inner(x_hyp, y_hyp, c), c, eps)


@_fp32
def dist0(x_hyp: Tensor, curv: float | Tensor) -> Tensor:
    """Geodesic distance from the origin, ``asinh(sqrt(c)·||x||)/sqrt(c)`` (stable, no clamp). (..., D) → (...)."""
    c = _curv(curv, x_hyp)
    sc = torch.sqrt(c)
    return torch.asinh(sc * _norm(x_hyp)) / sc


@_fp32
def exp_map0(v_tan: Tensor, curv: float | Tensor) -> Tensor:
    """Exponential map at the origin. (..., D) tangent → (..., D) space components.

    ``x = sinh(sqrt(c)·||v||)/(sqrt(c)·||v||) · v`` with ``sqrt(c)||v||`` clamped at :data:`MAX_TANGENT_NORM`.
    Satisfies ``dist0(exp_map0(v)) == ||v||`` (below the clamp).
    """
    c = _curv(curv, v_tan)
    sc = torch.sqrt(c)
    r = sc * _norm(v_tan, keepdim=True)
    r_cl = torch.clamp(r, max=MAX_TANGENT_NORM)
    # scale = sinh(r_cl)/r = sinhc(r_cl) * r_cl / r ; equals sinhc(r) below the clamp.
    ratio = torch.where(r > MAX_TANGENT_NORM, r_cl / torch.where(r > 0, r, torch.ones_like(r)), torch.ones_like(r))
    return v_tan * _sinhc(r_cl) * ratio


@_fp32
def log_map0(x_hyp: Tensor, curv: float | Tensor) -> Tensor:
    """Logarithmic map at the origin. (..., D) space components → (..., D) tangent vector.

    ``v = asinh(sqrt(c)·||x||)/(sqrt(c)·||x||) · x``; ``||v|| == dist0(x)``.
    """
    c = _curv(curv, x_hyp)
    r = torch.sqrt(c) * _norm(x_hyp, keepdim=True)
    return x_hyp * _asinhc(r)


def space_norm_for_dist(dist: Tensor, curv: float | Tensor) -> Tensor:
    """Space-component norm of a point at geodesic distance ``dist`` from the origin: ``sinh(sqrt(c)·d)/sqrt(c)``."""
    c = _curv(curv, dist)
    sc = torch.sqrt(c)
    return torch.sinh(sc * dist) / sc


@_fp32
def half_aperture(x_hyp: Tensor, curv: float | Tensor, min_radius: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Half-aperture of the entailment cone at x: ``asin(2K / (sqrt(c)·||x||))``, clamped. (..., D) → (...).

    ``K = min_radius`` (0.1 in MERU/HySAC). The argument is clamped into ``[-1+eps, 1-eps]`` before ``asin``, so
    points with ``sqrt(c)||x|| <= 2K`` get the widest aperture ``asin(1-eps)`` ≈ π/2. ``eps = 1e-5`` as in the
    official code.
    """
    c = _curv(curv, x_hyp)
    arg = 2.0 * min_radius / (torch.sqrt(c) * _norm(x_hyp) + eps)
    return torch.asin(torch.clamp(arg, min=-1.0 + eps, max=1.0 - eps))


def oxy_angle(x_hyp: Tensor, y_hyp: Tensor, curv: float | Tensor, eps: float = 1e-5) -> Tensor:
    """Exterior angle at x of the hyperbolic triangle O-x-y, in (0, π). (B,D),(B,D) → (B,).

    ``angle = acos((y_t + c<x,y>_L·x_t) / (||x|| · sqrt((c<x,y>_L)² − 1)))`` with clamps before sqrt and acos.
    The numerator cancels badly for far, nearly collinear points, so it is evaluated in fp64 (O(B·D) work) and
    returned in the inputs' compute dtype (fp32 under autocast). ``eps = 1e-5`` as in the official code: the clamp
    of ``cos`` into ``[-1+eps, 1-eps]`` bounds acos's gradient by ``1/sqrt(2·eps)`` ≈ 224 for near-coincident
    points (a 1e-12 clamp lets it reach ~1e6 and blow up entailment-loss steps).
    """
    out_dtype = _compute_dtype(x_hyp) if x_hyp.is_floating_point() else torch.float32
    with torch.autocast(device_type=x_hyp.device.type, enabled=False):
        x = x_hyp.double()
        y = y_hyp.double()
        c = torch.as_tensor(curv, device=x.device).double()
        xt = torch.sqrt(1.0 / c + (x * x).sum(-1))
        yt = torch.sqrt(1.0 / c + (y * y).sum(-1))
        c_xyl = c * ((x * y).sum(-1) - xt * yt)
        num = yt + c_xyl * xt
        den = torch.sqrt(torch.clamp(c_xyl * c_xyl - 1.0, min=eps))
        cos = num / (_norm(x) * den + eps)
        return torch.acos(torch.clamp(cos, min=-1.0 + eps, max=1.0 - eps)).to(out_dtype)


def entails(
    parent_hyp: Tensor,
    child_hyp: Tensor,
    curv: float | Tensor,
    aperture_scale: float = 1.0,
    min_radius: float = 0.1,
) -> Tensor:
    """Is ``child`` inside the entailment cone of ``parent``? (B,D),(B,D) → (B,) bool.

    ``oxy_angle(parent, child) <= aperture_scale · half_aperture(parent)`` (MERU convention). Broadcasting
    (1,D) against (B,D) works.
    """
    parent_hyp, child_hyp = torch.broadcast_tensors(parent_hyp, child_hyp)
    angle = oxy_angle(parent_hyp, child_hyp, curv)
    return angle <= aperture_scale * half_aperture(parent_hyp, curv, min_radius=min_radius)


@_fp32
def set_dist0(x_hyp: Tensor, dist: Tensor | float, curv: float | Tensor) -> Tensor:
    """Move each point along its geodesic through the origin so that its distance from the origin is ``dist``.

    (B,D), scalar or (B,) → (B,D). Geodesics through the origin keep the direction of the space components, so
    this rescales ``x`` to the space norm ``sinh(sqrt(c)·dist)/sqrt(c)``. Points at the origin stay there.
    """
    c = _curv(curv, x_hyp)
    d = torch.as_tensor(dist, dtype=x_hyp.dtype, device=x_hyp.device)
    if d.dim() == 1:
        d = d.unsqueeze(-1)
    r = _norm(x_hyp, keepdim=True)
    target = space_norm_for_dist(d, c)
    scale = torch.where(r > 0, target / torch.where(r > 0, r, torch.ones_like(r)), torch.zeros_like(r))
    return x_hyp * scale


@_fp32
def toward_origin(x_hyp: Tensor, t: Tensor | float, curv: float | Tensor) -> Tensor:
    """Geodesic interpolation from x (t=0) to the origin (t=1): ``exp_map0((1−t)·log_map0(x))``.

    (B,D), scalar or (B,) or (B,1) → (B,D). ``dist0`` of the result is ``(1−t)·dist0(x)``.
    """
    t = torch.as_tensor(t, dtype=x_hyp.dtype, device=x_hyp.device)
    if t.dim() == 1:
        t = t.unsqueeze(-1)
    return exp_map0((1.0 - t) * log_map0(x_hyp, curv), curv)


def check_finite(x: Tensor, name: str = "input") -> Tensor:
    """Raise :class:`~hysac.errors.InputError` (a ``ValueError``) naming ``name`` if ``x`` holds NaN or ±inf."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"{name} contains {n_bad} NaN/inf value(s); embeddings must be finite")
    return x
