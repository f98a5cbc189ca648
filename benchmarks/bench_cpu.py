#!/usr/bin/env python
"""CPU throughput of the offline ``mini`` model: the naive path vs :mod:`hysac.fast`, in ONE process.

Definitions (what is timed):

* **baseline** ("naive"): ``HySAC.encode_text`` / ``encode_image`` as a straightforward implementation would run
  them — fp32 eager PyTorch, ``torch.no_grad`` (no ``inference_mode``), PyTorch's default thread count, texts in
  input order in batches of 32 **padded to max_length=128** (:func:`naive_encode_text`), images in batches of
  32 decoded/preprocessed in the calling thread, then the EfficientNet (channels_last, as shipped).
* **plain** (for information): the library's ``HySAC.encode_text`` on the plain runtime (length-sorted batches of
  256, fp32 torch towers) — what callers get without the fast path.
* **fast**: ``hysac.fast.optimize_for_cpu(model)`` with its defaults (backend ``auto``: ONNX Runtime fp32 when
  ``onnxruntime`` + ``onnx`` are installed, else torch) then ``model.encode_text`` / ``model.encode_image``:
  length-sorted dynamic-padding text batches of 64, ``inference_mode``, image decoding prefetched in a thread.
* **variants**: the torch backend with bf16 / fp32 / int8 text GEMMs and the fused fp32 EfficientNet.

Throughput: texts/s over the I2P + COCO + safe-art **test split** (``text_safety_splits(seed=0, 0.15, 0.15)``),
strings in, hyperboloid points out (tokenisation included); images/s over synthetic 640x480 JPEG files (files
in, points out: decode + resize + crop + tower), and ``images_model_only_per_s`` on preprocessed pixel tensors.

Timing is interleaved: every variant runs on its own copy of the model, the data is cut into ``--chunks``
interleaved chunks, and the variants take turns on each chunk (rotating who goes first), so that a load change on
the shared machine hits all of them alike; throughput = items / summed time (median over ``--rounds``).

Checks against the baseline, per variant: cosine of the tangent features ``log_map0(x)`` (min over all inputs,
must be >= 0.999), relative error of the distance to the origin, and the text AUROC (I2P = unsafe vs COCO + safe
art = safe, score = ``model.score``), whose change must be <= 0.002.

The machine is shared: before timing, the script waits (up to ``--max-wait`` s) until the 1-minute load average
is below ``--max-load`` and no other process uses more than ``--busy-cpu`` of a core; the load averages before
and during the runs are recorded. Writes ``<out>/cpu.json`` and ``<out>/cpu.md``.

    python benchmarks/bench_cpu.py                 # full run (~10 minutes on 2 cores, after the wait)
    python benchmarks/bench_cpu.py --quick --out /tmp/bench   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COS_MIN = 0.999
AUROC_TOL = 0.002
DIST_RTOL = 1e-2


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ machine load
def _proc_cpu_times() -> dict[int, tuple[float, str]]:
    out: dict[int, tuple[float, str]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            out[int(d.name)] = (cpu, cmd or stat[stat.index("(") + 1:stat.rindex(")")])
        except (OSError, ValueError, IndexError):
            continue
    return out


def busy_processes(sample_s: float = 3.0, busy_cpu: float = 0.3) -> list[dict]:
    """Processes other than this one that used more than ``busy_cpu`` cores over ``sample_s`` seconds."""
    a = _proc_cpu_times()
    time.sleep(sample_s)
    b = _proc_cpu_times()
    me = os.getpid()
    busy = []
    for pid, (cpu, cmd) in b.items():
        if pid == me or pid not in a:
            continue
        use = (cpu - a[pid][0]) / sample_s
        if use > busy_cpu:
            busy.append({"pid": pid, "cpu": round(use, 2), "cmd": cmd[:120]})
    return sorted(busy, key=lambda p: -p["cpu"])


def wait_for_quiet(max_load: float, busy_cpu: float, max_wait: float, poll: float = 15.0) -> dict:
    """Sleep until load1 < max_load and no busy process, at most max_wait seconds. Returns what was seen."""
    t0 = time.time()
    while True:
        load = os.getloadavg()
        busy = busy_processes(busy_cpu=busy_cpu)
        quiet = load[0] < max_load and not busy
        waited = time.time() - t0
        if quiet or waited >= max_wait:
            return {"quiet": quiet, "waited_s": round(waited, 1), "loadavg_at_start": [round(x, 2) for x in load],
                    "busy_processes_at_start": busy, "max_load": max_load}
        log(f"waiting for a quiet machine: load {load[0]:.2f}, busy: "
            + ", ".join(f"{p['cmd'][:50]} ({p['cpu']:.1f})" for p in busy[:3]))
        time.sleep(poll)


# ------------------------------------------------------------------------------------------------------- data
def load_texts(limit: int | None) -> tuple[list[str], np.ndarray]:
    from hysac.data import text_safety_splits

    test = text_safety_splits(seed=0, val_fraction=0.15, test_fraction=0.15).test
    if limit:
        test = test[:limit]
    return [e.text for e in test], np.array([e.label for e in test], dtype=np.int64)


def make_jpegs(folder: Path, n: int, size=(640, 480), seed: int = 0) -> list[Path]:
    """Deterministic photo-like JPEGs: smooth random colour fields + shapes + sensor noise, quality 90."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        img = np.zeros((h, w, 3), np.float32)
        for _ in range(4):  # low-frequency colour waves
            fx, fy = rng.uniform(0.5, 4, 2) * 2 * np.pi / np.array([w, h])
            phase = rng.uniform(0, 2 * np.pi)
            img += np.sin(xx * fx + yy * fy + phase)[..., None] * rng.uniform(20, 60, 3)
        img = img - img.min()
        img = img / max(img.max(), 1e-6) * 200 + 25
        pil = Image.fromarray(img.astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        for _ in range(6):
            x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
            x1, y1 = x0 + rng.integers(20, 250), y0 + rng.integers(20, 200)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        arr = np.asarray(pil).astype(np.float32) + rng.normal(0, 6, (h, w, 3))
        path = folder / f"img_{i:04d}.jpg"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------- models
def build_model(name: str):
    from hysac.backbones.mini import MiniBackbone
    from hysac.model import HySAC, load_model

    if name != "random":
        try:
            return load_model(name), {"name": name, "random_heads": False}
        except Exception as e:  # noqa: BLE001 - not trained yet: time the same architecture
            log(f"cannot load {name!r} ({type(e).__name__}: {e}); using random heads")
    return HySAC(MiniBackbone(), name="mini-random-heads").eval(), {
        "name": "HySAC(MiniBackbone()) with random heads", "random_heads": True}


def naive_encode_text(model, texts, batch_size: int = 32):
    """The baseline text path: input order, batches of ``batch_size`` padded to max_length (128) tokens, fp32
    eager under ``torch.no_grad``, as a straightforward implementation would run it."""
    bb = model.backbone
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = bb.tokenizer(list(texts[i:i + batch_size]), padding="max_length", truncation=True,
                               max_length=bb.max_length, return_tensors="pt")
            feats = bb.text_features(enc["input_ids"].long(), enc["attention_mask"].long()).float()
            out.append(model.lift_text(feats))
    return torch.cat(out)


# -------------------------------------------------------------------------------------------------- timing
def tangent_checks(model, ref: torch.Tensor, got: torch.Tensor) -> dict:
    from hysac import lorentz as L

    c = model.curvature
    a, b = L.log_map0(ref.double(), c), L.log_map0(got.double(), c)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    da, db = model.score(ref.double()), model.score(got.double())
    rel = ((da - db).abs() / da.abs().clamp(min=1e-6))
    return {"cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
            "dist_rel_err_max": float(rel.max()), "score_abs_diff_max": float((da - db).abs().max())}


def text_auroc(model, x: torch.Tensor, labels: np.ndarray) -> float:
    from hysac.metrics import auroc

    return float(auroc(model.score(x).double().numpy(), labels))


# ---------------------------------------------------------------------------------------------------- main
TEXT_VARIANTS = {
    "baseline": None,
    "plain": None,
    "fast": {},
    "torch-bf16": {"backend": "torch", "text_precision": "bf16"},
    "torch-fp32": {"backend": "torch", "text_precision": "fp32"},
    "torch-int8": {"backend": "torch", "text_precision": "int8"},
}
#: variants whose image path is timed (the three torch variants share one image engine: timed once, as torch-bf16)
IMAGE_VARIANTS = ("baseline", "fast", "torch-bf16")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hysac-mini", help="model name/folder, or 'random' (random heads)")
    ap.add_argument("--texts", type=int, default=0, help="use the first N test texts (0 = all)")
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--chunks", type=int, default=4,
                    help="the data is cut into this many interleaved chunks and the variants take turns on each "
                         "chunk, so that load changes on the shared machine hit every variant alike")
    ap.add_argument("--rounds", type=int, default=1, help="passes over the data (throughput = median)")
    ap.add_argument("--no-variants", action="store_true", help="only baseline, plain and fast")
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--busy-cpu", type=float, default=0.3, help="a process above this many cores counts as busy")
    ap.add_argument("--max-wait", type=float, default=600.0)
    ap.add_argument("--require-quiet", action="store_true",
                    help="exit with status 3 (nothing timed) when the machine did not get quiet within --max-wait")
    ap.add_argument("--quick", action="store_true", help="smoke run: 96 texts, 16 images, 2 chunks, no wait")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    if args.quick:
        args.texts, args.images, args.chunks, args.max_wait = args.texts or 96, 16, 2, 0

    from hysac import fast

    default_threads = torch.get_num_threads()
    log("checking machine load")
    load_info = wait_for_quiet(args.max_load, args.busy_cpu, args.max_wait)
    log(f"load {load_info['loadavg_at_start']}, quiet={load_info['quiet']}, waited {load_info['waited_s']} s")
    if args.require_quiet and not load_info["quiet"]:
        log("the machine did not get quiet: nothing timed (--require-quiet)")
        return 3

    texts, labels = load_texts(args.texts or None)
    base_model, model_info = build_model(args.model)
    results: dict = {"machine": machine(), "model": model_info, "load": load_info}
    results["machine"].update(versions("transformers", "onnxruntime", "onnx", "numpy", "PIL"))
    results["definitions"] = {
        "baseline": "fp32 eager, torch.no_grad, default threads, texts in input order in batches of 32 padded to "
                    "max_length=128; images in batches of 32 decoded in the calling thread",
        "plain": "HySAC.encode_text on the plain runtime (length-sorted batches of 256, fp32 torch)",
        "fast": "hysac.fast.optimize_for_cpu(model) defaults, then model.encode_text / encode_image",
        "texts_per_s": "strings in, hyperboloid points out, tokenisation included",
        "images_per_s": "640x480 JPEG files in, points out (decode + resize + crop + tower)",
        "images_model_only_per_s": "preprocessed (B,3,224,224) pixel tensors in, points out",
        "timing": f"the variants take turns on {args.chunks} interleaved chunks of the data ({args.rounds} "
                  "round(s)); throughput = items / summed time",
    }
    names = [n for n in TEXT_VARIANTS if not (args.no_variants and n.startswith("torch-"))]
    cache_files = set((Path.home() / ".cache" / "hysac" / "onnx").glob("*.onnx"))
    models, setup = {}, {}
    for name in names:
        m = _copy_model(base_model, args.model)
        if name != "baseline" and TEXT_VARIANTS[name] is not None:
            t0 = time.perf_counter()
            fast.optimize_for_cpu(m, **TEXT_VARIANTS[name])
            setup[name] = round(time.perf_counter() - t0, 2)
            log(f"{name}: {fast.describe(m)} (setup {setup[name]} s)")
        models[name] = m
    onnx_cached_before = bool(cache_files)

    def enc_text(name, items):
        m = models[name]
        return naive_encode_text(m, items) if name == "baseline" else m.encode_text(items)

    def enc_img(name, items):
        m = models[name]
        return m.encode_image(items, batch_size=32)

    with tempfile.TemporaryDirectory(prefix="hysac-bench-cpu-") as tmp:
        from hysac.images import load_image

        paths = make_jpegs(Path(tmp), args.images)
        pixels = base_model.backbone.preprocess_images([load_image(p) for p in paths])
        n_unsafe = int(labels.sum())
        results["data"] = {"texts": len(texts), "unsafe_texts": n_unsafe, "safe_texts": len(texts) - n_unsafe,
                           "images": len(paths), "image_size": "640x480 JPEG q90 (synthetic)",
                           "mean_tokens": float(np.mean([len(x) for x in
                                                         base_model.backbone.tokenizer(texts)["input_ids"]]))}
        log("warm-up (the bucketed variants see every batch shape once: oneDNN / ONNX Runtime plan per shape)")
        for name in names:
            enc_text(name, texts if name not in ("baseline", "plain") else texts[:64])
            if name in IMAGE_VARIANTS:
                enc_img(name, paths[:8])
                enc_img(name, pixels[:8])

        tasks = [("texts", texts, enc_text, names),
                 ("images", paths, enc_img, [n for n in names if n in IMAGE_VARIANTS]),
                 ("images_model_only", pixels, enc_img, [n for n in names if n in IMAGE_VARIANTS])]
        timing: dict = {}
        outputs: dict = {}
        for what, data, fn, who in tasks:
            n = len(data)
            chunks = [list(range(k, n, args.chunks)) for k in range(args.chunks)]
            per_round = {name: [] for name in who}
            loads = []
            for r in range(args.rounds):
                spent = {name: 0.0 for name in who}
                for k, idx in enumerate(chunks):
                    items = data[torch.as_tensor(idx)] if isinstance(data, torch.Tensor) else [data[i] for i in idx]
                    order = who[k % len(who):] + who[:k % len(who)]  # rotate who goes first
                    for name in order:
                        t = time.perf_counter()
                        out = fn(name, items)
                        spent[name] += time.perf_counter() - t
                        if r == 0:
                            buf = outputs.setdefault((what, name), torch.zeros(n, out.shape[1]))
                            buf[torch.as_tensor(idx)] = out
                    loads.append(round(os.getloadavg()[0], 2))
                    log(f"{what} round {r + 1} chunk {k + 1}/{len(chunks)}: "
                        + ", ".join(f"{nm} {spent[nm]:.1f}s" for nm in who) + f" (load {loads[-1]})")
                for name in who:
                    per_round[name].append(spent[name])
            timing[what] = {name: {"per_s": round(n / statistics.median(v), 2), "seconds": [round(x, 2) for x in v],
                                   "n": n} for name, v in per_round.items()}
            timing[what]["loadavg_1min_after_each_chunk"] = loads
        results["load"]["during"] = {w: timing[w]["loadavg_1min_after_each_chunk"] for w in timing}

    # ---------------------------------------------------------------------------------------- checks
    ref_model = models["baseline"]
    auroc_base = text_auroc(ref_model, outputs[("texts", "baseline")], labels)
    results["variants"] = {}
    for name in names:
        m = models[name]
        entry = {"config": fast.describe(m) or {"text": name, "image": name},
                 "setup_s": setup.get(name),
                 "texts_per_s": timing["texts"][name]["per_s"],
                 "images_per_s": timing["images"].get(name, {}).get("per_s"),
                 "images_model_only_per_s": timing["images_model_only"].get(name, {}).get("per_s"),
                 "timings": {w: timing[w].get(name) for w in timing}}
        x_text = outputs[("texts", name)]
        entry["auroc"] = text_auroc(ref_model, x_text, labels)
        entry["auroc_delta"] = entry["auroc"] - auroc_base
        entry["checks_text"] = tangent_checks(ref_model, outputs[("texts", "baseline")], x_text)
        entry["checks_image"] = entry["checks_image_model_only"] = None
        if ("images", name) in outputs:
            entry["checks_image"] = tangent_checks(ref_model, outputs[("images", "baseline")],
                                                   outputs[("images", name)])
            entry["checks_image_model_only"] = tangent_checks(ref_model, outputs[("images_model_only", "baseline")],
                                                              outputs[("images_model_only", name)])
        ok = entry["checks_text"]["cos_min"] >= COS_MIN and abs(entry["auroc_delta"]) <= AUROC_TOL
        for key in ("checks_image", "checks_image_model_only"):
            if entry[key] is not None:
                ok = ok and entry[key]["cos_min"] >= COS_MIN and entry[key]["dist_rel_err_max"] <= DIST_RTOL
        entry["passed"] = bool(ok and entry["checks_text"]["dist_rel_err_max"] <= DIST_RTOL)
        results["variants"][name] = entry
    b, f = results["variants"].pop("baseline"), results["variants"]["fast"]
    plain = results["variants"].pop("plain", None)
    results["baseline"] = {k: b[k] for k in ("texts_per_s", "images_per_s", "images_model_only_per_s", "timings")}
    results["baseline"]["threads"] = default_threads
    if plain is not None:
        results["plain"] = {"texts_per_s": plain["texts_per_s"], "timings": {"texts": plain["timings"]["texts"]},
                            "checks_text": plain["checks_text"], "auroc": plain["auroc"]}
    results["fast"] = {k: f[k] for k in ("config", "setup_s", "texts_per_s", "images_per_s",
                                          "images_model_only_per_s", "timings")}
    results["fast"]["onnx_cache_hit"] = onnx_cached_before
    results["speedup"] = {"texts": round(f["texts_per_s"] / b["texts_per_s"], 2),
                          "images": round(f["images_per_s"] / b["images_per_s"], 2),
                          "images_model_only": round(f["images_model_only_per_s"] / b["images_model_only_per_s"], 2)}
    if plain is not None:
        results["speedup"]["texts_vs_plain"] = round(f["texts_per_s"] / plain["texts_per_s"], 2)
    results["auroc"] = {"baseline": auroc_base, "fast": f["auroc"], "delta": f["auroc_delta"]}
    results["checks"] = {"cos_min_required": COS_MIN, "auroc_tolerance": AUROC_TOL, "dist_rtol": DIST_RTOL,
                         "fast_passed": f["passed"],
                         "speedup_2x": results["speedup"]["texts"] >= 2 and results["speedup"]["images"] >= 2}
    results["load"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu.json").write_text(json.dumps(results, indent=2))
    md = render_md(results)
    (out / "cpu.md").write_text(md)
    print(md)
    return 0 if results["checks"]["fast_passed"] else 1


def _copy_model(model, name: str):
    import copy

    try:
        return copy.deepcopy(model)
    except Exception:  # noqa: BLE001 - e.g. a tokenizer that does not deep-copy: load another
        return build_model(name)[0]


def render_md(r: dict) -> str:
    m, ld = r["machine"], r["load"]
    b, f, s = r["baseline"], r["fast"], r["speedup"]
    lines = [
        "# CPU benchmark: naive vs `hysac.fast` (mini model)",
        "",
        f"- date: {m['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['platform']}",
        f"- python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, "
        f"onnxruntime {m['onnxruntime']}, onnx {m['onnx']}, numpy {m['numpy']}, pillow {m['PIL']}",
        f"- model: {r['model']['name']}" + (" (AUROC values are those of random heads: only their *difference* "
                                             "is meaningful)" if r["model"]["random_heads"] else ""),
        f"- data: {r['data']['texts']} test texts ({r['data']['unsafe_texts']} I2P unsafe, mean "
        f"{r['data']['mean_tokens']:.1f} tokens); {r['data']['images']} images, {r['data']['image_size']}",
        f"- load average before timing: {ld['loadavg_at_start']} (quiet machine: {ld['quiet']}, waited "
        f"{ld['waited_s']} s; threshold {ld['max_load']}); 1-min load after each phase: {ld['during']} "
        "(includes this benchmark itself); at the end: " + str(ld["loadavg_at_end"]),
    ]
    peak = max([x for v in ld.get("during", {}).values() for x in v] or [0.0])
    if peak > ld["max_load"] + 1.0:
        lines.append(f"- note: the 1-min load reached {peak} during the timed phases (other jobs on the shared "
                     "machine); the variants took turns on each chunk, so they saw the same conditions, but the "
                     "eager-PyTorch baseline suffers more from contention than ONNX Runtime, which flatters the "
                     "speed-ups of the phases with the highest load")
    lines += [
        "",
        "Definitions: " + "; ".join(f"**{k}** = {v}" for k, v in r["definitions"].items()),
        "",
        "| | baseline | fast | speedup |",
        "|---|---:|---:|---:|",
        f"| texts/s | {b['texts_per_s']:.1f} | {f['texts_per_s']:.1f} | {s['texts']:.2f}x |",
        f"| images/s (JPEG files) | {b['images_per_s']:.1f} | {f['images_per_s']:.1f} | {s['images']:.2f}x |",
        f"| images/s (pixel tensors) | {b['images_model_only_per_s']:.1f} | {f['images_model_only_per_s']:.1f} | "
        f"{s['images_model_only']:.2f}x |",
        "",
        f"Fast configuration: `{f['config']}` (one-off setup {f['setup_s']} s, ONNX export cached on disk).",
    ]
    if "plain" in r:
        lines.append(f"Library `encode_text` as shipped (plain): {r['plain']['texts_per_s']:.1f} texts/s.")
    lines += ["", "Quality vs baseline (tangent features `log_map0(x)`; text AUROC I2P vs COCO + safe art):", "",
              "| variant | texts/s | images/s (files) | images/s (tensors) | text cos min | image cos min | "
              "dist rel err max | AUROC | ΔAUROC | passed |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines.append(f"| baseline | {b['texts_per_s']:.1f} | {b['images_per_s']:.1f} | {b['images_model_only_per_s']:.1f} "
                 f"| 1 | 1 | 0 | {r['auroc']['baseline']:.4f} | 0 | |")
    for name, v in r["variants"].items():
        ci = v["checks_image"]
        fmt = lambda x, p=1: "—" if x is None else f"{x:.{p}f}"  # noqa: E731
        dist = max([v["checks_text"]["dist_rel_err_max"]] + ([ci["dist_rel_err_max"]] if ci else []))
        lines.append(
            f"| {name} (`{v['config']['text']}`, `{v['config']['image']}`) | {v['texts_per_s']:.1f} | "
            f"{fmt(v['images_per_s'])} | {fmt(v['images_model_only_per_s'])} | {v['checks_text']['cos_min']:.6f} | "
            f"{fmt(ci and ci['cos_min'], 6)} | {dist:.2e} | {v['auroc']:.4f} | {v['auroc_delta']:+.4f} | "
            f"{'yes' if v['passed'] else 'NO'} |")
    lines += ["", f"Gates: cosine >= {r['checks']['cos_min_required']}, |ΔAUROC| <= {r['checks']['auroc_tolerance']}, "
              f"distance-to-origin relative error <= {r['checks']['dist_rtol']}. fast passed: "
              f"{r['checks']['fast_passed']}; >= 2x on texts and images: {r['checks']['speedup_2x']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
