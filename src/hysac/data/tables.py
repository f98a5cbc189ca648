"""A generic tabular reader: CSV / TSV / JSONL / JSON / parquet -> pandas DataFrame, with clear errors."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from hysac.errors import InputError

TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq")
_COMPRESSED = (".gz", ".bz2", ".xz")


def table_format(path: str | os.PathLike[str]) -> str:
    """``"csv"``, ``"tsv"``, ``"jsonl"``, ``"json"`` or ``"parquet"`` from the file name (a trailing ``.gz`` /
    ``.bz2`` / ``.xz`` is looked through); raises :class:`InputError` for anything else."""
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    fmt = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".pq": "parquet"}.get(ext)
    if fmt is None:
        raise InputError(f"{p}: unsupported table format {ext or '(no extension)'!r}; "
                         f"expected one of {', '.join(TABLE_SUFFIXES)}")
    return fmt


def open_text(path: Path) -> IO[str]:
    """Open ``path`` for reading text (UTF-8), decompressing ``.gz`` / ``.bz2`` / ``.xz`` transparently."""
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    if suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8")
    if suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _json_records(obj: object, path: Path) -> pd.DataFrame:
    if isinstance(obj, dict) and isinstance(obj.get("data"), (list, dict)):
        obj = obj["data"]
    if isinstance(obj, dict) and obj and all(isinstance(v, dict) for v in obj.values()):
        obj = list(obj.values())  # {"0": {...}, "1": {...}}
    if isinstance(obj, list):
        if not all(isinstance(r, dict) for r in obj):
            raise InputError(f"{path}: expected a JSON list of objects (one per row)")
        return pd.DataFrame.from_records(obj)
    if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        try:
            return pd.DataFrame(obj)  # column-oriented {"col": [...]}
        except ValueError as e:
            raise InputError(f"{path}: cannot read JSON columns: {e}") from e
    raise InputError(f"{path}: expected a JSON list of objects (one per row), got {type(obj).__name__}")


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a CSV / TSV / JSONL / JSON / parquet file into a DataFrame (format from the extension; compressed
    ``.csv.gz``, ``.jsonl.xz``... work). JSON may be a list of row objects, ``{"data": [...]}``, an id-keyed
    ``{"0": {...}, ...}`` mapping or a column mapping ``{"col": [...]}``.

    Raises :class:`InputError` naming the path for a missing file, an unsupported extension or content that cannot
    be decoded."""
    p = Path(path).expanduser()
    fmt = table_format(p)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected a {fmt} file")
    try:
        if fmt == "csv":
            return pd.read_csv(p)
        if fmt == "tsv":
            return pd.read_csv(p, sep="\t")
        if fmt == "jsonl":
            return pd.read_json(p, lines=True)
        if fmt == "parquet":
            return pd.read_parquet(p)
        with open_text(p) as fh:
            return _json_records(json.load(fh), p)
    except InputError:
        raise
    except pd.errors.EmptyDataError as e:
        raise InputError(f"{p}: empty {fmt} file") from e
    except ImportError as e:
        raise InputError(f"{p}: reading {fmt} needs an extra package: {e}") from e
    except (ValueError, OSError, EOFError) as e:  # decode/parse errors; pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{p}: cannot read as {fmt}: {type(e).__name__}: {e}") from e


_UNSAFE_WORDS = frozenset({"1", "true", "yes", "unsafe", "nsfw", "toxic", "y", "t"})
_SAFE_WORDS = frozenset({"0", "false", "no", "safe", "sfw", "n", "f"})


def label_value(value: Any) -> int | None:
    """A table cell as a safety label: 1 (unsafe: 1, true, yes, unsafe, nsfw, toxic...), 0 (safe: 0, false, no,
    safe, sfw...) or None when it is neither (an empty cell, NaN, 2, "maybe")."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer, float, np.floating)) and not (isinstance(value, float) and np.isnan(value)):
        if value in (0, 1):
            return int(value)
    s = str(value).strip().lower()
    return 1 if s in _UNSAFE_WORDS else 0 if s in _SAFE_WORDS else None
