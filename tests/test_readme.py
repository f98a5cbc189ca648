"""Every fenced shell command and the Python block of the README, run as written from a checkout-like folder.

The folder holds links to the repository's ``examples/`` and ``configs/`` (what the commands read) and receives
what they write (``emb.safetensors``, ``my-index``, ``hysac-demo``, reports). Two commands get quick-run flags,
listed in :data:`QUICK` with the reason; setup scripts that the test environment has already run are listed in
:data:`ALREADY_RUN`; the steps on a Ray cluster's machines (:data:`CLUSTER`) are run with two nodes on this machine by
``tests/test_index_ray_cluster.py``. Any other README command that appears later runs as written, so the README
cannot drift.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
HYSAC = str(Path(sys.executable).with_name("hysac"))

#: command prefix → flags appended, and why
QUICK = {
    "hysac train": (["--dry-run"], "a full training run takes ~17 min; --dry-run opens every data source it reads"),
    "hysac eval": (["--limit", "40", "--no-plots", "--quiet"], "the full report takes minutes; same code path"),
}
#: lines the environment running these tests has necessarily run already
ALREADY_RUN = {
    "bash scripts/setup.sh": "made the .venv these tests run in",
    "bash scripts/install-image-data.sh": "root + apt; the integration tests skip without its data",
    ".venv/bin/python -m pytest": "the command running these tests",
}
#: the README's steps on a Ray cluster's machines (placeholders for the host and the shared secret): run, with two
#: nodes on this machine, by tests/test_index_ray_cluster.py
CLUSTER = ("export RAY_AUTH_MODE=", "ray start --head", "ray start --address", "RAY_ADDRESS=HEAD:6379 hysac")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    """Each command of the README's bash blocks, comments dropped, ``a && b`` split into two."""
    out = []
    for block in _blocks("bash"):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            out.extend(part.strip() for part in line.split("&&"))
    return out


def _argv(cmd: str) -> list[str]:
    args = shlex.split(cmd)
    if args[0] in ("hysac", ".venv/bin/hysac"):
        args[0] = HYSAC
    for prefix, (extra, _why) in QUICK.items():
        if cmd.startswith(prefix):
            args += extra
    return args


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readme")
    for name in ("examples", "configs"):
        (d / name).symlink_to(ROOT / name, target_is_directory=True)
    return d


def _run(argv: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "120"})


def test_readme_lists_the_commands_we_expect():
    cmds = _commands()
    assert any(c.startswith("hysac index build") for c in cmds) and any(c.startswith("hysac serve") for c in cmds)
    # every skipped line is a known setup script
    skipped = [c for c in cmds if not c.startswith(("hysac", ".venv/bin/hysac"))]
    assert all(any(c.startswith(k) for k in (*ALREADY_RUN, *CLUSTER)) for c in skipped), skipped
    assert sum(c.startswith(CLUSTER) for c in cmds) == len(CLUSTER)  # the cluster steps are all there


def test_every_readme_command_runs_as_written(workdir):
    """In README order (the index → search → serve flow depends on it); each exits 0 and says something."""
    from hysac.data.paths import default_data_dir

    if not default_data_dir().is_dir():
        pytest.skip("needs ../shared/data (train --dry-run and eval read it)")
    ran = []
    for cmd in _commands():
        if any(cmd.startswith(k) for k in ALREADY_RUN) or cmd.startswith(CLUSTER):
            continue
        argv = _argv(cmd)
        if cmd.startswith("hysac serve"):
            _check_serve(argv, workdir)
            ran.append(cmd)
            continue
        res = _run(argv, workdir)
        assert res.returncode == 0, f"{cmd}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        assert "Traceback" not in res.stderr, f"{cmd}\n{res.stderr[-3000:]}"
        assert res.stdout.strip() or res.stderr.strip(), cmd
        _check_output(cmd, res.stdout, workdir)
        ran.append(cmd)
    assert len(ran) >= 12


def _check_output(cmd: str, stdout: str, workdir: Path) -> None:
    """What each command promises, beyond exit code 0."""
    if cmd == "hysac --version":
        assert stdout.startswith("hysac ")
    elif cmd.startswith("hysac classify") and "--json" in cmd:
        rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        assert rows and all("score" in r and "unsafe" in r for r in rows)
        if "--image examples/" in cmd:  # 4 prompts + the two example images, in input order
            assert len(rows) == 6 and rows[-1]["input"].endswith("knife.png")
        if '"a bloody knife fight"' in cmd:
            assert rows[0]["unsafe"] is True and rows[1]["unsafe"] is False
    elif cmd.startswith("hysac encode"):
        from safetensors.torch import load_file

        t = load_file(str(workdir / "emb.safetensors"))
        assert t["text_embeddings"].shape[0] == 3 and t["text_scores"].shape == (3,)
    elif cmd.startswith("hysac index build"):
        assert (workdir / "my-index" / "index.json").is_file()
    elif cmd.startswith("hysac search"):
        rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
        assert rows and rows[0].get("results"), stdout[:500]
    elif cmd.startswith("hysac train"):
        plan = json.loads(stdout)
        assert plan["data"]["texts"]["train"] > 1000
    elif cmd.startswith("hysac eval"):
        assert (workdir / "reports" / "hysac-mini" / "report.md").is_file()


def _check_serve(argv: list[str], workdir: Path) -> None:
    proc = subprocess.Popen(argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:8000/health", timeout=5) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    out, err = proc.communicate(timeout=10)
                    pytest.fail(f"hysac serve did not come up (rc {proc.returncode})\n{err[-3000:]}")
                time.sleep(1)
        assert health.get("index") or health.get("status"), health
        req = urllib.request.Request("http://127.0.0.1:8000/search", method="POST",
                                     data=json.dumps({"text": "a knife fight", "mode": "redirect", "k": 2}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and json.loads(r.read())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_readme_python_block_runs_as_written(workdir, monkeypatch, capsys):
    (block,) = _blocks("python")
    monkeypatch.chdir(workdir)
    ns: dict = {}
    exec(compile(block, "README.md:python", "exec"), ns)  # noqa: S102 - the README's own code
    assert ns["x_txt"].shape[0] == 2 and ns["x_img"].shape[0] == 2
    bounds = ns["bounds"]
    assert set(bounds.thresholds) == {"text", "image"}
    assert (workdir / "hysac_bounds.json").is_file() and (workdir / "my-model" / "config.json").is_file()
    # what the comments promise: points on the hyperboloid, a (2, 2) distance matrix, 7 category columns
    import torch

    from hysac import lorentz

    assert ns["d"].shape == (2, 2) and torch.isfinite(ns["d"]).all()
    assert ns["cats"].shape == (2, 7)
    assert torch.isfinite(lorentz.dist0(ns["safe_q"], ns["model"].curvature)).all()
    assert "text" in capsys.readouterr().out
