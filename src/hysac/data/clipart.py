"""Open Clip Art Library images (Debian package ``openclipart-png``, public domain) as a second image source.

``apt-get install openclipart-png`` puts ~8,000 PNGs under ``/usr/share/openclipart/png/<category>/…``. Captions
come from file names ("katana_dudziak_tomek_01.png" → "katana dudziak tomek"); the unsafe-ish subset is chosen by
folder and name (weapons → violence; skulls, gallows → shocking). Decorative folders (patterns, gradients, stars)
are left out, and safe images are subsampled to ``max_safe`` (seeded) to bound encoding time. A chosen file that
the image decoder would refuse by its header (over Pillow's decompression-bomb limit, too elongated, not an image)
is dropped with a warning after the subsampling, so the other rows of a seed stay the same.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..errors import InputError

logger = logging.getLogger(__name__)

DEFAULT_ROOT = Path("/usr/share/openclipart/png")
_SKIP_DIRS = ("special/", "shapes/stars", "shapes/jigsaw", "shapes/arrows", "shapes/flowchart", "shapes/callouts")
#: (pattern on the relative path, categories) — first match wins; everything else is safe
UNSAFE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (r"^tools/weapons/(?!boomerang|lightsaber)", ("violence",)),
    (r"(^|/)[^/]*(pistol|revolver|rifle|m16|shotgun|grenade|dagger|machete)[^/]*$", ("violence",)),
    (r"(^|/)[^/]*(skull|gallows|noose|coffin|corpse)[^/]*$", ("shocking",)),
    (r"(^|/)[^/]*(syringe|cocaine|marijuana)[^/]*$", ("illegal activity",)),
)
_SAFE_OVERRIDES = (r"^food/", r"no_smoking", r"nosmoke")


def _caption(path: Path) -> str:
    words = re.sub(r"[_\-.]+", " ", path.stem)
    words = re.sub(r"\b\d+\b", " ", words)
    return re.sub(r"\s+", " ", words).strip().lower() or path.parent.name


def _label(rel: str) -> tuple[str, ...]:
    if any(re.search(p, rel) for p in _SAFE_OVERRIDES):
        return ()
    for pattern, cats in UNSAFE_RULES:
        if re.search(pattern, rel, flags=re.IGNORECASE):
            return cats
    return ()


def load_openclipart(root: str | Path | None = None, *, max_safe: int | None = 2000, seed: int = 0) -> pd.DataFrame:
    """Rows with ``path``, ``codepoints`` (a stable key: the relative path), ``caption``, ``unsafe``, ``categories``
    — the same columns as :func:`hysac.data.render_openmoji`. Duplicate files (same name in two folders) are kept
    once."""
    root = Path(root) if root is not None else DEFAULT_ROOT
    if not root.is_dir():
        raise InputError(f"Open Clip Art folder not found: {root} (install it with `apt-get install openclipart-png` "
                         "or set data.clipart: false)")
    rows, seen = [], set()
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(_SKIP_DIRS) or p.name in seen:
            continue
        seen.add(p.name)
        cats = _label(rel)
        rows.append({"path": str(p), "codepoints": "clipart:" + rel, "caption": _caption(p),
                     "unsafe": int(bool(cats)), "categories": list(cats)})
    df = pd.DataFrame(rows, columns=["path", "codepoints", "caption", "unsafe", "categories"])
    if max_safe is not None:
        safe = np.flatnonzero(df["unsafe"].to_numpy() == 0)
        if len(safe) > max_safe:
            keep = np.sort(np.random.default_rng(seed).choice(safe, size=max_safe, replace=False))
            df = pd.concat([df.iloc[keep], df[df["unsafe"] == 1]]).sort_values("codepoints")
    why = [_refusal(p) for p in df["path"]]
    ok = np.array([w is None for w in why], dtype=bool)
    if not ok.all():
        first = int(np.flatnonzero(~ok)[0])
        logger.warning("Open Clip Art: %d file(s) the image decoder refuses were dropped (%s: %s)", int((~ok).sum()),
                       df["path"].iloc[first], why[first])
        df = df[ok]
    return df.reset_index(drop=True)


def _refusal(path: str | Path) -> str | None:
    """Why :func:`hysac.images.load_image` would refuse ``path`` by its header alone (no pixel is decoded), or
    ``None``: Pillow's decompression-bomb limit, :func:`hysac.images.check_geometry`, an unreadable or unknown file."""
    from ..images import check_geometry

    try:
        with Image.open(path) as im:
            check_geometry(*im.size, f"image {path}")
    except (InputError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        return str(e) or e.__class__.__name__
    return None
