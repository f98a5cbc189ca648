"""``engine="ray"``: Ray Data actors write parts that the index merges; same index as the local engine."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import load_index_fake
from hysac.index import IndexStore, build_index, add_to_index

ray = pytest.importorskip("ray", reason="Ray Data is optional (pip install 'ray[data]')")
pytest.importorskip("ray.data")




def _by_key(root: Path) -> dict[str, np.ndarray]:
    with IndexStore(root) as st:
        n = st.count()
        rows = st.rows(range(n))
        emb = st.embeddings.get(np.arange(n))
        return {rows[i]["key"]: emb[i] for i in range(n)}


def test_ray_engine_matches_local(tmp_path):
    fake = load_index_fake()
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[fake.__name__])  # the fake lives outside an importable package
    texts = [f"item {i} {'gore' if i % 5 == 0 else 'cat'}" for i in range(40)] + [""]
    src = tmp_path / "t.csv"
    pd.DataFrame({"text": texts}).to_csv(src, index=False)
    fake.make_images(tmp_path / "imgs")
    model = fake.FakeModel()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = build_index(src, tmp_path / "ray", model, engine="ray", batch_size=8, progress=False,
                        ray_options={"concurrency": 2})
        r2 = add_to_index(tmp_path / "imgs", tmp_path / "ray", model, engine="ray", batch_size=3, progress=False)
    finally:
        ray.shutdown()
    assert (r.added, r.errors) == (40, 1) and (r2.added, r2.errors) == (6, 1)
    build_index(src, tmp_path / "local", model, batch_size=8, progress=False)
    add_to_index(tmp_path / "imgs", tmp_path / "local", model, batch_size=3, progress=False)
    a, b = _by_key(tmp_path / "ray"), _by_key(tmp_path / "local")
    assert set(a) == set(b) and len(a) == 46
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not any((tmp_path / "ray" / "staging").rglob("*.npy"))
    assert len((tmp_path / "ray" / "errors.jsonl").read_text().splitlines()) == 2
