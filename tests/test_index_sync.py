"""A rebuild over a source whose rows or files changed brings the index in line with it: edited items are
re-encoded and their old version is never returned again, removed rows/files disappear from every search mode,
unchanged items are kept without re-encoding (moved table rows included), a kill -9 mid-sync resumes exactly, and
indexes written before this (format 1) still open, search and sync."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import load_index_fake
from hysac.index import MODES, IndexSearcher, IndexStore, Item, add_to_index, build_index, open_source
from hysac.index.reader import content_fingerprint, key_slot

FAKE = Path(__file__).with_name("index_fake.py")




fake = load_index_fake()


class Counting(fake.FakeModel):
    """The fake model, recording every text and counting every image it encodes."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.texts: list[str] = []
        self.images = 0

    def reset(self) -> None:
        self.texts, self.images = [], 0

    def encode_text(self, texts, batch_size=256):
        self.texts += list(texts)
        return super().encode_text(texts, batch_size=batch_size)

    def encode_image(self, images, batch_size=32):
        self.images += len(images)
        return super().encode_image(images, batch_size=batch_size)


TEXTS = [
    "a cat on a sofa", "a dog in the park", "gore on the road", "a cup of coffee", "a red bicycle",
    "a weapon in the park", "children playing football", "a bowl of soup", "blood on the floor",
    "a mountain lake at dawn", "a train station at night", "a vase of tulips",
]


def write_table(path: Path, texts: list[str], tags: list[str] | None = None) -> Path:
    tags = tags if tags is not None else [f"t{i}" for i in range(len(texts))]
    pd.DataFrame({"text": texts, "tag": tags}).to_csv(path, index=False)
    return path


def live_rows(root: Path) -> dict[str, dict]:
    """key → row of every live item."""
    with IndexStore(root) as st:
        ids = st.ids_of("text", live_only=True).tolist() + st.ids_of("image", live_only=True).tolist()
        return {r["key"]: r for r in st.rows(ids).values()}


def assert_vectors_match(root: Path, model) -> None:
    """Every live text item's vector is the encoding of its own stored text (nothing stale, nothing shifted)."""
    with IndexStore(root) as st:
        ids = st.ids_of("text", live_only=True)
        rows = st.rows(ids)
        emb = st.embeddings.get(ids)
    for i, v in zip(ids.tolist(), emb):
        np.testing.assert_allclose(v, model.text_point(rows[i]["content"]), rtol=1e-5, atol=1e-6)


def returned(root: Path, model, query: str, *, mode: str = "off", modality: str | None = None, k: int = 60,
             image: Path | None = None) -> list:
    with IndexSearcher(root, model) as s:
        if image is not None:
            (qr,) = s.search_image([image], k=k, mode=mode, modality=modality)
        else:
            (qr,) = s.search_text([query], k=k, mode=mode, modality=modality)
    return qr.results


def check_invariants(root: Path) -> None:
    with IndexStore(root) as st:
        assert st.verify() == []
        n = st.count()
        assert [r[0] for r in st.conn.execute("SELECT id FROM items ORDER BY id")] == list(range(n))
        live_keys = [r[0] for r in st.conn.execute("SELECT key FROM items WHERE removed IS NULL")]
        assert len(live_keys) == len(set(live_keys))
        info = json.loads((root / "index.json").read_text())
        assert info["counts"] == st.counts() and info["removed"] == st.removed_count()
        assert info["counts"]["total"] + info["removed"] == n
        for mod, entry in info["faiss"].items():  # the FAISS files hold every stored vector, removed ones too
            assert entry["ntotal"] == st.count(mod)


# ---------------------------------------------------------------------------------------------------------------
def test_reader_records_fingerprints_and_slots(tmp_path):
    csv = write_table(tmp_path / "t.csv", TEXTS[:3])
    items = list(open_source(csv))
    assert [it.fingerprint for it in items] == [content_fingerprint("text", t) for t in TEXTS[:3]]
    assert all(it.fingerprint.startswith("sha1:") for it in items)
    assert key_slot(items[1].key) == f"{csv.resolve()}#1" and key_slot("/some/image.png") == "/some/image.png"
    fake.make_images(tmp_path / "imgs", corrupt=0)
    (img,) = [it for it in open_source(tmp_path / "imgs") if it.metadata["relpath"] == "safe_0.png"]
    st = os.stat(img.content)
    assert img.fingerprint == f"stat:{st.st_size}:{st.st_mtime_ns}"
    assert Item.from_record(img.to_record()) == img  # survives the Ray record round trip
    assert content_fingerprint("image", str(tmp_path / "missing.png")) == ""


def test_edited_row_is_reencoded_and_its_old_text_is_gone(tmp_path):
    model = Counting()
    csv = write_table(tmp_path / "t.csv", TEXTS)
    root = tmp_path / "idx"
    r = build_index(csv, root, model, batch_size=4, progress=False)
    assert (r.added, r.updated, r.removed, r.unchanged) == (len(TEXTS), 0, 0, 0)

    model.reset()  # an unchanged rerun encodes nothing
    r = build_index(csv, root, model, batch_size=4, progress=False)
    assert (r.added, r.updated, r.removed, r.unchanged, r.skipped) == (0, 0, 0, len(TEXTS), len(TEXTS))
    assert model.texts == []

    edited = list(TEXTS)
    edited[4] = "a spaceship above the moon"
    write_table(csv, edited)
    model.reset()
    r = build_index(csv, root, model, batch_size=4, progress=False)
    assert (r.added, r.updated, r.removed, r.unchanged, r.errors) == (0, 1, 0, len(TEXTS) - 1, 0)
    assert model.texts == ["a spaceship above the moon"]  # only the edited row was encoded
    assert r.counts == {"total": len(TEXTS), "text": len(TEXTS), "image": 0}

    live = live_rows(root)
    assert sorted(row["content"] for row in live.values()) == sorted(edited)
    (new,) = [row for row in live.values() if row["content"] == edited[4]]
    assert new["metadata"] == {"row": 4, "tag": "t4"}
    top = returned(root, model, edited[4], k=1)[0]
    assert top.content == edited[4] and top.key == new["key"]
    for mode in MODES:  # the old wording is never returned, whatever the mode
        assert TEXTS[4] not in [x.content for x in returned(root, model, TEXTS[4], mode=mode)], mode
    assert {x.content for x in returned(root, model, TEXTS[4])} == set(edited)  # everything live still is
    with IndexStore(root) as st:
        assert st.count() == len(TEXTS) + 1 and st.removed_count() == 1 and st.live_count() == len(TEXTS)
        assert st.summary()["removed"] == 1
    check_invariants(root)
    assert_vectors_match(root, model)


@pytest.mark.parametrize("ann", ["none", "hnsw"])
def test_removed_rows_are_gone_from_every_mode_and_moved_rows_are_not_reencoded(tmp_path, ann):
    model = Counting()
    csv = write_table(tmp_path / "t.csv", TEXTS)
    root = tmp_path / "idx"
    build_index(csv, root, model, batch_size=5, ann=ann, progress=False)
    before = {row["content"]: row["id"] for row in live_rows(root).values()}

    # delete a safe row in the middle and an unsafe one, insert a row at the top: every other row moves
    kept = [t for t in TEXTS if t not in ("a cup of coffee", "blood on the floor")]
    now = ["a lighthouse in the fog"] + kept
    write_table(csv, now, tags=[f"t{TEXTS.index(t)}" if t in TEXTS else "new" for t in now])
    model.reset()
    r = build_index(csv, root, model, batch_size=5, progress=False)
    assert (r.added, r.updated, r.removed, r.unchanged) == (1, 0, 2, len(kept))
    assert model.texts == ["a lighthouse in the fog"]  # the moved rows were renamed in place, not re-encoded

    live = live_rows(root)
    assert sorted(row["content"] for row in live.values()) == sorted(now)
    for row in live.values():
        if row["content"] in before:  # same id, same vector, key and row number brought up to date
            assert row["id"] == before[row["content"]]
            assert row["metadata"]["row"] == now.index(row["content"])
            assert row["key"].startswith(f"{csv.resolve()}#{now.index(row['content'])}:")
    with IndexStore(root) as st:
        assert {r[0] for r in st.conn.execute("SELECT content FROM items WHERE removed IS NOT NULL")} == {
            "a cup of coffee", "blood on the floor"}

    gone = {"a cup of coffee", "blood on the floor"}
    safe = {t for t in now if not set(t.split()) & fake.UNSAFE_WORDS}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode in MODES:
            for modality in (None, "text"):
                for q in gone:
                    got = {x.content for x in returned(root, model, q, mode=mode, modality=modality)}
                    assert not got & gone, (mode, modality, q)
                    if ann == "none" and mode == "off":
                        assert got == set(now)  # exact: every live item, none of the removed ones
                    if ann == "none" and mode == "filter":
                        assert got == safe
    # the persisted FAISS file (which still holds the removed vectors) was current: used as is, not rebuilt
    assert not [w for w in caught if "faiss" in str(w.message).lower()], [str(w.message) for w in caught]
    # the in-memory FAISS rebuild (file missing) drops them too
    (root / "faiss.text.index").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode in MODES:
            assert not {x.content for x in returned(root, model, "a cup of coffee", mode=mode)} & gone
    r = build_index(csv, root, model, batch_size=5, progress=False)  # rewrites the FAISS file, changes nothing
    assert (r.added, r.updated, r.removed) == (0, 0, 0)
    check_invariants(root)
    assert_vectors_match(root, model)


def test_removed_and_changed_image_files(tmp_path):
    from PIL import Image

    model = Counting()
    folder = tmp_path / "imgs"
    paths = fake.make_images(folder, n_safe=4, n_red=2, corrupt=1)
    root = tmp_path / "idx"
    r = build_index(folder, root, model, batch_size=3, progress=False)
    assert (r.added, r.errors) == (6, 1)

    removed, changed, corrupt = paths[0], paths[2], paths[-1]
    query_copy = tmp_path / "query.png"
    shutil.copy(removed, query_copy)
    removed.unlink()
    corrupt.unlink()  # its error row goes with it
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    arr[..., 2] = 255
    Image.fromarray(arr).save(changed)
    st = os.stat(changed)
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    model.reset()
    r = build_index(folder, root, model, batch_size=3, progress=False)
    assert (r.added, r.updated, r.removed, r.unchanged, r.errors) == (0, 1, 1, 4, 0)
    assert model.images == 1  # only the changed file was decoded and encoded again

    live = live_rows(root)
    assert str(removed) not in live and str(changed) in live and len(live) == 5
    with IndexStore(root) as s:
        assert s.errors() == [] and s.removed_count() == 2  # the deleted file and the old version of the changed one
        (cid,) = [row["id"] for row in live.values() if row["key"] == str(changed)]
        np.testing.assert_allclose(s.embeddings.get([cid])[0], model.encode_image([changed]).numpy()[0],
                                   rtol=1e-5, atol=1e-6)
    assert not (root / "errors.jsonl").exists()
    for mode in MODES:
        got = [x.content for x in returned(root, model, "", image=query_copy, mode=mode, modality="image")]
        assert str(removed) not in got, mode
    top = returned(root, model, "", image=changed, modality="image", k=1)[0]
    assert top.content == str(changed)
    check_invariants(root)


def test_kill9_mid_sync_then_resume_is_exact(tmp_path):
    n = 40
    texts = [f"caption number {i} of a {'cat' if i % 3 else 'dog'}" + (" with blood" if i % 7 == 0 else "")
             for i in range(n)]
    csv = write_table(tmp_path / "t.csv", texts)
    root = tmp_path / "idx"
    build_index(csv, root, fake.FakeModel(), batch_size=8, progress=False)
    # every row edited, the last four deleted
    new_texts = [t.replace("caption", "photo") for t in texts[: n - 4]]
    write_table(csv, new_texts)
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('fake', {str(FAKE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "from hysac.index import build_index\n"
        f"build_index({str(csv)!r}, {str(root)!r}, m.FakeModel(sleep=0.1), batch_size=4, progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    db = root / "items.sqlite"

    def stored() -> tuple[int, int]:
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
            try:
                return con.execute("SELECT COUNT(*), SUM(removed IS NULL) FROM items").fetchone()
            finally:
                con.close()
        except sqlite3.Error:
            return (0, 0)

    deadline = time.time() + 90
    try:
        while stored()[0] < n + 8:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the sync did not commit 2 batches in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    total, live = stored()
    assert n + 8 <= total < n + len(new_texts)  # killed mid-sync
    assert live == n  # each committed new version replaced its old one in the same transaction

    model = Counting()
    r = build_index(csv, root, model, batch_size=4, progress=False)
    done_before = total - n
    assert len(model.texts) == len(new_texts) - done_before  # what the killed run committed is not redone
    assert (r.updated, r.unchanged, r.removed) == (len(new_texts) - done_before, done_before, 4)
    live_now = live_rows(root)
    assert sorted(row["content"] for row in live_now.values()) == sorted(new_texts)
    assert sorted(row["metadata"]["row"] for row in live_now.values()) == list(range(len(new_texts)))
    with IndexStore(root) as st:
        assert st.count() == n + len(new_texts) and st.removed_count() == n
    check_invariants(root)
    assert_vectors_match(root, model)
    for q in (texts[5], texts[-1]):
        assert not {x.content for x in returned(root, model, q, mode="off")} & set(texts)
    model.reset()
    again = build_index(csv, root, model, batch_size=4, progress=False)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, len(new_texts))
    assert model.texts == []


def test_a_crash_while_removing_loses_nothing(tmp_path, monkeypatch):
    from hysac.index.writer import IndexWriter

    model = fake.FakeModel()
    csv = write_table(tmp_path / "t.csv", TEXTS)
    root = tmp_path / "idx"
    build_index(csv, root, model, batch_size=4, progress=False)
    write_table(csv, TEXTS[:-3])
    real = IndexWriter._tombstone

    def boom(self, ids, now):
        real(self, ids, now)
        raise KeyboardInterrupt  # killed inside the removal transaction

    monkeypatch.setattr(IndexWriter, "_tombstone", boom)
    with pytest.raises(KeyboardInterrupt):
        build_index(csv, root, model, batch_size=4, progress=False)
    with IndexStore(root) as st:
        assert st.verify() == [] and st.live_count() == len(TEXTS) and st.removed_count() == 0  # rolled back
    monkeypatch.setattr(IndexWriter, "_tombstone", real)
    r = build_index(csv, root, model, batch_size=4, progress=False)
    assert (r.added, r.updated, r.removed, r.unchanged) == (0, 0, 3, len(TEXTS) - 3)
    check_invariants(root)


def test_sync_only_touches_its_own_source(tmp_path):
    model = Counting()
    folder = tmp_path / "imgs"
    fake.make_images(folder, corrupt=0)
    inner = write_table(folder / "captions.csv", TEXTS[:4])  # a table inside the image folder
    other = write_table(tmp_path / "other.csv", TEXTS[4:8])
    root = tmp_path / "idx"
    build_index(inner, root, model, progress=False)
    add_to_index(other, root, model, progress=False)
    add_to_index(folder, root, model, progress=False)
    write_table(other, TEXTS[4:6])
    model.reset()
    r = add_to_index(other, root, model, progress=False)
    assert (r.added, r.updated, r.removed, r.unchanged) == (0, 0, 2, 2)
    r = add_to_index(folder, root, model, progress=False)  # the folder's sync leaves the table inside it alone
    assert (r.added, r.removed, r.unchanged) == (0, 0, 6) and model.texts == [] and model.images == 0
    contents = {row["content"] for row in live_rows(root).values()}
    assert set(TEXTS[:6]) <= contents and not contents & set(TEXTS[6:8])
    check_invariants(root)


def _downgrade_to_format_1(root: Path) -> None:
    """Rewrite an index as an older writer left it: ``key UNIQUE``, no fingerprint / removed columns."""
    conn = sqlite3.connect(root / "items.sqlite", isolation_level=None)
    conn.executescript("""
        BEGIN;
        CREATE TABLE items_old (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, modality TEXT NOT NULL,
            content TEXT NOT NULL, score REAL NOT NULL, unsafe INTEGER NOT NULL, categories TEXT,
            metadata TEXT NOT NULL, source INTEGER);
        INSERT INTO items_old SELECT id, key, modality, content, score, unsafe, categories, metadata, source
            FROM items;
        DROP TABLE items;
        ALTER TABLE items_old RENAME TO items;
        CREATE INDEX items_by_modality ON items(modality, id);
        COMMIT;
    """)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    info = json.loads((root / "index.json").read_text())
    info["format_version"] = 1
    info.pop("removed", None)
    (root / "index.json").write_text(json.dumps(info))


def test_an_index_of_an_older_writer_opens_searches_and_syncs(tmp_path):
    model = Counting()
    folder = tmp_path / "imgs"
    paths = fake.make_images(folder, corrupt=0)
    past = time.time_ns() - 86_400 * 10**9
    for p in paths:  # files last modified well before the build
        os.utime(p, ns=(past, past))
    csv = write_table(tmp_path / "t.csv", TEXTS)
    root = tmp_path / "idx"
    build_index(csv, root, model, progress=False)
    add_to_index(folder, root, model, progress=False)
    reference = [x.id for x in returned(root, model, "a dog in the park")]
    _downgrade_to_format_1(root)

    with IndexStore(root) as st:  # read as is, without changing it
        assert not st.tracks_removal and st.counts()["total"] == len(TEXTS) + 6 and st.removed_count() == 0
        assert st.verify() == []
    assert [x.id for x in returned(root, model, "a dog in the park")] == reference

    edited = list(TEXTS)
    edited[1] = "a horse in the field"
    write_table(csv, edited)
    model.reset()
    r = build_index(csv, root, model, progress=False)  # migrates the table, then syncs
    assert (r.added, r.updated, r.removed, r.unchanged) == (0, 1, 0, len(TEXTS) - 1)
    assert model.texts == ["a horse in the field"]
    assert json.loads((root / "index.json").read_text())["format_version"] == 2
    with IndexStore(root) as st:
        assert st.tracks_removal and st.removed_count() == 1
        # the kept text rows got their fingerprints; the images are not synced yet
        nulls = st.conn.execute("SELECT modality, COUNT(*) FROM items WHERE fingerprint IS NULL AND removed IS NULL "
                                "GROUP BY modality")
        assert dict(nulls.fetchall()) == {"image": 6}

    touched = paths[1]  # modified after the index was built: re-encoded; the others are kept
    os.utime(touched, None)
    model.reset()
    r = add_to_index(folder, root, model, progress=False)
    assert (r.added, r.updated, r.removed, r.unchanged) == (0, 1, 0, 5) and model.images == 1
    with IndexStore(root) as st:
        assert st.conn.execute("SELECT COUNT(*) FROM items WHERE fingerprint IS NULL AND removed IS NULL"
                               ).fetchone()[0] == 0
    assert "a dog in the park" not in {x.content for x in returned(root, model, "a dog in the park")}
    check_invariants(root)


def test_ray_actor_keeps_fingerprints(tmp_path):
    """The Ray mapper actor rebuilds items from Arrow-style columns: their fingerprints must survive, or every
    item indexed with ``--engine ray`` would be re-encoded by the next sync."""
    from hysac.index.distributor import _MapperActor, read_part

    items = list(open_source(write_table(tmp_path / "t.csv", TEXTS[:3])))
    cols = {k: np.array([it.to_record()[k] for it in items]) for k in items[0].to_record()}
    actor = _MapperActor(fake.FakeModel, str(tmp_path), 8, 8)
    out = actor(cols)
    enc = read_part(tmp_path, str(out["part"][0]))
    assert [it.fingerprint for it in enc.items] == [it.fingerprint for it in items]


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def cli(monkeypatch):
    from typer.testing import CliRunner

    from hysac.index.cli import _standalone

    mod = types.ModuleType("hysac.model")
    mod.load_model = lambda name_or_path=None, **kw: fake.FakeModel(model_id=str(name_or_path or "fake-default"))
    monkeypatch.setitem(sys.modules, "hysac.model", mod)
    runner, app = CliRunner(), _standalone()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_cli_build_reports_the_sync_and_info_shows_removed(tmp_path, cli):
    csv = write_table(tmp_path / "t.csv", TEXTS[:5])
    out = tmp_path / "idx"
    r = cli("index", "build", csv, "--out", out, "--model", "fake-a", "--no-progress")
    assert r.exit_code == 0, r.output
    assert "+5 items added, 0 updated, 0 removed, 0 unchanged" in r.stdout
    write_table(csv, ["a cat on a windowsill"] + TEXTS[1:4])  # row 0 edited, row 4 deleted
    r = cli("index", "build", csv, "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output
    assert "+0 items added, 1 updated, 1 removed, 3 unchanged" in r.stdout and "index holds 4 items" in r.stdout
    r = cli("index", "build", csv, "--out", out, "--no-progress", "--json")
    rep = json.loads(r.stdout)
    assert (rep["added"], rep["updated"], rep["removed"], rep["unchanged"]) == (0, 0, 0, 4)

    r = cli("index", "info", out, "--json")
    info = json.loads(r.stdout)
    assert info["counts"] == {"total": 4, "text": 4, "image": 0} and info["removed"] == 2
    r = cli("index", "info", out)
    assert r.exit_code == 0 and "4 live" in r.stdout and "2 removed" in r.stdout
    r = cli("index", "verify", out, "--json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)
    assert v["ok"] and (v["items"], v["live"], v["removed"]) == (6, 4, 2)
    r = cli("search", "--index", out, "--text", TEXTS[0], "--json", "-k", 10)
    assert r.exit_code == 0, r.output
    got = [x["text"] for x in json.loads(r.stdout)["results"]]
    assert sorted(got) == sorted(["a cat on a windowsill"] + TEXTS[1:4])
