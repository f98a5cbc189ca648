"""2-D Poincaré-disk coordinates of a handful of hyperboloid points, for the web page's plot.

A point ``x`` (space components on the hyperboloid of curvature ``-c``) at geodesic distance ``d`` from the origin
is drawn at radius ``r = tanh(sqrt(c)·d / 2)`` of the unit disk — its exact radius in the Poincaré ball (scaled to
the unit disk), so the safety score, the thresholds and the redirection radius read off the plot exactly.

Directions are squeezed from ``D`` dimensions to 2 around an *anchor* (the query): the anchor lies on the positive
x-axis, every other point at its **exact angle at the origin** to the anchor, ``θ = acos(û·ê₁)``, on the side
(above/below the axis) given by the sign of its component along the main direction in which the points deviate
from the anchor (the top principal axis of their directions with the anchor direction removed). So the plot shows
true distances from the origin and true angles to the query; distances between two results are not preserved.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["poincare_radius", "disk_coordinates"]


def poincare_radius(distance: float | np.ndarray, curvature: float) -> float | np.ndarray:
    """Unit-disk radius of a point at geodesic distance ``distance`` from the origin: ``tanh(sqrt(c)·d/2)``."""
    return np.tanh(math.sqrt(float(curvature)) * np.asarray(distance, dtype=np.float64) / 2.0)


def disk_coordinates(points: np.ndarray | Sequence[Sequence[float]], curvature: float,
                     anchor: int = 0) -> np.ndarray:
    """(N, D) hyperboloid space components → (N, 2) unit-disk coordinates (see the module docstring).

    Points at the origin are drawn at the centre. ``anchor`` indexes the point laid on the positive x-axis; if it is
    the origin, the first non-zero point is used instead.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"points must have shape (N, D), got {x.shape}")
    n = x.shape[0]
    out = np.zeros((n, 2))
    if n == 0:
        return out
    c = float(curvature)
    sc = math.sqrt(c)
    norms = np.linalg.norm(x, axis=1)
    dist = np.arcsinh(sc * norms) / sc
    radius = poincare_radius(dist, c)
    nonzero = norms > 1e-12
    if not nonzero.any():
        return out
    u = np.zeros_like(x)
    u[nonzero] = x[nonzero] / norms[nonzero, None]
    a = anchor if 0 <= anchor < n and nonzero[anchor] else int(np.argmax(nonzero))
    e1 = u[a]
    cos = np.clip(u @ e1, -1.0, 1.0)
    resid = u - cos[:, None] * e1[None, :]
    resid[~nonzero] = 0.0
    side = np.ones(n)
    if np.abs(resid).max() > 1e-12:
        # top principal axis of the deviations from the anchor (uncentred: deviations are already relative to e1)
        _, _, vt = np.linalg.svd(resid, full_matrices=False)
        e2 = vt[0]
        proj = resid @ e2
        # orient e2 so that the point farthest off-axis is above it (deterministic picture)
        if proj[int(np.argmax(np.abs(proj)))] < 0:
            proj = -proj
        side = np.where(proj < 0, -1.0, 1.0)
    # atan2(|û − (û·ê₁)ê₁|, û·ê₁) is the angle acos(û·ê₁), well conditioned near 0 and π
    theta = np.arctan2(np.linalg.norm(resid, axis=1), cos) * side
    out[:, 0] = radius * np.cos(theta)
    out[:, 1] = radius * np.sin(theta)
    out[~nonzero] = 0.0
    return out
