"""How many texts of a new register does the recipe need? A learning curve over leave-one-source-out folds.

    python scripts/loso_curve.py --group requests --group moderation --keep 0 25 100 400 \
        --set backbone.text_lora=null --set loss.semantic_anchor=0 --out reports/hysac-mini/loso-curve

For each held-out source group and each ``k``, the training config is run as a leave-one-source-out fold that
keeps ``k`` texts per class of the group's training split in training and ``k`` per class of its validation
split in validation (``data.corpus.leave_out_keep=k``); every ``k`` of a group is tested on the same texts, the
group's own test split (``k = 0``: the register never seen). Per fold, at the fold's own threshold: FPR on the
group's safe test texts, TPR on its unsafe ones, AUROC, and the largest TPR any threshold reaches within the
group's FPR budget (``hysac.evaluation.loso.FPR_BUDGET``); the same for the Euclidean probe on the fold's frozen
features. Folds train in ``<runs>/keep<k>/<group>/`` (``--runs``, default ``runs/loso-curve``; a finished fold
resumes instantly). Writes ``<out>.json``, ``<out>.md`` and ``<out>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hysac.data.corpus import EXTRA_PREFIX
from hysac.evaluation.loso import EXTRA_FPR_BUDGET, FPR_BUDGET, GROUP_ORDER, machine, run_loso

TARGETS = {"requests": 0.90, "moderation": 0.85}  # TPR the leave-one-source-out protocol asks for


def curve(config: str, groups: list[str], keeps: list[int], overrides: list[str], runs: Path) -> dict:
    rows = []
    t0 = time.time()
    for group in groups:
        for k in keeps:
            rep = run_loso(config, runs / f"keep{k}", groups=[group], baselines=("euclidean-probe",),
                           overrides=[*overrides, f"data.corpus.leave_out_keep={k}"])
            fold = rep["folds"][0]
            row = {"group": group, "keep": k}
            for m in ("hysac", "euclidean-probe"):
                if m in fold and "skipped" not in fold[m]:
                    row[m] = {key: fold[m][key] for key in
                              ("n_safe", "n_unsafe", "threshold", "fpr", "tpr", "auroc", "tpr_at_budget")
                              if key in fold[m]}
            rows.append(row)
    return {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
            "train_config": config, "overrides": overrides, "seconds": round(time.time() - t0, 1),
            "fpr_budget": {g: FPR_BUDGET.get(g, EXTRA_FPR_BUDGET) for g in groups}, "rows": rows}


def to_markdown(report: dict) -> str:
    lines = [f"# How many texts of a new register? ({report['date']}, {report['machine']}, "
             f"`{report['train_config']}`)", "",
             "Leave-one-source-out folds that keep `k` texts per class of the held-out group in training and `k` "
             "in validation (`data.corpus.leave_out_keep=k`); every `k` of a group is tested on the same texts, the "
             "group's test split. Cells: FPR / TPR / AUROC at the fold's own threshold, and (→) the largest TPR any "
             "threshold reaches within the group's FPR budget on those test texts. Overrides: "
             f"{', '.join(report['overrides']) or 'none'}. {report['seconds'] / 60:.0f} min.", "",
             "| held out | k per class | test safe / unsafe | hysac | Euclidean probe |", "|---|---|---|---|---|"]

    def cell(r: dict | None) -> str:
        if not r:
            return "n/a"
        s = " / ".join(f"{r[key]:.3f}" for key in ("fpr", "tpr", "auroc"))
        return s + (f" → {r['tpr_at_budget']:.3f}" if "tpr_at_budget" in r else "")

    for r in report["rows"]:
        h = r["hysac"]
        lines.append(f"| {r['group']} ({report['fpr_budget'][r['group']]:.0%} FPR budget) | {r['keep']} | "
                     f"{h['n_safe']} / {h['n_unsafe']} | {cell(h)} | {cell(r.get('euclidean-probe'))} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["group"] for r in report["rows"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, g in zip(axes[0], groups):
        rows = [r for r in report["rows"] if r["group"] == g]
        xs = [max(r["keep"], 1) for r in rows]  # k = 0 drawn at 1 on the log axis
        ax.plot(xs, [r["hysac"]["tpr"] for r in rows], "o-", label="hysac TPR at own threshold")
        ax.plot(xs, [r["hysac"]["tpr_at_budget"] for r in rows], "s--",
                label=f"hysac TPR at {report['fpr_budget'][g]:.0%} FPR (best threshold)")
        ax.plot(xs, [r["hysac"]["fpr"] for r in rows], "x:", label="hysac FPR at own threshold")
        if all("euclidean-probe" in r for r in rows):
            ax.plot(xs, [r["euclidean-probe"]["tpr_at_budget"] for r in rows], "^--", alpha=0.6,
                    label="probe TPR at budget (best threshold)")
        if g in TARGETS:
            ax.axhline(TARGETS[g], color="grey", lw=0.8, ls="-.", label=f"target TPR {TARGETS[g]:.0%}")
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(r["keep"]) for r in rows])
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"texts per class of '{g}' in training (and validation)")
        ax.set_title(f"held out: {g}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/hysac-mini.yaml")
    ap.add_argument("--group", action="append",
                    help="held-out group with both classes: prompts, requests, moderation, tweets, or extra:<file "
                         "stem> of a table given with --set 'data.corpus.extra=[...]' (repeatable; default requests "
                         "and moderation)")
    ap.add_argument("--keep", type=int, nargs="+", default=[0, 25, 100, 400])
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--out", default="reports/hysac-mini/loso-curve", help="report path, without suffix")
    ap.add_argument("--runs", default="runs/loso-curve", help="where the folds train")
    a = ap.parse_args()
    bad = [g for g in a.group or [] if g not in GROUP_ORDER[:1] + GROUP_ORDER[2:] and not g.startswith(EXTRA_PREFIX)]
    if bad:
        ap.error(f"--group: {', '.join(bad)}: not a group with both classes (prompts, requests, moderation, tweets, "
                 f"{EXTRA_PREFIX}<file stem>)")
    if any(k < 0 for k in a.keep):
        ap.error(f"--keep: texts per class must be >= 0, got {a.keep}")
    if not Path(a.config).is_file():
        ap.error(f"--config {a.config}: no such training config")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = curve(a.config, a.group or ["requests", "moderation"], sorted(set(a.keep)), a.overrides, Path(a.runs))
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(to_markdown(report))
    plot(report, out.with_suffix(".png"))
    print(to_markdown(report))


if __name__ == "__main__":
    main()
