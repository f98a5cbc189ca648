"""Image input: open files, convert any PIL mode to 8-bit RGB, and fail with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import InputError

ImageLike = Union[str, os.PathLike, Image.Image]

#: extensions picked up when a folder is given
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Refuse decompression bombs loudly instead of hanging (PIL warns at 89M px, errors at 2x that).
Image.MAX_IMAGE_PIXELS = 178_956_970
ImageFile.LOAD_TRUNCATED_IMAGES = False


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB. Alpha is composited on white; 16/32-bit and float images are rescaled to 0–255."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(src: ImageLike) -> Image.Image:
    """Open ``src`` (path or PIL image) as an RGB image (EXIF orientation applied).

    Raises :class:`InputError` naming the file when it is missing, not an image, truncated or corrupt.
    """
    if isinstance(src, Image.Image):
        try:
            return to_rgb(src)
        except Exception as e:  # noqa: BLE001 - any PIL failure is a bad input
            raise InputError(f"image object could not be converted to RGB: {e}") from None
    path = Path(os.fspath(src))
    if not path.exists():
        raise InputError(f"image file not found: {path}")
    if not path.is_file():
        raise InputError(f"not an image file (is a directory or special file): {path}")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except UnidentifiedImageError:
        raise InputError(f"cannot read image {path}: not a recognised image format") from None
    except Image.DecompressionBombError as e:
        raise InputError(f"refusing image {path}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"cannot read image {path}: corrupt or truncated ({e})") from None


def expand_image_paths(paths: Iterable[ImageLike]) -> list[Path]:
    """Expand folders (recursively, sorted) into image files; files are kept as given. Missing paths → InputError."""
    out: list[Path] = []
    for p in paths:
        path = Path(os.fspath(p))
        if path.is_dir():
            out.extend(sorted(q for q in path.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTENSIONS))
        elif path.exists():
            out.append(path)
        else:
            raise InputError(f"image path not found: {path}")
    return out


def load_images(srcs: Sequence[ImageLike]) -> list[Image.Image]:
    """Load every image in ``srcs`` (see :func:`load_image`)."""
    return [load_image(s) for s in srcs]
