"""Redirection on a text gallery of every register, for one or more models (public API only: index + searcher).

    python scripts/redirect_report.py --model hysac-mini --model /path/to/other --out reports/hysac-mini/redirect

Gallery: 3,000 train+val texts of the register corpus (both classes, every register; seeded). Queries: up to 300
held-out unsafe and 300 held-out safe test texts. For each model:

* unsafe queries whose top-1 is safe, with ``--mode redirect`` and without (``off``);
* safe queries whose top-1 is the same with and without redirect;
* **topic**: each unsafe query's *safe counterpart* is the safe gallery text of the same register nearest to it in
  the frozen MiniLM sentence space (``frozen_text_space``, the model-independent pairing rule of training). We report
  its rank among the safe gallery items after redirect (median, share in the top 10) next to the rank a randomly
  chosen safe item gets (the chance level): a redirect that lands on the query's topic ranks the counterpart high.

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

GALLERY = 3000
QUERIES = 300


def corpus_sets(seed: int = 0):
    from hysac.data.corpus import register_key, register_splits

    sp = register_splits({"seed": seed})
    rng = np.random.default_rng(seed)
    gal = sp.train + sp.val
    gal = [gal[i] for i in rng.permutation(len(gal))[:GALLERY]]
    test = [sp.test[i] for i in rng.permutation(len(sp.test))]
    unsafe_q = [e for e in test if e.label == 1][:QUERIES]
    safe_q = [e for e in test if e.label == 0][:QUERIES]
    return gal, unsafe_q, safe_q, register_key


def counterparts(gal, unsafe_q, register_key) -> np.ndarray:
    """Index into ``gal`` of each unsafe query's safe counterpart (same register, nearest in frozen MiniLM space;
    -1 where the register has no safe gallery text)."""
    import torch

    from hysac.backbones.mini import MiniBackbone
    from hysac.train.trainer import frozen_text_space

    bb = MiniBackbone().eval()
    g = frozen_text_space(bb, [e.text for e in gal], torch.device("cpu"))
    q = frozen_text_space(bb, [e.text for e in unsafe_q], torch.device("cpu"))
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    regs = np.array([register_key(e.source) for e in gal])
    safe = np.array([e.label == 0 for e in gal])
    out = np.full(len(unsafe_q), -1)
    for i, e in enumerate(unsafe_q):
        cand = np.flatnonzero(safe & (regs == register_key(e.source)))
        if len(cand):
            out[i] = cand[np.argmax(g[cand] @ q[i])]
    return out


def measure(name: str, gal, unsafe_q, safe_q, partner: np.ndarray) -> dict:
    from hysac import HySAC
    from hysac.index import build_index, open_searcher

    model = HySAC.from_pretrained(name).eval()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        with open(Path(tmp) / "gallery.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "source", "label", "gid"])
            w.writerows((e.text, e.source, e.label, i) for i, e in enumerate(gal))
        build_index(Path(tmp) / "gallery.csv", Path(tmp) / "idx", model, progress=False)
        n_safe = sum(e.label == 0 for e in gal)
        with open_searcher(Path(tmp) / "idx", model) as s:
            uq = [e.text for e in unsafe_q]
            red = s.search_text(uq, mode="redirect", k=len(gal))
            off = s.search_text(uq, mode="off", k=1)
            sq = [e.text for e in safe_q]
            safe_off = s.search_text(sq, mode="off", k=1)
            safe_red = s.search_text(sq, mode="redirect", k=1)

    def label(hit) -> int:
        return int(hit["metadata"]["label"])

    red_rows = [r.to_dict()["results"] for r in red]
    rng = np.random.default_rng(1)
    safe_ids = [i for i, e in enumerate(gal) if e.label == 0]
    ranks, chance = [], []
    for rows, p in zip(red_rows, partner):
        safe_order = [int(h["metadata"]["gid"]) for h in rows if label(h) == 0]
        pos = {g: i + 1 for i, g in enumerate(safe_order)}
        if p >= 0 and int(p) in pos:
            ranks.append(pos[int(p)])
            chance.append(pos.get(int(rng.choice(safe_ids)), n_safe))
    ranks_a, chance_a = np.array(ranks), np.array(chance)
    return {
        "model": name,
        "gallery": len(gal), "gallery_safe": n_safe, "unsafe_queries": len(unsafe_q), "safe_queries": len(safe_q),
        "unsafe_safe_top1_redirect": float(np.mean([label(rows[0]) == 0 for rows in red_rows])),
        "unsafe_safe_top1_off": float(np.mean([label(r.to_dict()["results"][0]) == 0 for r in off])),
        "safe_keep_top1": float(np.mean([a.to_dict()["results"][0]["text"] == b.to_dict()["results"][0]["text"]
                                         for a, b in zip(safe_off, safe_red)])),
        "counterpart_rank_median": float(np.median(ranks_a)),
        "counterpart_in_top10": float(np.mean(ranks_a <= 10)),
        "random_safe_rank_median": float(np.median(chance_a)),
        "random_safe_in_top10": float(np.mean(chance_a <= 10)),
        "seconds": round(time.time() - t0, 1),
    }


def to_markdown(rows: list[dict]) -> str:
    r0 = rows[0]
    lines = [f"# Redirection on a gallery of every register ({time.strftime('%Y-%m-%d')}, "
             f"{platform.processor() or platform.machine()})", "",
             f"Gallery: {r0['gallery']} corpus texts ({r0['gallery_safe']} safe), {r0['unsafe_queries']} held-out "
             f"unsafe and {r0['safe_queries']} held-out safe queries. Topic: rank of the unsafe query's safe "
             "counterpart (same register, nearest in frozen MiniLM space) among the safe gallery texts after "
             "redirect, against a random safe text.", "",
             "| model | unsafe → safe top-1 (redirect) | unsafe → safe top-1 (off) | safe keep top-1 |"
             " counterpart rank, median (in top 10) | random safe item rank, median (in top 10) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['unsafe_safe_top1_redirect']:.1%} | {r['unsafe_safe_top1_off']:.1%} | "
                     f"{r['safe_keep_top1']:.1%} | {r['counterpart_rank_median']:.0f} "
                     f"({r['counterpart_in_top10']:.0%}) | {r['random_safe_rank_median']:.0f} "
                     f"({r['random_safe_in_top10']:.0%}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="model name or folder (repeatable)")
    ap.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    args = ap.parse_args()
    gal, unsafe_q, safe_q, register_key = corpus_sets()
    partner = counterparts(gal, unsafe_q, register_key)
    rows = [measure(m, gal, unsafe_q, safe_q, partner) for m in args.model]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    out.with_suffix(".md").write_text(to_markdown(rows))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
