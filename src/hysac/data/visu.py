"""ViSU (Visual Safe-Unsafe) quadruplets, as released with Safe-CLIP, and the text-only ViSU-Text files.

Official layout: a JSON file ``{"0": {...}, "1": {...}}`` or ``{"info": ..., "data": {"0": {...}}}`` (a list of
items is accepted too). Each item has ``safe`` / ``nsfw`` captions, a ``tag`` (category), ``coco_id`` (the safe
image, found at ``{coco_root}/{train2017|val2017|test2017}/{coco_id:012d}.jpg``, first that exists) and
``nsfw_im_path`` (the unsafe image, relative to ``visu_root`` - default: the JSON file's folder - or absolute).
ViSU-Text files (``.json``, ``.jsonl``, ``.csv``, ``.parquet``) have the columns ``safe``, ``nsfw``, ``tag`` and
optionally ``coco_id``, ``incremental_id``, ``prompt_id``; they carry no images.

Image paths are checked lazily when an item is read; :meth:`ViSUDataset.validate` checks them all at once.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hysac.data.tables import open_text, read_table, table_format
from hysac.data.text import clean_text
from hysac.errors import InputError

COCO_SPLITS: tuple[str, ...] = ("train2017", "val2017", "test2017")
REQUIRED_COLUMNS: tuple[str, ...] = ("safe", "nsfw")
EXTRA_COLUMNS: tuple[str, ...] = ("coco_id", "incremental_id", "prompt_id")

PathLike = str | os.PathLike[str]


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _load_items(path: Path) -> list[dict[str, Any]]:
    """The raw items of a ViSU JSON / ViSU-Text file, each with an ``id`` key (the JSON key or row number)."""
    fmt = table_format(path)
    if not path.is_file():
        raise InputError(f"ViSU file not found: {path}")
    if fmt != "json":
        df = read_table(path)
        return [{"id": str(i), **{k: (None if _missing(v) else v) for k, v in row.items()}}
                for i, row in enumerate(df.to_dict("records"))]
    try:
        with open_text(path) as fh:
            obj = json.load(fh)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read ViSU JSON: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict) and "data" in obj and isinstance(obj["data"], (dict, list)):
        obj = obj["data"]
    if isinstance(obj, dict) and all(isinstance(v, dict) for v in obj.values()):
        return [{"id": str(k), **v} for k, v in obj.items()]
    if isinstance(obj, list) and all(isinstance(v, dict) for v in obj):
        return [{"id": str(v.get("incremental_id", i)), **v} for i, v in enumerate(obj)]
    raise InputError(f"{path}: not a ViSU file: expected {{'0': {{...}}, ...}}, {{'data': {{...}}}} or a list of "
                     "objects with 'safe' and 'nsfw' fields")


def _as_int(v: object, what: str, where: object) -> int:
    try:
        f = float(v)  # type: ignore[arg-type]
        if not f.is_integer():
            raise ValueError
        return int(f)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {what} must be an integer, got {v!r}") from None


def coco_image_path(coco_root: PathLike, coco_id: int) -> Path:
    """The first existing ``{coco_root}/{train2017|val2017|test2017}/{coco_id:012d}.jpg``; raises
    :class:`InputError` listing the places looked at when none exists."""
    root = Path(coco_root)
    name = f"{int(coco_id):012d}.jpg"
    candidates = [root / split / name for split in COCO_SPLITS]
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(f"COCO image {coco_id} not found: looked for {', '.join(map(str, candidates))}")


class ViSUDataset:
    """ViSU items as dicts ``{id, safe_text, nsfw_text, tag, coco_id, safe_image_path, nsfw_image_path}``.

    With ``load_images=True`` the image paths are resolved (and must exist: :class:`InputError` naming the path
    otherwise) when an item is read; items lacking ``coco_id`` / ``nsfw_im_path`` get ``None`` for that image.
    With ``load_images=False`` no image is looked at and both paths are ``None`` (ViSU-Text use).
    Rows with an empty ``safe`` or ``nsfw`` caption are dropped (counted in :attr:`n_dropped`)."""

    def __init__(self, json_path: PathLike, coco_root: PathLike | None = None, visu_root: PathLike | None = None,
                 load_images: bool = True) -> None:
        self.path = Path(json_path).expanduser()
        self.load_images = load_images
        raw = _load_items(self.path)
        if raw:
            columns = set().union(*(r.keys() for r in raw))
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise InputError(f"{self.path}: missing ViSU field(s) {', '.join(missing)} "
                                 f"(found: {', '.join(sorted(map(str, columns)))})")
        self.items = [r for r in raw if not _missing(r.get("safe")) and not _missing(r.get("nsfw"))]
        self.n_dropped = len(raw) - len(self.items)
        self.coco_root = Path(coco_root).expanduser() if coco_root is not None else None
        self.visu_root = Path(visu_root).expanduser() if visu_root is not None else self.path.parent
        if load_images and self.coco_root is None and any(not _missing(r.get("coco_id")) for r in self.items):
            raise InputError(f"{self.path}: items have coco_id but no coco_root was given; pass coco_root= (the "
                             "folder holding train2017/val2017) or load_images=False")

    def __len__(self) -> int:
        return len(self.items)

    def _safe_image(self, r: dict[str, Any]) -> str | None:
        if _missing(r.get("coco_id")):
            return None
        assert self.coco_root is not None
        return str(coco_image_path(self.coco_root, _as_int(r["coco_id"], "coco_id", self.path)))

    def _nsfw_image(self, r: dict[str, Any]) -> str | None:
        if _missing(r.get("nsfw_im_path")):
            return None
        p = Path(str(r["nsfw_im_path"])).expanduser()
        p = p if p.is_absolute() else self.visu_root / p
        if not p.is_file():
            raise InputError(f"ViSU unsafe image not found: {p}")
        return str(p)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.items[index]
        coco_id = None if _missing(r.get("coco_id")) else _as_int(r["coco_id"], "coco_id", self.path)
        tag = r.get("tag")
        out: dict[str, Any] = {
            "id": r["id"],
            "safe_text": clean_text(r["safe"]),
            "nsfw_text": clean_text(r["nsfw"]),
            "tag": None if _missing(tag) else str(tag).strip(),
            "coco_id": coco_id,
            "safe_image_path": None,
            "nsfw_image_path": None,
        }
        if self.load_images:
            out["safe_image_path"] = self._safe_image(r)
            out["nsfw_image_path"] = self._nsfw_image(r)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def validate(self, max_listed: int = 5) -> int:
        """Check that every referenced image exists; returns the number of items. Raises one :class:`InputError`
        counting the missing images and naming the first ``max_listed``."""
        if not self.load_images:
            return len(self)
        problems: list[str] = []
        for r in self.items:
            for resolve in (self._safe_image, self._nsfw_image):
                try:
                    resolve(r)
                except InputError as e:
                    problems.append(str(e))
        if problems:
            shown = "; ".join(problems[:max_listed])
            more = f" (and {len(problems) - max_listed} more)" if len(problems) > max_listed else ""
            raise InputError(f"{self.path}: {len(problems)} missing image(s) in {len(self)} items: {shown}{more}")
        return len(self)


def open_image(path: PathLike) -> Any:
    """Open an image file as an RGB ``PIL.Image``; :class:`InputError` naming the path if missing/undecodable."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise InputError(f"image not found: {p}") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise InputError(f"{p}: cannot decode image: {e}") from e
