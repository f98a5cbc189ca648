"""Length-bucketed text encoding, shared by the CPU and GPU fast paths.

``HySAC.encode_text`` tokenises per chunk in arrival order, so one long prompt makes its whole chunk run at the
longest length. :func:`encode_text_fast` tokenises everything once, **sorts by token length**, encodes
length-homogeneous batches (dynamic padding) and restores the input order. Padding is masked out, so this is the
same computation; only float summation order changes.
"""

from __future__ import annotations

import functools
from contextlib import nullcontext
from typing import Iterator, Sequence

import torch
from torch import Tensor

from ..backbones.base import check_texts
from ..errors import InputError

__all__ = ["Collector", "encode_text_fast", "length_sorted_batches", "patched_encode_text", "progress_bar"]


def check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, float)) or int(batch_size) != batch_size \
            or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def length_sorted_batches(backbone, texts: Sequence[str], batch_size: int) -> tuple[list[int], Iterator[dict]]:
    """``(order, batches)``: the text indices sorted by token length, and an iterator of token dicts
    (``input_ids``, ``attention_mask``) covering ``texts[order]`` ``batch_size`` at a time, each padded only to
    its own longest text.

    Uses ``backbone.length_sorted_batches`` when the backbone has it (the mini backbone tokenises once); any other
    backbone is tokenised once to measure lengths and again per batch with ``backbone.tokenize``."""
    batch_size = check_batch_size(batch_size)
    own = getattr(backbone, "length_sorted_batches", None)
    if own is not None:
        return own(texts, batch_size)
    texts = list(texts)
    lengths: list[int] = []
    for i in range(0, len(texts), 1024):
        tok = backbone.tokenize(texts[i:i + 1024])
        lengths.extend(tok["attention_mask"].sum(dim=1).tolist())
    order = sorted(range(len(texts)), key=lengths.__getitem__)

    def gen() -> Iterator[dict]:
        for s in range(0, len(order), batch_size):
            yield backbone.tokenize([texts[i] for i in order[s:s + batch_size]])

    return order, gen()


def encode_text_fast(model, texts, *, batch_size: int = 64, project: bool = True, progress: bool = False,
                     autocast: torch.dtype | None = None) -> Tensor:
    """``model.encode_text`` with length-sorted, dynamically padded batches under ``torch.inference_mode``, on
    whatever device the model is on. ``autocast``: run the towers under ``torch.autocast`` in that dtype (the
    lifting onto the hyperboloid stays fp32).

    Returns (N,D) fp32 on the CPU, same order as the input (to float rounding). A token-id tensor goes to the
    class's own method (it is already padded)."""
    if isinstance(texts, Tensor):
        return type(model).encode_text(model, texts, project=project, batch_size=batch_size, progress=progress)
    items = check_texts(texts)
    if not items:
        return torch.zeros(0, model.embed_dim)
    bb = model.backbone
    device = model.device
    order, batches = length_sorted_batches(bb, items, batch_size)
    bar = progress_bar(progress, len(items), "texts")
    ctx = (lambda: torch.autocast(device.type, dtype=autocast)) if autocast is not None else nullcontext  # noqa: E731
    out = Collector()
    with torch.inference_mode():
        for tok in batches:
            mask = tok.get("attention_mask")
            with ctx():
                feats = bb.text_features(tok["input_ids"].to(device, non_blocking=True),
                                         None if mask is None else mask.to(device, non_blocking=True))
            feats = feats.float()
            out.add(model.lift_text(feats) if project else feats)
            if bar is not None:
                bar.update(int(tok["input_ids"].shape[0]))
    if bar is not None:
        bar.close()
    stacked = out.result()
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return stacked.index_select(0, inverse)


class Collector:
    """Per-batch outputs kept on their device and copied to the CPU in groups of ``flush_every`` batches, so that
    the host never waits for the accelerator after each batch (and can prepare the next one meanwhile)."""

    def __init__(self, flush_every: int = 64) -> None:
        self.flush_every = int(flush_every)
        self.pending: list[Tensor] = []
        self.host: list[Tensor] = []

    def add(self, x: Tensor) -> None:
        self.pending.append(x)
        if len(self.pending) >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.host.append(torch.cat(self.pending).cpu())
            self.pending = []

    def result(self) -> Tensor:
        """All outputs, concatenated, on the CPU. Called outside ``inference_mode``: an ordinary tensor."""
        self._flush()
        return torch.cat(self.host)


def patched_encode_text(model, default_batch: int, autocast: torch.dtype | None = None):
    """What the fast paths install as ``model.encode_text``: :func:`encode_text_fast` with the path's tuned batch
    (a ``functools.partial`` on ``model``, so that copies of the model encode with themselves)."""
    return functools.partial(_capped_encode_text, model, default_batch=int(default_batch), autocast=autocast)


def _capped_encode_text(model, texts, *, project: bool = True, batch_size: int | None = None,
                        progress: bool = False, default_batch: int, autocast=None) -> Tensor:
    # a caller's batch size is a memory bound, not a request for padding: length buckets never exceed the tuned
    # default (callers such as the index mapper pass large chunks, which would be padded to their longest text)
    return encode_text_fast(model, texts, project=project, progress=progress, autocast=autocast,
                            batch_size=min(batch_size or default_batch, default_batch))


def progress_bar(progress: bool, total: int, what: str):
    """A tqdm bar over ``total`` items when ``progress``, else None."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"encoding {what}", unit=what[:-1])
