"""Models under evaluation behind one interface: encode, score pairs, (optionally) measure the radius and traverse.

* :class:`HyperbolicSpace` wraps a :class:`~hysac.model.HySAC`: embeddings are points on the hyperboloid, pairs are
  ranked by the Lorentz inner product (monotone in ``-distance``: ``-c<x,y>_L = cosh(sqrt(c) d)``), the safety score
  is the geodesic distance from the origin, and queries can be redirected (pulled in to ``model.redirect_tau``) or sent
  seeking unsafe content (pushed out to ``model.seek_unsafe_tau``) with :func:`hysac.safety.traverse`.
* :class:`EuclideanSpace` wraps any pair of Euclidean towers — a plain CLIP / Safe-CLIP checkpoint
  (``transformers`` layout, hub id or local folder) or a hysac model folder trained with the Safe-CLIP objective
  (``project=False``). Embeddings are L2-normalised, pairs are ranked by cosine, and there is no radius and no
  traversal: such a model classifies only through the linear probe.

Both cache every encoded text / image path (a dict from input to row), so the same input is encoded once per run even
when several datasets and sections use it. Both also expose *probe features* — the frozen features a linear probe is
trained on (see :meth:`HyperbolicSpace.text_probe_features`). :class:`HyperbolicSpace` encodes through the model's
public API (``encode_text`` / ``encode_image`` / ``base_features``) on a runtime with a base-feature cache
(:meth:`hysac.runtime.EncodeRuntime.with_cache`), so ``hysac eval`` measures the code ``hysac serve`` runs.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import lorentz as L
from .. import safety as S
from ..errors import InputError
from ..safety import MODALITIES, Modality

logger = logging.getLogger(__name__)

ModelKind = Literal["auto", "hysac", "euclidean", "clip"]


class _FeatureCache:
    """Maps input keys (texts or image paths) to rows of one or more feature matrices, computing only new keys.

    New keys are encoded in batches sorted by length (texts), which cuts padding waste several-fold on mixed
    short captions / long prompts."""

    def __init__(self, compute: Callable[[list[str]], dict[str, Tensor]], what: str, batch: int,
                 sort_by_length: bool = False):
        self._compute = compute
        self._what = what
        self._batch = batch
        self._sort = sort_by_length
        self._rows: dict[str, int] = {}
        self._parts: dict[str, list[Tensor]] = {}
        self._cat: dict[str, Tensor] = {}
        self.seconds = 0.0
        self.count = 0

    def get(self, keys: Sequence[str], name: str) -> Tensor:
        keys = list(keys)
        new = list(dict.fromkeys(k for k in keys if k not in self._rows))
        if new:
            t0 = time.perf_counter()
            todo = sorted(new, key=len) if self._sort else new
            for i in range(0, len(todo), self._batch):
                chunk = todo[i:i + self._batch]
                out = self._compute(chunk)
                for k, v in out.items():
                    self._parts.setdefault(k, []).append(v.detach().float().cpu())
                for k in chunk:
                    self._rows[k] = len(self._rows)
            self._cat.clear()
            dt = time.perf_counter() - t0
            self.seconds += dt
            self.count += len(new)
            logger.info("encoded %d %s in %.1fs", len(new), self._what, dt)
        if name not in self._cat:
            if name not in self._parts:
                raise KeyError(name)
            self._cat[name] = torch.cat(self._parts[name]) if self._parts[name] else torch.zeros(0)
        idx = torch.as_tensor([self._rows[k] for k in keys], dtype=torch.long)
        mat = self._cat[name]
        return mat[idx] if len(keys) else mat[:0]


class Space:
    """Base class: the interface the evaluation uses."""

    name: str
    geometry: str  # "lorentz" | "euclidean"
    description: str = ""

    #: whether :meth:`radius` / thresholds / traversal exist
    has_radius: bool = False
    has_traversal: bool = False

    def encode_text(self, texts: Sequence[str]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def encode_image(self, paths: Sequence[str]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def text_probe_features(self, texts: Sequence[str]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def image_probe_features(self, paths: Sequence[str]) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def similarity(self, q: Tensor, g: Tensor) -> Tensor:  # pragma: no cover - interface
        """(q,D),(G,D) → (q,G), higher = closer."""
        raise NotImplementedError

    # optional parts (hyperbolic only)
    def radius(self, x: Tensor) -> Tensor:
        raise InputError(f"{self.name} is Euclidean: it has no distance from the origin")

    def threshold(self, modality: Modality) -> float | None:
        return None

    def redirect(self, x: Tensor, target: Modality, query: Modality | None = None) -> Tensor:
        raise InputError(f"{self.name} has no safety traversal")

    def seek_unsafe(self, x: Tensor, target: Modality) -> Tensor:
        raise InputError(f"{self.name} has no safety traversal")

    def categorize(self, x: Tensor) -> Tensor | None:
        return None

    def info(self) -> dict:
        return {"name": self.name, "geometry": self.geometry, "description": self.description}

    def encode_seconds(self) -> float:
        return 0.0

    def flush_cache(self) -> None:
        """Persist any on-disk feature cache (no-op by default)."""


# ----------------------------------------------------------------------------------------------------------------
# hyperbolic (HySAC)
# ----------------------------------------------------------------------------------------------------------------
class HyperbolicSpace(Space):
    """A :class:`~hysac.model.HySAC` model.

    Probe features: for a backbone with frozen base towers (``hysac-mini``: ``text_base_features`` = mean-pooled
    all-MiniLM-L6-v2, 384-d; ``image_base_features`` = pooled EfficientNet-Lite0, 1280-d) the linear probe is trained
    on those frozen features — the same encoder HySAC's heads sit on, so the probe is the Euclidean baseline *with
    the same information*. Otherwise (CLIP backbone) it uses the Euclidean tower outputs (``project=False``).
    """

    geometry = "lorentz"
    has_radius = True
    #: the model's exported training config (``training_config.json``), when known
    training_config: dict | None = None

    def __init__(self, model, name: str | None = None, batch_text: int = 128, batch_image: int = 32,
                 cache_dir: str | os.PathLike | None = None):
        import copy

        model = model.eval()
        # the model's own encode path (HySAC.encode_text / encode_image / base_features, as hysac serve runs it) on a
        # runtime that keeps base features (on disk in cache_dir when the towers have a stable key); a shallow copy,
        # so the caller's model keeps its runtime
        self.model = copy.copy(model)
        self.model.set_runtime(model.runtime.with_cache(model, cache_dir))
        self.name = name or model.name or "hysac"
        self.c = float(model.curvature)
        self.has_traversal = model.bounds is not None
        bb = model.backbone
        self._base = bb.has_base_features
        self.description = (f"HySAC ({type(bb).__name__}), c={self.c:.4g}, "
                            f"probe features: {'frozen base towers' if self._base else 'tower outputs (project=False)'}")
        self._batch = {"text": int(batch_text), "image": int(batch_image)}
        self._texts = _FeatureCache(self._text_batch, "texts", batch_text)
        self._images = _FeatureCache(self._image_batch, "images", batch_image)
        self._gal_ref: Tensor | None = None
        self._gal_aug: Tensor | None = None

    # -- encoding (the model's public API) -----------------------------------------------------------------------
    def flush_cache(self) -> None:
        self.model.runtime.flush_cache()

    def cache_stats(self) -> dict:
        stores = self.model.runtime.cache or {}
        return {mod: {"file": str(s.path), "hits": s.hits, "misses": s.misses} for mod, s in stores.items()
                if s.path is not None}

    def _text_batch(self, texts: list[str]) -> dict[str, Tensor]:
        probe = self.model.base_features(texts, "text", batch_size=self._batch["text"])
        return {"hyp": self.model.encode_text(texts, batch_size=self._batch["text"]), "probe": probe}

    def _image_batch(self, paths: list[str]) -> dict[str, Tensor]:
        probe = self.model.base_features(paths, "image", batch_size=self._batch["image"])
        return {"hyp": self.model.encode_image(paths, batch_size=self._batch["image"]), "probe": probe}

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self._texts.get(texts, "hyp")

    def encode_image(self, paths: Sequence[str]) -> Tensor:
        return self._images.get([str(p) for p in paths], "hyp")

    def text_probe_features(self, texts: Sequence[str]) -> Tensor:
        return self._texts.get(texts, "probe")

    def image_probe_features(self, paths: Sequence[str]) -> Tensor:
        return self._images.get([str(p) for p in paths], "probe")

    def encode_seconds(self) -> float:
        return self._texts.seconds + self._images.seconds

    # -- geometry -----------------------------------------------------------------------------------------------
    def similarity(self, q: Tensor, g: Tensor) -> Tensor:
        """Lorentz inner product ``<q,g>_L = q·g − q_t·g_t`` (higher = closer; ``−c<q,g>_L = cosh(√c·d)``), as one
        matmul of time-augmented vectors ``[q, q_t] · [g, −g_t]``; the augmented gallery is cached."""
        if self._gal_ref is not g:  # identity (the reference is held, so the object cannot be recycled)
            gt = L.time_component(g.float(), self.c)
            self._gal_aug = torch.cat([g.float(), -gt.unsqueeze(1)], dim=1)
            self._gal_ref = g
        qf = q.float()
        qa = torch.cat([qf, L.time_component(qf, self.c).unsqueeze(1)], dim=1)
        return qa @ self._gal_aug.T

    def radius(self, x: Tensor) -> Tensor:
        return S.safety_score(x, self.c)

    def threshold(self, modality: Modality) -> float | None:
        if self.model.bounds is None:
            return None
        try:
            return float(self.model.unsafe_threshold(modality))
        except InputError:
            return None

    def redirect_tau(self, target: Modality) -> float:
        return float(self.model.policy.redirect_radius(target))

    def seek_unsafe_tau(self, target: Modality) -> float:
        return float(self.model.policy.seek_unsafe_radius(target))

    def redirect(self, x: Tensor, target: Modality, query: Modality | None = None) -> Tensor:
        """What ``search --mode redirect`` searches a ``target`` gallery with, for queries of modality ``query``
        (:meth:`SafetyPolicy.move`; ``None``: every query beyond the radius moves)."""
        return self.model.policy.move(x, "redirect", target, query=query).points

    def seek_unsafe(self, x: Tensor, target: Modality) -> Tensor:
        """What ``search --mode seek-unsafe`` searches a ``target`` gallery with."""
        return self.model.policy.move(x, "seek-unsafe", target).points

    def paper_traverse(self, x: Tensor, target: Modality, seek: bool) -> Tensor:
        """The official evaluation code's traversal (:meth:`SafetyPolicy.paper_move`), for paper-mode rows."""
        return self.model.policy.paper_move(x, target, seek=seek).points

    def categorize(self, x: Tensor) -> Tensor | None:
        return self.model.categorize(x)

    def info(self) -> dict:
        m = self.model
        out = super().info()
        out.update({"model_id": m.model_id, "curvature": self.c,
                    "textual_alpha": float(m.textual_alpha.detach().exp()),
                    "visual_alpha": float(m.visual_alpha.detach().exp()),
                    "bounds": None if m.bounds is None else m.bounds.to_dict(),
                    "traversal_rule": dict(m.traversal)})
        if m.bounds is not None:
            taus = {}
            for mod in MODALITIES:
                for key, mode in (("redirect", "redirect"), ("seek_unsafe", "seek-unsafe")):
                    try:
                        taus[f"{key}_{mod}"] = float(m.policy.radius(mode, mod))
                    except InputError:
                        pass
            out["taus"] = taus
            out["thresholds"] = {mod: self.threshold(mod) for mod in MODALITIES}
        return out


# ----------------------------------------------------------------------------------------------------------------
# Euclidean (CLIP / Safe-CLIP / safeclip-objective hysac folders)
# ----------------------------------------------------------------------------------------------------------------
class EuclideanSpace(Space):
    """Euclidean towers: anything with ``tokenize``, ``text_features``, ``preprocess_images``, ``image_features``
    (a :class:`~hysac.backbones.Backbone`, or a HySAC model's backbone used with ``project=False``).
    Embeddings are L2-normalised and ranked by cosine; the probe is trained on the same normalised features."""

    geometry = "euclidean"

    def __init__(self, backbone, name: str, description: str = "", batch_text: int = 128, batch_image: int = 32,
                 model_id: str | None = None):
        self.backbone = backbone.eval()
        self.name = name
        self.description = description or f"Euclidean ({type(backbone).__name__}), cosine similarity"
        self.model_id = model_id or name
        self._texts = _FeatureCache(self._text_batch, "texts", batch_text, sort_by_length=True)
        self._images = _FeatureCache(self._image_batch, "images", batch_image)

    @property
    def _device(self) -> torch.device:
        try:
            return next(self.backbone.parameters()).device
        except StopIteration:  # pragma: no cover
            return torch.device("cpu")

    @torch.no_grad()
    def _text_batch(self, texts: list[str]) -> dict[str, Tensor]:
        tok = self.backbone.tokenize(texts)
        dev = self._device
        mask = tok.get("attention_mask")
        f = self.backbone.text_features(tok["input_ids"].to(dev), None if mask is None else mask.to(dev)).float()
        return {"emb": F.normalize(f, dim=-1)}

    @torch.no_grad()
    def _image_batch(self, paths: list[str]) -> dict[str, Tensor]:
        from ..images import load_image

        pix = self.backbone.preprocess_images([load_image(p) for p in paths]).to(self._device)
        f = self.backbone.image_features(pix).float()
        return {"emb": F.normalize(f, dim=-1)}

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        return self._texts.get(texts, "emb")

    def encode_image(self, paths: Sequence[str]) -> Tensor:
        return self._images.get([str(p) for p in paths], "emb")

    text_probe_features = encode_text
    image_probe_features = encode_image

    def encode_seconds(self) -> float:
        return self._texts.seconds + self._images.seconds

    def similarity(self, q: Tensor, g: Tensor) -> Tensor:
        return q @ g.T

    def info(self) -> dict:
        out = super().info()
        out["model_id"] = self.model_id
        return out


# ----------------------------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------------------------
def _folder_config(path: Path) -> dict | None:
    f = path / "config.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def detect_kind(path: str) -> str:
    """``hysac`` / ``euclidean`` (a hysac folder trained with the Safe-CLIP objective: ``objective: safeclip`` in its
    ``config.json`` or exported ``training_config.json``) / ``clip`` for a model spec."""
    from ..checkpoint import is_released_format
    from ..pretrained import REGISTRY

    if path in REGISTRY:
        return "hysac"
    p = Path(path).expanduser()
    if p.is_dir():
        cfg = _folder_config(p)
        if cfg is not None and cfg.get("format") == "hysac":
            objective = cfg.get("objective")
            if objective is None and (p / "training_config.json").is_file():  # exported by `hysac train`
                try:
                    objective = json.loads((p / "training_config.json").read_text()).get("objective")
                except (OSError, json.JSONDecodeError):
                    objective = None
            return "euclidean" if str(objective or "hysac").lower() == "safeclip" else "hysac"
        if cfg is not None and cfg.get("model_type") == "clip":
            return "clip"
        if is_released_format(p):
            return "hysac"
        raise InputError(f"model folder {p} is neither a hysac model, a released HySAC checkpoint nor a CLIP "
                         "checkpoint; set kind explicitly")
    if os.sep in path and not p.exists() and path.startswith((".", "/", "~")):
        raise InputError(f"model folder not found: {p}")
    if "clip" in path.lower() and "hysac" not in path.lower():
        return "clip"
    if "hysac" in path.lower():
        return "hysac"
    raise InputError(f"cannot tell what kind of model {path!r} is; set kind: hysac | euclidean | clip")


def _training_config(path: str) -> dict | None:
    """The ``training_config.json`` that ``hysac train`` exports next to a model, if any."""
    from ..pretrained import resolve

    try:
        folder, _ = resolve(path)
    except Exception:  # noqa: BLE001 - a hub id that cannot be resolved offline: no training config
        return None
    f = Path(folder) / "training_config.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def load_space(path: str, *, name: str | None = None, kind: str = "auto", backbone: str | None = None,
               device: str | None = None, cache_dir: str | os.PathLike | None = None) -> Space:
    """Load a model spec into a :class:`Space`.

    ``kind``: ``hysac`` (any :func:`hysac.model.load_model` name/folder/hub id), ``euclidean`` (a hysac model folder
    evaluated with ``project=False`` and cosine, e.g. one trained with ``objective: safeclip``), ``clip`` (a
    ``transformers`` CLIP checkpoint: hub id such as ``openai/clip-vit-large-patch14`` or
    ``aimagelab/safeclip_vit-l_14``, or a local folder), or ``auto`` (:func:`detect_kind`). ``cache_dir``: where
    frozen base features are cached on disk (hysac models on frozen towers, e.g. ``hysac-mini``); None = no cache.
    """
    from ..model import HySAC

    if kind not in ("auto", "hysac", "euclidean", "clip"):
        raise InputError(f"unknown model kind {kind!r}; use auto, hysac, euclidean or clip")
    if kind == "auto":
        kind = detect_kind(path)
    if kind in ("hysac", "euclidean"):
        model = HySAC.from_pretrained(path, backbone=backbone, device=device)
        label = name or model.name or Path(path).name
        if kind == "hysac":
            sp = HyperbolicSpace(model, label, cache_dir=cache_dir)
            sp.training_config = _training_config(path)
            return sp
        return EuclideanSpace(model.backbone, label, f"hysac folder evaluated as Euclidean (project=False, cosine), "
                              f"{type(model.backbone).__name__}", model_id=model.model_id)
    from ..backbones.clip import ClipBackbone

    towers = ClipBackbone.from_hub_or_folder(path)
    if device is not None:
        towers.to(device)
    return EuclideanSpace(towers, name or Path(path).name, f"CLIP checkpoint {path} (cosine)", model_id=str(path))
