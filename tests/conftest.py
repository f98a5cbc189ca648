"""Shared test helpers (the tests folder is on ``sys.path``: ``from conftest import ...``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

INDEX_FAKE = Path(__file__).with_name("test_index_fake.py")


def load_index_fake():
    """The fake-model module of the index tests (``test_index_fake.py``), loaded once under one module name so
    every index test file shares its classes."""
    name = "hysac_index_test_fake"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, INDEX_FAKE)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]
