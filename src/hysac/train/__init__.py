"""Training: ``hysac train --config FILE [key=value ...]`` — see :mod:`hysac.train.trainer`."""

from .config import DEFAULTS, apply_overrides, load_config
from .trainer import Trainer, run_training

__all__ = ["DEFAULTS", "Trainer", "apply_overrides", "load_config", "run_training"]
