"""kill -9 in the middle of a build, then rerun: same item count, no duplicate keys, vectors aligned with rows."""

from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hysac.index import IndexSearcher, IndexStore, build_index

FAKE = Path(__file__).with_name("index_fake.py")


def _fake():
    spec = importlib.util.spec_from_file_location("hysac_index_test_fake", FAKE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hysac_index_test_fake", mod)
    spec.loader.exec_module(mod)
    return mod


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(con.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def test_kill9_mid_build_then_resume(tmp_path):
    fake = _fake()
    n = 60
    texts = [f"caption number {i} of a {'cat' if i % 3 else 'dog'}" + (" with blood" if i % 7 == 0 else "")
             for i in range(n)]
    src = tmp_path / "t.csv"
    pd.DataFrame({"text": texts, "i": range(n)}).to_csv(src, index=False)
    out = tmp_path / "idx"
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('fake', {str(FAKE)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "from hysac.index import build_index\n"
        f"build_index({str(src)!r}, {str(out)!r}, m.FakeModel(sleep=0.1), batch_size=4, progress=False)\n"
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    db = out / "items.sqlite"
    deadline = time.time() + 90
    try:
        while _count(db) < 12:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "build did not commit 3 batches in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    at_kill = _count(db)
    assert 12 <= at_kill < n  # killed mid-build

    model = fake.FakeModel()
    report = build_index(src, out, model, batch_size=4, progress=False)
    assert report.skipped >= at_kill and report.skipped + report.added == n
    with IndexStore(out) as st:
        assert st.count() == n
        keys = [r[0] for r in st.conn.execute("SELECT key FROM items")]
        assert len(set(keys)) == n
        ids = [r[0] for r in st.conn.execute("SELECT id FROM items ORDER BY id")]
        assert ids == list(range(n))
        rows = st.rows(range(n))
        emb = st.embeddings.get(np.arange(n))
        for i in range(n):  # each stored vector is the encoding of its own row
            np.testing.assert_allclose(emb[i], model.text_point(rows[i]["content"]), rtol=1e-5, atol=1e-6)
        assert sorted(p.name for p in (out / "embeddings").iterdir()) == sorted(r[0] for r in st.shard_rows())
    # and a third run changes nothing
    again = build_index(src, out, model, batch_size=4, progress=False)
    assert (again.added, again.skipped) == (0, n)
    with IndexSearcher(out, model) as s:
        top = s.search_text([texts[5]], k=1)[0].results[0]
        assert top.content == texts[5] and top.metadata["i"] == 5
