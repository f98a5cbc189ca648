"""Stage 6 — command line: ``hysac index build|add|info`` (:data:`index_app`) and ``hysac search``
(:func:`search_command`, mounted by the main CLI).

Bad input (missing SRC/index, empty query, unknown mode, index of another model, …) prints one line
``error: …`` on stderr and exits with code 2, without a traceback. Models are loaded with
``hysac.model.load_model(name_or_path)``; ``search`` defaults to the model recorded in the index.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from ..errors import HySACError, InputError

__all__ = ["index_app", "search_command", "build_command", "add_command", "info_command"]

index_app = typer.Typer(
    name="index",
    help="Build, extend and inspect safety-aware hyperbolic search indexes.",
    no_args_is_help=True,
    add_completion=False,
)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Turn hysac errors into one line on stderr and exit code 2."""
    try:
        yield
    except HySACError as e:
        msg = " ".join(str(e).split())
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted (committed batches are kept; rerun to resume)", err=True)
        raise typer.Exit(130) from None


def _load_model(name: str | None, fast: bool = False) -> Any:
    try:
        mod = importlib.import_module("hysac.model")
    except ImportError as e:
        typer.echo(f"error: cannot import hysac.model ({e})", err=True)
        raise typer.Exit(1) from None
    m = mod.load_model(name) if name is not None else mod.load_model()
    if fast:
        from ..fast import optimize

        optimize(m)
    return m


def _model_factory(name: str | None, fast: bool = False):
    def factory():
        return _load_model(name, fast)

    return factory


def _run_job(job, src: Path, dest: Path, model_name: str | None, *, engine: str, batch_size: int, column: str,
             ray_concurrency: int, progress: bool, json_out: bool, fast: bool, **kw: Any) -> None:
    """What ``build`` and ``add`` share: load the model (on the fast path if asked; each Ray actor loads its own
    the same way), run ``job`` (``build_index`` / ``add_to_index``), print its report."""
    from ..extras import require

    require("index")
    if engine == "ray":
        require("ray")
    m = _load_model(model_name, fast)
    report = job(src, dest, m, batch_size=batch_size, engine=engine, column=column, progress=progress,
                 model_factory=_model_factory(model_name, fast) if engine == "ray" else None,
                 ray_options={"concurrency": ray_concurrency} if engine == "ray" else None, **kw)
    _print_report(report, json_out)


def _print_report(report: Any, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(report.to_dict()))
        return
    c = report.counts
    typer.echo(
        f"{report.index}: +{report.added} items added, {report.updated} updated, {report.removed} removed, "
        f"{report.unchanged} unchanged ({report.errors} errors) in {report.seconds:.1f}s; index holds "
        f"{c.get('total', 0)} items ({c.get('text', 0)} text, {c.get('image', 0)} image)"
    )


EngineOpt = Annotated[str, typer.Option("--engine", help="local (this process) or ray (Ray Data actors)")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", help="items per committed batch")]
ColumnOpt = Annotated[str, typer.Option("--column", help="table column to index: auto, text or image")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print the report as JSON")]
RayOpt = Annotated[int, typer.Option("--ray-concurrency", help="Ray model actors")]
FastOpt = Annotated[bool, typer.Option(
    "--fast", help="fast inference path (hysac.fast: GPU when CUDA is available, else CPU; same embeddings to "
                   "float/bf16 tolerance)")]


@index_app.command("build")
def build_command(
    src: Annotated[Path, typer.Argument(help="image folder or CSV/JSONL/parquet table with a text or image column")],
    out: Annotated[Path, typer.Option("--out", "-o", help="index directory to create (or resume)")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="model name or path")] = None,
    batch_size: BatchOpt = 256,
    engine: EngineOpt = "local",
    ann: Annotated[Optional[str], typer.Option(
        "--ann", help="none (exact IndexFlatIP) or hnsw; default: none for a new index, unchanged when resuming")] = None,
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", help="HNSW M")] = 32,
    ef_construction: Annotated[int, typer.Option("--ef-construction", help="HNSW efConstruction")] = 200,
    ef_search: Annotated[int, typer.Option("--ef-search", help="HNSW efSearch (default at query time)")] = 256,
    column: ColumnOpt = "auto",
    ray_concurrency: RayOpt = 1,
    progress: ProgressOpt = True,
    json_out: JsonOpt = False,
    fast: FastOpt = False,
) -> None:
    """Index SRC into a new directory OUT (rerun the same command to resume an interrupted build, or to bring the
    index in line with SRC after rows/files were edited, added or deleted)."""
    from .ann import AnnConfig
    from .reader import open_source
    from .runner import build_index, _check
    from .store import IndexStore

    with _errors():
        _check(engine, batch_size)
        ann_cfg = None if ann is None else AnnConfig(type=ann, M=hnsw_m, efConstruction=ef_construction,
                                                     efSearch=ef_search)
        open_source(src, column=column)  # validate SRC before loading the model
        if IndexStore.exists(out) and model is None:
            model = IndexStore.read_info(out).get("model_source")
        _run_job(build_index, src, out, model, engine=engine, batch_size=batch_size, column=column,
                 ray_concurrency=ray_concurrency, progress=progress, json_out=json_out, fast=fast, ann=ann_cfg,
                 model_source=model)


@index_app.command("add")
def add_command(
    src: Annotated[Path, typer.Argument(help="image folder or table to append")],
    index: Annotated[Path, typer.Option("--index", "-x", help="existing index directory")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="model (default: the index's)")] = None,
    batch_size: BatchOpt = 256,
    engine: EngineOpt = "local",
    column: ColumnOpt = "auto",
    ray_concurrency: RayOpt = 1,
    progress: ProgressOpt = True,
    json_out: JsonOpt = False,
    fast: FastOpt = False,
) -> None:
    """Append SRC to an existing index (refuses a model other than the index's); rerun it to bring the index in
    line with SRC after rows/files were edited or deleted."""
    from .reader import open_source
    from .runner import _check, add_to_index
    from .store import IndexStore

    with _errors():
        _check(engine, batch_size)
        info = IndexStore.read_info(index)
        open_source(src, column=column)
        name = model if model is not None else info.get("model_source") or info["model_id"]
        _run_job(add_to_index, src, index, name, engine=engine, batch_size=batch_size, column=column,
                 ray_concurrency=ray_concurrency, progress=progress, json_out=json_out, fast=fast)


@index_app.command("info")
def info_command(
    index: Annotated[Path, typer.Argument(help="index directory")],
    json_out: JsonOpt = False,
) -> None:
    """Describe an index: model, geometry, ANN, counts, errors, sources."""
    from .store import IndexStore

    with _errors():
        with IndexStore(index) as store:
            info = store.summary()
        if json_out:
            typer.echo(json.dumps(info, indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"hysac index {index}", show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value")
        c = info["counts"]
        ann = info.get("ann", {})
        rows = [
            ("model", f"{info['model_id']} (source: {info.get('model_source')})"),
            ("geometry", f"{info['embed_dim']}-d Lorentz, curvature -{info['curvature']:g}"),
            ("ann", ", ".join(f"{k}={v}" for k, v in ann.items())),
            ("engine", str(info.get("engine"))),
            ("items", f"{c['total']} live ({c['text']} text, {c['image']} image), {info.get('removed', 0)} removed"),
            ("errors", str(info.get("errors", 0))),
            ("created / updated", f"{info.get('created')} / {info.get('updated')}"),
        ]
        for s in info.get("sources", []):
            rows.append(("source", f"{s['path']} ({s['kind']}, {s['modality']}, {s['engine']})"))
        for r in rows:
            t.add_row(*r)
        Console().print(t)


@index_app.command("verify")
def verify_command(
    index: Annotated[Path, typer.Argument(help="index directory")],
    json_out: JsonOpt = False,
) -> None:
    """Check every byte of an index against its recorded checksums (shards, FAISS files, item rows); exit 2 and
    one line per damaged file when anything does not match."""
    from .store import IndexStore

    with _errors():
        with IndexStore(index) as store:
            problems = store.verify(progress=not json_out)
            n = store.count()
            live = store.live_count()
        if json_out:
            typer.echo(json.dumps({"index": str(index), "items": n, "live": live, "removed": n - live,
                                   "ok": not problems, "problems": problems}))
        elif not problems:
            typer.echo(f"index {index}: {n} items ({live} live, {n - live} removed), every shard and FAISS file "
                       "matches its checksum")
        for p in problems if not json_out else ():
            typer.echo(f"damaged: {p}", err=True)
        if problems:
            raise typer.Exit(2)


def _read_text_file(path: Path) -> list[str]:
    """Query lines of ``path`` (blank lines skipped); a line that is not UTF-8 stops the search with an error
    naming ``file:line`` (the per-line reader ``hysac classify`` uses)."""
    from ..classify import read_text_lines

    queries = []
    for text, err in read_text_lines(path):
        if err is None:
            queries.append(text)
        elif text:  # not a blank line: undecodable
            raise InputError(f"query file {err}")
    return queries


def _print_tables(results: list[Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..safety import top_category

    console = Console()
    for qr in results:
        flag = " [red](unsafe)[/red]" if qr.query_unsafe else ""
        if qr.query_truncated:
            flag += " (longer than the model reads: searched by its opening)"
        t = Table(title=f"{qr.query_modality} query: {escape(repr(qr.query))}{flag} — mode {qr.mode} "
                        f"(safety score {qr.query_safety_score:.3f})", title_justify="left")
        for col in ("#", "dist", "safety", "unsafe", "modality", "text / path", "top category"):
            t.add_column(col, overflow="fold")
        for r in qr.results:
            top = ""
            best = top_category(r.categories, r.unsafe)  # shown only for an unsafe item
            if best is not None:
                top = f"{best['name']} {best['probability']:.2f}"
            content = r.content if len(r.content) <= 80 else r.content[:77] + "..."
            flag_r = "yes" if r.unsafe else ("?" if r.unsafe is None else "")
            t.add_row(str(r.rank), f"{r.distance:.4f}", f"{r.safety_score:.4f}", flag_r, r.modality,
                      escape(content), escape(top))
        if not qr.results:
            t.add_row("-", "", "", "", "", "(no results)", "")
        console.print(t)


def search_command(
    index: Annotated[Path, typer.Option("--index", "-x", help="index directory")],
    text: Annotated[Optional[list[str]], typer.Option("--text", "-t", help="text query (repeatable)")] = None,
    text_file: Annotated[Optional[Path], typer.Option("--text-file", help="file with one text query per line")] = None,
    image: Annotated[Optional[list[Path]], typer.Option("--image", "-i", help="image query (repeatable)")] = None,
    mode: Annotated[str, typer.Option("--mode", help="off | filter | redirect | redirect+filter | seek-unsafe")] = "off",
    k: Annotated[int, typer.Option("-k", "--k", help="results per query")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per query (JSON lines)")] = False,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="model (default: the index's)")] = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="search only 'text' or 'image' items")] = None,
    rerank: Annotated[str, typer.Option("--rerank", help="none | entail (entailment re-rank of top k')")] = "none",
    ef_search: Annotated[Optional[int], typer.Option("--ef-search", help="HNSW efSearch")] = None,
) -> None:
    """Search an index with text and/or image queries, with a safety mode.

    Queries are answered in the order: --text values, then --text-file lines, then --image values.
    """
    from ..extras import require

    require("index")
    from .search import MODES, RERANKS, IndexSearcher
    from .store import MODALITIES, IndexStore

    with _errors():
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if rerank not in RERANKS:
            raise InputError(f"unknown rerank {rerank!r}; use one of {', '.join(RERANKS)}")
        if modality is not None and modality not in MODALITIES:
            raise InputError(f"unknown modality {modality!r}; use text or image")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        info = IndexStore.read_info(index)
        texts = list(text or [])
        for i, t in enumerate(texts):
            if not t.strip():
                raise InputError(f"empty query (--text #{i + 1})")
        if text_file is not None:
            texts += _read_text_file(text_file)
        images = list(image or [])
        for p in images:
            if not p.is_file():
                raise InputError(f"image query not found: {p}")
        if not texts and not images:
            raise InputError("empty query: give --text, --text-file or --image")
        name = model if model is not None else info.get("model_source") or info["model_id"]
        m = _load_model(name)
        with IndexSearcher(index, m, ef_search=ef_search) as searcher:
            results = searcher.search_queries(texts, images, k=k, mode=mode, modality=modality, rerank=rerank)
        if json_out:
            for qr in results:
                sys.stdout.write(json.dumps(qr.to_dict(), ensure_ascii=False) + "\n")
            sys.stdout.flush()
        else:
            _print_tables(results)


#: a standalone app for ``python -m hysac.index.cli`` / testing: ``index`` commands plus ``search``
def _standalone() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True)
    app.add_typer(index_app, name="index")
    app.command("search")(search_command)
    return app


if __name__ == "__main__":  # pragma: no cover
    _standalone()()
