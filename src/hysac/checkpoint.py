"""Checkpoint formats.

* **Released HySAC format** (``aimagelab/HySAC``): ``hysac_model.pth`` — a plain ``state_dict`` of the whole official
  module (peft ≥ 0.7 keys such as ``visual.base_model.model.vision_model.encoder.layers.0.self_attn.k_proj.
  base_layer.weight``; log-space scalars ``curv``, ``visual_alpha``, ``textual_alpha``, ``logit_scale``; unused
  ``pixel_mean``/``pixel_std``) — plus ``hysac_bounds.json``. Loaded with ``torch.load(weights_only=True)``.
* **Our format**: ``config.json`` (backbone, dims, curvature, alphas, LoRA, bounds, category head) +
  ``model.safetensors`` — no pickle anywhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import CheckpointError, InputError

RELEASED_WEIGHTS = "hysac_model.pth"
RELEASED_BOUNDS = "hysac_bounds.json"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_NAME = "hysac"
FORMAT_VERSION = 1

#: keys of the official module that carry no weights we use
_IGNORED_RELEASED = ("pixel_mean", "pixel_std")
_POSITION_IDS = re.compile(r"\.position_ids$")


def mismatch_report(expected: dict[str, Tensor], got: dict[str, Tensor]) -> str | None:
    """Describe missing/unexpected keys and shape mismatches between two state dicts (None when they agree)."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(expected) & set(got) if tuple(expected[k].shape) != tuple(got[k].shape))

    def fmt(xs: list[str]) -> str:
        return ", ".join(xs[:12]) + (f", … ({len(xs)} in all)" if len(xs) > 12 else "")

    parts = [f"{what}: {fmt(xs)}" for what, xs in
             (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)) if xs]
    return "; ".join(parts) or None


def load_released_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read ``hysac_model.pth`` safely (``weights_only=True``: tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused or corrupt file
        raise CheckpointError(f"cannot read {path} as a weights-only state dict: {e}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} is not a plain state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def lora_config_from_released(sd: dict[str, Tensor]) -> dict[str, Any] | None:
    """Infer the LoRA recipe from the keys: rank from ``lora_A`` shapes, targets from the adapted module names.
    ``lora_alpha`` is not stored in a state dict; the paper's value (1) is assumed."""
    ranks = {int(v.shape[0]) for k, v in sd.items() if ".lora_A." in k}
    if not ranks:
        return None
    if len(ranks) > 1:
        raise CheckpointError(f"checkpoint mixes LoRA ranks {sorted(ranks)}; only one rank is supported")
    targets = sorted({k.split(".lora_A.")[0].rsplit(".", 1)[-1] for k in sd if ".lora_A." in k})
    return {"r": ranks.pop(), "lora_alpha": 1, "lora_dropout": 0.1, "target_modules": targets, "bias": "none"}


def convert_released_state_dict(sd: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map released keys onto our module: ``visual.*``/``textual.*`` → ``backbone.visual.*``/``backbone.textual.*``;
    drop ``pixel_mean/std`` and ``position_ids`` buffers; accept the pre-0.7 peft layout (no ``base_layer``)."""
    out: dict[str, Tensor] = {}
    for key, val in sd.items():
        if key in _IGNORED_RELEASED or _POSITION_IDS.search(key):
            continue
        if key.startswith(("visual.", "textual.")):
            key = "backbone." + key
        out[key] = val
    # old peft (< 0.7) stored base weights without ".base_layer"
    for key in list(expected):
        if ".base_layer." in key and key not in out:
            legacy = key.replace(".base_layer.", ".")
            if legacy in out:
                out[key] = out.pop(legacy)
    # a checkpoint without patch-embedding bias is fine when our module has none either; one that has a zero
    # bias (written by the fork's hack) is dropped when our module lacks it
    for key in [k for k in out if k.endswith("patch_embedding.bias") or k.endswith("patch_embedding.base_layer.bias")]:
        if key not in expected and not bool(out[key].abs().max() > 0):
            out.pop(key)
    return out


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"no {CONFIG_NAME} in {folder}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if cfg.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a hysac model config (format={cfg.get('format')!r})")
    if int(cfg.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {cfg['format_version']}; this hysac reads ≤ {FORMAT_VERSION}")
    return cfg


def is_our_format(folder: Path) -> bool:
    p = folder / CONFIG_NAME
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT_NAME
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def is_released_format(folder: Path) -> bool:
    return (folder / RELEASED_WEIGHTS).is_file()
