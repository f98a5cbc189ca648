"""Shared test helpers (the tests folder is on ``sys.path``: ``from conftest import ...``)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

INDEX_FAKE = Path(__file__).with_name("index_fake.py")


def load_index_fake():
    """The fake-model module of the index tests (``index_fake.py``), loaded once under one module name so
    every index test file shares its classes."""
    name = "hysac_index_test_fake"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, INDEX_FAKE)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


# ------------------------------------------------------------------------------------------ shared fixtures
@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> Path:
    """A tiny random CLIP checkpoint folder (28-pixel images), shared by the training and GPU-path tests."""
    from hysac.testing import make_tiny_clip_folder

    return make_tiny_clip_folder(tmp_path_factory.mktemp("clip28"), image_size=28)


@pytest.fixture(scope="session")
def released(tmp_path_factory) -> tuple[Path, Path]:
    """``(tiny CLIP folder, released-layout checkpoint folder)`` — ``hysac_model.pth`` + ``hysac_bounds.json``
    written from the spec's key list for those towers."""
    from hysac.testing import make_released_checkpoint, make_tiny_clip_folder

    root = tmp_path_factory.mktemp("released")
    clip = make_tiny_clip_folder(root / "clip")
    return clip, make_released_checkpoint(root / "hysac", clip)
