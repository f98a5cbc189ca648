"""(safe text, safe image, unsafe text, unsafe image) quadruplets for HySAC training.

ViSU provides full quadruplets. Where the data has only unsafe texts (e.g. I2P prompts) and a pool of safe
captions (e.g. COCO), quadruplets are built as follows:

1. Embed both text sets with a *frozen* text encoder (the caller's features, or ``encode``).
2. Pair each unsafe text with its nearest safe caption by cosine similarity (:func:`pair_nearest`; exact,
   computed in chunks of unsafe rows so 4k x 18k fits easily in memory). With ``unique=True`` a greedy
   assignment (rows with the best match choose first) gives every unsafe text a different safe caption.
3. Attach whatever images exist: the safe caption's image (``safe_images[j]``) and the unsafe text's image
   (``unsafe_images[i]``); either may be None. :class:`Quadruplets` carries the boolean masks
   ``has_safe_image`` / ``has_unsafe_image`` so that losses needing images can skip the text-only items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from hysac.data.categories import multihot_to_categories, parse_categories
from hysac.errors import InputError

if TYPE_CHECKING:
    import torch

ArrayLike = Union[np.ndarray, "torch.Tensor", Sequence[Sequence[float]]]


def _as_matrix(x: ArrayLike, name: str) -> torch.Tensor:
    import torch  # lazy: keep ``import hysac.data`` light

    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name} must be a non-empty 2-D (n, dim) matrix, got shape {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=torch.float32)
    if not torch.isfinite(t).all():
        raise InputError(f"{name} contains NaN or infinite values")
    return torch.nn.functional.normalize(t, dim=1, eps=1e-12)


def pair_nearest(unsafe_feats: ArrayLike, safe_feats: ArrayLike, *, chunk_size: int = 1024, unique: bool = False,
                 return_scores: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """For each unsafe row, the index (int64) of the most cosine-similar safe row; with ``return_scores`` also the
    similarities (float32). ``unique=True`` makes the indices distinct (greedy: the unsafe rows with the best match
    choose first, each taking its most similar free safe row; needs at least as many safe rows as unsafe rows).
    Inputs: ``(n, d)`` torch tensors or numpy arrays."""
    import torch

    u = _as_matrix(unsafe_feats, "unsafe_feats")
    s = _as_matrix(safe_feats, "safe_feats")
    if u.shape[1] != s.shape[1]:
        raise InputError(f"feature sizes differ: unsafe_feats has {u.shape[1]}, safe_feats has {s.shape[1]}")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    n, m = u.shape[0], s.shape[0]
    if unique and m < n:
        raise InputError(f"unique pairing needs at least as many safe rows ({m}) as unsafe rows ({n})")
    k = min(m, 16) if unique else 1
    top_val = torch.empty(n, k)
    top_idx = torch.empty(n, k, dtype=torch.long)
    with torch.no_grad():
        for a in range(0, n, chunk_size):
            sims = u[a:a + chunk_size] @ s.T
            top_val[a:a + chunk_size], top_idx[a:a + chunk_size] = sims.topk(k, dim=1)
    if not unique:
        idx, val = top_idx[:, 0].numpy().astype(np.int64), top_val[:, 0].numpy().astype(np.float32)
    else:
        idx = np.full(n, -1, dtype=np.int64)
        val = np.zeros(n, dtype=np.float32)
        used = torch.zeros(m, dtype=torch.bool)
        for i in torch.argsort(top_val[:, 0], descending=True, stable=True).tolist():
            free = ~used[top_idx[i]]
            if free.any():
                j = int(free.nonzero()[0, 0])
                best, score = int(top_idx[i, j]), float(top_val[i, j])
            else:  # all k candidates taken: search the whole pool
                with torch.no_grad():
                    sims = (s @ u[i]).masked_fill(used, float("-inf"))
                best = int(sims.argmax())
                score = float(sims[best])
            used[best] = True
            idx[i], val[i] = best, score
    return (idx, val) if return_scores else idx


@dataclass(frozen=True)
class Quadruplet:
    """One training item; images are whatever the caller passed (paths, PIL images...) or None."""

    safe_text: str
    unsafe_text: str
    safe_image: Any | None = None
    unsafe_image: Any | None = None
    categories: tuple[str, ...] = ()
    score: float | None = None  # cosine similarity of the paired texts, None when given as a pair
    source: str = ""


@dataclass
class Quadruplets:
    """A list of :class:`Quadruplet` plus per-item image-availability masks."""

    records: list[Quadruplet]
    has_safe_image: np.ndarray = field(init=False)
    has_unsafe_image: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.has_safe_image = np.array([r.safe_image is not None for r in self.records], dtype=bool)
        self.has_unsafe_image = np.array([r.unsafe_image is not None for r in self.records], dtype=bool)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Quadruplet:
        return self.records[i]

    @property
    def complete(self) -> np.ndarray:
        """Mask of items with both images."""
        return self.has_safe_image & self.has_unsafe_image


def _aligned(values: Sequence[Any] | None, n: int, name: str) -> Sequence[Any]:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise InputError(f"{name} has {len(values)} entries, expected {n}")
    return values


def build_quadruplets(unsafe_texts: Sequence[str], safe_texts: Sequence[str],
                      unsafe_feats: ArrayLike | None = None, safe_feats: ArrayLike | None = None, *,
                      encode: Callable[[list[str]], ArrayLike] | None = None,
                      safe_images: Sequence[Any | None] | None = None,
                      unsafe_images: Sequence[Any | None] | None = None,
                      unsafe_categories: Sequence[Any] | None = None, unique: bool = False,
                      chunk_size: int = 1024, source: str = "") -> Quadruplets:
    """Pair every unsafe text with its nearest safe text (:func:`pair_nearest` on ``unsafe_feats`` /
    ``safe_feats``, or on ``encode(texts)`` when features are not given) and attach the optional images
    (``safe_images`` aligned with ``safe_texts``, ``unsafe_images`` with ``unsafe_texts``) and categories
    (names, a comma string or a 7-d multi-hot per unsafe text)."""
    n, m = len(unsafe_texts), len(safe_texts)
    if n == 0 or m == 0:
        raise InputError(f"need at least one unsafe and one safe text, got {n} and {m}")
    if unsafe_feats is None or safe_feats is None:
        if encode is None:
            raise InputError("give unsafe_feats and safe_feats, or an encode(texts) function")
        unsafe_feats = encode(list(unsafe_texts)) if unsafe_feats is None else unsafe_feats
        safe_feats = encode(list(safe_texts)) if safe_feats is None else safe_feats
    for feats, count, name in ((unsafe_feats, n, "unsafe_feats"), (safe_feats, m, "safe_feats")):
        if len(feats) != count:
            raise InputError(f"{name} has {len(feats)} rows for {count} texts")
    idx, scores = pair_nearest(unsafe_feats, safe_feats, chunk_size=chunk_size, unique=unique, return_scores=True)
    s_imgs = _aligned(safe_images, m, "safe_images")
    u_imgs = _aligned(unsafe_images, n, "unsafe_images")
    cats = _aligned(unsafe_categories, n, "unsafe_categories")
    records = [Quadruplet(safe_text=safe_texts[j], unsafe_text=unsafe_texts[i], safe_image=s_imgs[j],
                          unsafe_image=u_imgs[i], categories=tuple(_categories(cats[i])), score=float(scores[i]),
                          source=source)
               for i, j in enumerate(idx.tolist())]
    return Quadruplets(records)


def _categories(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, str):
        arr = np.asarray(value)
        if arr.ndim == 1 and arr.dtype.kind in "fiub":  # a multi-hot vector
            return multihot_to_categories(arr)
    return parse_categories(value)


def quadruplets_from_visu(dataset: Any) -> Quadruplets:
    """Quadruplets straight from a :class:`~hysac.data.visu.ViSUDataset` (images are paths or None; ``tag``
    parsed into categories when it names one)."""
    records = [Quadruplet(safe_text=it["safe_text"], unsafe_text=it["nsfw_text"], safe_image=it["safe_image_path"],
                          unsafe_image=it["nsfw_image_path"], categories=tuple(_categories(it["tag"])),
                          source="visu")
               for it in dataset]
    return Quadruplets(records)
