"""The training loop: paper losses (or the Safe-CLIP objective), AdamW with per-parameter decay, warm-up + cosine,
AMP, gradient accumulation, cross-process negatives under torchrun, exact resume, validation with model selection
and early stopping, JSONL logs, and export of the final model with fitted bounds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from .. import lorentz as L
from .. import metrics as M
from ..backbones import build_backbone
from ..errors import InputError
from ..images import load_image
from ..losses import (
    HySACLoss,
    category_loss,
    class_order_loss,
    lorentz_contrastive,
    safeclip_loss,
    safety_rank_loss,
)
from ..model import HySAC
from ..policy import over_threshold
from ..safety import CATEGORIES, fit_bounds
from .categories import RefitConfig, refit_category_head, weighted_rows
from .config import dump_config
from .data import TrainData, build_offline, build_visu, data_seed, epoch_order, step_rows, steps_per_epoch

_SCALARS = ("curv", "visual_alpha", "textual_alpha", "logit_scale")


# ---------------------------------------------------------------------------------------------- distributed
def _dist() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_negatives(x: Tensor, mask: Tensor, world: int) -> tuple[Tensor, Tensor] | None:
    """All rows of the other processes, with their masks, as extra negatives for this process's loss.

    The gathered rows carry no gradient (open_clip's default, ``gather_with_grad=False``): each process's
    gradient flows through its own rows, and the all-reduce of the gradients combines them. A differentiable
    gather would also issue collectives in the backward pass, in an order that depends on each process's graph
    (which rows it happens to hold), and processes whose orders differ deadlock.

    Processes may hold different numbers of rows (a global batch that does not divide by the world size): rows are
    padded to the largest count with masked-out zeros before gathering. (N,D), (N,) → (M,D), (M,)."""
    if world == 1:
        return None
    import torch.distributed as dist

    rank = dist.get_rank()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    top = int(max(int(n) for n in sizes))
    pad = top - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros(pad, x.shape[1])])
        mask = torch.cat([mask, mask.new_zeros(pad)])
    x = x.detach().contiguous()
    xs = [torch.zeros_like(x) for _ in range(world)]
    dist.all_gather(xs, x)
    ms = [torch.zeros_like(mask) for _ in range(world)]
    dist.all_gather(ms, mask.contiguous())
    others = [i for i in range(world) if i != rank]
    return torch.cat([xs[i] for i in others]), torch.cat([ms[i] for i in others])


# ---------------------------------------------------------------------------------------------- features
class Featurizer:
    """Euclidean features of pool items, through the trainable part of the backbone.

    With ``cache`` (frozen towers exposing ``*_base_features``), the towers run once over the pools and only the
    heads run per step; otherwise tokens/pixels go through the full backbone each step.
    """

    def __init__(self, model: HySAC, data: TrainData, cache_dir: Path | None, use_cache: bool, device,
                 text_memo: dict[str, Tensor] | None = None, loader_workers: int = 0,
                 prompts: list[str] | None = None):
        self.model, self.data, self.device = model, data, device
        # a second text pool beside the corpus: the object-class prompts of the class-photo term (pool="prompts")
        self.prompts = list(prompts or [])
        self.text_memo = text_memo if text_memo is not None else {}
        # images of the uncached path: decoded in loader processes, the next step's while this one trains
        spec = model.backbone.pixel_spec()
        self.loader_workers = int(loader_workers) if spec is not None else 0
        self._spec = spec
        self._decoder = None  # one background thread that feeds the loader pool
        self._decoded: dict[tuple[int, ...], Any] = {}  # image index tuple → Future of uint8 pixels
        bb = model.backbone
        frozen = not any(p.requires_grad for n, p in bb.named_parameters() if "head" not in n)
        self.cached = bool(use_cache and frozen and bb.has_base_features)
        # a text tower that trains only in its top layers (LoRA / unfrozen) beside a frozen image tower: the
        # trunk's token states and the image features are cached, the top layers and heads run per step
        text_from = bb.text_trainable_from()
        image_frozen = not any(p.requires_grad for n, p in bb.named_parameters()
                               if "head" not in n and not n.startswith("text_model."))
        self.top_cached = bool(use_cache and not frozen and image_frozen and text_from is not None)
        self.text_cache = self.image_cache = self.prompt_cache = None
        self.text_states: list[Tensor] = []
        self.prompt_states: list[Tensor] = []
        if self.cached:
            self.text_cache, self.image_cache = self._build_cache(cache_dir)
            if self.prompts:
                with torch.no_grad():
                    frozen_text_space(bb, self.prompts, self.device, self.text_memo)
                self.prompt_cache = torch.stack([self.text_memo[t] for t in self.prompts])
        elif self.top_cached:
            self.image_cache = self._build_image_cache(cache_dir)
            self.text_states = self._build_trunk_states(self.data.texts)
            if self.prompts:
                self.prompt_states = self._build_trunk_states(self.prompts, "caching class-prompt trunk")

    def _build_image_cache(self, cache_dir: Path | None) -> Tensor:
        bb = self.model.backbone
        key = _base_feature_key(bb, "image")
        for p in self.data.images:  # the image pool alone: runs over other texts share the file
            key.update(str(p).encode("utf-8", "surrogatepass") + b"\0")
        path = None if cache_dir is None else Path(cache_dir) / f"images-{key.hexdigest()[:20]}.safetensors"
        if path is not None and path.is_file():
            return load_file(str(path))["image"]
        from tqdm.auto import tqdm

        imf = []
        with torch.no_grad():
            for i in tqdm(range(0, len(self.data.images), 64), desc="caching image features", unit="batch"):
                pix = bb.preprocess_images([load_image(p) for p in self.data.images[i:i + 64]])
                imf.append(bb.image_base_features(pix.to(self.device)).float().cpu())
        image = torch.cat(imf) if imf else torch.zeros(0, bb.image_base_dim)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            save_file({"image": image.contiguous()}, str(tmp))
            tmp.replace(path)
        return image

    def _build_trunk_states(self, texts: list[str], desc: str = "caching text trunk") -> list[Tensor]:
        """Per text, the (L_i,384) fp16 token states entering the first trainable text layer (in memory)."""
        from tqdm.auto import tqdm

        bb = self.model.backbone
        states: list[Tensor | None] = [None] * len(texts)
        order, batches = bb.length_sorted_batches(texts, 128)
        pos = 0
        with torch.no_grad():
            for batch in tqdm(batches, total=(len(texts) + 127) // 128, desc=desc, unit="batch"):
                mask = batch["attention_mask"]
                h = bb.text_trunk_states(batch["input_ids"].to(self.device), mask.to(self.device)).cpu()
                for j in range(h.shape[0]):
                    states[order[pos + j]] = h[j, : int(mask[j].sum())].to(torch.float16).clone()
                pos += h.shape[0]
        return states  # type: ignore[return-value]

    @staticmethod
    def _top_text(pool: list[Tensor], idx: list[int], bb, device) -> Tensor:
        states = [pool[i] for i in idx]
        length = max(s.shape[0] for s in states)
        hidden = torch.zeros(len(states), length, states[0].shape[1])
        mask = torch.zeros(len(states), length, dtype=torch.long)
        for j, s in enumerate(states):
            hidden[j, : s.shape[0]] = s.float()
            mask[j, : s.shape[0]] = 1
        return bb.text_top_features(hidden.to(device), mask.to(device))

    def _build_cache(self, cache_dir: Path | None):
        """(text, image) base features of the pools: texts through the frozen-space memo (every pool text once,
        length-sorted), images through :meth:`_build_image_cache`."""
        bb = self.model.backbone
        with torch.no_grad():
            frozen_text_space(bb, self.data.texts, self.device, self.text_memo)
        text = (torch.stack([self.text_memo[t] for t in self.data.texts]) if self.data.texts
                else torch.zeros(0, bb.text_base_dim))
        return text, self._build_image_cache(cache_dir)

    def text(self, idx: Tensor, backbone=None, pool: str = "corpus") -> Tensor:
        """(N,) indices into the corpus texts (or, with ``pool="prompts"``, the class prompts) → (N, embed_dim)."""
        bb = backbone or self.model.backbone
        texts, cache, states = ((self.data.texts, self.text_cache, self.text_states) if pool == "corpus"
                                else (self.prompts, self.prompt_cache, self.prompt_states))
        if idx.numel() == 0:
            return torch.zeros(0, bb.embed_dim, device=self.device)
        if self.cached:
            return bb.head_text(cache[idx.cpu()].to(self.device))
        if self.top_cached:
            # length-sorted chunks (little padding, bounded memory), returned in the asked order
            ids = idx.tolist()
            order = sorted(range(len(ids)), key=lambda j: states[ids[j]].shape[0])
            chunk = 64 if torch.is_grad_enabled() else 256
            parts = [self._top_text(states, [ids[j] for j in order[k:k + chunk]], bb, self.device)
                     for k in range(0, len(order), chunk)]
            inverse = torch.empty(len(ids), dtype=torch.long)
            inverse[torch.as_tensor(order)] = torch.arange(len(ids))
            return bb.head_text(torch.cat(parts)[inverse.to(self.device)])
        tok = bb.tokenize([texts[i] for i in idx.tolist()])
        return bb.text_features(tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device))

    def image(self, idx: Tensor, backbone=None) -> Tensor:
        bb = backbone or self.model.backbone
        if idx.numel() == 0:
            return torch.zeros(0, bb.embed_dim, device=self.device)
        if self.cached or self.top_cached:
            return bb.head_image(self.image_cache[idx.cpu()].to(self.device))
        if self.loader_workers:
            key = tuple(idx.tolist())
            fut = self._decoded.get(key) or self._submit(key)
            u8 = fut.result()
            pix = self._spec.normalize(u8.to(self.device, non_blocking=True))
        else:
            pix = bb.preprocess_images([load_image(self.data.images[i]) for i in idx.tolist()]).to(self.device)
        return bb.image_features(pix)

    def prefetch(self, keys: list[tuple[int, ...]]) -> None:
        """Start decoding the images of a coming step (tuples of image indices, as :meth:`image` will get them);
        decodes of earlier steps that were not asked for again are dropped."""
        if not self.loader_workers or self.cached or self.top_cached:
            return
        keep = {k: self._decoded[k] for k in keys if k in self._decoded}
        for k in keys:
            if k and k not in keep:
                keep[k] = self._submit(k, store=False)
        self._decoded = keep  # this step's (read again by the Safe-CLIP reference) and the next step's

    def _submit(self, key: tuple[int, ...], store: bool = True):
        from concurrent.futures import ThreadPoolExecutor

        from ..fast.loader import decode_uint8

        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hysac-train-images")
        paths = [self.data.images[i] for i in key]
        fut = self._decoder.submit(decode_uint8, paths, self._spec, workers=self.loader_workers)
        if torch.cuda.is_available() and self.device.type == "cuda":
            fut = self._decoder.submit(lambda f=fut: f.result().pin_memory())
        if store:
            self._decoded[key] = fut
        return fut


def frozen_text_space(backbone, texts: list[str], device, memo: dict[str, Tensor] | None = None) -> np.ndarray:
    """Features of the untrained text tower (base features when the backbone has them), for pairing texts.
    ``memo`` (text → feature) avoids encoding a text twice; the feature cache reuses it for frozen towers."""
    memo = {} if memo is None else memo
    todo = list(dict.fromkeys(t for t in texts if t not in memo))
    fn = backbone.text_base_features
    from tqdm.auto import tqdm

    order, batches = backbone.length_sorted_batches(todo, 128)  # little padding is computed
    done = 0
    with torch.no_grad():
        for tok in tqdm(batches, total=-(-len(todo) // 128), desc="encoding texts", unit="batch",
                        disable=len(todo) < 2048):
            chunk = [todo[j] for j in order[done:done + tok["input_ids"].shape[0]]]
            done += len(chunk)
            feats = fn(tok["input_ids"].to(device), tok["attention_mask"].to(device)).float().cpu()
            memo.update(zip(chunk, feats))
    return torch.stack([memo[t] for t in texts]).numpy()


# ---------------------------------------------------------------------------------------------- speed knobs
def apply_perf(model: HySAC, perf: dict[str, Any], log=None) -> dict[str, Any]:
    """Apply the ``perf`` section of a training config to ``model``'s towers, in place; returns what was done.

    * ``attention``: Hugging Face towers switch to that attention implementation (SDPA by default; "eager" is
      what the official code runs).
    * ``grad_checkpointing``: activation checkpointing (non-reentrant) in every Hugging Face tower that has
      trainable weights (LoRA or unfrozen layers): activations are recomputed in the backward pass, which frees
      memory for a larger per-device batch. ``true`` checkpoints every layer, an integer N every N-th layer
      (less recompute where memory is not the limit).
    * ``compile``: ``nn.Module.compile`` on each tower (``compile_backend``, ``compile_mode``), in place, so
      checkpoints keep their keys.
    * ``detect_anomaly`` is read by the training step; ``fused_adamw`` by the optimizer.
    """
    from ..fast.gpu import ATTENTIONS

    perf = {"attention": "sdpa", "compile": False, "compile_mode": None, "compile_backend": "inductor",
            "grad_checkpointing": False, "detect_anomaly": False, "fused_adamw": "auto", **(perf or {})}
    bb = model.backbone
    if perf["attention"] not in ATTENTIONS:
        raise InputError(f"attention must be one of {ATTENTIONS}, got {perf['attention']!r}")
    done: dict[str, Any] = {"attention": bb.set_attention(perf["attention"]), "grad_checkpointing": [],
                            "compiled": [], "detect_anomaly": bool(perf["detect_anomaly"])}
    if perf["grad_checkpointing"]:
        every = 1 if perf["grad_checkpointing"] is True else int(perf["grad_checkpointing"])
        done["grad_checkpointing"] = bb.enable_gradient_checkpointing(every)
    if perf["compile"]:
        kw: dict[str, Any] = {"backend": perf["compile_backend"]}
        if perf["compile_mode"]:
            kw["mode"] = perf["compile_mode"]
        done["compiled"] = bb.compile_towers(**kw)
    if log is not None and (done["grad_checkpointing"] or done["compiled"] or perf["attention"] != "sdpa"):
        log(f"perf: {done}")
    return {**perf, "applied": done}


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: dict, log=print):
        self.cfg = cfg
        self.log = log
        self.rank, self.world = _dist()
        self.out = Path(cfg["out_dir"])
        self.seed = int(cfg["seed"])
        self.data_seed = data_seed(cfg)  # draws the data and the class photos (data.split_seed, else seed)
        dev = cfg.get("device", "auto")
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev)
        amp = cfg.get("amp", "auto")
        self.amp_dtype = torch.bfloat16 if (amp == "bf16" or (amp == "auto" and self.device.type == "cuda")) else None
        self._seed_all(self.seed)
        self.model = self._build_model().to(self.device)
        perf = dict(cfg.get("perf") or {})
        cpu_engines = bool(perf.pop("cpu_engines", False))
        self.perf = apply_perf(self.model, perf, log=self.log if self.rank == 0 else None)
        if cpu_engines and self.device.type == "cpu" and self.model.backbone.engine_modules():
            # frozen towers through ONNX Runtime / fused engines while caching features (cosine >= 0.999)
            from ..fast.cpu import optimize_for_cpu

            optimize_for_cpu(self.model, patch_encode=False)
        cache_dir = Path(cfg["data"].get("cache_dir") or os.environ.get("HYSAC_CACHE_DIR")
                         or Path.home() / ".cache" / "hysac") / "features"
        self._text_memo = self._load_text_memo(cache_dir)
        n_memo = len(self._text_memo)
        self.data = self._build_data()
        workers = (cfg.get("perf") or {}).get("loader_workers", "auto")
        if workers == "auto":
            from ..fast.loader import default_workers

            workers = default_workers() if self.device.type == "cuda" else 0
        # "a photo of a <object>" ↔ simulated photos of the object (backbones whose image tower has object classes)
        self.class_photos = float(cfg["loss"].get("class_photos") or 0.0)
        if cfg["loss"].get("contrastive_radius", "train") not in ("train", "detach"):
            raise InputError(f"loss.contrastive_radius must be 'train' or 'detach', got "
                             f"{cfg['loss'].get('contrastive_radius')!r}")
        names = self.model.backbone.class_names() if cfg["objective"] == "hysac" else None
        self.prompts, self.prompt_owner, self.prompt_eval = class_prompts(names or [])
        self.feat = Featurizer(self.model, self.data, cache_dir, bool(cfg.get("cache_features", True)), self.device,
                               self._text_memo, loader_workers=int(workers), prompts=self.prompts)
        self.anchor_dirs = self._anchor_directions(float(cfg["loss"].get("semantic_anchor") or 0.0))
        if len(self._text_memo) > n_memo:  # texts encoded for pairing and for the feature cache
            self._save_text_memo(cache_dir)
        self._text_memo = {}
        self.reference = None
        if cfg["objective"] == "safeclip":  # frozen copy of the initial encoders (Safe-CLIP's "original" model)
            self.reference = copy.deepcopy(self.model.backbone).eval()
            for p in self.reference.parameters():
                p.requires_grad_(False)
        self.loss_fn = HySACLoss(cfg["loss"].get("weights") or None,
                                 aperture_scale=float(cfg["loss"].get("aperture_scale", 1.0)))
        self.optimizer = self._build_optimizer()
        self.steps_per_epoch = steps_per_epoch(self.data, cfg["data"]["batch"])
        accum = int(cfg["optim"].get("grad_accum", 1))
        self.accum = max(1, accum)
        self.total_steps = max(1, (self.steps_per_epoch // self.accum) * int(cfg["optim"]["epochs"]))
        warm = int(cfg["optim"].get("warmup_steps", 0))

        schedule = str(cfg["optim"].get("schedule", "cosine"))
        if schedule not in ("cosine", "constant"):
            raise InputError(f"optim.schedule must be 'cosine' or 'constant', got {schedule!r}")

        def lr_lambda(step: int) -> float:
            if step < warm:
                return (step + 1) / max(1, warm)
            if schedule == "constant":
                return 1.0
            prog = min(1.0, (step - warm) / max(1, self.total_steps - warm))
            return 0.5 * (1 + math.cos(math.pi * prog))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda)
        self.state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "best_epoch": -1,
                      "bad_epochs": 0, "history": [], "done": False}

    # -- construction -----------------------------------------------------------------------------------
    @staticmethod
    def _seed_all(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _build_model(self) -> HySAC:
        cfg = self.cfg
        bcfg = dict(cfg["backbone"])
        if bcfg.get("kind") == "clip" and "vision_config" not in bcfg:
            from ..backbones.clip import ClipBackbone

            backbone = ClipBackbone.from_hub_or_folder(bcfg.get("source"), lora=bcfg.get("lora"))
            # only LoRA weights train in the towers (spec §2.2)
            for n, p in backbone.named_parameters():
                p.requires_grad_("lora_" in n if bcfg.get("lora") else True)
        else:
            backbone = build_backbone(bcfg)
        m = cfg["model"]
        head = m.get("category_head", 0)
        model = HySAC(backbone, curv_init=float(m.get("curv_init", 1.0)), learn_curv=bool(m.get("learn_curv", True)),
                      category_head=False if head is None else (int(head) or True), traversal=m.get("traversal"),
                      name=cfg["name"])
        model.objective = cfg["objective"]
        return model

    def _memo_path(self, cache_dir: Path) -> Path | None:
        bb = self.model.backbone
        if not bb.has_base_features:
            return None  # only frozen base features are reusable across runs
        key = _base_feature_key(bb, "text").hexdigest()[:20]
        return Path(cache_dir) / f"text-memo-{key}.safetensors"

    def _load_text_memo(self, cache_dir: Path) -> dict[str, Tensor]:
        """Frozen text features computed by earlier runs (texts in the file's metadata), to skip re-encoding."""
        path = self._memo_path(cache_dir)
        if path is None or not path.is_file():
            return {}
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            texts = json.loads(fh.metadata()["texts"])
            feats = fh.get_tensor("features")
        return dict(zip(texts, feats))

    def _save_text_memo(self, cache_dir: Path) -> None:
        path = self._memo_path(cache_dir)
        if path is None or self.rank != 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        texts = list(self._text_memo)
        tmp = path.with_suffix(".tmp")
        save_file({"features": torch.stack([self._text_memo[t] for t in texts]).contiguous()}, str(tmp),
                  metadata={"texts": json.dumps(texts)})
        tmp.replace(path)

    def _build_data(self) -> TrainData:
        kind = self.cfg["data"]["kind"]
        if kind == "offline":
            return build_offline(self.cfg, lambda texts: frozen_text_space(self.model.backbone, texts, self.device,
                                                                           self._text_memo))
        if kind == "visu":
            return build_visu(self.cfg)
        raise InputError(f"unknown data.kind {kind!r}; use 'offline' or 'visu'")

    def _build_optimizer(self):
        o = self.cfg["optim"]
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # scalars, biases and norm gains take no weight decay
            (no_decay if n in _SCALARS or p.dim() < 2 else decay).append(p)
        kw = {"lr": float(o["lr"]), "betas": tuple(o.get("betas", (0.9, 0.98))), "eps": float(o.get("eps", 1e-8))}
        fused = (self.cfg.get("perf") or {}).get("fused_adamw", "auto")
        if fused is True or (fused == "auto" and self.device.type == "cuda"):
            kw["fused"] = True
        return torch.optim.AdamW([{"params": decay, "weight_decay": float(o.get("weight_decay", 0.2))},
                                  {"params": no_decay, "weight_decay": 0.0}], **kw)

    # -- one step ---------------------------------------------------------------------------------------
    def _assemble(self, parts) -> dict[str, Any]:
        fams = self.data.families
        rows = np.concatenate([fams[n].rows[i] for n, i in parts])
        ts_cats = np.concatenate([fams[n].ts_cats[i] for n, i in parts])
        is_cats = np.concatenate([fams[n].is_cats[i] for n, i in parts])
        if self.world > 1:  # each process takes its share of the global batch
            sl = slice(self.rank, None, self.world)
            rows, ts_cats, is_cats = rows[sl], ts_cats[sl], is_cats[sl]
        return {"rows": torch.from_numpy(rows), "ts_cats": torch.from_numpy(ts_cats),
                "is_cats": torch.from_numpy(is_cats)}

    @staticmethod
    def _image_keys(rows: Tensor) -> list[tuple[int, ...]]:
        """The image index tuples :meth:`_embed` will ask the featurizer for (columns I and I*)."""
        keys = []
        for col in (1, 3):
            idx = rows[:, col]
            keys.append(tuple(torch.unique(idx[idx >= 0]).tolist()))
        return keys

    def _embed(self, rows: Tensor, backbone=None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Euclidean features for the T, I, Ts, Is columns (zeros where absent) and masks."""
        feats, masks = {}, {}
        for col, key, fn in ((0, "T", self.feat.text), (1, "I", self.feat.image), (2, "Ts", self.feat.text),
                             (3, "Is", self.feat.image)):
            idx = rows[:, col]
            m = idx >= 0
            uniq, inv = torch.unique(idx[m], return_inverse=True)
            f = fn(uniq, backbone)
            full = torch.zeros(rows.shape[0], self.model.embed_dim, device=self.device, dtype=torch.float32)
            if uniq.numel():
                full = full.index_put((m.nonzero().squeeze(1).to(self.device),), f.float()[inv.to(self.device)])
            feats[key], masks[f"has_{key}"] = full, m.to(self.device)
        return feats, masks

    def _loss(self, batch) -> tuple[Tensor, dict[str, float]]:
        cfg_l = self.cfg["loss"]
        # autocast's weight-cast cache must be off under activation checkpointing: the recomputed forward has to
        # redo the same casts (else "_to_copy ... not found in storage" from compiled, checkpointed towers)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None,
                            cache_enabled=not self.perf["applied"]["grad_checkpointing"]):
            feats, masks = self._embed(batch["rows"])
        if self.cfg["objective"] == "safeclip":
            with torch.no_grad():
                ref, _ = self._embed(batch["rows"], self.reference)
            b = {k: F.normalize(v.float(), dim=-1) for k, v in feats.items()}
            b.update({f"{k}0": F.normalize(v.float(), dim=-1) for k, v in ref.items()})
            b.update(masks)
            total, terms = safeclip_loss(b, self.model.logit_scale.float().exp(), cfg_l.get("safeclip") or None)
            return total, {k: float(v.detach()) for k, v in terms.items()}
        c = self.model.curv_tensor()
        hyp = {k: (self.model.lift_text if k in ("T", "Ts") else self.model.lift_image)(v) for k, v in feats.items()}
        b = {**hyp, **masks}
        extra = None
        if self.world > 1 and cfg_l.get("gather_negatives", True):
            extra = {}
            for k in ("T", "I", "Ts", "Is"):
                g = _gather_negatives(hyp[k], masks[f"has_{k}"], self.world)
                extra[k], extra[f"has_{k}"] = g
        con = None
        if cfg_l.get("contrastive_radius", "train") == "detach":
            con = {k: (self.model.lift_text if k in ("T", "Ts") else self.model.lift_image)(_radius_detached(v))
                   for k, v in feats.items()}
        total, terms = self.loss_fn(b, c, self.model.logit_scale.float().exp(), extra=extra, contrastive=con)
        logs = {k: float(v.detach()) for k, v in terms.items()}
        parts = [total]
        w_order = float(cfg_l.get("class_order", 0.0))
        w_rank = float(cfg_l.get("safety_rank", 0.0))
        # distances from the origin of each column's present rows, shared by the two radial terms
        d0 = ({k: L.dist0(hyp[k][masks[f"has_{k}"]], c) for k in ("T", "I", "Ts", "Is")}
              if w_order > 0 or w_rank > 0 else {})
        if w_order > 0:
            keys = ("T", "I", "Ts", "Is")  # classes S=0, V=1, U=2, G=3
            cls = [torch.full((len(d0[k]),), ci, device=self.device) for ci, k in enumerate(keys)]
            order = class_order_loss(torch.cat([d0[k] for k in keys]), torch.cat(cls),
                                     margin=float(cfg_l.get("order_margin", 0.1)),
                                     log_space=bool(cfg_l.get("order_log_space", False)))
            logs["class_order"] = float(order.detach())
            parts.append(w_order * order)
        if w_rank > 0:
            ranks = []
            for safe_k, unsafe_k in (("T", "Ts"), ("I", "Is")):
                a, b = d0[safe_k], d0[unsafe_k]
                if len(a) and len(b):
                    y = torch.cat([torch.zeros(len(a), dtype=torch.bool, device=a.device),
                                   torch.ones(len(b), dtype=torch.bool, device=b.device)])
                    ranks.append(safety_rank_loss(torch.cat([a, b]), y,
                                                  float(cfg_l.get("safety_rank_temperature", 0.05))))
            if ranks:
                rank = torch.stack(ranks).mean()
                logs["safety_rank"] = float(rank.detach())
                parts.append(w_rank * rank)
        if self.anchor_dirs is not None:
            anchor = self._anchor_loss(batch["rows"], feats, masks)
            logs["semantic_anchor"] = float(anchor.detach())
            parts.append(float(cfg_l["semantic_anchor"]) * anchor)
        if self.class_photos > 0 and self.prompts:
            cp = self._class_photo_loss(int(cfg_l.get("class_photos_batch", 64)))
            logs["class_photos"] = float(cp.detach())
            parts.append(self.class_photos * cp)
        w_cat = float(cfg_l.get("category", 0.0))
        if w_cat > 0 and self.model.category_head is not None:
            logits, targets = [], []
            pairs = (("Ts", batch["ts_cats"]), ("Is", batch["is_cats"]))
            if not cfg_l.get("category_unsafe_only", True):  # safe rows as all-negative targets
                pairs = (("T", None), ("I", None)) + pairs
            for k, cats in pairs:
                m = masks[f"has_{k}"]
                if not bool(m.any()):
                    continue
                logits.append(self.model.category_head(L.log_map0(hyp[k][m], c)))
                targets.append(torch.zeros(int(m.sum()), len(CATEGORIES), device=self.device) if cats is None
                               else cats.to(self.device)[m])
            if logits:
                cl = category_loss(torch.cat(logits), torch.cat(targets))
                logs["category"] = float(cl.detach())
                parts.append(w_cat * cl)
        return float(cfg_l.get("scale", 1.0)) * sum(parts), logs

    def _anchor_directions(self, weight: float) -> Tensor | None:
        """``loss.semantic_anchor``: (N, embed_dim) unit directions the polar text head gives the corpus texts'
        *frozen* tower features (the untuned tower; computed once), or ``None`` when the term is off."""
        if weight <= 0:
            return None
        bb = self.model.backbone
        frozen = frozen_text_space(bb, self.data.texts, self.device, self._text_memo)
        with torch.no_grad():
            dirs = bb.text_directions(torch.from_numpy(frozen).to(self.device))
        if dirs is None:
            raise InputError("loss.semantic_anchor needs a polar text head (backbone.head: polar)")
        return dirs.cpu()

    def _anchor_loss(self, rows: Tensor, feats: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        """Mean ``1 - cos`` between the batch texts' tuned directions and their frozen ones."""
        cos = []
        for k, col in (("T", 0), ("Ts", 2)):
            m = masks[f"has_{k}"]
            idx = rows[:, col][m.cpu()]
            cos.append(F.cosine_similarity(feats[k][m].float(), self.anchor_dirs[idx].to(self.device), dim=-1))
        return (1 - torch.cat(cos)).mean()

    def _class_photo_loss(self, n: int) -> Tensor:
        """Hyperbolic InfoNCE between ``n`` random object classes' prompts (one random template / synonym each) and
        simulated photos of them (:meth:`Backbone.class_photo_features`); the step's RNG draws both."""
        gen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,))))
        n_cls = len(self.prompt_eval)
        classes = torch.randperm(n_cls, generator=gen)[: min(n, n_cls)]
        starts, counts = self._prompt_spans()
        pick = starts[classes] + (torch.rand(len(classes), generator=gen) * counts[classes]).long()
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            txt = self.feat.text(pick, pool="prompts")
            img = self.model.backbone.class_photo_features(classes, gen)
        c = self.model.curv_tensor()
        return lorentz_contrastive(self.model.lift_image(img.float()), self.model.lift_text(txt.float()), c,
                                   self.model.logit_scale.float().exp())

    def _prompt_spans(self) -> tuple[Tensor, Tensor]:
        owner = torch.as_tensor(self.prompt_owner)
        counts = torch.bincount(owner, minlength=len(self.prompt_eval))
        starts = torch.cumsum(counts, 0) - counts
        return starts, counts

    @torch.no_grad()
    def class_photo_retrieval(self) -> dict[str, float]:
        """"a photo of a <first name>" of every object class against one simulated photo per class (fixed seed):
        R@1 / R@5 by geodesic distance, the stand-in for text→photo search over one photo per object."""
        if not self.prompts:
            return {}
        self.model.eval()
        q = self.model.lift_text(self.feat.text(torch.as_tensor(self.prompt_eval), pool="prompts").float())
        gen = torch.Generator().manual_seed(self.data_seed + 12345)
        classes = torch.arange(len(self.prompt_eval))
        g = torch.cat([self.model.lift_image(self.model.backbone.class_photo_features(classes[i:i + 250], gen).float())
                       for i in range(0, len(classes), 250)])
        r = M.recall_at_k(-L.pairwise_dist(q, g, self.model.curvature), classes, ks=(1, 5))
        return {"class_photo_R@1": r[1], "class_photo_R@5": r[5]}

    def _sync_grads(self) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        # every trainable tensor takes part (zeros where this process computed no gradient, e.g. the category
        # head when its share of the batch has no unsafe row), in one flat all-reduce, so that the processes
        # always agree on what is reduced
        params = [p for p in self.model.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
            offset += n

    # -- checkpoints ------------------------------------------------------------------------------------
    def _ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        d = self._ckpt_dir()
        d.mkdir(parents=True, exist_ok=True)
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.checkpoint_state_dict().items()}
        opt = self.optimizer.state_dict()
        for pid, st in opt["state"].items():
            for k, v in st.items():
                tensors[f"opt.{pid}.{k}"] = (v if isinstance(v, Tensor) else torch.tensor(v)).detach().cpu().contiguous()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"state": self.state, "param_groups": opt["param_groups"], "scheduler": self.scheduler.state_dict(),
                "rng_numpy": [np.random.get_state()[0], np.random.get_state()[1].tolist()] + list(np.random.get_state()[2:]),
                "rng_python": _py_rng_to_json(random.getstate())}
        meta["scheduler"].pop("lr_lambdas", None)
        tmp = d / ".tmp-last"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta))
        final = d / "last"
        if final.exists():
            old = d / ".old-last"
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)

    def load_checkpoint(self) -> bool:
        d = self._ckpt_dir() / "last"
        if not (d / "state.json").is_file():
            return False
        meta = json.loads((d / "state.json").read_text())
        tensors = load_file(str(d / "state.safetensors"))
        self.model.load_checkpoint_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                                              source=str(d))
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("opt."):
                _, pid, name = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[name] = v.to(self.device) if name != "step" else v
        self.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
        sched = self.scheduler.state_dict()
        sched.update(meta["scheduler"])
        self.scheduler.load_state_dict(sched)
        self.state = meta["state"]
        torch.set_rng_state(tensors["rng.torch"])
        rn = meta["rng_numpy"]
        np.random.set_state((rn[0], np.array(rn[1], dtype=np.uint32), *rn[2:]))
        random.setstate(_py_rng_from_json(meta["rng_python"]))
        return True

    # -- validation -------------------------------------------------------------------------------------
    @torch.no_grad()
    def embed_pool(self, tower: str, idx: Any) -> Tensor:
        """Pool indices (N,) of ``tower`` ("text" / "image") → (N, embed_dim) embeddings on the CPU, in chunks of
        1024: lifted onto the hyperboloid, or L2-normalised for the Euclidean Safe-CLIP objective."""
        fn = self.feat.text if tower == "text" else self.feat.image
        lift = self.model.lift_text if tower == "text" else self.model.lift_image
        euclid = self.cfg["objective"] == "safeclip"
        idx = np.asarray(idx, dtype=np.int64)
        out = []
        for i in range(0, len(idx), 1024):
            f = fn(torch.as_tensor(idx[i:i + 1024])).float()
            out.append(F.normalize(f, dim=-1) if euclid else lift(f))
        return torch.cat(out).cpu() if out else torch.zeros(0, self.model.embed_dim)

    @torch.no_grad()
    def evaluate(self, split: str = "val") -> dict[str, Any]:
        self.model.eval()
        self.model.backbone.refresh_class_features()
        es = getattr(self.data, split)
        c = self.model.curvature
        euclid = self.cfg["objective"] == "safeclip"
        t = self.embed_pool("text", es.text_idx)
        im = self.embed_pool("image", es.image_idx)
        pt = self.embed_pool("text", es.pair_text)
        pi = self.embed_pool("image", es.pair_image)
        res: dict[str, Any] = {"curvature": c, "textual_alpha": float(self.model.textual_alpha.detach().exp()),
                               "visual_alpha": float(self.model.visual_alpha.detach().exp())}
        # retrieval between captions and images (pairs), both directions
        if len(pt) > 1:
            sim = pt @ pi.T if euclid else -L.pairwise_dist(pt, pi, c)
            pos = torch.arange(len(pt))
            r_t2i = M.recall_at_k(sim, pos, ks=(1, 5, 10))
            r_i2t = M.recall_at_k(sim.T, pos, ks=(1, 5, 10))
            res.update({f"t2i_R@{k}": v for k, v in r_t2i.items()})
            res.update({f"i2t_R@{k}": v for k, v in r_i2t.items()})
            # every caption against every paired image (for ViSU: safe and unsafe together, a 2n × 2n gallery)
            res["recall_sum_union"] = r_t2i[1] + r_i2t[1]
            res["recall_sum"] = res["recall_sum_union"]
        if es.quads is not None and len(es.quads) > 1:
            # ViSU: the official figure, six paired R@1 terms (S↔V, S↔G, U↔V) over the n quadruplets
            q = es.quads
            pts = {"S": self.embed_pool("text", q[:, 0]), "V": self.embed_pool("image", q[:, 1]),
                   "U": self.embed_pool("text", q[:, 2]), "G": self.embed_pool("image", q[:, 3])}
            score = (lambda a, b: a @ b.T) if euclid else (lambda a, b: -L.pairwise_dist(a, b, c))
            res["recall_sum"], terms = M.official_recall_sum(pts, score)
            res["recall_terms"] = terms
        if euclid:
            return res
        ts, ims = L.dist0(t, c).numpy(), L.dist0(im, c).numpy()
        lab = es.text_label
        if lab.min() != lab.max():
            res["auroc_text"] = M.auroc(ts, lab)
            res["tpr@5%fpr_text"] = M.tpr_at_fpr(ts, lab, 0.05)
            for src in np.unique(es.text_source[lab == 0]):
                sel = (lab == 1) | (es.text_source == src)
                res[f"auroc_text_vs_{src}"] = M.auroc(ts[sel], lab[sel])
            hard = (lab == 0) | es.text_hard
            if (lab[hard] == 1).any():
                res["auroc_text_hard"] = M.auroc(ts[hard], lab[hard])
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res["per_category_auroc_text"] = M.per_category_auroc(ts, es.text_multihot, lab == 0, list(CATEGORIES))
            if self.model.category_head is not None:
                probs = self.model.categorize(t).numpy()
                u = lab == 1
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    try:
                        res["category_head_macro_auroc"] = M.macro_auroc(probs[u], es.text_multihot[u])
                    except ValueError:
                        pass
                if u.any():  # the one category shown for an unsafe text: is it one of its tags? (JSON: nan → null)
                    top = M.top_category_scores(probs[u], es.text_multihot[u], list(CATEGORIES))
                    res["category_head_top1"] = _nan_to_none(top)
        il = es.image_label
        if len(il) and il.min() != il.max():
            res["auroc_image"] = M.auroc(ims, il)
        res["median_dist"] = {
            "S": float(np.median(ts[lab == 0])) if (lab == 0).any() else None,
            "V": float(np.median(ims[il == 0])) if (il == 0).any() else None,
            "U": float(np.median(ts[lab == 1])) if (lab == 1).any() else None,
            "G": float(np.median(ims[il == 1])) if (il == 1).any() else None,
        }
        res.update(self.class_photo_retrieval())
        return res

    def _text_scores(self, split: str) -> np.ndarray:
        es = getattr(self.data, split)
        with torch.no_grad():
            t = self.model.lift_text(self.feat.text(torch.as_tensor(es.text_idx)).float()).cpu()
        return L.dist0(t, self.model.curvature).numpy()

    def _register_fpr_threshold(self, spec: str) -> dict:
        """:func:`register_threshold_spread` of the model's validation scores: the threshold, the register that
        sets it and its bootstrap spread."""
        es = self.data.val
        return register_threshold_spread(self._text_scores("val"), es.text_label, es.text_source, spec)

    def _image_scores(self, split: str) -> np.ndarray:
        es = getattr(self.data, split)
        with torch.no_grad():
            im = self.model.lift_image(self.feat.image(torch.as_tensor(es.image_idx)).float()).cpu()
        return L.dist0(im, self.model.curvature).numpy()

    def _prototype_scores(self) -> np.ndarray | None:
        """Distances from the origin of the backbone's object-class prototypes (``None`` if it has none)."""
        with torch.no_grad():
            protos = self.model.backbone.image_class_prototypes()
            if protos is None:
                return None
            x = self.model.lift_image(protos[1].float()).cpu()
        return L.dist0(x, self.model.curvature).numpy()

    def _image_source_threshold(self, rate: float, text_threshold: float | None = None,
                                classes: bool = False) -> float:
        """The lowest image threshold at which, on the validation split, at most ``rate`` of the safe images of
        every image source (emoji, clip art, photos) and of the object-class prototypes are flagged. With
        ``classes``, also of simulated photos of the object classes, and classes whose own name ("a photo of a
        revolver") the text side flags (at ``text_threshold``) are left out of both class groups: they are not
        everyday objects."""
        es = self.data.val
        scores = self._image_scores("val")
        safe = es.image_label == 0
        src = es.image_source if es.image_source is not None else np.array(["images"] * len(scores))
        groups = [(scores[safe & (src == s)], rate) for s in np.unique(src[safe])]
        everyday = self._everyday_classes(text_threshold) if classes else None
        protos = self._prototype_scores()
        if protos is not None:
            groups.append((protos if everyday is None else protos[everyday], rate))
        photos = self._class_photo_scores() if classes else None
        if photos is not None:
            if everyday is not None:
                photos = photos.reshape(-1, len(everyday))[:, everyday].reshape(-1)
            groups.append((photos, rate))
        return _worst_quantile(groups)

    @torch.no_grad()
    def _everyday_classes(self, text_threshold: float | None) -> np.ndarray | None:
        """(K,) bool: the object classes whose "a photo of a <name>" prompt scores at most ``text_threshold``."""
        if text_threshold is None or not self.prompts:
            return None
        self.model.eval()
        q = self.model.lift_text(self.feat.text(torch.as_tensor(self.prompt_eval), pool="prompts").float()).cpu()
        return ~over_threshold(L.dist0(q, self.model.curvature).numpy(), float(text_threshold))

    @torch.no_grad()
    def _class_photo_scores(self, per_class: int = 3) -> np.ndarray | None:
        """Distances from the origin of ``per_class`` simulated photos of every object class (fixed seed): the
        stand-in for "everyday photos of objects" when fitting the image threshold."""
        names = self.model.backbone.class_names() if self.cfg["objective"] == "hysac" else None
        if not names:
            return None
        gen = torch.Generator().manual_seed(self.data_seed + 54321)
        classes = torch.arange(len(names)).repeat(per_class)
        x = torch.cat([self.model.lift_image(self.model.backbone.class_photo_features(classes[i:i + 500], gen).float())
                       for i in range(0, len(classes), 500)]).cpu()
        return L.dist0(x, self.model.curvature).numpy()

    def register_report(self, split: str) -> dict[str, dict[str, float]]:
        """Per source (styled copies apart): n, FPR on its safe texts and TPR on its unsafe texts at the model's
        text threshold, and AUROC where it has both classes."""
        if self.model.bounds is None:
            return {}
        es = getattr(self.data, split)
        scores = self._text_scores(split)
        th = self.model.unsafe_threshold("text")
        out: dict[str, dict[str, float]] = {}
        for src in np.unique(es.text_source):
            sel = es.text_source == src
            y, sc = es.text_label[sel], scores[sel]
            row: dict[str, float] = {"n": int(sel.sum()), "n_safe": int((y == 0).sum()), "n_unsafe": int((y == 1).sum())}
            if (y == 0).any():
                row["fpr"] = float((sc[y == 0] > th).mean())
            if (y == 1).any():
                row["tpr"] = float((sc[y == 1] > th).mean())
            if y.min() != y.max():
                row["auroc"] = float(M.auroc(sc, y))
            out[str(src)] = row
        return out

    def _class_distances(self, split: str) -> dict[str, np.ndarray]:
        es = getattr(self.data, split)
        ts, ims = self._text_scores(split), self._image_scores(split)
        out = {"S": ts[es.text_label == 0], "U": ts[es.text_label == 1]}
        if (es.image_label == 0).any():
            out["V"] = ims[es.image_label == 0]
        if (es.image_label == 1).any():
            out["G"] = ims[es.image_label == 1]
        return out

    # -- the loop ---------------------------------------------------------------------------------------
    def _log_jsonl(self, rec: dict) -> None:
        if self.rank != 0:
            return
        with open(self.out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def fit(self, resume: bool = True) -> dict[str, Any]:
        from tqdm.auto import tqdm

        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(dump_config(self.cfg))
        if resume and self.load_checkpoint():
            self.log(f"resumed from {self._ckpt_dir() / 'last'} at step {self.state['global_step']}")
        elif (self.out / "log.jsonl").exists():
            (self.out / "log.jsonl").unlink()
        cfg = self.cfg
        epochs = int(cfg["optim"]["epochs"])
        max_steps = cfg.get("max_steps")
        batch = cfg["data"]["batch"]
        clip = float(cfg["optim"].get("clip_grad") or 0)
        ck_every = int(cfg.get("checkpoint_every") or 0)
        refresh_every = int(cfg.get("refresh_class_features_every") or 0)
        self.model.backbone.refresh_class_features()  # from the tower as it is now (fresh or resumed)
        stopped_early = False
        nxt = None  # ((epoch, step), rows) of the next step, when the image prefetch assembled it early
        while self.state["epoch"] < epochs and not self.state["done"]:
            ep = self.state["epoch"]
            perm = epoch_order(self.data, self.seed, ep)
            self.model.train()
            bar = tqdm(total=self.steps_per_epoch, initial=self.state["step_in_epoch"], desc=f"epoch {ep + 1}/{epochs}",
                       unit="step", disable=self.rank != 0)
            while self.state["step_in_epoch"] < self.steps_per_epoch:
                s = self.state["step_in_epoch"]
                torch.manual_seed(hash((self.seed, ep, s)) % 2**31)  # dropout stream independent of resume point
                if nxt is not None and nxt[0] == (ep, s):  # assembled at the previous step, for the prefetch
                    batch_rows = nxt[1]
                else:
                    batch_rows = self._assemble(step_rows(self.data, batch, self.seed, ep, s, perm))
                nxt = None
                if self.feat.loader_workers and s + 1 < self.steps_per_epoch:  # decode the next step meanwhile
                    nxt = ((ep, s + 1), self._assemble(step_rows(self.data, batch, self.seed, ep, s + 1, perm)))
                    self.feat.prefetch(self._image_keys(batch_rows["rows"]) + self._image_keys(nxt[1]["rows"]))
                with torch.autograd.set_detect_anomaly(bool(self.perf["detect_anomaly"])):
                    loss, logs = self._loss(batch_rows)
                    (loss / self.accum).backward()
                self.state["step_in_epoch"] += 1
                bar.update(1)
                if self.state["step_in_epoch"] % self.accum and self.state["step_in_epoch"] < self.steps_per_epoch:
                    continue
                self._sync_grads()
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                self.model.clamp_scalars_()
                self.state["global_step"] += 1
                rec = {"step": self.state["global_step"], "epoch": ep, "lr": self.scheduler.get_last_lr()[0],
                       "loss": float(loss.detach()), **logs, "curvature": self.model.curvature,
                       "visual_alpha": float(self.model.visual_alpha.detach().exp()),
                       "textual_alpha": float(self.model.textual_alpha.detach().exp()),
                       "logit_scale": float(self.model.logit_scale.detach().exp())}
                self._log_jsonl(rec)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}", c=f"{self.model.curvature:.3f}")
                if refresh_every and self.state["global_step"] % refresh_every == 0:
                    self.model.backbone.refresh_class_features()
                if ck_every and self.state["global_step"] % ck_every == 0:
                    self.save_checkpoint()
                if max_steps is not None and self.state["global_step"] >= int(max_steps):
                    bar.close()
                    self.save_checkpoint()
                    return {"stopped_at_step": self.state["global_step"], "interrupted": True}
            bar.close()
            # end of epoch: validate, select, maybe stop
            metrics = self.evaluate("val")
            sel = cfg.get("select_metric", "auroc_text")
            score = selection_score(sel, metrics)
            selected, best = select_epoch(self.state["best"], score, float(cfg.get("select_tolerance") or 0.0))
            if selected:
                self.state.update(best=best, best_epoch=ep, bad_epochs=0)
                self._save_best()
            else:
                self.state["bad_epochs"] += 1
            self.state["history"].append({"epoch": ep, sel: score, "global_step": self.state["global_step"]})
            self._log_jsonl({"epoch_end": ep, "val": metrics})
            self.log(f"epoch {ep + 1}: {sel}={score:.4f}{' (selected)' if selected else ''}")
            self.state["epoch"] += 1
            self.state["step_in_epoch"] = 0
            if self.state["bad_epochs"] >= int(cfg.get("patience", 1e9)):
                self.state["done"] = True
                stopped_early = True
            self.save_checkpoint()
        return self.finish(stopped_early)

    def refit_categories(self, refit: RefitConfig) -> dict[str, Any]:
        """``category_refit``: fit the category head afresh on the chosen model's tangent vectors of the unsafe
        training rows it learned from (:mod:`hysac.train.categories`), each family weighing its share of a batch
        (unsafe texts drawn as training draws them; unsafe images and their captions). The rest of the model is
        untouched."""
        fams, batch = self.data.families, self.cfg["data"]["batch"]
        c = self.model.curvature
        xs, ys, ws = [], [], []
        parts = [("unsafe_text", "text", 2, "ts_cats", int(batch.get("unsafe_text", 0)), True),
                 ("unsafe_image", "text", 2, "ts_cats", int(batch.get("unsafe_image", 0)), False),
                 ("unsafe_image", "image", 3, "is_cats", int(batch.get("unsafe_image", 0)), False)]
        for fam_name, tower, col, cats, share, drawn in parts:
            fam = fams.get(fam_name)
            if fam is None or not len(fam.rows) or share <= 0:
                continue
            with torch.no_grad():
                xs.append(L.log_map0(self.embed_pool(tower, fam.rows[:, col]).float(), c))
            ys.append(torch.as_tensor(getattr(fam, cats), dtype=torch.float32))
            ws.append(torch.as_tensor(weighted_rows(len(fam.rows), fam.weight if drawn else None, share)))
        if not xs:
            raise InputError("category_refit: the training split has no unsafe rows with categories")
        info = refit_category_head(self.model.category_head, torch.cat(xs), torch.cat(ys), torch.cat(ws), refit,
                                   progress=self.rank == 0)
        self.model.category_head.eval()
        self.model.weights_changed()
        self.log(f"category head refitted on {info['rows']} rows: weighted loss {info['loss_before']:.4f} -> "
                 f"{info['loss_after']:.4f}")
        return info

    def _save_best(self) -> None:
        if self.rank != 0:
            return
        d = self._ckpt_dir()
        d.mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().cpu().contiguous() for k, v in self.model.checkpoint_state_dict().items()}
        save_file(sd, str(d / "best.tmp"))
        (d / "best.tmp").replace(d / "best.safetensors")

    def finish_from(self, weights: Path) -> dict[str, Any]:
        """Skip training: load ``weights`` (the ``model.safetensors`` of a model this config trained, as
        :func:`finish_weights` finds it) and run :meth:`finish` on them: category refit (``category_refit``),
        thresholds, metrics and export. Epoch and step counts are carried over from the model's ``metrics.json``."""
        prev_path = Path(weights).parent / "metrics.json"
        try:
            prev = json.loads(prev_path.read_text()) if prev_path.is_file() else {}
            best_epoch, step = int(prev.get("best_epoch", 1)), int(prev.get("global_step", 0))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise InputError(f"--finish-from: unreadable {prev_path} ({e})") from None
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.json").write_text(dump_config(self.cfg))
        self.state.update(best_epoch=best_epoch - 1, global_step=step)
        return self.finish(bool(prev.get("stopped_early", False)), weights=weights)

    def finish(self, stopped_early: bool = False, weights: Path | None = None) -> dict[str, Any]:
        """Load the selected weights (the best checkpoint, or ``weights``), refit the category head
        (``category_refit``), fit thresholds, measure val / test and export."""
        best = self._ckpt_dir() / "best.safetensors" if weights is None else Path(weights)
        if best.is_file():
            self.model.load_checkpoint_state_dict(load_file(str(best)), source=str(best))
        self.model.eval()
        self.model.backbone.refresh_class_features()  # the thresholds below are fitted on what gets exported
        result: dict[str, Any] = {"name": self.cfg["name"], "objective": self.cfg["objective"],
                                  "best_epoch": self.state["best_epoch"] + 1, "stopped_early": stopped_early,
                                  "global_step": self.state["global_step"], "data": self.data.info}
        refit = RefitConfig.from_dict(self.cfg.get("category_refit"))
        if refit is not None and self.model.category_head is not None and self.cfg["objective"] == "hysac":
            result["category_refit"] = self.refit_categories(refit)
        if self.cfg["objective"] == "hysac":
            dists = self._class_distances("val")
            from ..metrics import best_threshold

            thresholds = {}
            tscores = np.concatenate([dists["S"], dists["U"]])
            tlab = np.concatenate([np.zeros(len(dists["S"])), np.ones(len(dists["U"]))])
            crit = self.cfg.get("threshold_criterion", "youden")
            if str(crit).startswith("register_fpr@"):
                spread = self._register_fpr_threshold(str(crit).split("@", 1)[1])
                thresholds["text"] = spread["threshold"]
                result["text_threshold"] = spread
                self.log(f"text threshold {spread['threshold']:.4f}, set by {spread['set_by']}; bootstrap s.d. "
                         f"{spread['bootstrap_sd']:.4f} (5-95 %: {spread['bootstrap_q05']:.4f}-"
                         f"{spread['bootstrap_q95']:.4f})")
                crit = "youden"  # images: no registers
            else:
                thresholds["text"] = float(best_threshold(tscores, tlab, crit)[0])
            icrit = str(self.cfg.get("threshold_criterion_image") or crit)
            if icrit.startswith("source_fpr@"):
                # "source_fpr@0.01+classes": also simulated photos of every everyday object class
                rate, _, extra = icrit.split("@", 1)[1].partition("+")
                if extra not in ("", "classes"):
                    raise InputError(f"threshold_criterion_image: unknown group {extra!r} (use source_fpr@R or "
                                     "source_fpr@R+classes)")
                thresholds["image"] = self._image_source_threshold(float(rate), thresholds.get("text"),
                                                                   classes=extra == "classes")
            elif "V" in dists and "G" in dists:
                iscores = np.concatenate([dists["V"], dists["G"]])
                ilab = np.concatenate([np.zeros(len(dists["V"])), np.ones(len(dists["G"]))])
                thresholds["image"] = float(best_threshold(iscores, ilab, icrit)[0])
            self.model.bounds = fit_bounds(dists, thresholds=thresholds)
        result["val"] = self.evaluate("val")
        result["test"] = self.evaluate("test")
        if self.cfg["objective"] == "hysac":
            result["val"]["per_source_at_threshold"] = self.register_report("val")
            result["test"]["per_source_at_threshold"] = self.register_report("test")
        if self.rank == 0:
            self.model.save_pretrained(self.out / "model")
            (self.out / "metrics.json").write_text(json.dumps(result, indent=2))
            export = self.cfg.get("export_dir")
            if export:
                self.model.save_pretrained(export)
                (Path(export) / "metrics.json").write_text(json.dumps(result, indent=2))
                (Path(export) / "training_config.json").write_text(dump_config(self.cfg))
                self.log(f"exported model to {export}")
        return result


#: templates of the object-class prompts (the first is the evaluation query)
CLASS_PROMPT_TEMPLATES = ("a photo of a {}", "a photo of the {}", "a picture of a {}", "a close-up photo of a {}",
                          "a photo of my {}", "{}")
CLASS_PROMPT_LEMMAS = 3


def class_prompts(names: list[list[str]]) -> tuple[list[str], list[int], list[int]]:
    """Object classes (each a list of synonyms) → ``(prompts, owner, eval_index)``: every template × the first
    :data:`CLASS_PROMPT_LEMMAS` synonyms, grouped by class (``owner[j]`` the class of ``prompts[j]``), and per class
    the index of "a photo of a <first synonym>"."""
    prompts: list[str] = []
    owner: list[int] = []
    first: list[int] = []
    for c, lemmas in enumerate(names):
        first.append(len(prompts))
        for lemma in lemmas[:CLASS_PROMPT_LEMMAS]:
            for t in CLASS_PROMPT_TEMPLATES:
                prompts.append(t.format(lemma))
                owner.append(c)
    return prompts, owner, first


def _radius_detached(x_tan: Tensor) -> Tensor:
    """(B,D) tangent features with the same values but no gradient through their length: only their direction
    trains (``loss.contrastive_radius: detach``)."""
    x = x_tan.float()
    norm = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return x / norm * norm.detach()


def _nan_to_none(x: Any) -> Any:
    """A metrics tree with ``nan`` → ``None`` (``metrics.json`` stays strict JSON)."""
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def select_epoch(best: float | None, score: float, tolerance: float = 0.0) -> tuple[bool, float]:
    """Epoch selection, one validation at a time: ``(selected, new best)`` for an epoch scoring ``score`` after
    the best score ``best`` so far (``None`` before the first). An epoch is selected when it beats ``best``, or,
    with ``tolerance > 0``, when it comes within ``tolerance`` of it; so at the end the selected epoch is the
    latest whose score is within ``tolerance`` of the best of all epochs."""
    if best is None or score > best:
        return True, score
    return bool(tolerance > 0 and score >= best - tolerance), best


def _tower_key(key: str) -> bool:
    """Backbone config keys that change the frozen towers' base features (heads and image bridges do not)."""
    return "head" not in key and "conse" not in key and key not in ("seed", "image_bridge", "polar_base")


def _base_feature_key(backbone, tower: str):
    """sha256 (updatable) over what decides ``tower``'s cached base features: the backbone config keys of that
    frozen tower (text: every tower key but ``text_lora``, whose adapters start at zero and change no bit of them;
    image: the keys without "text") and what computes them (:func:`_engine_tag`)."""
    keep = (lambda k: k != "text_lora") if tower == "text" else (lambda k: "text" not in k)
    spec = {k: v for k, v in backbone.config().items() if _tower_key(k) and keep(k)}
    spec["engine"] = _engine_tag(backbone, tower)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode())


def _engine_tag(backbone, tower: str) -> str:
    """What computes ``tower``'s base features: an installed inference engine (ONNX Runtime, reduced precision;
    its repr names the exported model and settings) or the torch tower. Its results differ in the last bits, so
    cached features record which one made them."""
    engine = backbone.inference_engines.get(tower)
    return "torch" if engine is None else f"{type(engine).__name__}:{engine!r}"


#: a styled register with fewer safe validation texts than this is pooled with its source group for the threshold
MIN_REGISTER_TEXTS = 50
#: resampled scores held at once by :func:`register_threshold_spread` (16 MB of float64)
_BOOTSTRAP_CELLS = 2_000_000


def _register_groups(scores: np.ndarray, labels: np.ndarray, sources: np.ndarray, spec: str,
                     min_texts: int) -> list[tuple[str, np.ndarray, float]]:
    """(register, its safe texts' scores, its target FPR) for every register with safe texts, a styled register
    with fewer than ``min_texts`` safe texts pooled with its source group (see :func:`register_threshold`)."""
    from ..data.corpus import register_key

    targets = parse_rate_spec(spec)
    fallback = targets.get("*", min(targets.values()))
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    keys = np.array([register_key(str(s)) for s in sources])  # "<group>" or "<group>+style"
    safe = labels == 0
    for key in np.unique(keys[safe]):
        if "+" in key and int((safe & (keys == key)).sum()) < min_texts:
            keys[keys == key] = key.split("+", 1)[0]
    return [(str(key), scores[safe & (keys == key)], targets.get(key.split("+", 1)[0], fallback))
            for key in np.unique(keys[safe])]


def register_threshold(scores: np.ndarray, labels: np.ndarray, sources: np.ndarray, spec: str,
                       min_texts: int = MIN_REGISTER_TEXTS) -> float:
    """The lowest threshold at which the false-positive rate of the safe texts of *every* register (source group;
    styled copies as a register of their own) is at most its target rate.

    ``spec`` is one rate for all registers (``"0.05"``) or per source group
    (``"prompts=0.03,captions=0.03,requests=0.06,moderation=0.06,tweets=0.06"``; a group not named gets the
    strictest rate given). A styled register with fewer than ``min_texts`` safe texts is counted with its source
    group: the 91st percentile of 17 texts is their second-highest score, so one text would set the threshold for
    every register."""
    return _worst_quantile([(g, rate) for _, g, rate in _register_groups(scores, labels, sources, spec, min_texts)])


def register_threshold_spread(scores: np.ndarray, labels: np.ndarray, sources: np.ndarray, spec: str, *,
                              draws: int = 1000, seed: int = 0, min_texts: int = MIN_REGISTER_TEXTS) -> dict:
    """How steady :func:`register_threshold` is on these texts: the threshold, the register whose quantile sets it,
    and the threshold's spread over ``draws`` bootstrap draws (each register's safe texts resampled with
    replacement, seeded). The threshold is the largest of a dozen high quantiles of a few hundred texts each, so
    two trainings whose thresholds differ by less than about one ``bootstrap_sd`` do not differ in it measurably.

    (N,) scores, (N,) labels (1 unsafe), (N,) source names → ``{"threshold", "set_by", "bootstrap_sd",
    "bootstrap_q05", "bootstrap_q95", "draws"}`` (``set_by`` a register name, ``draws`` an int, the rest floats)."""
    if draws < 2:
        raise ValueError(f"register_threshold_spread: need at least 2 draws, got {draws}")
    groups = _register_groups(scores, labels, sources, spec, min_texts)
    if not groups:
        raise ValueError("register_threshold_spread: no safe texts")
    tops = [float(np.quantile(g, 1.0 - rate, method="higher")) for _, g, rate in groups]
    rng = np.random.default_rng(seed)
    boot = np.full(draws, -np.inf)
    for _, g, rate in groups:  # one register at a time: (draws, n) resamples of its n safe scores, in chunks of
        step = max(1, _BOOTSTRAP_CELLS // len(g))  # at most _BOOTSTRAP_CELLS resampled scores (memory stays bounded)
        for lo in range(0, draws, step):
            hi = min(draws, lo + step)
            boot[lo:hi] = np.maximum(boot[lo:hi], np.quantile(g[rng.integers(0, len(g), (hi - lo, len(g)))],
                                                              1.0 - rate, axis=1, method="higher"))
    return {"threshold": max(tops), "set_by": groups[int(np.argmax(tops))][0], "bootstrap_sd": float(boot.std()),
            "bootstrap_q05": float(np.quantile(boot, 0.05)), "bootstrap_q95": float(np.quantile(boot, 0.95)),
            "draws": int(draws)}


def _worst_quantile(groups: list[tuple[np.ndarray, float]]) -> float:
    """The lowest threshold at which every group's false-positive rate is at most its rate: the largest of the
    groups' ``1 - rate`` quantiles (empty groups ignored)."""
    return max(float(np.quantile(g, 1.0 - rate, method="higher")) for g, rate in groups if len(g))


def parse_rate_spec(spec: str) -> dict[str, float]:
    """``"0.05"`` → ``{"*": 0.05}``; ``"prompts=0.03,requests=0.06"`` → ``{"prompts": 0.03, "requests": 0.06}``."""
    out: dict[str, float] = {}
    for part in str(spec).replace(" ", "").split(","):
        key, sep, value = part.rpartition("=")
        try:
            rate = float(value)
        except ValueError:
            raise InputError(f"threshold rate {part!r} in {spec!r}: not a number") from None
        if not 0.0 <= rate < 1.0:
            raise InputError(f"threshold rate {part!r} in {spec!r}: must be in [0, 1)")
        out[key if sep else "*"] = rate
    return out


def selection_score(expr: str, metrics: dict[str, Any]) -> float:
    """Model-selection score: a metric name or a weighted sum such as
    ``"auroc_text + 0.1*category_head_macro_auroc + 0.001*recall_sum"``; missing metrics count as 0."""
    total = 0.0
    for term in expr.replace(" ", "").split("+"):
        weight, _, name = term.rpartition("*")
        value = metrics.get(name)
        if not isinstance(value, (int, float)):
            value = 0.0
        try:
            total += (float(weight) if weight else 1.0) * float(value)
        except ValueError:
            raise InputError(f"select_metric {expr!r}: cannot read the weight in {term!r}") from None
    return total


def _py_rng_to_json(state) -> list:
    return [state[0], list(state[1]), state[2]]


def _py_rng_from_json(data) -> tuple:
    return (data[0], tuple(data[1]), data[2])


def finish_weights(model: str | os.PathLike) -> Path:
    """The ``model.safetensors`` of a model folder or registered name, for ``--finish-from`` (one-line error if
    there is none)."""
    from ..pretrained import resolve

    from safetensors import safe_open

    folder = resolve(model)[0]
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise InputError(f"--finish-from {model}: no model.safetensors in {folder}")
    try:
        with safe_open(str(weights), framework="pt") as f:  # reads the header only
            f.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise InputError(f"--finish-from {model}: {weights} is not a readable safetensors file ({e})") from None
    return weights


def run_training(cfg: dict, resume: bool = True, finish_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` from a config dict and run it to the end (or ``max_steps``); with ``finish_from``,
    only the final stage on that model's weights (:meth:`Trainer.finish_from`)."""
    t0 = time.time()
    # a wrong name or folder fails before the data is built
    weights = None if finish_from is None else finish_weights(finish_from)
    trainer = Trainer(cfg)
    out = trainer.fit(resume=resume) if weights is None else trainer.finish_from(weights)
    out["seconds"] = round(time.time() - t0, 1)
    return out
