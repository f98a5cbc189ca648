"""One safety policy: the Python API, the CLI, the HTTP service, the index search and evaluation agree exactly on
scores, verdicts, thresholds, redirect / seek-unsafe radii and moved points (hysac.policy)."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from hysac import safety
from hysac.cli import app as cli_app
from hysac.errors import InputError
from hysac.index import IndexSearcher
from hysac.model import HySAC
from hysac.policy import MODES, Mode, SafetyPolicy
from hysac.service import create_app
from hysac.service.demo import UNSAFE_TEXTS, SAFE_TEXTS, make_demo_index, make_tiny_model

QUERIES = ["a cat covered in blood", "a bowl of fruit on a table", SAFE_TEXTS[0], UNSAFE_TEXTS[0]]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy")
    model = make_tiny_model(root / "model")
    folder = model.save_pretrained(root / "ours")  # what the CLI loads
    model = HySAC.from_pretrained(folder)
    index = make_demo_index(root / "demo", model)
    return model, folder, index


def test_modes_are_one_enum():
    assert MODES == ("off", "filter", "redirect", "redirect+filter", "seek-unsafe")
    assert [Mode.parse(m).direction for m in MODES] == [None, None, "in", "in", "out"]
    assert [Mode.parse(m).filters for m in MODES] == [False, True, False, True, False]
    with pytest.raises(InputError, match="unknown search mode 'sideways'"):
        Mode.parse("sideways")


def test_radii_follow_the_model_rule(env):
    model, _, _ = env
    p = model.policy
    b = model.bounds
    for target, safe, unsafe in (("text", "S", "U"), ("image", "V", "G")):
        rule = model.traversal
        expected = (b[safe].up_95 + float(rule.get("margin", 0.0)) if rule.get("rule") == "bound"
                    else safety.official_tau(b[safe].up_95, model.curvature, float(rule.get("alpha", 0.8))))
        assert p.radius("redirect", target) == pytest.approx(expected)
        assert p.radius("redirect+filter", target) == p.radius("redirect", target)
        assert p.radius("seek-unsafe", target) == pytest.approx(b[unsafe].avg)
        assert p.radius("off", target) is None and p.radius("filter", target) is None


def test_python_cli_http_index_and_evaluation_agree(env):
    model, folder, index = env
    pol: SafetyPolicy = model.policy
    x = model.encode_text(QUERIES)
    v = pol.judge(x, "text")
    moves = {(mode, t): pol.move(x, mode, t) for mode in ("redirect", "seek-unsafe") for t in ("text", "image")}
    # the policy moves exactly the points on the wrong side of the radius, to exactly that radius
    for (mode, _t), mv in moves.items():
        d0 = model.score(x)
        assert torch.equal(mv.moved, d0 > mv.radius if mode == "redirect" else d0 < mv.radius)
        after = model.score(mv.points)
        assert torch.allclose(after[mv.moved], torch.full_like(after[mv.moved], mv.radius), atol=1e-4)
        assert torch.equal(after[~mv.moved], d0[~mv.moved])
    assert any(mv.moved.any() for mv in moves.values())  # the inputs exercise both branches

    # Python API wrappers
    assert torch.equal(model.is_unsafe(x, "text"), v.unsafe)
    assert model.unsafe_threshold("text") == v.threshold
    assert torch.equal(model.traverse_to_safe_image(x), moves[("redirect", "image")].points)
    assert torch.equal(model.traverse_to_safe_text(x), moves[("redirect", "text")].points)

    # CLI
    runner = CliRunner()
    args = [a for q in QUERIES for a in ("--text", q)]
    res = runner.invoke(cli_app, ["classify", "--model", str(folder), "--json", *args])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["score"] for r in rows] == pytest.approx(v.scores.tolist(), abs=1e-6)
    assert [r["unsafe"] for r in rows] == v.unsafe.tolist() and {r["threshold"] for r in rows} == {v.threshold}
    for t in ("image", "text"):
        mv = moves[("redirect", t)]
        res = runner.invoke(cli_app, ["traverse", "--model", str(folder), "--target", t, "--json", *args])
        assert res.exit_code == 0, res.output
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        assert [r["radius"] for r in rows] == pytest.approx([mv.radius] * len(rows))
        assert [r["moved"] for r in rows] == mv.moved.tolist()
        assert [r["score_after"] for r in rows] == pytest.approx(model.score(mv.points).tolist(), abs=1e-4)
        assert [r["status"] for r in rows] == [mv.describe(i) for i in range(len(QUERIES))]

    # HTTP
    with TestClient(create_app(model, index), base_url="http://127.0.0.1") as client:
        r = client.post("/classify", json={"texts": QUERIES})
        assert r.status_code == 200, r.text
        got = r.json()["results"]
        assert [g["score"] for g in got] == pytest.approx(v.scores.tolist(), abs=1e-6)
        assert [g["unsafe"] for g in got] == v.unsafe.tolist()
        for i, q in enumerate(QUERIES):
            for direction, mode in (("in", "redirect"), ("out", "seek-unsafe")):
                for t in ("text", "image"):
                    mv = moves[(mode, t)]
                    tr = client.post("/traverse", json={"text": q, "target": t, "direction": direction, "k": 0})
                    assert tr.status_code == 200, tr.text
                    tr = tr.json()
                    assert tr["tau"] == pytest.approx(mv.radius) and tr["moved"] == bool(mv.moved[i])
                    assert tr["score_after"] == pytest.approx(float(model.score(mv.points[i:i + 1])[0]), abs=1e-4)
                    assert tr["status"] == mv.describe(i)
            for mode in ("redirect", "seek-unsafe"):
                s = client.post("/search", json={"text": q, "mode": mode, "k": 3}).json()
                for t, got_mv in s["moves"].items():
                    mv = moves[(mode, t)]
                    assert got_mv["radius"] == pytest.approx(mv.radius) and got_mv["moved"] == bool(mv.moved[i])
                    assert got_mv["status"] == mv.describe(i)

    # index search: the searched points are the policy's
    with IndexSearcher(index, model) as s:
        for (mode, t), mv in moves.items():
            q = s.prepare_queries(x, mode, t)
            assert torch.allclose(torch.from_numpy(q).float(), mv.points.float(), atol=1e-6)

    # evaluation
    from hysac.evaluation.encoders import HyperbolicSpace

    space = HyperbolicSpace(model, name="tiny")
    for t in ("text", "image"):
        assert torch.equal(space.redirect(x, t), moves[("redirect", t)].points)
        assert torch.equal(space.seek_unsafe(x, t), moves[("seek-unsafe", t)].points)
        assert space.threshold(t) == pol.threshold(t)
    info = space.info()
    assert info["taus"]["redirect_image"] == pytest.approx(moves[("redirect", "image")].radius)


def test_traverse_rejects_a_tau_of_the_wrong_shape():
    x = torch.randn(4, 8) * 0.3
    from hysac import lorentz as L

    x = L.exp_map0(x, 1.0)
    with pytest.raises(InputError, match=r"tau must be a scalar or \(4,\)"):
        safety.traverse(x, 1.0, torch.full((4, 1), 0.2))
    assert safety.traverse(x, 1.0, torch.full((4,), 0.2)).shape == (4, 8)


def test_threshold_trigger_redirects_only_queries_judged_unsafe(env, tmp_path):
    """``trigger: threshold``: a search's redirect moves a query iff its own modality's verdict is unsafe; a safe
    query keeps its exact point and results. An explicit traversal (no query modality) still moves every query
    beyond the radius, and the rule survives save / load."""
    model, folder, index = env
    m = HySAC.from_pretrained(folder)
    low = min(m.bounds["S"].up_95, m.bounds["V"].up_95)
    # radii (both targets) below every query's score, so that only the trigger decides who moves
    m.traversal = {"rule": "bound", "margin": -low + 1e-3, "trigger": "threshold"}
    pol = m.policy
    x = m.encode_text(QUERIES)
    v = pol.judge(x, "text")
    assert v.unsafe.any() and (~v.unsafe).any()  # both verdicts among the queries
    assert bool((v.scores > pol.radius("redirect", "text")).all())

    mv = pol.move(x, "redirect", "text", query="text")
    assert torch.equal(mv.moved, v.unsafe) and torch.equal(mv.judged_safe, ~v.unsafe)
    assert torch.equal(mv.points[~v.unsafe], x[~v.unsafe])
    assert torch.allclose(m.score(mv.points[v.unsafe]), torch.full((int(v.unsafe.sum()),), mv.radius), atol=1e-4)
    i_safe = int(torch.nonzero(~v.unsafe)[0])
    assert mv.describe(i_safe) == "not moved (judged safe: searched as is)"
    assert mv.describe(int(torch.nonzero(v.unsafe)[0])) == f"pulled in to radius {mv.radius:.3f}"
    # per-query modalities: the same points judged as images use the image threshold
    theta_img = pol.threshold("image")
    mixed = pol.move(x, "redirect", "text", query=["image"] * len(QUERIES))
    assert torch.equal(mixed.moved, v.scores > theta_img)
    # explicit traversal of points: no query modality, every point beyond the radius moves
    assert bool(pol.move(x, "redirect", "text").moved.all())
    assert torch.equal(m.traverse_to_safe_text(x), pol.move(x, "redirect", "text").points)

    with IndexSearcher(index, m) as s:
        q = s.prepare_queries(x, "redirect", "text", "text")
        assert torch.allclose(torch.from_numpy(q).float(), mv.points.float(), atol=1e-6)
        safe_q = [QUERIES[i] for i in torch.nonzero(~v.unsafe).flatten().tolist()]
        red = [r.to_dict()["results"] for r in s.search_text(safe_q, mode="redirect", k=3)]
        off = [r.to_dict()["results"] for r in s.search_text(safe_q, mode="off", k=3)]
        assert [[h["id"] for h in r] for r in red] == [[h["id"] for h in r] for r in off]
    with TestClient(create_app(m, index), base_url="http://127.0.0.1") as client:
        got = client.post("/search", json={"text": QUERIES[i_safe], "mode": "redirect", "k": 3}).json()
        assert got["moves"]["text"]["moved"] is False
        assert got["moves"]["text"]["status"] == "not moved (judged safe: searched as is)"

    assert torch.equal(m.traverse_to_safe_text(x, query="text"), mv.points)
    from hysac.evaluation.encoders import HyperbolicSpace

    assert torch.equal(HyperbolicSpace(m, name="tiny").redirect(x, "text", "text"), mv.points)
    with TestClient(create_app(m, index), base_url="http://127.0.0.1") as client:
        tr = client.post("/traverse", json={"text": QUERIES[i_safe], "target": "text", "direction": "in", "k": 0})
        assert tr.json()["moved"] is False and tr.json()["status"] == "not moved (judged safe: searched as is)"

    saved = m.save_pretrained(tmp_path / "saved")
    again = HySAC.from_pretrained(saved)
    assert again.traversal == m.traversal
    res = CliRunner().invoke(cli_app, ["traverse", "--model", str(saved), "--target", "text", "--json",
                                       *[a for q in QUERIES for a in ("--text", q)]])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["moved"] for r in rows] == v.unsafe.tolist()
    assert [r["status"] for r in rows] == [mv.describe(i) for i in range(len(QUERIES))]


@pytest.mark.parametrize("rule, msg", [
    ({"rule": "bound", "trigger": "sometimes"}, "trigger must be one of radius, threshold, got 'sometimes'"),
    ({"rule": "nearest"}, "rule must be one of official, bound, got 'nearest'"),
    ({"rule": "bound", "margin": "deep"}, "margin must be a finite number, got 'deep'"),
    ({"rule": "bound", "radius": 0.1}, "unknown key"),
    ("bound", "must be a mapping"),
])
def test_bad_traversal_rules_get_one_line(rule, msg, env, tmp_path):
    from hysac.policy import check_traversal
    from hysac.train.config import load_config

    with pytest.raises(InputError, match=msg):
        check_traversal(rule)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"model": {"traversal": rule}}))
    with pytest.raises(InputError, match=r"model\.traversal.*" + msg):
        load_config(cfg)
    # a saved model whose config.json carries the rule: the error names the file
    _, folder, _ = env
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(folder, bad)
    conf = json.loads((bad / "config.json").read_text())
    conf["traversal"] = rule
    (bad / "config.json").write_text(json.dumps(conf))
    with pytest.raises(InputError, match=r"config\.json: traversal.*" + msg):
        HySAC.from_pretrained(bad)
