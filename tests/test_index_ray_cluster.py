"""A real two-node Ray cluster on this machine (``ray start --head`` on 127.0.0.1 and a second node joining it with
``ray start --address``, each with its own CPU and a resource naming it): an index built through it with
``engine="ray"`` equals the local build item by item, and both nodes ran encoding actors.

The same steps on real machines (README, "Scaling out"): the same ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` on
every machine, ``ray start --head --port 6379`` on one, ``ray start --address HEAD:6379`` on the others, then
``RAY_ADDRESS=HEAD:6379 hysac index build SRC --out IDX --engine ray``."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import INDEX_FAKE, load_index_fake
from hysac.index import IndexStore, build_index

pytest.importorskip("ray.data", reason="Ray Data is optional (pip install 'ray[data]')")
RAY = Path(sys.executable).with_name("ray")
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not RAY.is_file(), reason="the ray command is not installed beside python")]

BUILD = """
import importlib.util, json, sys
import ray
from ray import cloudpickle
spec = importlib.util.spec_from_file_location("hysac_index_test_fake", {fake!r})
fake = importlib.util.module_from_spec(spec); sys.modules[spec.name] = fake; spec.loader.exec_module(fake)
cloudpickle.register_pickle_by_value(fake)  # the fake lives outside an importable package
from hysac.index import build_index

ray.init(address={address!r}, log_to_driver=False)
nodes = [n for n in ray.nodes() if n["Alive"]]
seen = []

class Recording(fake.FakeModel):
    def encode_text(self, texts, batch_size=256):
        import pathlib, uuid
        import ray
        node = ray.get_runtime_context().get_node_id()
        (pathlib.Path({marks!r}) / f"{{node}}-{{uuid.uuid4().hex}}").touch()  # which node encoded a batch
        return super().encode_text(texts, batch_size=batch_size)

r = build_index({src!r}, {out!r}, Recording(), engine="ray", batch_size=4, progress=False,
                ray_options={{"concurrency": 2}})
print(json.dumps({{"nodes": len(nodes), "added": r.added, "errors": r.errors}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args], env=env, capture_output=True, text=True, timeout=180)


def test_two_node_cluster_builds_the_same_index_as_the_local_engine(tmp_path):
    import pandas as pd

    fake = load_index_fake()
    texts = [f"item {i} {'gore' if i % 5 == 0 else 'cat'}" for i in range(48)]
    src = tmp_path / "t.csv"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)

    port = _free_port()
    tempfile_dir = f"/tmp/hysac-ray-{os.getpid()}"  # short: Ray's socket paths have a length limit
    # Ray >= 2.5x nodes authenticate to the head with a shared token: one random token for this cluster
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    head = _ray("start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                '--resources={"node_a": 1}', "--include-dashboard=false", f"--temp-dir={tempfile_dir}",
                "--disable-usage-stats", env=env)
    try:
        assert head.returncode == 0, head.stdout[-2000:] + head.stderr[-2000:]
        worker = _ray("start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                      '--resources={"node_b": 1}', env=env)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        marks = tmp_path / "marks"
        marks.mkdir()
        script = BUILD.format(fake=str(INDEX_FAKE), address=f"127.0.0.1:{port}", src=str(src),
                              out=str(tmp_path / "cluster"), marks=str(marks))
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        _ray("stop", "--force", env=env)
        shutil.rmtree(tempfile_dir, ignore_errors=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"nodes": 2, "added": 48, "errors": 0}
    nodes_used = {p.name.split("-")[0] for p in (tmp_path / "marks").iterdir()}
    assert len(nodes_used) == 2, "the encoding actors did not run on both nodes"

    build_index(src, tmp_path / "local", fake.FakeModel(), batch_size=4, progress=False)
    with IndexStore(tmp_path / "cluster") as a, IndexStore(tmp_path / "local") as b:
        assert a.count() == b.count() == 48
        ra, rb = a.rows(range(48)), b.rows(range(48))
        ea, eb = a.embeddings.get(np.arange(48)), b.embeddings.get(np.arange(48))
    by_key_a = {ra[i]["key"]: (ra[i], ea[i]) for i in range(48)}
    by_key_b = {rb[i]["key"]: (rb[i], eb[i]) for i in range(48)}
    assert set(by_key_a) == set(by_key_b)
    for key, (row, vec) in by_key_a.items():
        other, other_vec = by_key_b[key]
        assert {k: v for k, v in row.items() if k != "id"} == {k: v for k, v in other.items() if k != "id"}
        np.testing.assert_array_equal(vec, other_vec)
