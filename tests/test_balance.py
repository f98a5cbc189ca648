"""``data.balance: groups``: every source group carries the same weight in a text family, drawn reproducibly."""

import numpy as np
import pytest

from hysac.errors import InputError
from hysac.evaluation.baselines import LinearProbe
from hysac.train.config import load_config
from hysac.train.data import Family, TrainData, epoch_order, group_balanced, step_rows


def _data(groups_lead, groups_other):
    def fam(groups):
        n = len(groups)
        rows = np.c_[np.arange(n), -np.ones((n, 3), np.int64)]
        return Family(rows, np.zeros((n, 7), np.float32), np.zeros((n, 7), np.float32), group_balanced(groups))
    return TrainData([], [], {"unsafe_text": fam(groups_lead), "safe_text": fam(groups_other)}, None, None)


def test_group_balanced_gives_every_group_the_same_total():
    groups = ["tweets"] * 90 + ["requests"] * 9 + ["prompts"]
    w = group_balanced(groups)
    assert w.shape == (100,) and np.isclose(w.sum(), 1.0)
    totals = {g: w[np.array(groups) == g].sum() for g in set(groups)}
    assert np.allclose(list(totals.values()), 1 / 3)


def test_weighted_families_draw_small_groups_as_often_as_large_ones_and_reproducibly():
    lead = ["tweets"] * 900 + ["requests"] * 100
    other = ["captions"] * 950 + ["moderation"] * 50
    data = _data(lead, other)
    order = epoch_order(data, seed=3, epoch=0)
    assert order.shape == (1000,)
    assert np.array_equal(order, epoch_order(data, seed=3, epoch=0))  # resume re-derives the same epoch
    assert not np.array_equal(order, epoch_order(data, seed=3, epoch=1))
    assert 0.4 < np.mean(order >= 900) < 0.6  # the 10 % group fills about half the epoch
    drawn = np.concatenate([dict(step_rows(data, {"unsafe_text": 50, "safe_text": 40}, 3, 0, s, order))["safe_text"]
                            for s in range(20)])
    assert 0.4 < np.mean(drawn >= 950) < 0.6
    again = dict(step_rows(data, {"unsafe_text": 50, "safe_text": 40}, 3, 0, 7, order))["safe_text"]
    assert np.array_equal(again, drawn[7 * 40:8 * 40])
    # no weights: the old uniform permutation
    data.families["unsafe_text"].weight = None
    assert sorted(epoch_order(data, 3, 0).tolist()) == list(range(1000))


def test_balance_setting_is_checked():
    with pytest.raises(InputError, match="data.balance"):
        load_config(None, ["data.balance=sources"])
    assert load_config(None, ["data.balance=groups"])["data"]["balance"] == "groups"


def test_linear_probe_sample_weights_move_the_boundary_toward_the_light_group():
    rng = np.random.default_rng(0)
    # safe: a heavy cluster at -2 and a light one at +1; unsafe at +3
    X = np.r_[rng.normal(-2, 0.3, 900), rng.normal(1, 0.3, 100), rng.normal(3, 0.3, 300)][:, None]
    y = np.r_[np.zeros(1000), np.ones(300)]
    plain = LinearProbe().fit(X, y)
    w = np.r_[np.full(900, 1 / 900), np.full(100, 1 / 100), np.full(300, 1 / 300)]
    weighted = LinearProbe().fit(X, y, sample_weight=w)
    light = rng.normal(1, 0.3, 200)[:, None]
    assert weighted.score(light).mean() < plain.score(light).mean()
    with pytest.raises(InputError, match="sample_weight"):
        LinearProbe().fit(X, y, sample_weight=-w)
