"""Leave-one-source-out: how the training recipe does on a register it never saw.

For each source group of the register corpus (image-generation prompts, captions, requests, moderation samples,
tweets; :data:`hysac.data.corpus.GROUPS`) the training config is run with ``data.corpus.leave_out=<group>``: no
text of that group (styled copies included) trains or validates, so the thresholds are fitted on the other
registers, and the whole group is the test split. Reported per held-out group at each method's own threshold:
FPR on its safe texts, TPR on its unsafe texts, and AUROC. In the same run and on the same texts:

* ``hysac`` — the recipe itself (distance from the origin, threshold from the config's rule);
* ``euclidean-probe`` — logistic regression on the same frozen text features and training texts (weighted as the
  training sampler draws them), its threshold fitted by the same per-register rule on the same validation texts;
* ``safe-clip`` — the same backbone, corpus and fold trained with the Safe-CLIP objective (unlearning: unsafe texts
  pulled onto their safe counterparts, Euclidean; an MLP head, since a polar head keeps the tower's directions and
  an unlearning objective could not move them), scored by a logistic probe on its embeddings fitted and
  thresholded like ``euclidean-probe`` — the paper's comparison of awareness against unlearning;
* ``profanity-check`` — ``alt-profanity-check`` at 0.5;
* ``hysac-mini`` — the shipped model at its own threshold (it was trained on some of these sources).

**Ranking or threshold?** Beside each operating point, the TPR the same scores reach at the held-out group's FPR
budget (:data:`FPR_BUDGET`: 5 % for prompts and captions, 10 % for requests, moderation, tweets and the user's own
``extra:<name>`` registers, which ``groups`` may also name) with the threshold fitted on the held-out texts
themselves. No threshold rule can beat it, so where it too falls short of a
recall target the ranking, not the threshold, is what misses.

**Retrieval with redirection** on the held-out group (groups with both classes): a gallery of up to
:data:`RETRIEVAL_GALLERY_PER_CLASS` safe and as many unsafe texts of the group, and up to :data:`RETRIEVAL_QUERIES`
unsafe and as many safe query texts of the group, disjoint from the gallery (seeded). Register cannot win a safe
top-1 here: gallery and queries are one register. Per method, the share of unsafe queries whose nearest gallery
text is safe; for HySAC models without and with ``redirect`` (the model's own traversal rule, as ``search`` applies
it) and the share of safe queries that keep their top-1 under redirect; ``hysac-move-all`` is the fold's model
moving every query beyond the radius (no trigger). ``frozen`` is the frozen MiniLM space the others start from
(cosine), ``safe-clip`` the unlearning model's own space (cosine: unlearning is its redirect).

``hysac eval --loso configs/<train config>.yaml --out DIR`` writes ``DIR/loso.json`` and ``DIR/loso.md``.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import metrics as M
from ..errors import InputError

GROUP_ORDER = ("prompts", "captions", "requests", "moderation", "tweets")
#: the methods scored beside the recipe in every fold (``run_loso(baselines=...)``, ``--baseline``)
BASELINES = ("euclidean-probe", "safe-clip", "profanity-check", "hysac-mini")
#: the FPR each held-out group may spend on its safe texts (the targets of the leave-one-source-out protocol)
FPR_BUDGET = {"prompts": 0.05, "captions": 0.05, "requests": 0.10, "moderation": 0.10, "tweets": 0.10}
#: the budget of a register of the user's own (data.corpus.extra)
EXTRA_FPR_BUDGET = 0.10
RETRIEVAL_GALLERY_PER_CLASS = 750
RETRIEVAL_QUERIES = 200


def retrieval_sets(labels: np.ndarray, seed: int = 0, per_class: int = RETRIEVAL_GALLERY_PER_CLASS,
                   queries: int = RETRIEVAL_QUERIES) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Positions into ``labels`` (N,) → (gallery, unsafe queries, safe queries), disjoint and seeded: up to
    ``queries`` of each class as queries, then up to ``per_class`` of each class of the rest as the gallery. None
    when a class is missing."""
    y = np.asarray(labels).astype(int)
    order = np.random.default_rng(seed).permutation(len(y))
    unsafe, safe = order[y[order] == 1], order[y[order] == 0]
    if len(unsafe) < 2 or len(safe) < 2:
        return None
    nq_u, nq_s = min(queries, len(unsafe) // 2), min(queries, len(safe) // 2)
    gallery = np.concatenate([safe[nq_s:nq_s + per_class], unsafe[nq_u:nq_u + per_class]])
    return gallery, unsafe[:nq_u], safe[:nq_s]


def redirect_point(embed: Callable[[np.ndarray], Any], similarity: Callable[[Any, Any], Any],
                   sets: tuple[np.ndarray, np.ndarray, np.ndarray], labels: np.ndarray,
                   move: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Top-1 retrieval on :func:`retrieval_sets`: ``embed(positions)`` → (N, D) tensor, ``similarity(q, g)`` →
    (Q, G) (larger = nearer), ``move(q)`` → the redirected queries (None: the method has no redirect)."""
    import torch

    gal, uq, sq = sets
    y = np.asarray(labels).astype(int)
    g_lab = y[gal]
    g = embed(gal)

    def top1(q) -> np.ndarray:
        with torch.no_grad():
            return similarity(q, g).argmax(dim=1).cpu().numpy()

    qu, qs = embed(uq), embed(sq)
    row: dict[str, Any] = {"gallery_safe": int((g_lab == 0).sum()), "gallery_unsafe": int((g_lab == 1).sum()),
                           "unsafe_queries": len(uq), "safe_queries": len(sq),
                           "unsafe_safe_top1": float(np.mean(g_lab[top1(qu)] == 0))}
    if move is not None:
        row["unsafe_safe_top1_redirect"] = float(np.mean(g_lab[top1(move(qu))] == 0))
        row["safe_keep_top1"] = float(np.mean(top1(move(qs)) == top1(qs)))
    return row


def _hyperbolic(model, query: str | None = "text") -> tuple[Callable[[Any, Any], Any], Callable[[Any], Any]]:
    """(similarity, redirect) of a HySAC model: −geodesic distance, and ``search --mode redirect``'s move of text
    queries (:meth:`hysac.policy.SafetyPolicy.move`; ``query=None``: every query beyond the radius moves)."""
    from .. import lorentz as L

    c = model.curvature
    return (lambda q, g: -L.pairwise_dist(q.double(), g.double(), c),
            lambda q: model.policy.move(q, "redirect", "text", query=query).points)


def _cosine(q, g):
    import torch.nn.functional as F

    return F.normalize(q.float(), dim=-1) @ F.normalize(g.float(), dim=-1).T


def operating_point(scores: np.ndarray, labels: np.ndarray, threshold: float,
                    budget: float | None = None) -> dict[str, Any]:
    """FPR / TPR at ``threshold`` (score > threshold = unsafe) and AUROC where both classes are present; with an FPR
    ``budget`` also ``tpr_at_budget``: the largest TPR of any threshold whose FPR on these texts is ``<= budget``."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(int)
    row: dict[str, Any] = {"n_safe": int((labels == 0).sum()), "n_unsafe": int((labels == 1).sum()),
                           "threshold": float(threshold)}
    conf = M.confusion_at_threshold(scores, labels, threshold)
    if row["n_safe"]:
        row["fpr"] = float(conf["fpr"])
    if row["n_unsafe"]:
        row["tpr"] = float(conf["tpr"])
    if row["n_safe"] and row["n_unsafe"]:
        row["auroc"] = float(M.auroc(scores, labels))
        if budget is not None:
            row["fpr_budget"] = float(budget)
            row["tpr_at_budget"] = float(M.tpr_at_fpr(scores, labels, budget))
    return row


def _fold(cfg: dict, group: str, baselines: Sequence[str], log: Callable[[str], None],
          reference: str = "hysac-mini") -> dict[str, Any]:
    import torch

    from ..train.trainer import Trainer

    trainer = Trainer(cfg, log=log)
    trainer.fit(resume=True)  # ends with finish(): best checkpoint, thresholds fitted on this fold's validation
    test = trainer.data.test
    out: dict[str, Any] = {"group": group, "sources": sorted({str(s) for s in test.text_source})}
    y = test.text_label
    budget = FPR_BUDGET.get(group, EXTRA_FPR_BUDGET)
    out["hysac"] = operating_point(trainer._text_scores("test"), y, trainer.model.unsafe_threshold("text"), budget)
    texts = [trainer.data.texts[i] for i in test.text_idx]
    spec = str(cfg.get("threshold_criterion", "register_fpr@0.05")).split("@", 1)[-1]
    base = trainer.feat.text_cache  # None when the text tower trains: no frozen features to probe
    sets = retrieval_sets(y, seed=trainer.data_seed)  # a draw of the data: data.split_seed when set, else seed
    pool = np.asarray(test.text_idx)
    retrieval: dict[str, Any] = {}
    if sets is not None:
        trainer.model.eval()
        sim, move = _hyperbolic(trainer.model)
        emb = lambda pos: trainer.embed_pool("text", pool[pos])  # noqa: E731
        retrieval["hysac"] = redirect_point(emb, sim, sets, y, move)
        # the same radius without the trigger: every query beyond it moves, judged unsafe or not
        retrieval["hysac-move-all"] = redirect_point(emb, sim, sets, y, _hyperbolic(trainer.model, query=None)[1])
        if base is not None:
            retrieval["frozen"] = redirect_point(lambda pos: base[torch.as_tensor(pool[pos])], _cosine, sets, y)

    def feats(idx) -> np.ndarray:
        return base[np.asarray(idx)].numpy()

    if "euclidean-probe" in baselines and base is None:
        out["euclidean-probe"] = {"skipped": "the text tower trains in this config (no frozen base features)"}
    elif "euclidean-probe" in baselines:
        out["euclidean-probe"] = _probe_point(trainer, feats, spec, budget)
    if "safe-clip" in baselines:
        out["safe-clip"], sc = _safeclip_point(cfg, trainer, spec, log, budget)
        if sets is not None:
            retrieval["safe-clip"] = redirect_point(lambda pos: sc.embed_pool("text", pool[pos]), _cosine, sets, y)
    if "profanity-check" in baselines:
        from .baselines import profanity_scores

        try:
            out["profanity-check"] = operating_point(profanity_scores(texts), y, 0.5, budget)
        except InputError as e:
            out["profanity-check"] = {"skipped": str(e)}
    if "hysac-mini" in baselines:
        from ..model import HySAC

        shipped = HySAC.from_pretrained(reference).eval()
        with torch.no_grad():
            emb = shipped.encode_text(texts)
            scores = shipped.score(emb).numpy()
        out["hysac-mini"] = operating_point(scores, y, shipped.unsafe_threshold("text"), budget)
        if sets is not None:
            sim, move = _hyperbolic(shipped)
            retrieval["hysac-mini"] = redirect_point(lambda pos: emb[torch.as_tensor(pos)], sim, sets, y, move)
    if retrieval:
        out["retrieval"] = retrieval
    return out


def _probe_point(trainer, feats: Callable[[np.ndarray], np.ndarray], spec: str,
                 budget: float | None = None) -> dict[str, Any]:
    """A logistic probe on ``feats(pool indices)``: fitted on the fold's training texts (weighted as the sampler
    draws them), thresholded by the config's per-register rule on its validation texts, scored on its test texts."""
    from ..train.trainer import register_threshold
    from .baselines import LinearProbe

    fam, val, test = trainer.data.families, trainer.data.val, trainer.data.test
    unsafe, safe = fam["unsafe_text"], fam["safe_text"]  # every training text, each class once per row
    weight = None
    if unsafe.weight is not None and safe.weight is not None:  # the sampler's weights (data.balance)
        weight = np.r_[safe.weight, unsafe.weight]
    probe = LinearProbe().fit(np.concatenate([feats(safe.rows[:, 0]), feats(unsafe.rows[:, 2])]),
                              np.r_[np.zeros(len(safe.rows)), np.ones(len(unsafe.rows))], sample_weight=weight)
    th = register_threshold(probe.score(feats(val.text_idx)), val.text_label, val.text_source, spec)
    return operating_point(probe.score(feats(test.text_idx)), test.text_label, th, budget)


def _safeclip_point(cfg: dict, trainer, spec: str, log: Callable[[str], None],
                    budget: float | None = None) -> tuple[dict[str, Any], Any]:
    """Train the fold with the Safe-CLIP objective (in ``<out_dir>-safeclip``) and probe its text embeddings:
    (operating point, its trainer)."""
    import copy

    from ..train.trainer import Trainer

    sc_cfg = copy.deepcopy(cfg)
    sc_cfg.update(objective="safeclip", out_dir=f"{cfg['out_dir']}-safeclip", export_dir=None)
    sc_cfg["backbone"]["head"] = "mlp"
    sc = Trainer(sc_cfg, log=log)
    sc.fit(resume=True)
    sc.model.eval()

    def feats(idx) -> np.ndarray:
        return sc.embed_pool("text", idx).numpy()  # L2-normalised: the Safe-CLIP space

    if trainer.data.texts != sc.data.texts:  # same corpus and fold: the pools must agree index for index
        raise InputError("loso: the Safe-CLIP fold built a different text pool")
    return _probe_point(trainer, feats, spec, budget), sc


def run_loso(train_config: str | Path, out: str | Path, groups: Sequence[str] | None = None,
             baselines: Sequence[str] = BASELINES,
             overrides: Sequence[str] = (), log: Callable[[str], None] = print,
             reference: str = "hysac-mini", reference_label: str | None = None) -> dict[str, Any]:
    """Run every fold (each trains in ``<out>/<group>``; a finished fold resumes instantly) and write
    ``loso.json`` / ``loso.md`` under ``out``. ``reference`` is the model scored as the ``hysac-mini`` baseline
    (a name or folder; ``reference_label`` names it in the report)."""
    from ..data.corpus import EXTRA_PREFIX
    from ..train.config import load_config

    groups = list(groups or GROUP_ORDER)
    bad = sorted(g for g in set(groups) - set(GROUP_ORDER) if not g.startswith(EXTRA_PREFIX))
    if bad:
        raise InputError(f"loso: unknown source group(s) {bad}; known: {list(GROUP_ORDER)} and the "
                         f"{EXTRA_PREFIX}<file stem> registers of data.corpus.extra")
    bad = sorted(set(baselines) - set(BASELINES))
    if bad:
        raise InputError(f"loso: unknown baseline(s) {bad}; known: {list(BASELINES)}")
    out = Path(out)
    folds = []
    t0 = time.time()
    for group in groups:
        cfg = load_config(train_config, [f"data.corpus.leave_out={group}", f"out_dir={out / group}",
                                         "export_dir=null", *overrides])
        if cfg["data"].get("corpus") is None:
            raise InputError(f"loso: {train_config} does not train on the register corpus (data.corpus)")
        log(f"loso: holding out {group}")
        folds.append(_fold(cfg, group, baselines, log, reference))
    report = {"reference": reference_label or str(reference), "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "train_config": str(train_config), "overrides": list(overrides), "seconds": round(time.time() - t0, 1), "folds": folds}
    out.mkdir(parents=True, exist_ok=True)
    (out / "loso.json").write_text(json.dumps(report, indent=2))
    (out / "loso.md").write_text(to_markdown(report))
    return report


def machine() -> str:
    """The machine line of a report: ``"<architecture>, <usable cores> cores"``."""
    return f"{platform.machine()}, {_cores()} cores"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: what the less obvious retrieval columns are (only the columns a report has are explained)
_RETRIEVAL_LEGEND = {"frozen": "the frozen MiniLM space (cosine)",
                     "hysac-move-all": "the fold's model with every query beyond the redirect radius moved, judged "
                                       "unsafe or not",
                     "safe-clip": "the unlearning model's space (cosine)"}


def to_markdown(report: dict[str, Any]) -> str:
    methods = [m for m in ("hysac", "euclidean-probe", "safe-clip", "profanity-check", "hysac-mini")
               if any(m in f for f in report["folds"])]
    keep = [o.split("=", 1)[1] for o in report.get("overrides") or [] if o.startswith("data.corpus.leave_out_keep=")]
    held = ("the held-out group's test-split texts (" + keep[-1] + " texts per class of the group's training and "
            "validation splits train and validate: data.corpus.leave_out_keep)" if keep
            else "the held-out group's texts, never trained or validated on")
    lines = [f"# Leave-one-source-out ({report['date']}, {report['machine']}, `{report['train_config']}`)", "",
             f"Each row: {held}; FPR on its safe texts / TPR on "
             "its unsafe texts at each method's own threshold, and AUROC. Overrides: "
             f"{', '.join(report.get('overrides') or []) or 'none'}; hysac-mini column: "
             f"{report.get('reference', 'hysac-mini')}.", "",
             "| held out | n safe / unsafe | " + " | ".join(f"{m} FPR / TPR / AUROC" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]

    def cell(row: dict | None) -> str:
        if not row or "skipped" in row:
            return "n/a"
        return " / ".join("–" if row.get(k) is None else f"{row[k]:.3f}" for k in ("fpr", "tpr", "auroc"))

    for f in report["folds"]:
        h = f["hysac"]
        lines.append(f"| {f['group']} | {h['n_safe']} / {h['n_unsafe']} | "
                     + " | ".join(cell(f.get(m)) for m in methods) + " |")
    budgeted = [f for f in report["folds"] if "tpr_at_budget" in f["hysac"]]
    if budgeted:
        lines += ["", "## Ranking or threshold?", "",
                  "TPR on the held-out group's unsafe texts at each method's own threshold → the largest TPR any "
                  "threshold reaches while the group's own FPR stays within its budget (that threshold fitted on the "
                  "held-out texts themselves, so no threshold rule can beat it; it is the lower figure where the own "
                  "threshold spends more FPR than the budget). Where the second figure misses a recall target too, "
                  "the ranking is what misses, not the threshold.", "",
                  "| held out | FPR budget | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]

        def bcell(row: dict | None) -> str:
            if not row or "tpr_at_budget" not in row:
                return "n/a"
            return f"{row['tpr']:.3f} → {row['tpr_at_budget']:.3f}"

        for f in budgeted:
            lines.append(f"| {f['group']} | {f['hysac']['fpr_budget']:.0%} | "
                         + " | ".join(bcell(f.get(m)) for m in methods) + " |")
    folds = [f for f in report["folds"] if f.get("retrieval")]
    if folds:
        rmethods = [m for m in ("frozen", "hysac", "hysac-move-all", "safe-clip", "hysac-mini")
                    if any(m in f["retrieval"] for f in folds)]
        lines += ["", "## Retrieval with redirection on the held-out group", "",
                  f"Gallery: up to {RETRIEVAL_GALLERY_PER_CLASS} safe and {RETRIEVAL_GALLERY_PER_CLASS} unsafe texts "
                  f"of the held-out group; queries: up to {RETRIEVAL_QUERIES} unsafe and {RETRIEVAL_QUERIES} safe "
                  "other texts of the group. Cells: % of unsafe queries whose top-1 is safe; for HySAC models "
                  "plain → with `redirect` (the model's traversal rule, as `search` applies it), and in brackets "
                  "the % of safe queries that keep their top-1 under redirect."
                  + "".join(f" {m}: {_RETRIEVAL_LEGEND[m]}." for m in rmethods if m in _RETRIEVAL_LEGEND), "",
                  "| held out | gallery safe / unsafe | queries unsafe / safe | "
                  + " | ".join(rmethods) + " |", "|---|---|---|" + "---|" * len(rmethods)]

        def rcell(r: dict | None) -> str:
            if not r:
                return "n/a"
            if "unsafe_safe_top1_redirect" not in r:
                return f"{r['unsafe_safe_top1']:.1%}"
            return (f"{r['unsafe_safe_top1']:.1%} → {r['unsafe_safe_top1_redirect']:.1%} "
                    f"({r['safe_keep_top1']:.1%})")

        for f in folds:
            r0 = next(iter(f["retrieval"].values()))
            lines.append(f"| {f['group']} | {r0['gallery_safe']} / {r0['gallery_unsafe']} | "
                         f"{r0['unsafe_queries']} / {r0['safe_queries']} | "
                         + " | ".join(rcell(f["retrieval"].get(m)) for m in rmethods) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["BASELINES", "EXTRA_FPR_BUDGET", "FPR_BUDGET", "GROUP_ORDER", "machine", "operating_point",
           "redirect_point", "retrieval_sets", "run_loso", "to_markdown"]
