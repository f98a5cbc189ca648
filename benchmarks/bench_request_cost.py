"""Cost of hostile requests to the HTTP service: peak memory and time per request, and half-open connections.

A child process serves the app with uvicorn on 127.0.0.1 (never another address) with the limits of
``hysac serve``'s defaults (8 MiB bodies, 256 inputs, 25 Mpx per image, 100 Mpx per request, header timeout 10 s).
This process then

1. sends each attack payload to ``POST /classify`` (a 3 KB PNG of 5000x5000 pixels; 16 of them in one request;
   a 114-byte 10000x1 PNG x8; the largest request the limits allow, by pixels and by inputs; a huge JPEG; a tiny
   JPEG whose header claims 60000x60000; an 8 MiB noise PNG) ``--repeat`` times, and records per request the
   status, the wall time and the peak RSS growth of the server process (its VmHWM, reset through
   /proc/<pid>/clear_refs before each request, and RSS sampled every 2 ms with psutil, or /proc/<pid>/status
   without it), against the targets: <= 1 GB and <= 2 s per request;
2. opens ``--connections`` TCP connections to the server (half send nothing, half an unfinished request head)
   and waits, at most ``--deadline`` seconds, for the server to close every one of them, while ``GET /health``
   is sent every 0.5 s on a fresh connection; target: all closed within 30 s, /health answered throughout.

    python benchmarks/bench_request_cost.py                       # tiny random model
    python benchmarks/bench_request_cost.py --model hysac-mini    # the shipped model
    python benchmarks/bench_request_cost.py --repeat 1 --connections 200 --out /tmp/rc   # quick check

Writes ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/request_cost``); exit code 1 when a target is
missed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine, stop_server, versions, wait_for_health  # noqa: E402

HOST = "127.0.0.1"  # the only address this benchmark ever uses
MB = 1024 * 1024
TARGET_RSS_MB = 1024.0
TARGET_WALL_S = 2.0
TARGET_CLOSE_S = 30.0


# ------------------------------------------------------------------------------------------------ server side
def serve(args) -> None:
    """Child process: the service with ``hysac serve``'s default limits and timeouts, on 127.0.0.1."""
    import uvicorn

    from hysac.service import create_app
    from hysac.service.protocol import timeout_protocol

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.model:
        from hysac.model import load_model

        model = load_model(args.model)
    else:
        from hysac.service.demo import make_tiny_model

        model = make_tiny_model(Path(args.root) / "model")
    app = create_app(model, None, max_batch=args.max_batch_one)  # otherwise the default limits of hysac serve
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", access_log=False, timeout_keep_alive=30,
                http=timeout_protocol(header_timeout=args.header_timeout, body_timeout=args.body_timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def raise_fd_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft if soft >= want else min(want, hard)
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new


def start_server(args, root: Path, max_batch: int) -> tuple[subprocess.Popen, str]:

    port = free_port()
    cmd = [sys.executable, __file__, "--serve", "--root", str(root), "--port", str(port),
           "--header-timeout", str(args.header_timeout), "--body-timeout", str(args.body_timeout),
           "--max-batch-one", str(max_batch)]
    if args.model:
        cmd += ["--model", args.model]
    if args.torch_threads:
        cmd += ["--torch-threads", str(args.torch_threads)]
    raise_fd_limit(args.connections + 256)  # inherited by the child: it holds one descriptor per connection too
    log = open(root / f"server-{max_batch}.log", "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://{HOST}:{port}"
    return wait_for_health(proc, url, root / f"server-{max_batch}.log", args.startup_timeout, 0.3)


# ------------------------------------------------------------------------------------------------- memory
class Memory:
    """RSS of a process: current, and the peak since the last :meth:`reset` (VmHWM reset through clear_refs where
    Linux allows it, and a 2 ms sampler either way)."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            import psutil

            self._proc = psutil.Process(pid)
            self.source = f"psutil {psutil.__version__} (RSS sampled every 2 ms) + /proc VmHWM"
        except ImportError:
            self._proc = None
            self.source = "/proc/<pid>/status (VmRSS sampled every 2 ms, VmHWM)"
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hwm_reset = False

    def _status_kb(self, field: str) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def rss_kb(self) -> int:
        if self._proc is not None:
            return self._proc.memory_info().rss // 1024
        return self._status_kb("VmRSS") or 0

    def reset(self) -> None:
        try:
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")  # "5": reset the peak RSS (VmHWM)
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._peak = self.rss_kb()

    def start(self) -> None:
        self._stop.clear()

        def sample():
            while not self._stop.is_set():
                self._peak = max(self._peak, self.rss_kb())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """The peak RSS (kB) since :meth:`reset`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        peak = max(self._peak, self.rss_kb())
        if self.hwm_reset:
            peak = max(peak, self._status_kb("VmHWM") or 0)
        return peak


# ----------------------------------------------------------------------------------------------- payloads
def png(w: int, h: int, noise: bool = False) -> bytes:
    """``noise``: random RGB pixels (incompressible). Otherwise a blank 1-bit greyscale PNG written with zlib's
    best compression: about 1 KB per 8 Mpx (3 KB for 5000x5000), decoded to 3 bytes per pixel."""
    if noise:
        import numpy as np
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = b"\0" * (1 + (w + 7) // 8)  # filter byte + packed bits
    raw = zlib.compressobj(9)
    idat = b"".join(raw.compress(row) for _ in range(h)) + raw.flush()
    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def big_jpeg(w: int, h: int) -> bytes:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([x / w * 255, y / h * 255, (x + y) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def lying_jpeg(w: int, h: int) -> bytes:
    """A small valid JPEG whose frame header is rewritten to claim ``w`` x ``h`` pixels (the data stops short)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 10)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.find(b"\xff\xc0")  # SOF0: length(2) precision(1) height(2) width(2)
    data[i + 5:i + 7] = h.to_bytes(2, "big")
    data[i + 7:i + 9] = w.to_bytes(2, "big")
    return bytes(data)


def _files(items: list[tuple[str, bytes]]) -> dict:
    return {"files": [("images", (name, blob, "image/png" if name.endswith(".png") else "image/jpeg"))
                      for name, blob in items]}


def payloads(limits: dict) -> list[dict]:
    """Each attack request to /classify: name, httpx keyword arguments, body size, whether the service's limits
    allow it, and the statuses expected."""
    px_5000 = png(5000, 5000)
    strip = png(10_000, 1)
    n_max = int(limits["max_batch"])
    side = int((int(limits["max_request_pixels"]) / n_max) ** 0.5)  # n_max images of side² px: the pixel budget
    many = png(side, side)
    four_side = int(int(limits["max_image_pixels"]) ** 0.5)
    four = png(four_side, four_side)
    n_four = min(n_max, int(limits["max_request_pixels"]) // (four_side * four_side))
    jpeg = big_jpeg(5000, 5000)
    noise_side = int((limits["max_upload_bytes"] * 0.9 / 3) ** 0.5)
    noise = png(noise_side, noise_side, noise=True)
    chars = int(limits["max_text_chars"])
    texts = [(f"{i} " + "a street market at night with people and lights " * (chars // 40))[:chars]
             for i in range(n_max)]
    cases = [
        (f"one {len(px_5000)} B PNG of 5000x5000 px", _files([("x.png", px_5000)]), True, [200]),
        (f"16 x the {len(px_5000)} B 5000x5000 PNG in one request",
         _files([(f"{i}.png", px_5000) for i in range(16)]), False, [413]),
        (f"{len(strip)} B PNG of 10000x1 px, x8", _files([(f"{i}.png", strip) for i in range(8)]), False, [422]),
        (f"largest allowed by inputs: {n_max} PNGs of {side}x{side} px ({n_max * side * side / 1e6:.0f} Mpx)",
         _files([(f"{i}.png", many) for i in range(n_max)]), True, [200]),
        (f"largest allowed by pixels: {n_four} PNGs of {four_side}x{four_side} px "
         f"({n_four * four_side * four_side / 1e6:.0f} Mpx)", _files([(f"{i}.png", four) for i in range(n_four)]),
         True, [200]),
        (f"largest allowed by texts: {n_max} texts of {chars} characters", {"json": {"texts": texts}}, True, [200]),
        (f"huge JPEG: 5000x5000 px, {len(jpeg) / MB:.1f} MiB", _files([("big.jpg", jpeg)]), True, [200]),
        ("JPEG header claiming 60000x60000 px (a 1 KB file)", _files([("liar.jpg", lying_jpeg(60000, 60000))]),
         False, [413, 422]),
        (f"noise PNG at the body limit: {noise_side}x{noise_side} px, {len(noise) / MB:.1f} MiB",
         _files([("noise.png", noise)]), True, [200]),
    ]
    out = []
    for name, kwargs, within, expect in cases:
        size = (sum(len(f[1][1]) for f in kwargs["files"]) if "files" in kwargs
                else len(json.dumps(kwargs["json"]).encode()))
        out.append({"name": name, "kwargs": kwargs, "body_bytes": size, "within": within, "expect": expect})
    return out


def measure_payloads(url: str, mem: Memory, cases: list[dict], repeat: int) -> list[dict]:
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for case in cases:
            runs = []
            for _ in range(repeat):
                time.sleep(0.2)
                base = mem.rss_kb()
                mem.reset()
                mem.start()
                t0 = time.perf_counter()
                r = client.post("/classify", **case["kwargs"])
                wall = time.perf_counter() - t0
                peak = mem.stop()
                msg = r.json().get("error") if r.status_code >= 400 else f"{len(r.json()['results'])} results"
                runs.append({"status": r.status_code, "wall_s": round(wall, 3), "rss_before_mb": round(base / 1024, 1),
                             "rss_peak_mb": round(peak / 1024, 1), "rss_growth_mb": round((peak - base) / 1024, 1),
                             "message": msg})
            worst_rss = max(x["rss_growth_mb"] for x in runs)
            worst_wall = max(x["wall_s"] for x in runs)
            ok_status = all(x["status"] in case["expect"] for x in runs)
            out.append({"payload": case["name"], "body_bytes": case["body_bytes"], "within_limits": case["within"],
                        "expected_status": case["expect"], "runs": runs, "max_rss_growth_mb": worst_rss,
                        "max_wall_s": worst_wall,
                        "pass": ok_status and worst_rss <= TARGET_RSS_MB and worst_wall <= TARGET_WALL_S})
            print(f"  {case['name']}: status {[x['status'] for x in runs]}, wall max {worst_wall:.3f} s, "
                  f"RSS growth max {worst_rss:.1f} MB", flush=True)
    return out


# --------------------------------------------------------------------------------------- half-open connections
def half_open(url: str, n: int, deadline: float, mem: Memory) -> dict:
    """Open ``n`` connections that never finish a request; wait (at most ``deadline`` s) until the server has
    closed them all, sending GET /health every 0.5 s on a fresh connection meanwhile."""
    import httpx

    port = int(url.rsplit(":", 1)[1])
    sel = selectors.DefaultSelector()
    socks = {}
    t_open0 = time.monotonic()
    for i in range(n):
        s = socket.create_connection((HOST, port), timeout=10)
        if i % 2:  # an unfinished request head; the others send nothing at all
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
        socks[i] = s
    t0 = time.monotonic()
    opened_s = t0 - t_open0
    rss_open = mem.rss_kb()
    closed_at: dict[int, float] = {}
    answered = 0
    health: list[dict] = []
    next_health = t0
    with httpx.Client(base_url=url, timeout=5) as client:
        while len(closed_at) < n and time.monotonic() - t0 < deadline:
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except (ConnectionResetError, OSError):
                    data = b""
                if data:  # the server answered something (it should just close): counted, keep reading
                    answered += 1
                    continue
                closed_at[key.data] = time.monotonic() - t0
                sel.unregister(s)
                s.close()
            now = time.monotonic()
            if now >= next_health:
                h0 = time.perf_counter()
                try:
                    status = client.get("/health", headers={"Connection": "close"}).status_code
                except httpx.HTTPError as e:
                    status = f"{type(e).__name__}"
                health.append({"t_s": round(now - t0, 2), "status": status,
                               "ms": round((time.perf_counter() - h0) * 1e3, 1)})
                next_health = now + 0.5
    for i, s in socks.items():
        if i not in closed_at:
            sel.unregister(s)
            s.close()
    times = sorted(closed_at.values())
    ok_health = [h for h in health if h["status"] == 200]
    return {
        "connections": n, "silent": n - n // 2, "partial_head": n // 2, "open_s": round(opened_s, 2),
        "closed_by_server": len(closed_at), "not_closed": n - len(closed_at), "answered_instead_of_closed": answered,
        "first_close_s": round(times[0], 2) if times else None, "median_close_s": round(times[len(times) // 2], 2)
        if times else None, "last_close_s": round(times[-1], 2) if times else None,
        "server_rss_with_all_open_mb": round(rss_open / 1024, 1),
        "health_checks": len(health), "health_ok": len(ok_health),
        "health_max_ms": max((h["ms"] for h in health), default=None),
        "health_samples": health[:: max(1, len(health) // 20)],
        "pass": len(closed_at) == n and times[-1] <= TARGET_CLOSE_S and len(ok_health) == len(health) > 0,
    }


# ----------------------------------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    env, s = res["environment"], res["setup"]
    first = res["configs"][0]["limits"]
    lines = [
        "# Cost of hostile requests (HTTP service)",
        "",
        f"{env['date']} · {env['cpu']} · {env['cpu_count']} cores · torch {env['torch']} · "
        f"Python {env['python']} · "
        f"load average {env['load_avg_1m']:.1f} at start (shared machine: another job was using the cores, so "
        "times are upper bounds)",
        "",
        f"`python benchmarks/bench_request_cost.py{''.join(' ' + a for a in s['argv'])}`",
        "",
        f"Server: a child process on {HOST} (uvicorn, one inference thread, torch threads: "
        f"{s['torch_threads'] or 'default'}), model {s['model']}, the limits of `hysac serve`'s defaults: "
        f"{first['max_upload_bytes'] // MB} MiB per body, {first['max_image_pixels'] / 1e6:g} Mpx per image, "
        f"{first['max_request_pixels'] / 1e6:g} Mpx per request, {first['max_text_chars']} characters per text; "
        f"header timeout {s['header_timeout_s']:g} s, body timeout {s['body_timeout_s']:g} s; inputs per request "
        "(`--max-batch`) as in each table. "
        f"Memory: {s['memory_source']}; VmHWM reset before each request: {s['hwm_reset']}. Each payload sent "
        f"{s['repeat']} times (worst run shown); RSS growth = peak during the request - RSS just before it.",
        "",
        f"Targets: peak RSS growth <= {TARGET_RSS_MB:.0f} MB and wall time <= {TARGET_WALL_S:g} s per request "
        "(for requests within the limits; the others must be refused as cheaply).",
    ]
    for cfg in res["configs"]:
        lines += [
            "",
            f"## POST /classify with --max-batch {cfg['limits']['max_batch']}"
            + (" (the default)" if cfg["limits"]["max_batch"] == 256 else ""),
            "",
            "| payload | body | within limits | status | wall s (max) | RSS growth MB (max) | server RSS before MB | "
            "answer | target |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in cfg["payloads"]:
            last = p["runs"][-1]
            msg = str(last["message"]).replace("|", "\\|")
            lines.append(f"| {p['payload']} | {p['body_bytes'] / 1024:.0f} KB | {'yes' if p['within_limits'] else 'no'}"
                         f" | {', '.join(str(r['status']) for r in p['runs'])} | {p['max_wall_s']:.3f} "
                         f"| {p['max_rss_growth_mb']:.1f} | {last['rss_before_mb']:.0f} | {msg[:110]} "
                         f"| {'met' if p['pass'] else '**missed**'} |")
        lines += ["", f"Targets {'met' if cfg['pass'] else '**missed**'} with --max-batch {cfg['limits']['max_batch']};"
                  f" server RSS at the end {cfg['rss_end_mb']:.0f} MB."]
    h = res["half_open"]
    lines += [
        "",
        "## Half-open connections",
        "",
        f"{h['connections']} TCP connections to {HOST} ({h['silent']} send nothing, {h['partial_head']} an "
        f"unfinished request head), opened in {h['open_s']} s; /health sent every 0.5 s on a fresh connection "
        f"meanwhile. Target: all closed by the server within {TARGET_CLOSE_S:g} s, /health answered throughout.",
        "",
        "| closed by the server | not closed | answered instead | first / median / last close (s) | "
        "server RSS with all open | /health answered | /health max ms | target |",
        "|---|---|---|---|---|---|---|---|",
        f"| {h['closed_by_server']} / {h['connections']} | {h['not_closed']} | {h['answered_instead_of_closed']} | "
        f"{h['first_close_s']} / {h['median_close_s']} / {h['last_close_s']} "
        f"| {h['server_rss_with_all_open_mb']:.0f} MB "
        f"| {h['health_ok']} / {h['health_checks']} | {h['health_max_ms']} | {'met' if h['pass'] else '**missed**'} |",
        "",
        f"Verdict: **{'PASS' if res['pass'] else 'FAIL'}**" + (
            "" if res["pass"] else " (see the rows marked missed)") + ".",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name or folder (default: a tiny random model)")
    ap.add_argument("--max-batch", default="256", help="comma-separated server --max-batch values, one server each "
                                                         "(256: hysac serve's default)")
    ap.add_argument("--repeat", type=int, default=3, help="times each payload is sent")
    ap.add_argument("--connections", type=int, default=1000, help="half-open connections (first server only)")
    ap.add_argument("--deadline", type=float, default=40.0, help="seconds to wait for the server to close them")
    ap.add_argument("--header-timeout", type=float, default=10.0, help="server header timeout (hysac serve's default)")
    ap.add_argument("--body-timeout", type=float, default=60.0, help="server body timeout (hysac serve's default)")
    ap.add_argument("--torch-threads", type=int, default=None, help="server torch threads (default: torch's)")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--out", default=str(RESULTS / "request_cost"), help="output path without suffix")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--max-batch-one", type=int, default=256, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args)
        return 0

    import httpx

    argv = sys.argv[1:]
    env = machine()
    configs, ho, alive, mem = [], None, True, None
    with tempfile.TemporaryDirectory() as tmp:
        for i, max_batch in enumerate(int(v) for v in args.max_batch.split(",")):
            proc, url = start_server(args, Path(tmp), max_batch)
            try:
                limits = httpx.get(url + "/health", timeout=10).json()["limits"]
                mem = Memory(proc.pid)
                print(f"server pid {proc.pid} at {url}; limits {limits}", flush=True)
                print("attack payloads:", flush=True)
                results = measure_payloads(url, mem, payloads(limits), args.repeat)
                configs.append({"limits": limits, "payloads": results, "rss_end_mb": round(mem.rss_kb() / 1024, 1),
                                "pass": all(p["pass"] for p in results)})
                if i == 0:
                    print(f"{args.connections} half-open connections:", flush=True)
                    ho = half_open(url, args.connections, args.deadline, mem)
                    print(f"  closed {ho['closed_by_server']}/{ho['connections']}, last after {ho['last_close_s']} s;"
                          f" /health {ho['health_ok']}/{ho['health_checks']} ok, max {ho['health_max_ms']} ms",
                          flush=True)
                alive = alive and httpx.get(url + "/health", timeout=10).status_code == 200
            finally:
                stop_server(proc)
    res = {
        "environment": {**env, "versions": versions("hysac", "fastapi", "starlette", "uvicorn", "PIL", "httpx")},
        "setup": {"argv": argv, "model": args.model or "tiny random CLIP-backbone model (hysac.service.demo)",
                  "host": HOST, "header_timeout_s": args.header_timeout, "body_timeout_s": args.body_timeout,
                  "torch_threads": args.torch_threads, "repeat": args.repeat, "memory_source": mem.source,
                  "hwm_reset": mem.hwm_reset},
        "targets": {"rss_growth_mb": TARGET_RSS_MB, "wall_s": TARGET_WALL_S, "close_s": TARGET_CLOSE_S},
        "configs": configs,
        "half_open": ho,
        "server_alive_at_end": alive,
    }
    res["pass"] = alive and all(c["pass"] for c in configs) and ho["pass"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
