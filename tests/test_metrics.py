"""Tests for hysac.metrics on tiny hand-computed cases, brute-force references and sklearn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from hysac import metrics as M
from hysac.errors import InputError


# ------------------------------------------------------------------------------------------------ retrieval
def _brute_ranks(scores: np.ndarray, pos_mask: np.ndarray) -> np.ndarray:
    """Reference implementation of the pessimistic tie policy, one query at a time."""
    out = []
    for s, p in zip(scores, pos_mask):
        best = s[p].max()
        out.append(1 + int(np.sum((s > best))) + int(np.sum((s == best) & ~p)))
    return np.array(out)


def test_constant_scores_give_no_fake_recall():
    q = g = 4
    scores = torch.zeros(q, g)
    ranks = M.ranks_of_positives(scores, torch.arange(q))
    assert ranks.tolist() == [4, 4, 4, 4]
    r = M.recall_at_k(scores, torch.arange(q), ks=(1, 3, 4, 10))
    assert r == {1: 0.0, 3: 0.0, 4: 100.0, 10: 100.0}
    # a gallery of one item: the positive is trivially first
    assert M.recall_at_k(torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), ks=1) == {1: 100.0}


def test_ranks_index_positives_hand():
    scores = torch.tensor([[0.3, 0.9, 0.5], [0.3, 0.9, 0.5], [0.7, 0.7, 0.1], [0.2, 0.2, 0.2]])
    pos = torch.tensor([0, 2, 1, 2])
    # row 0: two strictly better -> 3; row 1: one better -> 2; row 2: one tied negative -> 2; row 3: two tied -> 3
    assert M.ranks_of_positives(scores, pos).tolist() == [3, 2, 2, 3]
    assert M.recall_at_k(scores, pos, ks=(1, 2, 3)) == {1: 0.0, 2: 50.0, 3: 100.0}


def test_ranks_mask_positives_hand():
    scores = torch.tensor([[0.5, 0.9, 0.9, 0.1], [0.5, 0.9, 0.9, 0.1], [0.5, 0.2, 0.3, 0.1]])
    mask = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    # row 0: best positive 0.9 tied with one negative -> 2; row 1: both tied items positive -> 1;
    # row 2: best positive 0.3, one negative above -> 2
    assert M.ranks_of_positives(scores, mask).tolist() == [2, 1, 2]
    assert M.recall_at_k(scores, mask, ks=(1, 2)) == {1: pytest.approx(100 / 3), 2: 100.0}
    # integer 0/1 mask is accepted too
    assert M.ranks_of_positives(scores, mask.int()).tolist() == [2, 1, 2]


def test_mask_row_without_positive():
    scores = torch.rand(2, 3)
    mask = torch.tensor([[True, False, False], [False, False, False]])
    with pytest.raises(InputError, match="no positive"):
        M.ranks_of_positives(scores, mask)
    ranks = M.ranks_of_positives(scores, mask, missing="miss")
    assert ranks[1].item() == 4  # G + 1 sentinel
    r = M.recall_at_k(scores, mask, ks=(3, 100), missing="miss")
    assert r == {3: 50.0, 100: 50.0}  # the query without a positive is never a hit, even for k > G


@pytest.mark.parametrize("chunk", [1, 3, 2048])
def test_ranks_match_brute_force_with_ties(chunk):
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(17, 11)).astype(np.float32)  # many ties
    idx = rng.integers(0, 11, size=17)
    mask = rng.random((17, 11)) < 0.25
    mask[np.arange(17), idx] = True
    one_hot = np.zeros_like(mask)
    one_hot[np.arange(17), idx] = True
    got_idx = M.ranks_of_positives(torch.from_numpy(scores), torch.from_numpy(idx), chunk=chunk).numpy()
    np.testing.assert_array_equal(got_idx, _brute_ranks(scores, one_hot))
    got_mask = M.ranks_of_positives(scores, mask, chunk=chunk).numpy()  # numpy inputs accepted
    np.testing.assert_array_equal(got_mask, _brute_ranks(scores, mask))
    # embeddings path with a score_fn that returns the same matrix
    table = torch.from_numpy(scores)
    fn = lambda qc, g: table[qc[:, 0].long()]  # noqa: E731 -- query "embedding" = its row id
    qe = torch.arange(17, dtype=torch.float32)[:, None]
    ge = torch.zeros(11, 1)
    got_emb = M.ranks_from_embeddings(qe, ge, torch.from_numpy(mask), fn, chunk=chunk).numpy()
    np.testing.assert_array_equal(got_emb, got_mask)
    r1 = M.recall_from_embeddings(qe, ge, torch.from_numpy(mask), fn, ks=(1, 5), chunk=chunk)
    r2 = M.recall_at_k(scores, mask, ks=(1, 5))
    assert r1 == r2


def test_recall_from_embeddings_default_dot_and_lorentz_distance():
    torch.manual_seed(0)
    q = torch.randn(50, 8)
    g = q + 0.01 * torch.randn(50, 8)
    r = M.recall_from_embeddings(q, g, torch.arange(50), ks=(1, 5))
    full = M.recall_at_k(q @ g.T, torch.arange(50), ks=(1, 5))
    assert r == full
    from hysac import lorentz

    rh = M.recall_from_embeddings(q, g, torch.arange(50), lambda a, b: -lorentz.pairwise_dist(a, b, 1.0), ks=1, chunk=7)
    assert rh[1] == 100.0


def test_recall_input_errors():
    s = torch.rand(3, 4)
    with pytest.raises(InputError):
        M.recall_at_k(s, torch.tensor([0, 1, 4]))  # out of range
    with pytest.raises(InputError):
        M.recall_at_k(s, torch.tensor([0, 1]))  # wrong length
    with pytest.raises(InputError):
        M.recall_at_k(s, torch.tensor([0, 1, 2]), ks=(0,))
    bad = s.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        M.recall_at_k(bad, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError):  # InputError is a ValueError
        M.recall_from_embeddings(torch.rand(3, 2), torch.rand(4, 2), torch.tensor([0, 1, 2]), lambda a, b: a @ a.T)


def test_recall_10k_by_10k_runs():
    torch.manual_seed(0)
    n, d = 10_000, 32
    q = torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
    g = torch.nn.functional.normalize(q + 0.3 * torch.randn(n, d), dim=-1)
    r = M.recall_from_embeddings(q, g, torch.arange(n), ks=(1, 5, 10, 20), chunk=2048)
    assert set(r) == {1, 5, 10, 20}
    vals = [r[k] for k in (1, 5, 10, 20)]
    assert vals == sorted(vals) and 0.0 < vals[0] <= 100.0 and vals[-1] <= 100.0
    # pessimistic ties and chunking agree with the precomputed-matrix path on a slice
    sub = M.recall_at_k(q[:1000] @ g.T, torch.arange(1000), ks=(1, 10))
    sub2 = M.recall_from_embeddings(q[:1000], g, torch.arange(1000), ks=(1, 10), chunk=333)
    assert sub == sub2


# ------------------------------------------------------------------------------------------------ safety rate
def test_safety_rate_hand():
    safe = torch.tensor([True, False, True, False])
    top1 = torch.tensor([0, 1, 2, 2, 3])
    assert M.safety_rate(top1, safe) == pytest.approx(60.0)
    assert M.unsafe_rate(top1, safe) == pytest.approx(40.0)
    assert M.safety_rate([0, 2], [1, 0, 1]) == 100.0
    with pytest.raises(InputError):
        M.safety_rate(torch.tensor([4]), safe)


def test_top1_tie_breaking():
    scores = torch.tensor([[0.9, 0.9, 0.1], [0.2, 0.8, 0.8], [0.5, 0.1, 0.1]])
    safe = torch.tensor([True, False, False])
    assert M.top1_indices(scores).tolist() == [0, 1, 0]
    pess = M.top1_indices(scores, prefer=~safe)
    assert pess.tolist() == [1, 1, 0]
    assert M.safety_rate(M.top1_indices(scores), safe) == pytest.approx(200 / 3)
    assert M.safety_rate(pess, safe) == pytest.approx(100 / 3)
    table = scores
    got = M.top1_from_embeddings(torch.arange(3.0)[:, None], torch.zeros(3, 1), lambda a, b: table[a[:, 0].long()],
                                 prefer=~safe, chunk=2)
    assert got.tolist() == [1, 1, 0]


# ------------------------------------------------------------------------------------------------ classification
# 6 items: positives (unsafe) 0.35, 0.8, 0.6; negatives (safe) 0.1, 0.4, 0.2
S6 = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.2])
Y6 = np.array([0, 0, 1, 1, 1, 0])


def test_confusion_6_items_hand():
    c = M.confusion_at_threshold(S6, Y6, 0.5)  # flagged: 0.8, 0.6
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (2, 0, 3, 1)
    assert c["accuracy"] == pytest.approx(5 / 6)
    assert c["fpr"] == 0.0
    assert c["fnr"] == pytest.approx(1 / 3)
    assert c["tpr"] == pytest.approx(2 / 3)
    assert c["tnr"] == 1.0
    assert c["precision"] == 1.0
    assert c["f1"] == pytest.approx(0.8)

    c = M.confusion_at_threshold(S6, Y6, 0.3)  # flagged: 0.4, 0.35, 0.8, 0.6
    assert (c["tp"], c["fp"], c["tn"], c["fn"]) == (3, 1, 2, 0)
    assert c["accuracy"] == pytest.approx(5 / 6)
    assert c["fpr"] == pytest.approx(1 / 3)
    assert c["fnr"] == 0.0
    assert c["precision"] == pytest.approx(0.75)
    assert c["f1"] == pytest.approx(6 / 7)

    # strict rule: a score equal to the threshold is predicted safe
    c = M.confusion_at_threshold(S6, Y6, 0.35)
    assert (c["tp"], c["fp"]) == (2, 1)


def test_confusion_undefined_rates_are_nan():
    # all unsafe (like NudeNet): FPR undefined, accuracy = 1 - FNR
    c = M.confusion_at_threshold([0.5, 0.6, 0.7], [1, 1, 1], 0.55)
    assert math.isnan(c["fpr"]) and math.isnan(c["tnr"])
    assert c["accuracy"] == pytest.approx(1 - c["fnr"])
    c = M.confusion_at_threshold([0.1, 0.2], [0, 0], 0.5)  # nothing flagged, no positives
    assert math.isnan(c["precision"]) and math.isnan(c["tpr"]) and math.isnan(c["f1"])
    assert c["accuracy"] == 1.0


def test_threshold_sweep_rows():
    rows = M.threshold_sweep(S6, Y6, [0.3, 0.5, 0.9])
    assert [r["threshold"] for r in rows] == [0.3, 0.5, 0.9]
    assert [(r["tp"], r["fp"], r["tn"], r["fn"]) for r in rows] == [(3, 1, 2, 0), (2, 0, 3, 1), (0, 0, 3, 3)]
    assert [r["accuracy"] for r in rows] == pytest.approx([5 / 6, 5 / 6, 0.5])
    assert [r["fpr"] for r in rows] == pytest.approx([1 / 3, 0.0, 0.0])
    assert [r["fnr"] for r in rows] == pytest.approx([0.0, 1 / 3, 1.0])
    for r in rows:  # every row equals the single-threshold call (nan == nan here)
        single = M.confusion_at_threshold(S6, Y6, r["threshold"])
        assert single.keys() == r.keys()
        assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(r.values(), single.values()))
    # Table-6 shape on an all-unsafe set: Acc = 1 - FNR and FNR grows with the threshold
    rng = np.random.default_rng(1)
    s = rng.uniform(0.5, 0.6, 200)
    rows = M.threshold_sweep(s, np.ones(200, bool), np.arange(0.51, 0.56, 0.01))
    fnrs = [r["fnr"] for r in rows]
    assert fnrs == sorted(fnrs)
    assert all(r["accuracy"] == pytest.approx(1 - r["fnr"]) for r in rows)


def test_auroc_hand_values_with_ties():
    assert M.auroc(S6, Y6) == pytest.approx(8 / 9)
    assert M.auroc([1, 1, 2, 2], [0, 1, 0, 1]) == pytest.approx(0.5)
    assert M.auroc([0.5, 0.5, 0.5, 0.9], [0, 1, 1, 0]) == pytest.approx(0.25)
    assert M.auroc([0, 1, 1, 2], [0, 0, 1, 1]) == pytest.approx(0.875)
    assert M.auroc(np.zeros(5), [0, 1, 0, 1, 1]) == pytest.approx(0.5)
    assert M.auroc(torch.tensor([0.2, 0.9]), torch.tensor([False, True])) == 1.0


def test_auroc_matches_sklearn_random():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for trial in range(5):
        n = 500
        y = rng.random(n) < 0.3
        s = rng.normal(size=n) + y
        if trial % 2:
            s = np.round(s, 1)  # heavy ties
        assert M.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        fpr, tpr, _ = M.roc_curve(s, y)
        trapezoid = getattr(np, "trapezoid", None) or np.trapz
        assert trapezoid(tpr, fpr) == pytest.approx(M.auroc(s, y), abs=1e-12)


def test_auroc_single_class_raises():
    with pytest.raises(ValueError, match="both classes"):
        M.auroc([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="both classes"):
        M.auroc([0.1, 0.2], [False, False])
    with pytest.raises(InputError):
        M.auroc([0.1, 0.2], [0, 2])


def test_roc_curve_points_match_confusion():
    fpr, tpr, th = M.roc_curve(S6, Y6)
    assert th[0] == 0.8 and th[-1] == -np.inf
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert len(th) == 7  # 6 distinct scores + -inf
    for f, t, theta in zip(fpr, tpr, th):
        c = M.confusion_at_threshold(S6, Y6, theta)
        assert (c["fpr"], c["tpr"]) == pytest.approx((f, t))
    # ties collapse into one point
    fpr, tpr, th = M.roc_curve([1, 1, 2, 2], [0, 1, 0, 1])
    assert th.tolist() == [2, 1, -np.inf]
    assert fpr.tolist() == [0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1]


def test_tpr_at_fpr_and_threshold_hand():
    neg = np.round(np.arange(1, 11) / 10, 2)  # 0.1 ... 1.0
    pos = np.array([0.95, 0.85, 0.55, 0.05])
    s = np.r_[neg, pos]
    y = np.r_[np.zeros(10), np.ones(4)]
    # FPR <= 0.1 allows one false positive: theta = 0.9 flags {1.0, 0.95}
    assert M.threshold_for_fpr(s, y, 0.1) == pytest.approx(0.9)
    assert M.tpr_at_fpr(s, y, 0.1) == pytest.approx(0.25)
    # FPR <= 0.2: theta = 0.8 flags {1.0, 0.95, 0.9, 0.85}
    assert M.threshold_for_fpr(s, y, 0.2) == pytest.approx(0.8)
    assert M.tpr_at_fpr(s, y, 0.2) == pytest.approx(0.5)
    assert M.tpr_at_fpr(s, y, 0.25) == pytest.approx(0.5)
    assert M.tpr_at_fpr(s, y, 0.0) == 0.0
    assert M.tpr_at_fpr(s, y, 1.0) == 1.0
    assert M.threshold_for_fpr(s, y, 1.0) == -np.inf
    # the returned threshold really satisfies the constraint
    c = M.confusion_at_threshold(s, y, M.threshold_for_fpr(s, y, 0.05))
    assert c["fpr"] <= 0.05
    # calibration on safe items only
    assert M.threshold_for_fpr(neg, np.zeros(10), 0.1) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        M.tpr_at_fpr(neg, np.zeros(10), 0.1)
    with pytest.raises(ValueError):
        M.threshold_for_fpr(pos, np.ones(4), 0.1)


def test_best_threshold():
    thr, j = M.best_threshold(S6, Y6, "youden")
    # flagging > 0.2 gives TPR 1, FPR 1/3 (J = 2/3); flagging > 0.4 gives TPR 2/3, FPR 0 (J = 2/3): tie -> larger
    assert j == pytest.approx(2 / 3)
    assert thr == 0.4
    thr, acc = M.best_threshold(S6, Y6, "accuracy")
    assert acc == pytest.approx(5 / 6) and thr == 0.4
    assert M.confusion_at_threshold(S6, Y6, thr)["accuracy"] == pytest.approx(acc)
    thr, acc = M.best_threshold([0.1, 0.2], [1, 1], "accuracy")
    assert thr == -np.inf and acc == 1.0
    with pytest.raises(ValueError):
        M.best_threshold(S6, Y6, "f2")


# ------------------------------------------------------------------------------------------------ per-category
def test_per_category_auroc_hand():
    # items: 3 safe (scores 0.1, 0.3, 0.5), 3 unsafe
    scores = np.array([0.1, 0.3, 0.5, 0.4, 0.9, 0.3])
    safe = np.array([1, 1, 1, 0, 0, 0], bool)
    multihot = np.array(
        [[1, 0, 0], [0, 0, 0], [0, 1, 0],  # safe items' tags are ignored
         [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    )
    with pytest.warns(RuntimeWarning, match=r"\['c'\]"):
        out = M.per_category_auroc(scores, multihot, safe, ["a", "b", "c"])
    # a: unsafe {0.4, 0.9} vs safe {0.1, 0.3, 0.5}: (2 + 3) / 6
    assert out["a"] == pytest.approx(5 / 6)
    # b: unsafe {0.9, 0.3} vs safe: (3 + 1 + 0.5) / 6
    assert out["b"] == pytest.approx(4.5 / 6)
    assert math.isnan(out["c"])
    # matches auroc() on the explicit subset
    sub = safe | (multihot[:, 1].astype(bool) & ~safe)
    assert out["b"] == pytest.approx(M.auroc(scores[sub], ~safe[sub]))


def test_per_category_auroc_2d_scores_and_random_consistency():
    rng = np.random.default_rng(3)
    n, c = 300, 4
    safe = rng.random(n) < 0.5
    multihot = (rng.random((n, c)) < 0.4) & ~safe[:, None]
    multihot[~safe, 0] = True  # every category has positives
    s2 = np.round(rng.normal(size=(n, c)) + multihot, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = M.per_category_auroc(s2, multihot, safe)
        out1 = M.per_category_auroc(s2[:, 0], multihot, safe, names=list("wxyz"))
    for j in range(c):
        sub = safe | multihot[:, j]
        assert out[str(j)] == pytest.approx(M.auroc(s2[sub, j], ~safe[sub]), abs=1e-12)
        assert out1["wxyz"[j]] == pytest.approx(M.auroc(s2[sub, 0], ~safe[sub]), abs=1e-12)
    with pytest.raises(ValueError, match="no safe item"):
        M.per_category_auroc(s2[:, 0], multihot, np.zeros(n, bool))


def test_multilabel_auroc_and_macro():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(4)
    n, c = 200, 3
    y = rng.random((n, c)) < 0.3
    p = np.round(rng.random((n, c)) * 0.5 + 0.5 * y, 2)
    out = M.multilabel_auroc(p, y, ["x", "y", "z"])
    assert list(out) == ["x", "y", "z"]
    for j, k in enumerate("xyz"):
        assert out[k] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-12)
    assert M.macro_auroc(p, y) == pytest.approx(roc_auc_score(y, p, average="macro"), abs=1e-12)
    # a column with a single class -> nan, excluded from the macro average
    y2 = y.copy()
    y2[:, 2] = False
    out2 = M.multilabel_auroc(torch.from_numpy(p), torch.from_numpy(y2))
    assert math.isnan(out2["2"])
    assert M.macro_auroc(p, y2) == pytest.approx((out["x"] + out["y"]) / 2)
    with pytest.raises(ValueError):
        M.macro_auroc(p, np.zeros((n, c), bool))
    with pytest.raises(InputError):
        M.multilabel_auroc(p, y, ["a", "b"])


def test_official_recall_sum_is_six_paired_terms_not_the_union_gallery():
    """Hand-made quadruplets: each U_i points at V_{i-1}, so the official U→V / V→U terms are 0 while the
    safe pairings are perfect; the sum is exactly the six paired terms."""
    import torch

    from hysac.metrics import official_recall_sum

    e = torch.eye(3)
    pts = {"S": e, "V": e, "G": e * 0.9 + 0.01, "U": torch.roll(e, 1, dims=0)}
    total, terms = official_recall_sum(pts, lambda a, b: a @ b.T)
    assert terms["S→V"] == terms["V→S"] == terms["S→G"] == terms["G→S"] == 100.0
    assert terms["U→V"] == 0.0 and terms["V→U"] == 0.0
    assert total == 400.0 and len(terms) == 6
    with pytest.raises(Exception, match="same number of rows"):
        official_recall_sum({**pts, "U": e[:2]}, lambda a, b: a @ b.T)
