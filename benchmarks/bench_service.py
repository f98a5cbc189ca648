"""Load test of the HTTP service: N concurrent clients for T seconds on loopback, then a fuzz pass of bad requests.

A child process serves the app with uvicorn (a tiny random model and a demo index built on the spot, or
``--model NAME`` with a demo index built with it); this process runs ``--clients`` asyncio clients (httpx) that
each loop over a mix of requests until the deadline — /search (text, every mode, some with an image upload),
/classify (texts, some with image uploads) and /traverse — recording status and latency. Then every request of a
list of bad inputs is sent once (each must get a 4xx JSON error), and /health must still answer.

    python benchmarks/bench_service.py                      # 100 clients, 60 s, tiny model
    python benchmarks/bench_service.py --clients 20 --duration 10 --out /tmp/s   # quick check

Writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/service``). Exit code 1 if any 5xx,
transport error or non-4xx answer to a bad input was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_name, stop_server, versions, wait_for_health  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ["off", "filter", "redirect", "redirect+filter", "seek-unsafe"]
WORDS = ("a cat dog car street market knife blood gun park lake coffee train child football night weapon drugs "
         "fruit mountain sofa sun ball road city people table gore fight").split()


# ------------------------------------------------------------------------------------------------ server side
def serve(args) -> None:
    """Child process: build the model and the demo index, then serve on the given port until killed."""
    import uvicorn

    from hysac.service import create_app
    from hysac.service.demo import make_demo_index, make_tiny_model

    root = Path(args.root)
    threads, *flags = (args.torch_threads or "default").split("+")
    coalesce = next((int(f[len("coalesce"):]) for f in flags if f.startswith("coalesce")), 64)
    if threads != "default":
        import torch

        torch.set_num_threads(int(threads))
    if args.model:
        from hysac.model import load_model

        model = load_model(args.model)
    else:
        model = make_tiny_model(root / "model")
    index = make_demo_index(root / "demo", model, n_images=args.images, repeat=args.repeat)
    app = create_app(model, index, fast="fast" in flags, coalesce=coalesce)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False,
                timeout_keep_alive=args.keep_alive)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, root: Path, threads: str) -> tuple[subprocess.Popen, str]:

    port = free_port()
    cmd = [sys.executable, __file__, "--serve", "--root", str(root), "--port", str(port),
           "--repeat", str(args.repeat), "--images", str(args.images), "--torch-threads", threads,
           "--keep-alive", str(args.keep_alive)]
    if args.model:
        cmd += ["--model", args.model]
    log = open(root / f"server-{threads}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    return wait_for_health(proc, url, root / f"server-{threads}.log", args.startup_timeout, 0.5)


# ------------------------------------------------------------------------------------------------ load phase
def png(seed: int, size: int = 48) -> bytes:
    import numpy as np
    from PIL import Image

    arr = np.random.default_rng(seed).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_request(rng: random.Random, images: list[bytes]) -> tuple[str, str, dict]:
    """(kind, path, httpx kwargs) of one random request of the mix."""
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
    u = rng.random()
    if u < 0.45:
        return "search_text", "/search", {"json": {"text": text, "mode": rng.choice(MODES), "k": rng.randint(5, 20)}}
    if u < 0.55:
        return "search_image", "/search", {"data": {"mode": rng.choice(MODES), "k": "10"},
                                            "files": {"image": ("q.png", rng.choice(images), "image/png")}}
    if u < 0.85:
        texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(rng.randint(1, 8))]
        return "classify_text", "/classify", {"json": {"texts": texts}}
    if u < 0.95:
        files = [("images", (f"{i}.png", rng.choice(images), "image/png")) for i in range(rng.randint(1, 3))]
        return "classify_image", "/classify", {"files": files}
    return "traverse", "/traverse", {"json": {"text": text, "k": 8, "direction": rng.choice(["in", "out"])}}


async def client_loop(i: int, client, deadline: float, images: list[bytes], out: list) -> None:
    import httpx

    rng = random.Random(1000 + i)
    while time.monotonic() < deadline:
        kind, path, kw = make_request(rng, images)
        t0 = time.perf_counter()
        server_s = None
        try:
            r = await client.post(path, **kw)
            status = r.status_code
            if status == 200:
                body = r.json()
                if "took_ms" in body:  # /search and /traverse: time inside the handler (queue wait included)
                    server_s = body["took_ms"] / 1e3
            err = None if status < 500 else r.text[:300]
        except httpx.HTTPError as e:
            status, err = -1, f"{type(e).__name__}: {e}"
        out.append((kind, status, time.perf_counter() - t0, time.monotonic(), err, server_s))


async def load_phase(url: str, clients: int, duration: float) -> tuple[list, float]:
    """``clients`` independent clients, each with its own keep-alive connection (one shared httpx pool of N
    connections adds seconds of client-side queueing to the tail under load, which is not the server's doing)."""
    import httpx

    images = [png(s) for s in range(6)]
    out: list = []

    async def one(i: int, deadline: float) -> None:
        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=1),
                                     timeout=httpx.Timeout(120.0)) as client:
            await client_loop(i, client, deadline, images, out)

    t0 = time.monotonic()
    deadline = t0 + duration
    await asyncio.gather(*(one(i, deadline) for i in range(clients)))
    return out, time.monotonic() - t0


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(rows: list, wall: float) -> dict:
    lat = [r[2] for r in rows if r[1] == 200]
    srv = [r[5] for r in rows if r[1] == 200 and r[5] is not None]
    by_kind = defaultdict(list)
    for kind, status, t, *_ in rows:
        if status == 200:
            by_kind[kind].append(t)
    statuses = Counter(str(r[1]) for r in rows)
    errors = [r[4] for r in rows if r[4]]
    ms = lambda v: None if v is None else round(v * 1e3, 1)  # noqa: E731
    return {
        "requests": len(rows),
        "ok": len(lat),
        "status_counts": dict(sorted(statuses.items())),
        "5xx": sum(1 for r in rows if r[1] >= 500),
        "transport_errors": sum(1 for r in rows if r[1] == -1),
        "first_errors": errors[:5],
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(lat) / wall, 2) if wall else None,
        "latency_ms": {"p50": ms(pct(lat, 50)), "p90": ms(pct(lat, 90)), "p99": ms(pct(lat, 99)),
                       "max": ms(max(lat) if lat else None), "mean": ms(sum(lat) / len(lat) if lat else None)},
        "handler_ms_search_traverse": {"p50": ms(pct(srv, 50)), "p99": ms(pct(srv, 99))},
        "by_kind": {k: {"n": len(v), "p50_ms": ms(pct(v, 50)), "p99_ms": ms(pct(v, 99))}
                    for k, v in sorted(by_kind.items())},
    }


# ------------------------------------------------------------------------------------------------- fuzz phase
def bad_requests(max_bytes: int) -> list[tuple[str, str, str, dict]]:
    from PIL import Image

    good = png(1)
    corrupt = b"\x89PNG\r\n\x1a\n" + b"garbage" * 20
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, format="PNG")
    j = {"headers": {"content-type": "application/json"}}

    def chunks(total):
        sent = 0
        while sent < total:
            yield b"x" * 65536
            sent += 65536

    return [
        ("empty body", "POST", "/search", {"content": b"", **j}),
        ("malformed json", "POST", "/search", {"content": b'{"text": ', **j}),
        ("deep nesting", "POST", "/classify", {"content": b"[" * 200_000, **j}),
        ("not utf-8", "POST", "/search", {"content": b'{"text": "\xff"}', **j}),
        ("json array", "POST", "/search", {"json": ["x"]}),
        ("empty text", "POST", "/search", {"json": {"text": ""}}),
        ("blank text", "POST", "/traverse", {"json": {"text": "   "}}),
        ("no query", "POST", "/search", {"json": {"mode": "off"}}),
        ("unknown mode", "POST", "/search", {"json": {"text": "a", "mode": "nsfw"}}),
        ("k=0", "POST", "/search", {"json": {"text": "a", "k": 0}}),
        ("huge k", "POST", "/search", {"json": {"text": "a", "k": 10**9}}),
        ("k string", "POST", "/search", {"json": {"text": "a", "k": "many"}}),
        ("k inf", "POST", "/search", {"content": b'{"text": "a", "k": 1e999}', **j}),
        ("text number", "POST", "/search", {"json": {"text": 5}}),
        ("unknown field", "POST", "/search", {"json": {"text": "a", "x": 1}}),
        ("lone surrogate", "POST", "/search", {"content": b'{"text": "\\udfff"}', **j}),
        ("too long text", "POST", "/search", {"json": {"text": "ab " * 20_000}}),
        ("classify empty", "POST", "/classify", {"json": {"texts": []}}),
        ("classify blank item", "POST", "/classify", {"json": {"texts": ["a", " "]}}),
        ("too many texts", "POST", "/classify", {"json": {"texts": ["a"] * 1000}}),
        ("threshold NaN", "POST", "/classify", {"content": b'{"texts": ["a"], "threshold": NaN}', **j}),
        ("bad direction", "POST", "/traverse", {"json": {"text": "a", "direction": "up"}}),
        ("negative tau", "POST", "/traverse", {"json": {"text": "a", "tau": -2}}),
        ("corrupt image", "POST", "/search", {"files": {"image": ("bad.png", corrupt, "image/png")}}),
        ("truncated image", "POST", "/classify", {"files": {"images": ("half.png", good[: len(good) // 2],
                                                                       "image/png")}}),
        ("empty image", "POST", "/traverse", {"files": {"image": ("e.png", b"", "image/png")}}),
        ("pixel bomb", "POST", "/search", {"files": {"image": ("bomb.png", bomb.getvalue(), "image/png")}}),
        ("two images", "POST", "/search", {"files": [("image", ("a.png", good, "image/png")),
                                                     ("image", ("b.png", good, "image/png"))]}),
        ("text+image", "POST", "/search", {"data": {"text": "a"}, "files": {"image": ("a.png", good, "image/png")}}),
        ("text/plain", "POST", "/search", {"content": b"a cat", "headers": {"content-type": "text/plain"}}),
        ("no content type", "POST", "/classify", {"content": b'{"texts": ["a"]}'}),
        ("multipart no boundary", "POST", "/search", {"content": b"x",
                                                      "headers": {"content-type": "multipart/form-data"}}),
        ("broken multipart", "POST", "/search", {"content": b"--a\r\nContent-Disposition: form-data\r\n\r\nzz",
                                                 "headers": {"content-type": "multipart/form-data; boundary=a"}}),
        ("oversize json", "POST", "/search", {"json": {"text": "a" * (max_bytes + 10)}}),
        ("oversize upload", "POST", "/classify", {"files": {"images": ("big.png", b"\0" * (max_bytes + 10),
                                                                       "image/png")}}),
        ("oversize chunked", "POST", "/search", {"content": chunks(max_bytes + 65536), **j}),
        ("wrong method", "GET", "/classify", {}),
        ("unknown path", "POST", "/admin", {"json": {}}),
        ("item not found", "GET", "/items/99999999/image", {}),
        ("item path traversal", "GET", "/items/..%2F..%2Fetc%2Fpasswd/image", {}),
    ]


def fuzz_phase(url: str, max_bytes: int) -> dict:
    import httpx

    results = []
    with httpx.Client(base_url=url, timeout=60) as c:
        for name, method, path, kw in bad_requests(max_bytes):
            try:
                r = c.request(method, path, **kw)
                ok_json = r.headers.get("content-type", "").startswith("application/json")
                body = r.json() if ok_json else {}
                results.append({"case": name, "status": r.status_code,
                                "json_error": bool(ok_json and isinstance(body.get("error"), str)),
                                "message": (body.get("error") or "")[:120]})
            except httpx.HTTPError as e:
                results.append({"case": name, "status": -1, "json_error": False, "message": f"{type(e).__name__}: {e}"})
        alive = c.get("/health").status_code == 200
    passed = [r for r in results if 400 <= r["status"] < 500 and r["json_error"]]
    return {"cases": len(results), "passed": len(passed), "5xx": sum(1 for r in results if r["status"] >= 500),
            "failures": [r for r in results if r not in passed], "healthy_after": alive, "results": results}


# ------------------------------------------------------------------------------------------------------ report
def environment() -> dict:
    import fastapi
    import httpx
    import starlette
    import torch
    import uvicorn

    cpu = cpu_name()
    hysac_v = versions("hysac")["hysac"] or "?"
    return {"date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "machine": {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
            "versions": {"python": platform.python_version(), "hysac": hysac_v, "torch": torch.__version__,
                         "fastapi": fastapi.__version__, "starlette": starlette.__version__,
                         "uvicorn": uvicorn.__version__, "httpx": httpx.__version__}}


def server_memory(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":", 1)
                out[k] = v.strip()
    except OSError:
        pass
    return out


def interpretation(res: dict) -> list[str]:
    """A few sentences computed from the runs (no conclusion written in advance)."""
    runs = res["runs"]
    clients = res["setup"]["clients"]
    out = []
    for r in runs:
        L = r["load"]
        lat, h = L["latency_ms"], L["handler_ms_search_traverse"]
        if not L["throughput_rps"] or lat["p50"] is None:
            continue
        expect = clients / L["throughput_rps"] * 1e3
        out.append(f"- config {r['torch_threads']}: p50 {lat['p50']} ms vs clients/throughput = "
                   f"{expect:.0f} ms (the queue for the single inference worker); handler p50 {h['p50']} ms, i.e. "
                   f"{(lat['p50'] - (h['p50'] or 0)):.0f} ms of the client-observed p50 is spent outside the "
                   f"handler (HTTP, body parsing, JSON, the client's own CPU); p99/p50 = "
                   f"{lat['p99'] / lat['p50']:.1f}.")
    if len(runs) > 1:
        best = max(runs, key=lambda r: r["load"]["throughput_rps"] or 0)
        worst = min(runs, key=lambda r: r["load"]["throughput_rps"] or 0)
        if best is not worst and worst["load"]["throughput_rps"]:
            gain = best["load"]["throughput_rps"] / worst["load"]["throughput_rps"]
            out.append(f"- config {best['torch_threads']} gave {gain:.2f}x the throughput of "
                       f"{worst['torch_threads']} on this machine (`hysac serve --torch-threads N [--fast] [--coalesce N]`).")
    out.append("- Each simulated client has its own connection. Sharing one httpx pool of 100 connections among the "
               "100 clients (an earlier version of this script) added seconds of client-side waiting to the tail "
               "(p99 ≈ 6 s, while the server-side time stayed ≈ 1.4 s).")
    return out


def write_report(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    F = res["fuzz"]
    e = res["environment"]
    st = res["setup"]
    lines = [
        "# HTTP service load test",
        "",
        f"- date: {e['date']}",
        f"- machine: {e['machine']['cpu']}, {e['machine']['cores']} cores, {e['machine']['platform']}; load average "
        f"at start {e['machine']['loadavg_at_start']}, at end {e['machine'].get('loadavg_at_end')} (the load clients "
        "and the server share the same cores)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in e["versions"].items()),
        f"- model: {st['model']}; index: {st['index_items']} items ({st['index_counts']}); the service runs "
        "inference and search in one worker thread",
        f"- load: {st['clients']} concurrent clients (one httpx.AsyncClient and keep-alive connection each, on "
        f"loopback, all in one asyncio process) for "
        f"{st['duration_s']} s "
        "per configuration; mix: 45% /search text (random mode, k 5-20), 10% /search image upload, 30% /classify "
        "1-8 texts, 10% /classify 1-3 image uploads, 5% /traverse (in or out)",
        "- command: `python benchmarks/bench_service.py" + "".join(" " + a for a in st.get("argv", [])) + "`",
        "",
        "## Load",
        "",
        "| server config (threads[+fast][+coalesceN]) | requests | 200 OK | 5xx | transport errors | throughput (req/s) | p50 ms | p90 ms | p99 ms "
        "| max ms | handler p50/p99 ms (search, traverse) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in res["runs"]:
        L = run["load"]
        lat = L["latency_ms"]
        h = L["handler_ms_search_traverse"]
        lines.append(f"| {run['torch_threads']} | {L['requests']} | {L['ok']} | {L['5xx']} | {L['transport_errors']} "
                     f"| {L['throughput_rps']} | {lat['p50']} | {lat['p90']} | {lat['p99']} | {lat['max']} "
                     f"| {h['p50']} / {h['p99']} |")
    lines += ["", "Per request kind (p50 / p99 ms, client-observed):", "",
              "| server config | " + " | ".join(res["runs"][0]["load"]["by_kind"]) + " |",
              "|---|" + "---|" * len(res["runs"][0]["load"]["by_kind"])]
    for run in res["runs"]:
        cells = [f"{v['p50_ms']} / {v['p99_ms']} (n={v['n']})" for v in run["load"]["by_kind"].values()]
        lines.append(f"| {run['torch_threads']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Server memory (peak RSS): " + ", ".join(f"{r['torch_threads']}: {r['server_memory'].get('VmHWM')}"
                                                 for r in res["runs"]) + ".",
        "",
    ] + interpretation(res) + [
        "",
        "## Fuzz pass (bad inputs, each sent once after the load phase of the first configuration)",
        "",
        f"{F['passed']}/{F['cases']} answered 4xx with a JSON error; 5xx: {F['5xx']}; "
        f"/health afterwards: {'ok' if F['healthy_after'] else 'FAILED'}.",
        "",
        "| case | status | message |",
        "|---|---|---|",
    ]
    for r in F["results"]:
        msg = r["message"].replace("|", "\\|")
        lines.append(f"| {r['case']} | {r['status']} | {msg} |")
    lines += ["", f"Verdict: **{'PASS' if res['pass'] else 'FAIL'}** (no 5xx, no transport error, every bad input "
                  "answered 4xx + JSON, server alive at the end).", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load per configuration")
    ap.add_argument("--model", default=None, help="model name/folder (default: a tiny random model)")
    ap.add_argument("--repeat", type=int, default=25, help="demo texts ×repeat in the index (20 per repeat)")
    ap.add_argument("--images", type=int, default=24, help="images in the index")
    ap.add_argument("--torch-threads", default="default,1",
                    help="comma-separated server configurations: torch intra-op threads ('default' = torch's), "
                         "'+fast' for `hysac serve --fast`, '+coalesceN' for `--coalesce N` (default 64), e.g. "
                         "1+coalesce1,1,1+fast")
    ap.add_argument("--keep-alive", type=int, default=30,
                    help="server keep-alive timeout in s (as `hysac serve`; uvicorn's own default is 5)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "service"))
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args)
        return 0

    import httpx

    env = environment()
    runs = []
    fuzz = None
    health = None
    log_tails = {}
    ok = True
    configs = [c.strip() for c in args.torch_threads.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="hysac-bench-") as tmp:
        root = Path(tmp)
        for n, threads in enumerate(configs):
            (root / f"run{n}").mkdir()
            proc, url = start_server(args, root / f"run{n}", threads)
            try:
                health = httpx.get(url + "/health").json()
                print(f"[torch threads {threads}] server up: {health['model']['id']}, {health['index']['items']} "
                      f"items; {args.clients} clients for {args.duration:.0f} s …", flush=True)
                rows, wall = asyncio.run(load_phase(url, args.clients, args.duration))
                load = summarize(rows, wall)
                print(json.dumps({k: load[k] for k in ("requests", "5xx", "transport_errors", "throughput_rps",
                                                       "latency_ms", "handler_ms_search_traverse")}), flush=True)
                mem = server_memory(proc.pid)
                if fuzz is None:
                    fuzz = fuzz_phase(url, health["limits"]["max_upload_bytes"])
                    print(f"fuzz: {fuzz['passed']}/{fuzz['cases']} 4xx+JSON, 5xx {fuzz['5xx']}", flush=True)
                    for f in fuzz["failures"]:
                        print("  FAIL", f, flush=True)
                alive = proc.poll() is None
            finally:
                stop_server(proc)
            log_tails[threads] = (root / f"run{n}" / f"server-{threads}.log").read_text(errors="replace")[-2000:]
            run_ok = load["5xx"] == 0 and load["transport_errors"] == 0 and alive
            ok = ok and run_ok
            runs.append({"torch_threads": threads, "load": load, "server_memory": mem, "server_alive_after": alive,
                         "pass": run_ok})
        env["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    ok = ok and not fuzz["failures"] and fuzz["healthy_after"]
    res = {"environment": env,
           "setup": {"clients": args.clients, "duration_s": args.duration, "argv": sys.argv[1:],
                     "model": args.model or f"tiny random CLIP HySAC ({health['model']['id']}, "
                                            f"{health['model']['embed_dim']}-d)",
                     "index_items": health["index"]["items"], "index_counts": health["index"]["counts"],
                     "limits": health["limits"]},
           "runs": runs, "fuzz": fuzz, "pass": ok}
    if not ok:
        res["server_log_tails"] = log_tails
    write_report(res, Path(args.out))
    print(f"wrote {Path(args.out).with_suffix('.json')} and .md — {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
