"""Calibration photos (hysac.data.photos) and the threshold-rate specs of the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from hysac.data.photos import load_photos, skimage_photos, wallpaper_photos
from hysac.errors import InputError
from hysac.train.trainer import parse_rate_spec


def test_skimage_photos_written_once_with_captions(tmp_path):
    pytest.importorskip("skimage.data")
    first = skimage_photos(tmp_path)
    assert len(first) >= 10 and set(first["source"]) == {"skimage"}
    cat = first[first["path"].str.endswith("chelsea.png")]
    assert cat["caption"].tolist() == ["a photo of a cat"]
    for path in first["path"]:
        with Image.open(path) as im:
            assert min(im.size) >= 64
    mtimes = {p: Path(p).stat().st_mtime_ns for p in first["path"] if p.startswith(str(tmp_path))}
    again = skimage_photos(tmp_path)
    assert again["path"].tolist() == first["path"].tolist()
    assert {p: Path(p).stat().st_mtime_ns for p in mtimes} == mtimes  # not rewritten


def test_wallpapers_captions_from_file_names_and_sizes_deduplicated(tmp_path):
    root = tmp_path / "backgrounds" / "mate" / "nature"
    root.mkdir(parents=True)
    for name in ("GreenTraditional.jpg", "Elephants_3840x2160.jpg", "Elephants.jpg", "notes.txt"):
        (root / name).write_bytes(b"x")
    frame = wallpaper_photos([tmp_path / "backgrounds", tmp_path / "missing"])
    assert sorted(frame["caption"]) == ["elephants", "green traditional"]
    assert set(frame["source"]) == {"wallpapers"}


def test_load_photos_are_all_safe_and_share_the_image_columns(tmp_path):
    frame = load_photos(cache_dir=tmp_path, wallpaper_roots=[])
    assert list(frame.columns) == ["path", "codepoints", "caption", "unsafe", "categories", "source"]
    assert (frame["unsafe"] == 0).all() and all(c == [] for c in frame["categories"])
    assert frame["codepoints"].is_unique


@pytest.mark.parametrize("spec,expected", [
    ("0.05", {"*": 0.05}),
    ("prompts=0.03, requests=0.06", {"prompts": 0.03, "requests": 0.06}),
])
def test_rate_specs(spec, expected):
    assert parse_rate_spec(spec) == expected


@pytest.mark.parametrize("spec", ["prompts=abc", "1.5", "prompts=-0.1", ""])
def test_bad_rate_specs_refused(spec):
    with pytest.raises(InputError):
        parse_rate_spec(spec)
