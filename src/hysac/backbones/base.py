"""The backbone seam: one interface for every pair of image/text towers HySAC can sit on.

A backbone turns images and texts into Euclidean feature vectors of a common size ``embed_dim``; the HySAC model
scales them by ``exp(alpha)`` and lifts them onto the hyperboloid with ``exp_map0``. Each backbone owns its own
preprocessing (image transform, tokenizer), so the model never needs to know which towers it wraps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor, nn


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

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Tensors that a checkpoint of a model on this backbone must store (default: all of them)."""
        return self.state_dict()

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")
