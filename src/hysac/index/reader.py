"""Stage 1 — read a source (SRC) into batches of :class:`Item`.

A source is either

* a **folder of images**, walked recursively (``.jpg .jpeg .png .webp .bmp .gif``, case-insensitive), in sorted
  order of the relative POSIX path, so two runs over the same folder yield the same items in the same order; or
* a **table** — ``.csv``, ``.jsonl``/``.ndjson`` or ``.parquet`` — with a ``text`` column or an ``image`` column
  (a path; relative paths are resolved against the table's folder). Every other column is kept as metadata
  (converted to JSON-serialisable values: NaN → ``None``, numpy scalars → Python numbers, dates → ISO strings).
  When a table has both columns the image is indexed and ``text`` stays in the metadata (a captioned image
  collection); pass ``column="text"`` to index the captions instead.

Each item carries a stable **key**, used to skip the items already committed when a build is resumed:

* folder image: the absolute, normalised path of the file;
* table row: ``<absolute table path>#<row number>:<12 hex digits of sha1(row content)>`` — the hash makes a key
  stale when the row changes, so an edited row is indexed again rather than silently kept.

and a cheap content **fingerprint** (:func:`content_fingerprint`), recorded with the item, that tells a rebuild
whether what the model saw has changed: for a text, a hash of the text; for an image, the file's size and
modification time (``stat:<bytes>:<mtime ns>``; the bytes are not read). The index sync
(:mod:`~hysac.index.sync`) re-embeds an item whose fingerprint changed and keeps the others.

Nothing here touches the model; a bad SRC raises :class:`~hysac.errors.InputError` naming it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from ..errors import InputError
from ..safety import Modality

__all__ = [
    "IMAGE_EXTENSIONS",
    "TABLE_FORMATS",
    "Item",
    "Source",
    "FolderSource",
    "TableSource",
    "open_source",
    "batched",
    "jsonable",
    "content_fingerprint",
    "key_slot",
]


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
#: file suffix → table format
TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Item:
    """One thing to index: a text or an image path, with its resume key, metadata and content fingerprint."""

    key: str
    modality: Modality
    #: the text itself, or the absolute path of the image
    content: str
    metadata: dict[str, Any] = field(default_factory=dict)
    #: :func:`content_fingerprint` at read time ("" when unknown: the item is then always re-encoded by a sync)
    fingerprint: str = ""

    def to_record(self) -> dict[str, str]:
        """Flat, string-only record (Arrow/Ray friendly); inverse of :meth:`from_record`."""
        return {
            "key": self.key,
            "modality": self.modality,
            "content": self.content,
            "metadata": json.dumps(self.metadata, ensure_ascii=False, sort_keys=True),
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_record(cls, rec: dict) -> "Item":
        meta = rec.get("metadata") or "{}"
        fp = rec.get("fingerprint")
        return cls(
            key=str(rec["key"]),
            modality=str(rec["modality"]),  # type: ignore[arg-type]
            content=str(rec["content"]),
            metadata=json.loads(meta) if isinstance(meta, str) else dict(meta),
            fingerprint="" if fp is None else str(fp),
        )


def content_fingerprint(modality: str, content: str) -> str:
    """A cheap fingerprint of what the model encodes for an item: ``sha1:<20 hex>`` of a text, or
    ``stat:<size>:<mtime_ns>`` of an image file ("" when the file cannot be stat'ed or there is no content)."""
    if not content:
        return ""
    if modality == "image":
        try:
            st = os.stat(content)
        except OSError:
            return ""
        return f"stat:{st.st_size}:{st.st_mtime_ns}"
    return "sha1:" + hashlib.sha1(content.encode("utf-8", errors="surrogatepass")).hexdigest()[:20]


_TABLE_KEY = re.compile(r"^(.*#\d+):[0-9a-f]{12}$", re.DOTALL)


def key_slot(key: str) -> str:
    """Where an item sits in its source, independent of its content: a table row key without its content hash
    (``<table>#<row>``), any other key unchanged. Two versions of an edited row share a slot."""
    m = _TABLE_KEY.match(key)
    return m.group(1) if m else key


def jsonable(value: Any) -> Any:
    """Convert a table cell to a JSON-serialisable value (NaN/NaT → None, numpy → Python, dates → ISO)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    # numpy / pandas scalars without importing them eagerly
    mod = type(value).__module__
    if mod.startswith("numpy"):
        if hasattr(value, "tolist"):
            return jsonable(value.tolist())
    if mod.startswith("pandas"):
        try:
            import pandas as pd

            if value is pd.NaT or (not isinstance(value, (list, dict)) and pd.isna(value)):
                return None
        except (TypeError, ValueError):
            pass
        if hasattr(value, "isoformat"):
            return value.isoformat()
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item"):
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _abspath(p: str | Path) -> str:
    return os.path.normpath(os.path.abspath(os.path.expanduser(str(p))))


def batched(items: Iterable[Item], batch_size: int) -> Iterator[list[Item]]:
    """Group an item stream into lists of ``batch_size`` (the last one may be shorter)."""
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    batch: list[Item] = []
    for it in items:
        batch.append(it)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


class Source:
    """Base class of a readable source. Iterate it for items; ``len()`` is the number of items."""

    kind: str = "?"
    modality: Modality = "text"
    column: str | None = None

    def __init__(self, path: Path):
        self.path = path

    def __iter__(self) -> Iterator[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, batch_size: int) -> Iterator[list[Item]]:
        return batched(iter(self), batch_size)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "modality": self.modality, "column": self.column}


class FolderSource(Source):
    """A folder of images, recursive, deterministic (sorted by relative POSIX path)."""

    kind = "folder"
    modality: Modality = "image"

    def __init__(self, path: Path):
        super().__init__(path)
        self._files = self._scan()
        if not self._files:
            raise InputError(
                f"source folder {path} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
            )

    def _scan(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        root = str(self.path)

        def onerror(err: OSError) -> None:
            raise InputError(f"cannot read source folder {err.filename or root}: {err.strerror or err}")

        for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
            dirnames.sort()
            for name in filenames:
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                    full = os.path.join(dirpath, name)
                    rel = Path(os.path.relpath(full, root)).as_posix()
                    found.append((rel, full))
        found.sort(key=lambda t: t[0])
        return found

    def __len__(self) -> int:
        return len(self._files)

    def __iter__(self) -> Iterator[Item]:
        for rel, full in self._files:
            path = _abspath(full)
            yield Item(key=path, modality="image", content=path, metadata={"relpath": rel},
                       fingerprint=content_fingerprint("image", path))


class TableSource(Source):
    """A CSV / JSONL / parquet table with a ``text`` or ``image`` column."""

    kind = "table"

    def __init__(self, path: Path, fmt: str, column: str = "auto"):
        super().__init__(path)
        self.format = fmt
        self.kind = fmt
        self._base = Path(_abspath(path)).parent
        self._n: int | None = None
        columns = self._columns()
        self.column = self._pick_column(columns, column)
        self.modality = "image" if self.column == "image" else "text"

    # -- columns / counting ---------------------------------------------------------------------------------
    def _pick_column(self, columns: Sequence[str], column: str) -> str:
        cols = set(columns)
        if column not in ("auto", "text", "image"):
            raise InputError(f"unknown column choice {column!r}; use 'auto', 'text' or 'image'")
        if column != "auto":
            if column not in cols:
                raise InputError(f"table {self.path} has no {column!r} column (columns: {sorted(cols)})")
            return column
        if "image" in cols:
            return "image"
        if "text" in cols:
            return "text"
        raise InputError(
            f"table {self.path} needs a 'text' or an 'image' column (columns: {sorted(map(str, cols))})"
        )

    def _columns(self) -> list[str]:
        if self.format == "csv":
            pd = _pandas()
            try:
                return [str(c) for c in pd.read_csv(self.path, nrows=0).columns]
            except Exception as e:  # pandas raises many types (EmptyDataError, ParserError, UnicodeDecodeError)
                raise InputError(f"cannot read CSV table {self.path}: {_one_line(e)}") from None
        if self.format == "parquet":
            pf = self._parquet_file()
            return [str(n) for n in pf.schema_arrow.names]
        # jsonl: union of keys of the first rows is enough to choose the column; every row is checked later
        cols: list[str] = []
        for _, row in self._jsonl_rows(limit=50):
            for k in row:
                if k not in cols:
                    cols.append(k)
        if not cols:
            raise InputError(f"JSONL table {self.path} holds no rows")
        return cols

    def __len__(self) -> int:
        if self._n is None:
            if self.format == "parquet":
                self._n = int(self._parquet_file().metadata.num_rows)
            elif self.format == "jsonl":
                self._n = sum(1 for _ in self._jsonl_rows())
            else:
                self._n = len(self._csv_frame())
        return self._n

    # -- raw rows -------------------------------------------------------------------------------------------
    def _csv_frame(self):
        # The whole file is read at once (and kept) so the dtype inference, and with it the row hashes, does not
        # depend on a chunk size: the keys must be identical from one run to the next.
        if getattr(self, "_df", None) is None:
            pd = _pandas()
            try:
                self._df = pd.read_csv(self.path)
            except Exception as e:
                raise InputError(f"cannot read CSV table {self.path}: {_one_line(e)}") from None
        return self._df

    def _parquet_file(self):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(f"reading parquet table {self.path} needs pyarrow: pip install pyarrow") from None
        try:
            return pq.ParquetFile(self.path)
        except Exception as e:
            raise InputError(f"cannot read parquet table {self.path}: {_one_line(e)}") from None

    def _jsonl_rows(self, limit: int | None = None) -> Iterator[tuple[int, dict]]:
        n = 0
        try:
            with open(self.path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"JSONL table {self.path}, line {lineno}: invalid JSON ({e.msg})") from None
                    if not isinstance(row, dict):
                        raise InputError(f"JSONL table {self.path}, line {lineno}: expected a JSON object")
                    yield lineno, row
                    n += 1
                    if limit is not None and n >= limit:
                        return
        except UnicodeDecodeError as e:
            raise InputError(f"JSONL table {self.path} is not UTF-8: {e}") from None
        except OSError as e:
            raise InputError(f"cannot read JSONL table {self.path}: {e.strerror or e}") from None

    def _rows(self) -> Iterator[dict[str, Any]]:
        if self.format == "csv":
            df = self._csv_frame()
            cols = [str(c) for c in df.columns]
            for values in df.itertuples(index=False, name=None):
                yield dict(zip(cols, values))
        elif self.format == "parquet":
            pf = self._parquet_file()
            try:
                for rb in pf.iter_batches(batch_size=8192):
                    yield from rb.to_pylist()
            except InputError:
                raise
            except Exception as e:
                raise InputError(f"cannot read parquet table {self.path}: {_one_line(e)}") from None
        else:
            for _, row in self._jsonl_rows():
                yield row

    # -- items ----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Item]:
        table = _abspath(self.path)
        col = self.column
        assert col is not None
        for rowno, raw in enumerate(self._rows()):
            row = {str(k): jsonable(v) for k, v in raw.items()}
            digest = hashlib.sha1(
                json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
            ).hexdigest()[:12]
            value = row.pop(col, None)
            meta = row
            if self.modality == "image":
                content = "" if value in (None, "") else _abspath(self._base / str(value))
            else:
                content = "" if value is None else str(value)
            meta = {"row": rowno, **meta}
            yield Item(key=f"{table}#{rowno}:{digest}", modality=self.modality, content=content, metadata=meta,
                       fingerprint=content_fingerprint(self.modality, content))


def _pandas():
    import pandas as pd

    return pd


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def open_source(src: str | Path, column: str = "auto") -> Source:
    """Open ``src`` (an image folder or a CSV/JSONL/parquet table). Raises InputError naming a bad SRC."""
    path = Path(src).expanduser()
    if not path.exists():
        raise InputError(f"source not found: {src}")
    if path.is_dir():
        if column not in ("auto", "image"):
            raise InputError(f"source {src} is an image folder; column={column!r} applies to tables only")
        return FolderSource(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise InputError(
            f"unsupported source {src}: expected an image folder or a table "
            f"({', '.join(sorted(TABLE_FORMATS))})"
        )
    if not os.access(path, os.R_OK):
        raise InputError(f"source {src} is not readable")
    return TableSource(path, TABLE_FORMATS[suffix], column=column)
