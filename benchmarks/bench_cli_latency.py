#!/usr/bin/env python
"""How long the CLI takes to answer, this tree against a baseline revision, in ONE run.

Each command runs as a fresh process (``python -m hysac.cli …``: what a user's shell starts; the OS file cache is
warm after the first round, so this is the time of the Python process itself, not of a cold disk). The baseline is a
``git worktree`` of ``--baseline`` (default: the last commit before the lazy-import change) run with the same
interpreter and packages through ``PYTHONPATH``. Rounds alternate baseline / current so that a load change on the
shared machine hits both alike; the result is the median over ``--rounds``.

Commands (the issue's): ``hysac --help``; ``hysac classify --text "a cat"`` (loads the shipped model, encodes one
text); ``hysac classify --image examples/cat.jpg``; ``hysac search`` over a small index built first.

Writes ``benchmarks/results/cli_latency.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BASELINE = "9ffac48"


def commands(index: Path) -> dict[str, list[str]]:
    return {
        "help": ["--help"],
        "classify_text": ["classify", "--text", "a cat"],
        "classify_image": ["classify", "--image", str(ROOT / "examples" / "cat.jpg")],
        "search_text": ["search", "--index", str(index), "--text", "a knife fight", "--k", "3"],
    }


def run_once(src: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hysac.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{src}: hysac {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hysac-cli-latency-"))
    base_tree = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.baseline], cwd=ROOT, check=True,
                   capture_output=True)
    trees = {"baseline": base_tree / "src", "current": ROOT / "src"}
    try:
        index = work / "index"
        gallery = work / "gallery.csv"
        gallery.write_text("text\na bowl of fruit\na knife fight in a dark alley\ntwo dogs playing\n")
        subprocess.run([sys.executable, "-m", "hysac.cli", "index", "build", str(gallery), "--out", str(index)],
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(trees["current"])}, check=True,
                       capture_output=True)
        cmds = commands(index)
        times: dict[str, dict[str, list[float]]] = {name: {t: [] for t in trees} for name in cmds}
        for r in range(args.rounds):
            for name, argv in cmds.items():
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for tree in order:
                    times[name][tree].append(run_once(trees[tree], argv))
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n} {times[n]['baseline'][-1]:.2f}/{times[n]['current'][-1]:.2f}s" for n in cmds), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    rows = {name: {tree: round(statistics.median(v), 3) for tree, v in per.items()} for name, per in times.items()}
    for row in rows.values():
        row["ratio"] = round(row["baseline"] / row["current"], 2)
    payload = {"machine": machine(), "baseline": args.baseline, "rounds": args.rounds,
               "commands": {n: " ".join(["hysac", *a]).replace(f"{ROOT}/", "")
                            for n, a in commands(Path("IDX")).items()},
               "median_s": rows, "all_s": times}
    lines = ["# CLI latency: fresh process per command, baseline vs current", "",
             f"{payload['machine']['date']}, {payload['machine']['cpu']} ({payload['machine']['cpu_count']} CPUs), "
             f"python {payload['machine']['python']}, torch {payload['machine']['torch']}; baseline "
             f"`{args.baseline}`, median of {args.rounds} alternating rounds (OS file cache warm).", "",
             "| command | baseline s | current s | speed-up |", "|---|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| `{payload['commands'][name]}` | {row['baseline']:.2f} | {row['current']:.2f} | "
                     f"{row['ratio']:.2f}× |")
    write("cli_latency", payload, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
