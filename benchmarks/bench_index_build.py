#!/usr/bin/env python
"""Index build throughput of the offline model on the CPU: ``hysac index build`` plain vs ``--fast``, ONE process.

Both paths build the same indexes with :func:`hysac.index.build_index` (what the CLI calls): a CSV of texts (the
I2P + COCO + safe-art test split) and a folder of synthetic 640x480 JPEG photos. **plain** is the shipped model
as loaded; **fast** is the same model after :func:`hysac.fast.optimize` (CPU path here: ONNX Runtime engines,
length-bucketed texts, a decode thread), i.e. ``hysac index build --fast``. The two take turns (``--rounds``,
alternating who goes first) on fresh output folders; throughput = items / build time, median over rounds. Then
the stored embeddings of the two indexes are compared item by item (cosine of tangent features, must be ≥ 0.999)
and so are the stored unsafe flags.

    python benchmarks/bench_index_build.py                       # writes benchmarks/results/index_build.*
    python benchmarks/bench_index_build.py --texts 200 --images 16 --rounds 1 --out /tmp/b   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, versions  # noqa: E402
from bench_cpu import load_texts, log, make_jpegs, wait_for_quiet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COS_MIN = 0.999


def build(src: Path, out: Path, model, batch_size: int) -> tuple[float, int]:
    from hysac.index import build_index

    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    report = build_index(src, out, model, batch_size=batch_size, progress=False)
    return time.perf_counter() - t, int(report.added)


def stored(root: Path) -> tuple[dict[str, np.ndarray], dict[str, bool]]:
    from hysac.index import IndexStore

    with IndexStore(root) as st:
        ids = np.concatenate([st.ids_of(m) for m in ("text", "image")])
        rows = st.rows(ids)
        emb = st.embeddings.get(ids)
    keys = [rows[int(i)]["key"] for i in ids]
    return dict(zip(keys, emb)), {rows[int(i)]["key"]: rows[int(i)]["unsafe"] for i in ids}


def compare(a: Path, b: Path, curvature: float) -> dict:
    from hysac import lorentz as L

    ea, ua = stored(a)
    eb, ub = stored(b)
    keys = sorted(ea)
    assert keys == sorted(eb), "the two indexes hold different items"
    xa = torch.from_numpy(np.stack([ea[k] for k in keys])).double()
    xb = torch.from_numpy(np.stack([eb[k] for k in keys])).double()
    cos = torch.nn.functional.cosine_similarity(L.log_map0(xa, curvature), L.log_map0(xb, curvature), dim=-1)
    return {"items": len(keys), "cos_min": float(cos.min()), "unsafe_flags_equal": sum(ua[k] == ub[k] for k in keys),
            "passed": bool(cos.min() >= COS_MIN)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="hysac-mini")
    ap.add_argument("--texts", type=int, default=0, help="first N test texts (0 = all)")
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=256, help="items per committed index batch")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--max-wait", type=float, default=300.0)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)

    from hysac.fast import describe, optimize
    from hysac.model import load_model

    plain = load_model(args.model)
    fast = optimize(copy.deepcopy(plain), device="cpu")
    texts, _ = load_texts(args.texts or None)
    quiet = wait_for_quiet(args.max_load, 0.3, args.max_wait)
    results: dict = {"machine": {**machine(), **versions("transformers", "onnxruntime", "faiss", "numpy", "PIL")},
                     "model": plain.model_id, "fast_path": describe(fast), "load": quiet,
                     "settings": vars(args), "data": {"texts": len(texts), "images": args.images}}
    with tempfile.TemporaryDirectory(prefix="hysac-bench-build-") as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        make_jpegs(tmp / "images", args.images)
        import pandas as pd

        pd.DataFrame({"text": texts}).to_csv(tmp / "texts.csv", index=False)
        sources = {"texts": tmp / "texts.csv", "images": tmp / "images"}
        times: dict = {name: {kind: [] for kind in sources} for name in ("plain", "fast")}
        counts: dict = {}
        for r in range(args.rounds):
            order = ("plain", "fast") if r % 2 == 0 else ("fast", "plain")
            for kind, src in sources.items():
                for name in order:
                    model = plain if name == "plain" else fast
                    secs, n = build(src, tmp / f"{name}-{kind}", model, args.batch_size)
                    times[name][kind].append(secs)
                    counts[kind] = n
                    log(f"round {r + 1} {kind} {name}: {n} items in {secs:.1f} s ({n / secs:.1f}/s)")
        for name in ("plain", "fast"):
            results[name] = {f"{kind}_per_s": round(counts[kind] / statistics.median(times[name][kind]), 2)
                             for kind in sources}
            results[name]["times_s"] = {k: [round(t, 2) for t in v] for k, v in times[name].items()}
        results["speedup"] = {f"{kind}": round(results["fast"][f"{kind}_per_s"] / results["plain"][f"{kind}_per_s"], 2)
                              for kind in sources}
        results["checks"] = {kind: compare(tmp / f"plain-{kind}", tmp / f"fast-{kind}", plain.curvature)
                             for kind in sources}
    results["load"]["loadavg_at_end"] = [round(x, 2) for x in __import__("os").getloadavg()]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "index_build.json").write_text(json.dumps(results, indent=2, default=str))
    md = render_md(results)
    (out / "index_build.md").write_text(md)
    print(md)
    return 0 if all(c["passed"] for c in results["checks"].values()) else 1


def render_md(r: dict) -> str:
    m, p, f, s, c = r["machine"], r["plain"], r["fast"], r["speedup"], r["checks"]
    return "\n".join([
        "# Index build on the CPU: `hysac index build` plain vs `--fast` (offline model)", "",
        f"- date: {m['date']}; machine: {m['cpu']} ({m['cpu_count']} logical CPUs), {m['platform']}",
        f"- python {m['python']}, torch {m['torch']}, " + ", ".join(f"{k} {v}" for k, v in m.items()
                                                                    if k in ("transformers", "onnxruntime", "faiss")),
        f"- model {r['model']}; data: {r['data']['texts']} texts (CSV), {r['data']['images']} JPEG files 640x480; "
        f"batch {r['settings']['batch_size']}; {r['settings']['rounds']} rounds, alternating order, median",
        f"- load average before: {r['load']['loadavg_at_start']} (quiet: {r['load']['quiet']}), after: "
        f"{r['load'].get('loadavg_at_end')}",
        f"- fast path: `{r['fast_path']}`", "",
        "| | plain | fast | speedup |", "|---|---:|---:|---:|",
        f"| texts/s | {p['texts_per_s']} | {f['texts_per_s']} | {s['texts']}x |",
        f"| images/s (JPEG files) | {p['images_per_s']} | {f['images_per_s']} | {s['images']}x |", "",
        "Same indexes: " + "; ".join(f"{k}: {v['items']} items, tangent cosine min {v['cos_min']:.6f}, unsafe flags "
                                     f"equal on {v['unsafe_flags_equal']}/{v['items']} "
                                     f"({'pass' if v['passed'] else 'FAIL'})" for k, v in c.items()) + ".", "",
        "Command: `python benchmarks/bench_index_build.py`.", ""])


if __name__ == "__main__":
    raise SystemExit(main())
