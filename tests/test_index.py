"""Tests of the safety-aware search index: each stage alone, then search correctness and safety modes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_index_fake
from hysac import lorentz as L
from hysac import safety
from hysac.errors import InputError, ModelMismatchError
from hysac.index import (
    AnnConfig,
    EncodedBatch,
    IndexSearcher,
    IndexStore,
    IndexWriter,
    Item,
    Mapper,
    add_to_index,
    build_index,
    open_source,
    query_vectors,
    storage_vectors,
)
from hysac.index.writer import COMPACT_ROWS




fake = load_index_fake()
FakeModel = fake.FakeModel

from hysac.service.demo import SAFE_TEXTS, UNSAFE_TEXTS  # noqa: E402 - the demo gallery


def write_csv(path: Path, texts: list[str]) -> Path:
    import pandas as pd

    pd.DataFrame({"text": texts, "id": list(range(len(texts))), "score": [0.5] * len(texts)}).to_csv(path, index=False)
    return path


def points_index(root: Path, model, points: np.ndarray, modalities=None, batch=64, ann=None) -> Path:
    """An index straight from points (no encoder), item i has key p<i>, content 'item i'."""
    n = len(points)
    mods = modalities or ["text"] * n
    items = [Item(key=f"p{i}", modality=mods[i], content=f"item {i}", metadata={"i": i}) for i in range(n)]
    scores = L.dist0(torch.from_numpy(points), model.curvature).double().numpy()
    thr = np.array([model.unsafe_threshold(m) for m in mods])
    with IndexWriter.create_or_open(root, model, ann=ann) as w:
        for s in range(0, n, batch):
            sl = slice(s, s + batch)
            w.commit(EncodedBatch(items[sl], points[sl], scores[sl], (scores > thr)[sl], None))
        w.finalize()
    return root


# ---------------------------------------------------------------------------------------------------------------
# reader
# ---------------------------------------------------------------------------------------------------------------
def test_reader_folder_recursive_sorted(tmp_path):
    fake.make_images(tmp_path / "imgs")
    src = open_source(tmp_path / "imgs")
    items = list(src)
    rel = [it.metadata["relpath"] for it in items]
    assert rel == sorted(rel)
    assert "sub/safe_1.png" in rel and "notes.txt" not in rel
    assert all(it.modality == "image" and Path(it.content).is_absolute() for it in items)
    assert [it.key for it in open_source(tmp_path / "imgs")] == [it.key for it in items]  # stable
    assert len(src) == len(items) == 7
    assert [len(b) for b in src.batches(3)] == [3, 3, 1]


def test_reader_tables(tmp_path):
    import pandas as pd

    csv = tmp_path / "t.csv"
    pd.DataFrame({"text": ["a", "b", None], "n": [1, 2, 3], "x": [1.5, float("nan"), 2.0]}).to_csv(csv, index=False)
    items = list(open_source(csv))
    assert [it.content for it in items] == ["a", "b", ""]
    assert items[0].metadata == {"row": 0, "n": 1, "x": 1.5}
    assert items[1].metadata["x"] is None
    json.dumps([it.metadata for it in items])  # JSON-serialisable
    assert items[0].key.startswith(str(csv.resolve()) + "#0:")
    # the key changes when the row changes, not when another row changes
    pd.DataFrame({"text": ["a", "B", None], "n": [1, 2, 3], "x": [1.5, float("nan"), 2.0]}).to_csv(csv, index=False)
    items2 = list(open_source(csv))
    assert items2[0].key == items[0].key and items2[1].key != items[1].key

    jl = tmp_path / "t.jsonl"
    jl.write_text('{"text": "hello", "tags": ["x"]}\n\n{"text": "world", "tags": []}\n')
    items = list(open_source(jl))
    assert [it.content for it in items] == ["hello", "world"] and items[0].metadata["tags"] == ["x"]

    # image table: relative paths resolved against the table's folder; caption kept as metadata
    fake.make_images(tmp_path / "imgs", corrupt=0)
    tab = tmp_path / "imgs.jsonl"
    tab.write_text('{"image": "imgs/safe_0.png", "text": "a caption"}\n')
    (it,) = list(open_source(tab))
    assert it.modality == "image" and it.content == str((tmp_path / "imgs/safe_0.png").resolve())
    assert it.metadata["text"] == "a caption"
    (it,) = list(open_source(tab, column="text"))
    assert it.modality == "text" and it.content == "a caption"


def test_reader_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    p = tmp_path / "t.parquet"
    pd.DataFrame({"text": ["a", "b"], "k": [1, 2]}).to_parquet(p)
    items = list(open_source(p))
    assert [(it.content, it.metadata["k"]) for it in items] == [("a", 1), ("b", 2)]


def test_reader_bad_sources(tmp_path):
    with pytest.raises(InputError, match="not found"):
        open_source(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unsupported source"):
        open_source(tmp_path / "x.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_source(tmp_path / "empty")
    (tmp_path / "c.csv").write_text("caption,n\nhello,1\n")
    with pytest.raises(InputError, match="'text' or an 'image' column"):
        open_source(tmp_path / "c.csv")
    (tmp_path / "b.jsonl").write_text('{"text": "a"}\nnot json\n')
    with pytest.raises(InputError, match="line 2"):
        list(open_source(tmp_path / "b.jsonl"))


# ---------------------------------------------------------------------------------------------------------------
# mapper
# ---------------------------------------------------------------------------------------------------------------
def test_mapper_texts_and_errors():
    model = FakeModel(refuse="REFUSE")
    items = [Item(f"k{i}", "text", t) for i, t in enumerate(["a cat", "", "gore on the road", "REFUSE me", "a dog"])]
    enc = Mapper(model)(items)
    assert [it.key for it in enc.items] == ["k0", "k2", "k4"]
    assert sorted(e.key for e in enc.errors) == ["k1", "k3"]
    assert enc.embeddings.shape == (3, 16) and enc.embeddings.dtype == np.float32
    np.testing.assert_allclose(enc.scores, L.dist0(torch.from_numpy(enc.embeddings), 0.5).numpy(), rtol=1e-5)
    assert enc.unsafe.tolist() == [False, True, False]
    assert enc.categories.shape == (3, 7)
    np.testing.assert_allclose(enc.embeddings[0], model.text_point("a cat"), rtol=1e-5)


def test_mapper_corrupt_image_skipped(tmp_path):
    fake.make_images(tmp_path / "imgs")
    items = list(open_source(tmp_path / "imgs"))
    enc = Mapper(FakeModel(), image_batch_size=2)(items)
    assert len(enc) == 6 and len(enc.errors) == 1
    assert "corrupt_0.jpg" in enc.errors[0].content and enc.errors[0].stage == "read"
    assert "corrupt_0.jpg" in enc.errors[0].error
    red = [it.metadata["relpath"].startswith("red") for it in enc.items]
    assert enc.unsafe.tolist() == red


# ---------------------------------------------------------------------------------------------------------------
# writer / store
# ---------------------------------------------------------------------------------------------------------------
def test_writer_commit_dedup_compact_and_readback(tmp_path):
    model = FakeModel()
    pts = fake.random_points(50, 16, 0.5, seed=3)
    root = tmp_path / "idx"
    points_index(root, model, pts, batch=7)
    with IndexWriter.open(root, model) as w:
        # recommitting the same keys adds nothing
        items = [Item(f"p{i}", "text", "dup") for i in range(5)]
        assert w.commit(EncodedBatch(items, pts[:5], np.zeros(5), np.zeros(5, bool), None)) == 0
    with IndexStore(root) as st:
        assert st.count() == 50
        ids = [r[0] for r in st.conn.execute("SELECT id FROM items ORDER BY id")]
        assert ids == list(range(50))
        assert len(st.shard_rows()) == 1  # compacted
        np.testing.assert_array_equal(st.embeddings.get(np.arange(50)), pts)
        assert st.rows([3])[3]["content"] == "item 3"
    info = json.loads((root / "index.json").read_text())
    assert info["counts"] == {"total": 50, "text": 50, "image": 0}
    assert info["model_id"] == model.model_id and info["embed_dim"] == 16 and info["curvature"] == 0.5
    assert info["faiss"]["text"]["ntotal"] == 50
    assert COMPACT_ROWS >= 50


def test_writer_orphan_shard_cleaned(tmp_path, monkeypatch):
    model = FakeModel()
    pts = fake.random_points(10, 16, 0.5, seed=4)
    root = tmp_path / "idx"
    points_index(root, model, pts[:5])
    # a "crash" between the shard write and the SQLite COMMIT
    w = IndexWriter.open(root, model)
    items = [Item(f"p{i}", "text", f"item {i}") for i in range(5, 10)]
    batch = EncodedBatch(items, pts[5:], np.ones(5), np.zeros(5, bool), None)
    real = w.conn

    class Boom:
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *a):
            if sql.startswith("INSERT INTO shards"):
                raise KeyboardInterrupt  # like a kill in the middle of the transaction
            return real.execute(sql, *a)

    w.conn = Boom()
    with pytest.raises(KeyboardInterrupt):
        w.commit(batch)
    w.conn = real
    w.close()
    (root / "embeddings" / "shard-99999999.npy").write_bytes(b"leftover")
    with IndexWriter.open(root, model) as w:
        assert not (root / "embeddings" / "shard-99999999.npy").exists()
        assert w.store.count() == 5
        assert w.commit(batch) == 5
        w.finalize()
    with IndexStore(root) as st:
        np.testing.assert_array_equal(st.embeddings.get(np.arange(10)), pts)


def test_writer_refuses_other_model_and_foreign_dir(tmp_path):
    model = FakeModel()
    root = points_index(tmp_path / "idx", model, fake.random_points(5, 16, 0.5))
    with pytest.raises(ModelMismatchError):
        IndexWriter.open(root, FakeModel(model_id="other"))
    with pytest.raises(ModelMismatchError):
        IndexWriter.open(root, FakeModel(curvature=1.0))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    with pytest.raises(InputError, match="not a hysac index"):
        IndexWriter.create_or_open(tmp_path / "foreign", model)
    # a second writer is refused while the first holds the lock
    with IndexWriter.open(root, model):
        with pytest.raises(InputError, match="another process"):
            IndexWriter.open(root, model)


# ---------------------------------------------------------------------------------------------------------------
# pipeline: build / add
# ---------------------------------------------------------------------------------------------------------------
def test_build_texts_then_add_images(tmp_path):
    model = FakeModel()
    csv = write_csv(tmp_path / "t.csv", SAFE_TEXTS + UNSAFE_TEXTS)
    r = build_index(csv, tmp_path / "idx", model, batch_size=5, progress=False)
    assert (r.added, r.skipped, r.errors) == (20, 0, 0)
    r = build_index(csv, tmp_path / "idx", model, batch_size=5, progress=False)  # idempotent rerun
    assert (r.added, r.skipped) == (0, 20)
    fake.make_images(tmp_path / "imgs")
    r = add_to_index(tmp_path / "imgs", tmp_path / "idx", model, batch_size=4, progress=False)
    assert (r.added, r.errors) == (6, 1)
    assert r.counts == {"total": 26, "text": 20, "image": 6}
    errs = [json.loads(ln) for ln in (tmp_path / "idx" / "errors.jsonl").read_text().splitlines()]
    assert len(errs) == 1 and errs[0]["content"].endswith("corrupt_0.jpg") and errs[0]["key"]
    info = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert set(info["faiss"]) == {"text", "image"} and info["errors"] == 1 and len(info["sources"]) == 3
    with pytest.raises(ModelMismatchError):
        add_to_index(csv, tmp_path / "idx", FakeModel(model_id="other"), progress=False)
    with pytest.raises(ModelMismatchError):
        build_index(csv, tmp_path / "idx", FakeModel(model_id="other"), progress=False)
    with pytest.raises(InputError, match="index not found"):
        add_to_index(csv, tmp_path / "nope", model, progress=False)
    with pytest.raises(InputError, match="needs Ray|engine"):
        if importlib.util.find_spec("ray") is None:
            build_index(csv, tmp_path / "idx2", model, engine="ray", progress=False)
        else:
            build_index(csv, tmp_path / "idx2", model, engine="spark", progress=False)


# ---------------------------------------------------------------------------------------------------------------
# search correctness
# ---------------------------------------------------------------------------------------------------------------
def test_storage_query_vectors_give_lorentz_inner():
    c = 0.7
    x = fake.random_points(30, 8, c, seed=1)
    q = fake.random_points(5, 8, c, seed=2)
    ip = query_vectors(q, c).astype(np.float64) @ storage_vectors(x, c).astype(np.float64).T
    ref = L.pairwise_inner(torch.from_numpy(q).double(), torch.from_numpy(x).double(), c).numpy()
    np.testing.assert_allclose(ip, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("curv", [0.3, 1.0, 2.5])
def test_exact_topk_equals_bruteforce(tmp_path, curv):
    model = FakeModel(curvature=curv)
    pts = fake.random_points(600, 16, curv, seed=7)
    root = points_index(tmp_path / "idx", model, pts, batch=128)
    q = fake.random_points(25, 16, curv, seed=8)
    k = 10
    with IndexSearcher(root, model) as s:
        res = s.search(torch.from_numpy(q), k=k)
    bf = L.pairwise_dist(torch.from_numpy(q).double(), torch.from_numpy(pts).double(), curv).numpy()
    for b in range(len(q)):
        got_ids = np.array([r.id for r in res[b]])
        got_d = np.array([r.distance for r in res[b]])
        ref_d = np.sort(bf[b])[:k]
        np.testing.assert_allclose(got_d, ref_d, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(bf[b, got_ids], got_d, rtol=1e-6, atol=1e-6)
        ref_ids = np.argsort(bf[b], kind="stable")[:k]
        tie = np.abs(bf[b, ref_ids] - ref_d[-1]) < 1e-6
        assert set(ref_ids[~tie]) <= set(got_ids)  # equal up to ties at the k-th distance
        assert [r.rank for r in res[b]] == list(range(1, k + 1))
        assert res[b][0].similarity == -res[b][0].distance


def test_hnsw_recall(tmp_path):
    model = FakeModel(dim=16)
    pts = fake.random_points(3000, 16, 0.5, seed=11)
    ann = AnnConfig(type="hnsw", efSearch=256)
    root = points_index(tmp_path / "idx", model, pts[:2000], batch=1000, ann=ann)
    with IndexWriter.open(root, model) as w:  # incremental insert into the existing graph
        items = [Item(f"p{i}", "text", f"item {i}") for i in range(2000, 3000)]
        sc = L.dist0(torch.from_numpy(pts[2000:]), 0.5).double().numpy()
        w.commit(EncodedBatch(items, pts[2000:], sc, sc > 0.8, None))
        w.finalize()
    assert json.loads((root / "index.json").read_text())["faiss"]["text"]["kind"] == "hnsw"
    q = fake.random_points(50, 16, 0.5, seed=12)
    with IndexSearcher(root, model) as s:
        res = s.search(q, k=10)
    bf = L.pairwise_dist(torch.from_numpy(q).double(), torch.from_numpy(pts).double(), 0.5).numpy()
    ref = np.argsort(bf, axis=1)[:, :10]
    recall = np.mean([len({r.id for r in res[b]} & set(ref[b])) / 10 for b in range(len(q))])
    assert recall >= 0.9


def test_stale_faiss_file_rebuilt_in_memory(tmp_path):
    model = FakeModel()
    pts = fake.random_points(40, 16, 0.5, seed=5)
    root = points_index(tmp_path / "idx", model, pts)
    (root / "faiss.text.index").unlink()
    with pytest.warns(UserWarning, match="missing or stale"):
        with IndexSearcher(root, model) as s:
            assert len(s.search(pts[:2], k=3)[0]) == 3
    with IndexWriter.open(root, model) as w:  # a writer re-creates the file
        w.finalize()
    assert (root / "faiss.text.index").is_file()
    with IndexSearcher(root, model) as s:
        r = s.search(pts[:1], k=100)[0]
        assert len(r) == 40 and r[0].id == 0 and r[0].distance < 1e-3


# ---------------------------------------------------------------------------------------------------------------
# safety modes
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def text_index(tmp_path):
    model = FakeModel()
    csv = write_csv(tmp_path / "t.csv", SAFE_TEXTS + UNSAFE_TEXTS)
    build_index(csv, tmp_path / "idx", model, batch_size=8, progress=False)
    return tmp_path / "idx", model


def test_modes_filter_redirect_seek(text_index):
    root, model = text_index
    q = ["blood and gore with a weapon", "a cat with drugs"]
    with IndexSearcher(root, model) as s:
        off = s.search_text(q, k=8, mode="off")
        filt = s.search_text(q, k=8, mode="filter")
        red = s.search_text(q, k=8, mode="redirect")
        rf = s.search_text(q, k=8, mode="redirect+filter")
        seek = s.search_text(q, k=8, mode="seek-unsafe")
        x = model.encode_text(q)
        # redirect pulls the (unsafe) queries in to exactly redirect_tau; seek-unsafe pushes them out
        d_red = L.dist0(torch.from_numpy(s.prepare_queries(x, "redirect", "text")), 0.5).numpy()
        np.testing.assert_allclose(d_red, model.redirect_tau("text"), rtol=1e-6)
        d_seek = L.dist0(torch.from_numpy(s.prepare_queries(x, "seek-unsafe", "text")), 0.5).numpy()
        np.testing.assert_allclose(d_seek, model.seek_unsafe_tau("text"), rtol=1e-6)
        # a safe query is not moved by redirect
        xs = model.encode_text(["a cat on a sofa"])
        np.testing.assert_allclose(s.prepare_queries(xs, "redirect", "text"), xs.double().numpy(), rtol=1e-6)
    for b in range(len(q)):
        assert off[b].query_unsafe
        assert any(r.unsafe for r in off[b].results)
        assert len(filt[b].results) == 8 and not any(r.unsafe for r in filt[b].results)
        assert len(rf[b].results) == 8 and not any(r.unsafe for r in rf[b].results)
        mean = lambda rs: np.mean([r.safety_score for r in rs.results])  # noqa: E731
        assert mean(red[b]) < mean(off[b])
        assert sum(r.unsafe for r in seek[b].results) >= sum(r.unsafe for r in off[b].results)
        assert sum(r.unsafe for r in red[b].results) < sum(r.unsafe for r in off[b].results)
    # a safe query with seek-unsafe gets more unsafe results than with off
    with IndexSearcher(root, model) as s:
        off = s.search_text(["a dog in the park"], k=5)[0]
        seek = s.search_text(["a dog in the park"], k=5, mode="seek-unsafe")[0]
    assert sum(r.unsafe for r in seek.results) > sum(r.unsafe for r in off.results)


def test_filter_fills_k_when_most_items_unsafe(tmp_path):
    model = FakeModel()
    pts = fake.random_points(400, 16, 0.5, seed=21, max_radius=2.0)
    root = points_index(tmp_path / "idx", model, pts, batch=100)
    scores = L.dist0(torch.from_numpy(pts), 0.5).numpy()
    n_safe = int((scores <= model.unsafe_threshold("text")).sum())
    assert 10 < n_safe < 400 // 2
    q = fake.random_points(6, 16, 0.5, seed=22, max_radius=2.0)
    with IndexSearcher(root, model) as s:
        res = s.search(q, k=10, mode="filter", overfetch=1)
    bf = L.pairwise_dist(torch.from_numpy(q).double(), torch.from_numpy(pts).double(), 0.5).numpy()
    bf[:, scores > model.unsafe_threshold("text")] = np.inf
    for b in range(len(q)):
        assert len(res[b]) == 10
        np.testing.assert_allclose([r.distance for r in res[b]], np.sort(bf[b])[:10], rtol=1e-6, atol=1e-6)


def test_mixed_gallery_modality_filter_and_results(tmp_path):
    model = FakeModel()
    csv = write_csv(tmp_path / "t.csv", SAFE_TEXTS)
    build_index(csv, tmp_path / "idx", model, batch_size=8, progress=False)
    imgs = fake.make_images(tmp_path / "imgs", corrupt=0)
    add_to_index(tmp_path / "imgs", tmp_path / "idx", model, progress=False)
    with IndexSearcher(tmp_path / "idx", model) as s:
        both = s.search_text(["a cat"], k=30)[0].results
        only_img = s.search_text(["a cat"], k=30, modality="image")[0].results
        only_txt = s.search_text(["a cat"], k=30, modality="text")[0].results
        by_img = s.search_image([imgs[0]], k=3, mode="redirect")[0]
    assert len(both) == 12 + 6 and {r.modality for r in both} == {"text", "image"}
    assert len(only_img) == 6 and all(r.modality == "image" and "path" in r.to_dict() for r in only_img)
    assert len(only_txt) == 12 and all("text" in r.to_dict() for r in only_txt)
    assert [r.distance for r in both] == sorted(r.distance for r in both)
    d = both[0].to_dict()
    assert set(d) >= {"rank", "key", "similarity", "distance", "safety_score", "unsafe", "categories", "metadata"}
    assert set(d["categories"]) == set(safety.CATEGORIES)
    assert by_img.query_modality == "image" and by_img.query == str(imgs[0])


def test_entailment_rerank(tmp_path):
    c = 1.0
    model = FakeModel(curvature=c, dim=8)
    rng = np.random.default_rng(0)
    u = np.zeros(8)
    u[0] = 1.0
    # a generic query near the origin along u; items along u far out (inside its cone) and items off-axis that
    # are geodesically *closer* but outside the cone
    q = L.exp_map0(torch.from_numpy(u * 0.3), c).numpy()[None]
    inside = [L.exp_map0(torch.from_numpy((u + 0.01 * rng.standard_normal(8)) * 2.0), c).numpy() for _ in range(4)]
    outside = []
    for _ in range(6):
        v = rng.standard_normal(8)
        v[0] = 0
        v = v / np.linalg.norm(v)
        outside.append(L.exp_map0(torch.from_numpy(0.45 * v), c).numpy())
    pts = np.stack(outside + inside).astype(np.float32)
    root = points_index(tmp_path / "idx", model, pts)
    with IndexSearcher(root, model) as s:
        plain = s.search(q, k=4)[0]
        rr = s.search(q, k=4, rerank="entail", entail="query", overfetch=3)[0]
        auto = s.search(q, k=4, rerank="entail", overfetch=3)[0]
    assert {r.id for r in plain} <= set(range(6))  # nearest are the off-axis ones
    assert {r.id for r in rr} == {6, 7, 8, 9} and all(r.entailed for r in rr)
    assert [r.id for r in auto] == [r.id for r in rr]  # same modality: the query is nearer the origin → parent
    assert [r.distance for r in rr] == sorted(r.distance for r in rr)


def test_search_refuses_other_model_and_bad_input(text_index):
    root, model = text_index
    with pytest.raises(ModelMismatchError):
        IndexSearcher(root, FakeModel(model_id="someone-else"))
    with IndexSearcher(root, model) as s:
        with pytest.raises(InputError, match="empty query"):
            s.search_text(["  "])
        with pytest.raises(InputError, match="unknown search mode"):
            s.search_text(["a cat"], mode="bogus")
        with pytest.raises(InputError, match="shape"):
            s.search(np.zeros((2, 5)))
        with pytest.raises(InputError, match="k must"):
            s.search(np.zeros((1, 16)), k=0)


def test_model_without_bounds(tmp_path):
    class NoBounds(FakeModel):
        def unsafe_threshold(self, modality):
            raise InputError("this model has no safety bounds")

    model = NoBounds()
    csv = write_csv(tmp_path / "t.csv", SAFE_TEXTS[:4] + UNSAFE_TEXTS[:2])
    r = build_index(csv, tmp_path / "idx", model, batch_size=4, progress=False)
    assert r.added == 6
    with IndexSearcher(tmp_path / "idx", model) as s:
        (qr,) = s.search_text(["a cat"], k=3)
        assert qr.query_unsafe is None and all(x.unsafe is None for x in qr.results)
        with pytest.raises(InputError, match="filter mode needs"):
            s.search_text(["a cat"], k=3, mode="filter")


def test_faiss_floor_guarantees_hnsw_similarity_mode(monkeypatch):
    """The declared faiss-cpu floor is the first release with HNSW.is_similarity; an older FAISS is refused with
    a one-line error instead of returning HNSW results at recall ~0."""
    import re
    import types
    from pathlib import Path

    from hysac.errors import InputError
    from hysac.index import ann

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'"faiss-cpu>=([0-9.]+)"', pyproject).group(1) == ann.MIN_FAISS
    old = types.SimpleNamespace(hnsw=types.SimpleNamespace(efSearch=16), metric_type=1)
    monkeypatch.setattr(ann, "_inner", lambda index: old)
    with pytest.raises(InputError, match=f"faiss-cpu >= {ann.MIN_FAISS}"):
        ann.prepare_for_search(old)


def test_hnsw_defaults_and_ef_search_growing_with_k(tmp_path):
    """The measured defaults (M 32, efConstruction 200, efSearch 256) and, at query time, efSearch of at least
    EF_PER_CANDIDATE x the candidates fetched (k + the fp64 re-rank margin), so a large k keeps its recall."""
    import faiss

    from hysac.index.ann import EF_PER_CANDIDATE
    from hysac.index.search import REFINE_MARGIN

    ann = AnnConfig(type="hnsw")
    assert (ann.M, ann.efConstruction, ann.efSearch) == (32, 200, 256)
    model = FakeModel(dim=16)
    pts = fake.random_points(600, 16, 0.5, seed=21)
    root = points_index(tmp_path / "idx", model, pts, batch=600, ann=AnnConfig(type="hnsw", efSearch=8))
    with IndexSearcher(root, model) as s:
        inner = faiss.downcast_index(s.faiss_index("text").index)
        s.search(pts[:2], k=5)
        assert inner.hnsw.efSearch == EF_PER_CANDIDATE * (5 + REFINE_MARGIN)
        s.search(pts[:2], k=40)
        assert inner.hnsw.efSearch == EF_PER_CANDIDATE * (40 + REFINE_MARGIN)
