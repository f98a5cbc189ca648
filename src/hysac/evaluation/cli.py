"""``hysac eval``: the paper's evaluation protocol in one command (mounted by :mod:`hysac.cli`)."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError


def eval_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="YAML eval config (models, datasets, baselines, output folder). "
                                               "Default: hysac-mini on the offline dev test split."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Evaluate only this model (registry name, folder or hub id), "
                                             "replacing the config's models."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: the config's out)."),
    dataset: List[str] = typer.Option([], "--dataset", "-d",
                                      help="Keep only these datasets of the config (by name; repeatable)."),
    limit: Optional[int] = typer.Option(None, "--limit",
                                        help="Quick run: at most N texts per source / rows per dataset."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the figures."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the on-disk cache of frozen base "
                                                              "features (every input is encoded)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
    loso: Optional[Path] = typer.Option(None, "--loso", help="Leave-one-source-out instead: train this training "
                                                             "config once per held-out source group and report "
                                                             "FPR / TPR / AUROC on it with the baselines "
                                                             "(writes loso.json / loso.md; default out reports/loso)."),
    group: List[str] = typer.Option([], "--group", help="With --loso: only these held-out groups (repeatable; "
                                                     "prompts, captions, requests, moderation, tweets, or "
                                                     "extra:<file stem> for a table of data.corpus.extra)."),
    setting: List[str] = typer.Option([], "--set", help="With --loso: training-config override KEY=VALUE, e.g. "
                                                         "backbone.text_lora=null (repeatable)."),
    baseline: List[str] = typer.Option([], "--baseline", help="With --loso: only these baselines (repeatable; "
                                                               "euclidean-probe, safe-clip, profanity-check, "
                                                               "hysac-mini; default all)."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="With --loso: the recipe alone."),
    reference: str = typer.Option("hysac-mini", "--reference", help="With --loso: the model scored as the "
                                                                    "hysac-mini baseline (name or folder)."),
    reference_label: Optional[str] = typer.Option(None, "--reference-label", help="With --loso: how the report "
                                                  "names the --reference model (default: its name or folder)."),
) -> None:
    """Run retrieval (Tables 1/2/8), classification (Tables 5/6), redirection quality, baselines and figures;
    write report.md, metrics.json and PNGs to the output folder."""
    if loso is not None:
        from .loso import BASELINES, run_loso, to_markdown

        if not loso.is_file():
            raise InputError(f"--loso {loso}: no such training config")
        log = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
        if no_baselines and baseline:
            raise InputError("--baseline and --no-baselines contradict each other; give one")
        chosen = () if no_baselines else tuple(baseline) or BASELINES
        report = run_loso(loso, out or Path("reports/loso"), groups=group or None, overrides=setting, log=log,
                          reference=reference, reference_label=reference_label, baselines=chosen)
        typer.echo(to_markdown(report))
        return
    from .config import ModelSpec, load_config
    from .runner import run_evaluation

    cfg = load_config(config)
    if model is not None:
        if not model.strip():
            raise InputError("--model must not be empty")
        cfg.models = [ModelSpec(name="", path=model)]  # the model's own name (config "name") labels it
    if dataset:
        names = [d.name for d in cfg.datasets]
        bad = [d for d in dataset if d not in names]
        if bad:
            raise InputError(f"unknown dataset(s) {', '.join(bad)}; the config has {', '.join(names)}")
        cfg.datasets = [d for d in cfg.datasets if d.name in dataset]
    if limit is not None:
        if limit < 1:
            raise InputError(f"--limit must be >= 1, got {limit}")
        for d in cfg.datasets:
            d.options["limit"] = limit
    if no_plots:
        cfg.plots = False
    if no_cache:
        cfg.cache = None
    out_dir = out or cfg.out
    log = (lambda msg: None) if quiet else (lambda msg: typer.echo(msg, err=True))
    if not quiet:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        logging.getLogger("hysac.evaluation.encoders").setLevel(logging.INFO)
    command = "hysac eval " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 and \
        Path(sys.argv[0]).name in ("hysac", "hysac.exe", "__main__.py", "cli.py") else _reconstruct(
        config, model, out, dataset, limit, no_plots, no_cache)
    res = run_evaluation(cfg, out=Path(out_dir), command=command, log=log)
    typer.echo(f"wrote {Path(out_dir) / 'report.md'}, {Path(out_dir) / 'metrics.json'} and "
               f"{len(res.get('figures', []))} figures ({res['timing_s']['total']:.0f} s)")


def _reconstruct(config, model, out, dataset, limit, no_plots, no_cache=False) -> str:
    parts = ["hysac", "eval"]
    if config is not None:
        parts += ["--config", str(config)]
    if model is not None:
        parts += ["--model", model]
    if out is not None:
        parts += ["--out", str(out)]
    for d in dataset:
        parts += ["--dataset", d]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if no_plots:
        parts.append("--no-plots")
    if no_cache:
        parts.append("--no-cache")
    return " ".join(shlex.quote(p) for p in parts)
