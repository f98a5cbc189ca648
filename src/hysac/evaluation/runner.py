"""Run a whole evaluation (every model x every dataset x every section) and collect one results dict."""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import metrics as M
from .. import safety as S
from ..errors import InputError
from ..safety import CATEGORIES, MODALITIES
from . import baselines as B
from . import plots as P
from .classification import category_head_metrics, classification_metrics, radius_sweep
from .config import EvalConfig
from .datasets import BUILDERS, EvalDataset, Labelled
from .encoders import HyperbolicSpace, Space, load_space
from .retrieval import PairedEmbeddings, redirection_quality, retrieval_protocol

logger = logging.getLogger(__name__)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def build_dataset(spec) -> EvalDataset:
    return BUILDERS[spec.kind](spec.name, **spec.options)


class Evaluation:
    """Holds the loaded models and datasets; :meth:`run` fills :attr:`results`."""

    def __init__(self, cfg: EvalConfig, *, spaces: list[Space] | None = None,
                 datasets: list[EvalDataset] | None = None, log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.log = log or (lambda msg: logger.info(msg))
        self._spaces = spaces
        self._datasets = datasets
        self.figures: list[dict] = []
        self.results: dict[str, Any] = {}
        self.timing: dict[str, float] = {}

    # -------------------------------------------------------------------------------------------------- loading
    def spaces(self) -> list[Space]:
        if self._spaces is None:
            out = []
            for m in self.cfg.models:
                t0 = time.perf_counter()
                out.append(load_space(m.path, name=m.name, kind=m.kind, backbone=m.backbone, device=self.cfg.device,
                                      cache_dir=self.cfg.cache_dir()))
                self.log(f"loaded model {m.name} ({out[-1].geometry}) in {time.perf_counter() - t0:.1f}s")
            self._spaces = out
        return self._spaces

    def datasets(self) -> list[EvalDataset]:
        if self._datasets is None:
            out = []
            for d in self.cfg.datasets:
                t0 = time.perf_counter()
                out.append(build_dataset(d))
                self.log(f"built dataset {d.name} ({d.kind}) in {time.perf_counter() - t0:.1f}s")
            self._datasets = out
        return self._datasets

    def _tick(self, key: str, t0: float) -> None:
        self.timing[key] = self.timing.get(key, 0.0) + time.perf_counter() - t0

    # ---------------------------------------------------------------------------------------------------- run
    def run(self, out: Path | None = None) -> dict:
        t_start = time.perf_counter()
        load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        out = Path(out or self.cfg.out)
        self.out = out
        spaces = self.spaces()
        datasets = self.datasets()
        res: dict[str, Any] = {"models": {s.name: s.info() for s in spaces},
                               "datasets": {d.name: {**d.counts(), "notes": d.notes} for d in datasets},
                               "results": {}}
        res["warnings"] = self._split_warnings(spaces, datasets)
        for w in res["warnings"]:
            self.log("WARNING: " + w)
        nsfw_ok, nsfw_why = B.opennsfw_available()
        def status(b: str) -> str:
            on = [d.name for d in datasets if b in self._baselines(d)]
            if not on:
                return "disabled"
            where = "" if len(on) == len(datasets) else f" (datasets: {', '.join(on)})"
            if b == "opennsfw":
                return ("enabled" + where + ": " + nsfw_why) if nsfw_ok else "unavailable: " + nsfw_why
            return "enabled" + where

        res["baseline_status"] = {b: status(b) for b in B.BASELINES}
        self._nsfw_ok = nsfw_ok and any("opennsfw" in self._baselines(d) for d in datasets)
        for ds in datasets:
            self.log(f"== dataset {ds.name}")
            res["results"][ds.name] = self._dataset(ds, spaces)
            for sp in spaces:
                sp.flush_cache()
        self.timing["total"] = time.perf_counter() - t_start
        self.timing["encoding"] = sum(s.encode_seconds() for s in spaces)
        res["timing_s"] = {k: round(v, 2) for k, v in self.timing.items()}
        res["feature_cache"] = {s.name: s.cache_stats() for s in spaces if hasattr(s, "cache_stats")}
        res["figures"] = [{**f, "path": str(Path(f["path"]).relative_to(out)) if str(f["path"]).startswith(
            str(out)) else str(f["path"])} for f in self.figures]
        res["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                              "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                              "load_average_start": load_start,
                              "load_average_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
        self.results = res
        return res

    #: offline-dev options that must equal the model's training data settings for its val/test to be held out
    SPLIT_KEYS = ("seed", "val_fraction", "test_fraction", "openmoji_size", "clipart", "clipart_max_safe",
                  "clipart_root", "emoji_limit", "emoji_codepoints", "data_dir")

    def _split_warnings(self, spaces: list[Space], datasets: list[EvalDataset]) -> list[str]:
        """Compare each offline-dev dataset with each model's exported training config (same split settings?)."""
        import inspect

        from ..train.data import data_seed
        from .datasets import offline_dev

        defaults = {k: p.default for k, p in inspect.signature(offline_dev).parameters.items()}
        out = []
        for sp in spaces:
            tc = getattr(sp, "training_config", None)
            if not tc or (tc.get("data") or {}).get("kind") != "offline":
                continue
            for spec in self.cfg.datasets:
                if spec.kind != "offline-dev":
                    continue
                trained = {**tc["data"], "seed": data_seed(tc)}
                diff = []
                for k in self.SPLIT_KEYS:
                    mine = spec.options.get(k, defaults.get(k))
                    theirs = trained.get(k, defaults.get(k))
                    if mine != theirs and not (k == "clipart" and not mine and not theirs):
                        diff.append(f"{k}: eval {mine!r} vs training {theirs!r}")
                if diff:
                    msg = (f"{spec.name} does not split the data like {sp.name} was trained ("
                           + "; ".join(diff) + "): its held-out items may overlap the model's training data")
                    out.append(msg)
                    for ds in datasets:
                        if ds.name == spec.name:
                            ds.notes.append("WARNING: " + msg)
        return out

    # --------------------------------------------------------------------------------------------- per dataset
    def _baselines(self, ds: EvalDataset) -> list[str]:
        for spec in self.cfg.datasets:
            if spec.name == ds.name and spec.baselines is not None:
                return spec.baselines
        return self.cfg.baselines

    def _dataset(self, ds: EvalDataset, spaces: list[Space]) -> dict:
        cfg = self.cfg
        self._active = self._baselines(ds)
        r: dict[str, Any] = {"classification": {}, "category_head": {}, "retrieval": {}, "redirection": {},
                             "traversal_examples": {}}
        # model-independent baselines, once per dataset
        base_text: dict[str, np.ndarray] = {}
        base_image: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        if ds.texts is not None and "profanity-check" in self._active:
            base_text["profanity-check"] = B.profanity_scores(ds.texts.items)
        self._tick("baselines", t0)
        t0 = time.perf_counter()
        if ds.images is not None and self._nsfw_ok and "opennsfw" in self._active:
            self.log(f"open_nsfw on {len(ds.images)} images")
            base_image["opennsfw"] = B.opennsfw_scores(ds.images.items)
        self._tick("baselines", t0)

        for modality, lab, base in (("text", ds.texts, base_text), ("image", ds.images, base_image)):
            if lab is None or len(lab) == 0:
                continue
            r["classification"][modality] = {}
            for name, sc in base.items():
                r["classification"][modality][name] = self._classify(sc, lab, 0.5, cfg.prob_sweep)

        for sp in spaces:
            self.log(f"-- model {sp.name} on {ds.name}")
            self._model_on_dataset(sp, ds, r, {"text": base_text, "image": base_image})
        return r

    def _classify(self, scores, lab: Labelled, theta, sweep) -> dict:
        return classification_metrics(scores, lab.label, theta, multihot=lab.multihot,
                                      hard=lab.hard if lab.hard.any() else None,
                                      source=lab.source if len(set(lab.source[lab.label == 0])) > 1 else None,
                                      sweep=sweep, fpr=self.cfg.fpr)

    def _model_on_dataset(self, sp: Space, ds: EvalDataset, r: dict, base_scores: dict) -> None:
        cfg = self.cfg
        emb: dict[str, torch.Tensor] = {}
        dists: dict[str, np.ndarray] = {}
        curves: dict[str, list] = {"text": [], "image": []}
        percat_curves: dict[str, list] = {"text": [], "image": []}
        for modality, lab, train in (("text", ds.texts, ds.train_texts), ("image", ds.images, ds.train_images)):
            if lab is None or len(lab) == 0:
                continue
            t0 = time.perf_counter()
            x = sp.encode_text(lab.items) if modality == "text" else sp.encode_image(lab.items)
            self._tick("encode", t0)
            emb[modality] = x
            out = r["classification"][modality]
            t0 = time.perf_counter()
            y = lab.label.astype(bool)
            if sp.has_radius:
                d = _np(sp.radius(x)).astype(np.float64)
                th = sp.threshold(modality)
                sweep = radius_sweep(th, cfg.radius_sweep) if th is not None else None
                out[f"{sp.name} (radius)"] = self._classify(d, lab, th, sweep)
                safe_c, unsafe_c = S.SAFE_CLASS[modality], S.UNSAFE_CLASS[modality]
                dists[safe_c], dists[unsafe_c] = d[~y], d[y]
                if y.any() and (~y).any():
                    fpr, tpr, _ = M.roc_curve(d, y)
                    curves[modality].append((f"{sp.name} radius", fpr, tpr, 100 * M.auroc(d, y)))
                    for j, c in enumerate(CATEGORIES):
                        sel = ~y | (y & (lab.multihot[:, j] > 0))
                        if (y & (lab.multihot[:, j] > 0)).sum() >= 2:
                            f2, t2, _ = M.roc_curve(d[sel], y[sel])
                            n_c = int((y & (lab.multihot[:, j] > 0)).sum())
                            percat_curves[modality].append((f"{c} (n={n_c})", f2, t2, 100 * M.auroc(d[sel], y[sel])))
                probs = sp.categorize(x)
                if probs is not None and modality == "text":
                    ch = category_head_metrics(_np(probs), lab.multihot, lab.label)
                    if ch is not None:
                        r["category_head"][sp.name] = ch
            self._tick("classification", t0)
            if "linear-probe" in self._active:
                if train is None or len(train) == 0 or len(set(train.label.tolist())) < 2:
                    out[f"{sp.name} linear probe"] = {"skipped": "no labelled train split with both classes"}
                else:
                    t0 = time.perf_counter()
                    ftr = sp.text_probe_features(train.items) if modality == "text" else \
                        sp.image_probe_features(train.items)
                    fte = sp.text_probe_features(lab.items) if modality == "text" else \
                        sp.image_probe_features(lab.items)
                    self._tick("encode", t0)
                    t0 = time.perf_counter()
                    probe = B.LinearProbe(seed=cfg.seed).fit(_np(ftr), train.label)
                    ps = probe.score(_np(fte))
                    m = self._classify(ps, lab, 0.5, cfg.prob_sweep)
                    m["probe"] = {**probe.info(), "features": ("frozen base tower" if isinstance(sp, HyperbolicSpace)
                                                               and sp._base else "model embedding"),
                                  "dim": int(ftr.shape[1])}
                    out[f"{sp.name} linear probe"] = m
                    if y.any() and (~y).any():
                        fpr, tpr, _ = M.roc_curve(ps, y)
                        curves[modality].append((f"{sp.name} linear probe", fpr, tpr, 100 * M.auroc(ps, y)))
                    self._tick("baselines", t0)
        # peer-baseline ROC curves (scores computed once per dataset)
        for modality, lab in (("text", ds.texts), ("image", ds.images)):
            if lab is None or not len(lab):
                continue
            y = lab.label.astype(bool)
            if not (y.any() and (~y).any()):
                continue
            for bname, sc in base_scores[modality].items():
                fpr, tpr, _ = M.roc_curve(sc, y)
                curves[modality].append((bname, fpr, tpr, 100 * M.auroc(sc, y)))

        # retrieval protocol
        if ds.pairs is not None and len(ds.pairs.safe_text):
            t0 = time.perf_counter()
            pr = ds.pairs
            t_safe, i_safe = sp.encode_text(pr.safe_text), sp.encode_image(pr.safe_image)
            pe = PairedEmbeddings(t_safe, i_safe,
                                  sp.encode_text(pr.unsafe_text) if pr.unsafe_text else t_safe[:0],
                                  sp.encode_image(pr.unsafe_image) if pr.unsafe_image else i_safe[:0],
                                  pr.partner, pr.categories, pr.safe_text, pr.safe_image, pr.unsafe_text,
                                  pr.unsafe_image)
            self._tick("encode", t0)
            t0 = time.perf_counter()
            r["retrieval"][sp.name] = retrieval_protocol(sp, pe, cfg.ks, traversal=cfg.traversal)
            self._tick("retrieval", t0)

        # redirection quality
        if ds.redirect_queries is not None and ds.redirect_gallery is not None and len(ds.redirect_gallery):
            t0 = time.perf_counter()
            q = sp.encode_text(ds.redirect_queries.items)
            g = sp.encode_text(ds.redirect_gallery.items)
            self._tick("encode", t0)
            t0 = time.perf_counter()
            rq = redirection_quality(sp, q, ds.redirect_queries.label, g, ds.redirect_gallery.label == 0,
                                     target="text", query_hard=ds.redirect_queries.hard,
                                     query_keys=ds.redirect_queries.items, gallery_keys=ds.redirect_gallery.items)
            rq.pop("_top1_plain")
            rq.pop("_top1_traversal")
            r["redirection"][sp.name] = rq
            self._tick("redirection", t0)
            if rq["traversal"] and cfg.traversal_queries > 0:
                r["traversal_examples"][sp.name] = self._traversal_examples(sp, ds, q, g)

        # figures
        if cfg.plots:
            t0 = time.perf_counter()
            self._figures(sp, ds, emb, dists, curves, percat_curves, r)
            self._tick("plots", t0)

    # ------------------------------------------------------------------------------------------ traversal paths
    def _traversal_examples(self, sp: Space, ds: EvalDataset, q: torch.Tensor, g: torch.Tensor) -> dict:
        """Nearest gallery text at ``traversal_steps`` points of the geodesic from a few unsafe queries to the
        origin, plus the redirected point. Queries: unsafe ones tagged only violence / shocking / illegal activity
        when there are such (one per category first), hard ones first, farthest from the origin first."""
        cfg = self.cfg
        lab = ds.redirect_queries
        y = lab.label == 1
        d = _np(sp.radius(q))
        # show violence / shocking / illegal-activity prompts first (the committed report need not quote sexual,
        # hateful or harassing prompts), then hard ones, then the farthest from the origin
        shown = [CATEGORIES.index(c) for c in ("violence", "shocking", "illegal activity")]
        other = [j for j in range(len(CATEGORIES)) if j not in shown]
        preferred = (lab.multihot[:, shown] > 0).any(1) & ~(lab.multihot[:, other] > 0).any(1)
        order = np.lexsort((-d, ~lab.hard, ~preferred))
        order = [i for i in order if y[i]]
        picked, seen = [], set()
        for i in order:  # one query per leading category first, for variety
            cats = tuple(np.flatnonzero(lab.multihot[i] > 0).tolist())
            lead = cats[0] if cats else -1
            if lead in seen:
                continue
            seen.add(lead)
            picked.append(i)
            if len(picked) >= cfg.traversal_queries or not preferred[i]:
                break
        picked = [i for i in picked if preferred[i]] or picked[:1]
        for i in order:
            if len(picked) >= cfg.traversal_queries:
                break
            if i not in picked:
                picked.append(i)
        picked = picked[:cfg.traversal_queries]
        gsafe = ds.redirect_gallery.label == 0
        ts = np.linspace(0.0, 1.0, cfg.traversal_steps)
        rows = []
        qsel = q[picked]
        redirected = sp.redirect(qsel, "text", "text")
        for ii, i in enumerate(picked):
            steps = []
            pts = torch.stack([S.traverse_fraction(qsel[ii:ii + 1], sp.c, float(t))[0] for t in ts])
            pts = torch.cat([pts, redirected[ii:ii + 1]])
            sim = sp.similarity(pts, g)
            same = torch.as_tensor([it == lab.items[i] for it in ds.redirect_gallery.items])
            sim[:, same] = float("-inf")
            top = M.top1_indices(sim, prefer=torch.as_tensor(~gsafe))
            dd = _np(sp.radius(pts))
            for k, j in enumerate(top.tolist()):
                steps.append({"t": float(ts[k]) if k < len(ts) else None, "label": "τ-redirect" if k == len(ts)
                              else f"t={ts[k]:.2f}", "d": float(dd[k]), "text": ds.redirect_gallery.items[j],
                              "safe": bool(gsafe[j])})
            rows.append({"query": lab.items[i], "categories": [CATEGORIES[j] for j in
                                                               np.flatnonzero(lab.multihot[i] > 0)],
                         "hard": bool(lab.hard[i]), "d": float(d[i]), "steps": steps})
        return {"tau_text": sp.redirect_tau("text") if hasattr(sp, "redirect_tau") else None, "rows": rows}

    # ------------------------------------------------------------------------------------------------- figures
    def _fig(self, path: Path, caption: str, dataset: str, model: str | None, kind: str) -> None:
        self.figures.append({"path": str(path), "caption": caption, "dataset": dataset, "model": model,
                             "kind": kind})

    def _figures(self, sp: Space, ds: EvalDataset, emb, dists, curves, percat_curves, r) -> None:
        cfg = self.cfg
        slug = _slug(f"{ds.name}-{sp.name}")
        fig_dir = self.out / "figures"
        if sp.has_radius and dists:
            th = {m: sp.threshold(m) for m in MODALITIES}
            th = {k: v for k, v in th.items() if v is not None}
            p = P.radius_histograms(dists, fig_dir / f"{slug}-radius-hist.png", thresholds=th,
                                    title=f"{sp.name} on {ds.name}: distance from the origin per class")
            self._fig(p, "Distance-from-origin histograms per class (paper Fig. 2): safe text S, safe image V, "
                         "unsafe text U, unsafe image G; dashed = decision thresholds.", ds.name, sp.name, "hist")
            rng = np.random.default_rng(cfg.seed)
            pts, dd = {}, {}
            for modality, lab in (("text", ds.texts), ("image", ds.images)):
                if modality not in emb:
                    continue
                x = emb[modality]
                y = lab.label.astype(bool)
                for cls, sel in ((S.SAFE_CLASS[modality], ~y), (S.UNSAFE_CLASS[modality], y)):
                    idx = np.flatnonzero(sel)
                    if len(idx) > cfg.poincare_per_class:
                        idx = np.sort(rng.choice(idx, cfg.poincare_per_class, replace=False))
                    if len(idx):
                        pts[cls] = _np(x[torch.as_tensor(idx)])
                        dd[cls] = _np(sp.radius(x[torch.as_tensor(idx)]))
            if pts and cfg.poincare_per_class > 0:
                p = P.poincare_disk(pts, dd, sp.c, fig_dir / f"{slug}-poincare.png", thresholds=th,
                                    title=f"{sp.name} on {ds.name}: Poincaré-disk view (≤{cfg.poincare_per_class} "
                                          "points per class)")
                self._fig(p, "Poincaré-disk view of a sample: radius r = tanh(√c·d/2) from the geodesic distance d, "
                             "angle from a 2-D PCA of the embedding directions.", ds.name, sp.name, "poincare")
        for modality in MODALITIES:
            if curves[modality]:
                p = P.roc_curves(curves[modality], fig_dir / f"{slug}-roc-{modality}.png",
                                 title=f"{sp.name} on {ds.name}: unsafe-{modality} detection ROC (with baselines)")
                self._fig(p, f"ROC of unsafe-{modality} detection: model radius, linear probe and peer baselines "
                             "(dashed line: 5% FPR).", ds.name, sp.name, f"roc-{modality}")
            if percat_curves[modality]:
                p = P.roc_curves(percat_curves[modality], fig_dir / f"{slug}-roc-{modality}-categories.png",
                                 title=f"{sp.name} on {ds.name}: per-category ROC of the radius ({modality}; "
                                       "unsafe items of the category vs all safe items)")
                self._fig(p, f"Per-category ROC of the radius score ({modality}): unsafe items tagged with the "
                             "category against all safe items.", ds.name, sp.name, f"roc-{modality}-categories")
        tex = r["traversal_examples"].get(sp.name)
        if tex and tex["rows"]:
            p = P.traversal_grid(tex["rows"], fig_dir / f"{slug}-traversal.png",
                                 title=f"{sp.name} on {ds.name}: nearest gallery text along the geodesic to the origin")
            self._fig(p, "Traversal paths: for a few unsafe queries, the nearest gallery text at evenly spaced points "
                         "of the geodesic toward the origin (last column: the model's redirect radius τ).",
                      ds.name, sp.name, "traversal")


def _slug(s: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_").lower()


def clean_json(x: Any) -> Any:
    """Make results JSON-safe: NaN/inf → None, numpy scalars → python, tensors → lists, dict keys → str."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if isinstance(x, torch.Tensor):
        return clean_json(x.tolist())
    if isinstance(x, np.ndarray):
        return clean_json(x.tolist())
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, Path):
        return str(x)
    return x


def run_evaluation(cfg: EvalConfig, *, out: Path | None = None, command: str | None = None,
                   log: Callable[[str], None] | None = None, spaces=None, datasets=None) -> dict:
    """Run the evaluation and write ``report.md``, ``metrics.json`` and the figures under ``out`` (default
    ``cfg.out``). Returns the results dict (as written to metrics.json)."""
    import json

    from .report import write_markdown

    out = Path(out or cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output folder {out}: {e}") from None
    ev = Evaluation(cfg, spaces=spaces, datasets=datasets, log=log)
    res = ev.run(out)
    res["command"] = command
    res["config"] = cfg.to_dict()
    res["generated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    try:
        from importlib.metadata import version

        res["hysac_version"] = version("hysac")
    except Exception:  # noqa: BLE001
        res["hysac_version"] = None
    res = clean_json(res)
    (out / "metrics.json").write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_markdown(res, out / "report.md")
    return res
