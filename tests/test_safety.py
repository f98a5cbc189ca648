"""Safety API: score, bounds, classification, batched geodesic traversal and paper parity."""

import json
import math

import pytest
import torch

from hysac import lorentz as L
from hysac import safety as S
from hysac.errors import InputError


def official_traverse_one(emb, bound, curv, alpha=0.8):
    """The released single-vector traversal (spec §5.2), written from its formula for parity checks."""
    d = L.dist0(emb[None], curv)[0]
    tau = bound + (math.tanh((bound - alpha) / curv) + 1)
    if d > tau:
        return tau * emb / torch.norm(emb)
    return emb


def test_traverse_10k_one_call():
    g = torch.Generator().manual_seed(0)
    c, tau = 0.25, 1.1
    x = L.exp_map0(torch.randn(10_000, 64, generator=g) * 0.14, c)
    d = L.dist0(x, c)
    out = S.traverse(x, c, tau)
    beyond = d > tau
    assert beyond.any() and (~beyond).any()
    d_out = L.dist0(out, c)
    assert torch.all((d_out[beyond] - tau).abs() <= 1e-4)
    cos = torch.nn.functional.cosine_similarity(out[beyond], x[beyond])
    assert torch.all(cos > 1 - 1e-6)
    assert torch.equal(out[~beyond], x[~beyond])


def test_traverse_out_and_partial():
    g = torch.Generator().manual_seed(1)
    c = 1.0
    x = L.exp_map0(torch.randn(200, 8, generator=g) * 0.3, c)
    assert bool((L.dist0(x, c) < 2.0).all())
    out = S.traverse(x, c, 2.0, direction="out")
    assert torch.allclose(L.dist0(out, c), torch.full((200,), 2.0), atol=1e-4)
    half = S.traverse_fraction(x, c, 0.5)
    assert torch.allclose(L.dist0(half, c), 0.5 * L.dist0(x, c), atol=1e-5)
    with pytest.raises(InputError):
        S.traverse_fraction(x, c, 1.5)
    with pytest.raises(InputError):
        S.traverse(x, c, 1.0, mode="bogus")
    with pytest.raises(InputError, match="NaN"):
        S.traverse(torch.full((2, 8), float("nan")), c, 1.0)


@pytest.mark.parametrize("curv", [0.1, 0.5, 1.0])
def test_paper_mode_matches_official_formula(curv):
    g = torch.Generator().manual_seed(2)
    bound = 0.35
    x = L.exp_map0(torch.randn(300, 16, generator=g) * 1.5, curv)
    tau = S.official_tau(bound, curv)
    ours = S.traverse(x, curv, tau, mode="paper")
    ref = torch.stack([official_traverse_one(v, bound, curv) for v in x])
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5)
    # the geodesic mode lands exactly on tau, the paper mode falls short (spec §5.3 bug 2)
    geo = S.traverse(x, curv, tau)
    moved = L.dist0(x, curv) > tau
    if moved.any():
        assert torch.allclose(L.dist0(geo[moved], curv), torch.full((int(moved.sum()),), tau), atol=1e-4)
        assert bool((L.dist0(ours[moved], curv) < tau).all())


def test_single_vector_shape():
    x = L.exp_map0(torch.ones(768) * 0.2, 1.0)
    out = S.traverse(x, 1.0, 0.5)
    assert out.shape == (768,)
    assert L.dist0(out, 1.0) == pytest.approx(0.5, abs=1e-4)


def test_fit_bounds_and_json(tmp_path):
    d = {"S": torch.linspace(0.0, 1.0, 101), "U": torch.linspace(1.0, 2.0, 101)}
    b = S.fit_bounds(d)
    assert b["S"].up_95 == pytest.approx(0.95) and b["S"].low_05 == pytest.approx(0.05)
    assert b["U"].avg == pytest.approx(1.5)
    # a threshold is fitted per modality given both of its classes: here S = 0..1, U = 1..2 (1.0 in both), so
    # "unsafe iff score > 1.0" is right on all but one U point, and Youden ties go to the larger threshold
    assert b.thresholds == {"text": pytest.approx(1.0)}
    assert b.threshold("text") == pytest.approx(1.0)
    # with thresholds={} none is stored and the midpoint rule answers
    assert S.fit_bounds(d, thresholds={}).threshold("text") == pytest.approx((0.95 + 1.05) / 2)
    with pytest.raises(InputError):
        b.threshold("image")
    b.thresholds["image"] = 0.7
    p = tmp_path / "bounds.json"
    b.save(p)
    b2 = S.Bounds.load(p)
    assert b2.to_dict() == b.to_dict()
    assert json.loads(p.read_text())["S"].keys() == {"up_95", "low_05", "avg"}
    # from embeddings
    c = 0.5
    x = L.exp_map0(torch.randn(40, 4), c)
    labels = ["S"] * 20 + ["G"] * 20
    b3 = S.fit_bounds(embeddings=x, labels=labels, curv=c)
    assert set(b3.classes) == {"S", "G"}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json"):
        S.Bounds.load(bad)
    with pytest.raises(InputError, match="not found"):
        S.Bounds.load(tmp_path / "missing.json")


def test_is_unsafe_and_entails():
    c = 1.0
    x = L.set_dist0(torch.randn(4, 8), torch.tensor([0.1, 0.2, 0.6, 0.9]), c)
    assert S.is_unsafe(x, c, 0.5).tolist() == [False, False, True, True]
    parent = L.set_dist0(x[:1], 0.2, c)
    assert bool(S.entails(parent, L.set_dist0(x[:1], 1.0, c), c)[0])
