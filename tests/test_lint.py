"""ruff (rules in pyproject.toml) is clean on the package, the tests, the benchmarks and the scripts; mypy on the core."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: it comes with the dev extra (pip install -e '.[dev]')")
    return [found]


def test_ruff_is_clean():
    proc = subprocess.run([*_ruff(), "check", "--no-cache", "--output-format", "concise", "src", "tests",
                           "benchmarks", "scripts"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_mypy_is_clean_on_the_core():
    """The files listed under [tool.mypy] in pyproject.toml (geometry, policy, model, encode path, backbone
    contract) type-check."""
    import importlib.util

    if importlib.util.find_spec("mypy") is None:
        pytest.fail("mypy is not installed: it comes with the dev extra (pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
