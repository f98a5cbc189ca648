"""Training data as index arrays into two pools (texts, image paths), grouped in *families* of rows.

A row is a quadruplet of pool indices ``(T, I, Ts, Is)`` — safe text, safe image, unsafe text, unsafe image — with
``-1`` where a member is absent; the losses take masks, so rows may lack images. Families:

* ``quad``          — full ViSU quadruplets (``data.kind = visu``);
* ``unsafe_text``   — ``(T, -, Ts, -)``: each I2P prompt ``Ts`` with its nearest safe caption ``T`` (cosine in the
  frozen text tower's space, :func:`hysac.data.pair_nearest`) — the offline stand-in for ViSU's text pairs;
* ``safe_text``     — ``(T, -, -, -)``: the remaining safe captions / art prompts (keep the safe class broad);
* ``safe_image``    — ``(T, I, -, -)``: a safe OpenMoji with its Unicode-name caption;
* ``unsafe_image``  — ``(T, I, Ts, Is)``: an unsafe-ish OpenMoji (weapon, blood, drugs, skull…) with its caption as
  ``Ts``, paired with the safe emoji whose caption is nearest.

Each step takes ``batch[family]`` rows of every family; the first family in :attr:`TrainData.families` (the
largest text family) defines the epoch, the others are sampled with a generator seeded by (seed, epoch, step), so
a run is exactly reproducible and resumable. A family with a ``weight`` (``data.balance: groups``) is drawn with
those probabilities instead of uniformly, so a large source group does not outvote a small one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..errors import InputError
from ..safety import CATEGORIES

N_CAT = len(CATEGORIES)


@dataclass
class Family:
    rows: np.ndarray  # (N,4) int64 pool indices, -1 = absent
    ts_cats: np.ndarray  # (N,7) float32 categories of the Ts member (zeros if none)
    is_cats: np.ndarray  # (N,7) float32 categories of the Is member
    weight: np.ndarray | None = None  # (N,) float64 row probabilities (sum 1); None: uniform


@dataclass
class EvalSet:
    """What validation/test measure: labelled texts and images, and caption↔image pairs."""

    text_idx: np.ndarray
    text_label: np.ndarray  # 1 unsafe
    text_multihot: np.ndarray  # (N,7)
    text_source: np.ndarray  # str
    text_hard: np.ndarray  # bool
    image_idx: np.ndarray
    image_label: np.ndarray
    image_multihot: np.ndarray
    pair_text: np.ndarray  # caption index ↔
    pair_image: np.ndarray  # image index (same position)
    pair_unsafe: np.ndarray  # bool per pair
    image_source: np.ndarray | None = None  # str per image ("openmoji", "clipart", "skimage", "wallpapers")
    quads: np.ndarray | None = None  # (n, 4) text/image pool indices (S, V, U, G) of ViSU quadruplets


@dataclass
class TrainData:
    texts: list[str]
    images: list[str]
    families: dict[str, Family]
    val: EvalSet
    test: EvalSet
    info: dict = field(default_factory=dict)


def _family(rows: list[tuple[int, int, int, int]], ts_cats=None, is_cats=None) -> Family:
    arr = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    n = arr.shape[0]
    z = np.zeros((n, N_CAT), dtype=np.float32)
    return Family(arr, z if ts_cats is None else np.asarray(ts_cats, np.float32).reshape(n, N_CAT),
                  z.copy() if is_cats is None else np.asarray(is_cats, np.float32).reshape(n, N_CAT))


class _Pool:
    def __init__(self):
        self.items: list[str] = []
        self.index: dict[str, int] = {}

    def add(self, item: str) -> int:
        if item not in self.index:
            self.index[item] = len(self.items)
            self.items.append(item)
        return self.index[item]


def group_balanced(groups: Sequence[str]) -> np.ndarray:
    """(N,) row probabilities giving every distinct value of ``groups`` the same total weight."""
    g = np.asarray(groups)
    _, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return w / w.sum()


def _cap(seq, n):
    return seq if n is None else seq[: int(n)]


def offline_image_splits(d: dict, seed: int):
    """The image side of the offline data: rendered OpenMoji (+ Open Clip Art when ``d['clipart']``) as one frame
    (``path``, ``codepoints``, ``caption``, ``unsafe``, ``categories``) and its train/val/test row indices,
    stratified by the unsafe flag. Training and ``hysac eval`` both call this, so their splits agree."""
    from ..data import render_openmoji, split_indices

    em_cache = None if d.get("cache_dir") is None else Path(d["cache_dir"]) / "openmoji" / str(d["openmoji_size"])
    emoji = render_openmoji(size=int(d["openmoji_size"]), cache_dir=em_cache, limit=d.get("emoji_limit"),
                            codepoints=d.get("emoji_codepoints"))
    if len(emoji) == 0:
        raise InputError("no OpenMoji images could be rendered")
    import pandas as pd

    emoji = emoji.assign(source="openmoji")
    if d.get("clipart"):  # Open Clip Art (Debian openclipart-png) as a second image source
        import pandas as pd

        from ..data.clipart import load_openclipart

        clip = load_openclipart(d.get("clipart_root"), max_safe=d.get("clipart_max_safe", 2000), seed=seed)
        emoji = pd.concat([emoji[["path", "codepoints", "caption", "unsafe", "categories", "source"]],
                           clip.assign(source="clipart")], ignore_index=True)
    emoji = emoji[["path", "codepoints", "caption", "unsafe", "categories", "source"]]
    em_parts: list[list[int]] = [[], [], []]
    fr = (1 - d["val_fraction"] - d["test_fraction"], d["val_fraction"], d["test_fraction"])
    for flag in (0, 1):  # stratified by the unsafe flag
        idx = np.flatnonzero(emoji["unsafe"].to_numpy() == flag)
        for part, sel in zip(em_parts, split_indices(len(idx), fr, seed=seed + 10 + flag)):
            part.extend(idx[sel].tolist())
    if d.get("photos"):  # real photos: calibration (val) and test only, never trained on
        from ..data.photos import load_photos

        photos = load_photos()
        if len(photos):
            start = len(emoji)
            emoji = pd.concat([emoji, photos], ignore_index=True)
            order = np.random.default_rng(seed + 20).permutation(len(photos))
            em_parts[1].extend((start + order[0::2]).tolist())
            em_parts[2].extend((start + order[1::2]).tolist())

    return emoji, em_parts


def _pair_by_register(unsafe, safe, u_feats, s_feats, pair_nearest) -> np.ndarray:
    """Index into ``safe`` of each unsafe text's counterpart: the nearest safe text (frozen text space) of the same
    register (source group, styled or not), or of all safe texts when that register has none."""
    from ..data.corpus import register_key

    out = np.empty(len(unsafe), dtype=np.int64)
    s_keys = np.array([register_key(e.source) for e in safe])
    u_keys = np.array([register_key(e.source) for e in unsafe])
    for key in np.unique(u_keys):
        ui = np.flatnonzero(u_keys == key)
        si = np.flatnonzero(s_keys == key)
        if len(si) == 0:
            si = np.arange(len(safe))
        out[ui] = si[pair_nearest(u_feats[ui], s_feats[si])]
    return out


def data_seed(cfg: dict) -> int:
    """The seed that draws the data of a training config — splits, subsamples, styling, the image pools:
    ``data.split_seed`` when set, else the top-level ``seed`` (which also draws the initialisation, the batch order
    and dropout). ``seed=1 data.split_seed=0`` retrains on the same splits with another model seed."""
    s = (cfg.get("data") or {}).get("split_seed")
    return int(cfg.get("seed", 0) if s is None else s)


def text_splits(cfg: dict):
    """The train/val/test text splits of an offline training config (``data``, :func:`data_seed`): every register of the
    corpus (:func:`hysac.data.corpus.register_splits`) when ``data.corpus`` is set, else I2P + COCO + safe art.
    Training, ``--dry-run`` and the reports that rebuild a model's splits from its ``training_config.json`` all
    call this, so their splits agree."""
    d = cfg["data"]
    seed = data_seed(cfg)
    if d.get("corpus") is not None:  # every register, both classes in each (hysac.data.corpus)
        from ..data.corpus import register_splits

        return register_splits({"data_dir": d.get("data_dir"), "seed": seed, "val_fraction": d["val_fraction"],
                                "test_fraction": d["test_fraction"], **dict(d["corpus"] or {})})
    from ..data import text_safety_splits

    return text_safety_splits(d.get("data_dir"), seed=seed, val_fraction=d["val_fraction"],
                              test_fraction=d["test_fraction"])


def build_offline(cfg: dict, text_features: Callable[[list[str]], "np.ndarray"]) -> TrainData:
    """I2P + COCO captions + safe art prompts (``../shared/data``) and images (:func:`offline_image_splits`).

    ``text_features(texts) -> (N, d)`` is the frozen text space used to pair prompts with safe captions.
    """
    d = cfg["data"]
    seed = data_seed(cfg)
    splits = text_splits(cfg)
    cap = d.get("max_per_source")

    def capped(examples):
        if cap is None:
            return list(examples)
        out, count = [], {}
        for e in examples:
            if count.get(e.source, 0) < int(cap):
                out.append(e)
                count[e.source] = count.get(e.source, 0) + 1
        return out

    train, val, test = capped(splits.train), capped(splits.val), capped(splits.test)
    emoji, em_parts = offline_image_splits(d, seed)

    texts, images = _Pool(), _Pool()
    from ..data import categories_to_multihot

    em_caption = emoji["caption"].tolist()
    em_path = emoji["path"].tolist()
    em_unsafe = emoji["unsafe"].to_numpy().astype(bool)
    em_source = emoji["source"].to_numpy().astype(str)
    em_cats = np.stack([categories_to_multihot(c) for c in emoji["categories"]]).astype(np.float32)

    # --- train families
    unsafe_tr = [e for e in train if e.label == 1]
    safe_tr = [e for e in train if e.label == 0]
    if not unsafe_tr or not safe_tr:
        raise InputError("training split needs both unsafe (I2P) and safe texts")
    u_feats = text_features([e.text for e in unsafe_tr])
    s_feats = text_features([e.text for e in safe_tr])
    from ..data import pair_nearest

    nearest = _pair_by_register(unsafe_tr, safe_tr, u_feats, s_feats, pair_nearest)
    fam_unsafe = _family([(texts.add(safe_tr[j].text), -1, texts.add(e.text), -1)
                          for e, j in zip(unsafe_tr, nearest.tolist())],
                         ts_cats=[e.multihot for e in unsafe_tr])
    fam_safe = _family([(texts.add(e.text), -1, -1, -1) for e in safe_tr])
    if d.get("balance") == "groups":
        from ..data.corpus import source_group

        fam_unsafe.weight = group_balanced([source_group(e.source) for e in unsafe_tr])
        fam_safe.weight = group_balanced([source_group(e.source) for e in safe_tr])

    tr_safe_em = [i for i in em_parts[0] if not em_unsafe[i]]
    tr_unsafe_em = [i for i in em_parts[0] if em_unsafe[i]]
    fam_safe_img = _family([(texts.add(em_caption[i]), images.add(em_path[i]), -1, -1) for i in tr_safe_em])
    families = {"unsafe_text": fam_unsafe, "safe_text": fam_safe, "safe_image": fam_safe_img}
    if tr_unsafe_em and tr_safe_em:
        cu = text_features([em_caption[i] for i in tr_unsafe_em])
        cs = text_features([em_caption[i] for i in tr_safe_em])
        near = pair_nearest(cu, cs).tolist()
        rows = [(texts.add(em_caption[tr_safe_em[j]]), images.add(em_path[tr_safe_em[j]]),
                 texts.add(em_caption[i]), images.add(em_path[i])) for i, j in zip(tr_unsafe_em, near)]
        cats = [em_cats[i] for i in tr_unsafe_em]
        families["unsafe_image"] = _family(rows, ts_cats=cats, is_cats=cats)

    def evalset(examples, em_idx) -> EvalSet:
        t_idx = np.array([texts.add(e.text) for e in examples], dtype=np.int64)
        i_idx = np.array([images.add(em_path[i]) for i in em_idx], dtype=np.int64)
        return EvalSet(
            text_idx=t_idx,
            text_label=np.array([e.label for e in examples], dtype=np.int64),
            text_multihot=np.stack([e.multihot for e in examples]).astype(np.float32) if examples else
            np.zeros((0, N_CAT), np.float32),
            text_source=np.array([e.source for e in examples]),
            text_hard=np.array([bool(e.hard) for e in examples]),
            image_idx=i_idx,
            image_label=em_unsafe[em_idx].astype(np.int64) if em_idx else np.zeros(0, np.int64),
            image_multihot=em_cats[em_idx] if em_idx else np.zeros((0, N_CAT), np.float32),
            pair_text=np.array([texts.add(em_caption[i]) for i in em_idx], dtype=np.int64),
            pair_image=i_idx.copy(),
            pair_unsafe=em_unsafe[em_idx] if em_idx else np.zeros(0, bool),
            image_source=em_source[em_idx] if em_idx else np.zeros(0, dtype=object),
        )

    info = {"train_unsafe_texts": len(unsafe_tr), "train_safe_texts": len(safe_tr), "images": len(emoji),
            "train_safe_images": len(tr_safe_em), "train_unsafe_images": len(tr_unsafe_em),
            "val_texts": len(val), "test_texts": len(test), "val_images": len(em_parts[1]),
            "test_images": len(em_parts[2]), "val_unsafe_images": int(em_unsafe[em_parts[1]].sum()),
            "test_unsafe_images": int(em_unsafe[em_parts[2]].sum())}
    return TrainData(texts.items, images.items, families, evalset(val, em_parts[1]), evalset(test, em_parts[2]),
                     info)


def build_visu(cfg: dict) -> TrainData:
    """ViSU quadruplets (official JSON layout) for train/val/test; images under ``coco_root``/``visu_root``."""
    from ..data import ViSUDataset, categories_to_multihot

    d = cfg["data"]
    texts, images = _Pool(), _Pool()
    sets = {}
    for split in ("train", "val", "test"):
        path = d.get(f"visu_{split}")
        if path is None:
            raise InputError(f"data.kind=visu needs data.visu_{split} (a ViSU JSON file)")
        ds = ViSUDataset(path, coco_root=d.get("coco_root"), visu_root=d.get("visu_root"))
        ds.validate()
        rows, cats = [], []
        for item in ds:
            rows.append((texts.add(item["safe_text"]), images.add(str(item["safe_image_path"])),
                         texts.add(item["nsfw_text"]), images.add(str(item["nsfw_image_path"]))))
            cats.append(categories_to_multihot(item.get("tag") or ""))
        sets[split] = (np.asarray(rows, np.int64), np.asarray(cats, np.float32))

    def evalset(rows, cats) -> EvalSet:
        n = len(rows)
        t_idx = np.concatenate([rows[:, 0], rows[:, 2]])
        i_idx = np.concatenate([rows[:, 1], rows[:, 3]])
        lab = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
        mh = np.concatenate([np.zeros_like(cats), cats])
        return EvalSet(t_idx, lab, mh, np.array(["visu_safe"] * n + ["visu_nsfw"] * n), np.zeros(2 * n, bool),
                       i_idx, lab.copy(), mh.copy(), t_idx.copy(), i_idx.copy(), lab.astype(bool),
                       quads=np.asarray(rows, np.int64))

    tr_rows, tr_cats = sets["train"]
    fams = {"quad": Family(tr_rows, tr_cats, tr_cats.copy())}
    return TrainData(texts.items, images.items, fams, evalset(*sets["val"]), evalset(*sets["test"]),
                     {"train_quadruplets": len(tr_rows)})


def epoch_order(data: TrainData, seed: int, epoch: int) -> np.ndarray:
    """The lead family's rows for one epoch: a permutation, or as many draws (with replacement) from its
    ``weight`` when it has one. Deterministic in seed/epoch."""
    fam = data.families[next(iter(data.families))]
    rng = np.random.default_rng([seed, epoch, 999])
    n = len(fam.rows)
    return rng.permutation(n) if fam.weight is None else rng.choice(n, size=n, replace=True, p=fam.weight)


def step_rows(data: TrainData, batch: dict[str, int], seed: int, epoch: int, step: int,
              epoch_perm: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Row indices of every family for one step (deterministic in seed/epoch/step)."""
    names = list(data.families)
    lead = names[0]
    bs = int(batch.get(lead, 32))
    out = [(lead, epoch_perm[step * bs:(step + 1) * bs])]
    rng = np.random.default_rng([seed, epoch, step])
    for name in names[1:]:
        fam = data.families[name]
        n = len(fam.rows)
        k = min(int(batch.get(name, 0)), n)
        if k > 0:
            out.append((name, rng.choice(n, size=k, replace=False, p=fam.weight)))
    return out


def steps_per_epoch(data: TrainData, batch: dict[str, int]) -> int:
    lead = next(iter(data.families))
    bs = int(batch.get(lead, 32))
    return max(1, -(-len(data.families[lead].rows) // bs))


def dataset_fingerprint(data: TrainData) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in data.texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    for p in data.images:
        h.update(Path(p).name.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def preflight(cfg: dict) -> dict:
    """What ``hysac train --dry-run`` prints: the config's outputs and, for offline data, the text split sizes and
    the image sources it will read — every data file opened and checked, nothing encoded or trained. Raises
    :class:`InputError` naming what is missing."""
    d = cfg["data"]
    out: dict = {"name": cfg.get("name"), "objective": cfg.get("objective"), "out_dir": str(cfg.get("out_dir")),
                 "export_dir": None if cfg.get("export_dir") is None else str(cfg["export_dir"]),
                 "backbone": dict(cfg.get("backbone") or {}), "epochs": cfg["optim"].get("epochs"),
                 "data": {"kind": d.get("kind")}}
    if d.get("kind") == "visu":
        for key in ("visu_train", "visu_val", "visu_test", "coco_root", "visu_root"):
            if d.get(key) is not None and not Path(d[key]).expanduser().exists():
                raise InputError(f"data.{key}: {d[key]} does not exist")
        return out
    seed = data_seed(cfg)
    splits = text_splits(cfg)
    out["data"]["texts"] = {k: len(getattr(splits, k)) for k in ("train", "val", "test")}
    images = {"openmoji": f"rendered at {d['openmoji_size']} px"}
    if d.get("clipart"):
        from ..data.clipart import load_openclipart

        images["clipart"] = len(load_openclipart(d.get("clipart_root"), max_safe=d.get("clipart_max_safe", 2000),
                                                 seed=seed))
    if d.get("photos"):
        from ..data.photos import load_photos

        images["photos"] = len(load_photos())
    out["data"]["images"] = images
    return out
