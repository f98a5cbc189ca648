"""How a model encodes: the one path behind :meth:`HySAC.encode_text <hysac.model.HySAC.encode_text>` and
:meth:`~hysac.model.HySAC.encode_image`.

Texts are tokenised once, **sorted by token length**, encoded in length-homogeneous batches (each padded only to
its own longest text) and returned in input order; padding is masked out, so sorting changes only float summation
order. Images are preprocessed a batch at a time (optionally the next batch in a background thread while the
tower runs). Everything runs under :func:`torch.inference_mode` on the model's device and returns ordinary fp32
CPU tensors.

A model holds one :class:`EncodeRuntime` (``model.runtime``), chosen at construction (this plain one) or by a fast
path (:func:`hysac.fast.optimize` installs a tuned one: batch caps, autocast, prefetching, a GPU image loader).
The runtime never replaces the model's methods: the methods call it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from .feature_cache import FeatureStore
    from .model import HySAC

__all__ = ["EncodeRuntime", "Collector", "check_batch_size", "check_pixels", "image_items", "encode_texts_sorted",
           "encode_images_chunked", "progress_bar"]


def check_batch_size(batch_size: Any) -> int:
    """A positive integer batch size, else :class:`InputError`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, float)) or int(batch_size) != batch_size \
            or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def progress_bar(progress: bool, total: int, what: str):
    """A tqdm bar over ``total`` items when ``progress``, else None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"encoding {what}", unit=what[:-1])


class Collector:
    """Per-batch outputs kept on their device and copied to the CPU in groups of ``flush_every`` batches, so that
    the host never waits for the accelerator after each batch (and can prepare the next one meanwhile)."""

    def __init__(self, flush_every: int = 64) -> None:
        self.flush_every = int(flush_every)
        self.pending: list[Tensor] = []
        self.host: list[Tensor] = []

    def add(self, x: Tensor) -> None:
        self.pending.append(x)
        if len(self.pending) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.host.append(torch.cat(self.pending).cpu())
            self.pending = []

    def result(self) -> Tensor:
        """All outputs, concatenated, on the CPU. Called outside ``inference_mode``: an ordinary tensor."""
        self._flush()
        return torch.cat(self.host)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return (lambda: torch.autocast(device.type, dtype=dtype)) if dtype is not None else nullcontext


def encode_texts_sorted(model: "HySAC", texts: Sequence[str], *, batch_size: int, project: bool = True,
                        progress: bool = False, autocast: torch.dtype | None = None, base: bool = False) -> Tensor:
    """(N,) strings → (N,D) fp32 CPU points (``project=False``: tower features; ``base=True``: the base features
    before the heads, :meth:`Backbone.text_base_features`), in input order, encoded in length-sorted batches of at
    most ``batch_size`` (:meth:`Backbone.length_sorted_batches`). ``autocast``: run the towers under
    ``torch.autocast`` in that dtype (the lift stays fp32)."""
    batch_size = check_batch_size(batch_size)
    bb, device = model.backbone, model.device
    if not texts:
        return torch.zeros(0, _base_dim(bb, "text") if base else model.embed_dim)
    features = bb.text_base_features if base else bb.text_features
    order, batches = bb.length_sorted_batches(texts, batch_size)
    bar = progress_bar(progress, len(texts), "texts")
    ctx = _autocast(device, autocast)
    out = Collector()
    try:
        with torch.inference_mode():
            for tok in batches:
                mask = tok.get("attention_mask")
                with ctx():
                    feats = features(tok["input_ids"].to(device, non_blocking=True),
                                     None if mask is None else mask.to(device, non_blocking=True))
                feats = feats.float()
                out.add(model.lift_text(feats) if project and not base else feats)
                if bar is not None:
                    bar.update(int(tok["input_ids"].shape[0]))
    finally:
        if bar is not None:
            bar.close()  # also when an input fails: an error message then starts on its own line
    stacked = out.result()
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return stacked.index_select(0, inverse)


def encode_token_ids(model: "HySAC", input_ids: Tensor, *, batch_size: int, project: bool = True) -> Tensor:
    """(B,L) token ids (already padded) → (B,D), in chunks of ``batch_size``."""
    if input_ids.dim() != 2 or input_ids.is_floating_point():
        raise InputError(f"token ids must be an integer tensor (B,L), got {input_ids.dtype} "
                         f"{tuple(input_ids.shape)}")
    batch_size = check_batch_size(batch_size)
    if input_ids.shape[0] == 0:
        return torch.zeros(0, model.embed_dim)
    out = []
    with torch.inference_mode():
        for i in range(0, input_ids.shape[0], batch_size):
            feats = model.backbone.text_features(input_ids[i:i + batch_size].to(model.device)).float()
            out.append((model.lift_text(feats) if project else feats).cpu())
    return torch.cat(out)


def check_pixels(images: Tensor) -> Tensor:
    """A preprocessed (B,3,H,W) pixel tensor with finite values, else :class:`InputError`."""
    from . import lorentz as L

    if images.dim() != 4 or images.shape[1] != 3:
        raise InputError(f"pixel tensor must have shape (B,3,H,W), got {tuple(images.shape)}")
    return L.check_finite(images, "pixel tensor")


def image_items(images: Any) -> list:
    """One path / PIL image, or a sequence of them → a list."""
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "mode"):
        return [images]
    return list(images)


def _pixel_batches(model: "HySAC", images: Any, batch_size: int, prefetch: bool) -> tuple[int, Iterable[Tensor]]:
    from .images import load_image

    if isinstance(images, Tensor):
        n = int(check_pixels(images).shape[0])
        return n, (images[i:i + batch_size] for i in range(0, n, batch_size))
    items = image_items(images)

    def prep(i: int) -> Tensor:
        return model.backbone.preprocess_images([load_image(s) for s in items[i:i + batch_size]])

    starts = range(0, len(items), batch_size)
    return len(items), (_prefetched(prep, starts) if prefetch and len(items) > batch_size else map(prep, starts))


def encode_images_chunked(model: "HySAC", images: Any, *, batch_size: int, project: bool = True,
                          progress: bool = False, prefetch: bool = False,
                          autocast: torch.dtype | None = None, base: bool = False) -> Tensor:
    """PIL images, file paths or a (B,3,H,W) pixel tensor → (B,D) fp32 CPU points, ``batch_size`` at a time
    (``base=True``: the base features before the heads). ``prefetch``: decode and preprocess the next batch in a
    background thread while the tower runs (same pixels, same order). Unreadable files → :class:`InputError`
    naming them."""
    batch_size = check_batch_size(batch_size)
    n, batches = _pixel_batches(model, images, batch_size, prefetch)
    if n == 0:
        return torch.zeros(0, _base_dim(model.backbone, "image") if base else model.embed_dim)
    features = model.backbone.image_base_features if base else model.backbone.image_features
    device = model.device
    ctx = _autocast(device, autocast)
    bar = progress_bar(progress, n, "images")
    out = Collector()
    try:
        with torch.inference_mode():
            for px in batches:
                with ctx():
                    feats = features(px.to(device))
                feats = feats.float()
                out.add(model.lift_image(feats) if project and not base else feats)
                if bar is not None:
                    bar.update(int(px.shape[0]))
    finally:
        if bar is not None:
            bar.close()
    return out.result()


def _base_dim(backbone: Any, modality: str) -> int:
    return int(backbone.base_dim(modality))


def _prefetched(fn: Callable[[int], Tensor], starts: Iterable[int]) -> Iterator[Tensor]:
    """fn(start) for each start, computing the next one in a worker thread while the caller uses the current."""
    starts = list(starts)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hysac-prefetch") as pool:
        pending = pool.submit(fn, starts[0])
        try:
            for nxt in starts[1:]:
                current = pending.result()
                pending = pool.submit(fn, nxt)
                yield current
            yield pending.result()
        finally:
            pending.cancel()


class EncodeRuntime:
    """How a model's encode methods run. The plain runtime: length-sorted text batches of ``text_batch``
    (a caller's larger batch size is capped at ``max_text_batch`` when set: a batch size is a memory bound, not a
    request for padding), image batches of ``image_batch``, optional image prefetching and autocast.

    ``path`` names the runtime (``"plain"``, ``"cpu"``, ``"gpu"``); ``info`` records what a fast path changed
    (:func:`hysac.fast.describe`); ``decodes_files``: :meth:`encode_image` decodes file paths itself in parallel
    loader processes, so callers holding paths should pass them as they are."""

    path = "plain"
    decodes_files = False

    def __init__(self, *, text_batch: int = 256, image_batch: int = 32, max_text_batch: int | None = None,
                 autocast: torch.dtype | None = None, image_prefetch: bool = False,
                 info: dict[str, Any] | None = None) -> None:
        self.text_batch = check_batch_size(text_batch)
        self.image_batch = check_batch_size(image_batch)
        self.max_text_batch = None if max_text_batch is None else check_batch_size(max_text_batch)
        self.autocast = autocast
        self.image_prefetch = bool(image_prefetch)
        self.info = info
        #: base-feature caches by modality (:meth:`with_cache`); None: every call encodes
        self.cache: dict[str, FeatureStore] | None = None

    def with_cache(self, model: "HySAC", cache_dir: str | os.PathLike | None = None) -> "EncodeRuntime":
        """A copy of this runtime that keeps the base features it computes (in memory; also in ``cache_dir`` when
        given and the towers have a stable :func:`~hysac.feature_cache.tower_key`) and encodes from them: base
        features → heads → lift, the same computation as the towers' own :meth:`Backbone.text_features` /
        :meth:`~Backbone.image_features`. For a model whose weights no longer change (evaluation, reports)."""
        import copy

        from .feature_cache import FeatureStore, tower_key

        out = copy.copy(self)
        key = tower_key(model.backbone) if cache_dir is not None else None
        folder = None if key is None or cache_dir is None else Path(cache_dir)
        out.cache = {mod: FeatureStore(None if folder is None else folder / f"{key}-{mod}.pt")
                     for mod in ("text", "image")}
        return out

    def flush_cache(self) -> None:
        """Write the disk caches of :meth:`with_cache` (no-op without them)."""
        for store in (self.cache or {}).values():
            store.flush()

    def base_features(self, model: "HySAC", items: Any, modality: str, *, batch_size: int | None = None,
                      progress: bool = False) -> Tensor:
        """(N, base dim) base features of texts (``modality="text"``) or images, through the cache when on."""
        def compute(todo: Any) -> Tensor:
            if modality == "text":
                return encode_texts_sorted(model, todo, batch_size=self._text_batch(batch_size), progress=progress,
                                           autocast=self.autocast, base=True)
            return encode_images_chunked(model, todo, batch_size=self.image_batch if batch_size is None else
                                         batch_size, progress=progress, prefetch=self.image_prefetch,
                                         autocast=self.autocast, base=True)

        store = None if self.cache is None else self.cache[modality]
        if store is None or isinstance(items, Tensor):
            return compute(items)
        items = list(items)
        if not all(isinstance(x, (str, os.PathLike)) for x in items):  # PIL images: nothing stable to key them by
            return compute(items)
        keys = [store.item_key(str(x), modality == "image") for x in items]
        found: list[Tensor | None] = store.lookup(keys)
        miss = [i for i, f in enumerate(found) if f is None]
        if miss:
            fresh = compute([items[i] for i in miss])
            store.add([keys[i] for i in miss], fresh)
            for j, i in enumerate(miss):
                found[i] = fresh[j]
        if not found:
            return torch.zeros(0, _base_dim(model.backbone, modality))
        return torch.stack(found)  # type: ignore[arg-type]

    def _from_base(self, model: "HySAC", base: Tensor, modality: str, project: bool) -> Tensor:
        head = model.backbone.head_text if modality == "text" else model.backbone.head_image
        lift = model.lift_text if modality == "text" else model.lift_image
        out = []
        with torch.inference_mode():
            for i in range(0, base.shape[0], 4096):
                feats = head(base[i:i + 4096].to(model.device)).float()
                out.append((lift(feats) if project else feats).cpu())
        return torch.cat(out) if out else torch.zeros(0, model.embed_dim)

    def _text_batch(self, batch_size: int | None) -> int:
        batch = check_batch_size(batch_size) if batch_size is not None else self.text_batch
        return min(batch, self.max_text_batch) if self.max_text_batch is not None else batch

    def describe(self) -> dict[str, Any] | None:
        """``{"path": ..., **info}`` for a fast path, None for the plain runtime."""
        return None if self.info is None else {"path": self.path, **self.info}

    def encode_text(self, model: "HySAC", texts: Sequence[str], *, batch_size: int | None = None,
                    project: bool = True, progress: bool = False) -> Tensor:
        if self.cache is not None:
            base = self.base_features(model, texts, "text", batch_size=batch_size, progress=progress)
            return self._from_base(model, base, "text", project)
        return encode_texts_sorted(model, texts, batch_size=self._text_batch(batch_size), project=project,
                                   progress=progress, autocast=self.autocast)

    def encode_image(self, model: "HySAC", images: Any, *, batch_size: int | None = None, project: bool = True,
                     progress: bool = False) -> Tensor:
        if self.cache is not None:
            base = self.base_features(model, images, "image", batch_size=batch_size, progress=progress)
            return self._from_base(model, base, "image", project)
        return encode_images_chunked(model, images,
                                     batch_size=self.image_batch if batch_size is None else batch_size, project=project,
                                     progress=progress, prefetch=self.image_prefetch, autocast=self.autocast)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={self.path!r}, text_batch={self.text_batch}, " \
               f"image_batch={self.image_batch})"
