"""Evaluation: the paper's protocol (retrieval Tables 1/2/8, classification Tables 5/6, Fig. 2), redirection
quality, peer baselines, and a report writer (markdown + JSON + PNG). ``hysac eval`` runs it from a YAML config.

Library entry points:

* :func:`~hysac.evaluation.retrieval.retrieval_protocol` — R@K of the eight columns, plain and with traversal,
  safety score and per-category R@1 from embeddings of a paired set;
* :func:`~hysac.evaluation.classification.classification_metrics` — Acc/FPR/FNR at θ, AUROC, TPR@5%FPR, sweep,
  per-category AUROC, subsets, for any unsafety score;
* :func:`~hysac.evaluation.retrieval.redirection_quality` — safe top-1 with vs without traversal;
* :func:`~hysac.evaluation.encoders.load_space` — a HySAC / CLIP / Safe-CLIP model behind one interface;
* :mod:`~hysac.evaluation.datasets` — ``offline_dev``, ``visu``, ``table`` builders;
* :func:`~hysac.evaluation.runner.run_evaluation` — everything, writing ``report.md``, ``metrics.json``, figures.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name → the submodule that defines it (imported on first use, so ``hysac eval --help`` loads no torch)
_WHERE = {
    "classification_metrics": "classification", "EvalConfig": "config", "load_config": "config",
    "parse_config": "config", "EvalDataset": "datasets", "Labelled": "datasets", "Pairs": "datasets",
    "offline_dev": "datasets", "table": "datasets", "visu": "datasets", "EuclideanSpace": "encoders",
    "HyperbolicSpace": "encoders", "Space": "encoders", "load_space": "encoders", "PairedEmbeddings": "retrieval",
    "redirection_quality": "retrieval", "retrieval_protocol": "retrieval", "Evaluation": "runner",
    "run_evaluation": "runner",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


__all__ = [
    "EuclideanSpace",
    "EvalConfig",
    "EvalDataset",
    "Evaluation",
    "HyperbolicSpace",
    "Labelled",
    "PairedEmbeddings",
    "Pairs",
    "Space",
    "classification_metrics",
    "load_config",
    "load_space",
    "offline_dev",
    "parse_config",
    "redirection_quality",
    "retrieval_protocol",
    "run_evaluation",
    "table",
    "visu",
]
