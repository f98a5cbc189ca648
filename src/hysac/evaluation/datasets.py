"""Evaluation datasets: what each section of the report is computed on.

An :class:`EvalDataset` bundles (any part may be missing):

* ``texts`` / ``images`` — labelled items for classification (:class:`Labelled`: label 1 = unsafe, 7-way multi-hot
  categories, ``hard`` flag, ``source``);
* ``pairs`` — a paired set for the retrieval protocol (:class:`Pairs`: safe pairs, unsafe pairs, each unsafe pair's
  safe partner, categories);
* ``train_texts`` / ``train_images`` — the TRAIN split, used only to fit the linear probe and as redirection gallery;
* ``redirect`` — text queries and a labelled text gallery for the redirection-quality section.

Builders:

* :func:`offline_dev` — the shared dev data exactly as ``hysac train`` splits it for ``hysac-mini`` (``data.kind:
  offline``): :func:`hysac.data.text_safety_splits` (seed, val/test fractions) for I2P + COCO captions + safe art
  prompts, and the trainer's image split :func:`hysac.train.data.offline_image_splits` (rendered OpenMoji, plus Open
  Clip Art with ``clipart: true``). Paired set = the split's images with their captions; each unsafe image is
  partnered with the safe image of the same split whose caption is nearest in the frozen all-MiniLM-L6-v2 space
  (the trainer's pairing rule). Redirection: queries = the split's texts; gallery = the
  train (+ val when evaluating test) texts, so a query never meets itself.
* :func:`visu` — ViSU quadruplets from the official JSON layout (:class:`hysac.data.ViSUDataset`).
* :func:`table` — any CSV / TSV / JSONL / JSON / parquet with a text and/or image-path column, a label column and
  optional category / split / source / hard / partner columns.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..data.tables import label_value
from ..errors import InputError
from ..safety import CATEGORIES

logger = logging.getLogger(__name__)
N_CAT = len(CATEGORIES)


@dataclass
class Labelled:
    """Labelled items (texts or image paths)."""

    items: list[str]
    label: np.ndarray  # (N,) int 1 = unsafe
    multihot: np.ndarray  # (N,7) float32
    hard: np.ndarray  # (N,) bool
    source: np.ndarray  # (N,) str

    def __post_init__(self) -> None:
        n = len(self.items)
        self.label = np.asarray(self.label, dtype=np.int64).reshape(-1)
        self.multihot = np.asarray(self.multihot, dtype=np.float32).reshape(n, N_CAT)
        self.hard = np.asarray(self.hard, dtype=bool).reshape(-1)
        self.source = np.asarray(self.source).astype(str).reshape(-1)
        for name in ("label", "hard", "source"):
            if getattr(self, name).shape[0] != n:
                raise InputError(f"labelled set: {name} has {getattr(self, name).shape[0]} entries for {n} items")

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def build(cls, items: Sequence[str], label, multihot=None, hard=None, source=None) -> "Labelled":
        n = len(items)
        return cls(list(items), np.asarray(label),
                   np.zeros((n, N_CAT), np.float32) if multihot is None else np.asarray(multihot),
                   np.zeros(n, bool) if hard is None else np.asarray(hard),
                   np.array(["data"] * n) if source is None else np.asarray(source))

    def subset(self, idx) -> "Labelled":
        idx = np.asarray(idx, dtype=np.int64)
        return Labelled([self.items[i] for i in idx], self.label[idx], self.multihot[idx], self.hard[idx],
                        self.source[idx])

    def counts(self) -> dict:
        out = {"n": len(self), "unsafe": int(self.label.sum()), "safe": int((self.label == 0).sum())}
        if self.hard.any():
            out["unsafe_hard"] = int((self.hard & (self.label == 1)).sum())
        srcs = sorted(set(self.source.tolist()))
        if len(srcs) > 1 or (srcs and srcs[0] != "data"):
            out["by_source"] = {s: int((self.source == s).sum()) for s in srcs}
        return out


@dataclass
class Pairs:
    """Paired set for the retrieval protocol (see :mod:`hysac.evaluation.retrieval`)."""

    safe_text: list[str]
    safe_image: list[str]
    unsafe_text: list[str]
    unsafe_image: list[str]
    partner: np.ndarray
    categories: np.ndarray | None = None
    pairing: str = ""

    def counts(self) -> dict:
        return {"safe_pairs": len(self.safe_text), "unsafe_pairs": len(self.unsafe_text), "pairing": self.pairing}


@dataclass
class EvalDataset:
    name: str
    kind: str
    texts: Labelled | None = None
    images: Labelled | None = None
    pairs: Pairs | None = None
    train_texts: Labelled | None = None
    train_images: Labelled | None = None
    redirect_queries: Labelled | None = None
    redirect_gallery: Labelled | None = None
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict:
        out: dict[str, Any] = {"kind": self.kind}
        for key in ("texts", "images", "train_texts", "train_images", "redirect_queries", "redirect_gallery"):
            v = getattr(self, key)
            if v is not None:
                out[key] = v.counts()
        if self.pairs is not None:
            out["pairs"] = self.pairs.counts()
        return out


# ----------------------------------------------------------------------------------------------------------------
# pairing of unsafe captions with safe ones
# ----------------------------------------------------------------------------------------------------------------
_MINILM = None


def minilm_features(texts: Sequence[str]) -> np.ndarray:
    """Frozen all-MiniLM-L6-v2 features (the trainer's pairing space; offline, from PyPI)."""
    global _MINILM
    import torch

    from ..backbones import build_backbone

    if _MINILM is None:
        _MINILM = build_backbone({"kind": "mini"}).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            tok = _MINILM.tokenize(list(texts[i:i + 256]))
            out.append(_MINILM.text_base_features(tok["input_ids"], tok["attention_mask"]).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), np.float32)


def tfidf_features(texts: Sequence[str], fit_on: Sequence[str] | None = None) -> np.ndarray:
    """Word + character n-gram TF-IDF (dense); a light, model-free pairing space."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=1)
    vec.fit(list(fit_on or texts))
    return vec.transform(list(texts)).toarray().astype(np.float32)


def pair_partners(unsafe_texts: Sequence[str], safe_texts: Sequence[str], pairing: str = "minilm") -> np.ndarray:
    """Index of the nearest safe caption (cosine) for each unsafe caption, in the ``pairing`` space."""
    from ..data import pair_nearest

    if not len(unsafe_texts):
        return np.zeros(0, np.int64)
    if not len(safe_texts):
        raise InputError("cannot pair unsafe items with safe partners: no safe pairs")
    if pairing == "minilm":
        u, s = minilm_features(unsafe_texts), minilm_features(safe_texts)
    elif pairing == "tfidf":
        both = list(unsafe_texts) + list(safe_texts)
        u, s = tfidf_features(unsafe_texts, both), tfidf_features(safe_texts, both)
    else:
        raise InputError(f"unknown pairing {pairing!r}; use minilm or tfidf")
    return np.asarray(pair_nearest(u, s), dtype=np.int64)


def _cap_per_source(lab: Labelled, limit: int | None) -> Labelled:
    if limit is None:
        return lab
    keep, count = [], {}
    for i, s in enumerate(lab.source):
        if count.get(s, 0) < limit:
            keep.append(i)
            count[s] = count.get(s, 0) + 1
    return lab.subset(keep)


def _from_examples(examples) -> Labelled:
    return Labelled.build([e.text for e in examples], [e.label for e in examples],
                          np.stack([e.multihot for e in examples]) if examples else None,
                          [bool(e.hard) for e in examples], [e.source for e in examples])


# ----------------------------------------------------------------------------------------------------------------
# offline dev data
# ----------------------------------------------------------------------------------------------------------------
def offline_dev(name: str = "offline-dev", split: str = "test", *, data_dir: str | os.PathLike | None = None,
                seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15, openmoji_size: int = 224,
                cache_dir: str | os.PathLike | None = None, emoji_limit: int | None = None,
                emoji_codepoints: Sequence[str] | None = None, clipart: bool = False,
                clipart_root: str | os.PathLike | None = None, clipart_max_safe: int | None = 2000,
                images: bool = True, limit: int | None = None, probe_max_texts: int | None = None,
                probe_max_images: int | None = 800, pairing: str = "minilm",
                redirect_gallery: str = "auto", redirect_max_per_source: int | None = None,
                redirect_corpus: str = "dev") -> EvalDataset:
    """The shared dev data's ``split`` (``test`` or ``val``) as ``hysac train`` (``data.kind: offline``) splits it.

    Images: :func:`hysac.train.data.offline_image_splits` — the trainer's own function — with the same options
    (``openmoji_size``, ``clipart``, ``clipart_root``, ``clipart_max_safe``, ``emoji_limit``, ``emoji_codepoints``);
    they must match the evaluated model's training config (the runner warns when a model folder's
    ``training_config.json`` says otherwise).

    ``limit`` keeps the first N texts per source (quick runs; it also caps the probe's train texts and the
    redirection gallery at 5·N per source unless ``probe_max_texts`` says otherwise). ``probe_max_images`` caps the *safe* train emoji the
    image probe sees (all unsafe ones are kept); ``probe_max_texts`` caps the probe's train texts per source (first
    N in split order). ``redirect_gallery``: ``train``, ``train+val`` or ``auto`` (train+val for the test split,
    train for val); ``redirect_max_per_source`` keeps its first N texts per source (train before val), so with the
    same cap as ``probe_max_texts`` the gallery reuses the probe's encoded texts. ``redirect_corpus``: ``dev`` (the
    texts above: I2P prompts vs COCO captions and art prompts) or ``registers`` (the register corpus that
    ``data.corpus`` trains on, :func:`hysac.data.corpus.register_splits`, same seed and fractions: both classes in
    every register, so a safe top-1 is not won by register alone); queries are its ``split`` texts.
    """
    from ..data import categories_to_multihot, text_safety_splits

    if split not in ("test", "val"):
        raise InputError(f"offline-dev split must be 'test' or 'val' (never train), got {split!r}")
    splits = text_safety_splits(data_dir, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
    ev = _cap_per_source(_from_examples(splits.test if split == "test" else splits.val), limit)
    train = _from_examples(splits.train)
    val = _from_examples(splits.val)
    notes = [f"texts: shared dev data, text_safety_splits(seed={seed}, val_fraction={val_fraction}, "
             f"test_fraction={test_fraction}) {split} split" + (f", first {limit} per source" if limit else "")]
    if probe_max_texts is not None or limit is not None:
        notes.append(f"text probe: trained on the first {probe_max_texts or 5 * int(limit)} train texts per source")
    ds = EvalDataset(name, "offline-dev", texts=ev, notes=notes)
    if probe_max_texts is None and limit is not None:
        probe_max_texts = 5 * int(limit)
    probe_train = train
    if probe_max_texts is not None:
        probe_train = _cap_per_source(train, probe_max_texts)
    ds.train_texts = probe_train
    gal_kind = redirect_gallery if redirect_gallery != "auto" else ("train+val" if split == "test" else "train")
    if redirect_corpus == "dev":
        r_query, r_train, r_val = ev, train, val
    elif redirect_corpus == "registers":
        from ..data.corpus import register_splits

        rs = register_splits({"data_dir": None if data_dir is None else str(data_dir), "seed": seed,
                              "val_fraction": val_fraction, "test_fraction": test_fraction})
        r_query = _cap_per_source(_from_examples(rs.test if split == "test" else rs.val), limit)
        r_train, r_val = _from_examples(rs.train), _from_examples(rs.val)
    else:
        raise InputError(f"redirect_corpus must be dev or registers, got {redirect_corpus!r}")
    if gal_kind == "train":
        gallery = r_train
    elif gal_kind == "train+val":
        if split == "val":
            raise InputError("redirect_gallery train+val would contain the val queries themselves")
        gallery = Labelled(r_train.items + r_val.items, np.r_[r_train.label, r_val.label],
                           np.r_[r_train.multihot, r_val.multihot], np.r_[r_train.hard, r_val.hard],
                           np.r_[r_train.source, r_val.source])
    else:
        raise InputError(f"redirect_gallery must be auto, train or train+val, got {redirect_gallery!r}")
    if redirect_max_per_source is None and limit is not None:
        redirect_max_per_source = 5 * int(limit)
    if redirect_max_per_source is not None:
        gallery = _cap_per_source(gallery, int(redirect_max_per_source))
    ds.redirect_queries = r_query
    ds.redirect_gallery = gallery
    notes.append(f"redirection: queries = the {split} texts"
                 + (" of the register corpus (every register, both classes)" if redirect_corpus == "registers"
                    else "") + f"; gallery = the {gal_kind} texts"
                 + (f" (first {redirect_max_per_source} per source)" if redirect_max_per_source else "")
                 + f", {len(gallery)} items, disjoint from the queries")
    if images:
        from ..train.data import offline_image_splits

        # the trainer's own image split (OpenMoji + optional Open Clip Art, stratified by the unsafe flag), with
        # its option names (`cache_dir`: the folder above openmoji/<size>, default the hysac cache)
        dopts = {"openmoji_size": int(openmoji_size), "val_fraction": val_fraction, "test_fraction": test_fraction,
                 "emoji_limit": emoji_limit, "emoji_codepoints": emoji_codepoints, "clipart": bool(clipart),
                 "clipart_root": clipart_root, "clipart_max_safe": clipart_max_safe,
                 "cache_dir": None if cache_dir is None else str(cache_dir)}
        emoji, parts = offline_image_splits(dopts, seed)
        sel = parts[2] if split == "test" else parts[1]
        if limit is not None:  # quick run: every unsafe image of the split, the first `limit` safe ones
            sel = [i for i in sel if emoji["unsafe"].iat[i]] + [i for i in sel if not emoji["unsafe"].iat[i]][:int(limit)]
        cap = emoji["caption"].tolist()
        path = [str(p) for p in emoji["path"]]
        uns = emoji["unsafe"].to_numpy().astype(int)
        cats = np.stack([categories_to_multihot(c) for c in emoji["categories"]]).astype(np.float32)
        src = np.array(["clipart" if str(k).startswith("clipart:") else "openmoji" for k in emoji["codepoints"]])
        ds.images = Labelled.build([path[i] for i in sel], uns[sel], cats[sel], None, src[sel])
        tr = parts[0]
        tr_unsafe = [i for i in tr if uns[i]]
        tr_safe = [i for i in tr if not uns[i]]
        if probe_max_images is not None and len(tr_safe) > probe_max_images:
            rng = np.random.default_rng(seed)
            tr_safe = sorted(rng.choice(tr_safe, size=int(probe_max_images), replace=False).tolist())
        if limit is not None:
            tr_safe = tr_safe[:int(limit)]
        tr_sel = tr_unsafe + tr_safe
        ds.train_images = Labelled.build([path[i] for i in tr_sel], uns[tr_sel], cats[tr_sel], None, src[tr_sel])
        safe_sel = [i for i in sel if not uns[i]]
        unsafe_sel = [i for i in sel if uns[i]]
        partner = pair_partners([cap[i] for i in unsafe_sel], [cap[i] for i in safe_sel], pairing)
        ds.pairs = Pairs([cap[i] for i in safe_sel], [path[i] for i in safe_sel],
                         [cap[i] for i in unsafe_sel], [path[i] for i in unsafe_sel], partner,
                         cats[unsafe_sel].astype(bool), pairing=f"nearest safe caption ({pairing})")
        n_clip = int((src == "clipart").sum())
        notes.append(f"images: OpenMoji {openmoji_size}px ({len(emoji) - n_clip}; caption = Unicode name)"
                     + (f" + Open Clip Art ({n_clip}, safe capped at {clipart_max_safe}; caption = file name)"
                        if clipart else "")
                     + f", split as `hysac train` splits them; {split}: {len(safe_sel)} safe, "
                       f"{len(unsafe_sel)} unsafe-ish")
        notes.append(f"image probe: trained on {len(tr_unsafe)} unsafe + {len(tr_safe)} safe train images"
                     + (f" (safe capped at {probe_max_images})" if probe_max_images is not None else ""))
    return ds


# ----------------------------------------------------------------------------------------------------------------
# ViSU
# ----------------------------------------------------------------------------------------------------------------
def _visu_items(path, coco_root, visu_root, limit):
    from ..data import ViSUDataset

    ds = ViSUDataset(path, coco_root=coco_root, visu_root=visu_root)
    ds.validate()
    items = list(ds)
    return items[:limit] if limit else items


def visu(name: str = "visu", *, test: str | os.PathLike, coco_root: str | os.PathLike | None = None,
         visu_root: str | os.PathLike | None = None, train: str | os.PathLike | None = None,
         limit: int | None = None, probe_max: int | None = 5000) -> EvalDataset:
    """ViSU quadruplets (``test`` JSON; optional ``train`` JSON for the linear probe and the redirection gallery)."""
    from ..data import categories_to_multihot

    items = _visu_items(test, coco_root, visu_root, limit)
    if not items:
        raise InputError(f"{test}: no ViSU items")
    n = len(items)
    cats = np.stack([categories_to_multihot(it.get("tag") or "") for it in items]).astype(np.float32)
    st = [it["safe_text"] for it in items]
    nt = [it["nsfw_text"] for it in items]
    si = [str(it["safe_image_path"]) for it in items]
    ni = [str(it["nsfw_image_path"]) for it in items]
    lab = np.r_[np.zeros(n, int), np.ones(n, int)]
    mh = np.r_[np.zeros_like(cats), cats]
    src = ["visu_safe"] * n + ["visu_nsfw"] * n
    ds = EvalDataset(name, "visu", texts=Labelled.build(st + nt, lab, mh, None, src),
                     images=Labelled.build(si + ni, lab, mh, None, src),
                     pairs=Pairs(st, si, nt, ni, np.arange(n), cats.astype(bool), pairing="ViSU quadruplets"),
                     notes=[f"ViSU {test}: {n} quadruplets"])
    ds.redirect_queries = ds.texts
    if train is not None:
        tr = _visu_items(train, coco_root, visu_root, probe_max)
        m = len(tr)
        tcats = np.stack([categories_to_multihot(it.get("tag") or "") for it in tr]).astype(np.float32)
        tl = np.r_[np.zeros(m, int), np.ones(m, int)]
        tm = np.r_[np.zeros_like(tcats), tcats]
        ds.train_texts = Labelled.build([it["safe_text"] for it in tr] + [it["nsfw_text"] for it in tr], tl, tm)
        ds.train_images = Labelled.build([str(it["safe_image_path"]) for it in tr] +
                                         [str(it["nsfw_image_path"]) for it in tr], tl, tm)
        ds.redirect_gallery = ds.train_texts
        ds.notes.append(f"probe / redirection gallery: first {m} quadruplets of {train}")
    else:
        ds.redirect_queries = None
        ds.notes.append("no ViSU train file given: no linear probe and no redirection section")
    return ds


# ----------------------------------------------------------------------------------------------------------------
# generic table
# ----------------------------------------------------------------------------------------------------------------
def parse_labels(values: Sequence[Any], where: str) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        lab = label_value(v)
        if lab is None:
            raise InputError(f"{where}: row {i}: label {v!r} is not 0/1, true/false or safe/unsafe")
        out[i] = lab
    return out


def table(name: str = "table", *, path: str | os.PathLike, text_column: str | None = "text",
          image_column: str | None = "image", label_column: str = "label", category_column: str | None = "category",
          split_column: str | None = "split", source_column: str | None = "source", hard_column: str | None = "hard",
          partner_column: str | None = "partner", id_column: str | None = "id", image_root: str | None = None,
          limit: int | None = None, pairing: str = "minilm") -> EvalDataset:
    """A labelled table. Columns (names configurable; optional ones are used when present):

    * ``text`` and/or ``image`` (path, relative to ``image_root`` or the table's folder), ``label`` (0/1,
      true/false, safe/unsafe) — required: at least one of text/image, and label;
    * ``category`` (comma-separated names of the 7 categories), ``source``, ``hard`` (0/1);
    * ``split`` (``train`` rows fit the linear probe and form the redirection gallery; ``test``/``eval``/empty rows
      are evaluated; ``val``/``validation`` rows are ignored); without it every row is evaluated and there is no
      probe;
    * rows with both a text and an image form the paired set; an unsafe row's safe partner is the row whose ``id``
      (or row number) is in ``partner``, else the safe pair with the nearest caption (``pairing``).
    """
    from ..data import categories_to_multihot, read_table

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"table not found: {p}")
    df = read_table(p)
    cols = set(map(str, df.columns))
    if label_column not in cols:
        raise InputError(f"{p}: no label column {label_column!r} (columns: {', '.join(sorted(cols))})")
    tcol = text_column if text_column and text_column in cols else None
    icol = image_column if image_column and image_column in cols else None
    if tcol is None and icol is None:
        raise InputError(f"{p}: needs a text column ({text_column!r}) or an image column ({image_column!r}); "
                         f"columns: {', '.join(sorted(cols))}")
    if len(df) == 0:
        raise InputError(f"{p}: empty table")
    labels = parse_labels(df[label_column].tolist(), str(p))
    cats = (np.stack([categories_to_multihot(v if isinstance(v, str) else None) for v in df[category_column]])
            if category_column and category_column in cols else np.zeros((len(df), N_CAT), np.float32))
    cats[labels == 0] = 0
    src = (df[source_column].astype(str).to_numpy() if source_column and source_column in cols
           else np.array(["data"] * len(df)))
    hard = (df[hard_column].fillna(0).astype(float).to_numpy() > 0 if hard_column and hard_column in cols
            else np.zeros(len(df), bool))
    if split_column and split_column in cols:
        sp = df[split_column].fillna("").astype(str).str.strip().str.lower().to_numpy()
        bad = sorted(set(sp) - {"train", "test", "eval", "", "val", "validation"})
        if bad:
            raise InputError(f"{p}: unknown {split_column} value(s) {bad[:5]}; use train, test, val or empty")
        is_train = sp == "train"
        is_eval = np.isin(sp, ["test", "eval", ""])
    else:
        is_train = np.zeros(len(df), bool)
        is_eval = np.ones(len(df), bool)
    root = Path(image_root).expanduser() if image_root else p.parent

    def text_at(i):
        v = df[tcol].iat[i] if tcol else None
        return None if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip() else \
            " ".join(str(v).split())

    def image_at(i):
        v = df[icol].iat[i] if icol else None
        if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip():
            return None
        q = Path(str(v)).expanduser()
        q = q if q.is_absolute() else root / q
        return str(q)

    ev_rows = np.flatnonzero(is_eval)
    if limit:
        ev_rows = ev_rows[:limit]
    if ev_rows.size == 0:
        raise InputError(f"{p}: no rows to evaluate (all rows are train/val)")
    missing = [image_at(i) for i in ev_rows if image_at(i) is not None and not Path(image_at(i)).is_file()]
    if missing:
        raise InputError(f"{p}: {len(missing)} image file(s) not found, e.g. {missing[0]}")

    def labelled(rows, get):
        rows = [i for i in rows if get(i) is not None]
        if not rows:
            return None
        return Labelled.build([get(i) for i in rows], labels[rows], cats[rows], hard[rows], src[rows])

    ds = EvalDataset(name, "table", texts=labelled(ev_rows, text_at), images=labelled(ev_rows, image_at),
                     notes=[f"table {p}: {len(ev_rows)} evaluated rows"])
    tr_rows = np.flatnonzero(is_train)
    if tr_rows.size:
        ds.train_texts = labelled(tr_rows, text_at)
        ds.train_images = labelled(tr_rows, image_at)
        ds.notes.append(f"{tr_rows.size} train rows: linear probe and redirection gallery")
    if ds.texts is not None and ds.train_texts is not None:
        ds.redirect_queries, ds.redirect_gallery = ds.texts, ds.train_texts
    both = [i for i in ev_rows if text_at(i) is not None and image_at(i) is not None]
    if both:
        safe_rows = [i for i in both if labels[i] == 0]
        unsafe_rows = [i for i in both if labels[i] == 1]
        if partner_column and partner_column in cols and unsafe_rows:
            ids = (df[id_column].astype(str).tolist() if id_column and id_column in cols
                   else [str(i) for i in range(len(df))])
            pos = {ids[i]: j for j, i in enumerate(safe_rows)}
            partner = []
            for i in unsafe_rows:
                key = str(df[partner_column].iat[i]).strip()
                if key.endswith(".0"):
                    key = key[:-2]
                if key not in pos:
                    raise InputError(f"{p}: row {i}: partner {key!r} is not the id of an evaluated safe row "
                                     "with both text and image")
                partner.append(pos[key])
            partner_arr, how = np.asarray(partner, np.int64), f"column {partner_column!r}"
        elif unsafe_rows and safe_rows:
            partner_arr = pair_partners([text_at(i) for i in unsafe_rows], [text_at(i) for i in safe_rows], pairing)
            how = f"nearest safe caption ({pairing})"
        else:
            partner_arr, how = np.zeros(0, np.int64), "none"
        if safe_rows:
            if not unsafe_rows:
                partner_arr = np.zeros(0, np.int64)
            ds.pairs = Pairs([text_at(i) for i in safe_rows], [image_at(i) for i in safe_rows],
                             [text_at(i) for i in unsafe_rows], [image_at(i) for i in unsafe_rows], partner_arr,
                             cats[unsafe_rows].astype(bool) if unsafe_rows else None, pairing=how)
    return ds


BUILDERS: dict[str, Callable[..., EvalDataset]] = {"offline-dev": offline_dev, "visu": visu, "table": table}
