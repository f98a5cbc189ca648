"""The HySAC model: a backbone's towers lifted onto the Lorentz hyperboloid, plus the safety API on top.

``x = exp_map0(features · exp(alpha), c)`` with learnable log-space scalars ``curv`` (c = exp(curv)),
``visual_alpha``, ``textual_alpha`` (≤ 0) and ``logit_scale``, as in the paper. Distance from the origin is the
safety score; :mod:`hysac.safety` holds the decisions (thresholds, traversal, entailment).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from . import lorentz as L
from . import safety as S
from .backbones import Backbone, build_backbone
from .backbones.base import check_texts
from .backbones.clip import DEFAULT_CLIP, ClipBackbone, check_state_dict_compatible
from .checkpoint import (CONFIG_NAME, FORMAT_NAME, FORMAT_VERSION, RELEASED_BOUNDS, RELEASED_WEIGHTS,
                         WEIGHTS_NAME, convert_released_state_dict, is_our_format, mismatch_report, is_released_format,
                         load_released_state_dict, lora_config_from_released, read_config)
from .errors import CheckpointError, InputError
from .images import ImageLike
from .policy import check_traversal
from .runtime import EncodeRuntime

if TYPE_CHECKING:  # pragma: no cover
    from .policy import SafetyPolicy

Modality = S.Modality
_SCALARS = ("curv", "visual_alpha", "textual_alpha", "logit_scale")


class CategoryHead(nn.Module):
    """Multi-label head over the 7 unsafe categories, on the tangent vector ``log_map0(x)``. (B,D) → (B,7) logits."""

    def __init__(self, embed_dim: int, n_categories: int = len(S.CATEGORIES), hidden: int = 0):
        super().__init__()
        self.hidden = int(hidden)
        self.net: nn.Module
        if hidden:
            self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, n_categories))
        else:
            self.net = nn.Linear(embed_dim, n_categories)

    def forward(self, x_tan: Tensor) -> Tensor:
        return self.net(x_tan.float())


class HySAC(nn.Module):
    """Safety-aware hyperbolic vision-language model on any :class:`~hysac.backbones.Backbone`."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        curv_init: float = 1.0,
        learn_curv: bool = True,
        alpha_init: float | None = None,
        logit_scale_init: float = 1 / 0.07,
        logit_scale_max: float = 100.0,
        category_head: int | bool = False,
        bounds: S.Bounds | None = None,
        traversal: dict[str, Any] | None = None,
        name: str | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.embed_dim = int(backbone.embed_dim)
        self.curv_init = float(curv_init)
        self.learn_curv = bool(learn_curv)
        alpha_init = self.embed_dim**-0.5 if alpha_init is None else float(alpha_init)
        self.alpha_init = alpha_init
        self.logit_scale_init = float(logit_scale_init)
        self.logit_scale_max = float(logit_scale_max)
        self.curv = nn.Parameter(torch.tensor(math.log(curv_init)), requires_grad=learn_curv)
        self.visual_alpha = nn.Parameter(torch.tensor(math.log(alpha_init)))
        self.textual_alpha = nn.Parameter(torch.tensor(math.log(alpha_init)))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale_init)))
        hidden = 0 if category_head is True else int(category_head or 0)
        self.category_head = CategoryHead(self.embed_dim, hidden=hidden) if category_head is not False else None
        self.bounds = bounds
        #: how redirect/seek-unsafe radii are chosen and which queries redirect moves:
        #: {"rule": "official"|"bound", "alpha": 0.8, "margin": m, "trigger": "radius"|"threshold"}
        #: (:func:`hysac.policy.check_traversal`)
        self.traversal = check_traversal(traversal or {"rule": "official", "alpha": 0.8})
        self.name = name
        #: training objective that produced the weights ("hysac" or the Euclidean "safeclip")
        self.objective = "hysac"
        self._model_id: str | None = None
        #: what :meth:`from_pretrained` was given (registry name, absolute folder or hub id), so that an index can
        #: record a source that loads the same model again; None for a model built in memory
        self.source: str | None = None
        #: how encode_text / encode_image run (the plain runtime; :func:`hysac.fast.optimize` installs a fast one)
        self.runtime = EncodeRuntime()

    # ------------------------------------------------------------------------------------------------ scalars
    @property
    def curvature(self) -> float:
        """c > 0 (the hyperboloid has curvature −c)."""
        return float(self.curv.detach().exp())

    def curv_tensor(self) -> Tensor:
        """Differentiable c = exp(curv), fp32."""
        return self.curv.float().exp()

    @torch.no_grad()
    def clamp_scalars_(self) -> None:
        """Training-time clamps (spec §2.3): c ∈ [c0/10, 10·c0], alphas ≤ 1, logit scale ∈ [init, max]."""
        self.curv.clamp_(math.log(self.curv_init / 10), math.log(self.curv_init * 10))
        self.visual_alpha.clamp_(max=0.0)
        self.textual_alpha.clamp_(max=0.0)
        self.logit_scale.clamp_(math.log(self.logit_scale_init), math.log(self.logit_scale_max))

    # ------------------------------------------------------------------------------------------------ lifting
    def lift_image(self, feats: Tensor) -> Tensor:
        """Euclidean image features (B,D) → points on the hyperboloid (B,D), fp32."""
        return L.exp_map0(feats.float() * self.visual_alpha.float().exp(), self.curv_tensor())

    def lift_text(self, feats: Tensor) -> Tensor:
        """Euclidean text features (B,D) → points on the hyperboloid (B,D), fp32."""
        return L.exp_map0(feats.float() * self.textual_alpha.float().exp(), self.curv_tensor())

    @property
    def device(self) -> torch.device:
        return self.curv.device

    # ----------------------------------------------------------------------------------------------- encoding
    def encode_image(self, images: Tensor | ImageLike | Sequence[ImageLike], *, project: bool = True,
                     batch_size: int | None = None, progress: bool = False) -> Tensor:
        """Encode images: PIL images, file paths, or a preprocessed pixel tensor (B,3,H,W).

        Returns (B,D) fp32 points on the hyperboloid (``project=False``: the Euclidean tower features), on the CPU.
        Any batch size; chunks of ``batch_size`` (default: the runtime's). Empty input → (0,D). Unreadable files →
        :class:`InputError` naming them. Runs on :attr:`runtime` (:class:`hysac.runtime.EncodeRuntime`)."""
        return self.runtime.encode_image(self, images, batch_size=batch_size, project=project, progress=progress)

    def encode_text(self, texts: Tensor | str | Sequence[str], *, project: bool = True, batch_size: int | None = None,
                    progress: bool = False) -> Tensor:
        """Encode texts: strings or a token-id tensor (B,L). Returns (B,D) fp32 (see :meth:`encode_image`).
        Strings are encoded in length-sorted batches and returned in input order; a token-id tensor is already
        padded and runs in chunks as given."""
        if isinstance(texts, Tensor):
            from .runtime import encode_token_ids

            return encode_token_ids(self, texts, batch_size=batch_size or self.runtime.text_batch, project=project)
        return self.runtime.encode_text(self, check_texts(texts), batch_size=batch_size, project=project,
                                        progress=progress)

    def base_features(self, inputs: Any, modality: Modality, *, batch_size: int | None = None,
                      progress: bool = False) -> Tensor:
        """(N, base dim) features of the backbone's pretrained towers before its heads (texts, or images as for
        :meth:`encode_image`) — what a linear probe on the same encoder is trained on. For backbones without
        separate heads (CLIP) these are the tower features (``project=False``)."""
        if modality == "text" and not isinstance(inputs, Tensor):
            inputs = check_texts(inputs)
        return self.runtime.base_features(self, inputs, modality, batch_size=batch_size, progress=progress)

    def text_cut(self, texts: str | Sequence[str]) -> list[bool | None]:
        """Per text: True when it is longer than the text tower reads (:meth:`Backbone.max_text_tokens`), so that
        :meth:`encode_text` saw only its opening; False when it was read whole; None where the backbone cannot
        tell. What ``classify``, ``search``, ``traverse`` and the service report as ``truncated``."""
        texts = check_texts(texts)
        limit = self.backbone.max_text_tokens()
        if limit is None or not texts:
            return [None] * len(texts)
        counts = self.backbone.text_token_counts(texts)
        if counts is None:
            return [None] * len(texts)
        return [n > limit for n in counts]

    def set_runtime(self, runtime: EncodeRuntime | None = None) -> "HySAC":
        """Run :meth:`encode_text` / :meth:`encode_image` on ``runtime`` (None: the plain one). Fast paths
        (:func:`hysac.fast.optimize`) call this; returns the model."""
        self.runtime = runtime if runtime is not None else EncodeRuntime()
        return self

    # ------------------------------------------------------------------------------------------------- safety
    def score(self, x_hyp: Tensor) -> Tensor:
        """Safety score = geodesic distance from the origin (higher = more unsafe). (B,D) → (B,)."""
        return S.safety_score(x_hyp, self.curvature)

    @property
    def policy(self) -> "SafetyPolicy":
        """The safety decisions of this model (:class:`hysac.policy.SafetyPolicy`): thresholds, verdicts, what each
        search mode does. Every front end goes through it."""
        from .policy import SafetyPolicy

        return SafetyPolicy(self)

    def _need_bounds(self) -> S.Bounds:
        return self.policy.bounds()

    def unsafe_threshold(self, modality: Modality) -> float:
        """θ such that an input of ``modality`` is unsafe iff score > θ (:meth:`SafetyPolicy.threshold`)."""
        return self.policy.threshold(modality)

    def is_unsafe(self, x_hyp: Tensor, modality: Modality, threshold: float | None = None) -> Tensor:
        """(B,D) → (B,) bool."""
        return self.policy.judge(x_hyp, modality, threshold, categories=False).unsafe

    def categorize(self, x_hyp: Tensor) -> Tensor | None:
        """Per-category probabilities (B,7) in :data:`hysac.safety.CATEGORIES` order, or None without a head."""
        if self.category_head is None:
            return None
        with torch.no_grad():
            logits = self.category_head(L.log_map0(x_hyp.to(self.device).float(), self.curvature))
        return torch.sigmoid(logits).cpu()

    def redirect_tau(self, target: Modality) -> float:
        """Radius a query is pulled in to before searching a ``target`` gallery (:meth:`SafetyPolicy.redirect_radius`)."""
        return self.policy.redirect_radius(target)

    def seek_unsafe_tau(self, target: Modality) -> float:
        """Radius a query is pushed out to when hunting unsafe ``target`` items (mean of the unsafe class)."""
        return self.policy.seek_unsafe_radius(target)

    def _traverse_to(self, x_hyp: Tensor, target: Modality, tau: float | None, alpha: float | None,
                     mode: str, query: "Modality | Sequence[str] | None") -> Tensor:
        from .policy import Mode

        if tau is None and alpha is not None:  # the official formula with this alpha instead of the model's rule
            tau = self.policy.redirect_radius(target, {"rule": "official", "alpha": float(alpha)})
        return self.policy.move(x_hyp, Mode.REDIRECT, target, query=query, tau=tau,
                                how=mode).points  # type: ignore[arg-type]

    def traverse_to_safe_image(self, x_hyp: Tensor, *, tau: float | None = None, alpha: float | None = None,
                               mode: Literal["geodesic", "paper"] = "geodesic",
                               query: "Modality | Sequence[str] | None" = None) -> Tensor:
        """Pull queries toward the safe-image region (class V) before searching images. (B,D) or (D,).

        Default radius: the model's traversal rule, as ``search --mode redirect`` uses it
        (:meth:`SafetyPolicy.redirect_radius`); ``alpha`` → the official ``τ = b + tanh((b − α)/c) + 1`` with
        ``b = bounds['V'].up_95``; ``tau`` → that radius. Queries already inside stay put. ``query`` (the points'
        modality, one or one per point) applies the model's trigger as a search does (``trigger: threshold``:
        points judged safe stay put); without it every point beyond the radius moves."""
        return self._traverse_to(x_hyp, "image", tau, alpha, mode, query)

    def traverse_to_safe_text(self, x_hyp: Tensor, *, tau: float | None = None, alpha: float | None = None,
                              mode: Literal["geodesic", "paper"] = "geodesic",
                              query: "Modality | Sequence[str] | None" = None) -> Tensor:
        """Pull queries toward the safe-text region (class S) before searching texts. (B,D) or (D,); radius and
        ``query`` as :meth:`traverse_to_safe_image`."""
        return self._traverse_to(x_hyp, "text", tau, alpha, mode, query)

    def entails(self, parent_hyp: Tensor, child_hyp: Tensor, aperture_scale: float = 1.0) -> Tensor:
        """Is each child inside its parent's entailment cone? (B,D),(B,D) → (B,) bool."""
        return S.entails(parent_hyp, child_hyp, self.curvature, aperture_scale)

    # --------------------------------------------------------------------------------------------- identity
    @property
    def model_id(self) -> str:
        """Stable identifier (name + content hash of the weights a checkpoint stores); recorded by indexes.

        Only the weights count, on purpose: they alone decide the embeddings an index stores. Bounds, thresholds
        and the traversal rule are applied at query time, so re-fitting them needs no rebuild. Computed once and
        cached: the fast paths fix it before merging LoRA or casting weights."""
        if self._model_id is None:
            h = hashlib.sha256()
            for k, v in sorted(self.checkpoint_state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().float().contiguous().numpy().tobytes())
            self._model_id = f"{self.name or 'hysac'}@{h.hexdigest()[:16]}"
        return self._model_id

    def weights_changed(self) -> None:
        """Call after changing weights in place (e.g. a refitted category head): :attr:`model_id` is recomputed on
        its next use."""
        self._model_id = None

    def merge_lora(self) -> "HySAC":
        """Fold LoRA adapters into the tower weights (CLIP backbone); no-op otherwise."""
        self.backbone.merge_lora()
        return self

    # ------------------------------------------------------------------------------------------ save / load
    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """The tensors our format stores: scalars, category head, and the backbone's trainable part."""
        sd = {k: getattr(self, k).detach() for k in _SCALARS}
        sd.update({f"backbone.{k}": v for k, v in self.backbone.trainable_state_dict().items()})
        if self.category_head is not None:
            sd.update({f"category_head.{k}": v for k, v in self.category_head.state_dict().items()})
        return sd

    def load_checkpoint_state_dict(self, sd: dict[str, Tensor], source: str = "checkpoint") -> None:
        """Load tensors saved by :meth:`checkpoint_state_dict`, refusing any key or shape mismatch."""
        report = mismatch_report(self.checkpoint_state_dict(), sd)
        if report:
            raise CheckpointError(f"{source} does not match the model — {report}")
        result = self.load_state_dict(sd, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{source}: unexpected keys {result.unexpected_keys[:12]}")
        self._model_id = None

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "objective": self.objective,
            "backbone": self.backbone.config(),
            "embed_dim": self.embed_dim,
            "curv_init": self.curv_init,
            "learn_curv": self.learn_curv,
            "alpha_init": self.alpha_init,
            "logit_scale_init": self.logit_scale_init,
            "logit_scale_max": self.logit_scale_max,
            "curvature": self.curvature,
            "visual_alpha": float(self.visual_alpha.detach().exp()),
            "textual_alpha": float(self.textual_alpha.detach().exp()),
            "category_head": None if self.category_head is None else {"hidden": self.category_head.hidden,
                                                                      "categories": list(S.CATEGORIES)},
            "bounds": None if self.bounds is None else self.bounds.to_dict(),
            "traversal": self.traversal,
        }

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ tokenizer/processor for CLIP) atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
        try:
            sd = {k: v.detach().cpu().contiguous() for k, v in self.checkpoint_state_dict().items()}
            save_file(sd, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT_NAME})
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config(), indent=2))
            if isinstance(self.backbone, ClipBackbone):
                self.backbone.save_preprocessing(tmp / "backbone")
            for item in tmp.iterdir():
                dest = folder / item.name
                if dest.is_dir():
                    shutil.rmtree(dest)
                item.replace(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder

    @classmethod
    def from_config(cls, cfg: dict[str, Any], root: Path | None = None, *, inference: bool = True) -> "HySAC":
        """The model described by ``cfg`` (weights not loaded). ``inference``: it will be used, not trained (the
        backbone may pick a leaner implementation of the same computation, see :func:`build_backbone`)."""
        bcfg = dict(cfg["backbone"])
        if root is not None:
            bcfg["_root"] = str(root)
        traversal = cfg.get("traversal")
        if traversal is not None:
            where = f"{root / CONFIG_NAME}: traversal" if root is not None else "config traversal"
            traversal = check_traversal(traversal, where)
        backbone = build_backbone(bcfg, inference=inference)
        head = cfg.get("category_head")
        model = cls(
            backbone,
            curv_init=cfg.get("curv_init", 1.0),
            learn_curv=cfg.get("learn_curv", True),
            alpha_init=cfg.get("alpha_init"),
            logit_scale_init=cfg.get("logit_scale_init", 1 / 0.07),
            logit_scale_max=cfg.get("logit_scale_max", 100.0),
            category_head=False if head is None else (int(head.get("hidden", 0)) or True),
            bounds=None if cfg.get("bounds") is None else S.Bounds.from_dict(cfg["bounds"]),
            traversal=traversal,
            name=cfg.get("name"),
        )
        model.objective = cfg.get("objective", "hysac")
        return model

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, backbone: str | os.PathLike | None = None,
                        device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "HySAC":
        """Load a model by registry name (``hysac-mini``), local folder or hub repo id.

        A folder holding ``config.json`` (format ``hysac``) + ``model.safetensors`` is our format; one holding
        ``hysac_model.pth`` (+ ``hysac_bounds.json``) is the released format, whose towers are built from
        ``backbone`` (hub id or local CLIP folder; default ``openai/clip-vit-large-patch14``). Hub ids download
        through ``huggingface_hub``. The model comes back in eval mode.
        """
        from .pretrained import resolve

        folder, name = resolve(name_or_path)
        if is_our_format(folder):
            model = cls._load_ours(folder, name)
        elif is_released_format(folder):
            model = cls._load_released(folder, backbone or DEFAULT_CLIP, name)
        else:
            raise InputError(f"{folder} holds neither a hysac model ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a released "
                             f"HySAC checkpoint ({RELEASED_WEIGHTS})")
        key = os.fspath(name_or_path)
        model.source = key if name is not None and key == name else (
            str(Path(key).expanduser().resolve()) if Path(key).expanduser().is_dir() else key)
        if dtype is not None:
            model.backbone.to(dtype)
        if device is not None:
            model.to(device)
        return model.eval()

    @classmethod
    def _load_ours(cls, folder: Path, name: str | None) -> "HySAC":
        cfg = read_config(folder)
        model = cls.from_config(cfg, root=folder)
        if name:
            model.name = name
        wpath = folder / WEIGHTS_NAME
        if not wpath.is_file():
            raise InputError(f"no {WEIGHTS_NAME} in {folder}")
        try:
            sd = load_file(str(wpath))
        except Exception as e:  # noqa: BLE001 - corrupt safetensors
            raise CheckpointError(f"cannot read {wpath}: {e}") from None
        model.load_checkpoint_state_dict(sd, source=str(wpath))
        return model

    @classmethod
    def _load_released(cls, folder: Path, backbone: str | os.PathLike, name: str | None) -> "HySAC":
        sd = load_released_state_dict(folder / RELEASED_WEIGHTS)
        for k in _SCALARS:
            if k not in sd:
                raise CheckpointError(f"{folder / RELEASED_WEIGHTS} lacks the scalar {k!r}: not a HySAC checkpoint")
        lora = lora_config_from_released(sd)
        towers = ClipBackbone.from_hub_or_folder(backbone, lora=lora)
        c0 = 1.0
        model = cls(towers, curv_init=c0, alpha_init=towers.embed_dim**-0.5, name=name or folder.name)
        expected = model.state_dict()
        converted = convert_released_state_dict(sd, expected)
        check_state_dict_compatible(model, converted, str(folder / RELEASED_WEIGHTS))
        model.load_state_dict(converted, strict=True)
        bpath = folder / RELEASED_BOUNDS
        if bpath.is_file():
            model.bounds = S.Bounds.load(bpath)
        return model


def load_model(name_or_path: str | os.PathLike | None = None, **kwargs) -> HySAC:
    """Load a model for the CLI/service/index: ``None`` → the shipped default (``hysac-mini``)."""
    from .pretrained import DEFAULT_MODEL

    return HySAC.from_pretrained(name_or_path or DEFAULT_MODEL, **kwargs)
