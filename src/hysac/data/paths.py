"""Where hysac finds the shared data and where it caches derived files.

* Data: ``$HYSAC_DATA_DIR`` if set, else ``<repo root>/../shared/data`` (the repo root is found from the package
  location when installed editable, else the current directory is taken as the repo root).
* Cache: ``$HYSAC_CACHE_DIR`` if set, else ``~/.cache/hysac``.
"""

from __future__ import annotations

import os
from pathlib import Path

from hysac.errors import InputError

DATA_ENV = "HYSAC_DATA_DIR"
CACHE_ENV = "HYSAC_CACHE_DIR"


def _repo_root() -> Path:
    """The source checkout holding this package (``src/hysac/data/paths.py``), else the current directory."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "src" / "hysac").is_dir():
            return parent
    return Path.cwd()


def default_data_dir() -> Path:
    """The shared data folder: ``$HYSAC_DATA_DIR``, else ``<repo root>/../shared/data``. It may not exist."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return (_repo_root().parent / "shared" / "data").resolve()


def default_cache_dir() -> Path:
    """The hysac cache root: ``$HYSAC_CACHE_DIR``, else ``~/.cache/hysac``. It may not exist."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "hysac"


def resolve_data_file(name: str, path: str | os.PathLike[str] | None = None,
                      data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The file to read: ``path`` if given, else ``data_dir/name`` (``data_dir`` defaults to
    :func:`default_data_dir`). Raises :class:`InputError` naming the path when it does not exist; when the default
    location was used the message says how to point hysac at the data."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InputError(f"data file not found: {p}")
        return p
    folder = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    p = folder / name
    if not p.is_file():
        hint = (f"; set {DATA_ENV} to the folder holding {name} or pass its path explicitly"
                if data_dir is None else "")
        raise InputError(f"data file not found: {p}{hint}")
    return p
