"""Damaged indexes: each kind of damage is either refused with a one-line error naming what is damaged, or
repaired from the intact parts (derived FAISS files) so that search returns exactly the intact answers. Never a
traceback, never silently wrong or empty results, and a reader never recreates or changes what it reads."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_index_fake
from hysac import lorentz as L
from hysac.errors import HySACError
from hysac.index import EncodedBatch, IndexSearcher, IndexWriter, Item




FakeModel = load_index_fake().FakeModel
N, SHARD = 60, 20


def _build(root: Path, model) -> Path:
    """60 items (text and image alternating) in three shards of 20, FAISS files for both modalities."""
    rng = np.random.default_rng(0)
    tan = rng.standard_normal((N, model.embed_dim)) * rng.uniform(0.2, 1.5, (N, 1)) / np.sqrt(model.embed_dim)
    pts = L.exp_map0(torch.from_numpy(tan), model.curvature).float().numpy()
    mods = ["text" if i % 2 == 0 else "image" for i in range(N)]
    items = [Item(key=f"k{i}", modality=mods[i], content=f"item {i}", metadata={"i": i}) for i in range(N)]
    scores = L.dist0(torch.from_numpy(pts), model.curvature).double().numpy()
    unsafe = scores > 0.8
    with IndexWriter.create_or_open(root, model) as w:
        for s in range(0, N, SHARD):
            sl = slice(s, s + SHARD)
            w.commit(EncodedBatch(items[sl], pts[sl], scores[sl], unsafe[sl], None))
        w.finalize(compact=False)
    return root


QUERIES = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32) * 0.3


def _answers(root: Path, model) -> list[list[tuple[int, float]]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with IndexSearcher(root, model) as s:
            res = s.search(QUERIES, k=8, mode="off")
    return [[(r.id, round(r.distance, 6)) for r in q] for q in res]


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    model = FakeModel()
    root = _build(tmp_path_factory.mktemp("intact") / "idx", model)
    return model, root, _answers(root, model)


def _shards(root: Path) -> list[Path]:
    return sorted((root / "embeddings").glob("shard-*.npy"))


def _sql(root: Path, *statements: str) -> None:
    conn = sqlite3.connect(root / "items.sqlite")
    for st in statements:
        conn.execute(st)
    conn.commit()
    conn.close()


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_json(root: Path, fn) -> None:
    info = json.loads((root / "index.json").read_text())
    fn(info)
    (root / "index.json").write_text(json.dumps(info))


def _swap_shards(root: Path) -> None:
    a, b = _shards(root)[:2]
    tmp = a.with_suffix(".x")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)


def _swap_rows(root: Path) -> None:
    p = _shards(root)[1]
    arr = np.load(p)
    arr[[0, -1]] = arr[[-1, 0]]
    np.save(p, arr)


def _nan_row(root: Path, row: int) -> None:
    p = _shards(root)[0]
    arr = np.load(p)
    arr[row] = np.nan
    np.save(p, arr)


def _faiss_swap(root: Path) -> None:
    t, i = root / "faiss.text.index", root / "faiss.image.index"
    data = t.read_bytes()
    t.write_bytes(i.read_bytes())
    i.write_bytes(data)


def _faiss_flip(root: Path) -> None:
    p = root / "faiss.text.index"
    _flip(p, p.stat().st_size - 40)  # inside the vectors / id map


# name → damage; "refuse": every read must fail with one line; "repair": search gives the intact answers
DAMAGE = {
    "db deleted": ("refuse", lambda r: (r / "items.sqlite").unlink()),
    "db emptied": ("refuse", lambda r: (r / "items.sqlite").write_bytes(b"")),
    "db garbage": ("refuse", lambda r: (r / "items.sqlite").write_bytes(b"not a database" * 100)),
    "db truncated": ("refuse", lambda r: (r / "items.sqlite").write_bytes((r / "items.sqlite").read_bytes()[:1500])),
    "index.json deleted": ("refuse", lambda r: (r / "index.json").unlink()),
    "index.json garbage": ("refuse", lambda r: (r / "index.json").write_text("{not json")),
    "index.json not an object": ("refuse", lambda r: (r / "index.json").write_text("[1, 2]")),
    "index.json future format": ("refuse", lambda r: _edit_json(r, lambda i: i.update(format_version=99))),
    "index.json other model": ("refuse", lambda r: _edit_json(r, lambda i: i.update(model_id="other"))),
    "index.json other curvature": ("refuse", lambda r: _edit_json(r, lambda i: i.update(curvature=2.0))),
    "index.json other dim": ("refuse", lambda r: _edit_json(r, lambda i: i.update(embed_dim=8))),
    "shard deleted": ("refuse", lambda r: _shards(r)[1].unlink()),
    "shard emptied": ("refuse", lambda r: _shards(r)[1].write_bytes(b"")),
    "shard truncated": ("refuse", lambda r: _shards(r)[1].write_bytes(_shards(r)[1].read_bytes()[:300])),
    "shard wrong shape": ("refuse", lambda r: np.save(_shards(r)[1], np.zeros((20, 8), np.float32))),
    "shard wrong dtype": ("refuse", lambda r: np.save(_shards(r)[1], np.zeros((20, 16), np.float64))),
    "shard pickled objects": ("refuse", lambda r: np.save(_shards(r)[1], np.array([{"a": 1}] * 20, dtype=object),
                                                          allow_pickle=True)),
    "shards swapped": ("refuse", _swap_shards),
    "rows permuted in a shard": ("refuse", _swap_rows),
    "NaN first row": ("refuse", lambda r: _nan_row(r, 0)),
    "embeddings folder deleted": ("refuse", lambda r: shutil.rmtree(r / "embeddings")),
    "item row deleted (id gap)": ("refuse", lambda r: _sql(r, "DELETE FROM items WHERE id=7")),
    "last item row deleted": ("refuse", lambda r: _sql(r, f"DELETE FROM items WHERE id={N - 1}")),
    "shard row deleted": ("refuse", lambda r: _sql(r, "DELETE FROM shards WHERE start=20")),
    "shard row moved": ("refuse", lambda r: _sql(r, "UPDATE shards SET start=21 WHERE start=20")),
    "unknown modality": ("refuse", lambda r: _sql(r, "UPDATE items SET modality='audio' WHERE id=3")),
    "metadata not JSON": ("refuse", lambda r: _sql(r, "UPDATE items SET metadata='{oops' WHERE id>=0")),
    "categories not JSON": ("refuse", lambda r: _sql(r, "UPDATE items SET categories='[[' WHERE id>=0")),
    "items table dropped": ("refuse", lambda r: _sql(r, "DROP TABLE items")),
    "faiss text deleted": ("repair", lambda r: (r / "faiss.text.index").unlink()),
    "faiss text truncated": ("repair", lambda r: (r / "faiss.text.index").write_bytes(b"\0" * 64)),
    "faiss files swapped": ("repair", _faiss_swap),
    "faiss vector bytes edited": ("repair", _faiss_flip),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damage_is_refused_or_repaired(intact, tmp_path, name):
    model, src, reference = intact
    root = tmp_path / "idx"
    shutil.copytree(src, root)
    kind, damage = DAMAGE[name]
    damage(root)
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"}
    if kind == "repair":
        assert _answers(root, model) == reference, name
    else:
        with pytest.raises(HySACError) as e:
            _answers(root, model)
        msg = str(e.value)
        assert msg and "\n" not in " ".join(msg.split("\n")[:1]) and len(msg) < 600, msg
    after = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != ".lock"
             and not p.name.endswith(("-wal", "-shm"))}
    before = {k: v for k, v in before.items() if not str(k).endswith(("-wal", "-shm"))}
    assert after == before, f"{name}: a read changed the index files"
    assert (root / "items.sqlite").exists() == (src / "items.sqlite").exists() or name == "db deleted"
    if name == "db deleted":
        assert not (root / "items.sqlite").exists()  # not recreated empty


def test_verify_command_names_the_damaged_files(intact, tmp_path):
    model, src, _ = intact
    root = tmp_path / "idx"
    shutil.copytree(src, root)
    hysac = [sys.executable, "-m", "hysac.cli"]
    ok = subprocess.run([*hysac, "index", "verify", str(root), "--json"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True and json.loads(ok.stdout)["items"] == N
    shards = _shards(root)
    _nan_row(root, 5)  # a middle row: the cheap check on open does not read it, the full check does
    _faiss_flip(root)
    bad = subprocess.run([*hysac, "index", "verify", str(root)], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = [ln for ln in bad.stderr.splitlines() if ln.startswith("damaged:")]
    assert any(shards[0].name in ln and "sha256" in ln for ln in lines), bad.stderr
    assert any("faiss.text.index" in ln for ln in lines), bad.stderr


def test_a_read_only_index_can_be_searched(intact, tmp_path):
    """Readers open SQLite read-only: a copy without write permission (another user's index) still answers."""
    model, src, reference = intact
    root = tmp_path / "idx"
    shutil.copytree(src, root)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        assert _answers(root, model) == reference
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
