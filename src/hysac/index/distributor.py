"""Optional distributed mapping with Ray Data (``--engine ray``).

The driver reads the source, drops the keys already committed, and hands the rest to
``ray.data.from_items(...).map_batches(_MapperActor, concurrency=n)``: each actor builds the model once
(``model_factory()``), encodes its batches with the ordinary :class:`~hysac.index.mapper.Mapper` and **writes a
part** into ``DIR/staging/<run>/`` — ``part-<uuid>.npy`` (embeddings) then ``part-<uuid>.json`` (items, scores,
flags, categories, errors; written last, it marks the part complete) — returning only the part name. The driver
merges every finished part into the index with the same atomic per-batch commit as the local runner and deletes
it. A killed run leaves parts that the next writer removes; their items are simply encoded again.

Ray is imported lazily: without it, ``--engine ray`` fails with a one-line :class:`~hysac.errors.InputError`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InputError
from .mapper import EncodedBatch, ItemError, Mapper
from .reader import Item, Source
from .store import STAGING_DIR
from .writer import IndexWriter, save_npy_atomic, write_json_atomic

__all__ = ["require_ray", "run_ray", "write_part", "read_part"]


def require_ray():
    """Import ``ray`` and ``ray.data`` or raise a clear InputError."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(
            "--engine ray needs Ray Data, which is not installed: pip install 'ray[data]' (or use --engine local)"
        ) from None
    return ray


class _ConstFactory:
    """Picklable factory that returns an already built model (shipped to the actors with cloudpickle)."""

    def __init__(self, model: Any):
        self.model = model

    def __call__(self) -> Any:
        return self.model


def write_part(staging: Path, name: str, enc: EncodedBatch) -> None:
    save_npy_atomic(staging / f"{name}.npy", enc.embeddings)
    write_json_atomic(
        staging / f"{name}.json",
        {
            "items": [it.to_record() for it in enc.items],
            "scores": [float(s) for s in enc.scores],
            "unsafe": [bool(u) for u in enc.unsafe],
            "categories": None if enc.categories is None else enc.categories.astype(float).tolist(),
            "errors": [e.to_dict() for e in enc.errors],
        },
    )


def read_part(staging: Path, name: str) -> EncodedBatch:
    meta = json.loads((staging / f"{name}.json").read_text(encoding="utf-8"))
    emb = np.load(staging / f"{name}.npy")
    cats = meta["categories"]
    return EncodedBatch(
        items=[Item.from_record(r) for r in meta["items"]],
        embeddings=emb.astype(np.float32, copy=False),
        scores=np.asarray(meta["scores"], dtype=np.float64),
        unsafe=np.asarray(meta["unsafe"], dtype=bool),
        categories=None if cats is None else np.asarray(cats, dtype=np.float32),
        errors=[ItemError(**e) for e in meta["errors"]],
    )


class _MapperActor:
    """Ray Data actor: one model per actor, one part file per batch."""

    def __init__(self, model_factory: Callable[[], Any], staging: str, text_batch_size: int, image_batch_size: int):
        self.mapper = Mapper(model_factory(), text_batch_size=text_batch_size, image_batch_size=image_batch_size)
        self.staging = Path(staging)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        items = [Item.from_record({k: batch[k][i] for k in ("key", "modality", "content", "metadata", "fingerprint")
                                   if k in batch})
                 for i in range(n)]
        enc = self.mapper(items)
        name = f"part-{uuid.uuid4().hex}"
        write_part(self.staging, name, enc)
        return {"part": np.array([name]), "items": np.array([n])}


def run_ray(
    source: Source,
    writer: IndexWriter,
    *,
    model: Any,
    model_factory: Callable[[], Any] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    source_id: int | None = None,
    num_cpus: int | None = None,
    concurrency: int = 1,
    address: str | None = None,
) -> dict[str, int]:
    """Encode ``source`` with Ray Data actors and merge their parts into ``writer``'s index."""
    ray = require_ray()
    from tqdm.auto import tqdm

    stats = {"seen": 0, "skipped": 0, "added": 0, "errors": 0}
    todo: list[Item] = []
    for b in source.batches(4096):
        stats["seen"] += len(b)
        new = writer.filter_new(b)
        stats["skipped"] += len(b) - len(new)
        todo.extend(new)
    if not todo:
        return stats
    staging = writer.root / STAGING_DIR / uuid.uuid4().hex
    staging.mkdir(parents=True, exist_ok=True)
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "logging_level": logging.WARNING, "ignore_reinit_error": True}
        address = address or os.environ.get("RAY_ADDRESS")  # e.g. RAY_ADDRESS=auto on a cluster's head node
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
        started = True
    caught = warnings.catch_warnings()
    caught.__enter__()
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\..*)?")
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        if hasattr(ctx, "print_on_execution_start"):
            ctx.print_on_execution_start = False
        factory = model_factory if model_factory is not None else _ConstFactory(model)
        ds = ray.data.from_items([it.to_record() for it in todo])
        ds = ds.map_batches(
            _MapperActor,
            fn_constructor_kwargs={
                "model_factory": factory,
                "staging": str(staging),
                "text_batch_size": batch_size,
                "image_batch_size": min(batch_size, 32),
            },
            batch_size=batch_size,
            batch_format="numpy",
            concurrency=max(1, int(concurrency)),
        )
        with tqdm(total=len(todo), desc="indexing (ray)", unit="item", disable=not progress, file=sys.stderr) as bar:
            for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for name, n in zip(out["part"], out["items"]):
                    enc = read_part(staging, str(name))
                    stats["added"] += writer.commit(enc, source_id)
                    stats["errors"] += len(enc.errors)
                    (staging / f"{name}.json").unlink(missing_ok=True)
                    (staging / f"{name}.npy").unlink(missing_ok=True)
                    bar.update(int(n))
    finally:
        caught.__exit__(None, None, None)
        if started:
            ray.shutdown()
        shutil.rmtree(staging, ignore_errors=True)
    return stats
