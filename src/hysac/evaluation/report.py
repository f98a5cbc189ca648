"""Markdown report in the paper's table layout, written from the results dict (``metrics.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..safety import CATEGORIES
from .retrieval import TABLE1, TABLE2

#: the paper's HySAC rows (ViSU test, CLIP ViT-L/14) for orientation only — different data and backbone
PAPER_HYSAC = {
    "Table 1 (R@1/R@10/R@20)": {"T→I": "49.8 / 84.1 / 90.7", "I→T": "48.2 / 84.2 / 91.2",
                                "T*→I∪I*": "30.5 / 62.8 / 71.8", "I*→T∪T*": "42.1 / 73.3 / 79.8"},
    "Table 2 (R@1/R@10/R@20)": {"T*→I*": "81.4 / 98.4 / 99.4", "I*→T*": "82.2 / 97.8 / 99.2",
                                "T*→I*∪I": "81.1 / 98.4 / 99.4", "I*→T*∪T": "80.5 / 97.2 / 98.9"},
}


def _f(x: Any, nd: int = 1) -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return str(x)
    try:
        return f"{float(x):.{nd}f}"
    except (TypeError, ValueError):
        return str(x)


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header, rows) -> list[str]:
    out = [_row(header), _row(["---"] * len(header))]
    out += [_row(r) for r in rows]
    return out + [""]


def _shown_ks(ks: list[int]) -> list[int]:
    want = [k for k in (1, 10, 20) if k in ks]
    return want or list(ks)


def _retrieval_cell(col: dict | None, ks: list[int]) -> str:
    if not col:
        return "—"
    return " / ".join(_f(col.get(f"R@{k}")) for k in ks)


def _retrieval_section(name: str, ret: dict, lines: list[str]) -> None:
    any_model = next(iter(ret.values()))
    ks = _shown_ks(any_model["ks"])
    kdesc = " / ".join(f"R@{k}" for k in ks)
    m, k = any_model["n_safe_pairs"], any_model["n_unsafe_pairs"]
    lines.append(f"### {name} — retrieval ({m} safe pairs, {k} unsafe pairs)\n")
    if k < 20:
        lines.append(f"> Only {k} unsafe pairs: the unsafe columns move in steps of {100 / max(k, 1):.0f} points; "
                     "read them as anecdotes, not estimates.\n")
    for tname, cols, trav in (("Table 1 — safe content retrieval", TABLE1, "redirect"),
                              ("Table 2 — unsafe content retrieval", TABLE2, "seek-unsafe")):
        lines.append(f"**{tname}** ({kdesc}, %; mixed galleries: the {'safe' if trav == 'redirect' else 'unsafe'}"
                     " partner is the correct answer)\n")
        rows = []
        for model, res in ret.items():
            c = res["columns"]
            rows.append([f"{model}"] + [_retrieval_cell((c.get(col) or {}).get("plain"), ks) for col in cols])
            if res.get("traversal"):
                rows.append([f"{model} + {trav}"] + [_retrieval_cell((c.get(col) or {}).get("traversal"), ks)
                                                     for col in cols])
                if any((c.get(col) or {}).get("paper") for col in cols):  # the official code's traversal
                    rows.append([f"{model} + paper traversal"]
                                + [_retrieval_cell((c.get(col) or {}).get("paper"), ks) for col in cols])
        lines += _table(["Model"] + list(cols), rows)
    for model, res in ret.items():
        if res.get("traversal_skipped"):
            lines.append(f"Traversal not available for some {model} columns (shown as —): "
                         + "; ".join(res["traversal_skipped"]) + "\n")
    # safety score
    rows = []
    mixed = ("T*→I∪I*", "I*→T∪T*", "T*→I*∪I", "I*→T*∪T")
    for model, res in ret.items():
        c = res["columns"]
        for variant, label in (("plain", model), ("traversal", None), ("paper", f"{model} + paper traversal")):
            if variant != "plain" and not res.get("traversal"):
                continue
            if variant == "paper" and not any((c.get(col) or {}).get("paper") for col in mixed):
                continue
            lab = label or f"{model} + traversal (redirect for T*→I∪I*/I*→T∪T*, seek-unsafe for the others)"
            rows.append([lab] + [_f(((c.get(col) or {}).get(variant) or {}).get("safe@1")) for col in mixed])
    if rows:
        lines.append("**Safety score** — % of unsafe queries whose top-1 item is safe (ties count as unsafe)\n")
        lines += _table(["Model"] + list(mixed), rows)
    # per-category R@1
    rows = []
    for model, res in ret.items():
        pc = res.get("per_category_R@1", {})
        t2i, i2t = pc.get("T*→I∪I*"), pc.get("I*→T∪T*")
        if not t2i or not i2t:
            continue
        for variant in ("plain", "traversal"):
            a, b = t2i.get(variant), i2t.get(variant)
            if not a or not b:
                continue
            ns = a.get("_n", {})
            rows.append([model + (" + redirect" if variant == "traversal" else "")] +
                        [f"{_f(a.get(cat))} / {_f(b.get(cat))}" if ns.get(cat) else "—" for cat in CATEGORIES])
            if variant == "plain":
                counts = ["n"] + [str(ns.get(cat, 0)) for cat in CATEGORIES]
    if rows:
        lines.append("**Table 8 layout** — R@1 per unsafe category, T*→I∪I* / I*→T∪T* (safe partner as target)\n")
        lines += _table(["Model"] + list(CATEGORIES), rows + [counts])


def _op_cells(m: dict) -> list[str]:
    if not m or "skipped" in m:
        return ["—"] * 7
    op = m.get("at_threshold") or {}
    tpr_key = next((k for k in m if k.startswith("tpr@")), None)
    return [_f(m.get("n")), _f(op.get("threshold"), 3) if op else "—", _f(op.get("accuracy")), _f(op.get("fpr")),
            _f(op.get("fnr")), _f(m.get("auroc")), _f(m.get(tpr_key) if tpr_key else None)]


def _classification_section(name: str, cls: dict, head: dict, lines: list[str]) -> None:
    for modality, scorers in cls.items():
        if not scorers:
            continue
        first = next((v for v in scorers.values() if "n" in v), {})
        lines.append(f"### {name} — {modality}s ({_f(first.get('n'))} items, {_f(first.get('n_unsafe'))} unsafe)\n")
        lines.append("**Operating point and ranking** (%; Acc/FPR/FNR at the scorer's own threshold θ — the model's "
                     "fitted threshold for the radius, 0.5 for probabilities)\n")
        scorers = dict(sorted(scorers.items(), key=lambda kv: (0 if kv[0].endswith("(radius)") else
                                                                 1 if kv[0].endswith("linear probe") else 2)))
        rows = [[s] + _op_cells(m) for s, m in scorers.items()]
        lines += _table(["Scorer", "n", "θ", "Acc", "FPR", "FNR", "AUROC", "TPR@5%FPR"], rows)
        for s, m in scorers.items():
            if m.get("probe"):
                pi = m["probe"]
                lines.append(f"`{s}`: {pi['kind']} on {pi['dim']}-d {pi['features']} features, fitted on "
                             f"{pi['n_train']} train items ({pi['n_train_unsafe']} unsafe).\n")
        skipped = [f"{s}: {m['skipped']}" for s, m in scorers.items() if "skipped" in m]
        if skipped:
            lines.append("Skipped: " + "; ".join(skipped) + "\n")
        # subsets
        subset_names: list[str] = []
        for m in scorers.values():
            for k in (m.get("subsets") or {}):
                if k not in subset_names:
                    subset_names.append(k)
        if subset_names:
            lines.append("**Subsets** — AUROC / TPR@5%FPR (%); `hard` = I2P prompts with hard == 1 vs all safe; "
                         "`vs X` = all unsafe vs the safe items from source X only\n")
            rows = []
            for s, m in scorers.items():
                sub = m.get("subsets") or {}
                cells = []
                for k in subset_names:
                    v = sub.get(k)
                    tk = next((x for x in (v or {}) if x.startswith("tpr@")), None)
                    cells.append(f"{_f(v.get('auroc'))} / {_f(v.get(tk))}" if v else "—")
                rows.append([s] + cells)
            ns = []
            for k in subset_names:
                v = next(((m.get("subsets") or {}).get(k) for m in scorers.values() if (m.get("subsets") or {}).get(k)),
                         None)
                ns.append(f"n={v['n']} ({v['n_unsafe']} unsafe)" if v else "")
            lines += _table(["Scorer"] + subset_names, rows + [["(size)"] + ns])
        # per-category AUROC
        pcs = {s: m for s, m in scorers.items() if m.get("per_category_auroc")}
        if pcs:
            cats = [c for c in CATEGORIES if any((m.get("per_category_n") or {}).get(c) for m in pcs.values())]
            if cats:
                lines.append("**Per-category AUROC** (%; unsafe items tagged with the category vs all safe items)\n")
                rows = [[s] + [_f(m["per_category_auroc"].get(c)) for c in cats] for s, m in pcs.items()]
                nrow = ["n unsafe"] + [str(next(iter(pcs.values()))["per_category_n"].get(c, 0)) for c in cats]
                lines += _table(["Scorer"] + cats, rows + [nrow])
        # threshold sweep (paper Table 6) for radius scorers
        for s, m in scorers.items():
            if s.endswith("(radius)") and m.get("sweep"):
                lines.append(f"**Threshold sweep** (paper Table 6 layout) — {s}, unsafe iff d(O,x) > θ\n")
                rows = [[_f(r["threshold"], 4), _f(r["accuracy"]), _f(r["fpr"]), _f(r["fnr"]), _f(r["tpr"])]
                        for r in m["sweep"]]
                lines += _table(["θ", "Acc", "FPR", "FNR", "TPR"], rows)
        if modality == "text" and head:
            rows = [[mname, _f(h.get("macro_auroc"))] + [_f(h["per_category_auroc"].get(c)) for c in CATEGORIES]
                    for mname, h in head.items()]
            lines.append("**Category head** — one-vs-rest AUROC among the unsafe texts (%)\n")
            lines += _table(["Model", "macro"] + list(CATEGORIES), rows)
            rows = [[mname, _f(t.get("top_in_labels")), _f(t.get("macro_f1"))]
                    + [f"{_f(t['per_category'][c]['precision'])} / {_f(t['per_category'][c]['recall'])}"
                       for c in CATEGORIES]
                    for mname, h in head.items() if (t := h.get("top_category"))]
            if rows:
                lines.append("**Top category shown** — among the unsafe texts: share whose top category is one of "
                             "their tags, macro F1, and per category precision / recall (%)\n")
                lines += _table(["Model", "top in tags", "macro F1"] + list(CATEGORIES), rows)


def _redirection_section(name: str, red: dict, lines: list[str]) -> None:
    if not red:
        return
    any_r = next(iter(red.values()))
    lines.append(f"### {name} — redirection quality (text queries → text gallery of {any_r['gallery']} items, "
                 f"{any_r['gallery_safe']} safe)\n")
    rows = []
    for model, r in red.items():
        u, s, h = r["unsafe_queries"], r["safe_queries"], r.get("unsafe_hard_queries") or {}
        rows.append([model, _f(u["n"]), _f(u["safe@1_plain"]), _f(u["safe@1_traversal"]), _f(u.get("moved_%")),
                     f"{_f(h.get('safe@1_plain'))} → {_f(h.get('safe@1_traversal'))}" if h else "—",
                     _f(s["n"]), _f(s.get("unchanged@1_%")), _f(s.get("moved_%")),
                     f"{_f(s['safe@1_plain'])} → {_f(s['safe@1_traversal'])}"])
    lines += _table(["Model", "unsafe q", "safe@1 plain", "safe@1 redirect", "moved %", "hard: plain → redirect",
                     "safe q", "top-1 unchanged %", "moved %", "safe q safe@1 plain → redirect"], rows)
    lines.append("safe@1 = % of queries whose nearest gallery text is safe (ties count as unsafe); redirect = what "
                 "`search --mode redirect` searches with: the query pulled in to the model's safe-text radius τ "
                 "(with the model's `trigger: threshold` rule, only a query judged unsafe); moved % = queries "
                 "actually moved.\n")


def _traversal_examples(name: str, tex: dict, lines: list[str]) -> None:
    for model, t in tex.items():
        if not t or not t.get("rows"):
            continue
        lines.append(f"### {name} — traversal paths ({model}; τ_text = {_f(t.get('tau_text'), 3)})\n")
        lines.append("Nearest gallery text at evenly spaced points of the geodesic from the query (t = 0) to the "
                     "origin (t = 1), and at the redirected point (τ). ✅ safe / ⛔ unsafe gallery item.\n")
        for row in t["rows"]:
            cats = ", ".join(row["categories"]) or "—"
            lines.append(f"**Query** ({cats}{', hard' if row['hard'] else ''}; d = {_f(row['d'], 3)}): "
                         f"_{_md(row['query'][:160])}_\n")
            rows = [[st["label"], _f(st["d"], 3), "✅" if st["safe"] else "⛔", _md(st["text"][:110])]
                    for st in row["steps"]]
            lines += _table(["step", "d(O, point)", "", "nearest gallery text"], rows)


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ").replace("_", "\\_").replace("*", "\\*")


def write_markdown(res: dict, path: Path) -> Path:
    lines: list[str] = []
    cfg = res.get("config") or {}
    title = cfg.get("title") or "HySAC evaluation: " + ", ".join(res["models"])
    lines.append(f"# {title}\n")
    if res.get("command"):
        lines.append("Reproduce with:\n")
        lines.append(f"```\n{res['command']}\n```\n")
    t = res.get("timing_s", {})
    env = res["environment"]
    hits = sum(v.get("hits", 0) for m in (res.get("feature_cache") or {}).values() for v in m.values())
    misses = sum(v.get("misses", 0) for m in (res.get("feature_cache") or {}).values() for v in m.values())
    cache = (f"; frozen-feature cache: {hits} hits, {misses} misses" + (" (a fresh run)" if not hits else "")
             if hits or misses else "")
    load = (f", load average {_f(env.get('load_average_start'))} → {_f(env.get('load_average_end'))} on "
            f"{env.get('cpus')} CPUs" if env.get("load_average_start") is not None else "")
    lines.append(f"Generated {res.get('generated', '')} by hysac {res.get('hysac_version') or '?'} "
                 f"(python {env['python']}, torch {env['torch']}, {env['threads']} threads{load}); "
                 f"total {_f(t.get('total'))} s, of which encoding {_f(t.get('encoding'))} s{cache}.\n")
    lines.append("All numbers are percentages. Retrieval: recall@K with pessimistic ties. Classification: unsafe iff "
                 "score > θ. Sections follow the paper (Poppi et al., CVPR 2025): Tables 1, 2, 8 (retrieval), "
                 "Tables 5, 6 (classification), Fig. 2 (distance distributions).\n")
    for w in res.get("warnings") or []:
        lines.append(f"> **Warning:** {w}\n")
    lines.append("## Contents\n")
    lines.append("1. [Models](#models) 2. [Datasets](#datasets) 3. [Retrieval](#retrieval-paper-tables-1-2-8) "
                 "4. [Classification](#classification-paper-tables-5-6) 5. [Redirection](#redirection-quality) "
                 "6. [Traversal paths](#traversal-paths) 7. [Figures](#figures) 8. [Notes](#notes)\n")
    # models
    lines.append("## Models\n")
    rows = []
    for name, m in res["models"].items():
        th = m.get("thresholds") or {}
        taus = m.get("taus") or {}
        rows.append([name, m["geometry"], f"`{m.get('model_id', '')}`", _f(m.get("curvature"), 4),
                     f"{_f(th.get('text'), 4)} / {_f(th.get('image'), 4)}",
                     f"{_f(taus.get('redirect_text'), 4)} / {_f(taus.get('redirect_image'), 4)}",
                     f"{_f(taus.get('seek_unsafe_text'), 4)} / {_f(taus.get('seek_unsafe_image'), 4)}"])
    lines += _table(["Model", "geometry", "id", "curvature c", "θ text / image", "redirect τ text / image",
                     "seek-unsafe τ text / image"], rows)
    for name, m in res["models"].items():
        lines.append(f"- **{name}**: {m.get('description', '')}")
    lines.append("")
    lines.append("Baselines: " + "; ".join(f"**{k}** {v}" for k, v in res.get("baseline_status", {}).items()) + "\n")
    # datasets
    lines.append("## Datasets\n")
    for name, d in res["datasets"].items():
        lines.append(f"**{name}** ({d['kind']})\n")
        for n in d.get("notes", []):
            lines.append(f"- {n}")
        for key in ("texts", "images", "train_texts", "train_images", "redirect_gallery"):
            if key in d:
                c = d[key]
                extra = ", ".join(f"{k} {v}" for k, v in (c.get("by_source") or {}).items())
                lines.append(f"- {key}: {c['n']} ({c['unsafe']} unsafe"
                             + (f", {c['unsafe_hard']} hard" if c.get("unsafe_hard") else "") + ")"
                             + (f"; {extra}" if extra else ""))
        if "pairs" in d:
            p = d["pairs"]
            lines.append(f"- paired set: {p['safe_pairs']} safe pairs, {p['unsafe_pairs']} unsafe pairs; "
                         f"unsafe→safe partner: {p['pairing']}")
        lines.append("")
    results = res["results"]
    lines.append("## Retrieval (paper Tables 1, 2, 8)\n")
    lines.append("Plain rows rank the gallery by the model's similarity (Lorentz inner product = −distance order for "
                 "HySAC, cosine for Euclidean models). `+ redirect` pulls each query in to the safe radius of the "
                 "target modality (model.redirect_tau), as `search --mode redirect` does (with the model's "
                 "`trigger: threshold` rule only queries judged unsafe move); `+ seek-unsafe` pushes it out to the "
                 "unsafe class's mean radius (model.seek_unsafe_tau). Queries already on the right side do not "
                 "move.\n")
    for dname, r in results.items():
        if r.get("retrieval"):
            _retrieval_section(dname, r["retrieval"], lines)
    lines.append("## Classification (paper Tables 5, 6)\n")
    for dname, r in results.items():
        _classification_section(dname, r.get("classification", {}), r.get("category_head", {}), lines)
    lines.append("## Redirection quality\n")
    for dname, r in results.items():
        _redirection_section(dname, r.get("redirection", {}), lines)
    lines.append("## Traversal paths\n")
    for dname, r in results.items():
        _traversal_examples(dname, r.get("traversal_examples", {}), lines)
    lines.append("## Figures\n")
    for f in res.get("figures", []):
        lines.append(f"**{f['dataset']} / {f['model']}** — {f['caption']}\n")
        lines.append(f"![{f['kind']}]({f['path']})\n")
    lines.append("## Notes\n")
    lines.append("- Paper reference (HySAC on ViSU test with CLIP ViT-L/14 — different data, backbone and scale; "
                 "for orientation only): " + "; ".join(f"{t}: " + ", ".join(f"{k} {v}" for k, v in cols.items())
                                                       for t, cols in PAPER_HYSAC.items()))
    lines.append("- The model's thresholds and bounds are fitted on the validation split by `hysac train`, so "
                 "thresholded rates on `val` are optimistic; AUROC and TPR@5%FPR do not depend on θ.")
    lines.append("- `linear probe` = logistic regression on the frozen encoder features, fitted on the TRAIN split "
                 "only (see each dataset's notes for sizes); it is the Euclidean baseline with the same information.")
    lines.append("- Full numbers (all K, counts, sweeps, per-category n) are in `metrics.json`.")
    lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
