"""CLI: ``hysac index build|add|info`` and ``hysac search`` with a fake ``hysac.model.load_model``."""

from __future__ import annotations

import json
import sys
import types

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import load_index_fake
from hysac.index.cli import _standalone




fake = load_index_fake()


@pytest.fixture()
def cli(monkeypatch):
    loaded: list = []

    def load_model(name_or_path=None, **kw):
        loaded.append(name_or_path)
        return fake.FakeModel(model_id=str(name_or_path or "fake-default"))

    mod = types.ModuleType("hysac.model")
    mod.load_model = load_model
    monkeypatch.setitem(sys.modules, "hysac.model", mod)
    runner = CliRunner()
    app = _standalone()

    def run(*args):
        return runner.invoke(app, [str(a) for a in args])

    run.loaded = loaded
    return run


@pytest.fixture()
def built(tmp_path, cli):
    texts = ["a cat on a sofa", "a dog in the park", "gore on the road", "a weapon in the park", "a cup of coffee"]
    src = tmp_path / "t.csv"
    pd.DataFrame({"text": texts, "lang": ["en"] * len(texts)}).to_csv(src, index=False)
    out = tmp_path / "idx"
    r = cli("index", "build", src, "--out", out, "--model", "fake-a", "--batch-size", 2, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "+5 items" in r.stdout
    return out, texts


def _err(r) -> str:
    return r.stderr.strip()


def test_build_info_search_json(tmp_path, cli, built):
    out, texts = built
    r = cli("index", "info", out, "--json")
    assert r.exit_code == 0
    info = json.loads(r.stdout)
    assert info["model_id"] == "fake-a" and info["counts"]["total"] == 5 and info["model_source"] == "fake-a"
    r = cli("index", "info", out)
    assert r.exit_code == 0 and "fake-a" in r.stdout

    qf = tmp_path / "q.txt"
    qf.write_text("a weapon\n\n a cat \n")
    r = cli("search", "--index", out, "--text", "gore and blood", "--text-file", qf, "--mode", "filter", "-k", 3,
            "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [d["query"] for d in lines] == ["gore and blood", "a weapon", "a cat"]
    for d in lines:
        assert d["mode"] == "filter" and len(d["results"]) == 3
        for res in d["results"]:
            assert res["text"] in texts and res["unsafe"] is False and res["metadata"]["lang"] == "en"
            assert {"similarity", "distance", "safety_score", "categories", "rank", "key"} <= set(res)
    assert cli.loaded[-1] == "fake-a"  # defaults to the index's model

    r = cli("search", "--index", out, "--text", "a cat", "--mode", "seek-unsafe", "-k", 2)
    assert r.exit_code == 0 and "seek-unsafe" in r.stdout


def test_add_images_and_image_query(tmp_path, cli, built):
    out, _ = built
    imgs = fake.make_images(tmp_path / "imgs")
    r = cli("index", "add", tmp_path / "imgs", "--index", out, "--no-progress", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["added"] == 6 and rep["errors"] == 1 and rep["counts"]["image"] == 6
    r = cli("search", "--index", out, "--image", imgs[0], "--modality", "image", "--json", "-k", 2)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["query"] == str(imgs[0]) and d["query_modality"] == "image"
    assert all("path" in x for x in d["results"])
    r = cli("index", "add", tmp_path / "imgs", "--index", out, "--model", "fake-b", "--no-progress")
    assert r.exit_code == 2 and "fake-a" in _err(r) and len(_err(r).splitlines()) == 1


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--text", "  "], "empty query"),
        ([], "empty query"),
        (["--text", "a cat", "--mode", "bogus"], "unknown mode"),
        (["--text", "a cat", "--model", "fake-b"], "refusing model"),
        (["--text", "a cat", "--modality", "audio"], "unknown modality"),
        (["--image", "/nonexistent/x.png"], "not found"),
    ],
)
def test_search_bad_input_exit_2(cli, built, args, msg):
    out, _ = built
    r = cli("search", "--index", out, *args)
    assert r.exit_code == 2, r.output
    assert msg in _err(r) and len(_err(r).splitlines()) == 1 and "Traceback" not in r.output


def test_missing_index_and_bad_src_exit_2(tmp_path, cli):
    r = cli("search", "--index", tmp_path / "nope", "--text", "a cat")
    assert r.exit_code == 2 and "index not found" in _err(r)
    r = cli("index", "info", tmp_path / "nope")
    assert r.exit_code == 2 and "index not found" in _err(r)
    r = cli("index", "build", tmp_path / "nope.csv", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "source not found" in _err(r)
    assert not (tmp_path / "o").exists()
    (tmp_path / "t.csv").write_text("text\nhello\n")
    r = cli("index", "build", tmp_path / "t.csv", "--out", tmp_path / "o", "--ann", "ivf")
    assert r.exit_code == 2 and "unknown ANN type" in _err(r)
    r = cli("index", "build", tmp_path / "t.csv", "--out", tmp_path / "o", "--engine", "spark")
    assert r.exit_code == 2 and "unknown engine" in _err(r)


def test_mounted_in_main_cli(cli, built):
    main = pytest.importorskip("hysac.cli")
    out, _ = built
    r = CliRunner().invoke(main.app, ["search", "--index", str(out), "--text", "a cat", "--json", "-k", 1])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["results"]) == 1
    r = CliRunner().invoke(main.app, ["search", "--index", str(out), "--text", "a cat", "--mode", "nope"])
    assert r.exit_code == 2


def test_resume_keeps_ann(tmp_path, cli):
    src = tmp_path / "t.csv"
    pd.DataFrame({"text": [f"text {i}" for i in range(6)]}).to_csv(src, index=False)
    out = tmp_path / "idx"
    r = cli("index", "build", src, "--out", out, "--model", "fake-a", "--ann", "hnsw", "--no-progress")
    assert r.exit_code == 0, r.output
    r = cli("index", "build", src, "--out", out, "--no-progress", "--json")  # resume: model and ANN from the index
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["skipped"] == 6 and cli.loaded[-1] == "fake-a"
    info = json.loads((out / "index.json").read_text())
    assert info["ann"]["type"] == "hnsw" and info["faiss"]["text"]["kind"] == "hnsw"


def test_search_query_file_blank_lines_skipped_bad_line_named(tmp_path, cli, built):
    out, _ = built
    q = tmp_path / "q.txt"
    q.write_bytes(b"a cat\n\n   \na weapon\n")
    r = cli("search", "--index", out, "--text-file", q, "--json", "-k", 2)
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["query"] for line in r.stdout.splitlines()] == ["a cat", "a weapon"]
    q.write_bytes(b"a cat\n\xff\xfe broken\n")
    r = cli("search", "--index", out, "--text-file", q)
    assert r.exit_code == 2 and "q.txt:2" in _err(r) and "UTF-8" in _err(r)
