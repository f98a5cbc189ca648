"""GPU fast path: LoRA merged, bf16 weights, SDPA / flash attention, optional ``torch.compile``, and images
decoded in worker processes into pinned memory.

What the plain path does, and what :func:`optimize_for_gpu` changes (tangent features stay within bf16 tolerance
of the fp32 path: cosine >= 0.999, distance-to-origin relative error <= 1e-2, checked by
``benchmarks/bench_gpu.py`` on ViT-L/14 and by the tests on tiny towers):

* **LoRA** (``merge_lora=True``): the adapters are folded into the tower weights (``W += (alpha/r)·B·A``), which
  removes two extra GEMMs and a dropout per adapted layer. This is irreversible for the model object (reload it to
  train again); :meth:`~hysac.model.HySAC.save_pretrained` still writes a loadable model.
* **Precision** (``precision="bf16"``): the tower weights are cast to bf16 when the backbone supports it
  (:meth:`~hysac.backbones.base.Backbone.cast_towers`: CLIP); other backbones run their towers under bf16
  ``torch.autocast``. The HySAC scalars, the exponential map and every distance stay fp32.
* **Attention** (``attention="sdpa"``): Hugging Face towers switch to ``scaled_dot_product_attention`` (flash /
  memory-efficient kernels) or ``"flash_attention_2"`` when that package is installed.
* **Compilation** (``compile=True``): each tower is compiled in place (``nn.Module.compile``, so state-dict keys do
  not change). The first batches of each new shape are slow; worth it for long jobs.
* **Encoding**: the model's encode runtime becomes :class:`GpuRuntime`: length buckets capped at
  ``text_batch_size``; ``model.encode_image`` decodes files in ``workers`` processes into pinned ``uint8``
  chunks, copies them to the GPU without blocking and normalises there (:mod:`hysac.fast.loader`).

It also runs on the CPU when asked explicitly (``device="cpu"``; :func:`~hysac.fast.cpu.optimize_for_cpu` is
the better CPU path), which is how the tests exercise it.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from ..errors import InputError
from .loader import pixel_batches
from ..runtime import Collector, EncodeRuntime, check_batch_size, check_pixels, image_items, progress_bar

__all__ = ["ATTENTIONS", "PRECISIONS", "GpuRuntime", "encode_image_device", "optimize_for_gpu", "set_attention"]

PRECISIONS = ("bf16", "fp32")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2", "keep")
TEXT_BATCH = 256
IMAGE_BATCH = 256


def set_attention(backbone, attention: str) -> list[str]:
    """Switch every Hugging Face model among the backbone's towers to ``attention``; returns what each uses
    (:meth:`hysac.backbones.base.Backbone.set_attention`)."""
    if attention not in ATTENTIONS:
        raise InputError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    return backbone.set_attention(attention)


def optimize_for_gpu(model, *, device: str | torch.device | None = None, precision: str = "bf16",
                     attention: str = "sdpa", merge_lora: bool = True, compile: bool = False,
                     compile_mode: str | None = None, compile_backend: str = "inductor", workers: int | None = None,
                     pin_memory: bool | None = None, text_batch_size: int = TEXT_BATCH,
                     image_batch_size: int = IMAGE_BATCH, patch_encode: bool = True):
    """Make ``model`` (a :class:`~hysac.model.HySAC`) fast on a GPU, **in place** (moved to ``device``), and return it.

    * ``device``: default ``"cuda"``; raises :class:`InputError` when CUDA is missing (pass ``device="cpu"``
      explicitly to run this path on the CPU).
    * ``precision``: ``"bf16"`` (tower weights in bf16, or autocast where the backbone cannot cast) or ``"fp32"``.
    * ``attention``: ``"sdpa"``, ``"flash_attention_2"``, ``"eager"`` or ``"keep"``.
    * ``merge_lora``: fold LoRA adapters into the weights (irreversible for this object).
    * ``compile`` / ``compile_mode`` / ``compile_backend``: ``nn.Module.compile`` on each tower.
    * ``workers`` / ``pin_memory``: image loader processes (default one per CPU, at most 16) and page-locked
      transfers (default on for CUDA).
    * ``text_batch_size`` / ``image_batch_size``: default batch sizes of the patched encoders.
    * ``patch_encode``: run ``model.encode_text`` / ``model.encode_image`` on :class:`GpuRuntime` (False: the
      plain runtime, e.g. to time the towers alone).
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if attention not in ATTENTIONS:
        raise InputError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
    text_batch_size, image_batch_size = check_batch_size(text_batch_size), check_batch_size(image_batch_size)
    if workers is not None and (isinstance(workers, bool) or int(workers) != workers or workers < 0):
        raise InputError(f"workers must be a non-negative integer, got {workers!r}")
    if device is None:
        if not torch.cuda.is_available():
            raise InputError("optimize_for_gpu: no CUDA device is available; use hysac.fast.optimize_for_cpu "
                             "(or pass device='cpu' to run this path on the CPU)")
        device = "cuda"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"invalid device {device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device} requested but CUDA is not available")
    bb = model.backbone
    bb.set_inference_engines(None, None)  # CPU engines do not apply on this path
    # the identity indexes record is that of the weights as loaded: fix it before merging / casting them
    model.model_id  # noqa: B018 - computes and caches
    model.eval()
    merged = False
    if merge_lora and bb.has_lora:
        model.merge_lora()
        merged = True
    model.to(device)
    autocast = None
    weights = "fp32"
    if precision == "bf16":
        if bb.cast_towers(torch.bfloat16):
            weights = "bf16"
        else:
            autocast = torch.bfloat16
            weights = "fp32 (bf16 autocast)"
    attn = set_attention(bb, attention)
    if compile:
        kw: dict[str, Any] = {"backend": compile_backend}
        if compile_mode:
            kw["mode"] = compile_mode
        bb.compile_towers(**kw)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (heads, lifting inputs) on tensor cores
        torch.backends.cudnn.allow_tf32 = True
    info = {"device": str(device), "weights": weights, "autocast": None if autocast is None else str(autocast),
            "attention": attn, "lora_merged": merged, "compiled": bool(compile),
            "workers": workers, "pin_memory": pin_memory, "patched_encode": bool(patch_encode)}
    if patch_encode:
        model.set_runtime(GpuRuntime(text_batch=text_batch_size, image_batch=image_batch_size, autocast=autocast,
                                     workers=workers, pin_memory=pin_memory, info=info))
    else:
        model.set_runtime(None)
    return model


class GpuRuntime(EncodeRuntime):
    """The GPU fast path's encode runtime: length buckets capped at ``text_batch``, towers under ``autocast``
    where their weights could not be cast, and images decoded in loader processes into pinned memory
    (:func:`encode_image_device`)."""

    path = "gpu"
    decodes_files = True

    def __init__(self, *, text_batch: int = TEXT_BATCH, image_batch: int = IMAGE_BATCH,
                 autocast: torch.dtype | None = None, workers: int | None = None, pin_memory: bool | None = None,
                 info: dict[str, Any] | None = None) -> None:
        super().__init__(text_batch=text_batch, image_batch=image_batch, max_text_batch=text_batch,
                         autocast=autocast, info=info)
        self.workers = workers
        self.pin_memory = pin_memory

    def encode_image(self, model, images, *, batch_size: int | None = None, project: bool = True,
                     progress: bool = False) -> Tensor:
        return encode_image_device(model, images, batch_size=self.image_batch if batch_size is None else batch_size,
                                   project=project, progress=progress, workers=self.workers,
                                   pin_memory=self.pin_memory, autocast=self.autocast)


def _tower_dtype(bb) -> torch.dtype:
    for tower in bb.towers().values():
        for p in tower.parameters():
            return p.dtype
    return torch.float32


def encode_image_device(model, images, *, batch_size: int = IMAGE_BATCH, project: bool = True,
                        progress: bool = False, workers: int | None = None, pin_memory: bool | None = None,
                        autocast: torch.dtype | None = None) -> Tensor:
    """``model.encode_image`` for a model on any device, with decoding in loader processes.

    Files / PIL images are decoded, resized and cropped in ``workers`` processes (see
    :func:`hysac.fast.loader.pixel_batches`) when the backbone has a :meth:`pixel_spec`, else preprocessed in this
    process with ``backbone.preprocess_images``. A (B,3,H,W) pixel tensor is used as is. Returns (N,D) fp32 on the
    CPU, in input order; a bad item raises :class:`InputError` naming it."""
    from ..images import load_image

    batch_size = check_batch_size(batch_size)
    bb = model.backbone
    device = model.device
    spec = bb.pixel_spec()
    if isinstance(images, Tensor):
        n = int(check_pixels(images).shape[0])
        batches = ((None, images[i:i + batch_size].to(device)) for i in range(0, n, batch_size))
    else:
        items = image_items(images)
        n = len(items)
        if spec is not None:
            batches = pixel_batches(items, spec, device=device, batch_size=batch_size, workers=workers,
                                    pin_memory=pin_memory, dtype=_tower_dtype(bb))
        else:
            batches = ((None, bb.preprocess_images([load_image(s) for s in items[i:i + batch_size]]).to(device))
                       for i in range(0, n, batch_size))
    if n == 0:
        return torch.zeros(0, model.embed_dim)
    ctx = (lambda: torch.autocast(device.type, dtype=autocast)) if autocast is not None else nullcontext  # noqa: E731
    bar = progress_bar(progress, n, "images")
    out = Collector()
    order: list[Tensor] = []
    with torch.inference_mode():
        for idx, px in batches:
            with ctx():
                feats = bb.image_features(px)
            feats = feats.float()
            out.add(model.lift_image(feats) if project else feats)
            if idx is not None:
                order.append(idx)
            if bar is not None:
                bar.update(int(px.shape[0]))
    if bar is not None:
        bar.close()
    stacked = out.result()
    if order:
        idx = torch.cat(order)
        if not torch.equal(idx, torch.arange(n)):  # the loader keeps input order; guard anyway
            result = torch.empty_like(stacked)
            result[idx] = stacked
            return result
    return stacked
