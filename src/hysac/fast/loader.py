"""Parallel image loading: decode, resize and crop in worker processes into ``uint8`` chunks, pinned on the way
to the GPU.

The expensive, CPU-only half of image preprocessing (JPEG/PNG decoding, resizing, cropping:
:meth:`~hysac.images.PixelSpec.to_uint8`) runs in a **persistent pool** of worker processes; each task turns a
*chunk* of files into a (c,3,H,W) ``uint8`` tensor that comes back through shared memory. The consumer
(:func:`pixel_batches`) keeps ``prefetch`` chunks per worker in flight, pins each chunk, copies it into a device
buffer with a ``non_blocking`` copy and hands out full model batches, so decoding of the next chunks overlaps the
model's work. Normalisation (``PixelSpec.normalize``) happens on the device, in the tower's dtype.

The pool is started once per process (forked, like torch's DataLoader workers; the children never touch CUDA)
and reused by every later call, so many small calls (one per index batch, say) pay no start-up cost. Reader → mapper split as in the
rest of the library: :func:`decode_chunk` reads, :func:`pixel_batches` runs. A bad item raises
:class:`~hysac.errors.InputError` naming it (the message :func:`hysac.images.load_image` gives); nothing is
half-returned.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
from collections import deque
from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..errors import InputError
from ..images import ImageLike, PixelSpec, load_image

__all__ = ["decode_chunk", "decode_uint8", "default_workers", "pixel_batches", "shutdown_pools"]

#: images decoded per worker task (small, so that a few hundred images still spread over all workers)
CHUNK = 32
#: seconds one chunk may take before the pool is considered broken (a worker killed by the OS, say)
CHUNK_TIMEOUT = 600.0

_POOLS: dict[tuple[int, int], "multiprocessing.pool.Pool"] = {}


def default_workers() -> int:
    """Loader processes by default: one per CPU (at most 16), leaving one for the main process."""
    return max(0, min(16, (os.cpu_count() or 1) - 1))


def decode_chunk(start: int, items: Sequence[ImageLike], spec: PixelSpec) -> tuple[Tensor, Tensor, list]:
    """``items`` (paths or PIL images) → ``(indices, pixels, errors)``: input indices (``start`` + position) of the
    decoded images, their (c,3,H,W) ``uint8`` pixels, and ``(index, message)`` for the items that failed."""
    idx, px, errors = [], [], []
    for j, item in enumerate(items):
        try:
            px.append(spec.to_uint8(load_image(item)))
            idx.append(start + j)
        except InputError as e:
            errors.append((start + j, str(e)))
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input, reported by name
            errors.append((start + j, f"cannot read image {item!r}: {type(e).__name__}: {e}"))
    pixels = torch.stack(px) if px else torch.zeros(0, 3, *spec.crop, dtype=torch.uint8)
    return torch.tensor(idx, dtype=torch.long), pixels, errors


def _pool(workers: int):
    key = (os.getpid(), workers)  # a forked child of this process must not use the parent's pool
    pool = _POOLS.get(key)
    if pool is None:
        import torch.multiprocessing as tmp

        # fork (Linux), as torch's DataLoader: no re-import of the caller's __main__ (scripts need no main guard)
        # and no start-up imports; the children only decode images and never touch CUDA
        methods = multiprocessing.get_all_start_methods()
        ctx = tmp.get_context("fork" if "fork" in methods else "spawn")
        pool = ctx.Pool(workers, initializer=_worker_init)
        _POOLS[key] = pool
    return pool


def _worker_init() -> None:
    torch.set_num_threads(1)  # decoding is per process; no thread pools fighting over the cores


def shutdown_pools() -> None:
    """Stop this process's loader processes (they are started again on demand)."""
    for key in [k for k in _POOLS if k[0] == os.getpid()]:
        pool = _POOLS.pop(key)
        pool.terminate()
        pool.join()


atexit.register(shutdown_pools)


def _chunks_local(items: Sequence[ImageLike], spec: PixelSpec, chunk: int) -> Iterator[tuple[Tensor, Tensor, list]]:
    for s in range(0, len(items), chunk):
        yield decode_chunk(s, items[s:s + chunk], spec)


def _chunks_pool(items: Sequence[ImageLike], spec: PixelSpec, chunk: int, workers: int,
                 prefetch: int) -> Iterator[tuple[Tensor, Tensor, list]]:
    pool = _pool(workers)
    starts = iter(range(0, len(items), chunk))
    inflight: deque = deque()
    window = max(1, workers * prefetch)

    def submit() -> None:
        s = next(starts, None)
        if s is not None:
            inflight.append(pool.apply_async(decode_chunk, (s, list(items[s:s + chunk]), spec)))

    for _ in range(window):
        submit()
    while inflight:
        res = inflight.popleft()
        try:
            out = res.get(timeout=CHUNK_TIMEOUT)
        except multiprocessing.TimeoutError:
            shutdown_pools()
            raise RuntimeError(f"image loader: a chunk took over {CHUNK_TIMEOUT:.0f} s (a worker died?); "
                               "the loader processes were restarted") from None
        submit()
        yield out


def _decoded_chunks(items: Sequence[ImageLike], spec: PixelSpec, chunk: int, workers: int,
                    prefetch: int) -> Iterator[tuple[Tensor, Tensor]]:
    """(indices, uint8 pixels) per chunk, in input order, from the pool (``workers`` > 0) or this process; the
    first bad item raises :class:`InputError` naming it."""
    parts = _chunks_pool(items, spec, chunk, workers, prefetch) if workers else _chunks_local(items, spec, chunk)
    for indices, pixels, errors in parts:
        if errors:
            i, msg = errors[0]
            more = f" (and {len(errors) - 1} more in the same chunk)" if len(errors) > 1 else ""
            raise InputError(f"image #{i}: {msg}{more}")
        yield indices, pixels


def decode_uint8(items: Sequence[ImageLike], spec: PixelSpec, *, workers: int = 0, chunk: int = 8) -> Tensor:
    """All ``items`` as one (N,3,H,W) ``uint8`` CPU tensor in input order, decoded in ``workers`` loader processes
    (0: here). A bad item raises :class:`InputError` naming it."""
    n = len(items)
    if n == 0:
        return torch.zeros(0, 3, *spec.crop, dtype=torch.uint8)
    chunk = max(1, min(int(chunk), math.ceil(n / max(1, workers))))
    workers = workers if n > chunk else 0
    return torch.cat([px for _, px in _decoded_chunks(items, spec, chunk, workers, prefetch=2)])


def pixel_batches(items: Sequence[ImageLike], spec: PixelSpec, *, device: torch.device | str = "cpu",
                  batch_size: int = 256, workers: int | None = None, pin_memory: bool | None = None,
                  dtype: torch.dtype = torch.float32, chunk: int = CHUNK,
                  prefetch: int = 4) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(indices, pixels)``: input indices (b,) and normalised pixels (b,3,H,W) in ``dtype`` on ``device``,
    ``batch_size`` images at a time (the last batch may be smaller), in input order.

    ``workers``: loader processes (default :func:`default_workers`; 0 decodes in this process, as do inputs that
    fit in one chunk and in-memory PIL images, which would only be copied to the workers). ``pin_memory``:
    page-locked chunks and asynchronous copies (default: when ``device`` is CUDA). ``prefetch``: chunks in flight
    per worker. A bad item raises :class:`InputError` naming it."""
    device = torch.device(device)
    n = len(items)
    if n == 0:
        return
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise InputError(f"workers must be >= 0, got {workers}")
    pin = device.type == "cuda" if pin_memory is None else bool(pin_memory and torch.cuda.is_available())
    chunk = max(1, min(int(chunk), batch_size, math.ceil(n / max(1, workers))))
    if n <= chunk or all(hasattr(it, "mode") for it in items):
        workers = 0
    buf = torch.empty(batch_size, 3, *spec.crop, dtype=torch.uint8, device=device)
    idx: list[Tensor] = []
    filled = 0
    for indices, pixels in _decoded_chunks(items, spec, chunk, workers, prefetch):
        if pin:
            pixels = pixels.pin_memory()
        pos, c = 0, int(pixels.shape[0])
        while pos < c:
            take = min(batch_size - filled, c - pos)
            buf[filled:filled + take].copy_(pixels[pos:pos + take], non_blocking=pin)
            idx.append(indices[pos:pos + take])
            filled += take
            pos += take
            if filled == batch_size:
                yield torch.cat(idx), spec.normalize(buf, dtype)
                idx, filled = [], 0
    if filled:
        yield torch.cat(idx), spec.normalize(buf[:filled], dtype)
