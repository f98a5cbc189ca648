"""Open Clip Art source: labels by folder/name, captions from file names, seeded subsampling."""

from pathlib import Path

import pytest

from hysac.data.clipart import DEFAULT_ROOT, _caption, _label, load_openclipart
from hysac.errors import InputError


def test_rules_and_captions():
    assert _label("tools/weapons/m16_01.png") == ("violence",)
    assert _label("tools/weapons/boomerang_01.png") == ()
    assert _label("signs_and_symbols/skull-and-bones-aj_aj_as_01.png") == ("shocking",)
    assert _label("food/fruit/kallisti-grenade_1_nurbl_01.png") == ()
    assert _label("signs_and_symbols/no_smoking_jorkon_01.png") == ()
    assert _label("animals/mammals/cat_01.png") == ()
    assert _caption(Path("x/katana_dudziak_tomek_01.png")) == "katana dudziak tomek"


def test_missing_root(tmp_path):
    with pytest.raises(InputError, match="openclipart-png"):
        load_openclipart(tmp_path / "nope")


def test_local_tree(tmp_path):
    from PIL import Image

    for rel in ("tools/weapons/sword_01.png", "animals/cat_01.png", "animals/dog_01.png", "special/patterns/p.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (8, 8)).save(tmp_path / rel)
    df = load_openclipart(tmp_path, max_safe=1, seed=0)
    assert len(df) == 2 and df["unsafe"].sum() == 1
    assert set(df.columns) >= {"path", "codepoints", "caption", "unsafe", "categories"}
    assert df.equals(load_openclipart(tmp_path, max_safe=1, seed=0))


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="openclipart-png not installed")
def test_installed_package():
    df = load_openclipart(max_safe=100)
    assert df["unsafe"].sum() >= 20 and (df["unsafe"] == 0).sum() == 100
