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


def untruncated_token_counts(tokenizer, texts: Sequence[str]) -> list[int]:
    """Token counts of ``texts`` (special tokens included) without truncation, 256 texts per tokenizer call."""
    texts = check_texts(texts)
    out: list[int] = []
    for i in range(0, len(texts), 256):
        ids = tokenizer(texts[i:i + 256], padding=False, truncation=False, return_attention_mask=False,
                        return_token_type_ids=False, verbose=False)["input_ids"]
        out.extend(len(x) for x in ids)
    return out


class Backbone(nn.Module, ABC):
    """Image and text towers plus their preprocessing.

    Subclasses implement the four abstract methods and :meth:`config`. ``from_config(cfg)`` on the registry
    (:func:`hysac.backbones.build_backbone`) rebuilds the same backbone from that dict.
    """

    #: registry name ("clip", "mini")
    kind: str = ""
    #: size of the feature vectors returned by both towers
    embed_dim: int = 0
    #: True when each tower is a pretrained *base* (:meth:`text_base_features`, :meth:`image_base_features`)
    #: followed by a small trained head (:meth:`head_text`, :meth:`head_image`), so frozen base features can be
    #: cached and only the heads run per training step; False when the features come straight from the towers
    #: (then the base methods are the towers and the heads are the identity)
    has_base_features: bool = False

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

    # -- optional capabilities (every caller goes through these; defaults describe a plain pair of towers) ----------
    def text_base_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B,L) tokens → (B, base dim) features of the pretrained text tower before the head (default: the
        tower's features, :meth:`text_features`)."""
        return self.text_features(input_ids, attention_mask)

    def image_base_features(self, pixel_values: Tensor) -> Tensor:
        """(B,3,H,W) → (B, base dim) features of the pretrained image tower before the head (default:
        :meth:`image_features`)."""
        return self.image_features(pixel_values)

    def base_dim(self, modality: str) -> int:
        """Size of the ``"text"`` / ``"image"`` base features (default: ``embed_dim``, they are the features)."""
        return self.embed_dim

    def head_text(self, feats: Tensor) -> Tensor:
        """(B, base dim) :meth:`text_base_features` → (B, embed_dim) (default: the identity)."""
        return feats

    def head_image(self, feats: Tensor) -> Tensor:
        """(B, base dim) :meth:`image_base_features` → (B, embed_dim) (default: the identity)."""
        return feats

    def length_sorted_batches(self, texts: Sequence[str], batch_size: int) -> "tuple[list[int], Iterator[dict]]":
        """``(order, batches)``: the text indices sorted by token length (stable), and an iterator of token dicts
        (``input_ids``, ``attention_mask``) covering ``texts[order]`` ``batch_size`` at a time, each padded only
        to its own longest text (so little padding is computed). Default: tokenise once with :meth:`tokenize` to
        measure lengths and again per batch; backbones with a tokenizer override this to tokenise once
        (:func:`bucketed_token_batches`)."""
        texts = check_texts(texts)
        lengths: list[int] = []
        for i in range(0, len(texts), 1024):
            lengths.extend(self.tokenize(texts[i:i + 1024])["attention_mask"].sum(dim=1).tolist())
        order = sorted(range(len(texts)), key=lengths.__getitem__)

        def gen() -> "Iterator[dict[str, Tensor]]":
            for s in range(0, len(order), batch_size):
                yield self.tokenize([texts[i] for i in order[s:s + batch_size]])

        return order, gen()

    def max_text_tokens(self) -> int | None:
        """The most tokens the text tower reads of one text (special tokens included); a longer text is cut to its
        opening. Default: None (no limit known)."""
        return None

    def text_token_counts(self, texts: Sequence[str]) -> list[int] | None:
        """Tokens of each text before any cut (special tokens included), to compare with :meth:`max_text_tokens`.
        Default: None (the backbone cannot tell)."""
        return None

    @property
    def has_lora(self) -> bool:
        """True while the towers carry unmerged LoRA adapters (:meth:`merge_lora` folds them; default False)."""
        return False

    def engine_modules(self, fuse: bool = False) -> dict[str, nn.Module]:
        """Plain ``nn.Module`` s computing :meth:`text_base_features` (``"text"``: ``(input_ids, attention_mask)
        → (B, base dim)``) and :meth:`image_base_features` (``"image"``: ``pixel_values → (B, base dim)``) for
        the towers that are frozen, which an inference runtime (:mod:`hysac.fast`: ONNX export, reduced
        precision) may compile into a stand-in installed with :meth:`set_inference_engines`. ``fuse``: with
        inference-only rewrites applied (e.g. batch norm folded into convolutions). Default: none (``{}``)."""
        return {}

    def set_inference_engines(self, text: Any = None, image: Any = None) -> None:
        """Install stand-ins for :meth:`engine_modules` (``None`` removes one). A backbone without engine modules
        accepts only ``None``."""
        if text is not None or image is not None:
            from ..errors import InputError

            raise InputError(f"{type(self).__name__} takes no inference engines (it declares no engine_modules)")

    @property
    def inference_engines(self) -> dict[str, Any]:
        """The installed stand-ins by tower (``"text"``, ``"image"``); empty by default."""
        return {}

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

    def _hf_models(self, trainable_only: bool = False) -> "Iterator[tuple[str, Any]]":
        """``(tower name, outermost Hugging Face model)`` for each tower that holds one."""
        from transformers import PreTrainedModel

        for name, tower in self.towers().items():
            if trainable_only and not any(p.requires_grad for p in tower.parameters()):
                continue
            for module in tower.modules():
                if isinstance(module, PreTrainedModel):
                    yield name, module
                    break  # the outermost HF model sets it for its sub-modules

    def set_attention(self, attention: str) -> list[str]:
        """Switch every Hugging Face model among :meth:`towers` to ``attention`` (``"sdpa"``, ``"eager"``,
        ``"flash_attention_2"``; ``"keep"`` changes nothing); returns what each uses."""
        from ..errors import InputError

        used = []
        for _, module in self._hf_models():
            if attention != "keep":
                try:
                    module.set_attn_implementation(attention)
                except (ImportError, ValueError) as e:
                    raise InputError(f"attention {attention!r} is not available for "
                                     f"{type(module).__name__}: {e}") from None
            used.append(module.config._attn_implementation)
        return used

    def enable_gradient_checkpointing(self, every: int = 1) -> list[str]:
        """Activation checkpointing (non-reentrant) every ``every``-th layer of each tower with trainable weights;
        returns the towers that took it."""
        from ..errors import InputError

        done = []
        for name, module in self._hf_models(trainable_only=True):
            if not module.supports_gradient_checkpointing:
                continue
            if hasattr(module, "activation_checkpointing_enable"):  # transformers >= 5.x
                module.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=every)
            elif every == 1:
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                raise InputError("perf.grad_checkpointing: every-N-layers needs transformers >= 5")
            done.append(name)
        return done

    def compile_towers(self, **kwargs: Any) -> list[str]:
        """``nn.Module.compile(**kwargs)`` on each tower, in place (state-dict keys do not change); returns their
        names."""
        for tower in self.towers().values():
            tower.compile(**kwargs)
        return list(self.towers())

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
