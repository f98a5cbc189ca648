"""``hysac`` command line: a thin typer layer over the library.

Every command turns :class:`hysac.errors.HySACError` into a one-line message on stderr and exit code 2 — never a
traceback for bad input. Usage errors (an unknown option, ``--k ten``) are one line with exit code 2 too, and
texts and paths are checked (:mod:`hysac.inputs`) before a model is loaded.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperGroup

try:  # typer ships its own copy of click (typer._click); older typers use click itself
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - depends on the typer version
    from click import exceptions as _click_errors

from .errors import HySACError
from .inputs import MAX_TEXT_CHARS, one_line, path_problem, text_problem


class OneLineErrors(TyperGroup):
    """The root command group: a usage error (unknown option, a value of the wrong type, a missing option) is
    printed as one line ``error: …`` naming the option and the reason, with exit code 2, instead of a boxed
    panel; a bare ``hysac`` / ``hysac index`` still prints the help page."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click_errors.ClickException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # the help page is already printed
                sys.exit(e.exit_code)
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {one_line(e.format_message())}{hint}", err=True)
            sys.exit(e.exit_code)
        except (typer.Abort, getattr(_click_errors, "Abort", typer.Abort)):
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, cls=OneLineErrors,
                  help="Safety-aware vision-language embeddings in hyperbolic space (HySAC).")

ModelOpt = typer.Option(None, "--model", "-m", help="Model name (e.g. hysac-mini), local folder or hub repo id. "
                                                    "Default: the shipped offline model.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("hysac")
        except PackageNotFoundError:  # running from a source tree that is not installed
            from . import __version__ as v
        typer.echo(f"hysac {v}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the installed hysac version and exit."),
) -> None:
    """Safety-aware vision-language embeddings in hyperbolic space (HySAC)."""


def _fail(msg: str) -> None:
    typer.echo(f"error: {one_line(msg)}", err=True)
    raise typer.Exit(2)


#: the parameters of a command that name input files or folders (checked by :func:`friendly` before the command
#: runs); a list parameter is checked item by item
_PATH_PARAMS = {"text_file": "--text-file", "image": "--image", "out": "--out", "index": "--index", "src": "SRC",
                "config": "--config"}


def _check_path_args(kwargs: dict) -> None:
    for name, flag in _PATH_PARAMS.items():
        value = kwargs.get(name)
        if not value or isinstance(value, bool):
            continue
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for i, p in enumerate(items, start=1):
            if not isinstance(p, (str, Path)):
                continue
            why = path_problem(p)
            if why is not None:
                _fail(f"{flag}{f' #{i}' if len(items) > 1 else ''}: {why}")


def friendly(fn):
    """Run a command body, mapping expected errors to a one-line message and exit code 2. File-name arguments
    that are not valid UTF-8 are refused before the body runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _check_path_args(kwargs)
        try:
            return fn(*args, **kwargs)
        except HySACError as e:
            _fail(str(e))
        except ModuleNotFoundError as e:  # an optional part's package (an extra) is not installed
            from .extras import missing_package_message

            _fail(missing_package_message(e.name))
        except FileNotFoundError as e:
            _fail(f"file not found: {e.filename or e}")
        except RecursionError:
            # e.g. a JSON value nested thousands of levels deep in a table or metadata file
            inputs = [str(kwargs[k]) for k in ("src", "text_file", "config") if kwargs.get(k)]
            _fail(f"{', '.join(inputs) or 'the input'}: nested too deeply to read (a JSON value or structure "
                  "deeper than Python's recursion limit)")
        except UnicodeEncodeError as e:
            if "surrogates" not in str(e.reason):
                raise
            bad = one_line(e.object[max(0, e.start - 60):e.end + 20]) if isinstance(e.object, str) else ""
            _fail(f"not valid UTF-8 (a file name or text with undecodable bytes): ...{bad}...")
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _check_number(name: str, value: Optional[float], lo: float = 0.0, hi: float = 1e6) -> None:
    """A finite number in [lo, hi] (the bounds the service applies too), else a one-line error."""
    import math

    if value is not None and not (math.isfinite(value) and lo <= value <= hi):
        _fail(f"{name} must be a finite number in [{lo:g}, {hi:g}], got {value}")


def _check_texts(texts: List[str], what: str = "--text") -> None:
    """What the service refuses too (:func:`hysac.inputs.text_problem`): empty texts, texts over
    :data:`~hysac.inputs.MAX_TEXT_CHARS` characters, undecodable bytes (non-UTF-8 arguments arrive as lone
    surrogates) and control characters."""
    for i, t in enumerate(texts, start=1):
        problem = text_problem(t, MAX_TEXT_CHARS)
        if problem is not None:
            _fail(f"{what} #{i} {problem[1]}")


def _image_paths(image: List[Path]) -> List[Path]:
    """``--image`` files and folders → image files (folders expanded); a file name that is not valid UTF-8, given or
    found in a folder, is refused naming it."""
    from .images import expand_image_paths

    paths = expand_image_paths(image) if image else []
    for p in paths:
        why = path_problem(p)
        if why is not None:
            _fail(f"--image: {why}")
    return paths


def _check_out_file(out: Path, what: str = "--out") -> None:
    """Refuse an output path that cannot be written, before any work: a folder, a device or other special file,
    or a place where the file cannot be created."""
    if str(out) in ("", "."):
        _fail(f"{what} is empty: give a file name")
    if out.is_dir():
        _fail(f"{what} {out} is a directory; give a file name")
    if out.exists() and not out.is_file():
        _fail(f"{what} {out} is not a regular file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _fail(f"cannot create the folder of {what} {out}: {e.strerror or e}")
    if not out.parent.is_dir():
        _fail(f"cannot write {what} {out}: {out.parent} is not a directory")
    import os
    import tempfile

    try:  # a file can be created there (a read-only or virtual file system such as /proc says no here)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        _fail(f"cannot write {what} {out}: {e.strerror or e}")


def _save_safetensors(tensors: dict, out: Path, metadata: dict) -> None:
    """Write ``out`` through a temporary file in the same folder (no half-written file on failure); a write
    error is a one-line message naming the file."""
    import os
    import tempfile

    from safetensors.torch import save_file

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
    except OSError as e:
        _fail(f"cannot write --out {out}: {e.strerror or e}")
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, out)
    except Exception as e:  # noqa: BLE001 - OSError, or safetensors' own error type wrapping one
        _fail(f"cannot write --out {out}: {one_line(str(e))}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(model: Optional[str]):
    from .model import load_model

    return load_model(model)


@app.command()
@friendly
def models() -> None:
    """List the named pretrained models."""
    from .pretrained import REGISTRY, list_pretrained

    for name in list_pretrained():
        e = REGISTRY[name]
        where = "shipped" if e.local_dir is not None else f"hub: {e.hub_repo}"
        typer.echo(f"{name:20s} {where:28s} {e.description}")


@app.command()
@friendly
def classify(
    text: List[str] = typer.Option([], "--text", "-t", help="Text to classify (repeatable)."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="File with one text per line."),
    image: List[Path] = typer.Option([], "--image", "-i", help="Image file or folder (repeatable)."),
    model: Optional[str] = ModelOpt,
    threshold: Optional[float] = typer.Option(None, help="Decision threshold on the score (default: the model's)."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per input, in input order."),
    fast: bool = typer.Option(False, "--fast", help="Fast inference path (hysac.fast: GPU when CUDA is available, "
                                                    "else CPU; same scores to float/bf16 tolerance)."),
) -> None:
    """Score texts and images: distance from the origin (higher = more unsafe), unsafe flag, categories."""
    from .classify import classify_images, classify_texts, read_text_lines

    _check_texts(list(text))
    _check_number("--threshold", threshold, lo=0.0)
    items: list = list(text)
    if text_file is not None:
        items += read_text_lines(text_file)
    paths = _image_paths(image)
    if not items and not paths:
        _fail("nothing to classify: give --text, --text-file or --image")
    m = _load(model)
    if fast:
        from .fast import optimize

        optimize(m)
    results = (classify_texts(m, items, threshold) if items else []) + (
        classify_images(m, paths, threshold) if paths else [])
    if json_out:
        for r in results:
            typer.echo(json.dumps(r.to_dict(), ensure_ascii=False))
    else:
        _print_classification(results, m.backbone.max_text_tokens())
    if results and all(r.error for r in results):
        typer.echo(f"error: none of the {len(results)} inputs could be classified", err=True)
        raise typer.Exit(2)


def _print_classification(results, max_tokens: int | None = None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("input", "score", "verdict", "top categories"):
        table.add_column(col, overflow="fold")
    for r in results:
        shown = escape(one_line(r.input[:80]))  # an input is data, never rich markup or terminal codes
        if r.error:
            table.add_row(shown, "-", "[yellow]error[/yellow]", escape(one_line(r.error)))
            continue
        verdict = "[red]UNSAFE[/red]" if r.unsafe else "[green]safe[/green]"
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r.categories.items(), key=lambda kv: -kv[1])[:3]
                        if r.unsafe)
        table.add_row(shown, f"{r.score:.3f}" + (" *" if r.truncated else ""), verdict, top)
    Console().print(table)
    cut = sum(1 for r in results if r.truncated)
    if cut:
        typer.echo(f"* {cut} text{'s are' if cut > 1 else ' is'} longer than the model reads ({max_tokens} tokens): "
                   "judged on the opening only; split long documents into passages to have every part judged")


@app.command()
@friendly
def encode(
    text: List[str] = typer.Option([], "--text", "-t", help="Text to encode (repeatable)."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="UTF-8 file with one text per line."),
    image: List[Path] = typer.Option([], "--image", "-i", help="Image file or folder (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output .safetensors file (embeddings + scores)."),
    model: Optional[str] = ModelOpt,
    project: bool = typer.Option(True, help="--no-project: Euclidean tower features instead of hyperboloid points."),
) -> None:
    """Encode inputs and save embeddings, safety scores and inputs to a safetensors file."""
    from .classify import read_text_lines

    _check_texts(list(text))
    _check_out_file(out)
    texts = list(text)
    if text_file is not None:
        lines = read_text_lines(text_file)
        bad = [e for _, e in lines if e]
        if bad:
            _fail(bad[0])
        texts += [t for t, _ in lines]
    paths = _image_paths(image)
    if not texts and not paths:
        _fail("nothing to encode: give --text, --text-file or --image")
    m = _load(model)
    tensors, meta = {}, {"model_id": m.model_id, "curvature": str(m.curvature)}
    if texts:
        e = m.encode_text(texts, project=project, progress=True)
        tensors["text_embeddings"] = e.contiguous()
        if project:
            tensors["text_scores"] = m.score(e).contiguous()
        meta["texts"] = json.dumps(texts, ensure_ascii=False)
    if paths:
        e = m.encode_image(paths, project=project, progress=True)
        tensors["image_embeddings"] = e.contiguous()
        if project:
            tensors["image_scores"] = m.score(e).contiguous()
        meta["images"] = json.dumps([str(p) for p in paths])
    _save_safetensors(tensors, out, meta)
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))


@app.command()
@friendly
def traverse(
    text: List[str] = typer.Option([], "--text", "-t", help="Text query (repeatable)."),
    image: List[Path] = typer.Option([], "--image", "-i", help="Image query file or folder (repeatable)."),
    target: str = typer.Option("image", help="Safe region to move toward: 'image' (class V) or 'text' (class S)."),
    tau: Optional[float] = typer.Option(None, help="Target radius (default: the model's redirect radius for the "
                                                    "target, as search --mode redirect uses it; which queries move "
                                                    "is the model's rule either way)."),
    mode: str = typer.Option("geodesic", help="'geodesic' (exact distance tau) or 'paper' (official output)."),
    model: Optional[str] = ModelOpt,
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object per query."),
) -> None:
    """Show how queries move toward the safe region: score before and after traversal."""
    import torch

    if target not in ("image", "text"):
        _fail(f"unknown target {one_line(target)!r}; use 'image' or 'text'")
    if mode not in ("geodesic", "paper"):
        _fail(f"unknown --mode {one_line(mode)!r}; use 'geodesic' or 'paper'")
    _check_texts(list(text))
    _check_number("--tau", tau)
    images = _image_paths(image)
    inputs = list(text) + [str(p) for p in images]
    if not inputs:
        _fail("nothing to traverse: give --text or --image")
    m = _load(model)
    parts = []
    if text:
        parts.append(m.encode_text(list(text)))
    if images:
        parts.append(m.encode_image(images))
    x = torch.cat(parts)
    from .policy import Mode

    # what `search --mode redirect` does before searching a `target` gallery (hysac.policy)
    mods = ["text"] * len(text) + ["image"] * len(images)
    mv = m.policy.move(x, Mode.REDIRECT, target, query=mods, tau=tau, how=mode)  # type: ignore[arg-type]
    before, after = m.score(x), m.score(mv.points)
    cut = m.text_cut(list(text)) + [None] * len(images)  # text_cut([]) is []
    for i, (inp, b, a) in enumerate(zip(inputs, before.tolist(), after.tolist())):
        row = {"input": inp, "target": target, "score_before": round(b, 5), "score_after": round(a, 5),
               "radius": mv.radius, "moved": bool(mv.moved[i]), "status": mv.describe(i), "truncated": cut[i]}
        typer.echo(json.dumps(row, ensure_ascii=False) if json_out else
                   f"{b:8.4f} -> {a:8.4f}  {'moved' if row['moved'] else 'kept '}  {one_line(inp)}"
                   + ("  (longer than the model reads: its opening)" if cut[i] else ""))


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("hysac-demo"), "--out", help="Working folder for galleries and indexes."),
    model: Optional[str] = ModelOpt,
    k: int = typer.Option(3, help="Results per query."),
) -> None:
    """The main job: index an emoji gallery and a text gallery, classify, and search in every safety mode."""
    from .demo import run_demo
    from .extras import require

    require("index")

    run_demo(out, model, k=k, echo=typer.echo)


@app.command()
@friendly
def train(
    config: Path = typer.Option(..., "--config", "-c", help="YAML training config."),
    overrides: List[str] = typer.Argument(None, help="Overrides as dotted key=value, e.g. optim.lr=3e-4"),
    resume: bool = typer.Option(True, help="Resume from the latest checkpoint in the output folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the config and every data source it reads, print "
                                                           "the split sizes and outputs as JSON, train nothing."),
    finish_from: Optional[str] = typer.Option(
        None, "--finish-from", help="Train nothing: take the weights of a model this config trained (folder or "
                                    "name, e.g. hysac-mini) and run only the final stage on them (category head "
                                    "refit, thresholds, metrics, export)."),
) -> None:
    """Train a HySAC (or Safe-CLIP-objective) model from a config file."""
    from .train import load_config, run_training

    cfg = load_config(config, overrides or [])
    if dry_run:
        from .train.data import preflight

        plan = preflight(cfg)
        if finish_from is not None:
            from .train.trainer import finish_weights

            plan["finish_from"] = str(finish_weights(finish_from))
        typer.echo(json.dumps(plan, indent=2))
        return
    result = run_training(cfg, resume=resume, finish_from=finish_from)
    typer.echo(json.dumps(result, indent=2))


#: the largest ``--ef-search`` accepted (FAISS keeps it in a C int; far past any useful recall)
MAX_EF_SEARCH = 1_000_000


def _checked_search(fn):
    """``hysac search`` with the main CLI's checks first: the ``--text`` checks of classify (and the service), and
    ``--ef-search`` in 1..:data:`MAX_EF_SEARCH`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        for i, t in enumerate(kwargs.get("text") or [], start=1):
            problem = text_problem(t, MAX_TEXT_CHARS)
            if problem is not None:
                _fail(f"empty query (--text #{i})" if problem[0] == "empty_query" else f"--text #{i} {problem[1]}")
        ef = kwargs.get("ef_search")
        if ef is not None and not 1 <= ef <= MAX_EF_SEARCH:
            _fail(f"--ef-search must be between 1 and {MAX_EF_SEARCH}, got {ef}")
        return fn(*args, **kwargs)

    return wrapper


def _guarded(sub: typer.Typer) -> typer.Typer:
    """A copy of the sub-app ``sub`` whose commands run through :func:`friendly` (``sub`` itself is unchanged)."""
    import copy

    out = copy.copy(sub)
    out.registered_commands = []
    for info in sub.registered_commands:
        guarded = copy.copy(info)
        guarded.callback = friendly(info.callback)
        out.registered_commands.append(guarded)
    return out


def _mount_optional() -> None:
    """Attach sub-apps that live in their own modules (index/search/serve/eval)."""
    try:
        from .index.cli import index_app, search_command

        app.add_typer(_guarded(index_app), name="index", help="Build, extend and inspect a search index.")
        app.command("search")(friendly(_checked_search(search_command)))
    except ImportError:  # pragma: no cover - optional deps missing
        pass
    try:
        from .service.cli import serve_command

        app.command("serve")(friendly(serve_command))
    except ImportError:  # pragma: no cover
        pass
    try:
        from .evaluation.cli import eval_command

        app.command("eval")(friendly(eval_command))
    except ImportError:  # pragma: no cover
        pass


_mount_optional()


def _quiet_flags(cmd) -> None:
    """No ``<bool>`` type hint after on/off flags in help pages (a flag takes no value)."""
    for p in getattr(cmd, "params", []):
        if getattr(p, "is_flag", False):
            p.metavar = ""
    make_help = cmd.get_help_option

    def get_help_option(ctx):
        opt = make_help(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = get_help_option
    for sub in (getattr(cmd, "commands", None) or {}).values():
        _quiet_flags(sub)


def build_command():
    """The click command behind ``hysac`` (what the entry point runs)."""
    cmd = typer.main.get_command(app)
    _quiet_flags(cmd)
    return cmd


def main() -> None:  # entry point
    build_command()()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
