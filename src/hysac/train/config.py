"""Training configuration: YAML file + dotted ``key=value`` overrides over documented defaults."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from ..policy import check_traversal
from .categories import RefitConfig

DEFAULTS: dict[str, Any] = {
    "name": "hysac-mini",
    "seed": 0,
    "out_dir": "runs/hysac-mini",
    "export_dir": None,  # copy the final model here (e.g. src/hysac/pretrained/hysac-mini)
    "objective": "hysac",  # "hysac" (paper losses) | "safeclip" (Euclidean unlearning objective)
    "backbone": {"kind": "mini", "embed_dim": 256, "head": "mlp", "head_hidden": 512},
    "model": {
        "curv_init": 1.0,
        "learn_curv": True,
        "category_head": 0,  # 0: linear head on log_map0(x); N > 0: MLP with N hidden units; null: none
        "traversal": {"rule": "bound", "margin": 0.0},
    },
    "data": {
        "kind": "offline",  # "offline": I2P + COCO + safe art prompts + OpenMoji | "visu": ViSU JSON quadruplets
        "data_dir": None,  # default ../shared/data (or $HYSAC_DATA_DIR)
        "cache_dir": None,  # default ~/.cache/hysac (or $HYSAC_CACHE_DIR)
        "openmoji_size": 224,
        "emoji_limit": None,  # render/use only the first N emoji (tests)
        "emoji_codepoints": None,  # or an explicit list of OpenMoji codepoint keys, e.g. ["1F600", "1F52B"]
        "max_per_source": None,  # cap texts per source (tests)
        # "groups": every source group (hysac.data.corpus.GROUPS) carries the same total weight in the text families
        # it appears in (rows drawn with probability 1 / (rows of the group) / groups); None: uniform rows
        "balance": None,
        "clipart": False,  # add Open Clip Art images (apt-get install openclipart-png)
        "clipart_root": None,  # default /usr/share/openclipart/png
        "clipart_max_safe": 2000,
        # texts from every register (hysac.data.corpus; a dict of CorpusConfig settings, {} for the defaults);
        # None: the older I2P + COCO + safe art prompts mix
        "corpus": None,
        "photos": False,  # real photos (hysac.data.photos) in the validation / test splits, never trained on
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        # the seed that draws the data (splits, subsamples, styling, image pools); null: the top-level seed, which
        # also draws initialisation, batch order and dropout (seed=1 data.split_seed=0: same splits, new model seed)
        "split_seed": None,
        "visu_train": None, "visu_val": None, "visu_test": None, "coco_root": None, "visu_root": None,
        # rows per step of each family (see hysac.train.data)
        "batch": {"unsafe_text": 128, "safe_text": 128, "safe_image": 64, "unsafe_image": 16, "quad": 32},
    },
    "loss": {
        "weights": {"con_TTs": 0.5, "ent_T_Ts": 1.0},  # HySACLossWeights overrides (paper terms default to 1)
        "aperture_scale": 1.0,
        "class_order": 1.0,  # weight of the batch-level S < V < U < G radial ordering (our extension)
        "order_margin": 0.1,
        "order_log_space": False,  # hinge on log-distances (ratio margin) instead of distances
        # weight of the pairwise logistic safe-vs-unsafe ranking of log distances from the origin (texts with texts,
        # images with images; hysac.losses.safety_rank_loss) and its temperature
        "safety_rank": 0.0,
        "safety_rank_temperature": 0.05,
        "category": 1.0,  # weight of the 7-category BCE head
        "category_unsafe_only": True,  # train the category head on unsafe rows only
        # weight of "a photo of a <object>" ↔ simulated photo of that object contrastive term (backbones with
        # object classes; see Backbone.class_photo_features), and its classes per step
        "scale": 1.0,  # factor on the whole loss (the official code's is 1/7 of ours: it divides by the term count)
        "gather_negatives": True,  # several processes: the others' rows join the contrastive terms as negatives
        "class_photos": 0.0,
        # with a polar text head and a tuned text tower: weight of 1 - cos(tuned direction, frozen direction) on
        # the batch's texts, so tuning for safety does not move what the pretrained tower says a text is about
        "semantic_anchor": 0.0,
        # "detach": the contrastive terms see each point with its distance from the origin detached, so alignment
        # trains directions only and the radius (the safety score) is shaped by the safety terms alone
        "contrastive_radius": "train",
        "class_photos_batch": 64,
        "safeclip": {},  # SafeCLIPLossWeights overrides
    },
    "optim": {
        "lr": 1e-3, "weight_decay": 0.2, "betas": [0.9, 0.98], "eps": 1e-8,
        "warmup_steps": 50, "epochs": 20, "grad_accum": 1, "clip_grad": 1.0,
        "schedule": "cosine",  # "cosine" (linear warm-up, then cosine decay) or "constant" (the official code's)
    },
    "amp": "auto",  # "auto" (bf16 on GPU), "bf16", "off"
    # speed knobs of the training step (see hysac.train.trainer.apply_perf); the geometry always stays fp32
    "perf": {
        "attention": "sdpa",  # towers' attention: "sdpa", "eager" (the official code's), "flash_attention_2", "keep"
        "compile": False,  # nn.Module.compile on each tower (in place: checkpoint keys do not change)
        "compile_mode": None,  # e.g. "max-autotune-no-cudagraphs"
        "compile_backend": "inductor",
        "grad_checkpointing": False,  # activation checkpointing in trainable towers: true, or N = every N-th layer
        "detect_anomaly": False,  # autograd anomaly detection (very slow; the official code leaves it on)
        "fused_adamw": "auto",  # "auto": fused AdamW kernels on CUDA; true / false to force
        "cpu_engines": False,  # frozen mini towers through ONNX Runtime / fused engines while caching features
        "loader_workers": "auto",  # image decoding processes for towers trained end to end ("auto": one per CPU
        # on a GPU, 0 on the CPU); the next step's images are decoded while the current one trains
    },
    "device": "auto",
    "cache_features": True,  # frozen towers: encode the pools once and train the heads on the cache
    "checkpoint_every": 50,  # optimizer steps
    # recompute what the backbone derives from its trainable text tower (the mini backbone's ConSE class-name
    # features) every this many optimizer steps, and always before evaluating and fitting thresholds; 0: only then
    "refresh_class_features_every": 25,
    "patience": 4,  # epochs without improvement before early stopping
    "select_metric": "auroc_text",  # or "recall_sum" (the paper's)
    # the exported epoch is the latest one whose selection score is within this of the best so far: epochs
    # this close are a tie, and taking the later one keeps selection from turning a last-digit floating-point
    # difference between two runs into different weights (0: the best epoch, first on ties)
    "select_tolerance": 0.0,
    "max_steps": None,  # stop after this many optimizer steps (interruption/testing)
    # text: "youden", "accuracy", or "register_fpr@<rate>" / "register_fpr@prompts=0.03,requests=0.06,..." (FPR
    # at most the rate in every register of the validation split)
    "threshold_criterion": "youden",
    # images: None (same as the text criterion), "youden", or "source_fpr@<rate>" (FPR at most the rate on every
    # image source of the validation split and on the backbone's object-class prototypes)
    "threshold_criterion_image": None,
    # after the epoch is chosen, fit the category head afresh on the chosen model's embeddings of the unsafe
    # training rows with per-category positive weights (hysac.train.categories.RefitConfig: epochs, lr,
    # weight_decay, pos_weight sqrt / balanced / none, seed); {} for the defaults, null: keep the head as trained
    "category_refit": None,
}


def _merge(base: dict, over: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("weights", "safeclip", "backbone"):
            out[k] = _merge(out[k], v, f"{path}{k}.")
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            merged = copy.deepcopy(out[k])
            merged.update(v)
            out[k] = merged
        else:
            out[k] = v
    return out


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """``["optim.lr=3e-4", "data.batch.safe_text=64"]`` → updated copy. Unknown top-level keys are refused."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if parts[0] not in DEFAULTS:
            raise InputError(f"override {item!r}: unknown setting {parts[0]!r}; known: {', '.join(DEFAULTS)}")
        node = cfg
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = _parse_value(value)
    return cfg


def _check_non_negative(name: str, value: Any, strict: bool = False) -> None:
    """A finite number >= 0 (> 0 with ``strict``), else one InputError line naming the setting."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (strict and value == 0):
        raise InputError(f"{name} must be a number {'>' if strict else '>='} 0, got {value!r}")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> dict:
    """Defaults ← YAML file ← overrides. The result is a plain dict (also written beside the run)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"config {path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise InputError(f"config {path} must be a mapping at the top level")
        unknown = sorted(set(data) - set(DEFAULTS))
        if unknown:
            raise InputError(f"config {path}: unknown setting(s) {', '.join(unknown)}")
    cfg = _merge(DEFAULTS, data)
    cfg = apply_overrides(cfg, overrides or [])
    if cfg["objective"] not in ("hysac", "safeclip"):
        raise InputError(f"objective must be 'hysac' or 'safeclip', got {cfg['objective']!r}")
    if cfg["optim"].get("schedule", "cosine") not in ("cosine", "constant"):
        raise InputError(f"optim.schedule must be 'cosine' or 'constant', got {cfg['optim'].get('schedule')!r}")
    for name, value, nullable in (("seed", cfg.get("seed"), False),
                                  ("data.split_seed", cfg["data"].get("split_seed"), True)):
        if (value is not None or not nullable) and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise InputError(f"{name} must be a whole number >= 0{' or null' if nullable else ''}, got {value!r}")
    if cfg["data"].get("balance") not in (None, "groups"):
        raise InputError(f"data.balance must be groups or null, got {cfg['data'].get('balance')!r}")
    if not isinstance(cfg["loss"].get("gather_negatives", True), bool):
        raise InputError("loss.gather_negatives must be true or false")
    for name, value, strict in (("loss.safety_rank", cfg["loss"].get("safety_rank"), False),
                                ("loss.safety_rank_temperature", cfg["loss"].get("safety_rank_temperature"), True),
                                ("select_tolerance", cfg.get("select_tolerance"), False)):
        _check_non_negative(name, value, strict)
    check_traversal(cfg["model"].get("traversal"), "model.traversal")
    RefitConfig.from_dict(cfg.get("category_refit"))
    perf = cfg.get("perf") or {}
    unknown = sorted(set(perf) - set(DEFAULTS["perf"]))
    if unknown:
        raise InputError(f"unknown perf setting(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS['perf'])}")
    if perf.get("attention") not in ("sdpa", "eager", "flash_attention_2", "keep"):
        raise InputError(f"perf.attention must be sdpa, eager, flash_attention_2 or keep, got {perf.get('attention')!r}")
    if perf.get("fused_adamw") not in ("auto", True, False):
        raise InputError(f"perf.fused_adamw must be auto, true or false, got {perf.get('fused_adamw')!r}")
    for key in ("compile", "detect_anomaly"):
        if not isinstance(perf.get(key), bool):
            raise InputError(f"perf.{key} must be true or false, got {perf.get(key)!r}")
    lw = perf.get("loader_workers")
    if lw != "auto" and (isinstance(lw, bool) or not isinstance(lw, int) or lw < 0):
        raise InputError(f"perf.loader_workers must be auto or an integer >= 0, got {lw!r}")
    every = cfg.get("refresh_class_features_every")
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise InputError(f"refresh_class_features_every must be an integer >= 0, got {every!r}")
    ck = perf.get("grad_checkpointing")
    if not isinstance(ck, bool) and not (isinstance(ck, int) and ck >= 1):
        raise InputError(f"perf.grad_checkpointing must be true, false or a layer interval >= 1, got {ck!r}")
    return cfg


def dump_config(cfg: dict) -> str:
    return json.dumps(cfg, indent=2, sort_keys=True, default=str)
