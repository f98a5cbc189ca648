"""Compare two training runs' ``metrics.json`` (e.g. the shipped one and a rerun of the same config).

    python scripts/compare_metrics.py src/hysac/pretrained/hysac-mini/metrics.json runs/hysac-mini/export/metrics.json

Prints the largest differences of the summary figures (validation and test; recall figures, which are percentages,
compared as fractions) and of the per-source rates at the threshold and the top category's per-category rates,
and exits 1 when a summary figure differs by more than ``--tolerance`` (default 0.01).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _flatten(prefix: str, value, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)


def figures(path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """(summary figures, per-source rates at the threshold) of one ``metrics.json``, keyed ``split/name``."""
    try:
        m = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{path}: cannot read metrics: {e}") from None
    summary: dict[str, float] = {}
    per_source: dict[str, float] = {}
    for split in ("val", "test"):
        block = dict(m.get(split) or {})
        _flatten(split, block.pop("per_source_at_threshold", {}), per_source)
        # the top category's per-category precision / recall / F1 rest on a few dozen texts in the small
        # categories (one text moves self-harm's recall by 0.04): reported beside the per-source rates
        top = dict(block.pop("category_head_top1", None) or {})
        _flatten(f"{split}/category_head_top1", top.pop("per_category", {}), per_source)
        _flatten(f"{split}/category_head_top1", top, summary)
        _flatten(split, block, summary)
    for k in list(summary):
        if "R@" in k or "recall_sum" in k:  # percentages
            summary[k] /= 100.0
    per_source = {k: v for k, v in per_source.items()
                  if k.rsplit("/", 1)[-1] in ("fpr", "tpr", "auroc", "precision", "recall", "f1")}
    return summary, per_source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference", type=Path)
    ap.add_argument("candidate", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--top", type=int, default=10, help="rows of the largest differences to print")
    a = ap.parse_args(argv)
    ref, ref_src = figures(a.reference)
    new, new_src = figures(a.candidate)
    common = sorted(set(ref) & set(new))
    if not common:
        raise SystemExit(f"{a.reference} and {a.candidate}: no figure in common")
    diffs = sorted(((abs(new[k] - ref[k]), k) for k in common), reverse=True)
    src = sorted(((abs(new_src[k] - ref_src[k]), k) for k in set(ref_src) & set(new_src)), reverse=True)
    over = [k for d, k in diffs if d > a.tolerance]
    print(f"{len(common)} summary figures compared, plus {len(src)} per-source rates at the threshold and "
          "per-category rates of the top category.\n")
    print(f"Largest difference: **{diffs[0][0]:.4f}** (tolerance ±{a.tolerance}); summary figures over "
          f"{a.tolerance}: **{len(over)}**; per-source / per-category rates: largest difference {src[0][0] if src else 0:.4f}.\n")
    print("| figure | reference | candidate | difference (fraction) |\n|---|---:|---:|---:|")
    for d, k in diffs[: a.top]:
        print(f"| `{k}` | {ref[k]:.4f} | {new[k]:.4f} | {d:.4f} |")
    print("\n**Reproduced within ±%s.**" % a.tolerance if not over else f"\n**Not within ±{a.tolerance}:** "
          + ", ".join(f"`{k}`" for k in over))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
