"""Caches of base features (the backbone's pretrained towers before their heads), shared by every caller of the
encode path that turns one on (:meth:`hysac.runtime.EncodeRuntime.with_cache`): evaluation, training reports.

Items are keyed by the SHA-1 of the text, or of ``path|size|mtime`` for image files; a disk file belongs to one
tower configuration *and* the weights of any tuned tower part (:func:`tower_key`), so two models share it only
when their base features are the same."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["FeatureStore", "tower_key"]


def tower_key(backbone: Any) -> str | None:
    """A name for the base features ``backbone`` computes: its configuration without the heads, plus a hash of the
    tower tensors it trains or tuned (LoRA adapters, unfrozen layers); None for a backbone without separate base
    towers (its features depend on everything)."""
    if not backbone.has_base_features:
        return None
    cfg = backbone.config()
    frozen = {k: v for k, v in cfg.items() if "head" not in k and k not in ("seed", "embed_dim")}
    h = hashlib.sha256(json.dumps(frozen, sort_keys=True, default=str).encode())
    from .errors import CheckpointError

    try:
        tuned = {k: v for k, v in backbone.trainable_state_dict().items() if "head" not in k}
    except CheckpointError:  # adapters merged into the tower: their weights are no longer separable
        return None
    for name in sorted(tuned):
        t = tuned[name].detach().float().cpu().contiguous()
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return "base-" + h.hexdigest()[:16]


class FeatureStore:
    """Cache of base features (one per tower configuration and modality): in memory, and on disk when ``path`` is
    given, so re-running an evaluation (or evaluating another model on the same towers) re-encodes nothing.

    Items are keyed by the SHA-1 of the text, or of ``path|size|mtime`` for images. ``torch.save`` of
    ``{"keys": [...], "feats": (N,D)}``; written atomically by :meth:`flush`.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = None if path is None else Path(path)
        self._index: dict[str, int] = {}
        self._feats: list[Tensor] = []
        self._dirty = False
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.is_file():
            try:
                data = torch.load(self.path, weights_only=True)
                feats = data["feats"]
                for i, k in enumerate(data["keys"]):
                    self._index[k] = i
                self._feats = [feats]
            except Exception as e:  # noqa: BLE001 - a corrupt cache is rebuilt, never fatal
                logger.warning("ignoring unreadable feature cache %s: %s", self.path, e)
                self._index, self._feats = {}, []

    @staticmethod
    def item_key(item: str, is_image: bool) -> str:
        import hashlib

        if is_image:
            try:
                st = os.stat(item)
                item = f"{os.path.abspath(item)}|{st.st_size}|{st.st_mtime_ns}"
            except OSError:
                pass
        return hashlib.sha1(item.encode("utf-8", "surrogatepass")).hexdigest()

    def lookup(self, keys: Sequence[str]) -> list[Tensor | None]:
        if not self._index:
            self.misses += len(keys)
            return [None] * len(keys)
        mat = torch.cat(self._feats) if len(self._feats) > 1 else self._feats[0]
        self._feats = [mat]
        out = [mat[self._index[k]] if k in self._index else None for k in keys]
        n_hit = sum(o is not None for o in out)
        self.hits += n_hit
        self.misses += len(keys) - n_hit
        return out

    def add(self, keys: Sequence[str], feats: Tensor) -> None:
        n = sum(f.shape[0] for f in self._feats)
        fresh = [(i, k) for i, k in enumerate(keys) if k not in self._index]
        if not fresh:
            return
        for j, (_, k) in enumerate(fresh):
            self._index[k] = n + j
        self._feats.append(feats[[i for i, _ in fresh]].detach().float().cpu())
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty or self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = sorted(self._index, key=self._index.__getitem__)
            mat = torch.cat(self._feats) if len(self._feats) > 1 else self._feats[0]
            tmp = self.path.with_suffix(".tmp")
            torch.save({"keys": keys, "feats": mat.contiguous()}, tmp)
            tmp.replace(self.path)
            self._dirty = False
        except OSError as e:  # a read-only cache folder only costs time
            logger.warning("cannot write feature cache %s: %s", self.path, e)
