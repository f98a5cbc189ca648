"""Tests of hysac.data: real shared data (skipped when absent) plus tiny files written in tmp_path."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hysac.data import (
    CATEGORIES,
    ViSUDataset,
    build_quadruplets,
    categories_to_multihot,
    default_data_dir,
    emoji_caption,
    emoji_categories,
    load_coco_captions,
    load_i2p,
    load_ldnoobw,
    load_openmoji_manifest,
    load_safe_art_prompts,
    multihot_to_categories,
    openmoji_cache_dir,
    pair_nearest,
    parse_categories,
    quadruplets_from_visu,
    read_table,
    render_openmoji,
    split_categories,
    split_indices,
    text_safety_splits,
)
from hysac.data import openmoji as openmoji_mod
from hysac.data.categories import CATEGORY_INDEX
from hysac.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shared_data() -> Path:
    d = default_data_dir()
    if not (d / "i2p_dev.csv").is_file():
        pytest.skip(f"shared data not found at {d} (set HYSAC_DATA_DIR to the folder holding i2p_dev.csv)")
    return d


# ------------------------------------------------------------------------------------------------ categories


def test_parse_categories_normalises_and_orders() -> None:
    assert parse_categories("violence, self-harm") == ["violence", "self-harm"]
    assert parse_categories("  Self_Harm ;VIOLENCE|violence ") == ["violence", "self-harm"]
    assert parse_categories("Illegal Activities") == ["illegal activity"]
    assert parse_categories(["sexual", "hate"]) == ["hate", "sexual"]
    assert parse_categories(None) == [] and parse_categories(float("nan")) == [] and parse_categories("") == []


def test_unknown_categories_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    assert split_categories("hate, spaceships, Violence") == (["hate", "violence"], ["spaceships"])
    with caplog.at_level(logging.WARNING, logger="hysac.data.categories"):
        assert parse_categories("hate, weird-unknown-cat") == ["hate"]
    assert "weird-unknown-cat" in caplog.text


def test_multihot_roundtrip() -> None:
    v = categories_to_multihot(["shocking", "illegal activities"])
    assert v.shape == (7,) and v.dtype == np.float32
    assert v.sum() == 2 and v[CATEGORY_INDEX["shocking"]] == 1 and v[6] == 1
    assert multihot_to_categories(v) == ["shocking", "illegal activity"]
    assert categories_to_multihot([]).sum() == 0
    assert len(CATEGORIES) == 7


# ------------------------------------------------------------------------------------------------ paths


def test_default_data_dir_is_repo_relative_and_overridable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HYSAC_DATA_DIR", raising=False)
    assert default_data_dir() == (REPO_ROOT.parent / "shared" / "data").resolve()
    monkeypatch.setenv("HYSAC_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    with pytest.raises(InputError, match="HYSAC_DATA_DIR") as e:
        load_i2p()
    assert str(tmp_path / "i2p_dev.csv") in str(e.value)


def test_missing_explicit_file_names_path(tmp_path: Path) -> None:
    for loader in (load_i2p, load_coco_captions, load_safe_art_prompts):
        with pytest.raises(InputError, match="nope.csv"):
            loader(tmp_path / "nope.csv")


# ------------------------------------------------------------------------------------------------ text data


def test_load_i2p_real(shared_data: Path) -> None:
    df = load_i2p()
    assert 3000 < len(df) <= 3993
    assert list(df.columns[:5]) == ["text", "source", "categories", "multihot", "hard"]
    assert df["text"].is_unique and (df["text"] == df["text"].str.strip()).all() and (df["text"] != "").all()
    assert df["hard"].dtype == bool and 0 < df["hard"].sum() < len(df)
    assert all(set(c) <= set(CATEGORIES) and c for c in df["categories"])
    assert all(m.shape == (7,) and m.sum() == len(c) for m, c in zip(df["multihot"], df["categories"], strict=True))
    assert (df["source"] == "i2p").all()


def test_load_coco_and_art_real(shared_data: Path) -> None:
    coco, art = load_coco_captions(), load_safe_art_prompts()
    assert 14000 < len(coco) <= 15000 and coco["text"].is_unique and coco["image_id"].notna().all()
    assert 1500 < len(art) < 2860 and art["text"].is_unique  # the art file repeats many prompts
    assert set(art["subset"]) == {"generic_artists_prompts", "imagenet_prompts"}
    assert len(load_ldnoobw()) > 300


def test_loaders_clean_and_merge(tmp_path: Path) -> None:
    p = tmp_path / "i2p.csv"
    pd.DataFrame({
        "prompt": ["  a  bloody   knife ", "a bloody knife", None, "   ", "a nude statue"],
        "categories": ["violence", "Shocking, violence", "hate", "hate", "sexual, martians"],
        "hard": [0, 1, 0, 0, 0],
    }).to_csv(p, index=False)
    df = load_i2p(p)
    assert df["text"].tolist() == ["a bloody knife", "a nude statue"]
    assert df["categories"].tolist() == [["violence", "shocking"], ["sexual"]]
    assert df["hard"].tolist() == [True, False]
    coco = tmp_path / "coco.csv"
    pd.DataFrame({"image_id": ["000000000042", "7", "8"], "prompt": ["A dog.", " A dog. ", "nan"],
                  "source": "coco-30k"}).to_csv(coco, index=False)
    c = load_coco_captions(coco)
    assert c["text"].tolist() == ["A dog."] and int(c["image_id"].iat[0]) == 42


def test_split_indices() -> None:
    parts = split_indices(101, (0.8, 0.1, 0.1), seed=3)
    assert [len(p) for p in parts] == [81, 10, 10]
    allidx = np.concatenate(parts)
    assert sorted(allidx.tolist()) == list(range(101))
    again = split_indices(101, (0.8, 0.1, 0.1), seed=3)
    assert all((a == b).all() for a, b in zip(parts, again, strict=True))
    assert not (split_indices(101, seed=4)[1] == parts[1]).all()
    assert [len(p) for p in split_indices(0)] == [0, 0, 0]
    with pytest.raises(InputError):
        split_indices(10, (0.5, 0.2))


def test_text_safety_splits_real(shared_data: Path) -> None:
    s = text_safety_splits(seed=0)
    train, val, test = (set(e.text for e in part) for part in s)
    assert not (train & val) and not (train & test) and not (val & test)
    total = len(train) + len(val) + len(test)
    assert total == sum(len(p) for p in s)  # no duplicate text inside a split either
    assert abs(len(val) / total - 0.15) < 0.01 and abs(len(test) / total - 0.15) < 0.01
    for part in s:
        assert {e.source for e in part} == {"i2p", "coco", "safe_art"}
        for e in part[:200]:
            assert e.label == (1 if e.source == "i2p" else 0)
            assert (e.multihot.sum() > 0) == bool(e.label) and e.multihot.shape == (7,)
    s2 = text_safety_splits(seed=0)
    assert [e.text for e in s2.test] == [e.text for e in s.test]
    assert [e.text for e in text_safety_splits(seed=1).test] != [e.text for e in s.test]


# ------------------------------------------------------------------------------------------------ read_table


def test_read_table_formats(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    df = pd.DataFrame(rows)
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_csv(tmp_path / "t.tsv", sep="\t", index=False)
    df.to_csv(tmp_path / "t.csv.gz", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "t.json").write_text(json.dumps(rows))
    (tmp_path / "d.json").write_text(json.dumps({"0": rows[0], "1": rows[1]}))
    with gzip.open(tmp_path / "w.json.gz", "wt") as fh:
        json.dump({"info": {}, "data": rows}, fh)
    for name in ("t.csv", "t.tsv", "t.csv.gz", "t.parquet", "t.jsonl", "t.json", "d.json", "w.json.gz"):
        got = read_table(tmp_path / name)
        assert got["a"].tolist() == [1, 2] and got["b"].tolist() == ["x", "y"], name


def test_read_table_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing.csv.*not found"):
        read_table(tmp_path / "missing.csv")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(InputError, match="unsupported table format '.xlsx'"):
        read_table(tmp_path / "t.xlsx")
    (tmp_path / "bad.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(InputError, match="bad.parquet: cannot read as parquet"):
        read_table(tmp_path / "bad.parquet")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="bad.json: cannot read as json"):
        read_table(tmp_path / "bad.json")
    (tmp_path / "scalar.json").write_text("42")
    with pytest.raises(InputError, match="list of objects"):
        read_table(tmp_path / "scalar.json")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81\x82" * 20)
    with pytest.raises(InputError, match="bin.csv"):
        read_table(tmp_path / "bin.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty.csv: empty"):
        read_table(tmp_path / "empty.csv")


# ------------------------------------------------------------------------------------------------ ViSU


def _jpeg(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, format="JPEG")


@pytest.fixture()
def visu_files(tmp_path: Path) -> dict[str, Path]:
    coco = tmp_path / "coco"
    _jpeg(coco / "val2017" / f"{42:012d}.jpg", (0, 200, 0))
    _jpeg(coco / "train2017" / f"{7:012d}.jpg", (0, 0, 200))
    visu = tmp_path / "visu"
    _jpeg(visu / "nsfw" / "0.jpg", (200, 0, 0))
    _jpeg(tmp_path / "abs.jpg", (9, 9, 9))
    items = {
        "0": {"coco_id": 42, "nsfw_im_path": "nsfw/0.jpg", "safe": " A man cooks. ", "nsfw": "A man stabs.",
              "tag": "violence", "incremental_id": 0},
        "1": {"coco_id": 7, "nsfw_im_path": str(tmp_path / "abs.jpg"), "safe": "A cat.", "nsfw": "A dead cat.",
              "tag": "Shocking"},
        "2": {"coco_id": 42, "nsfw_im_path": "nsfw/missing.jpg", "safe": "Two dogs.", "nsfw": "Two dogs fight.",
              "tag": "violence"},
        "3": {"coco_id": 42, "nsfw_im_path": "nsfw/0.jpg", "safe": "", "nsfw": "dropped", "tag": "hate"},
    }
    flat = tmp_path / "visu_flat.json"
    flat.write_text(json.dumps(items))
    wrapped = tmp_path / "visu_wrapped.json"
    wrapped.write_text(json.dumps({"info": {"version": 1}, "data": items}))
    return {"coco": coco, "visu": visu, "flat": flat, "wrapped": wrapped, "root": tmp_path}


def test_visu_official_layouts(visu_files: dict[str, Path]) -> None:
    for key in ("flat", "wrapped"):
        ds = ViSUDataset(visu_files[key], coco_root=visu_files["coco"], visu_root=visu_files["visu"])
        assert len(ds) == 3 and ds.n_dropped == 1
        a = ds[0]
        assert a["safe_text"] == "A man cooks." and a["nsfw_text"] == "A man stabs." and a["tag"] == "violence"
        assert a["safe_image_path"] == str(visu_files["coco"] / "val2017" / "000000000042.jpg")
        assert a["nsfw_image_path"] == str(visu_files["visu"] / "nsfw" / "0.jpg")
        b = ds[1]
        assert b["safe_image_path"].endswith("train2017/000000000007.jpg")
        assert b["nsfw_image_path"] == str(visu_files["root"] / "abs.jpg")
        with pytest.raises(InputError, match="missing.jpg"):
            ds[2]  # lazily checked
        with pytest.raises(InputError, match="1 missing image.*missing.jpg"):
            ds.validate()


def test_visu_missing_coco_image_and_root(visu_files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="coco_root"):
        ViSUDataset(visu_files["flat"])
    ds = ViSUDataset(visu_files["flat"], coco_root=tmp_path / "empty_coco", visu_root=visu_files["visu"])
    with pytest.raises(InputError, match="val2017/000000000042.jpg"):
        ds[0]
    with pytest.raises(InputError, match="not found"):
        ViSUDataset(tmp_path / "nope.json")


def test_visu_text_only_and_quadruplets(visu_files: dict[str, Path], tmp_path: Path) -> None:
    ds = ViSUDataset(visu_files["flat"], load_images=False)
    assert ds.validate() == 3
    assert all(it["safe_image_path"] is None and it["nsfw_image_path"] is None for it in ds)
    csv = tmp_path / "visu_text.csv"
    pd.DataFrame({"safe": ["a cat", "a dog"], "nsfw": ["a dead cat", "a bloody dog"],
                  "tag": ["shocking", "violence"], "coco_id": [7, None]}).to_csv(csv, index=False)
    jsonl = tmp_path / "visu_text.jsonl"
    jsonl.write_text('{"safe": "a cat", "nsfw": "a dead cat", "tag": "shocking"}\n')
    assert [it["tag"] for it in ViSUDataset(csv, load_images=False)] == ["shocking", "violence"]
    assert ViSUDataset(csv, load_images=False)[0]["coco_id"] == 7
    assert ViSUDataset(jsonl, load_images=False)[0]["nsfw_text"] == "a dead cat"
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"safe": ["x"], "tag": ["hate"]}).to_csv(bad, index=False)
    with pytest.raises(InputError, match="missing ViSU field.*nsfw"):
        ViSUDataset(bad, load_images=False)

    full = ViSUDataset(visu_files["flat"], coco_root=visu_files["coco"], visu_root=visu_files["visu"])
    full.items = full.items[:2]
    q = quadruplets_from_visu(full)
    assert q.has_safe_image.tolist() == [True, True] and q.complete.all()
    assert q[1].categories == ("shocking",)
    q2 = quadruplets_from_visu(ds)
    assert not q2.has_safe_image.any() and not q2.has_unsafe_image.any()


# ------------------------------------------------------------------------------------------------ OpenMoji


def test_emoji_captions_and_labels() -> None:
    assert emoji_caption("1F52B") == "pistol"
    assert emoji_caption("1F468-200D-1F373") == "man cooking"
    assert emoji_caption("1F595-1F3FD") == "reversed hand with middle finger extended medium skin tone"
    assert emoji_caption("1F1FA-1F1F8") == "flag us"
    assert emoji_caption("E000") is None  # private use: no Unicode name
    assert emoji_categories("1F52B") == ["violence"]
    assert emoji_categories("1FA78") == ["violence", "shocking"]
    assert emoji_categories("1F595-1F3FB") == ["harassment"]
    assert emoji_categories("1F3F4-200D-2620-FE0F") == []  # pirate flag: a composition, not labelled
    assert emoji_categories("1F600") == []


def test_render_openmoji_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "om"
    m = render_openmoji(size=32, cache_dir=out, codepoints=["1F52B", "🙂", "1f480"], progress=False)
    assert m["codepoints"].tolist() == ["1F52B", "1F642", "1F480"]
    assert m["caption"].tolist() == ["pistol", "slightly smiling face", "skull"]
    assert m["unsafe"].tolist() == [1, 0, 1] and m["categories"].tolist() == [["violence"], [], ["shocking"]]
    for p in m["path"]:
        with Image.open(p) as im:
            assert im.mode == "RGB" and im.size == (32, 32)
            assert im.getpixel((0, 0)) == (255, 255, 255)  # alpha flattened on white
            assert len(np.unique(np.asarray(im).reshape(-1, 3), axis=0)) > 2  # something was drawn
    on_disk = pd.read_csv(out / "manifest.csv")
    assert list(on_disk.columns) == ["path", "codepoints", "caption", "unsafe", "categories"]
    assert sorted(on_disk["path"]) == ["1F480.png", "1F52B.png", "1F642.png"]
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))

    # A re-run renders nothing; a new selection adds to the manifest.
    def boom(*a: object, **k: object) -> None:
        raise AssertionError("re-rendered an existing PNG")

    monkeypatch.setattr(openmoji_mod, "render_svg", boom)
    again = render_openmoji(size=32, cache_dir=out, codepoints=["1F52B"], progress=False)
    assert again["path"].tolist() == [str(out / "1F52B.png")]
    monkeypatch.undo()
    render_openmoji(size=32, cache_dir=out, limit=2, progress=False)
    loaded = load_openmoji_manifest(size=32, cache_dir=out)
    assert len(loaded) == 5 and loaded["path"].map(lambda p: Path(p).is_file()).all()
    with pytest.raises(InputError, match="no captioned OpenMoji"):
        render_openmoji(size=32, cache_dir=out, codepoints=["E000"], progress=False)


def test_render_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def save(self, fh: object, format: str) -> None:
            fh.write(b"\x89PNG partial")  # type: ignore[attr-defined]
            raise KeyboardInterrupt

    monkeypatch.setattr(openmoji_mod, "render_svg", lambda svg, size: Broken())
    with pytest.raises(KeyboardInterrupt):
        render_openmoji(size=16, cache_dir=tmp_path, codepoints=["1F52B"], progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a PNG nor a temporary file


def test_openmoji_cache_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYSAC_CACHE_DIR", str(tmp_path))
    assert openmoji_cache_dir(64) == tmp_path / "openmoji" / "64"
    monkeypatch.delenv("HYSAC_CACHE_DIR")
    assert openmoji_cache_dir(224) == Path.home() / ".cache" / "hysac" / "openmoji" / "224"
    assert openmoji_cache_dir(224, tmp_path / "x") == tmp_path / "x"
    with pytest.raises(InputError, match="no OpenMoji manifest"):
        load_openmoji_manifest(cache_dir=tmp_path / "x")


# ------------------------------------------------------------------------------------------------ quadruplets


def test_pair_nearest_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    u, s = rng.normal(size=(300, 16)), rng.normal(size=(1000, 16))
    un = u / np.linalg.norm(u, axis=1, keepdims=True)
    sn = s / np.linalg.norm(s, axis=1, keepdims=True)
    expected = (un @ sn.T).argmax(1)
    idx, scores = pair_nearest(u, s, chunk_size=64, return_scores=True)
    assert idx.dtype == np.int64 and (idx == expected).all()
    assert np.allclose(scores, (un @ sn.T).max(1), atol=1e-5)
    import torch

    assert (pair_nearest(torch.tensor(u), torch.tensor(s) * 5.0) == expected).all()  # cosine: scale-free


def test_pair_nearest_unique_and_errors() -> None:
    s = np.eye(4)
    u = np.array([[1.0, 0.1, 0, 0], [1.0, 0.0, 0, 0], [0, 0, 1.0, 0]])
    assert pair_nearest(u, s).tolist() == [0, 0, 2]
    uniq = pair_nearest(u, s, unique=True, chunk_size=1)
    assert uniq.tolist() == [1, 0, 2]  # the closer one keeps index 0; the other gets its next best
    with pytest.raises(InputError, match="at least as many safe"):
        pair_nearest(np.ones((5, 4)), s, unique=True)
    with pytest.raises(InputError, match="feature sizes differ"):
        pair_nearest(np.ones((2, 3)), s)
    with pytest.raises(InputError, match="NaN"):
        pair_nearest(np.full((1, 4), np.nan), s)


def test_build_quadruplets_masks() -> None:
    safe = ["a dog on grass", "a kitchen", "a bridge"]
    unsafe = ["a kitchen with a knife", "a bloody dog"]

    def encode(texts: list[str]) -> np.ndarray:  # bag of words on a tiny vocabulary
        vocab = ["dog", "kitchen", "bridge", "knife", "bloody"]
        return np.array([[float(w in t) for w in vocab] + [0.01] for t in texts])

    q = build_quadruplets(unsafe, safe, encode=encode, safe_images=["dog.jpg", None, "bridge.jpg"],
                          unsafe_images=[None, "blood.jpg"], unsafe_categories=["violence", "shocking, violence"])
    assert [(r.unsafe_text, r.safe_text) for r in q] == [(unsafe[0], safe[1]), (unsafe[1], safe[0])]
    assert q.has_safe_image.tolist() == [False, True] and q.has_unsafe_image.tolist() == [False, True]
    assert q.complete.tolist() == [False, True]
    assert q[1].categories == ("violence", "shocking") and q[1].safe_image == "dog.jpg"
    with pytest.raises(InputError, match="safe_images has 1 entries"):
        build_quadruplets(unsafe, safe, encode=encode, safe_images=["x"])
    with pytest.raises(InputError, match="encode"):
        build_quadruplets(unsafe, safe)
