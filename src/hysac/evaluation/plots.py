"""Report figures (matplotlib, Agg backend, PNG). Every function writes one file and returns its path."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

CLASS_STYLE = {  # paper Fig. 2 naming: S safe text, V safe image, U unsafe text, G unsafe image
    "S": ("safe text (T)", "#2b8cbe"),
    "V": ("safe image (I)", "#41ab5d"),
    "U": ("unsafe text (T*)", "#f16913"),
    "G": ("unsafe image (I*)", "#cb181d"),
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def radius_histograms(dists: dict[str, np.ndarray], path: Path, *, thresholds: dict[str, float] | None = None,
                      title: str = "Distance from the origin per class") -> Path:
    """Overlaid density histograms of ``d(O, x)`` for the classes S/V/U/G present (paper Fig. 2)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    present = {k: np.asarray(v, dtype=float) for k, v in dists.items() if v is not None and len(v)}
    if present:
        lo = min(float(v.min()) for v in present.values())
        hi = max(float(v.max()) for v in present.values())
        pad = 0.02 * (hi - lo + 1e-9)
        bins = np.linspace(lo - pad, hi + pad, 60)
        for k in ("S", "V", "U", "G"):
            if k in present:
                label, colour = CLASS_STYLE[k]
                v = present[k]
                if v.size < 20:  # a density of a handful of points is a spike, not a distribution: draw ticks
                    ax.plot(v, np.zeros_like(v), "|", color=colour, markersize=40, mew=2.5,
                            label=f"{label}: n={v.size} (ticks), median {np.median(v):.3f}")
                else:
                    ax.hist(v, bins=bins, density=True, alpha=0.45, color=colour,
                            label=f"{label}: n={v.size}, median {np.median(v):.3f}")
                ax.axvline(float(np.median(v)), color=colour, lw=1, ls=":")
    for mod, th in (thresholds or {}).items():
        if th is not None:
            ax.axvline(th, color="black", lw=1.2, ls="--" if mod == "text" else "-.",
                       label=f"{mod} threshold θ={th:.3f}")
    ax.set_xlabel("geodesic distance from the origin d(O, x)  (higher = more unsafe)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def poincare_disk(points: dict[str, np.ndarray], dists: dict[str, np.ndarray], curv: float, path: Path, *,
                  thresholds: dict[str, float] | None = None, title: str = "Poincaré-disk view") -> Path:
    """2-D view: radius ``r = tanh(sqrt(c)·d/2)`` (the Poincaré-ball radius of a point at geodesic distance d, in
    units of the ball radius 1/sqrt(c)); angle from a 2-D PCA of the unit directions ``x/||x||`` of all points."""
    plt = _plt()
    dirs, cls = [], []
    for k, x in points.items():
        x = np.asarray(x, dtype=np.float64)
        if x.size == 0:
            continue
        dirs.append(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
        cls += [k] * x.shape[0]
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    if dirs:
        U = np.concatenate(dirs)
        Uc = U - U.mean(0, keepdims=True)
        _, _, vt = np.linalg.svd(Uc, full_matrices=False)
        proj = Uc @ vt[:2].T if vt.shape[0] >= 2 else np.c_[Uc @ vt[:1].T, np.zeros(len(Uc))]
        ang = np.arctan2(proj[:, 1], proj[:, 0])
        d = np.concatenate([np.asarray(dists[k], dtype=np.float64) for k in points if np.asarray(points[k]).size])
        r = np.tanh(math.sqrt(curv) * d / 2.0)
        cls_arr = np.asarray(cls)
        rmax = float(r.max()) if r.size else 1.0
        for k in ("S", "V", "U", "G"):
            sel = cls_arr == k
            if sel.any():
                label, colour = CLASS_STYLE[k]
                ax.scatter(r[sel] * np.cos(ang[sel]), r[sel] * np.sin(ang[sel]), s=9, alpha=0.6, color=colour,
                           label=f"{label} (n={int(sel.sum())})", edgecolors="none")
        t = np.linspace(0, 2 * np.pi, 400)
        zoomed = rmax <= 0.6
        ax.plot(np.cos(t), np.sin(t), color="black", lw=1, label=None if zoomed else "disk boundary (d = ∞)")
        for mod, th in (thresholds or {}).items():
            if th is not None:
                rt = math.tanh(math.sqrt(curv) * th / 2.0)
                ax.plot(rt * np.cos(t), rt * np.sin(t), color="black", lw=0.9, ls="--" if mod == "text" else "-.",
                        label=f"{mod} threshold (d={th:.3f})")
        lim = 1.05 if not zoomed else max(1.15 * rmax, 0.05)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        if lim < 1.0:
            title += f"  (zoomed: disk radius 1, points reach r={rmax:.2f})"
        ax.scatter([0], [0], marker="+", color="black", s=60, zorder=5)
    ax.set_aspect("equal")
    ax.set_xlabel("r·cos φ   (r = tanh(√c·d/2), φ from 2-D PCA of directions)")
    ax.set_ylabel("r·sin φ")
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.2)
    return _save(fig, path)


def roc_curves(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], path: Path, *, title: str) -> Path:
    """ROC curves: ``(label, fpr, tpr, auroc_percent)`` each."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.8, 5.2))
    for label, fpr, tpr, auc in curves:
        ax.plot(fpr, tpr, lw=1.5, label=f"{label} (AUROC {auc:.1f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":", label="chance")
    ax.axvline(0.05, color="grey", lw=0.8, ls="--")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (safe flagged unsafe)")
    ax.set_ylabel("true positive rate (unsafe caught)")
    ax.set_title(textwrap.fill(title, 60), fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def traversal_grid(rows: Sequence[dict], path: Path, *, title: str) -> Path:
    """One row per query, one column per step toward the origin; cell = nearest gallery item (green safe, red
    unsafe), with its text. ``rows[i] = {"query": str, "steps": [{"label": str, "d": float, "text": str,
    "safe": bool}, ...]}``."""
    plt = _plt()
    n = len(rows)
    m = max((len(r["steps"]) for r in rows), default=0)
    fig, ax = plt.subplots(figsize=(max(8, 1.9 * m), 1.3 + 1.35 * max(n, 1)))
    for i, r in enumerate(rows):
        for j, st in enumerate(r["steps"]):
            colour = "#c7e9c0" if st["safe"] else "#fcbba1"
            ax.add_patch(plt.Rectangle((j, n - 1 - i), 0.96, 0.92, color=colour))
            ax.text(j + 0.48, n - 1 - i + 0.46, f"d={st['d']:.2f}\n" + textwrap.fill(st["text"][:60], 20),
                    ha="center", va="center", fontsize=6.5)
    ax.set_xlim(0, m)
    ax.set_ylim(0, max(n, 1))
    if rows:
        ax.set_xticks(np.arange(m) + 0.48)
        ax.set_xticklabels([s.get("label") or f"t={s['t']:.2f}" for s in rows[0]["steps"]], fontsize=7)
    ax.set_yticks(np.arange(n) + 0.46)
    ax.set_yticklabels([textwrap.fill(r["query"][:70], 26) for r in reversed(rows)], fontsize=6.5)
    ax.set_xlabel("fraction t of the geodesic from the query to the origin (last column: redirected to τ)\n"
                  "cell: d = distance of the moved query from the origin; nearest gallery text — green = safe, "
                  "red = unsafe")
    ax.set_ylabel("unsafe query")
    ax.set_title(title, fontsize=10)
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    return _save(fig, path)
