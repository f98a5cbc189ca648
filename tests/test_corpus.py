"""The register corpus (hysac.data.corpus) on the shared data: both classes in every register, the label-noise
rules, styled copies beside their originals, and leave-one-source-group-out."""

import re

import numpy as np
import pandas as pd
import pytest

from hysac.data import default_data_dir
from hysac.data.corpus import (CorpusConfig, Styler, leave_out_group, load_register_sources, register_splits,
                               source_group, unsafe_term_categories)
from hysac.errors import InputError

needs_data = pytest.mark.skipif(not (default_data_dir() / "sd_prompts.csv").is_file(), reason="dev data not found")


def test_unsafe_terms_match_whole_words_only():
    assert unsafe_term_categories("a bloody knife fight") == ["violence"]
    assert unsafe_term_categories("a photo of a naked man") == ["sexual"]
    assert unsafe_term_categories("skilled craftsmanship, sextant on a desk") == []  # no 'sex' inside words
    assert unsafe_term_categories("a bowl of fruit") == []


def test_unknown_corpus_key_is_refused():
    with pytest.raises(InputError, match="unknown keys"):
        CorpusConfig.from_dict({"max_cocoa": 3})


@pytest.mark.parametrize("key,value,message", [
    ("max_coco", -1, "data.corpus.max_coco: must be >= 0, got -1"),
    ("max_offensive", -5, "data.corpus.max_offensive: must be >= 0, got -5"),
    ("style_max_words", -1, "data.corpus.style_max_words: must be >= 0, got -1"),
    ("style_fraction", 1.5, "data.corpus.style_fraction: must be between 0 and 1, got 1.5"),
    ("contrast_acts", 11, "data.corpus.contrast_acts: must be between 0 and 10, got 11"),
    ("contrast_stance", 99, "data.corpus.contrast_stance: must be between 0 and 14, got 99"),
    ("contrast_stills", -1, "data.corpus.contrast_stills: must be between 0 and 10, got -1"),
    ("contrast_group_requests", 50, "data.corpus.contrast_group_requests: must be between 0 and"),
])
def test_out_of_range_counts_are_refused_by_name(key, value, message):
    """A count the corpus cannot draw (more frames than a family has, a negative cap) is one named line, not a
    numpy traceback from deep in the sampling."""
    with pytest.raises(InputError, match=re.escape(message)):
        CorpusConfig.from_dict({key: value})
    CorpusConfig.from_dict({key: 0})  # the lower end is allowed


@needs_data
def test_styler_uses_the_template_and_is_seeded():
    a, b = Styler(seed=1), Styler(seed=1)
    s = a("a cat on a sofa")
    assert s == b("a cat on a sofa")
    assert s.startswith("a cat on a sofa, ") and " by " in s and s.count(",") >= 2


@pytest.fixture(scope="module")
def frame():
    return load_register_sources(CorpusConfig())


@needs_data
def test_every_register_but_captions_holds_both_classes(frame):
    by = frame.groupby("group")["label"].agg(["min", "max"])
    for group, row in by.iterrows():
        if group != "captions":
            assert row["min"] == 0 and row["max"] == 1, group
    assert frame["text"].is_unique


@needs_data
def test_label_noise_rules(frame):
    data = default_data_dir()
    i2p = frame[frame["source"] == "i2p"]
    raw = pd.read_csv(data / "i2p_dev.csv")
    assert 0 < len(i2p) < 0.5 * len(raw)  # only the prompts whose text says it
    assert (i2p["label"] == 1).all()
    sd = pd.read_csv(data / "sd_prompts.csv")
    flagged = set(sd.loc[sd["keyword_flag"] == 1, "prompt"].str.split().str.join(" "))
    kept = flagged & set(frame.loc[frame["source"] == "sd_prompts", "text"])
    assert 0.5 * len(flagged) < len(kept) < len(flagged)  # dark art stays, as safe; the rest is left out
    assert not [t for t in kept if unsafe_term_categories(t)]
    assert (frame.loc[frame["source"] == "sd_prompts", "label"] == 0).all()
    tw = frame[frame["source"] == "tweets"]
    assert set(tw["label"]) == {0, 1}
    raw_tw = pd.read_csv(data / "tweets_hate_offensive.csv")
    assert (tw["label"] == 0).sum() <= (raw_tw["label"] == "neither").sum()


@needs_data
def test_splits_disjoint_styled_copies_follow_their_original():
    sp = register_splits({"max_coco": 800, "max_offensive": 400})
    parts = [{e.text for e in p} for p in sp]
    assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
    for part in sp:
        originals = {e.text for e in part if "+style" not in e.source}
        styled = [e for e in part if "+style" in e.source]
        assert styled
        for e in styled[:200]:
            base = e.text.split(", ")[0]
            assert any(o.startswith(base) for o in originals), e.text
    srcs = {e.source for e in sp.val}
    assert {"coco", "harmful", "alpaca", "moderation", "tweets", "sd_prompts", "i2p"} <= srcs
    keep, held = leave_out_group(sp, "requests")
    assert held and all(source_group(e.source) == "requests" for e in held)
    assert not any(source_group(e.source) == "requests" for p in keep for e in p)
    assert np.mean([e.label for e in held]) > 0.2


def test_leave_out_config_makes_the_group_the_test_split(monkeypatch):
    from hysac.data import corpus as C
    from hysac.data.text import TextExample

    def fake(cfg):
        import pandas as pd

        rows = [(f"text {g} {i}", s, i % 2) for g, s in (("prompts", "sd_prompts"), ("requests", "harmful"))
                for i in range(40)]
        return pd.DataFrame({"text": [r[0] for r in rows], "source": [r[1] for r in rows],
                             "group": [C.GROUPS[r[1]] for r in rows], "label": [r[2] for r in rows],
                             "categories": [["violence"] if r[2] else [] for r in rows]})

    monkeypatch.setattr(C, "load_register_sources", fake)
    monkeypatch.setattr(C, "Styler", lambda *a, **k: (lambda t: t + ", oil painting"))
    splits = C.register_splits({"leave_out": "requests", "style_fraction": 0.0})
    assert splits.test and all(C.source_group(e.source) == "requests" for e in splits.test)
    assert len(splits.test) == 40
    assert all(C.source_group(e.source) != "requests" for e in splits.train + splits.val)
    assert isinstance(splits.test[0], TextExample)
    with pytest.raises(InputError, match="leave_out"):
        C.register_splits({"leave_out": "nonsense", "style_fraction": 0.0})

    # a few of the group back in training and validation; the test set is the group's own test split, the same
    # texts for every k, and disjoint from what trains
    whole = C.register_splits({"style_fraction": 0.0})
    group_test = {e.text for e in whole.test if C.source_group(e.source) == "requests"}
    for k in (0, 3):
        few = C.register_splits({"leave_out": "requests", "leave_out_keep": k, "style_fraction": 0.0})
        assert {e.text for e in few.test} == group_test
        for part, full in ((few.train, whole.train), (few.val, whole.val)):
            mine = [e for e in part if C.source_group(e.source) == "requests"]
            assert sorted(e.label for e in mine) == [0] * min(k, sum(1 for e in full if e.source == "harmful"
                                                                    and e.label == 0)) + [1] * k
            assert len([e for e in part if C.source_group(e.source) != "requests"]) == \
                len([e for e in full if C.source_group(e.source) != "requests"])
        assert not {e.text for e in few.train + few.val} & group_test
    with pytest.raises(InputError, match="leave_out_keep"):
        C.register_splits({"leave_out": "requests", "leave_out_keep": -1, "style_fraction": 0.0})
    with pytest.raises(InputError, match="only with data.corpus.leave_out"):
        C.register_splits({"leave_out_keep": 3, "style_fraction": 0.0})


def test_contrast_pairs_share_their_words_across_classes():
    """Every trigger verb and every named group occurs in both classes, so the word alone predicts nothing; the
    enumeration is seeded and every unsafe text carries a category."""
    import re

    from hysac.data.categories import CATEGORIES
    from hysac.data.contrast import GROUP_NAMES, SENSES, TASKS, contrast_texts

    a, b = contrast_texts(seed=3), contrast_texts(seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(contrast_texts(seed=4))
    assert a["text"].is_unique
    for fam in ("senses", "groups", "scenes", "tasks", "chat"):
        assert set(a.loc[a["family"] == fam, "label"]) == {0, 1}, fam
    tasks = a[a["family"] == "tasks"]
    for kind in TASKS:  # the same kind of written task is asked for on both sides
        assert set(tasks.loc[tasks["text"].str.contains(f" {kind} ", regex=False), "label"]) == {0, 1}, kind
    senses = a[a["family"] == "senses"]
    for verb in SENSES:
        has = senses["text"].str.contains(rf"\b{re.escape(verb)}\b")
        assert set(senses.loc[has, "label"]) == {0, 1}, verb
    groups = a[a["family"] == "groups"]
    for g in GROUP_NAMES:
        assert set(groups.loc[groups["text"].str.contains(g, regex=False), "label"]) == {0, 1}, g
    unsafe = a[a["label"] == 1]
    assert all(c and set(c) <= set(CATEGORIES) for c in unsafe["categories"])
    assert all(c == [] for c in a.loc[a["label"] == 0, "categories"])


def test_acts_and_group_requests_put_each_frame_on_both_sides():
    """The ``acts`` family writes every (harmless, harmful) pair of ACTS in the same frames, and the request register
    of the ``groups`` family names every group on both sides: a frame or a group alone predicts nothing. Both can be
    turned off (0)."""
    from hysac.data.contrast import ACT_FRAMES, ACTS, GROUP_NAMES, contrast_texts

    d = contrast_texts(seed=0, frames_per_act=3, group_requests=2)
    acts = d[d["family"] == "acts"]
    assert len(acts) == 2 * 3 * len(ACTS)
    for harmless, harmful, cats in ACTS:
        safe_frames = {t.replace(harmless, "{a}") for t in acts.loc[acts["label"] == 0, "text"] if harmless in t}
        bad_frames = {t.replace(harmful, "{a}") for t in acts.loc[acts["label"] == 1, "text"] if harmful in t}
        assert safe_frames == bad_frames and len(safe_frames) == 3 and safe_frames <= set(ACT_FRAMES), harmless
        assert set(acts.loc[acts["text"].str.contains(harmful, regex=False), "categories"].iloc[0]) == set(cats.split(";"))
    groups = d[d["family"] == "groups"]
    assert len(groups) == 2 * (6 + 2) * len(GROUP_NAMES)
    off = contrast_texts(seed=0, frames_per_act=0, group_requests=0)
    assert "acts" not in set(off["family"]) and len(off[off["family"] == "groups"]) == 2 * 6 * len(GROUP_NAMES)
    from hysac.data.corpus import CorpusConfig

    assert CorpusConfig.from_dict({"contrast_acts": 0}).contrast_acts == 0


def test_stance_and_replies_put_the_same_words_on_both_sides():
    """The ``stance`` family asserts each drawn claim about a group once and rebuts the same claim once, so the
    hateful words and the group predict nothing, only the stance does; its complaints about things that are not
    people are safe. ``replies`` adds every (civil, abusive) pair of REPLIES. Both can be turned off."""
    from hysac.data.contrast import (GROUP_NAMES, REPLIES, STANCE_CLAIMS, STANCE_HATE_FRAMES, STANCE_NON_GROUPS,
                                     STANCE_SAFE_FRAMES, contrast_texts)

    d = contrast_texts(seed=0, claims_per_group=2, replies=True)
    stance = d[d["family"] == "stance"]
    # every text the family can write, parsed back to (group, claim, label)
    parse = {f.format(g=g, c=c): (g, c, label) for g in GROUP_NAMES for c, _ in STANCE_CLAIMS
             for frames, label in ((STANCE_HATE_FRAMES, 1), (STANCE_SAFE_FRAMES, 0)) for f in frames}
    seen: dict[tuple[str, str], list[int]] = {}
    for text, label, cats in zip(stance["text"], stance["label"], stance["categories"]):
        if text in parse:
            g, c, want = parse[text]
            assert label == want and ("hate" in cats) == (label == 1), text
            seen.setdefault((g, c), []).append(label)
    for g in GROUP_NAMES:  # two claims per group, each asserted once (unsafe) and rebutted once (safe)
        mine = {c: sorted(labels) for (gg, c), labels in seen.items() if gg == g}
        assert len(mine) == 2 and all(v == [0, 1] for v in mine.values()), (g, mine)
    things = stance[stance["text"].apply(lambda t: any(x in t for x in STANCE_NON_GROUPS))]
    assert len(things) == 2 * len(STANCE_NON_GROUPS) and set(things["label"]) == {0}
    replies = d[d["family"] == "replies"]
    assert len(replies) == 2 * len(REPLIES)
    for civil, abusive, cats in REPLIES:
        assert replies.loc[replies["text"] == civil, "label"].tolist() == [0]
        assert replies.loc[replies["text"] == abusive, "categories"].tolist() == [cats.split(";")]
    off = contrast_texts(seed=0, claims_per_group=0, replies=False)
    assert not {"stance", "replies"} & set(off["family"])
    # the families added last leave every other family's texts as they were
    before = d[~d["family"].isin(["stance", "replies"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(before, off.reset_index(drop=True))


def test_stills_put_each_thing_in_the_same_frames_on_both_sides():
    """``stills``: every (harmless, harmful) thing of STILLS in the same drawn frames on both sides, the harmful
    one with its categories; off by default; drawn last, so the other families are as they were."""
    from hysac.data.contrast import STILL_FRAMES, STILLS, contrast_texts

    d = contrast_texts(seed=0, frames_per_still=3)
    st = d[d["family"] == "stills"]
    assert len(st) == 2 * 3 * len(STILLS)
    label = dict(zip(st["text"], st["label"]))
    cats = dict(zip(st["text"], st["categories"]))
    for harmless, harmful, c in STILLS:
        safe_frames = {f for f in STILL_FRAMES if f.format(x=harmless) in label}
        unsafe_frames = {f for f in STILL_FRAMES if f.format(x=harmful) in label}
        assert len(safe_frames) == 3 and safe_frames == unsafe_frames, harmless
        assert all(label[f.format(x=harmless)] == 0 and cats[f.format(x=harmless)] == [] for f in safe_frames)
        assert all(label[f.format(x=harmful)] == 1 and cats[f.format(x=harmful)] == c.split(";")
                   for f in unsafe_frames)
    default = contrast_texts(seed=0)
    assert "stills" not in set(default["family"])
    pd.testing.assert_frame_equal(d[d["family"] != "stills"].reset_index(drop=True), default)


def test_contrast_pairs_stay_apart_from_the_hand_written_checks():
    """The plain-language checks (tests/data) measure what the model learned, so no contrast text may be a near
    copy of one (token Jaccard < 0.6: the shared frames "how do I ..." are allowed, the objects are not)."""
    import csv
    import re
    from pathlib import Path

    from hysac.data.contrast import contrast_texts

    def toks(t):
        return set(re.findall(r"[a-z']+", t.lower()))

    with open(Path(__file__).parent / "data" / "plain_language_checks.csv", newline="") as fh:
        checks = [toks(r["text"]) for r in csv.DictReader(fh)]
    texts = [toks(t) for t in contrast_texts(claims_per_group=3, replies=True, frames_per_still=10)["text"]]  # opt-in too
    worst = max(len(c & t) / len(c | t) for c in checks for t in texts)
    assert worst < 0.6, worst


@needs_data
def test_contrast_group_is_in_the_corpus_and_can_be_left_out(frame):
    ct = frame[frame["source"] == "contrast"]
    assert (ct["group"] == "contrast").all() and set(ct["label"]) == {0, 1} and len(ct) > 1000
    without = load_register_sources(CorpusConfig(contrast=False))
    assert "contrast" not in set(without["source"])
    assert len(without) == len(frame) - len(ct)


@needs_data
def test_adding_a_source_does_not_reshuffle_the_others():
    """Each source's split seed is fixed by its name: with or without the contrast pairs, every other text lands in
    the same split (so models trained before and after a source was added are compared on the same test texts)."""
    with_pairs = register_splits({"seed": 0})
    without = register_splits({"seed": 0, "contrast": False})
    for a, b in zip(with_pairs, without):
        assert {e.text for e in a if e.source != "contrast"} == {e.text for e in b}
    assert any(e.source == "contrast" for e in with_pairs.test)


def _write_extra(path, rows, header="text,label,categories"):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header.split(","))
        w.writerows(rows)
    return path


def test_load_extra_reads_labels_and_categories_and_names_its_register(tmp_path):
    from hysac.data.corpus import load_extra

    p = _write_extra(tmp_path / "My Forum.csv", [
        ("thanks for the help, see you at the meetup", "safe", ""),
        ("   ", "unsafe", ""),  # empty text: skipped
        ("I will find where you live and hurt you", "unsafe", "violence; harassment"),
        ("you are a worthless idiot", "1", ""),  # no category given: the unsafe-term rule finds harassment
        ("the gig was killer last night", "0", "violence"),  # categories of a safe row are not used
    ])
    df, name = load_extra(p)
    assert name == "extra:my-forum"
    assert df["label"].tolist() == [0, 1, 1, 0]
    assert df["categories"].tolist() == [[], ["harassment", "violence"], ["harassment"], []]  # canonical order


def test_load_extra_refuses_bad_tables_naming_file_and_row(tmp_path):
    from hysac.data.corpus import load_extra

    cases = [
        ([("a text", "maybe", "")], "text,label,categories", "row 1: label 'maybe' is neither safe nor unsafe"),
        ([("ok", "safe", ""), ("a plain text", "unsafe", "")], "text,label,categories",
         "row 2: unsafe text with no category"),
        ([("a text", "unsafe", "rudeness")], "text,label,categories", "row 1: unknown category 'rudeness'"),
        ([("a text", "safe")], "prompt,label", "missing column 'text'"),
        ([("", "safe", "")], "text,label,categories", "no texts"),
    ]
    for k, (rows, header, message) in enumerate(cases):
        p = _write_extra(tmp_path / f"bad{k}.csv", rows, header)
        with pytest.raises(InputError, match=re.escape(message)) as e:
            load_extra(p)
        assert str(p) in str(e.value)
    with pytest.raises(InputError, match="file not found"):
        load_extra(tmp_path / "missing.csv")


def test_extra_register_joins_the_splits_without_moving_the_others(tmp_path):
    """An extra table is one source and group of its own: both classes in training, its own seeded splits, the
    data folder's splits unchanged, and leave_out can hold it out."""
    from hysac.data.corpus import register_splits, source_group

    rows = [(f"our members asked about the schedule for week {i}", "safe", "") for i in range(40)]
    rows += [(f"week {i}: I am going to stab the organiser", "unsafe", "violence") for i in range(40)]
    p = _write_extra(tmp_path / "club.csv", rows)
    base = {"max_coco": 800, "max_offensive": 400, "style_fraction": 0.0}
    plain = register_splits(base)
    with_extra = register_splits({**base, "extra": [str(p)]})
    for a, b in zip(plain, with_extra):
        assert {e.text for e in a} == {e.text for e in b if e.source != "extra:club"}
    mine = [e for part in with_extra for e in part if e.source == "extra:club"]
    assert len(mine) == 80 and source_group("extra:club") == "extra:club"
    assert {e.label for e in with_extra.train if e.source == "extra:club"} == {0, 1}
    held = register_splits({**base, "extra": str(p), "leave_out": "extra:club"})
    assert {e.source for e in held.test} == {"extra:club"} and len(held.test) == 80
    with pytest.raises(InputError, match="would both be the register 'extra:club'"):
        register_splits({**base, "extra": [str(p), str(p)]})
    with pytest.raises(InputError, match="data.corpus.extra: expected a path or a list of paths"):
        register_splits({**base, "extra": {"a": 1}})


def test_corpus_settings_of_the_wrong_type_are_named():
    for key, value, expected in (("leave_out_keep", "abc", "int or None"), ("max_coco", "abc", "int or None"),
                                 ("style_fraction", "x", "float"), ("contrast", 1, "bool"),
                                 ("leave_out", 3, "str or None"), ("seed", 1.5, "int")):
        with pytest.raises(InputError, match=re.escape(f"data.corpus.{key}: expected {expected}, got {value!r}")):
            CorpusConfig.from_dict({key: value})
    cfg = CorpusConfig.from_dict({"val_fraction": 0.2, "max_coco": None, "style_fraction": 0, "leave_out_keep": 3})
    assert (cfg.val_fraction, cfg.max_coco, cfg.style_fraction, cfg.leave_out_keep) == (0.2, None, 0, 3)
