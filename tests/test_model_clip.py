"""Released-layout loading, parity with an independent reference forward, our format round trip, bad input."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from hysac.errors import CheckpointError, InputError
from hysac.model import HySAC
from hysac.testing import TINY_LORA, make_released_checkpoint, make_tiny_clip_folder


@pytest.fixture(scope="module")
def model(released):
    clip, ck = released
    return HySAC.from_pretrained(ck, backbone=clip)


def _merged_tower(cls, clip, sd, prefix, scale):
    """Plain HF tower with LoRA folded in by hand: W += scale · B·A (conv: 1×1 B over A's kernels)."""
    tower = cls.from_pretrained(clip, local_files_only=True)
    own = tower.state_dict()
    pre = f"{prefix}.base_model.model."
    for key in own:
        base = key
        mod, leaf = base.rsplit(".", 1)
        lora_a = f"{pre}{mod}.lora_A.default.weight"
        src = f"{pre}{mod}.base_layer.{leaf}" if lora_a in sd else f"{pre}{key}"
        w = sd[src].clone().double()
        if lora_a in sd and leaf == "weight":
            a, b = sd[lora_a].double(), sd[f"{pre}{mod}.lora_B.default.weight"].double()
            if w.dim() == 4:  # conv patch embedding
                w += scale * torch.einsum("or,rihw->oihw", b[:, :, 0, 0], a)
            else:
                w += scale * b @ a
        own[key].copy_(w.to(own[key].dtype))
    return tower.eval()


def _ref_exp_map0(v, c):
    v = v.double()
    r = math.sqrt(c) * v.norm(dim=-1, keepdim=True)
    return torch.sinh(r) / r * v


def test_released_parity(released, model):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    clip, ck = released
    sd = torch.load(ck / "hysac_model.pth", weights_only=True)
    scale = TINY_LORA["lora_alpha"] / TINY_LORA["r"]
    vis = _merged_tower(CLIPVisionModelWithProjection, clip, sd, "visual", scale)
    txt = _merged_tower(CLIPTextModelWithProjection, clip, sd, "textual", scale)
    c = float(sd["curv"].exp())
    assert model.curvature == pytest.approx(c)
    assert not model.training and not any(m.training for m in model.modules())

    texts = ["a photo of a cat", "a knife covered in blood", "x", "a much longer sentence " * 3]
    tok = AutoTokenizer.from_pretrained(clip)(texts, padding="max_length", max_length=24, truncation=True,
                                              return_tensors="pt")
    with torch.no_grad():
        ref_t = _ref_exp_map0(txt(input_ids=tok["input_ids"]).text_embeds * sd["textual_alpha"].exp(), c)
    ours_t = model.encode_text(texts)
    assert (ours_t.double() - ref_t).abs().max() <= 1e-5

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 33, 3), dtype=np.uint8)) for i in range(3)]
    pix = CLIPImageProcessor.from_pretrained(clip)(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref_i = _ref_exp_map0(vis(pixel_values=pix).image_embeds * sd["visual_alpha"].exp(), c)
    assert (model.encode_image(imgs).double() - ref_i).abs().max() <= 1e-5
    assert (model.encode_image(pix).double() - ref_i).abs().max() <= 1e-5
    # project=False gives the raw tower features; token-id input works too
    with torch.no_grad():
        raw = txt(input_ids=tok["input_ids"]).text_embeds
    assert torch.allclose(model.encode_text(texts, project=False), raw, atol=1e-5)
    assert (model.encode_text(tok["input_ids"]).double() - ref_t).abs().max() <= 1e-5
    # chunking does not change results
    assert torch.allclose(model.encode_text(texts, batch_size=1), ours_t, atol=1e-6)


def test_released_layout_from_the_spec_matches_what_peft_writes(released):
    """The fixture writes the released keys from the spec's key list without peft; peft >= 0.7 wrapping the same
    tower with the same LoRA config writes exactly those keys and shapes (the spec and peft agree). The loader is
    then checked against that layout by ``test_released_parity``, which folds LoRA by hand."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from hysac.backbones.clip import apply_lora

    clip, ck = released
    sd = torch.load(ck / "hysac_model.pth", weights_only=True)
    scalars = {"curv", "visual_alpha", "textual_alpha", "logit_scale", "pixel_mean", "pixel_std"}
    assert {k for k in sd if "." not in k} == scalars
    assert "visual.base_model.model.vision_model.embeddings.patch_embedding.base_layer.weight" in sd
    assert "visual.base_model.model.vision_model.embeddings.patch_embedding.base_layer.bias" not in sd
    r = TINY_LORA["r"]
    for prefix, cls in (("visual", CLIPVisionModelWithProjection), ("textual", CLIPTextModelWithProjection)):
        peft_tower = apply_lora(cls.from_pretrained(clip, local_files_only=True), TINY_LORA)
        by_peft = {f"{prefix}.{k}": tuple(v.shape) for k, v in peft_tower.state_dict().items()
                   if not k.endswith("position_ids")}
        by_spec = {k: tuple(v.shape) for k, v in sd.items() if k.startswith(prefix + ".")}
        assert by_spec == by_peft, (set(by_spec) ^ set(by_peft))
        lora_a = [k for k in by_spec if k.endswith("lora_A.default.weight")]
        assert lora_a and all(by_spec[k][0] == r for k in lora_a)
        assert all(sd[k].abs().min() > 0 for k in by_spec if ".lora_" in k)  # non-zero adapters
    conv_a = sd["visual.base_model.model.vision_model.embeddings.patch_embedding.lora_A.default.weight"]
    conv_b = sd["visual.base_model.model.vision_model.embeddings.patch_embedding.lora_B.default.weight"]
    assert conv_a.shape[:2] == (r, 3) and conv_b.shape[1:] == (r, 1, 1)
    assert not any("patch_embedding" in k for k in sd if k.startswith("textual."))


def test_bounds_loaded(model):
    assert model.bounds["V"].up_95 == pytest.approx(0.54)
    assert model.unsafe_threshold("image") == pytest.approx((0.54 + 0.73) / 2)


def test_own_format_roundtrip_exact(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["format"] == "hysac" and cfg["backbone"]["kind"] == "clip" and cfg["backbone"]["lora"]["r"] == 4
    assert not list((tmp_path / "m").glob("*.pth")) and not list((tmp_path / "m").glob("*.bin"))
    loaded = HySAC.from_pretrained(tmp_path / "m")
    a, b = model.checkpoint_state_dict(), loaded.checkpoint_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    texts = ["hello", "world"]
    assert torch.equal(model.encode_text(texts), loaded.encode_text(texts))
    assert loaded.bounds.to_dict() == model.bounds.to_dict()
    assert loaded.model_id.split("@")[1] == model.model_id.split("@")[1]


def test_merge_lora_same_outputs(released, tmp_path):
    clip, ck = released
    m = HySAC.from_pretrained(ck, backbone=clip)
    texts = ["merge me", "another one"]
    before = m.encode_text(texts)
    m.merge_lora()
    assert m.backbone.lora is None
    assert torch.allclose(m.encode_text(texts), before, atol=1e-5)
    m.save_pretrained(tmp_path / "merged")
    assert torch.allclose(HySAC.from_pretrained(tmp_path / "merged").encode_text(texts), before, atol=1e-5)


def test_image_modes_and_bad_input(model, tmp_path):
    rgb = Image.new("RGB", (30, 30), (10, 200, 30))
    modes = [rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("CMYK"), rgb.convert("P"),
             Image.fromarray(np.full((30, 30), 40000, dtype=np.uint16))]
    out = model.encode_image(modes)
    assert out.shape == (5, model.embed_dim) and torch.isfinite(out).all()
    assert model.encode_image([]).shape == (0, model.embed_dim)
    assert model.encode_text([]).shape == (0, model.embed_dim)
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(InputError, match="corrupt.jpg"):
        model.encode_image([bad])
    with pytest.raises(InputError, match="not found"):
        model.encode_image([tmp_path / "missing.png"])
    with pytest.raises(InputError, match="NaN"):
        model.encode_image(torch.full((1, 3, 28, 28), float("nan")))
    with pytest.raises(InputError, match="shape"):
        model.encode_image(torch.zeros(3, 28, 28))
    with pytest.raises(InputError):
        model.encode_text([1, 2])  # type: ignore[list-item]


def test_checkpoint_of_another_shape(released, tmp_path):
    clip, _ = released
    other_clip = make_tiny_clip_folder(tmp_path / "other", hidden=48, proj=16)
    ck = make_released_checkpoint(tmp_path / "ck", other_clip)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        HySAC.from_pretrained(ck, backbone=clip)
    sd = torch.load(ck / "hysac_model.pth", weights_only=True)
    sd.pop("visual.base_model.model.visual_projection.weight")
    sd["surprise.weight"] = torch.zeros(1)
    torch.save(sd, ck / "hysac_model.pth")
    with pytest.raises(CheckpointError, match="missing keys: .*visual_projection.*unexpected keys: surprise"):
        HySAC.from_pretrained(ck, backbone=other_clip)


def test_missing_paths_give_clear_errors(tmp_path):
    with pytest.raises(InputError, match="neither"):
        HySAC.from_pretrained(tmp_path)
    with pytest.raises(InputError):
        HySAC.from_pretrained("./does/not/exist")
