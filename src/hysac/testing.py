"""Builders of tiny random models in the exact official layouts, for tests and benchmarks (no downloads).

* :func:`make_tiny_clip_folder` — a CLIP checkpoint folder as ``CLIPModel.save_pretrained`` writes it (config,
  safetensors), with a real (byte-level, tiny) CLIP tokenizer and an image processor.
* :func:`make_released_checkpoint` — ``hysac_model.pth`` + ``hysac_bounds.json`` laid out like the released HySAC
  files: a plain state dict of the official module with peft ≥ 0.7 keys (``visual.base_model.model…base_layer``),
  written from the spec's key list without peft, non-zero LoRA A and B, log-space scalars and the unused
  ``pixel_mean``/``pixel_std`` buffers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

#: OpenMoji codepoints of the tiny training runs in the tests: safe everyday emoji and unsafe-ish ones (gun, dagger,
#: skull, syringe, bomb, skull and crossbones, middle finger, drop of blood)
TINY_EMOJI = ["1F600", "1F431", "1F436", "1F34E", "1F697", "2600", "1F333", "1F3E0", "26BD", "1F382",
              "1F52B", "1F5E1", "1F480", "1F489", "1F4A3", "2620", "1F595", "1FA78"]
TINY_LORA = {"r": 4, "lora_alpha": 1, "lora_dropout": 0.1,
             "target_modules": ["k_proj", "v_proj", "out_proj", "fc1", "fc2", "patch_embedding"], "bias": "none"}


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def make_tiny_tokenizer(folder: Path):
    """A byte-level CLIP BPE tokenizer with 514 tokens (every byte, with and without ``</w>``) and no merges."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")
    tok.save_pretrained(folder)
    return tok


def make_tiny_clip_folder(folder: str | Path, *, hidden: int = 32, layers: int = 2, proj: int = 16,
                          image_size: int = 28, patch: int = 14, max_positions: int = 24, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` + tokenizer + image processor to ``folder`` (the layout of
    ``openai/clip-vit-large-patch14``, only smaller)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = Path(folder)
    tok = make_tiny_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=max_positions, projection_dim=proj,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=4, image_size=image_size, patch_size=patch, projection_dim=proj),
        projection_dim=proj,
    )
    model = CLIPModel(cfg)
    model.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(folder)
    return folder


def released_tower_state(tower_sd: dict[str, torch.Tensor], prefix: str, lora: dict,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The released checkpoint's keys for one plain HF tower state dict, written from the key list of the spec
    (§3.2, peft >= 0.7 layout, adapter name ``default``), without peft.

    For each ``<module>.<leaf>``: when the module's last name is a LoRA target, the base tensor goes to
    ``<prefix>.base_model.model.<module>.base_layer.<leaf>`` and the module gets ``lora_A.default.weight`` /
    ``lora_B.default.weight`` (Linear weight (out, in): A (r, in), B (out, r); Conv2d weight (out, in, k, k):
    A (r, in, k, k), B (out, r, 1, 1)) filled with random non-zero values from ``generator``; every other key goes to
    ``<prefix>.base_model.model.<key>``. ``position_ids`` buffers are dropped.
    """
    targets = set(lora["target_modules"])
    r = int(lora["r"])
    out: dict[str, torch.Tensor] = {}
    pre = f"{prefix}.base_model.model."
    for key, value in tower_sd.items():
        if key.endswith("position_ids"):
            continue
        module, leaf = key.rsplit(".", 1)
        if module.rsplit(".", 1)[-1] not in targets:
            out[pre + key] = value.clone()
            continue
        out[f"{pre}{module}.base_layer.{leaf}"] = value.clone()
        if leaf != "weight":
            continue
        w = tower_sd[key]
        if w.dim() == 4:  # Conv2d (out, in, k, k)
            shape_a, shape_b = (r, w.shape[1], w.shape[2], w.shape[3]), (w.shape[0], r, 1, 1)
        elif w.dim() == 2:  # Linear (out, in)
            shape_a, shape_b = (r, w.shape[1]), (w.shape[0], r)
        else:
            raise ValueError(f"LoRA target {module!r} has a {w.dim()}-d weight; expected Linear or Conv2d")
        # non-zero A and B so the adapters matter (peft itself starts B at zero)
        out[f"{pre}{module}.lora_A.default.weight"] = torch.randn(shape_a, generator=generator) * 0.2
        out[f"{pre}{module}.lora_B.default.weight"] = torch.randn(shape_b, generator=generator) * 0.2
    return out


def make_released_checkpoint(out_dir: str | Path, clip_folder: str | Path, *, lora: dict | None = None,
                             seed: int = 1, curv: float = 0.37, bounds: dict | None = None) -> Path:
    """Write ``hysac_model.pth`` and ``hysac_bounds.json`` in the released layout for the towers in
    ``clip_folder`` with random non-zero LoRA adapters and scalars.

    The keys are written from the spec's key list (:func:`released_tower_state`), independently of peft and of
    the loader, so loading them checks the loader against the documented layout."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    from transformers.utils import logging as hf_logging

    lora = dict(lora or TINY_LORA)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for prefix, cls in (("visual", CLIPVisionModelWithProjection), ("textual", CLIPTextModelWithProjection)):
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # a CLIPModel folder loaded into one tower lists the other tower's keys
        try:
            tower = cls.from_pretrained(clip_folder, local_files_only=True)
        finally:
            hf_logging.set_verbosity(level)
        sd.update(released_tower_state(tower.state_dict(), prefix, lora, g))
    dim = sd["visual.base_model.model.visual_projection.weight"].shape[0]
    sd["curv"] = torch.tensor(math.log(curv))
    sd["visual_alpha"] = torch.tensor(math.log(dim**-0.5) + 0.3)
    sd["textual_alpha"] = torch.tensor(math.log(dim**-0.5) - 0.2)
    sd["logit_scale"] = torch.tensor(math.log(1 / 0.07))
    sd["pixel_mean"] = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    sd["pixel_std"] = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.save(sd, out_dir / "hysac_model.pth")
    bounds = bounds or {"S": {"up_95": 0.45, "low_05": 0.40, "avg": 0.43},
                        "V": {"up_95": 0.54, "low_05": 0.50, "avg": 0.52},
                        "U": {"up_95": 0.63, "low_05": 0.59, "avg": 0.61},
                        "G": {"up_95": 0.78, "low_05": 0.73, "avg": 0.75}}
    (out_dir / "hysac_bounds.json").write_text(json.dumps(bounds))
    return out_dir
