"""Real photographs for calibrating and testing the image side: scikit-image's sample photos and Debian wallpapers.

Two sources, both everyday (safe) content, neither used for training:

* ``skimage`` — the sample images bundled in the ``scikit-image`` wheel (``skimage.data``; the ones that need a
  download are skipped) and the three sample photos of the matplotlib and scikit-learn wheels, each with a caption
  written here for this loader. Written once as PNG files under a cache
  folder so that every image has a path (the index and the CLI work on files).
* ``wallpapers`` — photographs and artwork from the Debian wallpaper packages ``gnome-backgrounds`` and
  ``mate-backgrounds`` (``scripts/install-image-data.sh`` installs them), under ``/usr/share/backgrounds``;
  captions from file names ("GreenTraditional.jpg" → "green traditional").

:func:`load_photos` returns a frame with the columns of the other image sources (``path``, ``codepoints``,
``caption``, ``unsafe``, ``categories``) plus ``source``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from .paths import default_cache_dir

#: skimage.data sample → caption (hand-written from looking at the image)
SKIMAGE_CAPTIONS: dict[str, str] = {
    "astronaut": "a photo of an astronaut in a space suit",
    "chelsea": "a photo of a cat",
    "coffee": "a photo of a cup of coffee",
    "rocket": "a photo of a rocket on a launch pad",
    "camera": "a black and white photo of a man with a camera on a tripod",
    "coins": "a photo of old coins",
    "moon": "a photo of the surface of the moon",
    "hubble_deep_field": "a photo of galaxies in deep space",
    "immunohistochemistry": "a microscope photo of stained tissue",
    "retina": "a photo of the retina of a human eye",
    "brick": "a photo of a brick wall",
    "grass": "a photo of grass",
    "gravel": "a photo of gravel",
    "clock": "a photo of a clock",
    "page": "a photo of a printed page of text",
    "text": "a photo of text on a sign",
    "cell": "a microscope photo of a cell",
    "colorwheel": "a colour wheel",
}
#: sample photos shipped inside installed wheels: (package, path parts, caption)
PACKAGE_PHOTOS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg"), "a photo of a woman in a military uniform"),
    ("sklearn", ("datasets", "images", "china.jpg"), "a photo of a chinese temple"),
    ("sklearn", ("datasets", "images", "flower.jpg"), "a photo of a flower"),
)
WALLPAPER_ROOTS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def _split_words(stem: str) -> str:
    stem = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    words = re.sub(r"[_\-.]+", " ", stem)
    words = re.sub(r"\b\d+x\d+\b|\b\d+\b", " ", words)
    return re.sub(r"\s+", " ", words).strip().lower() or stem


def skimage_photos(cache_dir: Path | None = None) -> pd.DataFrame:
    """The bundled scikit-image sample photos (written as PNGs under ``cache_dir``); empty without scikit-image."""
    try:
        import skimage.data as skd
    except ImportError:
        return pd.DataFrame(columns=["path", "caption", "source"])
    from PIL import Image

    out_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "photos" / "skimage"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, caption in SKIMAGE_CAPTIONS.items():
        path = out_dir / f"{name}.png"
        if not path.is_file():
            try:
                arr = getattr(skd, name)()
            except Exception:  # noqa: BLE001 - samples that need a download (pooch) are skipped
                continue
            arr = np.asarray(arr)
            if arr.dtype == bool:
                arr = arr.astype(np.uint8) * 255
            tmp = path.with_suffix(".tmp.png")
            Image.fromarray(arr).save(tmp)
            tmp.replace(path)
        rows.append({"path": str(path), "caption": caption, "source": "skimage"})
    import importlib.util

    for package, parts, caption in PACKAGE_PHOTOS:  # same source: named sample photos
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        path = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
        if path.is_file():
            rows.append({"path": str(path), "caption": caption, "source": "skimage"})
    return pd.DataFrame(rows, columns=["path", "caption", "source"])


def wallpaper_photos(roots=WALLPAPER_ROOTS) -> pd.DataFrame:
    """Image files under the Debian wallpaper folders (sorted; duplicates of one picture at other sizes dropped)."""
    rows, seen = [], set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in _EXTS and p.is_file()):
            caption = _split_words(path.stem)
            key = (path.parent.name, caption)
            if key in seen:
                continue
            seen.add(key)
            rows.append({"path": str(path), "caption": caption, "source": "wallpapers"})
    return pd.DataFrame(rows, columns=["path", "caption", "source"])


def load_photos(cache_dir: Path | None = None, wallpaper_roots=WALLPAPER_ROOTS) -> pd.DataFrame:
    """Every available calibration photo (all safe): ``path``, ``codepoints`` (empty), ``caption``, ``unsafe`` (0),
    ``categories`` (none), ``source`` (``"skimage"`` / ``"wallpapers"``)."""
    frame = pd.concat([skimage_photos(cache_dir), wallpaper_photos(wallpaper_roots)], ignore_index=True)
    frame["codepoints"] = frame["path"]
    frame["unsafe"] = 0
    frame["categories"] = [[] for _ in range(len(frame))]
    return frame[["path", "codepoints", "caption", "unsafe", "categories", "source"]]


__all__ = ["SKIMAGE_CAPTIONS", "WALLPAPER_ROOTS", "load_photos", "skimage_photos", "wallpaper_photos"]
