"""Fast inference paths: :mod:`~hysac.fast.cpu` (the offline model on a few CPU cores) and :mod:`~hysac.fast.gpu`
(CLIP ViT-L/14 HySAC on a GPU), with the parallel image loader (:mod:`~hysac.fast.loader`).

:func:`optimize` picks the path for a device: ``optimize(model)`` → GPU path when CUDA is available, else CPU.
Both change the model in place and install their encode runtime (:class:`hysac.runtime.EncodeRuntime`) with
``model.set_runtime``: ``model.encode_text`` / ``model.encode_image`` stay the model's own methods and run on it,
so the CLI, the service and the index builder get the fast path through the ordinary model API.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from . import cpu, gpu, loader
from .cpu import *  # noqa: F401,F403 - optimize_for_cpu, restore_cpu_defaults, the CPU engines
from .gpu import *  # noqa: F401,F403 - optimize_for_gpu, encode_image_device, set_attention
from .loader import *  # noqa: F401,F403 - pixel_batches

__all__ = sorted({"decodes_files", "describe", "optimize", *cpu.__all__, *gpu.__all__, *loader.__all__})


def optimize(model, device: str | torch.device | None = None, **options):
    """The fast path for ``device`` (default: CUDA when available, else CPU), in place; returns the model.

    ``options`` go to :func:`optimize_for_gpu` or :func:`optimize_for_cpu`."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"invalid device {device!r}: {e}") from None
    getattr(model, "model_id", None)  # fix the weights' identity before any LoRA merge or cast changes them
    if dev.type == "cpu":
        if model.device.type != "cpu":
            model.to("cpu")
        return cpu.optimize_for_cpu(model, **options)
    return gpu.optimize_for_gpu(model, device=dev, **options)


def describe(model) -> dict | None:
    """What the fast path changed on ``model`` (``{"path": "cpu"|"gpu", ...}``), or None when it is not on (or
    ``model`` is another object with the encode API, which the index and service accept too)."""
    runtime = getattr(model, "runtime", None)
    return None if runtime is None else runtime.describe()


def decodes_files(model) -> bool:
    """True when ``model.encode_image`` decodes file paths itself in parallel loader processes (the GPU fast
    path): callers holding paths should pass them as they are instead of decoding images first."""
    return bool(getattr(getattr(model, "runtime", None), "decodes_files", False))
