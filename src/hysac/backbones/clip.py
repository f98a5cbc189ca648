"""CLIP backbone: Hugging Face ``CLIPVisionModelWithProjection`` + ``CLIPTextModelWithProjection``, optional LoRA.

Module names are those of the released HySAC checkpoint: ``visual`` and ``textual`` are the (peft-wrapped) towers,
so ``backbone.visual.base_model.model.vision_model...`` lines up with ``visual.base_model.model.vision_model...`` in
``hysac_model.pth``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import CheckpointError, InputError
from ..images import PixelSpec
from . import register_backbone
from .base import Backbone, bucketed_token_batches, check_texts, untruncated_token_counts

#: the paper's LoRA recipe (spec §2.2)
PAPER_LORA = {
    "r": 16,
    "lora_alpha": 1,
    "lora_dropout": 0.1,
    "target_modules": ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"],
    "bias": "none",
}
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
#: PIL resampling filters by the names :class:`~hysac.images.PixelSpec` uses (HF processors store the PIL ids)
_PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}


def _is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(os.fspath(name_or_path)).exists()


def _hf_kwargs(name_or_path) -> dict[str, Any]:
    # Local folders never touch the network.
    return {"local_files_only": True} if _is_local(name_or_path) else {}


@contextlib.contextmanager
def _quiet_transformers():
    """Silence the load report (a CLIPModel folder loaded into one tower lists the other tower's keys)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


@contextlib.contextmanager
def _quiet_peft():
    """peft asks transformers >= 5 a deprecated question (``is_gradient_checkpointing``) when it wraps or unloads."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def apply_lora(tower: nn.Module, lora: dict[str, Any]) -> nn.Module:
    """Wrap a tower with peft LoRA (targets that the tower lacks, e.g. ``patch_embedding`` on text, are skipped)."""
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in tower.named_modules()}
    targets = [t for t in lora["target_modules"] if t in names]
    cfg = LoraConfig(
        r=int(lora["r"]),
        lora_alpha=lora["lora_alpha"],
        lora_dropout=float(lora.get("lora_dropout", 0.0)),
        target_modules=targets,
        bias=lora.get("bias", "none"),
    )
    with _quiet_peft():
        return get_peft_model(tower, cfg)


@register_backbone("clip")
class ClipBackbone(Backbone):
    """HF CLIP towers (+ LoRA) with the CLIP tokenizer and image processor."""

    def __init__(self, visual: nn.Module, textual: nn.Module, tokenizer, image_processor, *, source: str,
                 lora: dict[str, Any] | None = None):
        super().__init__()
        self.visual = visual
        self.textual = textual
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.source = str(source)
        self.lora = dict(lora) if lora else None
        self.embed_dim = int(self._base(visual).config.projection_dim)
        self.max_length = int(self._base(textual).config.max_position_embeddings)

    # ---------------------------------------------------------------------------------------------- construction
    @staticmethod
    def _base(tower: nn.Module) -> nn.Module:
        return tower.get_base_model() if hasattr(tower, "get_base_model") else tower

    @classmethod
    def from_hub_or_folder(cls, name_or_path: str | os.PathLike = DEFAULT_CLIP, *, lora: dict[str, Any] | None = None,
                           torch_dtype: torch.dtype | None = None) -> "ClipBackbone":
        """Load pretrained CLIP towers, tokenizer and processor from a hub id or a local folder."""
        from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

        kw = _hf_kwargs(name_or_path)
        if not kw and os.sep in str(name_or_path) and not str(name_or_path).count("/") == 1:
            raise InputError(f"CLIP backbone folder not found: {name_or_path}")
        try:
            with _quiet_transformers():
                visual = CLIPVisionModelWithProjection.from_pretrained(name_or_path, **kw)
                textual = CLIPTextModelWithProjection.from_pretrained(name_or_path, **kw)
        except OSError as e:
            raise InputError(f"cannot load CLIP backbone {name_or_path!r}: {e}") from None
        tokenizer, processor = cls._load_preprocessing(name_or_path, visual.config, kw)
        if torch_dtype is not None:
            visual, textual = visual.to(torch_dtype), textual.to(torch_dtype)
        if lora:
            visual, textual = apply_lora(visual, lora), apply_lora(textual, lora)
        return cls(visual, textual, tokenizer, processor, source=str(name_or_path), lora=lora)

    @staticmethod
    def _load_preprocessing(name_or_path, vision_config, kw):
        from transformers import AutoTokenizer, CLIPImageProcessor

        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kw)
        except (OSError, ValueError, TypeError) as e:
            raise InputError(f"CLIP backbone {name_or_path!r} has no usable tokenizer: {e}") from None
        try:
            processor = CLIPImageProcessor.from_pretrained(name_or_path, **kw)
        except (OSError, ValueError):
            size = int(vision_config.image_size)
            processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return tokenizer, processor

    @classmethod
    def from_config(cls, cfg: dict[str, Any], *, inference: bool = False) -> "ClipBackbone":
        """Rebuild from :meth:`config` (architecture from the stored configs, random weights; the caller loads
        the checkpoint). Tokenizer/processor come from ``cfg['_root']/backbone`` when saved there, else the source."""
        from transformers import (CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig,
                                  CLIPVisionModelWithProjection)

        if "vision_config" not in cfg or "text_config" not in cfg:
            return cls.from_hub_or_folder(cfg.get("source", DEFAULT_CLIP), lora=cfg.get("lora"))
        visual = CLIPVisionModelWithProjection(CLIPVisionConfig(**cfg["vision_config"]))
        textual = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_config"]))
        pre_dir = Path(cfg["_root"]) / "backbone" if cfg.get("_root") else None
        src = pre_dir if pre_dir is not None and pre_dir.is_dir() else cfg.get("source", DEFAULT_CLIP)
        tokenizer, processor = cls._load_preprocessing(src, visual.config, _hf_kwargs(src))
        lora = cfg.get("lora")
        if lora:
            visual, textual = apply_lora(visual, lora), apply_lora(textual, lora)
        return cls(visual, textual, tokenizer, processor, source=cfg.get("source", str(src)), lora=lora)

    def config(self) -> dict[str, Any]:
        vc = self._base(self.visual).config.to_dict()
        tc = self._base(self.textual).config.to_dict()
        keep = lambda d: {k: v for k, v in d.items() if not k.startswith("_") and k not in ("transformers_version",)}  # noqa: E731
        return {"kind": "clip", "source": self.source, "lora": self.lora,
                "vision_config": keep(vc), "text_config": keep(tc)}

    def save_preprocessing(self, folder: str | os.PathLike) -> None:
        """Write tokenizer and image processor files so a saved model loads with no hub access."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)

    # ------------------------------------------------------------------------------------------------- LoRA
    def merge_lora(self) -> None:
        """Fold LoRA into the base weights (``W += (alpha/r)·B·A``) and drop the adapters (faster inference)."""
        if self.lora is None:
            return
        with _quiet_peft():
            self.visual = self.visual.merge_and_unload()
            self.textual = self.textual.merge_and_unload()
        self.lora = None

    @property
    def has_lora(self) -> bool:
        return self.lora is not None

    # ---------------------------------------------------------------------------------------------- interface
    def preprocess_images(self, images: Sequence[Image.Image]) -> Tensor:
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    def pixel_spec(self) -> PixelSpec | None:
        """The CLIP image processor's geometry and normalisation (shortest-edge resize, centre crop, mean/std), or
        None for a processor configuration this split does not reproduce."""
        p = self.image_processor
        size = getattr(p, "size", None) or {}
        crop = getattr(p, "crop_size", None) or {}
        try:
            resample = {int(v): k for k, v in _PIL_RESAMPLE.items()}.get(int(getattr(p, "resample", 3)))
        except (TypeError, ValueError):  # e.g. a torchvision InterpolationMode
            resample = None
        if ("shortest_edge" not in size or not getattr(p, "do_center_crop", True) or "height" not in crop
                or not getattr(p, "do_resize", True) or not getattr(p, "do_normalize", True) or resample is None
                or not getattr(p, "do_rescale", True) or abs(float(getattr(p, "rescale_factor", 1 / 255)) * 255 - 1) > 1e-6):
            return None
        return PixelSpec(size=int(size["shortest_edge"]), crop=(int(crop["height"]), int(crop["width"])),
                         mean=tuple(float(m) * 255.0 for m in p.image_mean),
                         std=tuple(float(s) * 255.0 for s in p.image_std), resample=resample, crop_offset="floor")

    def towers(self) -> dict[str, nn.Module]:
        return {"visual": self.visual, "textual": self.textual}

    def cast_towers(self, dtype: torch.dtype) -> bool:
        self.visual.to(dtype)
        self.textual.to(dtype)
        return True

    def max_text_tokens(self) -> int:
        return self.max_length

    def text_token_counts(self, texts: Sequence[str]) -> list[int]:
        return untruncated_token_counts(self.tokenizer, texts)

    def length_sorted_batches(self, texts: Sequence[str], batch_size: int):
        """Texts tokenised once and batched by token length (see :func:`~.base.bucketed_token_batches`)."""
        return bucketed_token_batches(self.tokenizer, check_texts(texts), int(batch_size), self.max_length)

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"]}

    def image_features(self, pixel_values: Tensor) -> Tensor:
        dtype = next(self.visual.parameters()).dtype
        return self.visual(pixel_values=pixel_values.to(dtype)).image_embeds

    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        # CLIP's causal mask keeps the pooled EOS state blind to padding, so the mask does not change the output;
        # it is passed anyway so padded positions never matter.
        return self.textual(input_ids=input_ids, attention_mask=attention_mask).text_embeds


def check_state_dict_compatible(model: nn.Module, sd: dict[str, Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing missing/unexpected keys and shape mismatches."""
    from ..checkpoint import mismatch_report

    report = mismatch_report(model.state_dict(), sd)
    if report:
        raise CheckpointError(f"checkpoint {source} does not match the model — {report}")
