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

from .classification import classification_metrics
from .config import EvalConfig, load_config, parse_config
from .datasets import EvalDataset, Labelled, Pairs, offline_dev, table, visu
from .encoders import EuclideanSpace, HyperbolicSpace, Space, load_space
from .retrieval import PairedEmbeddings, redirection_quality, retrieval_protocol
from .runner import Evaluation, run_evaluation

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
