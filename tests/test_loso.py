"""Leave-one-source-out reporting (hysac.evaluation.loso): operating points, the table, argument checks."""

from __future__ import annotations

import numpy as np
import pytest

from hysac.errors import InputError
from hysac.evaluation.loso import operating_point, run_loso, to_markdown


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


def test_unknown_group_refused(tmp_path):
    with pytest.raises(InputError, match="unknown source group"):
        run_loso(tmp_path / "c.yaml", tmp_path, groups=["nonsense"])
