"""Loaders for the shared text data (I2P, COCO captions, safe art prompts, LDNOOBW) and deterministic splits.

Every loader returns a pandas DataFrame with a ``text`` column (whitespace-stripped and collapsed, empty/NaN rows
dropped, exact duplicates removed) and a ``source`` column (``"i2p"``, ``"coco"``, ``"safe_art"``).
I2P duplicates are merged: their categories are united and ``hard`` is true if any copy is hard.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from hysac.data.categories import CATEGORIES, categories_to_multihot, parse_categories
from hysac.data.paths import resolve_data_file
from hysac.data.tables import read_table
from hysac.errors import InputError

logger = logging.getLogger(__name__)

I2P_FILE = "i2p_dev.csv"
COCO_FILE = "coco_captions_dev.csv"
SAFE_ART_FILE = "safe_art_prompts_dev.csv"
LDNOOBW_FILE = "ldnoobw_en.txt"
I2P_HUB_DATASET = "AIML-TUDA/i2p"

PathLike = str | os.PathLike[str]


def clean_text(value: object) -> str:
    """``value`` as a string with surrounding whitespace stripped and inner runs collapsed to one space ("" for
    None/NaN)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return " ".join(str(value).split())


def _clean_frame(df: pd.DataFrame, column: str, path: object) -> pd.DataFrame:
    if column not in df.columns:
        raise InputError(f"{path}: missing column {column!r} (columns: {', '.join(map(str, df.columns))})")
    df = df.copy()
    df["text"] = [clean_text(v) for v in df[column]]
    if column != "text":
        df = df.drop(columns=[column])
    df = df[df["text"] != ""]
    return df


def _finish(df: pd.DataFrame, source: str) -> pd.DataFrame:
    df = df.drop_duplicates("text", keep="first").reset_index(drop=True)
    df["source"] = source
    cols = ["text", "source"] + [c for c in df.columns if c not in ("text", "source")]
    return df[cols]


def load_i2p(path: PathLike | None = None, *, data_dir: PathLike | None = None, source: str = "local") -> pd.DataFrame:
    """The I2P prompts: columns ``text``, ``source`` (``"i2p"``), ``categories`` (list of canonical names),
    ``multihot`` (float32 array ``(7,)``), ``hard`` (bool), then the file's other columns.

    ``path`` defaults to ``data_dir/i2p_dev.csv`` (``data_dir`` defaults to :func:`default_data_dir`).
    ``source="hub"`` instead downloads the public ``AIML-TUDA/i2p`` dataset via ``huggingface_hub`` (network);
    it includes the prompts held out of ``i2p_dev.csv`` for independent evaluation, so do not train on it."""
    if source == "hub":
        df = _download_i2p_hub()
        origin: object = f"hf://datasets/{I2P_HUB_DATASET}"
    elif source == "local":
        p = resolve_data_file(I2P_FILE, path, data_dir)
        df, origin = read_table(p), p
    else:
        raise InputError(f"unknown I2P source {source!r}; expected 'local' or 'hub'")
    if "categories" not in df.columns:
        raise InputError(f"{origin}: missing column 'categories'")
    df = _clean_frame(df, "prompt" if "prompt" in df.columns else "text", origin)
    df["categories"] = [parse_categories(v) for v in df["categories"]]
    hard = df["hard"] if "hard" in df.columns else pd.Series(0, index=df.index)
    df["hard"] = pd.to_numeric(hard, errors="coerce").fillna(0).astype(int) > 0
    # Merge duplicate prompts: union of categories, hard if any copy is hard.
    if df["text"].duplicated().any():
        merged = df.groupby("text", sort=False).agg(
            categories=("categories", lambda s: [c for c in CATEGORIES if any(c in v for v in s)]),
            hard=("hard", "any"))
        df = df.drop_duplicates("text", keep="first").set_index("text")
        df["categories"] = merged["categories"]
        df["hard"] = merged["hard"]
        df = df.reset_index()
    df["multihot"] = [categories_to_multihot(c) for c in df["categories"]]
    df = _finish(df, "i2p")
    front = ["text", "source", "categories", "multihot", "hard"]
    return df[front + [c for c in df.columns if c not in front]]


def _download_i2p_hub() -> pd.DataFrame:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise InputError(f"source='hub' needs huggingface_hub: {e}") from e
    try:
        local = hf_hub_download(I2P_HUB_DATASET, "i2p_benchmark.csv", repo_type="dataset")
    except Exception as e:  # network / auth / missing file: report as an input problem
        raise InputError(f"cannot download {I2P_HUB_DATASET} from the Hugging Face Hub: {e}") from e
    return read_table(local)


def load_coco_captions(path: PathLike | None = None, *, data_dir: PathLike | None = None) -> pd.DataFrame:
    """COCO captions (safe): columns ``text``, ``source`` (``"coco"``), ``image_id`` (int), then the file's other
    columns (e.g. ``evaluation_seed``). ``path`` defaults to ``data_dir/coco_captions_dev.csv``."""
    p = resolve_data_file(COCO_FILE, path, data_dir)
    df = read_table(p)
    df = _clean_frame(df, "prompt" if "prompt" in df.columns else "text", p)
    if "source" in df.columns:
        df = df.rename(columns={"source": "subset"})
    if "image_id" in df.columns:
        df["image_id"] = pd.to_numeric(df["image_id"], errors="coerce").astype("Int64")
    return _finish(df, "coco")


def load_safe_art_prompts(path: PathLike | None = None, *, data_dir: PathLike | None = None) -> pd.DataFrame:
    """Safe text-to-image style prompts: columns ``text``, ``source`` (``"safe_art"``), ``subset`` (the file's
    ``source``, e.g. ``"imagenet_prompts"``). ``path`` defaults to ``data_dir/safe_art_prompts_dev.csv``."""
    p = resolve_data_file(SAFE_ART_FILE, path, data_dir)
    df = read_table(p)
    df = _clean_frame(df, "prompt" if "prompt" in df.columns else "text", p)
    if "source" in df.columns:
        df = df.rename(columns={"source": "subset"})
    return _finish(df, "safe_art")


def load_ldnoobw(path: PathLike | None = None, *, data_dir: PathLike | None = None) -> list[str]:
    """The LDNOOBW English bad-word list (lowercased, stripped, unique, file order)."""
    p = resolve_data_file(LDNOOBW_FILE, path, data_dir)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read word list: {e}") from e
    return list(dict.fromkeys(w for w in (clean_text(x).lower() for x in lines) if w))


# --------------------------------------------------------------------------------------------------- splits


def split_indices(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(n)`` with ``seed`` and cut it into ``len(fractions)`` disjoint parts covering all indices.
    Part ``i`` has ``round(cum[i] * n) - round(cum[i-1] * n)`` items (``cum`` the cumulative fractions, which must
    sum to 1). Deterministic for a given ``(n, fractions, seed)``."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    fr = np.asarray(list(fractions), dtype=np.float64)
    if fr.ndim != 1 or fr.size == 0 or (fr < 0).any() or not np.isclose(fr.sum(), 1.0, atol=1e-6):
        raise InputError(f"fractions must be non-negative and sum to 1, got {list(fractions)}")
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.rint(np.cumsum(fr) * n).astype(int)
    bounds[-1] = n
    starts = np.concatenate([[0], bounds[:-1]])
    return [np.sort(perm[a:b]) for a, b in zip(starts, bounds, strict=True)]


class TextExample(NamedTuple):
    """One text for safety training/evaluation."""

    text: str
    label: int  # 1 unsafe, 0 safe
    multihot: np.ndarray  # float32 (7,), zeros for safe texts
    hard: bool
    source: str  # "i2p" | "coco" | "safe_art"


class TextSplits(NamedTuple):
    train: list[TextExample]
    val: list[TextExample]
    test: list[TextExample]


def text_safety_splits(data_dir: PathLike | None = None, seed: int = 0, val_fraction: float = 0.15,
                       test_fraction: float = 0.15) -> TextSplits:
    """Train/val/test lists of :class:`TextExample` over I2P (unsafe) + COCO captions + safe art prompts (safe).

    Texts are deduplicated across sources first (exact text after whitespace cleaning; I2P wins, so a text seen as
    unsafe stays unsafe), so the three splits are disjoint by text. Each source is split separately with
    :func:`split_indices` (stratified by source), then each split is shuffled with ``seed``."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise InputError(f"need val_fraction, test_fraction >= 0 with sum < 1, got {val_fraction}, {test_fraction}")
    frames = [load_i2p(data_dir=data_dir), load_coco_captions(data_dir=data_dir),
              load_safe_art_prompts(data_dir=data_dir)]
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    seen: set[str] = set()
    parts: list[list[TextExample]] = [[], [], []]
    zeros = np.zeros(len(CATEGORIES), dtype=np.float32)
    for k, df in enumerate(frames):
        unsafe = df["source"].iat[0] == "i2p" if len(df) else False
        keep = ~df["text"].isin(seen)
        if (~keep).any():
            logger.info("%s: dropped %d texts already seen in another source", df["source"].iat[0], (~keep).sum())
        df = df[keep].reset_index(drop=True)
        seen.update(df["text"])
        if unsafe:
            examples = [TextExample(t, 1, m, bool(h), s) for t, m, h, s in
                        zip(df["text"], df["multihot"], df["hard"], df["source"], strict=True)]
        else:
            examples = [TextExample(t, 0, zeros.copy(), False, s) for t, s in
                        zip(df["text"], df["source"], strict=True)]
        for part, idx in zip(parts, split_indices(len(examples), fractions, seed=seed + k), strict=True):
            part.extend(examples[i] for i in idx)
    rng = np.random.default_rng(seed)
    shuffled = [[part[i] for i in rng.permutation(len(part))] for part in parts]
    return TextSplits(*shuffled)
