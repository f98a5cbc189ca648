"""Stage 3 — commit encoded batches to the index directory, atomically per batch.

:class:`IndexWriter` holds an exclusive ``flock`` on ``DIR/.lock`` (released by the kernel when the process dies,
so a ``kill -9`` never leaves a stale lock), removes what a killed run left behind (unreferenced shard files,
temporary files, staging parts) and then

* :meth:`IndexWriter.commit` — for one :class:`~hysac.index.mapper.EncodedBatch`: drop keys already committed,
  write ``embeddings/shard-<seq>.npy`` (temp name → fsync → rename), then in **one** SQLite transaction tombstone
  the old versions the batch replaces (during a sync), insert the item rows (ids continuing ``0..N-1``), the shard
  row and the batch's errors (and clear the errors of keys that now succeeded). A kill before the COMMIT leaves an
  orphan shard file and no rows; a rerun skips every committed key, so the final item count is the same and no key
  is live twice (a UNIQUE index on the live keys).
* :meth:`IndexWriter.begin_sync` / :meth:`IndexWriter.filter_new` / :meth:`IndexWriter.finish_sync` — the run
  over one source keeps the index in line with it (:mod:`~hysac.index.sync`: unchanged items kept, changed ones
  re-encoded, moved table rows renamed in place, vanished ones removed).
* :meth:`IndexWriter.finalize` — compact small shards, bring the FAISS files up to date (incrementally when the
  existing file is a prefix of the items), rewrite ``errors.jsonl`` and ``index.json``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .ann import (
    AnnConfig,
    faiss_index_kind,
    hnsw_m,
    in_build_state,
    index_ids,
    new_faiss_index,
    read_faiss_index,
    storage_vectors,
    write_faiss_index,
)
from .mapper import EncodedBatch, ItemError
from .reader import Item, Source
from .sync import DONE, KEEP, RENAME, SyncPlan, pair_signature, plan_sync
from .store import (
    EMB_DIR,
    ERRORS_FILE,
    FORMAT,
    FORMAT_VERSION,
    INDEX_JSON,
    LOCK_FILE,
    MODALITIES,
    STAGING_DIR,
    IndexStore,
    faiss_file,
    file_sha256,
    rows_fingerprint,
    utcnow,
)

__all__ = ["IndexWriter", "COMPACT_ROWS", "write_json_atomic", "save_npy_atomic"]

#: finalize() merges consecutive small shards into shards of at most this many rows
COMPACT_ROWS = 65536


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr, dtype=np.float32))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        pass


def _hysac_version() -> str:
    try:
        from importlib.metadata import version

        return version("hysac")
    except Exception:
        return "unknown"


class IndexWriter:
    """The write side of an index directory. Use :meth:`open` (existing) or :meth:`create_or_open`."""

    def __init__(self, store: IndexStore, lock_fd: int):
        self.store = store
        self.root = store.root
        self._lock_fd = lock_fd
        self.conn = store.conn
        #: the sync of the source being run (:meth:`begin_sync`), None outside a run
        self.sync: SyncPlan | None = None
        self._cleanup()
        if int(store.info.get("format_version", 0)) < FORMAT_VERSION:  # the database was just migrated
            store.info["format_version"] = FORMAT_VERSION
            write_json_atomic(self.root / INDEX_JSON, store.info)

    # -- opening ----------------------------------------------------------------------------------------------
    @staticmethod
    def _lock(root: Path) -> int:
        fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"index {root} is being written by another process") from None
        return fd

    @classmethod
    def open(cls, root: str | Path, model: Any | None = None) -> "IndexWriter":
        """Open an existing index for appending; with ``model``, refuse another model (ModelMismatchError)."""
        root = Path(root)
        IndexStore.read_info(root)  # InputError if missing
        fd = cls._lock(root)
        try:
            store = IndexStore(root, writable=True)
            if model is not None:
                store.check_model(model)
        except BaseException:
            os.close(fd)
            raise
        return cls(store, fd)

    @classmethod
    def create_or_open(
        cls,
        root: str | Path,
        model: Any,
        *,
        ann: AnnConfig | None = None,
        engine: str = "local",
        model_source: str | None = None,
    ) -> "IndexWriter":
        """Create ``root`` as a new index for ``model`` or reopen (resume) an existing one built by it."""
        root = Path(root)
        if IndexStore.exists(root):
            w = cls.open(root, model)
            if ann is not None and ann.to_dict() != w.store.ann.to_dict():
                w.store.info["ann"] = ann.to_dict()
            w.store.info["engine"] = engine
            w._write_info()
            return w
        if root.exists() and not root.is_dir():
            raise InputError(f"index output {root} exists and is not a folder")
        if root.is_dir() and any(p.name not in (LOCK_FILE,) for p in root.iterdir()):
            raise InputError(f"index output {root} exists, is not empty and is not a hysac index")
        root.mkdir(parents=True, exist_ok=True)
        fd = cls._lock(root)
        try:
            now = utcnow()
            info = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "model_id": str(model.model_id),
                "model_source": model_source if model_source is not None else (getattr(model, "source", None)
                                                                                 or str(model.model_id)),
                "embed_dim": int(model.embed_dim),
                "curvature": float(model.curvature),
                "vector_layout": "stored [x, x_t], query [q, -q_t]: inner product = Lorentz inner product",
                "ann": (ann or AnnConfig()).to_dict(),
                "engine": engine,
                "counts": {"total": 0, "text": 0, "image": 0},
                "errors": 0,
                "faiss": {},
                "created": now,
                "updated": now,
                "hysac_version": _hysac_version(),
            }
            write_json_atomic(root / INDEX_JSON, info)
            (root / EMB_DIR).mkdir(exist_ok=True)
            store = IndexStore(root, writable=True)
        except BaseException:
            os.close(fd)
            raise
        return cls(store, fd)

    # -- crash leftovers ------------------------------------------------------------------------------------------
    def _cleanup(self) -> None:
        emb = self.root / EMB_DIR
        emb.mkdir(exist_ok=True)
        referenced = {r[0] for r in self.store.shard_rows()}
        for p in emb.iterdir():
            if p.name not in referenced:
                p.unlink(missing_ok=True)
        for p in self.root.glob("*.tmp"):
            p.unlink(missing_ok=True)
        staging = self.root / STAGING_DIR
        if staging.is_dir():
            for p in staging.rglob("*"):
                if p.is_file():
                    p.unlink(missing_ok=True)
            for p in sorted(staging.rglob("*"), reverse=True):
                if p.is_dir():
                    p.rmdir()

    # -- sources ------------------------------------------------------------------------------------------------
    def begin_source(self, source: Source, engine: str = "local") -> int:
        d = source.describe()
        # the resolved path: the service serves image files only from under the recorded source folders
        path = os.path.realpath(d["path"])
        cur = self.conn.execute(
            "INSERT INTO sources(path, kind, modality, col, engine, started) VALUES (?,?,?,?,?,?)",
            (path, d["kind"], d["modality"], d["column"], engine, utcnow()),
        )
        return int(cur.lastrowid)

    def end_source(self, source_id: int) -> None:
        self.conn.execute("UPDATE sources SET finished=? WHERE id=?", (utcnow(), source_id))

    def filter_new(self, items: list[Item]) -> list[Item]:
        """The items to encode: without a sync, those whose key is not live yet (first occurrence only within
        ``items``); during a sync (:meth:`begin_sync`), those the plan says to encode — new or changed — after
        renaming in place the moved rows of ``items`` (one transaction)."""
        plan = self.sync
        if plan is None:
            done = self.store.existing_keys(it.key for it in items)
            seen: set[str] = set()
            out = []
            for it in items:
                if it.key in done or it.key in seen:
                    continue
                seen.add(it.key)
                out.append(it)
            return out
        out, renames, unplanned = [], [], []
        for it in items:
            d = plan.decisions.get(it.key)
            if d is None:  # appeared in the source after the plan was made
                unplanned.append(it)
                continue
            if d in (KEEP, DONE):
                continue
            plan.decisions[it.key] = DONE
            if d == RENAME:
                oid, sig = plan.renames.pop(it.key)
                if pair_signature(it.modality, it.content, it.fingerprint) == sig:
                    renames.append((oid, it))
                    continue
            out.append(it)
        if unplanned:
            live = self.store.existing_keys(it.key for it in unplanned)
            for it in unplanned:
                if it.key not in live and plan.decisions.get(it.key) != DONE:
                    out.append(it)
                plan.decisions[it.key] = DONE
        if renames:
            out += self._rename(renames)
        return out

    # -- sync ---------------------------------------------------------------------------------------------------
    def begin_sync(self, source: Source, source_id: int | None) -> SyncPlan:
        """Plan the sync of ``source`` (read once, nothing encoded); :meth:`filter_new` and :meth:`commit` then
        follow the plan, and :meth:`finish_sync` removes what left the source."""
        self.sync = plan_sync(self.store, source, source_id)
        self.sync.unchanged = sum(1 for d in self.sync.decisions.values() if d == KEEP)
        return self.sync

    def _rename(self, renames: list[tuple[int, Item]]) -> list[Item]:
        """Give live items the key/metadata of a moved source row (same content: nothing re-encoded), in one
        transaction. Returns the items whose target was no longer live (to encode instead)."""
        plan = self.sync
        done: list[int] = []
        missed: list[Item] = []
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            for oid, it in renames:
                cur = self.conn.execute(
                    "UPDATE items SET key=?, content=?, metadata=?, fingerprint=? WHERE id=? AND removed IS NULL",
                    (it.key, it.content, json.dumps(it.metadata, ensure_ascii=False, default=str),
                     it.fingerprint or None, oid),
                )
                if cur.rowcount == 1:
                    done.append(oid)
                else:
                    missed.append(it)
            self.conn.executemany("DELETE FROM errors WHERE key=?", [(it.key,) for _, it in renames])
            self.conn.execute("COMMIT")
        except BaseException:
            _rollback(self.conn)
            raise
        if plan is not None:
            plan.renamed_ids.update(done)
            plan.unchanged += len(done)
        return missed

    def _tombstone(self, ids: list[int], now: str) -> int:
        """Mark live items removed (inside the caller's transaction); returns how many were live."""
        n = 0
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            cur = self.conn.execute("UPDATE items SET removed=? WHERE removed IS NULL AND id IN (%s)"
                                    % ",".join("?" * len(part)), (now, *part))
            n += max(cur.rowcount, 0)
        return n

    def finish_sync(self) -> SyncPlan | None:
        """End the sync: in one transaction, remove the live items whose key left the source (unless renamed),
        record the fingerprints of the unchanged older items and drop the source's error rows of keys that left
        it. Returns the finished plan (its counters: unchanged, updated, removed)."""
        plan = self.sync
        if plan is None:
            return None
        gone = sorted(plan.gone - plan.renamed_ids)
        now = utcnow()
        stale: list[str] = []
        if plan.scope:
            q = "SELECT key FROM errors WHERE source IN (%s)" % ",".join("?" * len(plan.scope))
            stale = [r[0] for r in self.conn.execute(q, plan.scope) if r[0] not in plan.decisions]
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            removed = self._tombstone(gone, now)
            self.conn.executemany("UPDATE items SET fingerprint=? WHERE id=? AND fingerprint IS NULL",
                                  [(fp, oid) for oid, fp in plan.adopt.items()])
            self.conn.executemany("DELETE FROM errors WHERE key=?", [(k,) for k in stale])
            self.conn.execute("COMMIT")
        except BaseException:
            _rollback(self.conn)
            raise
        plan.removed += removed
        self.sync = None
        return plan

    # -- commit -------------------------------------------------------------------------------------------------
    def commit(self, batch: EncodedBatch, source_id: int | None = None) -> int:
        """Commit one encoded batch atomically; returns the number of new items."""
        keep: list[int] = []
        plan = self.sync
        #: key → live item this batch replaces (tombstoned in the same transaction), during a sync
        replacing: dict[str, int] = {}
        if plan is not None and plan.replace:
            for key in [it.key for it in batch.items] + [e.key for e in batch.errors]:
                if key in plan.replace:
                    replacing[key] = plan.replace[key]
        if batch.items:
            done = self.store.existing_keys(it.key for it in batch.items) - set(replacing)
            seen: set[str] = set()
            keep = []
            for i, it in enumerate(batch.items):
                if it.key not in done and it.key not in seen:
                    keep.append(i)
                    seen.add(it.key)
        items = [batch.items[i] for i in keep]
        emb = batch.embeddings[keep] if len(keep) != len(batch.items) else batch.embeddings
        if emb.shape[1:] != (self.store.embed_dim,):
            raise RuntimeError(f"embeddings of width {emb.shape[1:]} for an index of dim {self.store.embed_dim}")
        cats = batch.category_dicts()
        now = utcnow()
        shard_name = None
        if items:
            seq = int(self.conn.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM shards").fetchone()[0])
            shard_name = f"shard-{seq:08d}.npy"
            save_npy_atomic(self.root / EMB_DIR / shard_name, emb)
            shard_sums = (file_sha256(self.root / EMB_DIR / shard_name), rows_fingerprint(emb))
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            if replacing:
                self._tombstone(sorted(set(replacing.values())), now)
            if items:
                start = int(self.conn.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM items").fetchone()[0])
                rows = []
                for j, i in enumerate(keep):
                    it = batch.items[i]
                    c = cats[i]
                    rows.append((
                        start + j, it.key, it.modality, it.content, float(batch.scores[i]), int(bool(batch.unsafe[i])),
                        json.dumps(c) if c is not None else None,
                        json.dumps(it.metadata, ensure_ascii=False, default=str), source_id,
                        it.fingerprint or None,
                    ))
                self.conn.executemany(
                    "INSERT INTO items(id, key, modality, content, score, unsafe, categories, metadata, source, "
                    "fingerprint) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    rows,
                )
                self.conn.execute("INSERT INTO shards(seq, file, start, count, sha256, fingerprint) "
                                  "VALUES (?,?,?,?,?,?)", (seq, shard_name, start, len(items), *shard_sums))
                self.conn.executemany("DELETE FROM errors WHERE key=?", [(it.key,) for it in items])
            if batch.errors:
                self.conn.executemany(
                    "INSERT OR REPLACE INTO errors(key, modality, content, stage, error, source, time) "
                    "VALUES (?,?,?,?,?,?,?)",
                    [(e.key, e.modality, e.content, e.stage, e.error, source_id, now) for e in batch.errors],
                )
            self.conn.execute("COMMIT")
        except BaseException:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if shard_name is not None:
                (self.root / EMB_DIR / shard_name).unlink(missing_ok=True)
            raise
        if replacing and plan is not None:
            committed = {it.key for it in items}
            for key in replacing:
                plan.replace.pop(key, None)
                if key in committed:
                    plan.updated += 1
                else:  # the new version failed: the old one is gone all the same (the source no longer has it)
                    plan.removed += 1
        if batch.errors:
            self._append_errors(batch.errors, now)
        return len(items)

    def _append_errors(self, errors: list[ItemError], now: str) -> None:
        with open(self.root / ERRORS_FILE, "a", encoding="utf-8") as f:
            for e in errors:
                f.write(json.dumps({**e.to_dict(), "time": now}, ensure_ascii=False) + "\n")

    # -- finalize -----------------------------------------------------------------------------------------------
    def compact(self, max_rows: int = COMPACT_ROWS) -> int:
        """Merge runs of consecutive small shards (≤ ``max_rows`` rows together). Returns shards removed."""
        rows = self.store.shard_rows()
        groups: list[list[tuple[str, int, int]]] = []
        cur: list[tuple[str, int, int]] = []
        total = 0
        for r in rows:
            contiguous = not cur or cur[-1][1] + cur[-1][2] == r[1]
            if cur and (total + r[2] > max_rows or not contiguous):
                groups.append(cur)
                cur, total = [], 0
            cur.append(r)
            total += r[2]
        if cur:
            groups.append(cur)
        removed = 0
        emb = self.store.embeddings
        for g in groups:
            if len(g) < 2:
                continue
            start = g[0][1]
            count = sum(r[2] for r in g)
            data = emb.range(start, start + count)
            seq = int(self.conn.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM shards").fetchone()[0])
            name = f"shard-{seq:08d}.npy"
            save_npy_atomic(self.root / EMB_DIR / name, data)
            sums = (file_sha256(self.root / EMB_DIR / name), rows_fingerprint(data))
            del data
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                self.conn.executemany("DELETE FROM shards WHERE file=?", [(r[0],) for r in g])
                self.conn.execute("INSERT INTO shards(seq, file, start, count, sha256, fingerprint) "
                                  "VALUES (?,?,?,?,?,?)", (seq, name, start, count, *sums))
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                (self.root / EMB_DIR / name).unlink(missing_ok=True)
                raise
            self.store._emb = None
            emb = self.store.embeddings
            for r in g:
                (self.root / EMB_DIR / r[0]).unlink(missing_ok=True)
            removed += len(g) - 1
        return removed

    def sync_faiss(self, progress: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Bring ``faiss.<modality>.index`` up to date with the items; returns the ``faiss`` entry of index.json."""
        ann = self.store.ann
        dim = self.store.embed_dim + 1
        curv = self.store.curvature
        out: dict[str, Any] = {}
        for mod in MODALITIES:
            path = self.root / faiss_file(mod)
            ids = self.store.ids_of(mod)
            if ids.size == 0:
                path.unlink(missing_ok=True)
                continue
            index = None
            have = np.zeros(0, dtype=np.int64)
            recorded = ((self.store.info.get("faiss") or {}).get(mod) or {}).get("sha256")
            if path.is_file() and recorded and file_sha256(path) != recorded:
                if log is not None:
                    log(f"{path.name} does not match its recorded checksum; rebuilding it from the shards")
                path.unlink()
            if path.is_file():
                try:
                    index = read_faiss_index(path)
                    have = index_ids(index)
                    ok = (faiss_index_kind(index) == ann.kind and index.d == dim and have.size <= ids.size
                          and in_build_state(index) and np.array_equal(have, ids[: have.size]))
                    if ok and ann.kind == "hnsw":
                        ok = hnsw_m(index) == int(ann.M)
                    if not ok:
                        index = None
                except Exception:
                    index = None
            if index is None:
                index = new_faiss_index(dim, ann)
                have = np.zeros(0, dtype=np.int64)
            todo = ids[have.size:]
            if todo.size:
                if log is not None:
                    log(f"adding {todo.size} {mod} vectors to the {ann.kind} index")
                bar = None
                if progress:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=int(todo.size), desc=f"faiss {mod}", unit="vec", file=sys.stderr)
                for part, vecs in self.store.embeddings.iter_chunks(todo, chunk=16384):
                    index.add_with_ids(storage_vectors(vecs, curv), part)
                    if bar is not None:
                        bar.update(len(part))
                if bar is not None:
                    bar.close()
                write_faiss_index(index, path)
            out[mod] = {"file": path.name, "kind": ann.kind, "ntotal": int(index.ntotal),
                        "sha256": file_sha256(path)}
        return out

    def write_errors_file(self) -> None:
        errors = self.store.errors()
        path = self.root / ERRORS_FILE
        if not errors:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for e in errors:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
        os.replace(tmp, path)

    def _write_info(self, faiss_entry: dict | None = None) -> dict[str, Any]:
        info = self.store.info
        info["counts"] = self.store.counts()
        info["removed"] = self.store.removed_count()
        info["errors"] = self.store.error_count()
        info["sources"] = self.store.sources()
        if faiss_entry is not None:
            info["faiss"] = faiss_entry
        info["updated"] = utcnow()
        write_json_atomic(self.root / INDEX_JSON, info)
        return info

    def finalize(self, *, progress: bool = False, compact: bool = True) -> dict[str, Any]:
        """Compact shards, sync FAISS, rewrite errors.jsonl and index.json. Returns the new index.json."""
        if compact:
            self.compact()
        faiss_entry = self.sync_faiss(progress=progress)
        self.write_errors_file()
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        return self._write_info(faiss_entry)

    # -- closing ------------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.store.close()
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None  # type: ignore[assignment]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
