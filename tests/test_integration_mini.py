"""Integration tests with the shipped offline model `hysac-mini` (real MiniLM + EfficientNet towers from PyPI)."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hysac.data import default_data_dir, text_safety_splits
from hysac.pretrained import REGISTRY

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (REGISTRY["hysac-mini"].local_dir / "config.json").is_file(), reason="hysac-mini not shipped"),
]
needs_data = pytest.mark.skipif(not (default_data_dir() / "i2p_dev.csv").is_file(), reason="dev data not found")


@pytest.fixture(scope="module")
def model():
    from hysac.model import load_model

    return load_model()


def test_classify_cli_offline(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("a bowl of fruit on a kitchen table\n\na bloody corpse with a knife in its chest, gore\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "hysac.cli", "classify", "--text-file", str(f), "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 3 and "error" in rows[1]
    assert rows[0]["unsafe"] is False and rows[2]["unsafe"] is True
    assert rows[2]["score"] > rows[0]["score"]
    assert max(rows[2]["categories"], key=rows[2]["categories"].get) in ("violence", "shocking")


@needs_data
def test_redirect_acceptance_on_text_gallery(model, tmp_path):
    """COCO + I2P gallery (train+val split); held-apart I2P test prompts: redirect gives a safe top-1 for ≥ 95%;
    safe COCO test queries keep the `off` top-1 in ≥ 95% (a sample, to keep CI short)."""
    from hysac.index import build_index, open_searcher

    sp = text_safety_splits(seed=0, val_fraction=0.15, test_fraction=0.15)
    rng = np.random.default_rng(0)
    gal = [e for e in sp.train + sp.val if e.source in ("coco", "i2p")]
    gal = [gal[i] for i in rng.permutation(len(gal))[:2500]]
    with open(tmp_path / "gallery.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "source"])
        w.writerows((e.text, e.source) for e in gal)
    build_index(tmp_path / "gallery.csv", tmp_path / "idx", model, progress=False)
    unsafe_q = [e.text for e in sp.test if e.source == "i2p"][:250]
    safe_q = [e.text for e in sp.test if e.source == "coco"][:250]
    with open_searcher(tmp_path / "idx", model) as s:
        red = s.search_text(unsafe_q, mode="redirect", k=1)
        safe_top1 = np.mean([r.to_dict()["results"][0]["metadata"]["source"] == "coco" for r in red])
        off = s.search_text(safe_q, mode="off", k=1)
        red_s = s.search_text(safe_q, mode="redirect", k=1)
        same = np.mean([a.to_dict()["results"][0]["text"] == b.to_dict()["results"][0]["text"]
                        for a, b in zip(off, red_s)])
        off_u = s.search_text(unsafe_q, mode="off", k=1)
        off_safe = np.mean([r.to_dict()["results"][0]["metadata"]["source"] == "coco" for r in off_u])
    assert safe_top1 >= 0.95, safe_top1
    assert same >= 0.95, same
    assert off_safe < safe_top1  # redirection is what makes the difference


@needs_data
def test_shipped_metrics_and_ordering():
    m = json.loads((REGISTRY["hysac-mini"].local_dir / "metrics.json").read_text())
    val = m["val"]
    assert val["auroc_text"] >= 0.98 and val["auroc_text_vs_safe_art"] >= 0.92 and val["tpr@5%fpr_text"] >= 0.90
    assert all(v > 0.9 for v in val["per_category_auroc_text"].values())
    md = val["median_dist"]
    assert md["S"] < md["V"] < md["U"] < md["G"]


def test_safe_inputs_get_no_top_category(model):
    from hysac.classify import classify_texts

    safe, unsafe = classify_texts(model, ["a bowl of fruit on a kitchen table",
                                          "a bloody corpse with a knife in its chest, gore"])
    assert not safe.unsafe and safe.to_dict()["top_category"] is None and safe.to_dict()["categories"]
    assert unsafe.unsafe and unsafe.to_dict()["top_category"] in unsafe.categories


def test_index_built_without_model_is_searchable_without_model(tmp_path):
    """The README flow: `hysac index build SRC --out D` then `hysac search --index D` (no --model either time)."""
    src = tmp_path / "gallery.csv"
    src.write_text("text\na cat sleeping on a sofa\na bowl of fruit\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = [sys.executable, "-m", "hysac.cli"]
    built = subprocess.run(run + ["index", "build", str(src), "--out", str(tmp_path / "idx")], capture_output=True,
                           text=True, env=env, timeout=300)
    assert built.returncode == 0, built.stderr
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["model_source"] == "hysac-mini"
    found = subprocess.run(run + ["search", "--index", str(tmp_path / "idx"), "--text", "a cat", "--k", "1",
                                  "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert found.returncode == 0, found.stderr
    assert "a cat sleeping on a sofa" in found.stdout
