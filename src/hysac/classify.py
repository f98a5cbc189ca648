"""Unsafe-content classification of texts and images: score, decision, categories — one result per input.

Used by ``hysac classify`` and ``POST /classify``. Inputs that cannot be processed (empty line, undecodable bytes,
unreadable image) get a per-input ``error`` instead of stopping the batch. A text longer than the text tower reads
(``hysac-mini``: 128 tokens, about 90 English words) is judged on its opening and marked ``truncated``: split long
documents into passages to have every part judged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from .errors import InputError
from .images import load_image
from .inputs import MAX_TEXT_CHARS, text_problem

if TYPE_CHECKING:  # pragma: no cover - annotations only (the index CLI reads query files without the model)
    from .model import HySAC


def _top_name(categories: dict[str, float], unsafe: bool | None) -> str | None:
    from .safety import top_category

    top = top_category(categories, unsafe)
    return None if top is None else str(top["name"])


@dataclass
class Classification:
    input: str
    modality: str
    score: float | None = None
    unsafe: bool | None = None
    threshold: float | None = None
    categories: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    #: a text longer than the text tower reads (:meth:`HySAC.text_cut`): judged on its opening only. None for
    #: images and where the backbone cannot tell
    truncated: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"input": self.input, "modality": self.modality, "score": self.score, "unsafe": self.unsafe,
               "threshold": self.threshold, "categories": self.categories,
               "top_category": None if self.error is not None else _top_name(self.categories, self.unsafe),
               "truncated": self.truncated}
        if self.error is not None:
            out["error"] = self.error
        return out


def read_text_lines(path: str | Path, max_chars: int = MAX_TEXT_CHARS) -> list[tuple[str, str | None]]:
    """Read one input per line. Returns (text or raw repr, error or None) per line; bad lines get an error naming
    ``file:line``: empty, not UTF-8, longer than ``max_chars`` or with a control character
    (:func:`hysac.inputs.text_problem`, what ``--text`` and the service refuse too). A file that is empty or UTF-16
    (it starts with a byte-order mark) is refused as a whole."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"text file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read text file {path}: {e.strerror or e}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError(f"text file {path} is UTF-16 (it starts with a byte-order mark); save it as UTF-8")
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of the first text
        data = data[3:]
    if not data:
        raise InputError(f"text file {path} is empty")
    out: list[tuple[str, str | None]] = []
    for i, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            out.append((repr(raw[:60]), f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})"))
            continue
        if not line:
            out.append((line, f"{path}:{i}: empty line"))
            continue
        problem = text_problem(line, max_chars)
        if problem is not None:
            out.append((repr(line[:60]), f"{path}:{i}: the text {problem[1]}"))
            continue
        out.append((line, None))
    return out


def _fill(model: HySAC, results: list[Classification], idx: list[int], emb: torch.Tensor, modality: str,
          threshold: float | None) -> None:
    if not idx:
        return
    v = model.policy.judge(emb, modality, threshold)
    for j, i in enumerate(idx):
        r = results[i]
        r.score = float(v.scores[j])
        r.threshold = v.threshold
        r.unsafe = bool(v.unsafe[j])
        r.categories = v.category_dict(j)


def classify_texts(model: HySAC, items: Sequence[str | tuple[str, str | None]], threshold: float | None = None,
                   batch_size: int = 256) -> list[Classification]:
    """Classify texts; ``items`` may carry a pre-computed per-line error (see :func:`read_text_lines`)."""
    pairs = [(it, None) if isinstance(it, str) else it for it in items]
    results = [Classification(input=t, modality="text", error=err) for t, err in pairs]
    for r in results:
        if r.error is None and not r.input.strip():
            r.error = "empty text"
    ok = [i for i, r in enumerate(results) if r.error is None]
    texts = [results[i].input for i in ok]
    emb = model.encode_text(texts, batch_size=batch_size)
    _fill(model, results, ok, emb, "text", threshold)
    for i, cut in zip(ok, model.text_cut(texts)):
        results[i].truncated = cut
    return results


def classify_images(model: HySAC, paths: Sequence[str | Path], threshold: float | None = None,
                    batch_size: int = 32, chunk: int = 256) -> list[Classification]:
    """Classify image files; unreadable ones get a per-input error naming the file.

    Files are decoded ``chunk`` at a time (memory stays bounded for any number of files). A model on the GPU fast
    path gets the paths themselves (it decodes them in its loader processes); a chunk with a bad file is then
    decoded here, file by file, so that the error names it."""
    from .fast import decodes_files

    results = [Classification(input=str(p), modality="image") for p in paths]
    in_model = decodes_files(model)
    for start in range(0, len(paths), max(1, int(chunk))):
        part = list(range(start, min(start + max(1, int(chunk)), len(paths))))
        if in_model:
            try:
                emb = model.encode_image([paths[i] for i in part], batch_size=max(batch_size, len(part)))
            except InputError:
                pass  # a bad file in this chunk: decode below, one by one
            else:
                _fill(model, results, part, emb, "image", threshold)
                continue
        images, ok = [], []
        for i in part:
            try:
                images.append(load_image(paths[i]))
                ok.append(i)
            except InputError as e:
                results[i].error = str(e)
        if ok:
            emb = model.encode_image(images, batch_size=batch_size)
            _fill(model, results, ok, emb, "image", threshold)
        del images
    return results
