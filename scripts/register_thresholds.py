"""One text threshold for every register, or one per register? (public API only)

    python scripts/register_thresholds.py --model hysac-mini --out reports/hysac-mini/register-thresholds
    python scripts/register_thresholds.py --model hysac-mini --probes my_tests.csv --out /tmp/rt

The model's own threshold is the highest of its registers' validation thresholds, so it holds on every register
(``threshold_criterion: register_fpr@...``). The alternative measured here: a register classifier (logistic
regression on the direction of the model's text embedding, trained on the training split's five source groups,
each weighing the same) picks the register of each text, and the text gets that register's own validation
threshold (the ``1 - rate`` quantile of its safe validation texts, the rate the model's criterion gives it; never
above the model's threshold). Both rules are scored on the test split per register (FPR on safe texts, TPR on
unsafe ones) and, with ``--probes``, on a CSV of texts from registers no source carries (columns ``text``,
``label`` (safe / unsafe), ``set``): per set, the share flagged under each rule and the registers guessed.
The splits are rebuilt from the model's ``training_config.json`` (the data folder must be the one it trained on).
Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from hysac import HySAC
from hysac.data.corpus import register_key, source_group
from hysac.evaluation.loso import machine
from hysac.pretrained import resolve
from hysac.train.data import text_splits
from hysac.train.trainer import parse_rate_spec

GROUPS = ("prompts", "captions", "requests", "moderation", "tweets")


def _encode(model: HySAC, texts: list[str], batch: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(N,) safety scores and (N, D) unit directions of the embeddings' space parts."""
    scores, dirs = [], []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            e = model.encode_text(texts[i:i + batch])
            scores.append(model.score(e).numpy())
            dirs.append(torch.nn.functional.normalize(e[:, 1:].float(), dim=-1).numpy())
    return np.concatenate(scores), np.concatenate(dirs)


def _rates(scores: np.ndarray, labels: np.ndarray, th) -> dict[str, float | int]:
    th = np.broadcast_to(np.asarray(th, dtype=np.float64), scores.shape)
    out: dict[str, float | int] = {"n_safe": int((labels == 0).sum()), "n_unsafe": int((labels == 1).sum())}
    if out["n_safe"]:
        out["fpr"] = float((scores[labels == 0] > th[labels == 0]).mean())
    if out["n_unsafe"]:
        out["tpr"] = float((scores[labels == 1] > th[labels == 1]).mean())
    return out


def run(model_name: str, probes: Path | None) -> dict:
    model = HySAC.from_pretrained(model_name).eval()
    cfg_path = resolve(model_name)[0] / "training_config.json"
    if not cfg_path.is_file():
        raise SystemExit(f"--model {model_name}: no training_config.json in {cfg_path.parent}")
    cfg = json.loads(cfg_path.read_text())
    if cfg["data"].get("corpus") is None:
        raise SystemExit(f"--model {model_name}: not trained on the register corpus (data.corpus)")
    train, val, test = text_splits(cfg)
    rates = parse_rate_spec(str(cfg["threshold_criterion"]).split("@", 1)[-1])
    strictest = min(rates.values())
    th_model = model.unsafe_threshold("text")

    parts = {}
    for name, part in (("train", train), ("val", val), ("test", test)):
        s, f = _encode(model, [e.text for e in part])
        parts[name] = {"score": s, "dir": f, "label": np.array([e.label for e in part]),
                       "source": np.array([e.source for e in part])}
    tr = parts["train"]
    groups = np.array([source_group(str(s)) for s in tr["source"]])
    keep = np.isin(groups, GROUPS)
    _, inv, counts = np.unique(groups[keep], return_inverse=True, return_counts=True)
    weight = keep.sum() / counts[inv]  # every source group weighs the same, in total as many as the texts
    clf = LogisticRegression(max_iter=3000).fit(tr["dir"][keep], groups[keep], sample_weight=weight)

    v = parts["val"]
    guessed = clf.predict(v["dir"])
    th_reg = {}
    for g in GROUPS:
        safe = v["score"][(guessed == g) & (v["label"] == 0)]
        rate = rates.get(g, rates.get("*", strictest))
        th_reg[g] = min(th_model, float(np.quantile(safe, 1.0 - rate, method="higher"))) if len(safe) else th_model

    def per_text(dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = clf.predict(dirs)
        return np.array([th_reg[x] for x in g]), g

    t = parts["test"]
    th_t, guess_t = per_text(t["dir"])
    truth = np.array([source_group(str(s)) for s in t["source"]])
    known = np.isin(truth, GROUPS)
    keys = np.array([register_key(str(s)) for s in t["source"]])
    test_rows = {k: {"one": _rates(t["score"][keys == k], t["label"][keys == k], th_model),
                     "per_register": _rates(t["score"][keys == k], t["label"][keys == k], th_t[keys == k])}
                 for k in np.unique(keys)}
    report = {"model": model_name, "model_id": model.model_id, "date": time.strftime("%Y-%m-%d"),
              "machine": machine(),
              "threshold": th_model, "register_thresholds": th_reg,
              "register_accuracy_test": float((guess_t[known] == truth[known]).mean()), "test": test_rows}
    if probes is not None:
        with open(probes, newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"text", "label", "set"} <= set(rows[0]):
            raise SystemExit(f"--probes {probes}: need columns text, label, set")
        s, f = _encode(model, [r["text"] for r in rows])
        th_p, guess_p = per_text(f)
        sets = np.array([r["set"] for r in rows])
        report["probes"] = {}
        for name in dict.fromkeys(sets):
            sel = sets == name
            regs, counts = np.unique(guess_p[sel], return_counts=True)
            report["probes"][name] = {"label": rows[int(np.argmax(sel))]["label"], "n": int(sel.sum()),
                                      "flagged_one": float((s[sel] > th_model).mean()),
                                      "flagged_per_register": float((s[sel] > th_p[sel]).mean()),
                                      "guessed": {str(r): int(c) for r, c in zip(regs, counts)}}
    return report


def to_markdown(r: dict) -> str:
    pct = lambda x: "–" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    ths = ", ".join(f"{g} {v:.3f}" for g, v in r["register_thresholds"].items())
    out = [f"# One text threshold or one per register ({r['date']}, {r['machine']})", "",
           f"Model `{r['model']}` ({r['model_id']}); its threshold {r['threshold']:.3f}. Register thresholds "
           f"(register guessed by a logistic regression on the embedding's direction, "
           f"{100 * r['register_accuracy_test']:.0f} % right on the test split's five source groups): {ths}.", "",
           f"`python scripts/register_thresholds.py --model {r['model']}"
           + (" --probes PROBES.csv" if "probes" in r else "") + " --out OUT`. "
           "One: the model's threshold for every text; per register: the threshold of the register guessed for "
           "the text. Test split: FPR on safe texts, TPR on unsafe ones, per register.", "",
           "| test register | safe / unsafe | FPR one / per register | TPR one / per register |", "|---|---|---|---|"]
    for k, row in r["test"].items():
        a, b = row["one"], row["per_register"]
        out.append(f"| {k} | {a['n_safe']} / {a['n_unsafe']} | {pct(a.get('fpr'))} / {pct(b.get('fpr'))} | "
                   f"{pct(a.get('tpr'))} / {pct(b.get('tpr'))} |")
    if "probes" in r:
        out += ["", "Probe sets (`--probes`): texts of registers no source carries, share flagged under each rule and the "
                "registers guessed for them.", "",
                "| probe set | label | n | flagged: one / per register | registers guessed |", "|---|---|---|---|---|"]
        for k, row in r["probes"].items():
            out.append(f"| {k} | {row['label']} | {row['n']} | {pct(row['flagged_one'])} / "
                       f"{pct(row['flagged_per_register'])} | {row['guessed']} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hysac-mini", help="model name or folder (with training_config.json)")
    ap.add_argument("--probes", type=Path, help="CSV (text, label, set) of texts from registers no source carries")
    ap.add_argument("--out", required=True, help="output path without extension (.json and .md are written)")
    a = ap.parse_args()
    r = run(a.model, a.probes)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(r, indent=2))
    Path(a.out + ".md").write_text(to_markdown(r))
    print(to_markdown(r))


if __name__ == "__main__":
    main()
