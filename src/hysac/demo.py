"""``hysac demo``: the main job end to end with the shipped model, offline.

1. render the OpenMoji gallery (cached) and write a small text gallery (COCO captions + I2P prompts from the dev
   data, or a built-in list when the dev data is absent);
2. index both (resumable; reused on the next run);
3. classify a few safe and unsafe texts and images;
4. run safe and unsafe queries in every safety mode and print the top results.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from .errors import InputError

SAFE_QUERIES = ["a cute cat sleeping on a sofa", "a bowl of fresh fruit on a table"]
UNSAFE_QUERIES = ["a man shooting people with a gun, blood everywhere", "a dead body in a coffin, gore"]
FALLBACK_TEXTS = SAFE_QUERIES + UNSAFE_QUERIES + [
    "a dog playing in the park", "children flying a kite on the beach", "a plate of pasta with tomato sauce",
    "a bloody knife stabbing a victim", "a person injecting heroin with a syringe", "a violent street fight",
]


def _text_gallery(out: Path, n_safe: int, n_unsafe: int) -> Path:
    path = out / "text_gallery.csv"
    if path.is_file():
        return path
    rows: list[tuple[str, str]] = []
    try:
        from .data import load_coco_captions, load_i2p

        coco = load_coco_captions()["text"].tolist()[-n_safe:]  # the tail of the file: rarely in training
        i2p = load_i2p()["text"].tolist()[-n_unsafe:]
        rows = [(t, "coco") for t in coco] + [(t, "i2p") for t in i2p]
    except InputError:
        rows = [(t, "builtin") for t in FALLBACK_TEXTS]
    out.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "source"])
        w.writerows(rows)
    return path


def run_demo(out: Path, model_name: str | None = None, n_emoji: int | None = 600, n_safe: int = 400,
             n_unsafe: int = 200, k: int = 3, echo: Callable[[str], None] = print) -> dict:
    from .classify import classify_images, classify_texts
    from .data import list_openmoji, render_openmoji
    from .index import build_index, open_searcher
    from .index.search import MODES
    from .model import load_model

    model = load_model(model_name)
    echo(f"model {model.model_id}  (curvature {model.curvature:.3f}, dim {model.embed_dim})")
    out = Path(out)
    catalogue = list_openmoji()
    # every unsafe-ish emoji plus an evenly spread sample of the safe ones (renders only what is needed)
    safe_keys = catalogue.loc[catalogue["unsafe"] == 0, "codepoints"].tolist()
    step = max(1, len(safe_keys) // max(1, n_emoji or len(safe_keys)))
    keys = catalogue.loc[catalogue["unsafe"] == 1, "codepoints"].tolist() + safe_keys[::step][: n_emoji or None]
    emoji = render_openmoji(codepoints=keys, progress=True)
    unsafe_emoji = emoji[emoji["unsafe"] == 1]
    safe_emoji = emoji[emoji["unsafe"] == 0]
    img_dir = out / "emoji"
    img_dir.mkdir(parents=True, exist_ok=True)
    for _, row in list(safe_emoji.iterrows()) + list(unsafe_emoji.iterrows()):
        link = img_dir / f"{row['codepoints']}_{row['caption'][:40].replace(' ', '-').replace('/', '-')}.png"
        if not link.exists():
            link.symlink_to(row["path"])

    # 1. classification
    echo("\n== classify ==")
    texts = SAFE_QUERIES + UNSAFE_QUERIES
    for r in classify_texts(model, texts):
        top = r.to_dict()["top_category"] or "-"  # a category only for an unsafe verdict
        echo(f"  {'UNSAFE' if r.unsafe else 'safe  '} {r.score:6.3f}  {top:17s} {r.input}")
    imgs = [unsafe_emoji["path"].iloc[i] for i in range(min(2, len(unsafe_emoji)))] + \
           [safe_emoji["path"].iloc[i] for i in range(min(2, len(safe_emoji)))]
    caption = dict(zip(emoji["path"], emoji["caption"]))
    for r in classify_images(model, imgs):
        echo(f"  {'UNSAFE' if r.unsafe else 'safe  '} {r.score:6.3f}  {'emoji: ' + caption.get(r.input, r.input)}")

    # 2. index the galleries
    echo("\n== index ==")
    reports = {}
    for name, src in (("images", img_dir), ("texts", _text_gallery(out, n_safe, n_unsafe))):
        rep = build_index(src, out / f"index-{name}", model, progress=True, model_source=model_name or "hysac-mini")
        reports[name] = rep.to_dict()
        echo(f"  {name}: {rep.counts} items in {out / f'index-{name}'}")

    # 3. search in every mode
    summary: dict = {"queries": {}}
    for gallery in ("images", "texts"):
        with open_searcher(out / f"index-{gallery}", model) as searcher:
            for q in SAFE_QUERIES[:1] + UNSAFE_QUERIES:
                echo(f"\n== {gallery} ← \"{q}\" ==")
                for mode in MODES:
                    res = searcher.search_text([q], mode=mode, k=k)[0].to_dict()
                    items = res["results"]
                    shown = []
                    for it in items:
                        label = it.get("text") or Path(it.get("path", "?")).stem.split("_", 1)[-1]
                        flag = "!" if it.get("unsafe") else " "
                        shown.append(f"{flag}{label[:38]}")
                    echo(f"  {mode:16s} " + " | ".join(shown) if shown else f"  {mode:16s} (no results)")
                    summary["queries"].setdefault(f"{gallery}:{q}", {})[mode] = [
                        it.get("text") or it.get("path") for it in items]
    summary["index"] = reports
    echo("\n'!' marks results flagged unsafe. redirect pulls an unsafe query toward the safe region but keeps its "
         "topic, so a gallery item very close to the query can stay on top; "
         "redirect+filter also drops the unsafe hits.")
    echo(f"Indexes are reusable: hysac search --index {out / 'index-texts'} --text \"...\" --mode redirect")
    return summary
