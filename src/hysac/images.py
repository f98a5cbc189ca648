"""Image input: open files, convert any PIL mode to 8-bit RGB, fail with errors that name the file, and describe a
backbone's pixel preprocessing (:class:`PixelSpec`) so that it can run in two halves: resize/crop to ``uint8`` on
the CPU (worker processes) and normalisation wherever the tower runs."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import InputError

ImageLike = Union[str, os.PathLike, Image.Image]

#: extensions picked up when a folder is given
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

# Refuse decompression bombs loudly instead of hanging (PIL warns at 89M px, errors at 2x that).
Image.MAX_IMAGE_PIXELS = 178_956_970
ImageFile.LOAD_TRUNCATED_IMAGES = False

#: the most elongated image accepted (longer side / shorter side); a 10000x1 strip would otherwise be resized to
#: 2,240,000x224 before the centre crop throws all but 224x224 of it away
MAX_ASPECT = 32.0
#: JPEGs are decoded at the smallest 1/2, 1/4, 1/8 DCT scale that keeps both sides at least this large (twice the
#: towers' 224 input, so the bicubic resize that follows still averages over several decoded pixels): a 24 Mpx
#: photo then costs ~1.5 Mpx of memory instead of 24
DRAFT_SIDE = 448


def check_geometry(width: int, height: int, what: str, max_pixels: int | None = None) -> None:
    """Refuse an image by its header size, before decoding it: empty, more elongated than :data:`MAX_ASPECT`, or
    over ``max_pixels``. Raises :class:`InputError` naming ``what``."""
    if width <= 0 or height <= 0:
        raise InputError(f"{what}: empty image ({width}x{height} pixels)")
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise InputError(f"{what}: {width}x{height} pixels is too elongated (aspect ratio {aspect:.0f}:1, the "
                         f"limit is {MAX_ASPECT:.0f}:1)")
    if max_pixels is not None and width * height > max_pixels:
        raise InputError(f"{what}: {width}x{height} pixels is over the limit of {max_pixels} pixels")


def open_reduced(im: Image.Image, what: str, max_pixels: int | None = None,
                 draft_side: int | None = DRAFT_SIDE) -> Image.Image:
    """An opened (not yet decoded) PIL image → the decoded RGB image, EXIF orientation applied: the size checked
    first (:func:`check_geometry`), JPEGs decoded at a reduced DCT scale (``draft_side``; ``None``: full size)."""
    check_geometry(*im.size, what, max_pixels)
    if draft_side and im.format == "JPEG":
        im.draft("RGB", (int(draft_side), int(draft_side)))
    im.load()
    return to_rgb(ImageOps.exif_transpose(im))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image → 8-bit RGB. Alpha (RGBA, LA, PA, P/L with transparency) is composited over white; 16-bit,
    32-bit integer and float greyscale are rescaled to 0..255 instead of being clipped."""
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        image = _wide_grey_to_l(image)
        mode = "L"
    try:
        if mode == "La":  # premultiplied alpha: PIL only converts it to LA
            image, mode = image.convert("LA"), "LA"
        if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode in ("P", "L") and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InputError(f"cannot convert a PIL image of mode {mode!r} to RGB: {exc}") from None


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    """'I;16*', 'I' and 'F' images → 'L', scaling by the value range the data evidently uses."""
    mode = image.mode
    arr = np.asarray(image).astype(np.float64)
    if arr.size == 0:
        return Image.new("L", image.size)
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if mode.startswith("I;16"):
        arr = arr / 65535.0 * 255.0
    elif mode == "F" and lo >= 0.0 and hi <= 1.0:
        arr = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        arr = arr / 65535.0 * 255.0
    else:
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


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
            return open_reduced(im, f"image {path}")
    except InputError:
        raise
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


# ---------------------------------------------------------------------------------------------------------------
# pixel preprocessing in two halves
# ---------------------------------------------------------------------------------------------------------------

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(1,3,1,1) fp32 constants on ``device``, made once (no host-to-device copy per batch)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1))


@dataclass(frozen=True)
class PixelSpec:
    """A backbone's image preprocessing: shorter side → ``size`` (the longer side scaled and truncated, as
    torchvision's ``Resize(int)`` and Hugging Face's CLIP processor do), centre crop ``crop`` = (height, width),
    then ``(pixel - mean) / std`` per channel on the 0..255 scale.

    Split in two halves so that the expensive, CPU-only half (decode, resize, crop: :meth:`to_uint8`) can run in
    loader worker processes and travel as compact ``uint8`` (a quarter of the float32 bytes, good for pinned
    host-to-GPU copies), while :meth:`normalize` runs on the tower's device and dtype. Small, frozen and picklable.

    ``crop_offset`` picks how an odd crop margin is split: ``"floor"`` (``(n - crop) // 2``: Hugging Face,
    torchvision) or ``"round"`` (``round((n - crop) / 2)``, half to even: the mini backbone's convention).
    """

    size: int
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bicubic"
    crop_offset: str = "floor"

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise InputError(f"PixelSpec.resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if self.crop_offset not in ("floor", "round"):
            raise InputError(f"PixelSpec.crop_offset must be 'floor' or 'round', got {self.crop_offset!r}")
        if int(self.size) < 1 or min(self.crop) < 1 or len(self.mean) != 3 or len(self.std) != 3:
            raise InputError(f"invalid PixelSpec {self}")

    def resize_crop(self, image: Image.Image) -> Image.Image:
        """RGB PIL image → resized and centre-cropped PIL image of ``crop`` size."""
        w, h = image.size
        if w <= 0 or h <= 0:
            raise InputError(f"image has an empty size {w}x{h}")
        s = int(self.size)
        nw, nh = (s, max(s, int(s * h / w))) if w <= h else (max(s, int(s * w / h)), s)
        ch, cw = self.crop
        if self.crop_offset == "floor":
            left, top = (nw - cw) // 2, (nh - ch) // 2
        else:
            left, top = int(round((nw - cw) / 2.0)), int(round((nh - ch) / 2.0))
        if nw * nh > 4 * cw * ch and left >= 0 and top >= 0:
            # an elongated image: resample only the source region that the crop keeps (same sampling grid as
            # resize-then-crop, so the same pixels up to rounding) instead of a resized image mostly thrown away
            sx, sy = w / nw, h / nh
            box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
            return image.resize((cw, ch), _RESAMPLE[self.resample], box=box)
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), _RESAMPLE[self.resample])
        if (left, top, nw, nh) != (0, 0, cw, ch):
            image = image.crop((left, top, left + cw, top + ch))
        return image

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image → (3, crop_h, crop_w) ``uint8`` tensor (RGB via :func:`to_rgb`, resized, cropped)."""
        arr = np.asarray(self.resize_crop(to_rgb(image)), dtype=np.uint8)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def normalize(self, pixels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B,3,H,W) ``uint8`` (any device) → (B,3,H,W) normalised pixels in ``dtype``; the arithmetic is fp32."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise InputError(f"pixel batch must have shape (B,3,H,W), got {tuple(pixels.shape)}")
        mean, std = _mean_std(self.mean, self.std, pixels.device)
        return ((pixels.float() - mean) / std).to(dtype)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Both halves on the CPU: PIL images → (B,3,H,W) float32."""
        if not images:
            return torch.zeros(0, 3, *self.crop)
        return self.normalize(torch.stack([self.to_uint8(im) for im in images]))
