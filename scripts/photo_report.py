"""Image side of one or more models on real photos and on ImageNet's object classes (public API only).

    python scripts/photo_report.py --model hysac-mini --model /path/to/other --out reports/hysac-mini/photos

For each model: the image threshold's false-positive rate on every calibration photo (scikit-image / matplotlib /
scikit-learn sample photos, Debian wallpapers; all safe) and on the 1000 ImageNet object-class prompts rendered as
queries; text→photo retrieval R@1 / R@5 over the named sample photos with their captions and with
"a photo of a <object>" queries. Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from hysac import HySAC
from hysac.data.photos import load_photos

#: the object each named sample photo shows, for "a photo of a <object>" queries
OBJECTS = {
    "chelsea": "cat", "coffee": "cup of coffee", "rocket": "rocket", "astronaut": "astronaut", "camera": "camera",
    "coins": "coin", "moon": "moon", "clock": "clock", "brick": "brick wall", "grass": "lawn",
    "grace_hopper": "military uniform", "china": "temple", "flower": "daisy",
}


def _recall(q: torch.Tensor, g: torch.Tensor, model: HySAC) -> dict[str, float]:
    """Query i's positive is gallery item i; ranked by negative geodesic distance (pessimistic ties)."""
    from hysac import lorentz as L
    from hysac.metrics import recall_at_k

    r = recall_at_k(-L.pairwise_dist(q, g, model.curvature), torch.arange(len(q)), ks=(1, 5))
    return {"R@1": r[1] / 100.0, "R@5": r[5] / 100.0, "n": len(q)}


def measure(name: str) -> dict:
    model = HySAC.from_pretrained(name).eval()
    photos = load_photos()
    t0 = time.time()
    with torch.no_grad():
        emb = model.encode_image(list(photos["path"]))
        scores = model.score(emb).numpy()
    th = model.unsafe_threshold("image")
    out: dict = {"model": name, "image_threshold": th, "photos": {}, "seconds_encode": round(time.time() - t0, 1)}
    for src in sorted(photos["source"].unique()):
        sel = (photos["source"] == src).to_numpy()
        flagged = [Path(p).name for p, s in zip(photos["path"][sel], scores[sel]) if s > th]
        out["photos"][src] = {"n": int(sel.sum()), "fpr": float((scores[sel] > th).mean()), "flagged": flagged,
                              "max_score": float(scores[sel].max())}
    named = photos[photos["source"] == "skimage"].reset_index(drop=True)
    idx = [i for i, p in enumerate(named["path"]) if Path(p).stem in OBJECTS]
    with torch.no_grad():
        g = emb[np.flatnonzero((photos["source"] == "skimage").to_numpy())]
        out["retrieval_captions"] = _recall(model.encode_text(list(named["caption"])), g, model)
        q = model.encode_text([f"a photo of a {OBJECTS[Path(named['path'][i]).stem]}" for i in idx])
        out["retrieval_objects"] = _recall(q, g[idx], model)
        prompts = model.encode_text([f"a photo of a {n}" for n in _class_names()])
        ps = model.score(prompts).numpy()
    out["imagenet_prompts_as_text"] = {"n": len(ps), "flagged_at_text_threshold": int((ps > model.unsafe_threshold(
        "text")).sum())}
    # caption → image on the drawn sources (1000 of each, seeded; captions are OpenMoji annotations / clip-art
    # file names, so this measures the caption register as much as the model)
    for key, frame in _drawn_sources().items():
        with torch.no_grad():
            g = model.encode_image(list(frame["path"]))
            out[f"retrieval_{key}"] = _recall(model.encode_text(list(frame["caption"])), g, model)
    names = model.backbone.class_names()
    if names:  # one simulated photo per ImageNet class (Backbone.class_photo_features), "a photo of a <name>"
        with torch.no_grad():
            gen = torch.Generator().manual_seed(12345)
            classes = torch.arange(len(names))
            g = torch.cat([model.lift_image(model.backbone.class_photo_features(classes[i:i + 250], gen).float())
                           for i in range(0, len(classes), 250)])
            q = model.encode_text([f"a photo of a {n[0]}" for n in names])
            sc = model.score(g).numpy()
        out["class_photos"] = {**_recall(q, g, model), "fpr": float((sc > th).mean())}
    protos = model.backbone.image_class_prototypes()
    if protos is not None:
        with torch.no_grad():
            pscore = model.score(model.lift_image(protos[1])).numpy()
        flagged = [protos[0][i].split(",")[0] for i in np.flatnonzero(pscore > th)]
        out["imagenet_class_prototypes"] = {"n": len(pscore), "fpr": float((pscore > th).mean()),
                                            "flagged": flagged}
    return out


def _drawn_sources(n: int = 1000) -> dict:
    """Up to ``n`` captioned OpenMoji and Open Clip Art images each (unique captions, seeded sample)."""
    from hysac.data import render_openmoji
    from hysac.data.clipart import load_openclipart

    out = {}
    emoji = render_openmoji(224, progress=False).drop_duplicates("caption")
    out["emoji"] = emoji.sample(min(n, len(emoji)), random_state=0).reset_index(drop=True)
    try:
        clip = load_openclipart(max_safe=None).drop_duplicates("caption")
        out["clipart"] = clip.sample(min(n, len(clip)), random_state=0).reset_index(drop=True)
    except Exception as e:  # noqa: BLE001 - the Debian package is optional
        print(f"clip art left out: {e}")
    return out


def _class_names() -> list[str]:
    from hysac.backbones.mini import imagenet_class_names

    return [n[0] for n in imagenet_class_names()]


def to_markdown(rows: list[dict]) -> str:
    lines = [f"# Image side on real photos ({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()})",
             "", "| model | image threshold | photo FPR (per source) | ImageNet-class FPR | caption→photo R@1 / R@5 |"
             " \"a photo of a <object>\" R@1 / R@5 | simulated class photos: FPR, R@1 / R@5 |"
             " emoji caption→image R@1 / R@5 | clip-art caption→image R@1 / R@5 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fpr = ", ".join(f"{k} {v['fpr']:.1%} of {v['n']}" for k, v in r["photos"].items())
        proto = r.get("imagenet_class_prototypes")
        ptxt = f"{proto['fpr']:.1%} ({', '.join(proto['flagged'][:12])})" if proto else "n/a (no class bridge)"
        rc, ro = r["retrieval_captions"], r["retrieval_objects"]
        cp = r.get("class_photos")
        ctxt = (f"{cp['fpr']:.1%}, {cp['R@1']:.2f} / {cp['R@5']:.2f} (n={cp['n']})" if cp else "n/a")
        lines.append(f"| {r['model']} | {r['image_threshold']:.3f} | {fpr} | {ptxt} | {rc['R@1']:.2f} / "
                     f"{rc['R@5']:.2f} (n={rc['n']}) | {ro['R@1']:.2f} / {ro['R@5']:.2f} (n={ro['n']}) | {ctxt} |"
                     + "".join(f" {d['R@1']:.2f} / {d['R@5']:.2f} (n={d['n']}) |" if d else " n/a |"
                               for d in (r.get("retrieval_emoji"), r.get("retrieval_clipart"))))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="model name or folder (repeatable)")
    ap.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    args = ap.parse_args()
    rows = [measure(m) for m in args.model]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.node() and
                                                    f"{platform.machine()}, {torch.get_num_threads()} threads",
                                                    "models": rows}, indent=2))
    out.with_suffix(".md").write_text(to_markdown(rows))
    print(to_markdown(rows))


if __name__ == "__main__":
    main()
