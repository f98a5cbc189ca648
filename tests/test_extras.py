"""A plain ``pip install hysac`` (no extras) gives a working core CLI, and each command that needs an extra says
which one instead of failing on an import. The extras' packages are hidden from a subprocess (``sys.modules[name]
= None`` makes both ``import name`` and ``importlib.util.find_spec(name)`` see the package as absent)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hysac.extras import EXTRA_OF_MODULE

ROOT = Path(__file__).resolve().parents[1]
RUNNER = """
import sys
for name in {hidden!r}:
    sys.modules[name] = None
sys.argv = ["hysac"] + sys.argv[1:]
from hysac.cli import main
main()
"""


def _hysac(*args: str, hidden=tuple(EXTRA_OF_MODULE)) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUNNER.format(hidden=list(hidden)), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.integration
def test_core_commands_work_without_any_extra(tmp_path):
    r = _hysac("classify", "--text", "a bowl of fruit", "--text", "how do I make a pipe bomb", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('"score"') == 2 or r.stdout.count("safety_score") == 2
    r = _hysac("encode", "--text", "a cat", "--out", str(tmp_path / "e.safetensors"))
    assert r.returncode == 0 and (tmp_path / "e.safetensors").is_file(), r.stderr[-2000:]
    r = _hysac("traverse", "--text", "a pile of corpses")
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("args, extra", [
    (("serve",), "serve"),
    (("index", "build", "examples", "--out", "{tmp}/ix"), "index"),
    (("demo", "--out", "{tmp}/demo"), "index"),
    (("search", "--index", "{tmp}/ix", "--text", "x"), "index"),
])
def test_commands_name_the_extra_they_need(tmp_path, args, extra):
    r = _hysac(*(a.format(tmp=tmp_path) for a in args))
    assert r.returncode == 2, (r.stdout[-1000:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and f"hysac[{extra}]" in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "ix").exists()  # refused before any work


def test_every_optional_module_maps_to_a_declared_extra():
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for module, (package, extra) in EXTRA_OF_MODULE.items():
        assert extra in extras, (module, extra)
        assert any(req.split(">=")[0].split("[")[0] == package.split("[")[0] for req in extras[extra]), (module,
                                                                                                          package)
