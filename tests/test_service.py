"""HTTP service: every endpoint on a tiny model + tiny index (FastAPI TestClient), answers checked against the
library, and a fuzz list of bad requests that must all get a 4xx JSON error (never a 500)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from hysac.classify import classify_images, classify_texts
from hysac.errors import InputError
from hysac.index import IndexSearcher
from hysac.service import create_app
from hysac.service.app import WEB_DIR
from hysac.service.demo import make_demo_index, make_tiny_model, png_bytes
from hysac.service.plot import disk_coordinates, poincare_radius

MODES = ["off", "filter", "redirect", "redirect+filter", "seek-unsafe"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("service")
    model = make_tiny_model(root / "model")
    index = make_demo_index(root / "demo", model)
    return model, index, root


@pytest.fixture(scope="module")
def app(env):
    model, index, _ = env
    return create_app(model, index, max_upload_bytes=1024 * 1024, max_batch=16, max_k=50)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture(scope="module")
def searcher(env):
    model, index, _ = env
    with IndexSearcher(index, model) as s:
        yield s


def _png(seed=0, size=32, red=False) -> bytes:
    return png_bytes(seed=seed, size=size, red=red)


# --------------------------------------------------------------------------------------------------- health
def test_health(client, env):
    model, _, _ = env
    r = client.get("/health")
    assert r.status_code == 200
    h = r.json()
    assert h["status"] == "ok"
    assert h["model"]["id"] == model.model_id
    assert math.isclose(h["model"]["curvature"], model.curvature)
    assert h["index"]["items"] == 28 and h["index"]["counts"] == {"total": 28, "text": 20, "image": 8}
    assert h["modes"] == MODES
    assert h["limits"]["max_batch"] == 16 and h["limits"]["max_upload_bytes"] == 1024 * 1024


# ------------------------------------------------------------------------------------------------- classify
def test_classify_texts_matches_library(client, env):
    model, _, _ = env
    texts = ["a cat on a sofa", "a cat covered in blood", "ünïcødé ✓"]
    r = client.post("/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_id"] == model.model_id
    expected = [c.to_dict() for c in classify_texts(model, texts)]
    assert [x["input"] for x in body["results"]] == texts
    for got, exp in zip(body["results"], expected):
        assert got["modality"] == "text" and got["unsafe"] == exp["unsafe"]
        assert got["score"] == pytest.approx(exp["score"], abs=1e-6)
        assert got["threshold"] == pytest.approx(exp["threshold"])
        assert set(got["categories"]) == set(exp["categories"])
    assert [x["truncated"] for x in body["results"]] == [False, False, False]
    long = " ".join(["a cat on a sofa"] * 40)  # longer than the text tower reads
    r = client.post("/classify", json={"texts": [long]})
    assert r.status_code == 200 and r.json()["results"][0]["truncated"] is True
    # an explicit threshold is applied
    r = client.post("/classify", json={"texts": texts, "threshold": 0.0})
    assert all(x["unsafe"] for x in r.json()["results"])


def test_classify_multipart_texts_and_images(client, env, tmp_path):
    model, _, _ = env
    files = [("images", ("first.png", _png(1), "image/png")),
             ("images", ("second.png", _png(2, red=True), "image/png"))]
    r = client.post("/classify", data={"texts": ["a dog", "a weapon"]}, files=files)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["input"] for x in res] == ["a dog", "a weapon", "first.png", "second.png"]
    assert [x["modality"] for x in res] == ["text", "text", "image", "image"]
    for i, seed in enumerate((1, 2)):
        p = tmp_path / f"{seed}.png"
        p.write_bytes(files[i][1][1])
        exp = classify_images(model, [p])[0]
        assert res[2 + i]["score"] == pytest.approx(exp.score, abs=1e-5)
        assert res[2 + i]["unsafe"] == exp.unsafe


# --------------------------------------------------------------------------------------------------- search
@pytest.mark.parametrize("mode", MODES)
def test_search_each_mode_matches_searcher(client, searcher, mode):
    q = "a cat covered in blood"
    r = client.post("/search", json={"text": q, "mode": mode, "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == mode and body["k"] == 7
    assert body["query"]["text"] == q and body["query"]["modality"] == "text"
    assert isinstance(body["query"]["unsafe"], bool) and body["query"]["top_category"]["name"]
    assert body["query"]["truncated"] is False
    exp = searcher.search_text([q], mode=mode, k=7)[0]
    assert body["query"]["safety_score"] == pytest.approx(exp.query_safety_score, abs=1e-6)
    assert [x["id"] for x in body["results"]] == [x.id for x in exp.results]
    dists = [x["distance"] for x in body["results"]]
    assert dists == sorted(dists) and len(dists) <= 7
    for x in body["results"]:
        assert x["similarity"] == pytest.approx(-x["distance"])
        assert set(x) >= {"rank", "id", "modality", "distance", "safety_score", "unsafe", "categories", "metadata",
                          "top_category"}
        if x["modality"] == "text":
            assert "text" in x
        else:
            assert "path" in x and x["image_url"] == f"/items/{x['id']}/image"
    if mode in ("filter", "redirect+filter"):
        assert not any(x["unsafe"] for x in body["results"])


def test_search_modality_rerank_and_image_items(client, searcher):
    r = client.post("/search", json={"text": "a red car", "k": 5, "modality": "image", "rerank": "entail"})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 5 and all(x["modality"] == "image" for x in res)
    assert all("entailed" in x for x in res)
    img = client.get(res[0]["image_url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    with open(res[0]["path"], "rb") as f:
        assert img.content == f.read()
    item = client.get(f"/items/{res[0]['id']}").json()
    assert item["path"] == res[0]["path"] and item["modality"] == "image"
    # text items have no image; unknown ids and non-numbers are 404
    text_id = client.post("/search", json={"text": "a cat", "k": 1, "modality": "text"}).json()["results"][0]["id"]
    for url in (f"/items/{text_id}/image", "/items/999999/image", "/items/-1/image", "/items/abc/image",
                "/items/..%2F..%2Fetc%2Fpasswd/image", "/items/99999999999999999999999/image", "/items/12345678"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert r.json()["code"] == "not_found"


def test_search_image_upload(client, searcher, tmp_path):
    data = _png(5)
    r = client.post("/search", data={"mode": "redirect", "k": "4"}, files={"image": ("query.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["modality"] == "image" and body["query"]["image"] == "query.png"
    p = tmp_path / "q.png"
    p.write_bytes(data)
    exp = searcher.search_image([p], mode="redirect", k=4)[0]
    assert [x["id"] for x in body["results"]] == [x.id for x in exp.results]


# ------------------------------------------------------------------------------------------------- traverse
def test_traverse_redirect_and_plot(client, env, searcher):
    model, _, _ = env
    q = "a cat covered in blood"
    r = client.post("/traverse", json={"text": q, "k": 5})
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["target"] == "image" and t["direction"] == "in"
    assert t["tau"] == pytest.approx(model.redirect_tau("image"))
    assert t["score_before"] > t["tau"] and t["moved"]
    assert t["score_after"] == pytest.approx(t["tau"], abs=1e-4)
    # the "after" neighbours are what mode=redirect searches with
    exp = searcher.search_text([q], mode="redirect", modality="image", k=5)[0]
    assert [x["id"] for x in t["results_after"]] == [x.id for x in exp.results]
    off = searcher.search_text([q], mode="off", modality="image", k=5)[0]
    assert [x["id"] for x in t["results_before"]] == [x.id for x in off.results]
    plot = t["plot"]
    c = plot["curvature"]
    pts = plot["points"]
    ids = {x["id"] for x in t["results_before"]} | {x["id"] for x in t["results_after"]}
    assert [p["role"] for p in pts[:2]] == ["query_before", "query_after"]
    assert {p["id"] for p in pts[2:]} == ids and len(pts) == 2 + len(ids)
    for p in pts:
        assert p["radius"] == pytest.approx(math.tanh(math.sqrt(c) * p["safety_score"] / 2), abs=1e-5)
        assert math.hypot(p["x"], p["y"]) == pytest.approx(p["radius"], abs=1e-9) and p["radius"] < 1
    qb, qa = pts[0], pts[1]
    assert qb["x"] > 0 and abs(qb["y"]) < 1e-6 and qa["x"] > 0 and abs(qa["y"]) < 1e-6 and qa["x"] < qb["x"]
    assert {g["label"] for g in plot["rings"]} == {"text threshold", "image threshold", "redirect radius"}


def test_traverse_out_text_target_and_tau(client, env):
    model, _, _ = env
    r = client.post("/traverse", json={"text": "a cup of coffee", "direction": "out", "target": "text", "k": 3})
    t = r.json()
    assert r.status_code == 200 and t["target"] == "text"
    assert t["tau"] == pytest.approx(model.seek_unsafe_tau("text"))
    assert t["score_after"] >= t["score_before"] - 1e-6
    assert all(x["modality"] == "text" for x in t["results_after"])
    r = client.post("/traverse", json={"text": "a cup of coffee", "tau": 0.1, "k": 0})
    t = r.json()
    assert t["score_after"] == pytest.approx(0.1, abs=1e-4)
    assert t["results_after"] == [] and len(t["plot"]["points"]) == 2
    r = client.post("/traverse", data={"k": "2"}, files={"image": ("x.png", _png(3), "image/png")})
    assert r.status_code == 200 and r.json()["query"]["modality"] == "image"


# ------------------------------------------------------------------------------------------------ bad input
def _bad_requests():
    """(name, method, path, httpx request kwargs, expected status)."""
    png = _png(7)
    corrupt = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
    truncated = png[: len(png) // 2]
    big_pixels = io.BytesIO()
    Image.new("L", (6000, 5000)).save(big_pixels, format="PNG")  # 30 MP, compresses to a few KB
    j = {"headers": {"content-type": "application/json"}}
    cases = [
        # malformed / empty bodies
        ("empty body", "POST", "/search", {"content": b"", **j}, 400),
        ("malformed json", "POST", "/search", {"content": b'{"text": "a', **j}, 400),
        ("trailing garbage", "POST", "/classify", {"content": b'{"texts": ["a"]} x', **j}, 400),
        ("not utf-8", "POST", "/search", {"content": b'{"text": "\xff\xfe"}', **j}, 400),
        ("deep nesting", "POST", "/search", {"content": b"[" * 100_000, **j}, 400),
        ("huge int", "POST", "/search", {"content": b'{"text": "a", "k": ' + b"9" * 5000 + b"}", **j}, 400),
        ("json array", "POST", "/search", {"json": ["a cat"]}, 422),
        ("json null", "POST", "/classify", {"content": b"null", **j}, 422),
        ("json string", "POST", "/traverse", {"json": "a cat"}, 422),
        # empty queries
        ("no fields", "POST", "/search", {"json": {}}, 422),
        ("empty text", "POST", "/search", {"json": {"text": ""}}, 422),
        ("blank text", "POST", "/traverse", {"json": {"text": "  \n\t"}}, 422),
        ("null text", "POST", "/search", {"json": {"text": None, "mode": "off"}}, 422),
        ("classify nothing", "POST", "/classify", {"json": {"texts": []}}, 422),
        ("classify empty item", "POST", "/classify", {"json": {"texts": ["ok", ""]}}, 422),
        ("empty multipart", "POST", "/search", {"data": {"mode": "off"}, "files": {}}, 422),
        # wrong values
        ("unknown mode", "POST", "/search", {"json": {"text": "a", "mode": "unsafe-only"}}, 422),
        ("unknown mode form", "POST", "/search", {"data": {"text": "a", "mode": "x"}}, 422),
        ("unknown modality", "POST", "/search", {"json": {"text": "a", "modality": "video"}}, 422),
        ("unknown rerank", "POST", "/search", {"json": {"text": "a", "rerank": "magic"}}, 422),
        ("k zero", "POST", "/search", {"json": {"text": "a", "k": 0}}, 422),
        ("k negative", "POST", "/search", {"json": {"text": "a", "k": -3}}, 422),
        ("huge k", "POST", "/search", {"json": {"text": "a", "k": 10**12}}, 422),
        ("k float", "POST", "/search", {"json": {"text": "a", "k": 2.5}}, 422),
        ("k string", "POST", "/search", {"json": {"text": "a", "k": "ten"}}, 422),
        ("k inf", "POST", "/search", {"content": b'{"text": "a", "k": 1e400}', **j}, 422),
        ("text number", "POST", "/search", {"json": {"text": 42}}, 422),
        ("text list", "POST", "/search", {"json": {"text": ["a", "b"]}}, 422),
        ("unknown field", "POST", "/search", {"json": {"text": "a", "query": "b"}}, 422),
        ("text too long", "POST", "/search", {"json": {"text": "a" * 20_000}}, 422),
        ("lone surrogate", "POST", "/search", {"content": b'{"text": "\\ud800"}', **j}, 422),
        ("texts not list", "POST", "/classify", {"json": {"texts": "a cat"}}, 422),
        ("texts numbers", "POST", "/classify", {"json": {"texts": [1, 2]}}, 422),
        ("threshold nan", "POST", "/classify", {"content": b'{"texts": ["a"], "threshold": NaN}', **j}, 422),
        ("too many texts", "POST", "/classify", {"json": {"texts": ["a"] * 17}}, 422),
        ("too many uploads", "POST", "/classify", {"files": [("images", (f"{i}.png", png, "image/png"))
                                                               for i in range(17)]}, (400, 422)),
        ("bad direction", "POST", "/traverse", {"json": {"text": "a", "direction": "sideways"}}, 422),
        ("negative tau", "POST", "/traverse", {"json": {"text": "a", "tau": -1}}, 422),
        ("bad target", "POST", "/traverse", {"json": {"text": "a", "target": "audio"}}, 422),
        ("huge k traverse", "POST", "/traverse", {"json": {"text": "a", "k": 1000}}, 422),
        ("duplicate form field", "POST", "/search", {"content": b"text=a&text=b",
                                                     "headers": {"content-type": "application/x-www-form-urlencoded"}},
         422),
        # images
        ("corrupt image classify", "POST", "/classify", {"files": {"images": ("broken.png", corrupt, "image/png")}},
         422),
        ("corrupt image search", "POST", "/search", {"files": {"image": ("broken.png", corrupt, "image/png")}}, 422),
        ("corrupt image traverse", "POST", "/traverse", {"files": {"image": ("broken.png", corrupt, "image/png")}},
         422),
        ("truncated image", "POST", "/search", {"files": {"image": ("half.png", truncated, "image/png")}}, 422),
        ("empty image", "POST", "/search", {"files": {"image": ("empty.png", b"", "image/png")}}, 422),
        ("text as image", "POST", "/classify", {"files": {"images": ("notes.png", b"hello world", "text/plain")}}, 422),
        ("too many pixels", "POST", "/search", {"files": {"image": ("huge.png", big_pixels.getvalue(), "image/png")}},
         413),
        ("two image queries", "POST", "/search", {"files": [("image", ("a.png", png, "image/png")),
                                                            ("image", ("b.png", png, "image/png"))]}, (400, 422)),
        ("text and image", "POST", "/search", {"data": {"text": "a"}, "files": {"image": ("a.png", png, "image/png")}},
         422),
        # content types and sizes
        ("text/plain", "POST", "/search", {"content": b"a cat", "headers": {"content-type": "text/plain"}}, 415),
        ("no content type", "POST", "/classify", {"content": b'{"texts": ["a"]}'}, 415),
        ("xml", "POST", "/traverse", {"content": b"<q>a</q>", "headers": {"content-type": "application/xml"}}, 415),
        ("bad multipart", "POST", "/search", {"content": b"--xx\r\nnot a part",
                                              "headers": {"content-type": "multipart/form-data; boundary=yy"}},
         (400, 422)),
        ("multipart no boundary", "POST", "/search", {"content": b"abc",
                                                      "headers": {"content-type": "multipart/form-data"}}, 400),
        ("oversize json", "POST", "/search", {"json": {"text": "a" * (2 * 1024 * 1024)}}, 413),
        ("oversize upload", "POST", "/classify", {"files": {"images": ("big.png", b"\0" * (2 * 1024 * 1024),
                                                                       "image/png")}}, 413),
        ("bad content-length", "POST", "/search", {"content": b"{}", "headers": {"content-length": "abc",
                                                                                 "content-type": "application/json"}},
         400),
        # routing
        ("wrong method", "GET", "/search", {}, 405),
        ("unknown endpoint", "POST", "/nope", {"json": {}}, 404),
        ("delete health", "DELETE", "/health", {}, 405),
    ]
    return cases


BAD = _bad_requests()


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_4xx_json(client, case):
    name, method, path, kwargs, expected = case
    r = client.request(method, path, **kwargs)
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert r.status_code in allowed, f"{name}: {r.status_code} {r.text[:300]}"
    assert 400 <= r.status_code < 500
    assert r.headers["content-type"].startswith("application/json"), name
    body = r.json()
    assert isinstance(body["error"], str) and body["error"] and body["status"] == r.status_code and body["code"]


def test_error_messages_name_the_problem(client):
    corrupt = b"GIF89a" + b"\x00" * 30
    r = client.post("/classify", data={"texts": ["fine"]}, files=[("images", ("ok.png", _png(), "image/png")),
                                                                  ("images", ("cat photo.gif", corrupt, "image/gif"))])
    assert r.status_code == 422 and "cat photo.gif" in r.json()["error"]
    r = client.post("/search", json={"text": "a", "mode": "unsafe-only"})
    assert "mode" in r.json()["error"] and "seek-unsafe" in r.json()["error"]
    r = client.post("/search", json={"text": "a", "k": 500})
    assert "k must be between 1 and 50" in r.json()["error"]
    r = client.post("/search", json={"text": " "})
    assert r.json()["code"] == "empty_query"
    r = client.post("/classify", json={"texts": ["a", ""]})
    assert "texts[1]" in r.json()["error"]
    r = client.post("/search", json={"text": "a", "oops": 1})
    assert "oops" in r.json()["error"]


def test_chunked_oversize_body_is_413(client):
    def gen():
        for _ in range(40):
            yield b"x" * 65536  # 2.5 MiB, no Content-Length

    r = client.post("/search", content=gen(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_service_still_healthy_after_fuzz(client):
    for case in BAD[:10]:
        client.request(case[1], case[2], **case[3])
    assert client.post("/search", json={"text": "a dog", "k": 3}).status_code == 200


# ------------------------------------------------------------------------------------------------ concurrency
def test_concurrent_requests_queue_and_health_stays_responsive(app):
    engine = app.state.engine

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            blocker = asyncio.ensure_future(engine.run(time.sleep, 2.0))  # occupy the inference worker
            await asyncio.sleep(0.05)
            searches = [asyncio.ensure_future(c.post("/search", json={"text": f"query {i}", "k": 3, "mode": m}))
                        for i, m in enumerate(MODES * 4)]
            await asyncio.sleep(0.05)
            h = await c.get("/health")
            health_while_busy = not blocker.done()
            assert h.status_code == 200 and h.json()["pending"] >= 2
            done = await asyncio.gather(*searches)
            await blocker
            return health_while_busy, done

    health_while_busy, done = asyncio.run(main())
    assert health_while_busy  # /health answered while the worker was still busy
    assert [r.status_code for r in done] == [200] * len(done)


def test_concurrent_single_queries_are_coalesced_into_batched_model_calls(env):
    """Queries that arrive while the worker is busy are encoded together: same answers as one call per query, far
    fewer model calls; a query that makes the model fail is isolated (422) and the others still succeed."""
    model, index, _ = env
    texts = [f"a photo of item {i}" for i in range(12)] + ["a cat covered in blood", "a bowl of fruit"]

    async def burst(app, payloads, path="/search"):
        engine = app.state.engine
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            blocker = asyncio.ensure_future(engine.run(time.sleep, 0.3))  # let the queries pile up
            await asyncio.sleep(0.02)
            rs = await asyncio.gather(*[c.post(path, json=p) for p in payloads])
            await blocker
            return rs

    one_by_one = create_app(model, index, coalesce=1, warmup=False)
    batched = create_app(model, index, coalesce=64, warmup=False)
    payloads = [{"text": t, "k": 5, "mode": m} for t, m in zip(texts, MODES * 3)]
    ref = asyncio.run(burst(one_by_one, payloads))
    got = asyncio.run(burst(batched, payloads))
    assert [r.status_code for r in got] == [200] * len(payloads)
    for a, b in zip(ref, got):
        a, b = a.json(), b.json()
        assert b["query"]["safety_score"] == pytest.approx(a["query"]["safety_score"], rel=1e-5, abs=1e-6)
        assert [r["id"] for r in b["results"]] == [r["id"] for r in a["results"]]
    stats = batched.state.engine.encode_stats
    assert stats["queries"] == len(payloads) and stats["calls"] <= 3
    assert one_by_one.state.engine.encode_stats["calls"] == len(payloads)
    trav = asyncio.run(burst(batched, [{"text": t} for t in texts[:4]], "/traverse"))
    assert [r.status_code for r in trav] == [200] * 4

    # a query the model refuses fails alone
    real = model.encode_text

    def picky(items, **kw):
        if any("poison" in t for t in items):
            raise InputError("this query cannot be encoded (poison)")
        return real(items, **kw)

    model.encode_text = picky
    try:
        rs = asyncio.run(burst(batched, [{"text": "a dog", "k": 2}, {"text": "poison pill", "k": 2},
                                         {"text": "a car", "k": 2}]))
    finally:
        del model.encode_text
    assert [r.status_code for r in rs] == [200, 422, 200]
    assert "poison" in rs[1].json()["error"]
    one_by_one.state.engine.close()
    batched.state.engine.close()
    with pytest.raises(InputError, match="coalesce"):
        create_app(model, index, coalesce=0, warmup=False)


def test_busy_queue_answers_503(env):
    model, index, _ = env
    app = create_app(model, index, max_pending=2, warmup=False)
    engine = app.state.engine

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            blocker = asyncio.ensure_future(engine.run(time.sleep, 0.5))
            await asyncio.sleep(0.05)
            rs = await asyncio.gather(*[c.post("/search", json={"text": "a", "k": 2}) for _ in range(4)])
            await blocker
            return rs

    rs = asyncio.run(main())
    codes = sorted(r.status_code for r in rs)
    assert codes.count(503) >= 2 and 200 in codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.json()["code"] == "busy" and busy.headers["retry-after"] == "1"
    engine.close()


# ------------------------------------------------------------------------------------ no index / bad model
def test_app_without_index(env):
    model, _, _ = env
    app = create_app(model, None, warmup=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/health").json()["index"] is None
        r = c.post("/search", json={"text": "a"})
        assert r.status_code == 503 and r.json()["code"] == "no_index"
        t = c.post("/traverse", json={"text": "a cat covered in blood"}).json()
        assert t["results_after"] == [] and len(t["plot"]["points"]) == 2 and t["target"] == "image"
        assert c.get("/items/0/image").status_code == 404
        assert c.post("/classify", json={"texts": ["a"]}).status_code == 200


def test_model_without_bounds_is_refused(env, tmp_path):
    model = make_tiny_model(tmp_path / "m", calibrate=False, categories=False)
    model.bounds = None
    with pytest.raises(InputError, match="bounds"):
        create_app(model, None)


# ----------------------------------------------------------------------------------------------- page, docs
def test_page_and_static_files_are_local(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in html
        a = client.get(asset)
        assert a.status_code == 200 and len(a.text) > 100
    for name in ("index.html", "app.js", "style.css"):
        text = (WEB_DIR / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), f"{name} loads an external resource"
        assert not re.search(r"url\(\s*[\"']?(https?:)?//", text), name
    assert client.get("/static/../app.py").status_code == 404


def test_openapi_docs(client):
    spec = client.get("/openapi.json").json()
    for path in ("/health", "/classify", "/search", "/traverse", "/items/{item_id}/image"):
        assert path in spec["paths"], path
    for path in ("/classify", "/search", "/traverse"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
    assert "seek-unsafe" in json.dumps(spec["paths"]["/search"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()
    m = re.search(r"""['"](/_docs/swagger-ui-bundle\.js)['"]""", docs.text)
    if m:  # assets shipped locally (fastapi-offline installed): they must be served
        assert client.get(m.group(1)).status_code == 200


# ------------------------------------------------------------------------------------------------------ CLI
def test_serve_command_is_mounted_and_validates():
    from typer.testing import CliRunner

    from hysac.cli import app as cli_app

    runner = CliRunner()
    r = runner.invoke(cli_app, ["serve", "--help"])
    assert r.exit_code == 0
    for opt in ("--index", "--model", "--host", "--port", "--max-upload-mb", "--torch-threads"):
        assert opt in r.output
    r = runner.invoke(cli_app, ["serve", "--index", "/nonexistent/index/dir"])
    assert r.exit_code == 2 and "index not found" in r.output


# ---------------------------------------------------------------------------------------------------- plot
def test_disk_coordinates_keep_radius_and_angle_to_anchor():
    rng = np.random.default_rng(0)
    c = 0.7
    x = rng.normal(size=(9, 12)) * rng.uniform(0.1, 3, size=(9, 1))
    x[4] = 0.0  # the origin
    xy = disk_coordinates(x, c, anchor=0)
    d = np.arcsinh(math.sqrt(c) * np.linalg.norm(x, axis=1)) / math.sqrt(c)
    np.testing.assert_allclose(np.hypot(xy[:, 0], xy[:, 1]), poincare_radius(d, c), atol=1e-12)
    assert xy[0, 0] > 0 and xy[0, 1] == pytest.approx(0, abs=1e-12)
    np.testing.assert_array_equal(xy[4], [0.0, 0.0])
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    for i in (1, 2, 3, 5, 8):
        true = math.acos(np.clip(u[i] @ u[0], -1, 1))
        assert math.atan2(abs(xy[i, 1]), xy[i, 0]) == pytest.approx(true, abs=1e-9)
    assert (np.hypot(xy[:, 0], xy[:, 1]) < 1).all()
    assert disk_coordinates(np.zeros((0, 5)), c).shape == (0, 2)
    np.testing.assert_array_equal(disk_coordinates(np.zeros((3, 4)), c), np.zeros((3, 2)))
    same = disk_coordinates(np.stack([x[1], 2 * x[1]]), c)  # collinear: both on the positive x-axis
    assert (same[:, 0] > 0).all() and np.allclose(same[:, 1], 0)
    torch.manual_seed(0)  # keep the module's RNG use explicit


# ------------------------------------------------------------------------------------------- real uvicorn server
def test_real_server_limits_and_concurrency(app):
    """Over a real loopback socket (uvicorn): oversize bodies get a 413 answer (not a reset connection), with or
    without Content-Length, and concurrent clients all get answers."""
    from hysac.service.server import serve_in_thread

    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    async def burst(url):
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            reqs = [c.post("/search", json={"text": f"q {i}", "mode": MODES[i % 5], "k": 4}) for i in range(30)]
            reqs += [c.post("/classify", json={"texts": ["a", "b"]}) for _ in range(10)]
            return await asyncio.gather(*reqs)

    with serve_in_thread(app) as url:
        with httpx.Client(base_url=url, timeout=60) as c:
            r = c.post("/classify", files={"images": ("big.png", b"\0" * (3 * 1024 * 1024), "image/png")})
            assert r.status_code == 413 and r.json()["code"] == "payload_too_large"
            r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413
            assert c.get("/health").status_code == 200
        codes = [r.status_code for r in asyncio.run(burst(url))]
        assert codes == [200] * 40


def test_item_images_are_served_only_from_the_indexed_folders(tmp_path):
    """An indexed image swapped for a symlink to a file elsewhere (or to a non-image) is not served."""
    from hysac.service.demo import make_demo_index, make_tiny_model

    model = make_tiny_model(tmp_path / "model")
    index = make_demo_index(tmp_path / "demo", model, n_images=3)
    secret = tmp_path / "secret.png"  # outside the indexed folder, even with an image suffix
    secret.write_bytes(b"not for you")
    with TestClient(create_app(model, index, warmup=False), base_url="http://127.0.0.1") as c:
        res = c.post("/search", json={"text": "a red car", "k": 3, "modality": "image"}).json()["results"]
        first, second = res[0], res[1]
        assert c.get(first["image_url"]).status_code == 200
        p = Path(first["path"])
        p.unlink()
        p.symlink_to(secret)
        r = c.get(first["image_url"])
        assert r.status_code == 404 and b"not for you" not in r.content
        q = Path(second["path"])
        q.unlink()
        q.symlink_to("/etc/passwd")
        assert c.get(second["image_url"]).status_code == 404
        # a symlink that stays inside the indexed folder is still an image of the index
        inside = sorted(p.parent.glob("*.png"))[-1]
        p.unlink()
        p.symlink_to(inside)
        assert c.get(first["image_url"]).status_code == 200


def test_host_origin_checks_and_security_headers(app):
    """DNS rebinding (a foreign Host), cross-site posts (a foreign Origin, Sec-Fetch-Site: cross-site) are refused;
    same-origin page requests and plain API clients (no Origin) work; every answer carries the headers."""
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        ok = c.post("/classify", json={"texts": ["a cat"]})
        assert ok.status_code == 200
        for k, v in (("x-content-type-options", "nosniff"), ("x-frame-options", "DENY")):
            assert ok.headers[k] == v
        assert "default-src 'self'" in ok.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in c.get("/").headers["content-security-policy"]
        same = c.post("/classify", json={"texts": ["a cat"]}, headers={"Origin": "http://127.0.0.1:8000"})
        assert same.status_code == 200
        for hdrs in ({"Origin": "http://evil.example"}, {"Origin": "http://127.0.0.1:9999"}, {"Origin": "null"},
                     {"Sec-Fetch-Site": "cross-site"}):
            r = c.post("/classify", json={"texts": ["a cat"]}, headers=hdrs)
            assert r.status_code == 403 and r.json()["code"] == "cross_origin", hdrs
        form = c.post("/search", data={"text": "a cat"}, headers={"Origin": "http://evil.example"})
        assert form.status_code == 403
        # a GET from another page is harmless (and needed for <img> in the page)
        assert c.get("/health", headers={"Origin": "http://evil.example"}).status_code == 200
    with TestClient(app, base_url="http://rebind.evil.example:8000") as c:
        r = c.get("/health")
        assert r.status_code == 421 and r.json()["code"] == "bad_host" and "--allow-host" in r.json()["error"]
    with TestClient(app, base_url="http://localhost:8000") as c:
        assert c.get("/health").status_code == 200
