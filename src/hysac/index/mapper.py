"""Stage 2 — encode a batch of :class:`~hysac.index.reader.Item` with the model.

The output, :class:`EncodedBatch`, holds for every item that could be encoded its hyperbolic point (space
components), its safety score (distance from the origin), its unsafe flag (``score > model.unsafe_threshold``
of the item's modality) and the category probabilities (or ``None`` when the model has no category head).

A bad item never kills the batch: an empty text, an image that is missing, unreadable or corrupt, or an item
whose embedding is not finite becomes an :class:`ItemError` and is left out; the rest of the batch is encoded.
Images are decoded here with Pillow (in chunks of ``image_batch_size``, so a batch of large photos never sits in
memory at once) and handed to ``model.encode_image`` as RGB ``PIL.Image`` objects. If the model still raises
:class:`~hysac.errors.InputError` for a chunk, the chunk is retried one item at a time to find the culprit.

The model protocol used here: ``embed_dim``, ``curvature``, ``encode_text(list[str], batch_size=)``,
``encode_image(list[PIL.Image | path], batch_size=)``, ``score(x)``, ``unsafe_threshold(modality)`` and
``categorize(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..policy import over_threshold
from ..safety import CATEGORIES, MODALITIES
from .reader import Item

__all__ = ["ItemError", "EncodedBatch", "Mapper", "load_image"]


@dataclass
class ItemError:
    """An item that could not be indexed, and why (one line)."""

    key: str
    modality: str
    content: str
    error: str
    stage: str = "encode"  # "read" (decode/validate) or "encode" (the model refused it)

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "modality": self.modality, "content": self.content, "stage": self.stage,
                "error": self.error}


@dataclass
class EncodedBatch:
    """Encoded items (same order as ``items``) plus the items that failed."""

    items: list[Item]
    embeddings: np.ndarray  # (n, D) float32 space components
    scores: np.ndarray  # (n,) float64 distance from the origin
    unsafe: np.ndarray  # (n,) bool
    categories: np.ndarray | None  # (n, len(CATEGORIES)) float32 or None
    errors: list[ItemError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def empty(cls, dim: int, errors: list[ItemError] | None = None) -> "EncodedBatch":
        return cls([], np.zeros((0, dim), np.float32), np.zeros(0), np.zeros(0, bool), None, list(errors or []))

    def category_dicts(self) -> list[dict[str, float] | None]:
        if self.categories is None:
            return [None] * len(self.items)
        return [{name: float(p) for name, p in zip(CATEGORIES, row)} for row in self.categories]


def load_image(path: str):
    """Decode an image file into an RGB ``PIL.Image``. Raises InputError naming it.

    Uses :func:`hysac.images.load_image` (EXIF orientation, the project's RGB conversion) so that an indexed image
    is decoded exactly like an image query; falls back to a plain Pillow decode if that module is unavailable.
    """
    try:
        from ..images import load_image as _project_load_image
    except ImportError:  # pragma: no cover - the images module is part of the package
        _project_load_image = None
    if _project_load_image is not None:
        return _project_load_image(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise InputError(f"not a readable image (corrupt or unknown format): {path}") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"cannot decode image {path}: {msg}") from None


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


class Mapper:
    """Encode batches of items with ``model``. Callable: ``mapper(items) -> EncodedBatch``."""

    def __init__(self, model: Any, *, text_batch_size: int = 256, image_batch_size: int = 32):
        self.model = model
        self.dim = int(model.embed_dim)
        self.text_batch_size = max(1, int(text_batch_size))
        self.image_batch_size = max(1, int(image_batch_size))
        #: a model on the GPU fast path decodes files in its own loader processes: give it paths, whole batches
        from ..fast import decodes_files

        self.decode_in_model = decodes_files(model)
        if self.decode_in_model:
            self.image_batch_size = max(self.image_batch_size, self.text_batch_size)
        self._thresholds: dict[str, float | None] = {}

    def threshold(self, modality: str) -> float | None:
        """The model's unsafe threshold for ``modality``, or None when it has none (no fitted bounds): the items
        are then stored with ``unsafe = False``; the searcher decides again at query time anyway."""
        if modality not in self._thresholds:
            try:
                self._thresholds[modality] = float(self.model.unsafe_threshold(modality))
            except InputError:
                self._thresholds[modality] = None
        return self._thresholds[modality]

    # -- encoding with per-item isolation ---------------------------------------------------------------------
    def _encode_isolated(
        self, items: Sequence[Item], payloads: Sequence[Any], encode: Callable[[list[Any]], Any]
    ) -> tuple[list[Item], list[np.ndarray], list[ItemError]]:
        """Encode ``payloads`` at once; on InputError, one at a time to isolate the bad ones."""
        try:
            emb = _to_numpy(encode(list(payloads)))
            return list(items), [emb], []
        except InputError:
            if len(items) == 1:
                raise
        ok_items: list[Item] = []
        embs: list[np.ndarray] = []
        errors: list[ItemError] = []
        for it, p in zip(items, payloads):
            try:
                embs.append(_to_numpy(encode([p])))
                ok_items.append(it)
            except InputError as e:
                errors.append(ItemError(it.key, it.modality, it.content, str(e), "encode"))
        return ok_items, embs, errors

    def _encode_texts(self, items: list[Item]) -> tuple[list[Item], list[np.ndarray], list[ItemError]]:
        ok, texts, errors = [], [], []
        for it in items:
            if not it.content.strip():
                errors.append(ItemError(it.key, it.modality, it.content, "empty text", "read"))
            else:
                ok.append(it)
                texts.append(it.content)
        if not ok:
            return [], [], errors
        enc = lambda xs: self.model.encode_text(xs, batch_size=self.text_batch_size)  # noqa: E731
        out_items, embs, enc_errors = [], [], []
        for start in range(0, len(ok), self.text_batch_size):
            try:
                a, b, c = self._encode_isolated(
                    ok[start : start + self.text_batch_size], texts[start : start + self.text_batch_size], enc
                )
            except InputError as e:  # a single-item chunk that failed
                it = ok[start]
                a, b, c = [], [], [ItemError(it.key, it.modality, it.content, str(e), "encode")]
            out_items += a
            embs += b
            enc_errors += c
        return out_items, embs, errors + enc_errors

    def _encode_images(self, items: list[Item]) -> tuple[list[Item], list[np.ndarray], list[ItemError]]:
        out_items: list[Item] = []
        embs: list[np.ndarray] = []
        errors: list[ItemError] = []
        enc = lambda xs: self.model.encode_image(xs, batch_size=self.image_batch_size)  # noqa: E731
        for start in range(0, len(items), self.image_batch_size):
            chunk = items[start : start + self.image_batch_size]
            if self.decode_in_model:
                named = [it for it in chunk if it.content]
                try:
                    emb = _to_numpy(enc([it.content for it in named])) if named else None
                except InputError:
                    pass  # a bad file: decode here, item by item, so that each failure is named and staged
                else:
                    errors += [ItemError(it.key, it.modality, it.content, "empty image path", "read")
                               for it in chunk if not it.content]
                    if emb is not None:
                        out_items += named
                        embs.append(emb)
                    continue
            ok, images = [], []
            for it in chunk:
                if not it.content:
                    errors.append(ItemError(it.key, it.modality, it.content, "empty image path", "read"))
                    continue
                try:
                    images.append(load_image(it.content))
                    ok.append(it)
                except InputError as e:
                    errors.append(ItemError(it.key, it.modality, it.content, str(e), "read"))
            if not ok:
                continue
            try:
                a, b, c = self._encode_isolated(ok, images, enc)
            except InputError as e:
                it = ok[0]
                a, b, c = [], [], [ItemError(it.key, it.modality, it.content, str(e), "encode")]
            out_items += a
            embs += b
            errors += c
            del images
        return out_items, embs, errors

    # -- public ---------------------------------------------------------------------------------------------
    def __call__(self, items: Sequence[Item]) -> EncodedBatch:
        items = list(items)
        texts = [it for it in items if it.modality == "text"]
        images = [it for it in items if it.modality == "image"]
        others = [it for it in items if it.modality not in MODALITIES]
        errors = [ItemError(it.key, it.modality, it.content, f"unknown modality {it.modality!r}", "read")
                  for it in others]
        t_items, t_embs, t_err = self._encode_texts(texts) if texts else ([], [], [])
        i_items, i_embs, i_err = self._encode_images(images) if images else ([], [], [])
        errors += t_err + i_err
        got = t_items + i_items
        if not got:
            return EncodedBatch.empty(self.dim, errors)
        emb = np.concatenate(t_embs + i_embs, axis=0).astype(np.float32, copy=False)
        if emb.shape != (len(got), self.dim):
            raise RuntimeError(
                f"model returned embeddings of shape {tuple(emb.shape)} for {len(got)} items; "
                f"expected ({len(got)}, {self.dim})"
            )
        # restore the input order
        pos = {id(it): i for i, it in enumerate(items)}
        order = np.argsort([pos[id(it)] for it in got], kind="stable")
        got = [got[i] for i in order]
        emb = np.ascontiguousarray(emb[order])
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            for i in np.flatnonzero(~finite):
                it = got[i]
                errors.append(ItemError(it.key, it.modality, it.content, "embedding is not finite (NaN/inf)",
                                        "encode"))
            got = [it for it, f in zip(got, finite) if f]
            emb = np.ascontiguousarray(emb[finite])
            if not got:
                return EncodedBatch.empty(self.dim, errors)
        x = torch.from_numpy(emb)
        scores = _to_numpy(self.model.score(x)).astype(np.float64).reshape(-1)
        thr = np.array([np.inf if (t := self.threshold(it.modality)) is None else t for it in got], dtype=np.float64)
        cats = self.model.categorize(x)
        categories = None
        if cats is not None:
            categories = _to_numpy(cats).reshape(len(got), -1)
            if categories.shape[1] != len(CATEGORIES):
                raise RuntimeError(
                    f"model.categorize returned {categories.shape[1]} columns; expected {len(CATEGORIES)}"
                )
        return EncodedBatch(got, emb, scores, over_threshold(scores, thr), categories, errors)
