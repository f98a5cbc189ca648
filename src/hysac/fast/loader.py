"""Parallel image loading: decode, resize and crop in worker processes into (pinned) ``uint8`` chunks.

The expensive, CPU-only half of image preprocessing (JPEG/PNG decoding, resizing, cropping) runs in
``torch.utils.data.DataLoader`` worker processes; each worker turns a *chunk* of files into a (c,3,H,W) ``uint8``
tensor, which the loader's pin thread copies into page-locked memory when the model is on a GPU. The consumer
(:func:`pixel_batches`) copies chunks into a device buffer with ``non_blocking`` copies and hands out full model
batches, so decoding of the next chunks overlaps the model's work and the GPU never waits for the host as long as
there are enough workers. Normalisation (``PixelSpec.normalize``) happens on the device, in the tower's dtype.

Reader → mapper split as in the rest of the library: :class:`DecodedImages` reads one item, :func:`collate_chunk`
assembles a chunk, :func:`pixel_batches` runs the loader. A bad item raises :class:`~hysac.errors.InputError`
naming it (the same message :func:`hysac.images.load_image` gives); nothing is half-returned.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from ..images import ImageLike, PixelSpec, load_image

__all__ = ["Chunk", "DecodedImages", "collate_chunk", "default_workers", "pixel_batches"]

#: images decoded per worker task (small, so that a few hundred images still spread over all workers)
CHUNK = 32


def default_workers() -> int:
    """Loader processes by default: one per CPU (at most 16), leaving one for the main process."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


class DecodedImages(torch.utils.data.Dataset):
    """``items[i]`` (file path or PIL image) → ``(i, uint8 (3,H,W) or None, error message or None)``."""

    def __init__(self, items: Sequence[ImageLike], spec: PixelSpec) -> None:
        self.items = list(items)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, self.spec.to_uint8(load_image(self.items[i])), None
        except InputError as e:
            return i, None, str(e)
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input, reported by name
            return i, None, f"cannot read image {self.items[i]!r}: {type(e).__name__}: {e}"


@dataclass
class Chunk:
    """Decoded images of one worker task: their input indices, pixels (c,3,H,W) ``uint8`` and the failures."""

    indices: Tensor
    pixels: Tensor
    errors: list[tuple[int, str]]

    def pin_memory(self) -> "Chunk":  # called by the DataLoader's pin thread
        return Chunk(self.indices.pin_memory(), self.pixels.pin_memory(), self.errors)


def collate_chunk(rows, crop: tuple[int, int] = (0, 0)) -> Chunk:
    good = [(i, px) for i, px, err in rows if err is None]
    errors = [(i, err) for i, _, err in rows if err is not None]
    pixels = torch.stack([px for _, px in good]) if good else torch.zeros(0, 3, *crop, dtype=torch.uint8)
    return Chunk(torch.tensor([i for i, _ in good], dtype=torch.long), pixels, errors)


class _Collate:  # picklable (workers started with spawn/forkserver need it)
    def __init__(self, crop: tuple[int, int]) -> None:
        self.crop = tuple(crop)

    def __call__(self, rows) -> Chunk:
        return collate_chunk(rows, self.crop)


def pixel_batches(items: Sequence[ImageLike], spec: PixelSpec, *, device: torch.device | str = "cpu",
                  batch_size: int = 256, workers: int | None = None, pin_memory: bool | None = None,
                  dtype: torch.dtype = torch.float32, chunk: int = CHUNK,
                  prefetch_factor: int = 4) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(indices, pixels)``: input indices (b,) and normalised pixels (b,3,H,W) in ``dtype`` on ``device``,
    ``batch_size`` images at a time (the last batch may be smaller), in input order.

    ``workers``: loader processes (default :func:`default_workers`; 0 decodes in this process, as do inputs that
    fit in one chunk). ``pin_memory``: page-locked chunks (default: when ``device`` is CUDA). A bad item raises
    :class:`InputError` naming it."""
    device = torch.device(device)
    n = len(items)
    if n == 0:
        return
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    pin = device.type == "cuda" if pin_memory is None else bool(pin_memory and torch.cuda.is_available())
    chunk = max(1, min(int(chunk), batch_size, math.ceil(n / max(1, workers))))
    if n <= chunk:
        workers = 0
    kw = {}
    if workers:
        kw.update(num_workers=workers, prefetch_factor=prefetch_factor)
    loader = torch.utils.data.DataLoader(DecodedImages(items, spec), batch_size=chunk, shuffle=False,
                                         collate_fn=_Collate(spec.crop), pin_memory=pin, **kw)
    buf = torch.empty(batch_size, 3, *spec.crop, dtype=torch.uint8, device=device)
    idx: list[Tensor] = []
    filled = 0
    for part in loader:
        if part.errors:
            i, msg = part.errors[0]
            more = f" (and {len(part.errors) - 1} more in the same chunk)" if len(part.errors) > 1 else ""
            raise InputError(f"image #{i}: {msg}{more}")
        pos = 0
        c = int(part.pixels.shape[0])
        while pos < c:
            take = min(batch_size - filled, c - pos)
            buf[filled:filled + take].copy_(part.pixels[pos:pos + take], non_blocking=pin)
            idx.append(part.indices[pos:pos + take])
            filled += take
            pos += take
            if filled == batch_size:
                yield torch.cat(idx), spec.normalize(buf, dtype)
                idx, filled = [], 0
    if filled:
        yield torch.cat(idx), spec.normalize(buf[:filled], dtype)
