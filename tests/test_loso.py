"""Leave-one-source-out reporting (hysac.evaluation.loso): operating points, the table, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from hysac.errors import InputError
from hysac.evaluation.loso import operating_point, redirect_point, retrieval_sets, run_loso, to_markdown
from hysac.testing import TINY_EMOJI


def test_operating_point_counts_at_the_threshold():
    scores = np.array([0.1, 0.4, 0.6, 0.2, 0.7, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    row = operating_point(scores, labels, 0.5)
    assert row["fpr"] == pytest.approx(1 / 3) and row["tpr"] == pytest.approx(2 / 3)
    assert row["auroc"] == pytest.approx(7 / 9)
    assert (row["n_safe"], row["n_unsafe"]) == (3, 3)
    only_safe = operating_point(scores[:3], labels[:3], 0.5)
    assert "tpr" not in only_safe and "auroc" not in only_safe


def test_markdown_has_one_row_per_fold_and_marks_skipped_baselines():
    fold = {"group": "requests", "hysac": operating_point(np.array([0.1, 0.9]), np.array([0, 1]), 0.5),
            "profanity-check": {"skipped": "not installed"}}
    md = to_markdown({"date": "2026-12-02", "machine": "x86_64, 2 cores", "train_config": "c.yaml",
                      "folds": [fold]})
    row = [line for line in md.splitlines() if line.startswith("| requests")]
    assert row and "0.000 / 1.000 / 1.000" in row[0] and "n/a" in row[0]


def test_retrieval_sets_are_disjoint_seeded_and_capped():
    labels = np.r_[np.zeros(30, int), np.ones(12, int)]
    gal, uq, sq = retrieval_sets(labels, seed=3, per_class=10, queries=4)
    assert len(uq) == 4 and len(sq) == 4 and (labels[uq] == 1).all() and (labels[sq] == 0).all()
    assert (labels[gal] == 0).sum() == 10 and (labels[gal] == 1).sum() == 8  # 12 unsafe − 4 queries
    assert len(set(gal) | set(uq) | set(sq)) == len(gal) + 8  # disjoint
    again = retrieval_sets(labels, seed=3, per_class=10, queries=4)
    assert all(np.array_equal(a, b) for a, b in zip((gal, uq, sq), again))
    # few texts of a class: at most half of them become queries, the rest stay in the gallery
    gal, uq, sq = retrieval_sets(np.r_[np.zeros(20, int), np.ones(3, int)], queries=200)
    assert len(uq) == 1 and len(sq) == 10 and len(gal) == 12
    assert retrieval_sets(np.zeros(10, int)) is None


def test_redirect_point_counts_safe_hits_and_kept_top1():
    """Gallery: safe items at 0° and 90°, unsafe at 180° and 270°. Unsafe queries near 180° and 90°, safe ones near
    0° and 90°; the "redirect" sends every query to 0°, so all unsafe queries hit a safe item and one of the two
    safe queries loses its top-1."""
    import torch

    E = torch.tensor([[1, 0], [0, 1], [-1, 0], [0, -1], [-1, 0.1], [0.1, 1], [1, 0.1], [0.1, 1]])
    labels = np.array([0, 0, 1, 1, 1, 1, 0, 0])
    sets = (np.array([0, 1, 2, 3]), np.array([4, 5]), np.array([6, 7]))
    sim = lambda q, g: q @ g.T  # noqa: E731
    row = redirect_point(lambda pos: E[torch.as_tensor(pos)], sim, sets, labels,
                         move=lambda q: torch.tensor([[1.0, 0.0]]).expand_as(q))
    assert row == {"gallery_safe": 2, "gallery_unsafe": 2, "unsafe_queries": 2, "safe_queries": 2,
                   "unsafe_safe_top1": 0.5, "unsafe_safe_top1_redirect": 1.0, "safe_keep_top1": 0.5}
    plain = redirect_point(lambda pos: E[torch.as_tensor(pos)], sim, sets, labels)
    assert "safe_keep_top1" not in plain and plain["unsafe_safe_top1"] == 0.5


def test_markdown_retrieval_table():
    fold = {"group": "moderation", "hysac": operating_point(np.array([0.1, 0.9]), np.array([0, 1]), 0.5),
            "retrieval": {"hysac": {"gallery_safe": 750, "gallery_unsafe": 348, "unsafe_queries": 200,
                                    "safe_queries": 200, "unsafe_safe_top1": 0.41,
                                    "unsafe_safe_top1_redirect": 0.8, "safe_keep_top1": 0.975},
                          "frozen": {"gallery_safe": 750, "gallery_unsafe": 348, "unsafe_queries": 200,
                                     "safe_queries": 200, "unsafe_safe_top1": 0.4}}}
    md = to_markdown({"date": "d", "machine": "m", "train_config": "c.yaml", "folds": [fold]})
    assert "## Retrieval with redirection on the held-out group" in md
    row = [line for line in md.splitlines() if line.startswith("| moderation | 750")]
    assert row == ["| moderation | 750 / 348 | 200 / 200 | 40.0% | 41.0% → 80.0% (97.5%) |"]
    legend = next(line for line in md.splitlines() if line.startswith("Gallery:"))
    assert "frozen: the frozen MiniLM space" in legend  # a column of this report is explained
    assert "safe-clip:" not in legend and "hysac-move-all:" not in legend  # absent columns are not


def test_unknown_group_refused(tmp_path):
    with pytest.raises(InputError, match="unknown source group"):
        run_loso(tmp_path / "c.yaml", tmp_path, groups=["nonsense"])
    # a register of the user's own (data.corpus.extra) may be held out: the name passes, the missing config fails
    with pytest.raises(InputError) as e:
        run_loso(tmp_path / "c.yaml", tmp_path / "out", groups=["extra:club"], baselines=())
    assert "unknown source group" not in str(e.value) and "c.yaml" in str(e.value)


def test_unknown_baseline_refused_before_any_training(tmp_path):
    with pytest.raises(InputError, match=r"unknown baseline\(s\) \['probe'\]"):
        run_loso(tmp_path / "c.yaml", tmp_path / "out", groups=["tweets"], baselines=("probe",))
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not (__import__("hysac.data", fromlist=["x"]).default_data_dir() / "sd_prompts.csv").is_file(),
                    reason="dev data not found")
def test_one_fold_end_to_end_with_the_probe_and_safe_clip_columns(tmp_path):
    """A tiny fold: the recipe trains without the held-out group, the probe and the Safe-CLIP-objective model are
    fitted on the same fold's texts, each scored on the held-out group at its own threshold, and the table shows
    every column."""
    import json

    import yaml

    cfg = {"name": "tiny-loso", "threshold_criterion": "register_fpr@0.1",
           "backbone": {"kind": "mini", "embed_dim": 384, "head": "polar", "head_hidden": 16, "polar_base": 4.0,
                        "image_bridge": "conse"},
           "data": {"corpus": {}, "balance": "groups", "max_per_source": 20, "openmoji_size": 28,
                    "cache_dir": str(tmp_path / "cache"), "emoji_codepoints": TINY_EMOJI,
                    "batch": {"unsafe_text": 8, "safe_text": 8, "safe_image": 4, "unsafe_image": 2}},
           "optim": {"epochs": 1, "warmup_steps": 1}}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    report = run_loso(path, tmp_path / "out", groups=["requests"],
                      baselines=("euclidean-probe", "safe-clip"), log=lambda _msg: None)
    (fold,) = report["folds"]
    assert fold["group"] == "requests" and set(fold["sources"]) >= {"alpaca", "harmful"}
    for method in ("hysac", "euclidean-probe", "safe-clip"):
        row = fold[method]
        assert row["n_safe"] > 0 and row["n_unsafe"] > 0, method
        assert all(0.0 <= row[k] <= 1.0 for k in ("fpr", "tpr", "auroc")), (method, row)
    assert set(fold["retrieval"]) == {"hysac", "hysac-move-all", "frozen", "safe-clip"}
    for method, r in fold["retrieval"].items():
        assert r["gallery_safe"] > 0 and r["gallery_unsafe"] > 0 and r["unsafe_queries"] > 0, method
        assert 0.0 <= r["unsafe_safe_top1"] <= 1.0, (method, r)
    assert 0.0 <= fold["retrieval"]["hysac"]["safe_keep_top1"] <= 1.0
    assert (tmp_path / "out" / "requests-safeclip" / "log.jsonl").is_file()  # its own run, beside the fold's
    # the fold's text threshold, the register that set it and how far resampling its validation texts moves it
    spread = json.loads((tmp_path / "out" / "requests" / "metrics.json").read_text())["text_threshold"]
    model_cfg = json.loads((tmp_path / "out" / "requests" / "model" / "config.json").read_text())
    assert spread["threshold"] == pytest.approx(model_cfg["bounds"]["thresholds"]["text"])
    assert spread["set_by"].split("+")[0] in {"prompts", "captions", "moderation", "tweets", "contrast"}
    assert spread["bootstrap_sd"] >= 0.0 and spread["bootstrap_q05"] <= spread["bootstrap_q95"]
    saved = json.loads((tmp_path / "out" / "loso.json").read_text())
    assert saved["folds"][0]["safe-clip"] == fold["safe-clip"]
    header = (tmp_path / "out" / "loso.md").read_text().splitlines()[4]
    assert "safe-clip FPR / TPR / AUROC" in header and "profanity-check" not in header


def test_cli_passes_the_reference_and_its_label(tmp_path, monkeypatch):
    """``hysac eval --loso`` hands --group / --set / --reference / --reference-label to run_loso unchanged."""
    from typer.testing import CliRunner

    from hysac.cli import app
    from hysac.evaluation import loso as loso_mod

    seen = {}

    def fake(config, out, **kw):
        seen.update(kw, config=config, out=out)
        return {"folds": [], "reference": kw["reference_label"] or kw["reference"], "date": "d", "machine": "m",
                "train_config": str(config), "overrides": list(kw["overrides"]), "seconds": 0.0}

    monkeypatch.setattr(loso_mod, "run_loso", fake)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: x\n")
    res = CliRunner().invoke(app, ["eval", "--loso", str(cfg), "--out", str(tmp_path / "o"), "--group", "tweets",
                                   "--set", "backbone.text_lora=null", "--reference", str(tmp_path / "old"),
                                   "--reference-label", "the former model", "--quiet"])
    assert res.exit_code == 0, res.output
    assert seen["groups"] == ["tweets"] and seen["overrides"] == ["backbone.text_lora=null"]
    assert seen["reference"] == str(tmp_path / "old") and seen["reference_label"] == "the former model"
    assert tuple(seen["baselines"]) == loso_mod.BASELINES  # every baseline unless chosen

    for extra, expected in ((["--baseline", "profanity-check", "--baseline", "hysac-mini"],
                             ("profanity-check", "hysac-mini")), (["--no-baselines"], ())):
        res = CliRunner().invoke(app, ["eval", "--loso", str(cfg), "--out", str(tmp_path / "o"), "--quiet", *extra])
        assert res.exit_code == 0, res.output
        assert tuple(seen["baselines"]) == expected, extra
    res = CliRunner().invoke(app, ["eval", "--loso", str(cfg), "--out", str(tmp_path / "o"), "--quiet",
                                   "--no-baselines", "--baseline", "safe-clip"])
    assert res.exit_code != 0 and "contradict" in res.output and "Traceback" not in res.output


def test_budget_tpr_is_the_best_threshold_on_the_held_out_texts_and_reaches_the_report():
    """Ten safe scores 0..0.9 and four unsafe (0.35, 0.55, 0.85, 0.95). A 10 % FPR budget allows one safe text
    above the threshold: θ = 0.8 flags 0.9 (FPR 0.1) and the unsafe 0.85 and 0.95, so the best TPR is 2 / 4,
    while the own threshold 0.92 catches only 0.95."""
    scores = np.r_[np.arange(10) / 10, [0.35, 0.55, 0.85, 0.95]]
    labels = np.r_[np.zeros(10, int), np.ones(4, int)]
    row = operating_point(scores, labels, 0.92, budget=0.10)
    assert row["tpr"] == pytest.approx(0.25) and row["tpr_at_budget"] == pytest.approx(0.5)
    assert row["fpr_budget"] == 0.10
    assert "tpr_at_budget" not in operating_point(scores, labels, 0.92)
    assert "tpr_at_budget" not in operating_point(scores[:10], labels[:10], 0.92, budget=0.10)  # no unsafe text
    md = to_markdown({"date": "2026-12-07", "machine": "x86_64, 2 cores", "train_config": "c.yaml",
                      "folds": [{"group": "requests", "hysac": row}]})
    assert "| requests | 10% | 0.250 → 0.500 |" in md


def test_markdown_says_when_a_few_texts_of_the_held_out_group_trained():
    fold = {"group": "requests", "hysac": operating_point(np.array([0.1, 0.9]), np.array([0, 1]), 0.5)}
    base = {"date": "2026-12-07", "machine": "x86_64, 2 cores", "train_config": "c.yaml", "folds": [fold]}
    assert "never trained or validated on" in to_markdown(base)
    few = to_markdown({**base, "overrides": ["data.corpus.leave_out_keep=25"]})
    assert "never trained" not in few and "test-split texts (25 texts per class" in few
