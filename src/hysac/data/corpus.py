"""A text safety corpus from every register: each register holds both classes, so register alone predicts nothing.

Sources (all read from the data folder, :func:`hysac.data.default_data_dir`, or any folder given) and how each
enters, with the reason (label noise handled on purpose):

=================  ==========  ===================================================================================
source             group       rule
=================  ==========  ===================================================================================
``i2p``            prompts     unsafe **only when the text itself says so**: ``prompt_toxicity >= 0.3`` or an
                               unsafe term of :data:`UNSAFE_TERMS` / LDNOOBW. I2P labels come from the images
                               Stable Diffusion produced, not from the text (``hard == 1`` is exactly
                               ``inappropriate_percentage >= 50``, and most such prompts read as benign), so the
                               rest is left out — neither safe nor unsafe.
``sd_prompts``     prompts     safe where ``keyword_flag == 0``. Flagged rows (770, ~8%: the data README's
                               crude pattern — nude, blood, gun, horror, skull, demon…) are safe when no
                               :data:`UNSAFE_TERMS` / LDNOOBW term matches (597: horror, skull, vampire and
                               zombie art — the dark-but-safe art a prompt filter must pass), else left out.
``safe_art``       prompts     safe.
``parti``          prompts     safe (PartiPrompts rows of ``safe_requests.csv``).
``coco``           captions    safe (``max_coco`` rows: the register is simple and large).
``harmful``        requests    unsafe, categories where the source gives them (AdvBench rows: none).
``alpaca``         requests    safe.
``moderation``     moderation  as labelled (safe / unsafe with categories).
``tweets``         tweets      ``hate`` → unsafe (hate); ``offensive`` (mostly profanity aimed at people) →
                               unsafe (harassment), capped at ``max_offensive``; ``neither`` → safe only when every
                               crowd vote said neither (a split vote is not reliably safe).
``extra:<name>``   itself      the user's own labelled tables (``extra``: one source and one group per file,
                               :func:`load_extra`): a register the data folder lacks, as labelled.
``contrast``       contrast    hand-written minimal pairs (:mod:`hysac.data.contrast`, with ``contrast``): the
                               same trigger word, group of people, scene, thing, written task, act, claim about a group
                               or strong words safe in one text and unsafe in the other, so a word alone predicts
                               nothing. Written for this corpus, in every fold of leave-one-source-out (it is not
                               a source of the data folder).
=================  ==========  ===================================================================================

**Style augmentation.** A seeded share of safe captions / requests / tweets and of unsafe requests / moderation
texts / tweets get clip-interrogator's own template ``{text}, {medium} {artist}, {trending}, {movement},
{flavors}`` from ``style_words/`` (source ``<source>+style``, group ``styled``), so artistic style appears on both
sides. A styled copy always lands in the split of its original.

**Splits** are by source item (after cross-source de-duplication: a text labelled unsafe anywhere stays unsafe),
per source with ``seed``; :func:`leave_out_group` gives the leave-one-source-group-out variant.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hysac.data.categories import CATEGORIES, categories_to_multihot, parse_categories
from hysac.data.contrast import ACT_FRAMES, CLAIMS_PER_GROUP, FRAMES_PER_ACT, FRAMES_PER_STILL, GROUP_HATE_REQUESTS, \
    GROUP_REQUESTS, GROUP_SAFE_REQUESTS, STANCE_CLAIMS, STILL_FRAMES, WITH_REPLIES, contrast_texts
from hysac.data.paths import resolve_data_file
from hysac.data.tables import label_value, read_table
from hysac.data.text import TextExample, TextSplits, clean_text, load_coco_captions, load_i2p, \
    load_ldnoobw, load_safe_art_prompts, split_indices
from hysac.errors import InputError
from hysac.inputs import check_settings

#: source group of every source (the unit held out by leave-one-source-out)
GROUPS: dict[str, str] = {
    "i2p": "prompts", "sd_prompts": "prompts", "safe_art": "prompts", "parti": "prompts",
    "coco": "captions", "harmful": "requests", "alpaca": "requests", "moderation": "moderation",
    "tweets": "tweets", "contrast": "contrast",
}

#: plain-language unsafe terms per category (written for this rule, not taken from any data set); an I2P prompt
#: needs one of these (whole word / phrase) or a toxic score to enter as unsafe
UNSAFE_TERMS: dict[str, tuple[str, ...]] = {
    "violence": ("blood", "bloody", "bleeding", "gore", "gory", "kill", "killing", "killed", "murder", "murdered",
                 "stab", "stabbing", "stabbed", "shooting", "shot dead", "corpse", "corpses", "dead body",
                 "dead bodies", "torture", "tortured", "decapitated", "beheaded", "massacre", "war crime",
                 "slaughter", "execution", "violent", "violence", "fight", "beating", "assault"),
    "sexual": ("nude", "nudity", "naked", "nsfw", "porn", "pornographic", "sex", "sexual", "sexy", "topless",
               "erotic", "lingerie", "breasts", "genitals", "orgasm", "stripper", "hentai"),
    "self-harm": ("suicide", "suicidal", "self harm", "self-harm", "cutting myself", "noose", "hanging himself",
                  "hanging herself", "overdose", "slit wrists", "kill myself", "anorexia"),
    "shocking": ("gruesome", "mutilated", "mutilation", "rotting", "rotten flesh", "vomit", "entrails", "guts",
                 "disembowel", "maggots", "horrifying", "grotesque", "dismembered", "disgusting"),
    "hate": ("nazi", "swastika", "kkk", "racist", "racism", "white power", "hitler", "genocide", "slur"),
    "harassment": ("idiot", "stupid", "ugly", "loser", "moron", "worthless", "shut up", "humiliated", "bully"),
    "illegal activity": ("cocaine", "heroin", "meth", "crack pipe", "drug dealer", "drugs", "smoking weed",
                         "robbery", "robbing", "stealing", "shoplifting", "bomb", "terrorist", "hacking"),
}

_TEMPLATE_PARTS = ("medium", "artist", "trending", "movement", "flavors")
_TRENDING = ("trending on artstation", "trending on cgsociety", "featured on pixiv", "artstation hq",
             "deviantart contest winner", "behance contest winner", "unsplash contest winner", "pixabay contest winner")


#: count settings of :class:`CorpusConfig` and the most each can be (None: no upper bound): a contrast family draws
#: that many of its frames / claims / requests without replacement
_COUNT_LIMITS: dict[str, int | None] = {
    "max_coco": None, "max_offensive": None, "style_max_words": None,
    "contrast_group_requests": min(len(GROUP_SAFE_REQUESTS), len(GROUP_HATE_REQUESTS)),
    "contrast_acts": len(ACT_FRAMES), "contrast_stance": len(STANCE_CLAIMS), "contrast_stills": len(STILL_FRAMES)}


@dataclass
class CorpusConfig:
    data_dir: str | None = None
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    max_coco: int | None = 6000
    max_offensive: int | None = 3000
    i2p_min_toxicity: float = 0.3
    style_fraction: float = 0.35  # share of eligible texts that also get a styled copy
    style_max_words: int = 40  # only texts up to this many words are styled (long chat texts stay as they are)
    contrast: bool = True  # add the hand-written minimal pairs of hysac.data.contrast (source / group "contrast")
    contrast_group_requests: int = GROUP_REQUESTS  # hateful and respectful requests per group (contrast.GROUP_*_REQUESTS); 0: none
    contrast_acts: int = FRAMES_PER_ACT  # frames per pair of the contrast family "acts" (hysac.data.contrast.ACTS); 0: none
    contrast_stance: int = CLAIMS_PER_GROUP  # claims per group of the opt-in contrast family "stance" (contrast.STANCE_CLAIMS); 0: none
    contrast_replies: bool = WITH_REPLIES  # add the opt-in contrast family "replies" (contrast.REPLIES)
    contrast_stills: int = FRAMES_PER_STILL  # frames per pair of the opt-in contrast family "stills" (contrast.STILLS); 0: none
    # the user's own labelled tables (CSV / JSONL / ...: text, label safe|unsafe, categories of unsafe rows), each a
    # source and a group of its own named "extra:<file stem>" (load_extra); a path or a list of paths
    extra: tuple[str, ...] | list[str] | str = ()
    leave_out: str | None = None  # a source group held out: its texts are the test split, none train or validate
    # with leave_out: None holds the whole group out; k >= 0 keeps k texts per class of the group's training split
    # in training and k per class of its validation split in validation, and tests on the group's test split only
    # (a learning curve over k shares one test set; k = 0 is the unseen-register point on that set)
    leave_out_keep: int | None = None

    def __post_init__(self) -> None:
        """Counts and shares out of range are refused here, named, before any data is read."""
        for key, most in _COUNT_LIMITS.items():
            v = getattr(self, key)
            if v is not None and (v < 0 or (most is not None and v > most)):
                raise InputError(f"data.corpus.{key}: must be between 0 and {most}, got {v}" if most is not None
                                 else f"data.corpus.{key}: must be >= 0, got {v}")
        if not 0 <= self.style_fraction <= 1:
            raise InputError(f"data.corpus.style_fraction: must be between 0 and 1, got {self.style_fraction}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "CorpusConfig":
        d = dict(d or {})
        check_settings(cls, d, "data.corpus", skip=("extra",))  # a bad value is named, not a traceback
        extra = d.get("extra") or ()
        if isinstance(extra, (str, Path)):
            extra = [extra]
        if not isinstance(extra, (list, tuple)) or not all(isinstance(x, (str, Path)) for x in extra):
            raise InputError(f"data.corpus.extra: expected a path or a list of paths, got {extra!r}")
        d["extra"] = tuple(str(x) for x in extra)
        return cls(**d)


# ------------------------------------------------------------------------------------------------ term matching
def _term_regex(terms) -> re.Pattern:
    alts = sorted({re.escape(t.lower()) for t in terms if t.strip()}, key=len, reverse=True)
    return re.compile(r"(?<![a-z])(?:" + "|".join(alts) + r")(?![a-z])")


def unsafe_term_categories(text: str, extra: re.Pattern | None = None) -> list[str]:
    """Categories whose :data:`UNSAFE_TERMS` occur in ``text`` (whole words, case-insensitive); ``extra`` (e.g.
    the LDNOOBW list) adds ``"sexual"`` when it matches and nothing else does."""
    low = text.lower()
    cats = [c for c in CATEGORIES if c in _CAT_RE and _CAT_RE[c].search(low)]
    if not cats and extra is not None and extra.search(low):
        cats = ["sexual"]
    return cats


_CAT_RE = {c: _term_regex(t) for c, t in UNSAFE_TERMS.items()}


# ------------------------------------------------------------------------------------------------ loaders
def _frame(df: pd.DataFrame, column: str, path) -> pd.DataFrame:
    if column not in df.columns:
        raise InputError(f"{path}: missing column {column!r} (columns: {', '.join(map(str, df.columns))})")
    df = df.copy()
    df["text"] = [clean_text(v) for v in df[column]]
    return df[df["text"] != ""]


def _read(name: str, data_dir) -> tuple[pd.DataFrame, Path]:
    p = resolve_data_file(name, None, data_dir)
    return read_table(p), p


def load_register_sources(cfg: CorpusConfig) -> pd.DataFrame:
    """Every source as one frame: ``text``, ``source``, ``group``, ``label`` (1 unsafe), ``categories`` (list)."""
    rows: list[pd.DataFrame] = []
    dd = cfg.data_dir
    rng = np.random.default_rng(cfg.seed)

    def add(texts, source, label, cats):
        rows.append(pd.DataFrame({"text": list(texts), "source": source, "group": source_group(source),
                                  "label": label if isinstance(label, (list, np.ndarray)) else [label] * len(texts),
                                  "categories": list(cats)}))

    # prompts: I2P only where the text carries the unsafety
    i2p = load_i2p(data_dir=dd)
    bad_words = _term_regex(load_ldnoobw(data_dir=dd))
    tox = pd.to_numeric(i2p.get("prompt_toxicity", pd.Series(0.0, index=i2p.index)), errors="coerce").fillna(0)
    keep, cats = [], []
    for text, t, given in zip(i2p["text"], tox, i2p["categories"]):
        found = unsafe_term_categories(text, bad_words)
        if found or t >= cfg.i2p_min_toxicity:
            keep.append(text)
            cats.append(found or list(given) or ["shocking"])
    add(keep, "i2p", 1, cats)
    sd, p = _read("sd_prompts.csv", dd)
    sd = _frame(sd, "prompt", p)
    if "keyword_flag" in sd.columns:
        flagged = (pd.to_numeric(sd["keyword_flag"], errors="coerce").fillna(1) != 0).to_numpy()
        keep = ~flagged  # the term rule runs on the flagged rows only
        keep[flagged] = [not unsafe_term_categories(t, bad_words) for t in sd["text"][flagged]]
        sd = sd[keep]
    add(sd["text"], "sd_prompts", 0, [[]] * len(sd))
    art = load_safe_art_prompts(data_dir=dd)
    add(art["text"], "safe_art", 0, [[]] * len(art))
    sr, p = _read("safe_requests.csv", dd)
    sr = _frame(sr, "prompt", p)
    src = sr["source"].astype(str) if "source" in sr.columns else pd.Series("alpaca-eval", index=sr.index)
    parti = sr[src.str.startswith("parti")]
    alpaca = sr[~src.str.startswith("parti")]
    add(parti["text"], "parti", 0, [[]] * len(parti))
    add(alpaca["text"], "alpaca", 0, [[]] * len(alpaca))
    # captions
    coco = load_coco_captions(data_dir=dd)
    if cfg.max_coco is not None and len(coco) > cfg.max_coco:
        coco = coco.iloc[np.sort(rng.choice(len(coco), cfg.max_coco, replace=False))]
    add(coco["text"], "coco", 0, [[]] * len(coco))
    # requests
    hr, p = _read("harmful_requests.csv", dd)
    hr = _frame(hr, "prompt", p)
    hcats = [parse_categories(v) if isinstance(v, str) else [] for v in hr.get("categories", [None] * len(hr))]
    hcats = [c or (unsafe_term_categories(t) or ["illegal activity"]) for c, t in zip(hcats, hr["text"])]
    add(hr["text"], "harmful", 1, hcats)
    # moderation samples
    mo, p = _read("moderation_samples.csv", dd)
    mo = _frame(mo, "prompt", p)
    lab = (mo["label"].astype(str).str.lower() == "unsafe").astype(int).to_numpy()
    mcats = [parse_categories(v) if (isinstance(v, str) and y) else [] for v, y in zip(mo["categories"], lab)]
    add(mo["text"], "moderation", lab, mcats)
    # tweets
    tw, p = _read("tweets_hate_offensive.csv", dd)
    tw = _frame(tw, "prompt", p)
    tw["text"] = [clean_text(re.sub(r"(@user\s*)+", "@user ", re.sub(r"https?://\S+|&#?\w+;", " ",
                                                                  re.sub(r"@\w+:?", "@user", t))))
                  for t in tw["text"]]
    tw = tw[tw["text"].str.len() > 0]
    votes = tw[["votes_hate", "votes_offensive", "votes_neither"]].apply(pd.to_numeric, errors="coerce").fillna(0)
    hate = tw[tw["label"] == "hate"]
    off = tw[tw["label"] == "offensive"]
    if cfg.max_offensive is not None and len(off) > cfg.max_offensive:
        off = off.iloc[np.sort(rng.choice(len(off), cfg.max_offensive, replace=False))]
    neither = tw[(tw["label"] == "neither") & (votes["votes_neither"] == votes.sum(axis=1))]
    add(pd.concat([hate["text"], off["text"], neither["text"]]), "tweets",
        [1] * len(hate) + [1] * len(off) + [0] * len(neither),
        [["hate", "harassment"]] * len(hate) + [["harassment"]] * len(off) + [[]] * len(neither))
    # the user's own registers
    names: dict[str, str] = {}
    for path in cfg.extra:
        ex, name = load_extra(path)
        if name in names:
            raise InputError(f"data.corpus.extra: {names[name]} and {path} would both be the register {name!r}; "
                             "rename one file")
        names[name] = str(path)
        add(ex["text"], name, ex["label"].to_numpy(), ex["categories"].tolist())
    if cfg.contrast:
        ct = contrast_texts(seed=cfg.seed, frames_per_act=cfg.contrast_acts,
                            group_requests=cfg.contrast_group_requests, claims_per_group=cfg.contrast_stance,
                            replies=cfg.contrast_replies, frames_per_still=cfg.contrast_stills)
        add(ct["text"], "contrast", ct["label"].to_numpy(), ct["categories"])
    df = pd.concat(rows, ignore_index=True)
    # de-duplicate across sources: unsafe wins (a text labelled unsafe anywhere stays unsafe)
    df = df.sort_values("label", ascending=False, kind="stable").drop_duplicates("text", keep="first")
    return df.sort_index().reset_index(drop=True)


EXTRA_PREFIX = "extra:"


def load_extra(path) -> tuple[pd.DataFrame, str]:
    """One labelled table of the user's own register (any :func:`~hysac.data.tables.read_table` format): ``text``,
    ``label`` (``safe`` / ``unsafe``, 0 / 1, ...: :func:`~hysac.data.tables.label_value`) and, for unsafe rows, ``categories`` (ours, comma-separated; where
    the column or the cell is empty, the categories of :data:`UNSAFE_TERMS` found in the text). Empty texts are
    skipped.

    Returns:
        the rows (``text``, ``label`` 0/1, ``categories`` lists) and the source name ``"extra:<file stem>"``, which
        is also its source group: per-register thresholds, group balance, pairing and ``leave_out`` treat it as they
        treat the data folder's groups.

    Raises:
        InputError naming the file (and the data row, 1-based, header not counted) for a missing column, a label
        that is neither safe nor unsafe, an unknown category, an unsafe text with no category, or no text at all.
    """
    from hysac.data.categories import split_categories

    p = Path(path).expanduser()
    df = read_table(p)
    for col in ("text", "label"):
        if col not in df.columns:
            raise InputError(f"{p}: missing column {col!r} (columns: {', '.join(map(str, df.columns))}); an extra "
                             "register needs text, label (safe / unsafe) and, for unsafe rows, categories")
    has_cats = "categories" in df.columns
    texts, labels, cats = [], [], []
    for i, rec in enumerate(df.to_dict("records"), start=1):
        text = clean_text(rec["text"]) if isinstance(rec["text"], str) else ""
        if not text:
            continue
        raw = rec["label"]
        lab = label_value(raw)
        if lab is None:
            raise InputError(f"{p}: row {i}: label {raw!r} is neither safe nor unsafe (or 0 / 1)")
        found: list[str] = []
        if lab:
            value = rec.get("categories") if has_cats else None
            if isinstance(value, str) and value.strip():
                found, unknown = split_categories(value)
                if unknown:
                    raise InputError(f"{p}: row {i}: unknown categor{'ies' if len(unknown) > 1 else 'y'} "
                                     f"{', '.join(map(repr, unknown))} (known: {', '.join(CATEGORIES)})")
            found = found or unsafe_term_categories(text)
            if not found:
                raise InputError(f"{p}: row {i}: unsafe text with no category; give a categories column (one or "
                                 f"more of: {', '.join(CATEGORIES)})")
        texts.append(text)
        labels.append(lab)
        cats.append(found)
    if not texts:
        raise InputError(f"{p}: no texts (every text cell is empty)")
    name = EXTRA_PREFIX + (re.sub(r"[^a-z0-9_-]+", "-", p.name.split(".")[0].lower()).strip("-") or "table")
    return pd.DataFrame({"text": texts, "label": labels, "categories": cats}), name


# ------------------------------------------------------------------------------------------------ style
class Styler:
    """clip-interrogator's template ``{text}, {medium} {artist}, {trending}, {movement}, {flavors}`` with words drawn
    (seeded) from ``style_words/``."""

    def __init__(self, data_dir=None, seed: int = 0):
        from hysac.data.paths import default_data_dir

        folder = (Path(data_dir).expanduser() if data_dir is not None else default_data_dir()) / "style_words"
        self.words = {}
        for name, fname in (("artist", "artists.txt"), ("medium", "mediums.txt"), ("movement", "movements.txt"),
                            ("flavors", "flavors_sfw.txt")):
            path = Path(folder) / fname
            try:
                items = [clean_text(x) for x in path.read_text(encoding="utf-8").splitlines()]
            except (OSError, UnicodeDecodeError) as e:
                raise InputError(f"{path}: cannot read style words: {e}") from None
            self.words[name] = [x for x in items if x]
            if not self.words[name]:
                raise InputError(f"{path}: no style words")
        self.rng = np.random.default_rng(seed)

    def __call__(self, text: str) -> str:
        w, r = self.words, self.rng
        medium = w["medium"][r.integers(len(w["medium"]))]
        artist = w["artist"][r.integers(len(w["artist"]))]
        parts = [text.rstrip(" .,"), f"{medium} by {artist}"]
        if r.random() < 0.6:
            parts.append(_TRENDING[r.integers(len(_TRENDING))])
        if r.random() < 0.5:
            parts.append(w["movement"][r.integers(len(w["movement"]))])
        parts += [w["flavors"][i] for i in r.choice(len(w["flavors"]), size=int(r.integers(1, 4)), replace=False)]
        return ", ".join(parts)


#: sources whose short texts get styled copies (prompt sources are styled already)
STYLED_SOURCES = ("coco", "alpaca", "harmful", "moderation", "tweets")


# ------------------------------------------------------------------------------------------------ splits
#: each source's slot in the split seed (``seed + 17 * slot + label``), fixed by name: a source added later takes the
#: next slot, so adding one never reshuffles the splits of the others
_SPLIT_SLOT: dict[str, int] = {s: k for k, s in enumerate(
    ("alpaca", "coco", "harmful", "i2p", "moderation", "parti", "safe_art", "sd_prompts", "tweets", "contrast"))}


def register_splits(cfg: CorpusConfig | dict | None = None) -> TextSplits:
    """Train/val/test lists of :class:`~hysac.data.text.TextExample` over every register (see the module doc).
    ``TextExample.source`` is the source name (``"<source>+style"`` for styled copies)."""
    cfg = cfg if isinstance(cfg, CorpusConfig) else CorpusConfig.from_dict(cfg)
    if cfg.val_fraction < 0 or cfg.test_fraction < 0 or cfg.val_fraction + cfg.test_fraction >= 1:
        raise InputError("data.corpus: need val_fraction, test_fraction >= 0 with sum < 1")
    df = load_register_sources(cfg)
    styler = Styler(cfg.data_dir, seed=cfg.seed + 7)
    fr = (1 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
    parts: list[list[TextExample]] = [[], [], []]
    style_rng = np.random.default_rng(cfg.seed + 3)
    seen: set[str] = set(df["text"])
    for source in sorted(df["source"].unique()):
        sub = df[df["source"] == source].reset_index(drop=True)
        # a source of its own (extra:<name>) takes a slot from its name, so its splits never depend on the others
        k = _SPLIT_SLOT.get(source, 100 + zlib.crc32(source.encode()) % 100_000)
        for lab in (0, 1):  # stratified by label within the source
            idx = np.flatnonzero(sub["label"].to_numpy() == lab)
            for part, sel in zip(parts, split_indices(len(idx), fr, seed=cfg.seed + 17 * k + lab)):
                for i in idx[sel]:
                    row = sub.iloc[int(i)]
                    mh = categories_to_multihot(row["categories"]) if lab else np.zeros(len(CATEGORIES), np.float32)
                    part.append(TextExample(row["text"], int(lab), mh, False, source))
                    if (source in STYLED_SOURCES and len(row["text"].split()) <= cfg.style_max_words
                            and style_rng.random() < cfg.style_fraction):
                        styled = styler(row["text"])
                        if styled not in seen:
                            seen.add(styled)
                            part.append(TextExample(styled, int(lab), mh, False, f"{source}+style"))
    rng = np.random.default_rng(cfg.seed)
    splits = TextSplits(*[[p[i] for i in rng.permutation(len(p))] for p in parts])
    if cfg.leave_out is not None:
        known = set(GROUPS.values()) | set(df["group"])
        if cfg.leave_out not in known:
            raise InputError(f"data.corpus.leave_out: unknown source group {cfg.leave_out!r}; known: "
                             f"{sorted(known)}")
        if cfg.leave_out_keep is None:
            keep, held = leave_out_group(splits, cfg.leave_out)
            return TextSplits(keep.train, keep.val, held)
        if int(cfg.leave_out_keep) < 0:
            raise InputError(f"data.corpus.leave_out_keep: must be >= 0 texts per class, got {cfg.leave_out_keep}")
        splits = few_of_group(splits, cfg.leave_out, int(cfg.leave_out_keep))
    elif cfg.leave_out_keep is not None:
        raise InputError("data.corpus.leave_out_keep: only with data.corpus.leave_out (the group it keeps a few of)")
    return splits


def source_group(source: str) -> str:
    """The held-out unit of a source name (styled copies belong to their original's group)."""
    return GROUPS.get(source.split("+", 1)[0], source)


def register_key(source: str) -> str:
    """The register a text belongs to for pairing and per-register thresholds: its source group, with styled
    copies (``"<source>+style"``) as a register of their own."""
    return source_group(source) + ("+style" if "+style" in source else "")


def leave_out_group(splits: TextSplits, group: str) -> tuple[TextSplits, list[TextExample]]:
    """``splits`` without any text of ``group`` (styled copies included), and every text of that group (all three
    splits) as the held-out test set."""
    held = [e for part in splits for e in part if source_group(e.source) == group]
    keep = TextSplits(*[[e for e in part if source_group(e.source) != group] for part in splits])
    return keep, held


def few_of_group(splits: TextSplits, group: str, k: int) -> TextSplits:
    """``splits`` with only ``k`` texts per class of ``group`` left in training and ``k`` per class in validation
    (the first of each, in the splits' seeded order), and only ``group``'s test-split texts as the test set. Styled
    copies stay in their original's split, so no test text has a near-copy in training."""
    def few(part: list[TextExample]) -> list[TextExample]:
        taken = {0: 0, 1: 0}
        out = []
        for e in part:
            if source_group(e.source) != group:
                out.append(e)
            elif taken[e.label] < k:
                taken[e.label] += 1
                out.append(e)
        return out

    return TextSplits(few(splits.train), few(splits.val),
                      [e for e in splits.test if source_group(e.source) == group])


__all__ = ["CorpusConfig", "EXTRA_PREFIX", "GROUPS", "STYLED_SOURCES", "Styler", "UNSAFE_TERMS", "few_of_group",
           "leave_out_group", "load_extra", "load_register_sources", "register_key", "register_splits", "source_group",
           "unsafe_term_categories"]
