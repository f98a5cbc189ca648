"""A tiny model and a small demo index, built offline in seconds — for the service tests, the web test and the
service benchmark (no downloads, no shipped model needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SAFE_TEXTS", "UNSAFE_TEXTS", "make_tiny_model", "make_demo_images", "make_demo_index", "png_bytes"]

SAFE_TEXTS = [
    "a cat on a sofa", "a dog in the park", "a red car on the road", "children playing football",
    "a bowl of fruit", "a mountain lake at dawn", "a cat sleeping in the sun", "a dog with a ball",
    "people at a market", "a train at the station", "a cup of coffee", "a city street at night",
]
UNSAFE_TEXTS = [
    "a cat covered in blood", "a dog with a weapon", "gore on the road", "people who kill at the market",
    "drugs on a table", "blood in the city street at night", "a weapon in the park", "a bowl of drugs",
]


def make_tiny_model(root: str | Path, *, categories: bool = True, calibrate: bool = True):
    """A tiny random CLIP-backbone HySAC (see :mod:`hysac.testing`) for demos and tests.

    ``categories``: add a (random, seeded) category head so results carry category probabilities.
    ``calibrate``: replace the generic bounds by ones fitted on the demo gallery's scores, so the demo index holds
    both safe and unsafe items of each modality and redirection moves most text queries (``traversal`` rule
    ``bound``: redirect to ``V.up_95``, set below most text scores; seek-unsafe to ``G.avg``).
    """
    import io

    import torch
    from PIL import Image

    from ..model import CategoryHead, HySAC
    from ..safety import Bounds, ClassBounds
    from ..testing import make_released_checkpoint, make_tiny_clip_folder

    root = Path(root)
    clip = make_tiny_clip_folder(root / "clip")
    ck = make_released_checkpoint(root / "hysac", clip)
    model = HySAC.from_pretrained(ck, backbone=clip)
    if categories:
        torch.manual_seed(7)
        model.category_head = CategoryHead(model.embed_dim)
    if calibrate:
        t = model.score(model.encode_text(SAFE_TEXTS + UNSAFE_TEXTS)).double().numpy()
        imgs = [Image.open(io.BytesIO(png_bytes(seed=100 + i, size=48, red=(i % 3 == 2)))) for i in range(8)]
        im = model.score(model.encode_image(imgs)).double().numpy()

        def q(a, p):
            return float(np.percentile(a, p))

        model.bounds = Bounds(
            classes={"S": ClassBounds(up_95=q(t, 50), low_05=q(t, 5), avg=q(t, 25)),
                     "V": ClassBounds(up_95=q(t, 30), low_05=q(t, 5), avg=q(t, 15)),
                     "U": ClassBounds(up_95=q(t, 95), low_05=q(t, 50), avg=q(t, 75)),
                     "G": ClassBounds(up_95=q(im, 95), low_05=q(im, 50), avg=q(im, 75))},
            thresholds={"text": q(t, 50), "image": q(im, 50)},
        )
        model.traversal = {"rule": "bound", "margin": 0.0}
    return model


def png_bytes(seed: int = 0, size: int = 32, red: bool = False) -> bytes:
    """A small random PNG image, as bytes."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    if red:
        arr[..., 0] = 220
        arr[..., 1:] //= 4
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def make_demo_images(folder: str | Path, n: int = 8) -> list[Path]:
    """``n`` small PNGs (every third one mostly red) in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:03d}.png"
        p.write_bytes(png_bytes(seed=100 + i, size=48, red=(i % 3 == 2)))
        paths.append(p)
    return paths


def make_demo_index(root: str | Path, model: Any, *, n_images: int = 8, texts: list[str] | None = None,
                    repeat: int = 1) -> Path:
    """Build ``root/index`` from a CSV of texts (safe + unsafe, with metadata) and a folder of ``n_images``
    images. ``repeat`` > 1 makes a larger text gallery (numbered variants of the sentences)."""
    import csv

    from ..index import add_to_index, build_index

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = list(texts) if texts is not None else SAFE_TEXTS + UNSAFE_TEXTS
    table = root / "texts.csv"
    with open(table, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "n"])
        for r in range(repeat):
            for i, t in enumerate(base):
                label = "unsafe" if t in UNSAFE_TEXTS else "safe"
                w.writerow([t if r == 0 else f"{t} #{r}", label, r * len(base) + i])
    out = root / "index"
    build_index(table, out, model, batch_size=64, progress=False)
    if n_images:
        make_demo_images(root / "images", n_images)
        add_to_index(root / "images", out, model, batch_size=16, progress=False)
    return out
