"""The category head: the top-category figures, the positive weights and the refit after training
(``category_refit``), and ``--finish-from`` (the final stage on a trained model's weights)."""

import json
import math
import re

import numpy as np
import pytest
import torch

from hysac.data import default_data_dir
from hysac.errors import InputError
from hysac.metrics import top_category_scores
from hysac.model import CategoryHead, HySAC
from hysac.testing import TINY_EMOJI
from hysac.train import load_config, run_training
from hysac.train.categories import RefitConfig, category_pos_weight, refit_category_head


def test_top_category_scores_by_hand():
    # 4 unsafe items, 3 categories; item 2 carries two tags
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.3, 0.1], [0.2, 0.7, 0.1], [0.6, 0.1, 0.5]])
    tags = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    r = top_category_scores(probs, tags, ["a", "b", "c"])
    a, b, c = (r["per_category"][k] for k in "abc")
    # top categories: a, a, b, a
    assert (a["support"], a["shown"], a["precision"], a["recall"]) == (2, 3, 1 / 3, 1 / 2)
    assert (b["support"], b["shown"], b["precision"], b["recall"]) == (2, 1, 1.0, 1 / 2)
    assert (c["support"], c["shown"], c["recall"]) == (1, 0, 0.0) and math.isnan(c["precision"]) and c["f1"] == 0
    assert a["f1"] == pytest.approx(2 / 5) and b["f1"] == pytest.approx(2 / 3)
    assert r["top_in_labels"] == 0.5  # items 0 and 2
    assert r["macro_f1"] == pytest.approx((2 / 5 + 2 / 3 + 0) / 3)
    with pytest.raises(InputError, match="columns"):
        top_category_scores(probs, tags[:, :2])
    with pytest.raises(InputError, match="probs"):
        top_category_scores(np.zeros((0, 3)), np.zeros((0, 3)))


def test_pos_weight_modes_by_hand():
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w = torch.ones(4)
    # shares of positives 0.75 and 0.25: (1 - f) / f = 1/3 (clipped up to 1) and 3
    assert torch.allclose(category_pos_weight(y, w, "balanced"), torch.tensor([1.0, 3.0]))
    assert torch.allclose(category_pos_weight(y, w, "sqrt"), torch.tensor([1.0, math.sqrt(3.0)]))
    assert category_pos_weight(y, w, "none") is None
    # row weights count: the last row weighing as much as the other three makes both shares 0.5
    assert torch.allclose(category_pos_weight(y, torch.tensor([1.0, 1.0, 1.0, 3.0]), "balanced"), torch.ones(2))
    # a category without positives gets 1
    assert category_pos_weight(torch.tensor([[1.0, 0.0]]), torch.ones(1), "balanced")[1] == 1.0
    with pytest.raises(InputError, match="pos_weight"):
        category_pos_weight(y, w, "inverse")


def _rare_category_data(n=600, seed=0):
    """Category 1 on ~10 % of the rows, overlapping category 0 in the inputs (noisy boundary)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    rare = (x[:, 0] + 0.7 * torch.randn(n, generator=g)) > 1.5
    y = torch.stack([(~rare).float(), rare.float()], 1)
    return x, y


def test_refit_is_deterministic_and_weighting_lets_a_rare_category_be_shown():
    x, y = _rare_category_data()
    cfg_none = RefitConfig(epochs=150, lr=0.01, pos_weight="none")
    cfg_bal = RefitConfig(epochs=150, lr=0.01, pos_weight="balanced")
    heads = [CategoryHead(8, n_categories=2, hidden=16) for _ in range(3)]
    info = refit_category_head(heads[0], x, y, None, cfg_none)
    refit_category_head(heads[1], x, y, None, cfg_none)
    assert all(torch.equal(a, b) for a, b in zip(heads[0].state_dict().values(), heads[1].state_dict().values()))
    assert info["loss_after"] < info["loss_before"] and info["rows"] == len(x) and info["pos_weight_used"] is None
    info_bal = refit_category_head(heads[2], x, y, None, cfg_bal)
    assert info_bal["pos_weight_used"][1] > 5  # ~10 % positives

    def rare_recall(head):
        with torch.no_grad():
            top = head(x).argmax(1)
        return float(((top == 1) & (y[:, 1] == 1)).sum() / y[:, 1].sum())

    assert rare_recall(heads[2]) > rare_recall(heads[0]) + 0.1
    with pytest.raises(InputError, match="weight"):
        refit_category_head(heads[0], x, y, -torch.ones(len(x)), cfg_none)
    with pytest.raises(InputError, match="inputs"):
        refit_category_head(heads[0], x[:0], y[:0], None, cfg_none)


@pytest.mark.parametrize("value, message", [
    ({"pos_weight": "inverse"}, "pos_weight"), ({"epochs": "abc"}, "epochs: expected int, got 'abc'"),
    ({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"), ({"foo": 1}, "unknown keys"), (3, "mapping"),
    ({"epochs": 2.5}, "epochs: expected int, got 2.5"), ({"weight_decay": float("nan")}, "weight_decay"),
])
def test_refit_settings_are_checked(value, message):
    with pytest.raises(InputError, match=re.escape(message)):
        RefitConfig.from_dict(value)
    if value != {"weight_decay": float("nan")}:  # (no NaN literal in an override)
        with pytest.raises(InputError, match=re.escape(message)):
            load_config(None, [f"category_refit={json.dumps(value)}"])


def test_refit_settings_defaults():
    assert RefitConfig.from_dict(None) is None and RefitConfig.from_dict(False) is None
    assert RefitConfig.from_dict({}) == RefitConfig() == RefitConfig.from_dict(True)
    assert RefitConfig.from_dict({"epochs": 20, "pos_weight": "none"}) == RefitConfig(epochs=20, pos_weight="none")




def _mini_cfg(tmp, out, *extra):
    cfg = load_config(None, [f"out_dir={out}", "data.max_per_source=12", "data.openmoji_size=28",
                             f"data.cache_dir={tmp / 'cache'}", f"data.emoji_codepoints={json.dumps(TINY_EMOJI)}",
                             "optim.epochs=1", "optim.warmup_steps=1", "name=tiny-cats", "model.category_head=16",
                             *extra])
    cfg["backbone"] = {"kind": "mini", "embed_dim": 32, "head": "mlp", "head_hidden": 32, "image_bridge": "conse",
                       "conse_space": "head"}
    cfg["data"]["corpus"] = {}
    cfg["data"]["batch"] = {"unsafe_text": 6, "safe_text": 6, "safe_image": 4, "unsafe_image": 2}
    return cfg


@pytest.mark.skipif(not (default_data_dir() / "i2p_dev.csv").is_file(),
                    reason="shared dev data (../shared/data) not found")
def test_finish_from_reproduces_a_model_and_the_refit_moves_only_its_categories(tmp_path):
    trained = run_training(_mini_cfg(tmp_path, tmp_path / "a"))
    assert "category_head_top1" in trained["test"] and "category_refit" not in trained
    source = tmp_path / "a" / "model"
    (source / "metrics.json").write_text(json.dumps(trained))

    # the final stage alone, on the trained weights: the same model and figures
    again = run_training(_mini_cfg(tmp_path, tmp_path / "b"), finish_from=source)
    assert again["best_epoch"] == trained["best_epoch"] and again["global_step"] == trained["global_step"]
    for split in ("val", "test"):
        assert again[split]["auroc_text"] == trained[split]["auroc_text"]
        assert again[split]["category_head_top1"] == trained[split]["category_head_top1"]
    assert HySAC.from_pretrained(tmp_path / "b" / "model").model_id == HySAC.from_pretrained(source).model_id

    # with the refit: scores, thresholds and every non-category weight unchanged, the category head refitted
    refit = run_training(_mini_cfg(tmp_path, tmp_path / "c", "category_refit={epochs: 30}"), finish_from=source)
    info = refit["category_refit"]
    assert info["rows"] > 0 and info["epochs"] == 30 and info["pos_weight"] == "balanced"
    for split in ("val", "test"):
        assert refit[split]["auroc_text"] == trained[split]["auroc_text"]
        assert refit[split]["median_dist"] == trained[split]["median_dist"]
    a, c = HySAC.from_pretrained(source), HySAC.from_pretrained(tmp_path / "c" / "model")
    assert a.bounds.thresholds == c.bounds.thresholds
    sa, sc = a.checkpoint_state_dict(), c.checkpoint_state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa if not k.startswith("category_head."))
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if k.startswith("category_head."))
    assert a.model_id != c.model_id  # an index stores categories: a changed head is a different model

    with pytest.raises(InputError, match="no model.safetensors"):
        (tmp_path / "empty").mkdir()
        run_training(_mini_cfg(tmp_path, tmp_path / "d"), finish_from=tmp_path / "empty")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors"):
        run_training(_mini_cfg(tmp_path, tmp_path / "d"), finish_from=tmp_path / "damaged")
    with pytest.raises(InputError, match="neither a known name"):
        run_training(_mini_cfg(tmp_path, tmp_path / "d"), finish_from="./no/such/model")


def test_eval_reports_the_top_category_among_unsafe_items():
    from hysac.evaluation.classification import category_head_metrics
    from hysac.safety import CATEGORIES

    k = len(CATEGORIES)
    probs = np.full((4, k), 0.1)
    probs[0, 0] = probs[1, 0] = probs[2, 2] = 0.9  # shown: 0, 0, 2, and a safe item (ignored)
    tags = np.zeros((4, k))
    tags[0, 0] = tags[1, 1] = tags[2, 2] = 1
    out = category_head_metrics(probs, tags, [1, 1, 1, 0])
    top = out["top_category"]
    assert out["n_unsafe"] == 3 and top["top_in_labels"] == pytest.approx(200 / 3)
    first = top["per_category"][CATEGORIES[0]]
    assert (first["support"], first["shown"], first["precision"], first["recall"]) == (1, 2, 50.0, 100.0)
    assert top["per_category"][CATEGORIES[1]]["recall"] == 0.0
    assert top["per_category"][CATEGORIES[3]]["precision"] is None  # never shown, never tagged
