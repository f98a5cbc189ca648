"""``hysac eval`` configuration: a YAML file naming models, datasets, baselines and the output folder.

Example (``configs/eval-hysac-mini.yaml``)::

    out: reports/hysac-mini
    models:
      - {name: hysac-mini, path: hysac-mini}            # kind: auto | hysac | euclidean | clip
      # - {name: CLIP ViT-L/14, path: openai/clip-vit-large-patch14, kind: clip}
      # - {name: Safe-CLIP, path: aimagelab/safeclip_vit-l_14, kind: clip}
    datasets:
      - {name: dev-test, kind: offline-dev, split: test}
      - {name: dev-val, kind: offline-dev, split: val}
      # - {name: visu-test, kind: visu, test: /data/visu/test.json, coco_root: /data/coco, train: /data/visu/train.json}
      # - {name: mine, kind: table, path: my.csv, text_column: text, image_column: image, label_column: label}
    baselines: [linear-probe, profanity-check, opennsfw]
    retrieval: {ks: [1, 5, 10, 20], traversal: true}
    classification: {fpr: 0.05}
    plots: {enabled: true, poincare_per_class: 300, traversal_queries: 5, traversal_steps: 9}
    cache: true        # cache frozen base features under <hysac cache>/eval-features (false, or a folder)

A dataset entry may carry its own ``baselines:`` list (e.g. skip the slow open_nsfw on a second split). Other
dataset keys are the keyword arguments of :mod:`hysac.evaluation.datasets` builders (``offline_dev``, ``visu``,
``table``); unknown keys are errors. Every problem is reported as one :class:`~hysac.errors.InputError` line.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError
from .baselines import BASELINES
from .classification import PROB_SWEEP, RADIUS_SWEEP

DEFAULT_OUT = "reports/eval"
_TOP_KEYS = {"out", "models", "datasets", "baselines", "retrieval", "classification", "plots", "seed", "device",
             "title", "cache"}


@dataclass
class ModelSpec:
    name: str
    path: str
    kind: str = "auto"
    backbone: str | None = None


@dataclass
class DatasetSpec:
    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    #: baselines for this dataset only (None = the config's list)
    baselines: list[str] | None = None


@dataclass
class EvalConfig:
    out: Path
    models: list[ModelSpec]
    datasets: list[DatasetSpec]
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    traversal: bool = True
    fpr: float = 0.05
    radius_sweep: list[float] = field(default_factory=lambda: list(RADIUS_SWEEP))
    prob_sweep: list[float] = field(default_factory=lambda: list(PROB_SWEEP))
    plots: bool = True
    poincare_per_class: int = 300
    traversal_queries: int = 5
    traversal_steps: int = 9
    seed: int = 0
    device: str | None = None
    title: str | None = None
    #: folder of the on-disk cache of frozen base features (None = off); default <hysac cache>/eval-features
    cache: str | None = "default"
    source: str | None = None  # the config file

    def cache_dir(self) -> Path | None:
        if self.cache is None:
            return None
        if self.cache == "default":
            from ..data.paths import default_cache_dir

            return default_cache_dir() / "eval-features"
        return Path(self.cache).expanduser()

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "models": [vars(m) for m in self.models],
            "datasets": [{"name": d.name, "kind": d.kind, **d.options,
                          **({"baselines": d.baselines} if d.baselines is not None else {})} for d in self.datasets],
            "baselines": self.baselines, "retrieval": {"ks": self.ks, "traversal": self.traversal},
            "classification": {"fpr": self.fpr, "radius_sweep": self.radius_sweep, "prob_sweep": self.prob_sweep},
            "plots": {"enabled": self.plots, "poincare_per_class": self.poincare_per_class,
                      "traversal_queries": self.traversal_queries, "traversal_steps": self.traversal_steps},
            "seed": self.seed, "device": self.device, "title": self.title, "cache": self.cache,
            "source": self.source,
        }


def _builder_params(kind: str) -> set[str]:
    from .datasets import BUILDERS

    if kind not in BUILDERS:
        raise InputError(f"unknown dataset kind {kind!r}; use {', '.join(BUILDERS)}")
    return {p for p in inspect.signature(BUILDERS[kind]).parameters if p != "name"}


def _mapping(v: Any, where: str) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise InputError(f"{where} must be a mapping, got {type(v).__name__}")
    return v


def _int_list(v: Any, where: str) -> list[int]:
    if not isinstance(v, list) or not v or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0
                                                   for x in v):
        raise InputError(f"{where} must be a non-empty list of positive integers, got {v!r}")
    return list(v)


def _float_list(v: Any, where: str) -> list[float]:
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise InputError(f"{where} must be a list of numbers, got {v!r}")
    return [float(x) for x in v]


def _baseline_list(v: Any, where: str) -> list[str]:
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(b, str) for b in v):
        raise InputError(f"{where} must be a list of names ({', '.join(BASELINES)})")
    bad = sorted(set(v) - set(BASELINES))
    if bad:
        raise InputError(f"{where}: unknown baseline(s) {', '.join(bad)}; known: {', '.join(BASELINES)}")
    return list(v)


def _list_of(raw: Any, what: str, where: str) -> list:
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: {what} must be a non-empty list")
    return raw


def _parse_models(raw: Any, where: str) -> list[ModelSpec]:
    models = []
    for i, m in enumerate(_list_of(raw, "models", where)):
        if isinstance(m, str):
            m = {"path": m}
        m = _mapping(m, f"{where}: models[{i}]")
        bad = sorted(set(m) - {"name", "path", "kind", "backbone"})
        if bad:
            raise InputError(f"{where}: models[{i}]: unknown key(s) {', '.join(bad)} (allowed: name, path, kind, "
                             "backbone)")
        if not m.get("path"):
            raise InputError(f"{where}: models[{i}] needs a path (registry name, folder or hub id)")
        kind = str(m.get("kind", "auto"))
        if kind not in ("auto", "hysac", "euclidean", "clip"):
            raise InputError(f"{where}: models[{i}]: unknown kind {kind!r}; use auto, hysac, euclidean or clip")
        models.append(ModelSpec(str(m.get("name") or Path(str(m["path"])).name), str(m["path"]), kind,
                                m.get("backbone")))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise InputError(f"{where}: model names must be unique, got {names}")
    return models


def _parse_datasets(raw: Any, where: str) -> list[DatasetSpec]:
    datasets = []
    for i, d in enumerate(_list_of(raw, "datasets", where)):
        if isinstance(d, str):
            d = {"kind": d}
        d = dict(_mapping(d, f"{where}: datasets[{i}]"))
        kind = d.pop("kind", None)
        ds_baselines = d.pop("baselines", None)
        if ds_baselines is not None:
            ds_baselines = _baseline_list(ds_baselines, f"{where}: datasets[{i}].baselines")
        if not kind:
            raise InputError(f"{where}: datasets[{i}] needs a kind (offline-dev, visu or table)")
        allowed = _builder_params(str(kind))
        name = str(d.pop("name", None) or (kind if kind != "offline-dev" else f"dev-{d.get('split', 'test')}"))
        bad = sorted(set(d) - allowed)
        if bad:
            raise InputError(f"{where}: datasets[{i}] ({kind}): unknown option(s) {', '.join(bad)} "
                             f"(allowed: {', '.join(sorted(allowed))})")
        if kind == "visu" and not d.get("test"):
            raise InputError(f"{where}: datasets[{i}] (visu) needs test: the ViSU test JSON")
        if kind == "table" and not d.get("path"):
            raise InputError(f"{where}: datasets[{i}] (table) needs path: the CSV/JSONL/parquet file")
        datasets.append(DatasetSpec(name, str(kind), d, ds_baselines))
    dnames = [d.name for d in datasets]
    if len(set(dnames)) != len(dnames):
        raise InputError(f"{where}: dataset names must be unique, got {dnames}")
    return datasets


def _parse_retrieval(cfg: EvalConfig, raw: Any, where: str) -> None:
    r = _mapping(raw, f"{where}: retrieval")
    bad = sorted(set(r) - {"ks", "traversal"})
    if bad:
        raise InputError(f"{where}: retrieval: unknown key(s) {', '.join(bad)} (allowed: ks, traversal)")
    if "ks" in r:
        cfg.ks = _int_list(r["ks"], f"{where}: retrieval.ks")
    cfg.traversal = bool(r.get("traversal", True))


def _parse_classification(cfg: EvalConfig, raw: Any, where: str) -> None:
    c = _mapping(raw, f"{where}: classification")
    bad = sorted(set(c) - {"fpr", "radius_sweep", "prob_sweep"})
    if bad:
        raise InputError(f"{where}: classification: unknown key(s) {', '.join(bad)}")
    if "fpr" in c:
        f = c["fpr"]
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f < 1:
            raise InputError(f"{where}: classification.fpr must be a fraction in (0, 1), got {f!r}")
        cfg.fpr = float(f)
    if "radius_sweep" in c:
        cfg.radius_sweep = _float_list(c["radius_sweep"], f"{where}: classification.radius_sweep")
    if "prob_sweep" in c:
        cfg.prob_sweep = _float_list(c["prob_sweep"], f"{where}: classification.prob_sweep")


def _parse_plots(cfg: EvalConfig, raw: Any, where: str) -> None:
    p = {"enabled": raw} if isinstance(raw, bool) else raw
    p = _mapping(p, f"{where}: plots")
    bad = sorted(set(p) - {"enabled", "poincare_per_class", "traversal_queries", "traversal_steps"})
    if bad:
        raise InputError(f"{where}: plots: unknown key(s) {', '.join(bad)}")
    cfg.plots = bool(p.get("enabled", True))
    for key in ("poincare_per_class", "traversal_queries", "traversal_steps"):
        if key in p:
            v = p[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < (2 if key == "traversal_steps" else 0):
                raise InputError(f"{where}: plots.{key} must be a non-negative integer "
                                 f"(traversal_steps >= 2), got {v!r}")
            setattr(cfg, key, v)


def _parse_cache(raw: Any, where: str) -> str | None:
    if raw is True:
        return "default"
    if raw is False or raw is None:
        return None
    if isinstance(raw, str) and raw.strip():
        return raw
    raise InputError(f"{where}: cache must be true, false or a folder, got {raw!r}")


def parse_config(raw: Any, *, source: str | None = None) -> EvalConfig:
    """Validate a config mapping (from YAML) into an :class:`EvalConfig`."""
    where = source or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InputError(f"{where}: the config must be a YAML mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    models = _parse_models(raw.get("models", [{"name": "hysac-mini", "path": "hysac-mini"}]), where)
    datasets = _parse_datasets(raw.get("datasets", [{"name": "dev-test", "kind": "offline-dev", "split": "test"}]),
                               where)
    baselines = _baseline_list(raw.get("baselines", list(BASELINES)), f"{where}: baselines")
    cfg = EvalConfig(out=Path(str(raw.get("out") or DEFAULT_OUT)), models=models, datasets=datasets,
                     baselines=list(baselines), source=source)
    _parse_retrieval(cfg, raw.get("retrieval"), where)
    _parse_classification(cfg, raw.get("classification"), where)
    _parse_plots(cfg, raw.get("plots", {}), where)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise InputError(f"{where}: seed must be an integer, got {seed!r}")
    cfg.seed = seed
    cfg.device = raw.get("device")
    cfg.title = raw.get("title")
    cfg.cache = _parse_cache(raw.get("cache", True), where)
    return cfg


def load_config(path: str | Path | None) -> EvalConfig:
    """Read and validate a YAML config (``None`` → all defaults: hysac-mini on the offline dev test split)."""
    if path is None:
        return parse_config({})
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"eval config not found: {p}")
    import yaml

    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "syntax error"
        raise InputError(f"{p}: invalid YAML: {first}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {p}: {e}") from None
    return parse_config(raw, source=str(p))
