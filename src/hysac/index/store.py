"""The on-disk index directory: layout, schema and the read side.

Layout of an index ``DIR``::

    DIR/
      index.json            summary: format + version, model_id, model_source, embed_dim, curvature, ann config,
                            engine, counts per modality, error count, sources, FAISS files, created/updated (UTC)
      items.sqlite          the source of truth (SQLite, WAL): tables ``items`` (id = FAISS id, key — unique among
                            the live items —, modality, text/path, score, unsafe, categories JSON, metadata JSON,
                            source, fingerprint, removed), ``shards`` (embedding file → id range), ``errors``
                            (items that failed), ``sources``
      embeddings/shard-00000000.npy   float32 (n, D) space components of items ``start .. start+n-1``
      faiss.text.index      IndexIDMap(IndexFlatIP | IndexHNSWFlat) over ``[x, x_t]`` of the text items
      faiss.image.index     the same for the image items
      errors.jsonl          one JSON object per item that could not be indexed (key, content, stage, error)
      staging/              Ray parts waiting to be merged (empty after a finished build)
      .lock                 flock'ed by the one process allowed to write

Atomicity: an embedding shard is written to a temporary name, fsync'ed and renamed **before** the SQLite
transaction that inserts its rows and its ``shards`` row commits. A process killed at any point leaves either a
committed batch or an unreferenced shard file (removed on the next write open), never rows without vectors.
Item ids are assigned ``0..N-1`` in commit order and are the FAISS ids. The FAISS files are derived data: they
are (re)synchronised at the end of a build/add and rebuilt in memory at search time if missing or stale.

Removal (format 2): a rebuild over a source whose rows/files were edited or deleted (:mod:`~hysac.index.sync`)
never deletes or renumbers a row. It **tombstones** the old version — ``items.removed`` is set to the UTC time of
its removal — and appends the new version under a new id. A removed item keeps its id, row and vector (so the ids
stay ``0..N-1``, the shards and their checksums stay valid and the FAISS files stay append-only), but it is no
longer *live*: search drops it from every candidate list, :meth:`IndexStore.counts` counts live items only and
``index.json`` records the removed ones under ``"removed"``. ``items.fingerprint`` is the item's content
fingerprint (:func:`~hysac.index.reader.content_fingerprint`), what a rebuild compares to decide whether to
re-embed it. A database written by an older writer (format 1: ``key UNIQUE``, no ``fingerprint``/``removed``) is
read as is (every item live); the first writer that opens it migrates the table in one transaction.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..errors import InputError, ModelMismatchError
from ..policy import MODALITIES
from .ann import AnnConfig

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "INDEX_JSON",
    "DB_FILE",
    "EMB_DIR",
    "ERRORS_FILE",
    "STAGING_DIR",
    "LOCK_FILE",
    "MODALITIES",
    "faiss_file",
    "utcnow",
    "IndexStore",
    "EmbeddingReader",
    "file_sha256",
    "rows_fingerprint",
]

FORMAT = "hysac-index"
#: 2: items.fingerprint / items.removed (tombstones), key unique among live items only (format 1 is read as is)
FORMAT_VERSION = 2
INDEX_JSON = "index.json"
DB_FILE = "items.sqlite"
EMB_DIR = "embeddings"
ERRORS_FILE = "errors.jsonl"
STAGING_DIR = "staging"
LOCK_FILE = ".lock"

ITEMS_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id          INTEGER PRIMARY KEY,
    key         TEXT    NOT NULL,
    modality    TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    score       REAL    NOT NULL,
    unsafe      INTEGER NOT NULL,
    categories  TEXT,
    metadata    TEXT    NOT NULL,
    source      INTEGER,
    fingerprint TEXT,
    removed     TEXT
);
"""

#: the columns every items table has (format 1 and 2)
ITEM_COLUMNS = ("id", "key", "modality", "content", "score", "unsafe", "categories", "metadata", "source")

ITEMS_INDEXES = """
CREATE INDEX IF NOT EXISTS items_by_modality ON items(modality, id);
CREATE UNIQUE INDEX IF NOT EXISTS items_live_key ON items(key) WHERE removed IS NULL;
"""

SCHEMA = ITEMS_TABLE.format(name="items") + """
CREATE TABLE IF NOT EXISTS shards (
    seq    INTEGER PRIMARY KEY,
    file   TEXT    NOT NULL UNIQUE,
    start  INTEGER NOT NULL,
    count  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS errors (
    key      TEXT PRIMARY KEY,
    modality TEXT,
    content  TEXT,
    stage    TEXT,
    error    TEXT,
    source   INTEGER,
    time     TEXT
);
CREATE TABLE IF NOT EXISTS sources (
    id       INTEGER PRIMARY KEY,
    path     TEXT NOT NULL,
    kind     TEXT,
    modality TEXT,
    col      TEXT,
    engine   TEXT,
    started  TEXT,
    finished TEXT
);
"""


def faiss_file(modality: str) -> str:
    return f"faiss.{modality}.index"


def utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


#: per-shard integrity columns added to ``shards`` by format 1.1 writers (older indexes lack them: unverified)
SHARD_CHECKS = ("sha256", "fingerprint")


def connect(path: Path) -> sqlite3.Connection:
    """The writer's connection (creates the schema, adds the integrity columns to an older ``shards`` table and
    migrates an older ``items`` table to format 2)."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    have = {r[1] for r in conn.execute("PRAGMA table_info(shards)")}
    for col in SHARD_CHECKS:
        if col not in have:
            conn.execute(f"ALTER TABLE shards ADD COLUMN {col} TEXT")
    if "removed" not in {r[1] for r in conn.execute("PRAGMA table_info(items)")}:
        migrate_items(conn)
    conn.executescript(ITEMS_INDEXES)
    return conn


def migrate_items(conn: sqlite3.Connection) -> None:
    """Rebuild a format-1 ``items`` table (``key UNIQUE``, no fingerprint/removed columns) as format 2, in one
    transaction: a crash leaves either the old table or the new one, never a mix. Ids and rows are copied as is."""
    cols = ", ".join(ITEM_COLUMNS)
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DROP TABLE IF EXISTS items_v2")
        conn.execute(ITEMS_TABLE.format(name="items_v2"))
        conn.execute(f"INSERT INTO items_v2({cols}) SELECT {cols} FROM items ORDER BY id")
        conn.execute("DROP TABLE items")
        conn.execute("ALTER TABLE items_v2 RENAME TO items")
        for stmt in ITEMS_INDEXES.strip().splitlines():  # (executescript would commit: one statement at a time)
            conn.execute(stmt)
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A reader's connection: never creates or changes the database (a missing ``items.sqlite`` is refused, not
    recreated empty) and works on an index the reader may not write (another user's, a read-only mount)."""
    if not path.is_file():
        raise InputError(f"index database {path} is missing: the index is damaged (rebuild it with "
                         "`hysac index build`)")
    last: Exception | None = None
    for query in ("mode=ro", "mode=ro&immutable=1"):  # immutable: no -wal/-shm can be created beside it
        try:
            conn = sqlite3.connect(f"file:{path}?{query}", uri=True, timeout=30.0, isolation_level=None,
                                   check_same_thread=False)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            break
        except sqlite3.DatabaseError as e:
            last = e
    else:
        raise InputError(f"index database {path} cannot be read: {' '.join(str(last).split())}") from None
    missing = {"items", "shards", "errors", "sources"} - tables
    if missing:
        conn.close()
        raise InputError(f"index database {path} is damaged: no table(s) {', '.join(sorted(missing))}")
    return conn


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def rows_fingerprint(arr: np.ndarray) -> str:
    """A cheap content check of an embedding shard: sha256 of its shape, first and last rows (catches swapped,
    truncated or replaced shards on open without reading them whole; :func:`file_sha256` checks every byte)."""
    import hashlib

    h = hashlib.sha256(repr(tuple(arr.shape)).encode())
    if len(arr):
        h.update(np.ascontiguousarray(arr[0], dtype=np.float32).tobytes())
        h.update(np.ascontiguousarray(arr[-1], dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


class EmbeddingReader:
    """Random access to the embedding shards by item id (memory-mapped ``.npy`` files)."""

    def __init__(self, root: Path, shards: Sequence[tuple], dim: int):
        self.root = root
        self.dim = dim
        rows = sorted(shards, key=lambda r: r[1])
        self.files = [r[0] for r in rows]
        self.starts = [int(r[1]) for r in rows]
        self.counts = [int(r[2]) for r in rows]
        self.fingerprints = [r[4] if len(r) > 4 else None for r in rows]
        self.total = sum(self.counts)
        self._cache: dict[int, np.ndarray] = {}

    def _shard(self, i: int) -> np.ndarray:
        arr = self._cache.get(i)
        if arr is None:
            path = self.root / EMB_DIR / self.files[i]
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError, EOFError) as e:
                raise InputError(f"index embedding shard {path} is missing or unreadable: "
                                 f"{' '.join(str(e).split()) or type(e).__name__}") from None
            if arr.ndim != 2 or arr.shape != (self.counts[i], self.dim) or arr.dtype != np.float32:
                raise InputError(f"index embedding shard {path} has shape {arr.shape} ({arr.dtype}), expected "
                                 f"({self.counts[i]}, {self.dim}) float32: the index is damaged")
            if self.fingerprints[i] and rows_fingerprint(arr) != self.fingerprints[i]:
                raise InputError(f"index embedding shard {path} does not hold the vectors recorded for items "
                                 f"{self.starts[i]}..{self.starts[i] + self.counts[i] - 1} (replaced, swapped or "
                                 "edited): the index is damaged; `hysac index verify` lists every damaged file")
            self._cache[i] = arr
        return arr

    def get(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Embeddings of ``ids`` (any shape of int array) → ``ids.shape + (D,)`` float32."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.reshape(-1)
        out = np.empty((flat.size, self.dim), dtype=np.float32)
        if flat.size == 0:
            return out.reshape(ids.shape + (self.dim,))
        starts = np.asarray(self.starts, dtype=np.int64)
        which = np.searchsorted(starts, flat, side="right") - 1
        if (which < 0).any() or (flat >= self.total).any():
            raise IndexError("item id out of range")
        for s in np.unique(which):
            sel = which == s
            out[sel] = self._shard(int(s))[flat[sel] - starts[s]]
            if not np.isfinite(out[sel]).all():
                bad = flat[sel][~np.isfinite(out[sel]).all(axis=1)]
                raise InputError(f"index embedding shard {self.root / EMB_DIR / self.files[int(s)]} holds "
                                 f"non-finite vectors (items {', '.join(map(str, bad[:5].tolist()))}"
                                 f"{'…' if bad.size > 5 else ''}): the index is damaged")
        return out.reshape(ids.shape + (self.dim,))

    def range(self, start: int, stop: int) -> np.ndarray:
        """Embeddings of ids ``start .. stop-1`` (contiguous)."""
        return self.get(np.arange(start, stop, dtype=np.int64))

    def iter_chunks(self, ids: np.ndarray, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(0, len(ids), chunk):
            part = ids[i : i + chunk]
            yield part, self.get(part)


class IndexStore:
    """An index directory opened for reading. :class:`~hysac.index.writer.IndexWriter` adds the write side."""

    def __init__(self, root: str | Path, *, writable: bool = False):
        self.root = Path(root)
        self.info = self.read_info(self.root)
        db = self.root / DB_FILE
        if writable:
            recorded = int((self.info.get("counts") or {}).get("total", 0) or 0) + int(self.info.get("removed") or 0)
            if not db.is_file() and recorded > 0:
                raise InputError(f"index database {db} is missing but {INDEX_JSON} records "
                                 f"{recorded} items: the index is damaged (rebuild it)")
            self.conn = connect(db)
        else:
            self.conn = connect_readonly(db)
        self._emb: EmbeddingReader | None = None
        try:
            cols = {r[1] for r in self.conn.execute("PRAGMA table_info(items)")}
        except sqlite3.DatabaseError as e:
            self.close()
            raise InputError(f"index database {db} cannot be read: {' '.join(str(e).split())}") from None
        #: format 2 (tombstones, fingerprints); False for a database of an older writer opened read-only
        self.tracks_removal = "removed" in cols
        self.has_fingerprints = "fingerprint" in cols
        #: SQL condition selecting the live items (every item of a format-1 database is live)
        self.live_sql = "removed IS NULL" if self.tracks_removal else "1"
        self.check_consistency()

    def check_consistency(self) -> None:
        """Cheap structural checks on open (a few aggregate queries): item ids ``0..N-1`` without gaps, shards
        covering exactly those ids, one modality per item. Raises :class:`InputError` naming the damage."""
        db = self.root / DB_FILE
        try:
            n, lo, hi = self.conn.execute("SELECT COUNT(*), MIN(id), MAX(id) FROM items").fetchone()
            bad_mod = self.conn.execute("SELECT COUNT(*) FROM items WHERE modality NOT IN ('text','image')"
                                        ).fetchone()[0]
            shards = self.shard_rows()
        except sqlite3.DatabaseError as e:
            raise InputError(f"index database {db} cannot be read: {' '.join(str(e).split())}") from None
        if n and (lo != 0 or hi != n - 1):
            raise InputError(f"index database {db} is damaged: item ids run {lo}..{hi} for {n} items (gaps)")
        if bad_mod:
            raise InputError(f"index database {db} is damaged: {bad_mod} item(s) of an unknown modality")
        nxt = 0
        for r in shards:
            if r[1] != nxt or r[2] < 1:
                raise InputError(f"index database {db} is damaged: embedding shard {r[0]} covers items "
                                 f"{r[1]}..{r[1] + r[2] - 1}, expected to start at {nxt}")
            nxt = r[1] + r[2]
        if nxt != n:
            raise InputError(f"index database {db} is damaged: the embedding shards hold {nxt} vectors for "
                             f"{n} items")

    # -- index.json ---------------------------------------------------------------------------------------------
    @staticmethod
    def exists(root: str | Path) -> bool:
        return (Path(root) / INDEX_JSON).is_file()

    @staticmethod
    def read_info(root: Path) -> dict[str, Any]:
        path = root / INDEX_JSON
        if not root.exists():
            raise InputError(f"index not found: {root}")
        if not path.is_file():
            raise InputError(f"{root} is not a hysac index (no {INDEX_JSON})")
        try:
            info = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            raise InputError(f"index file {path} is unreadable: {e}") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise InputError(f"{path} is not a hysac index description")
        if int(info.get("format_version", -1)) > FORMAT_VERSION:
            raise InputError(
                f"index {root} has format version {info.get('format_version')}; this hysac reads <= {FORMAT_VERSION}"
            )
        for k in ("model_id", "embed_dim", "curvature"):
            if k not in info:
                raise InputError(f"{path} lacks {k!r}")
        return info

    @property
    def model_id(self) -> str:
        return str(self.info["model_id"])

    @property
    def embed_dim(self) -> int:
        return int(self.info["embed_dim"])

    @property
    def curvature(self) -> float:
        return float(self.info["curvature"])

    @property
    def ann(self) -> AnnConfig:
        return AnnConfig.from_dict(self.info.get("ann"))

    def check_model(self, model: Any) -> None:
        """Refuse a model other than the one that built the index (ModelMismatchError)."""
        mid = str(getattr(model, "model_id", ""))
        if mid != self.model_id:
            raise ModelMismatchError(
                f"index {self.root} was built with model {self.model_id!r}; refusing model {mid!r}"
            )
        dim = int(model.embed_dim)
        curv = float(model.curvature)
        if dim != self.embed_dim or not math.isclose(curv, self.curvature, rel_tol=1e-5, abs_tol=1e-8):
            raise ModelMismatchError(
                f"index {self.root} holds {self.embed_dim}-d points of curvature {self.curvature:g}; model "
                f"{mid!r} gives {dim}-d points of curvature {curv:g}"
            )

    # -- rows -----------------------------------------------------------------------------------------------------
    def count(self, modality: str | None = None) -> int:
        """Stored items (the id space ``0..N-1``: live and removed ones)."""
        if modality is None:
            return int(self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        return int(self.conn.execute("SELECT COUNT(*) FROM items WHERE modality=?", (modality,)).fetchone()[0])

    def live_count(self) -> int:
        """Items search can return (stored minus removed)."""
        return int(self.conn.execute(f"SELECT COUNT(*) FROM items WHERE {self.live_sql}").fetchone()[0])

    def removed_count(self) -> int:
        """Items removed by a sync (tombstoned: kept on disk, never returned)."""
        if not self.tracks_removal:
            return 0
        return int(self.conn.execute("SELECT COUNT(*) FROM items WHERE removed IS NOT NULL").fetchone()[0])

    def counts(self) -> dict[str, int]:
        """Live items, in total and per modality (removed ones: :meth:`removed_count`)."""
        out = {"total": 0, "text": 0, "image": 0}
        q = f"SELECT modality, COUNT(*) FROM items WHERE {self.live_sql} GROUP BY modality"
        for mod, n in self.conn.execute(q):
            out[str(mod)] = int(n)
            out["total"] += int(n)
        return out

    def error_count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM errors").fetchone()[0])

    def existing_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of ``keys`` committed and live."""
        return set(self.live_by_keys(keys))

    def live_by_keys(self, keys: Iterable[str]) -> dict[str, tuple[int, str, str, str | None, int | None]]:
        """The live items with one of ``keys``: key → ``(id, modality, content, fingerprint, source)``
        (fingerprint ``None``: recorded by an older writer)."""
        keys = list(keys)
        fp = "fingerprint" if self.has_fingerprints else "NULL"
        found: dict[str, tuple[int, str, str, str | None, int | None]] = {}
        for i in range(0, len(keys), 500):
            part = keys[i : i + 500]
            q = (f"SELECT key, id, modality, content, {fp}, source FROM items WHERE key IN (%s) AND {self.live_sql}"
                 % ",".join("?" * len(part)))
            for r in self.conn.execute(q, part):
                found[r[0]] = (int(r[1]), r[2], r[3], r[4], r[5])
        return found

    def live_of_sources(self, source_ids: Sequence[int], *, lean: bool = False
                        ) -> list[tuple[int, str, str, str, str | None, int | None]]:
        """Live items committed by the given source runs: ``(id, key, modality, content, fingerprint, source)``.
        ``lean``: the content of a text with a recorded fingerprint is left out ("", what a sync needs)."""
        ids = [int(i) for i in source_ids]
        fp = "fingerprint" if self.has_fingerprints else "NULL"
        content = (f"CASE WHEN modality = 'text' AND {fp} IS NOT NULL THEN '' ELSE content END" if lean
                   else "content")
        out = []
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = (f"SELECT id, key, modality, {content}, {fp}, source FROM items WHERE source IN (%s) "
                 f"AND {self.live_sql} ORDER BY id" % ",".join("?" * len(part)))
            out += [(int(r[0]), r[1], r[2], r[3], r[4], r[5]) for r in self.conn.execute(q, part)]
        return out

    def ids_of(self, modality: str, live_only: bool = False) -> np.ndarray:
        """Ids of the items of ``modality``, ascending: all stored ones (the FAISS files hold removed items too;
        search drops them), or with ``live_only`` the live ones."""
        live = f" AND {self.live_sql}" if live_only else ""
        rows = self.conn.execute(f"SELECT id FROM items WHERE modality=?{live} ORDER BY id", (modality,)).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def live_mask(self) -> np.ndarray:
        """(N,) bool indexed by item id: True for a live item, False for a removed one."""
        mask = np.ones(self.count(), dtype=bool)
        if self.tracks_removal:
            rows = self.conn.execute("SELECT id FROM items WHERE removed IS NOT NULL").fetchall()
            if rows:
                mask[np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))] = False
        return mask

    def scores_modalities(self) -> tuple[np.ndarray, np.ndarray]:
        """(N,) float64 scores and (N,) int8 modality codes (0 text, 1 image), indexed by item id."""
        n = self.count()
        scores = np.zeros(n, dtype=np.float64)
        mods = np.zeros(n, dtype=np.int8)
        cur = self.conn.execute("SELECT id, score, modality FROM items")
        while True:
            rows = cur.fetchmany(100_000)
            if not rows:
                break
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            scores[ids] = np.fromiter((r[1] for r in rows), dtype=np.float64, count=len(rows))
            mods[ids] = np.fromiter((r[2] == "image" for r in rows), dtype=np.int8, count=len(rows))
        return scores, mods

    def rows(self, ids: Sequence[int], *, live_only: bool = False) -> dict[int, dict[str, Any]]:
        """Item rows by id: key, modality, content, score, unsafe, categories, metadata. ``live_only``: leave out
        items a sync removed (what every reader outside the index tools sees)."""
        ids = [int(i) for i in ids]
        out: dict[int, dict[str, Any]] = {}
        live = f" AND {self.live_sql}" if live_only else ""
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = ("SELECT id, key, modality, content, score, unsafe, categories, metadata FROM items "
                 "WHERE id IN (%s)%s" % (",".join("?" * len(part)), live))
            for r in self.conn.execute(q, part):
                try:
                    cats = json.loads(r[6]) if r[6] else None
                    meta = json.loads(r[7]) if r[7] else {}
                    if (cats is not None and not isinstance(cats, dict)) or not isinstance(meta, dict):
                        raise ValueError("not a JSON object")
                    score = float(r[4])
                except (ValueError, TypeError) as e:
                    raise InputError(f"index database {self.root / DB_FILE} is damaged: item {r[0]} has unreadable "
                                     f"categories / metadata / score ({e})") from None
                out[int(r[0])] = {
                    "id": int(r[0]),
                    "key": r[1],
                    "modality": r[2],
                    "content": r[3],
                    "score": score,
                    "unsafe": bool(r[5]),
                    "categories": cats,
                    "metadata": meta,
                }
        return out

    def errors(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT key, modality, content, stage, error, source, time FROM errors ORDER BY time, key")
        cols = ("key", "modality", "content", "stage", "error", "source", "time")
        return [dict(zip(cols, r)) for r in cur]

    def sources(self) -> list[dict[str, Any]]:
        cur = self.conn.execute("SELECT id, path, kind, modality, col, engine, started, finished FROM sources ORDER BY id")
        cols = ("id", "path", "kind", "modality", "column", "engine", "started", "finished")
        return [dict(zip(cols, r)) for r in cur]

    # -- embeddings -------------------------------------------------------------------------------------------
    def shard_rows(self) -> list[tuple[str, int, int]]:
        return [(r[0], int(r[1]), int(r[2])) for r in
                self.conn.execute("SELECT file, start, count FROM shards ORDER BY start")]

    def shard_checks(self) -> list[tuple[str, int, int, str | None, str | None]]:
        """``(file, start, count, sha256, fingerprint)`` per shard (``None`` where an older writer recorded none)."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(shards)")}
        if not set(SHARD_CHECKS) <= have:
            return [(*r, None, None) for r in self.shard_rows()]
        return [(r[0], int(r[1]), int(r[2]), r[3], r[4]) for r in
                self.conn.execute("SELECT file, start, count, sha256, fingerprint FROM shards ORDER BY start")]

    @property
    def embeddings(self) -> EmbeddingReader:
        """Reader over the committed shards (refreshed when the shard table changed)."""
        rows = self.shard_checks()
        if self._emb is None or self._emb.files != [r[0] for r in rows]:
            self._emb = EmbeddingReader(self.root, rows, self.embed_dim)
        return self._emb

    def verify(self, progress: bool = False) -> list[str]:
        """Full check, every byte: each shard's sha256 and shape and that all its vectors are finite, each FAISS
        file's sha256 against ``index.json``, every item row readable. Returns one line per problem (empty: intact;
        shards and FAISS files written before checksums were recorded are checked for shape and finiteness only)."""
        problems: list[str] = []
        try:
            self.check_consistency()
        except InputError as e:
            return [str(e)]
        if self.tracks_removal:
            twice = self.conn.execute("SELECT COUNT(*) FROM (SELECT key FROM items WHERE removed IS NULL GROUP BY key "
                                      "HAVING COUNT(*) > 1)").fetchone()[0]
            if twice:
                problems.append(f"index database {self.root / DB_FILE} is damaged: {twice} key(s) live more than once")
        checks = self.shard_checks()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(checks), desc="verify shards", unit="shard")
        for file, start, count, sha, _ in checks:
            path = self.root / EMB_DIR / file
            if not path.is_file():
                problems.append(f"embedding shard {path} is missing (items {start}..{start + count - 1})")
            elif sha and file_sha256(path) != sha:
                problems.append(f"embedding shard {path} does not match its recorded sha256")
            else:
                try:
                    reader = EmbeddingReader(self.root, [(file, start, count)], self.embed_dim)
                    arr = reader._shard(0)
                    if not np.isfinite(arr).all():
                        problems.append(f"embedding shard {path} holds non-finite vectors")
                except InputError as e:
                    problems.append(str(e))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        for mod, entry in (self.info.get("faiss") or {}).items():
            path = self.root / faiss_file(mod)
            sha = (entry or {}).get("sha256")
            if not path.is_file():
                problems.append(f"FAISS file {path} is missing (search rebuilds it in memory; `hysac index add` "
                                "with no new items rewrites it)")
            elif sha and file_sha256(path) != sha:
                problems.append(f"FAISS file {path} does not match its recorded sha256 (search does not use it)")
        ids = [r[0] for r in self.conn.execute("SELECT id FROM items ORDER BY id")]
        for i in range(0, len(ids), 5000):
            try:
                self.rows(ids[i:i + 5000])
            except InputError as e:
                problems.append(str(e))
        return problems

    def summary(self) -> dict[str, Any]:
        """index.json content refreshed from the database (what ``hysac index info`` prints): ``counts`` are the
        live items, ``removed`` the items removed by a sync (stored, never returned)."""
        info = dict(self.info)
        info["counts"] = self.counts()
        info["removed"] = self.removed_count()
        info["errors"] = self.error_count()
        info["sources"] = self.sources()
        return info

    def close(self) -> None:
        try:
            self.conn.close()
        except sqlite3.Error:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
