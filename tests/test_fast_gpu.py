"""The GPU fast path (:mod:`hysac.fast.gpu`), its image loader (:mod:`hysac.fast.loader`) and the two-half pixel
preprocessing (:class:`hysac.images.PixelSpec`), exercised on the CPU with tiny CLIP towers (no GPU needed).

Quality gates are those of the GPU benchmark: tangent-feature cosine >= 0.999 and distance-to-origin relative
error <= 1e-2 against the plain fp32 path.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hysac import fast
from hysac import lorentz as L
from hysac.backbones.clip import ClipBackbone
from hysac.errors import InputError
from hysac.images import PixelSpec
from hysac.model import HySAC
from hysac.testing import TINY_LORA

COS_MIN, DIST_RTOL = 0.999, 1e-2


def _model(folder: Path) -> HySAC:
    torch.manual_seed(0)
    bb = ClipBackbone.from_hub_or_folder(folder, lora=TINY_LORA)
    with torch.no_grad():  # peft starts B at 0 (LoRA a no-op): make merging change the weights
        for n, p in bb.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return HySAC(bb, name="tiny").eval()


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(45):
        h, w = 30 + (i * 7) % 50, 30 + (i * 11) % 60
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = folder / f"{i:03d}.{'png' if i % 5 == 0 else 'jpg'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return [f"photo {i} of " + "a small red house " * (i % 5) for i in range(37)] + ["", "x"]


def _gate(model: HySAC, ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    c = model.curvature
    cos = torch.nn.functional.cosine_similarity(L.log_map0(ref.double(), c), L.log_map0(got.double(), c), dim=-1)
    d_ref, d_got = model.score(ref.double()), model.score(got.double())
    return float(cos.min()), float(((d_ref - d_got).abs() / d_ref).max())


# ---------------------------------------------------------------------------------------------- PixelSpec
def test_clip_pixel_spec_matches_the_hf_processor(clip_folder):
    bb = ClipBackbone.from_hub_or_folder(clip_folder)
    spec = bb.pixel_spec()
    assert spec is not None and spec.crop == (28, 28) and spec.crop_offset == "floor"
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for w, h in [(61, 40), (40, 61), (28, 28), (100, 33), (29, 30), (31, 57)]]
    ref = bb.preprocess_images(images)
    got = spec.preprocess(images)
    # the PIL processor is reproduced to float rounding; the torchvision one (when installed) resizes with its own
    # antialiasing, close but not equal
    tol = 1e-5 if type(bb.image_processor).__name__.endswith("Pil") else 0.25
    assert got.shape == ref.shape and float((got - ref).abs().max()) < tol
    # the two halves: uint8 on the CPU, normalisation where the tower runs, in its dtype
    u8 = torch.stack([spec.to_uint8(im) for im in images])
    assert u8.dtype == torch.uint8
    assert spec.normalize(u8, torch.bfloat16).dtype == torch.bfloat16


def test_clip_pixel_spec_is_none_when_the_processor_cannot_be_split(clip_folder):
    bb = ClipBackbone.from_hub_or_folder(clip_folder)
    bb.image_processor.do_center_crop = False
    assert bb.pixel_spec() is None


def test_pixel_spec_rejects_bad_settings_and_inputs():
    with pytest.raises(InputError, match="resample"):
        PixelSpec(size=8, crop=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), resample="magic")
    with pytest.raises(InputError, match="crop_offset"):
        PixelSpec(size=8, crop=(8, 8), mean=(0, 0, 0), std=(1, 1, 1), crop_offset="ceil")
    spec = PixelSpec(size=8, crop=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(InputError, match="B,3,H,W"):
        spec.normalize(torch.zeros(3, 8, 8, dtype=torch.uint8))
    # any PIL mode: greyscale and alpha go through the project's RGB conversion
    assert spec.to_uint8(Image.new("LA", (20, 10), (0, 0))).tolist()[0][0][0] == 255  # transparent → white


# ------------------------------------------------------------------------------------------------- loader
@pytest.mark.parametrize("workers", [0, 2])
def test_pixel_batches_in_order_and_equal_to_plain_preprocessing(clip_folder, jpegs, workers):
    spec = ClipBackbone.from_hub_or_folder(clip_folder).pixel_spec()
    got_idx, got_px = [], []
    for idx, px in fast.pixel_batches(jpegs, spec, batch_size=16, workers=workers, chunk=5):
        assert px.shape[0] <= 16 and px.dtype == torch.float32
        got_idx.append(idx)
        got_px.append(px.clone())
    assert torch.cat(got_idx).tolist() == list(range(len(jpegs)))
    from hysac.images import load_image

    ref = spec.preprocess([load_image(p) for p in jpegs])
    assert torch.equal(torch.cat(got_px), ref)
    assert list(fast.pixel_batches([], spec)) == []


def test_pixel_batches_names_a_bad_file(clip_folder, jpegs, tmp_path):
    spec = ClipBackbone.from_hub_or_folder(clip_folder).pixel_spec()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    items = list(jpegs[:7]) + [bad] + list(jpegs[7:12])
    with pytest.raises(InputError, match=r"image #7: .*broken\.jpg"):
        list(fast.pixel_batches(items, spec, batch_size=4, workers=2, chunk=2))
    with pytest.raises(InputError, match="not found"):
        list(fast.pixel_batches([tmp_path / "missing.png"], spec, workers=0))
    with pytest.raises(InputError, match="workers"):
        list(fast.pixel_batches(jpegs, spec, workers=-1))


# --------------------------------------------------------------------------------------- optimize_for_gpu
def test_optimize_for_gpu_on_cpu_merges_casts_and_stays_within_bf16_tolerance(clip_folder, jpegs, texts):
    plain = _model(clip_folder)
    ref_img, ref_txt = plain.encode_image(jpegs), plain.encode_text(texts)
    fresh = copy.deepcopy(plain)
    fresh._model_id = None  # nothing cached: the id must still be that of the weights as loaded
    m = fast.optimize_for_gpu(fresh, device="cpu", workers=2, image_batch_size=8, text_batch_size=8)
    assert m.model_id == plain.model_id  # indexes built on the fast path open with the plain model
    info = fast.describe(m)
    assert info["path"] == "gpu" and info["weights"] == "bf16" and info["lora_merged"]
    assert info["attention"] == ["sdpa", "sdpa"]
    assert m.backbone.lora is None and next(m.backbone.visual.parameters()).dtype == torch.bfloat16
    got_img, got_txt = m.encode_image(jpegs), m.encode_text(texts)
    assert got_img.dtype == got_txt.dtype == torch.float32 and not got_img.requires_grad
    for ref, got in ((ref_img, got_img), (ref_txt, got_txt)):
        cos, rel = _gate(plain, ref, got)
        assert cos >= COS_MIN and rel <= DIST_RTOL, (cos, rel)
    # PIL images, one path, a pixel tensor and empty input take the same route
    one = m.encode_image(jpegs[3])
    assert torch.allclose(one, got_img[3:4], atol=1e-6)
    from hysac.images import load_image

    assert torch.allclose(m.encode_image([load_image(p) for p in jpegs[:4]]), got_img[:4], atol=1e-6)
    assert m.encode_image(plain.backbone.preprocess_images([load_image(jpegs[0])])).shape == (1, m.embed_dim)
    assert m.encode_image([]).shape == (0, m.embed_dim) and m.encode_text([]).shape == (0, m.embed_dim)
    # scores and categories through the ordinary API
    assert torch.allclose(m.score(got_txt), plain.score(ref_txt), rtol=DIST_RTOL)


def test_optimize_for_gpu_fp32_is_exact_and_compiled_towers_keep_checkpoint_keys(clip_folder, jpegs, texts,
                                                                                   tmp_path):
    plain = _model(clip_folder)
    ref = plain.encode_text(texts)
    m = fast.optimize_for_gpu(copy.deepcopy(plain), device="cpu", precision="fp32", compile=True,
                              compile_backend="eager", workers=0)
    assert fast.describe(m)["compiled"]
    assert torch.allclose(m.encode_text(texts), ref, atol=1e-5)
    m.save_pretrained(tmp_path / "saved")  # merged, compiled: still saves and loads
    back = HySAC.from_pretrained(tmp_path / "saved")
    assert torch.allclose(back.encode_text(texts), ref, atol=1e-5)


def test_optimize_for_gpu_bad_options(clip_folder):
    m = _model(clip_folder)
    with pytest.raises(InputError, match="precision"):
        fast.optimize_for_gpu(m, device="cpu", precision="fp8")
    with pytest.raises(InputError, match="attention"):
        fast.optimize_for_gpu(m, device="cpu", attention="quantum")
    with pytest.raises(InputError, match="workers"):
        fast.optimize_for_gpu(m, device="cpu", workers=-2)
    with pytest.raises(InputError, match="batch_size"):
        fast.optimize_for_gpu(m, device="cpu", image_batch_size=0)
    with pytest.raises(InputError, match="device"):
        fast.optimize_for_gpu(m, device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            fast.optimize_for_gpu(m)
        with pytest.raises(InputError, match="CUDA is not available"):
            fast.optimize_for_gpu(m, device="cuda")
    assert fast.describe(m) is None  # nothing half-applied


def test_optimize_dispatches_by_device(clip_folder, texts):
    m = _model(clip_folder)
    ref = m.encode_text(texts)
    fast.optimize(m, device="cpu", backend="torch")
    assert fast.describe(m)["path"] == "cpu"
    assert torch.allclose(m.encode_text(texts), ref, atol=1e-5)
    with pytest.raises(InputError, match="device"):
        fast.optimize(m, device="nope")


def test_index_build_with_a_gpu_path_model_decodes_in_workers_and_names_bad_files(clip_folder, jpegs, tmp_path):
    """The index mapper hands file paths to a GPU-path model (decoding in its loader); a bad file is retried
    item by item, recorded as a read error, and every good image is indexed with the plain path's embedding."""
    from hysac.index.runner import build_index
    from hysac.index.store import IndexStore

    src = tmp_path / "imgs"
    src.mkdir()
    for p in jpegs[:20]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "010_broken.jpg").write_bytes(b"\xff\xd8 broken")
    plain = _model(clip_folder)
    m = fast.optimize_for_gpu(copy.deepcopy(plain), device="cpu", workers=2)
    report = build_index(src, tmp_path / "idx", m, batch_size=8, progress=False)
    assert report.added == 20 and report.errors == 1
    with IndexStore(tmp_path / "idx") as st:
        (err,) = st.errors()
        assert err["stage"] == "read" and "010_broken.jpg" in err["content"] and "010_broken.jpg" in err["error"]
        ids = st.ids_of("image")
        rows = st.rows(ids)
        emb = st.embeddings.get(ids)
    paths = [rows[int(i)]["content"] for i in ids]
    ref = plain.encode_image(paths).numpy()
    cos = (emb * ref).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= COS_MIN


def test_classify_images_hands_paths_to_a_gpu_path_model_and_names_bad_files(clip_folder, jpegs, tmp_path):
    from hysac.classify import classify_images

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG broken")
    paths = list(jpegs[:9]) + [bad] + list(jpegs[9:15])
    plain = _model(clip_folder)
    plain.bounds = None
    ref = classify_images(plain, paths, threshold=1.0, chunk=4)
    m = fast.optimize_for_gpu(copy.deepcopy(plain), device="cpu", workers=2)
    assert fast.decodes_files(m) and not fast.decodes_files(plain)
    got = classify_images(m, paths, threshold=1.0, chunk=4)
    assert [r.error is None for r in got] == [r.error is None for r in ref] == [True] * 9 + [False] + [True] * 6
    assert "broken.png" in got[9].error
    assert [r.score for r in got if r.error is None] == pytest.approx([r.score for r in ref if r.error is None],
                                                                      rel=DIST_RTOL)


def test_clip_length_sorted_batches_tokenise_once_like_the_tokenizer(clip_folder, texts):
    bb = ClipBackbone.from_hub_or_folder(clip_folder)
    order, batches = bb.length_sorted_batches(texts, 8)
    assert sorted(order) == list(range(len(texts)))
    widths = []
    for start, tok in zip(range(0, len(order), 8), batches):
        ref = bb.tokenize([texts[i] for i in order[start:start + 8]])
        assert torch.equal(tok["input_ids"], ref["input_ids"])
        assert torch.equal(tok["attention_mask"], ref["attention_mask"])
        widths.append(tok["input_ids"].shape[1])
    assert widths == sorted(widths) and widths[0] < widths[-1]  # short texts are not padded to the longest
