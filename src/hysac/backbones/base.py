"""The backbone seam: one interface for every pair of image/text towers HySAC can sit on.

A backbone turns images and texts into Euclidean feature vectors of a common size ``embed_dim``; the HySAC model
scales them by ``exp(alpha)`` and lifts them onto the hyperboloid with ``exp_map0``. Each backbone owns its own
preprocessing (image transform, tokenizer), so the model never needs to know which towers it wraps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

if TYPE_CHECKING:  # pragma: no cover
    from ..images import PixelSpec


def check_texts(texts: str | Sequence[str]) -> list[str]:
    """One string or a sequence of strings → a list of strings; anything else → :class:`InputError` naming the
    offending item."""
    from ..errors import InputError

    if isinstance(texts, str):
        return [texts]
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InputError(f"text #{i} is {type(t).__name__}, not a string")
    return items


def bucketed_token_batches(tokenizer, texts: Sequence[str], batch_size: int,
                           max_length: int) -> "tuple[list[int], Iterator[dict[str, Tensor]]]":
    """Tokenise ``texts`` once (truncated to ``max_length``) and batch them by token length.

    Returns ``(order, batches)``: the text indices sorted by token count (stable), and an iterator of token dicts
    (``input_ids``, ``attention_mask``, both (b,L) long) for ``texts[order[0:batch_size]]``, ... each padded with
    the tokenizer's pad id to its own longest text — what ``tokenizer(group, padding=True)`` gives, without
    tokenising twice."""
    import numpy as np

    texts = list(texts)
    if not texts:
        return [], iter(())
    ids = tokenizer(texts, padding=False, truncation=True, max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable").tolist()
    pad_id = int(tokenizer.pad_token_id or 0)

    def gen() -> "Iterator[dict[str, Tensor]]":
        for s in range(0, len(order), batch_size):
            group = order[s:s + batch_size]
            width = int(lengths[group[-1]])  # sorted: the last is the longest
            input_ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(group), width), dtype=torch.long)
            for row, i in enumerate(group):
                n = int(lengths[i])
                input_ids[row, :n] = torch.as_tensor(ids[i], dtype=torch.long)
                attention_mask[row, :n] = 1
            yield {"input_ids": input_ids, "attention_mask": attention_mask}

    return order, gen()


class Backbone(nn.Module, ABC):
    """Image and text towers plus their preprocessing.

    Subclasses implement the four abstract methods and :meth:`config`. ``from_config(cfg)`` on the registry
    (:func:`hysac.backbones.build_backbone`) rebuilds the same backbone from that dict.
    """

    #: registry name ("clip", "mini")
    kind: str = ""
    #: size of the feature vectors returned by both towers
    embed_dim: int = 0

    @abstractmethod
    def preprocess_images(self, images: Sequence[Image.Image]) -> Tensor:
        """RGB PIL images → pixel tensor (B,3,H,W) in the tower's normalisation (float32, CPU)."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        """Strings → dict with at least ``input_ids`` (B,L) and ``attention_mask`` (B,L), CPU tensors."""

    @abstractmethod
    def image_features(self, pixel_values: Tensor) -> Tensor:
        """(B,3,H,W) → (B,embed_dim) Euclidean image features (not normalised)."""

    @abstractmethod
    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B,L) token ids (and optional mask) → (B,embed_dim) Euclidean text features (not normalised)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description from which the registry rebuilds this backbone (``kind`` included)."""

    def pixel_spec(self) -> "PixelSpec | None":
        """The image preprocessing as a :class:`~hysac.images.PixelSpec` (so it can run in loader workers as
        ``uint8`` and be normalised on the device), or ``None`` when :meth:`preprocess_images` cannot be split."""
        return None

    def towers(self) -> dict[str, nn.Module]:
        """The large pretrained towers by attribute name (what the fast paths cast, compile or checkpoint)."""
        return {}

    def cast_towers(self, dtype: torch.dtype) -> bool:
        """Cast the tower weights to ``dtype`` for inference if the backbone's feature code accepts that (returns
        True), else leave them and return False (callers then use autocast instead)."""
        return False

    def text_trainable_from(self) -> int | None:
        """Index of the first text-tower layer that trains (LoRA or unfrozen) when only the top of the tower does,
        so a trainer can cache the frozen trunk's token states; ``None`` otherwise (default)."""
        return None

    def merge_lora(self) -> None:
        """Fold LoRA adapters into the tower weights for inference (default: nothing to merge)."""

    def image_class_prototypes(self) -> "tuple[list[str], Tensor] | None":
        """Where images that the image tower is sure show one of its known object classes land, before the lift:
        ``(class names, (K, embed_dim) features)``, or ``None`` when the tower has no such classes. Used to
        calibrate the image threshold on everyday objects."""
        return None

    def text_directions(self, base_feats: Tensor) -> "Tensor | None":
        """(B, base dim) base text features → (B, embed_dim) unit vectors: the direction the text head gives them,
        for heads whose direction is fixed by the input (the polar head); ``None`` when the head learns its
        directions (default). Used by ``loss.semantic_anchor``."""
        return None

    def class_names(self) -> "list[list[str]] | None":
        """The image tower's object classes, each as its list of names (synonyms), in classifier order; ``None``
        when the tower has no such classes (default)."""
        return None

    def class_photo_features(self, classes: Tensor, generator: "torch.Generator | None" = None) -> Tensor:
        """(B,) class indices → (B, embed_dim) image features, before the lift, of *simulated photos* of those
        classes: classifier outputs as a real photo of the class gives them (the class and the classes the tower
        confuses it with, at a random confidence). Trains and measures "a photo of a <object>" retrieval without
        photos. Only for backbones whose :meth:`class_names` is not ``None``."""
        raise NotImplementedError(f"{type(self).__name__} has no object classes")

    def refresh_class_features(self) -> None:
        """Recompute what the backbone derives from its own text tower (e.g. the mini backbone's ConSE class-name
        features) after that tower changed, as training does to it. Called by the trainer every few steps, before
        every evaluation and before the thresholds are fitted. Default: nothing to refresh."""

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Tensors that a checkpoint of a model on this backbone must store (default: all of them)."""
        return self.state_dict()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")
