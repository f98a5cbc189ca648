"""The service's engine: the model, the optional index searcher and the one worker thread that runs inference
on them (single queries coalesced into batched model calls, a bounded queue answering 503 when full)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ApiError

__all__ = ["Engine", "load_served_model"]


def _settle(fut: asyncio.Future, result: Any = None, exc: BaseException | None = None) -> None:
    if fut.done():  # cancelled: the client went away
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class Engine:
    """The model, the optional index searcher and the single worker thread that runs inference on them.

    Single-query requests (``/search``, ``/traverse``) go through :meth:`query`: a batch job enters the worker
    queue when a query arrives (one per ``coalesce`` queued queries), and when it starts it takes every query
    queued by then (at most ``coalesce``), encodes them in one model call and runs each request's own work on its
    point. No added latency when the server is idle, far fewer model calls under load, and a query waits in the
    worker queue once, in arrival order with the other requests."""

    def __init__(self, model: Any, searcher: Any | None, index_dir: Path | None, max_pending: int,
                 coalesce: int = 64):
        self.model = model
        self.searcher = searcher
        self.index_dir = index_dir
        self.max_pending = int(max_pending)
        self.coalesce = max(1, int(coalesce))
        self.pending = 0
        self._executor: ThreadPoolExecutor | None = None
        self.counts = searcher.store.counts() if searcher is not None else None
        self._lock = threading.Lock()  # the queues are shared by the event loop and the worker thread
        self._queues: dict[str, list[tuple[Any, Callable, asyncio.Future]]] = {"text": [], "image": []}
        self._waiting: dict[str, int] = {"text": 0, "image": 0}  # batch jobs submitted, not started
        #: batched model calls made for :meth:`query` and the queries they carried
        self.encode_stats = {"calls": 0, "queries": 0}

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    async def query(self, modality: str, item: Any, then: Callable[[torch.Tensor], Any]) -> Any:
        """Encode one text (``modality="text"``) or RGB PIL image (``"image"``) into a (1, D) point ``x`` and
        return ``then(x)``, both in the inference thread; 503 when the queue is full. An exception from the model
        or from ``then`` fails this query alone."""
        self._check_room()
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._queues[modality].append((item, then, fut))
        self._ensure_jobs(modality, loop)
        return await fut

    def _ensure_jobs(self, modality: str, loop: asyncio.AbstractEventLoop) -> None:
        """(event loop) Submit batch jobs until the queued queries fit in the jobs waiting for the worker."""
        while True:
            with self._lock:
                if len(self._queues[modality]) <= self._waiting[modality] * self.coalesce:
                    return
                self._waiting[modality] += 1
            self.pending += 1
            cf = self.executor.submit(self._batch_job, modality, loop)
            cf.add_done_callback(lambda _: loop.call_soon_threadsafe(self._job_done))

    def _job_done(self) -> None:
        self.pending -= 1

    def _batch_job(self, modality: str, loop: asyncio.AbstractEventLoop) -> None:
        """(worker) Take up to ``coalesce`` queued queries, answer them, settle their futures on the loop."""
        with self._lock:
            queue = self._queues[modality]
            batch = queue[:self.coalesce]
            del queue[:len(batch)]
            self._waiting[modality] -= 1
            short = len(queue) > self._waiting[modality] * self.coalesce
        if short:  # more arrived than the waiting jobs will take
            loop.call_soon_threadsafe(self._ensure_jobs, modality, loop)
        batch = [q for q in batch if not q[2].done()]  # skip queries whose client left
        if not batch:
            return
        try:
            outcomes = self._answer(modality, [(item, then) for item, then, _ in batch])
        except BaseException as exc:  # noqa: BLE001 - never leave a request hanging
            outcomes = [(False, exc)] * len(batch)
        for (_, _, fut), (ok, value) in zip(batch, outcomes):
            loop.call_soon_threadsafe(_settle, fut, value if ok else None, None if ok else value)

    def _answer(self, modality: str, jobs: list[tuple[Any, Callable]]) -> list[tuple[bool, Any]]:
        """(worker) One model call for all queries, then each query's ``then``; a failing batch call is retried
        query by query so that one bad query fails alone."""
        encode = self.model.encode_text if modality == "text" else self.model.encode_image
        items = [item for item, _ in jobs]
        try:
            xs = encode(items)
        except Exception as exc:  # noqa: BLE001 - one query: its error; several: isolate the bad one
            if len(items) == 1:
                return [(False, exc)]
            return [self._answer(modality, [job])[0] for job in jobs]
        self.encode_stats["calls"] += 1
        self.encode_stats["queries"] += len(items)
        out: list[tuple[bool, Any]] = []
        for i, (_, then) in enumerate(jobs):
            try:
                out.append((True, then(xs[i:i + 1])))
            except Exception as e:  # noqa: BLE001 - reported to this query's request
                out.append((False, e))
        return out

    @property
    def executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hysac-inference")
        return self._executor

    async def run(self, fn, *args, **kwargs):
        """Run ``fn`` in the inference thread; queue behind earlier requests; 503 when the queue is full."""
        self._check_room()
        self.pending += 1  # only touched from the event loop
        try:
            return await asyncio.wrap_future(self.executor.submit(fn, *args, **kwargs))
        finally:
            self.pending -= 1

    def _check_room(self) -> None:
        if self.pending + self.queued >= self.max_pending:
            raise ApiError(503, "busy", f"server busy: {self.pending + self.queued} requests already queued; "
                                        "retry later")

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        self.stop()
        if self.searcher is not None:
            self.searcher.close()


def load_served_model(model: Any, index_dir: Path | None) -> Any:
    """The model to serve: a loaded one as is, a name/folder through :func:`~hysac.model.load_model`, or (None)
    the model recorded in the index, else the shipped default."""
    from ..model import load_model

    if model is None or isinstance(model, (str, Path)):
        name = None if model is None else str(model)
        if name is None and index_dir is not None:
            from ..index.store import IndexStore

            name = IndexStore.read_info(index_dir).get("model_source")
        return load_model(name)
    return model
