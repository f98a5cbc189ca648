"""Stage 4 — run a build: read → map → write, locally (this process, tqdm progress bar) or with Ray Data.

:func:`build_index` creates ``out`` (or resumes it: the keys already committed are skipped, so rerunning a killed
build gives the same items once each) and :func:`add_to_index` appends another source to an existing index.
Every run also **syncs** the index with its source (:mod:`~hysac.index.sync`): an item whose source row or file
changed is re-encoded and replaces its old version, one whose row or file is gone is removed from search, the
unchanged ones are kept as they are. The report counts added, updated, removed and unchanged items.
Both refuse a model other than the index's (:class:`~hysac.errors.ModelMismatchError`) and end with
:meth:`~hysac.index.writer.IndexWriter.finalize` (shard compaction, FAISS sync, ``index.json``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import InputError
from .ann import AnnConfig
from .mapper import Mapper
from .reader import Source, open_source
from .writer import IndexWriter

__all__ = ["ENGINES", "BuildReport", "build_index", "add_to_index", "run_local"]

ENGINES = ("local", "ray")


@dataclass
class BuildReport:
    """What one build/add run did."""

    index: str
    source: str
    engine: str
    seen: int = 0  # items read from the source
    skipped: int = 0  # not encoded: unchanged (already committed: resume, rerun) or duplicate keys
    added: int = 0  # new items committed by this run
    updated: int = 0  # changed items re-encoded by this run (their old version removed)
    removed: int = 0  # items whose source row/file is gone (or whose new version failed), removed from search
    unchanged: int = 0  # items of the source kept as they were (moved table rows included)
    errors: int = 0  # items that failed in this run (see errors.jsonl)
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)  # whole index after the run

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_local(
    source: Source,
    writer: IndexWriter,
    mapper: Mapper,
    *,
    batch_size: int = 256,
    progress: bool = True,
    source_id: int | None = None,
) -> dict[str, int]:
    """Encode and commit ``source`` batch by batch in this process."""
    from tqdm.auto import tqdm

    stats = {"seen": 0, "skipped": 0, "added": 0, "errors": 0}
    with tqdm(total=len(source), desc="indexing", unit="item", disable=not progress, file=sys.stderr) as bar:
        for batch in source.batches(batch_size):
            stats["seen"] += len(batch)
            todo = writer.filter_new(batch)
            stats["skipped"] += len(batch) - len(todo)
            if todo:
                enc = mapper(todo)
                stats["added"] += writer.commit(enc, source_id)
                stats["errors"] += len(enc.errors)
                bar.set_postfix(errors=stats["errors"], refresh=False)
            bar.update(len(batch))
    return stats


def _ann(ann: AnnConfig | str | None) -> AnnConfig | None:
    if ann is None or isinstance(ann, AnnConfig):
        return ann
    return AnnConfig(type=str(ann))


def _run(
    writer: IndexWriter,
    source: Source,
    model: Any,
    *,
    engine: str,
    batch_size: int,
    progress: bool,
    model_factory: Callable[[], Any] | None,
    ray_options: dict[str, Any] | None,
) -> BuildReport:
    t0 = time.perf_counter()
    sid = writer.begin_source(source, engine)
    writer.begin_sync(source, sid)
    if engine == "local":
        mapper = Mapper(model, text_batch_size=batch_size, image_batch_size=min(batch_size, 32))
        stats = run_local(source, writer, mapper, batch_size=batch_size, progress=progress, source_id=sid)
    else:
        from .distributor import run_ray

        stats = run_ray(
            source, writer, model=model, model_factory=model_factory, batch_size=batch_size, progress=progress,
            source_id=sid, **(ray_options or {}),
        )
    plan = writer.finish_sync()
    writer.end_source(sid)
    info = writer.finalize(progress=progress)
    if plan is not None:
        stats["added"] -= plan.updated  # the committed items that replace an old version are reported as updated
        stats.update(updated=plan.updated, removed=plan.removed, unchanged=plan.unchanged)
    return BuildReport(
        index=str(writer.root), source=str(source.path), engine=engine, seconds=time.perf_counter() - t0,
        counts=dict(info["counts"]), **stats,
    )


def _check(engine: str, batch_size: int) -> None:
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if engine == "ray":
        from .distributor import require_ray

        require_ray()


def build_index(
    src: str | Path,
    out: str | Path,
    model: Any,
    *,
    batch_size: int = 256,
    engine: str = "local",
    ann: AnnConfig | str | None = None,
    column: str = "auto",
    progress: bool = True,
    model_source: str | None = None,
    model_factory: Callable[[], Any] | None = None,
    ray_options: dict[str, Any] | None = None,
) -> BuildReport:
    """Index ``src`` into the directory ``out`` (created, or resumed when it is an index of the same model).

    ``ann``: ``"none"`` (exact ``IndexFlatIP``), ``"hnsw"`` or an :class:`AnnConfig`; ``None`` keeps the setting
    of an existing index (exact for a new one). Changing it on an existing index rebuilds its FAISS files.
    ``engine="ray"`` runs
    the mapper in Ray Data actors (``model_factory`` builds the model in each actor; by default the model object
    is shipped to them). ``model_source`` is recorded in ``index.json`` (what ``load_model`` should get back).
    """
    _check(engine, batch_size)
    source = open_source(src, column=column)
    with IndexWriter.create_or_open(out, model, ann=_ann(ann), engine=engine, model_source=model_source) as w:
        return _run(w, source, model, engine=engine, batch_size=batch_size, progress=progress,
                    model_factory=model_factory, ray_options=ray_options)


def add_to_index(
    src: str | Path,
    index: str | Path,
    model: Any,
    *,
    batch_size: int = 256,
    engine: str = "local",
    column: str = "auto",
    progress: bool = True,
    model_factory: Callable[[], Any] | None = None,
    ray_options: dict[str, Any] | None = None,
) -> BuildReport:
    """Append ``src`` to the existing index ``index`` (same rules as a build; refuses another model)."""
    _check(engine, batch_size)
    source = open_source(src, column=column)
    with IndexWriter.open(index, model) as w:
        w.store.info["engine"] = engine
        return _run(w, source, model, engine=engine, batch_size=batch_size, progress=progress,
                    model_factory=model_factory, ray_options=ray_options)
