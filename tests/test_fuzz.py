"""Property-based fuzzing of the two entry points for bad input (Hypothesis, derandomized so CI sees the same
inputs every run).

* CLI: more than 500 generated bad invocations of ``hysac classify / encode / traverse / search / index build /
  index info / serve`` — blank, control-character, non-UTF-8 and oversized texts; bad numbers (``--tau nan``,
  ``--threshold -1``, ``--k -3``, ``--ef-search 1e12``, ...); bad paths (``--out`` onto a folder, into /proc, under
  a regular file; UTF-16 and binary text files; garbage, truncated, empty and 10000x1 images); deeply nested JSONL
  tables; non-UTF-8 file names. Each must end with exit code 2 and exactly one ``error: …`` line on stderr, never
  a Python exception. They run in-process (typer's CliRunner) on a tiny random model (``hysac.model.load_model``
  is patched to return it), plus a few real subprocesses for what only a real ``argv`` and real streams show.
* HTTP: more than 300 generated bad requests to the service (FastAPI TestClient, tiny model and demo index, the
  limits of tests/test_service.py): malformed JSON, wrong types, huge / negative ``k``, NaN ``tau``, empty and
  oversized lists, garbage / truncated / empty / 10000x1 uploads, raw multipart garbage, and bad ``/items/{id}``
  paths. Every answer must be < 500 with a JSON body, and a 4xx must be an ``{error, code, status}`` body.

Nothing may hang: every call is timed, and a watchdog dumps the stacks and stops the run if a fuzz test is stuck.
``HYSAC_FUZZ_SCALE=10 pytest tests/test_fuzz.py`` runs ten times as many examples; ``HYSAC_FUZZ_RANDOM=1`` draws
new ones on every run.
"""

from __future__ import annotations

import faulthandler
import io
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
import traceback
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from hysac.cli import app as cli_app
from hysac.service import create_app
from hysac.service.demo import make_demo_index, make_tiny_model

#: random bytes after an image's magic number make PIL warn (corrupt EXIF, truncated headers): expected here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning:PIL")

SCALE = max(1, int(os.environ.get("HYSAC_FUZZ_SCALE", "1")))
CLI_EXAMPLES = 560 * SCALE
HTTP_EXAMPLES = 340 * SCALE
#: the most seconds one in-process call may take (the slowest legitimate one takes well under a second here)
CALL_LIMIT_S = 20.0
#: the watchdog: a fuzz test still running after this many seconds is stuck
WATCHDOG_S = 600

#: HYSAC_FUZZ_RANDOM=1: new inputs every run (to explore; CI runs the same derandomized ones every time)
SETTINGS = dict(deadline=None, derandomize=not os.environ.get("HYSAC_FUZZ_RANDOM"), database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))

# --------------------------------------------------------------------------------------------------- inputs
#: control characters that are not whitespace (what hysac.inputs refuses)
CONTROL = [chr(c) for c in (*range(0x00, 0x09), *range(0x0E, 0x1C), 0x7F, *range(0x80, 0x85), *range(0x86, 0xA0))]
#: how undecodable argument bytes reach Python (surrogate escapes), and plain lone surrogates
SURROGATES = [chr(c) for c in range(0xDC80, 0xDD00, 7)] + ["\ud800", "\udbff", "\udfff"]
BLANKS = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\u2028\u3000"

plain_text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=30)
#: letters only: never a number, whatever typer's parser accepts ("inf", "nan" are out of range anyway)
letters = st.text(alphabet="abcdefghijklmnopqrstuvwxyz!%&*", min_size=1, max_size=8)


def _insert(base: str, bad: str, pos: int) -> str:
    pos %= len(base) + 1
    return base[:pos] + bad + base[pos:]


def _long(n: int, unit: str) -> str:
    unit = unit.strip() or "ab "
    return (unit * (n // len(unit) + 1))[: max(n, 10_001)]


bad_texts = st.one_of(
    st.text(alphabet=BLANKS, max_size=20),  # empty or blank
    st.builds(_insert, plain_text, st.sampled_from(CONTROL), st.integers(0, 60)),
    st.builds(_insert, plain_text, st.sampled_from(SURROGATES), st.integers(0, 60)),
    st.builds(_long, st.integers(10_001, 300_000), plain_text),
)
bad_floats = st.one_of(
    st.sampled_from(["nan", "NaN", "-nan", "inf", "-inf", "1e309", "-1e309", "1e400", "-1", "-0.5", "1e7", "1e12",
                     "", "1e", "--", "0x1p3", "½", "1,5"]),
    st.floats(max_value=-1e-9).map(repr),  # negative, -inf included
    st.floats(min_value=1e6, exclude_min=True).map(repr),  # over the limit, inf included
    letters,
)
not_an_int = st.one_of(st.sampled_from(["1e12", "1.5", "ten", "", "0x10", "1e3", "--", "nan", "inf"]), letters,
                       st.floats().filter(lambda f: not math.isfinite(f) or f != int(f)).map(repr))


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


bad_name_bytes = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b).filter(
    _not_utf8)


def _png(w: int, h: int, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    if w * h <= 4096:
        arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(buf, format="PNG")
    else:  # one colour: a few hundred bytes whatever the size
        Image.new("RGB", (w, h), (200, 30, 30)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _jpeg(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (20, 120, 200)).save(buf, format="JPEG", quality=70)
    return buf.getvalue()


GOOD_PNG = _png(32, 32, seed=1)
STRIP_PNG = _png(10_000, 1)
MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\x00\x00\x00\x00WEBP", b"II*\x00", b""]


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tiny model and demo index of tests/test_service.py, and a pool of bad files."""
    root = tmp_path_factory.mktemp("fuzz")
    model = make_tiny_model(root / "model")
    index = make_demo_index(root / "demo", model)
    files = root / "files"
    files.mkdir()
    (files / "garbage.png").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)))
    (files / "truncated.png").write_bytes(GOOD_PNG[: len(GOOD_PNG) // 2])
    (files / "zero.png").write_bytes(b"")
    (files / "strip.png").write_bytes(STRIP_PNG)
    (files / "notes.jpg").write_bytes(b"hello, this is text")
    (files / "utf16.txt").write_bytes("a cat\nblood everywhere\n".encode("utf-16"))
    (files / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (files / "nul.txt").write_bytes("a cat\x00\nblood\x00\n".encode())
    (files / "empty.txt").write_bytes(b"")
    (files / "a_file").write_bytes(b"x")
    (files / "no_images").mkdir()
    (files / "not_an_index").mkdir()
    return {"model": model, "index": index, "root": root, "files": files}


@pytest.fixture(scope="module")
def patched_model(env):
    """Every ``load_model`` of the CLI (main commands and index commands) returns the tiny model."""
    import hysac.model

    mp = pytest.MonkeyPatch()
    mp.setattr(hysac.model, "load_model", lambda *a, **k: env["model"])
    yield env["model"]
    mp.undo()


@pytest.fixture()
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ------------------------------------------------------------------------------------------------------ CLI
runner = CliRunner()


class Counter:
    def __init__(self):
        self.n = 0
        self.by_family: dict[str, int] = {}

    def add(self, family: str) -> None:
        self.n += 1
        self.by_family[family] = self.by_family.get(family, 0) + 1


def run_cli(args: list[str], *, bad: bool = True, expect: str | None = None) -> None:
    """Invoke ``hysac ARGS`` in-process. Never an exception or a traceback, never slow; ``bad``: exit code 2 and
    exactly one ``error: …`` line on stderr (matching ``expect``); otherwise exit 0 or that."""
    t0 = time.monotonic()
    res = runner.invoke(cli_app, args)
    took = time.monotonic() - t0
    shown = [a if len(a) < 120 else a[:60] + f"…({len(a)} chars)" for a in args]
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        pytest.fail(f"hysac {shown!r} raised {type(exc).__name__}: {exc}\n{tb}")
    assert "Traceback" not in res.output, f"hysac {shown!r}:\n{res.output[-3000:]}"
    assert took < CALL_LIMIT_S, f"hysac {shown!r} took {took:.1f} s"
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    if not bad and res.exit_code == 0:
        return
    assert res.exit_code == 2, f"hysac {shown!r}: exit {res.exit_code}\n{res.output[-2000:]}"
    assert len(errors) == 1, f"hysac {shown!r}: {len(errors)} error lines\n{res.stderr[-2000:]}"
    if expect is not None:
        assert re.search(expect, errors[0]), f"hysac {shown!r}: {errors[0]!r} does not match {expect!r}"


_serial = itertools.count()


@st.composite
def cli_case(draw, env):
    """(family, args, expect, bad) of one bad invocation."""
    files: Path = env["files"]
    index = str(env["index"])
    work = env["root"] / "work"
    work.mkdir(exist_ok=True)
    n = next(_serial)  # a fresh file name per example (replays included)
    family = draw(st.sampled_from(["text", "text", "text_file", "number", "number", "path", "image_file",
                                   "table", "name", "serve"]))
    cmd = draw(st.sampled_from(["classify", "encode", "traverse", "search"]))

    def base(c: str) -> list[str]:
        return {"classify": ["classify"], "encode": ["encode", "--out", str(work / f"e{n}.safetensors")],
                "traverse": ["traverse"], "search": ["search", "--index", index]}[c]

    if family == "text":
        good = draw(st.lists(st.sampled_from(["a cat on a mat", "blood everywhere", "ünïcødé ✓"]), max_size=2))
        bad = draw(bad_texts)
        texts = good + [bad]
        args = base(cmd) + [f"--text={t}" for t in texts]
        return family, args, r"--text #\d+ |empty query", True

    if family == "text_file":
        kind = draw(st.sampled_from(["lines", "utf16", "binary", "nul", "empty", "folder", "missing", "proc"]))
        if kind == "lines":  # every line bad: blank, control character, not UTF-8, too long
            lines = draw(st.lists(st.one_of(
                st.text(alphabet=" \t", max_size=5).map(str.encode),
                st.builds(_insert, plain_text, st.sampled_from(CONTROL), st.integers(0, 40)).map(str.encode),
                st.builds(lambda t, b, p: _insert(t, "\x00", p).encode().replace(b"\x00", b),
                          plain_text, st.sampled_from([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\xed\xa0\x80"]),
                          st.integers(0, 40)),
                st.builds(_long, st.integers(10_001, 40_000), plain_text).map(str.encode),
            ), min_size=1, max_size=4))
            path = work / f"t{n}.txt"
            path.write_bytes(b"\n".join(lines) + b"\n")
        elif kind == "utf16":
            path = work / f"u{n}.txt"
            path.write_bytes(draw(plain_text.filter(str.strip)).encode(draw(st.sampled_from(["utf-16", "utf-32"]))))
        else:
            path = {"binary": files / "binary.txt", "nul": files / "nul.txt", "empty": files / "empty.txt",
                    "folder": files / "no_images", "missing": work / "missing.txt",
                    "proc": Path(draw(st.sampled_from(["/proc/self/mem", "/proc/self", "/proc/no/such/file"])))}[kind]
        if cmd == "traverse":  # traverse reads no text file
            cmd = "classify"
        return family, base(cmd) + ["--text-file", str(path)], None, True

    if family == "number":
        which = draw(st.sampled_from(["threshold", "tau", "k", "ef", "batch", "hnsw"]))
        if which == "threshold":
            return family, ["classify", "--text=a cat", "--threshold", draw(bad_floats)], "--threshold", True
        if which == "tau":
            return family, ["traverse", "--text=a cat", "--tau", draw(bad_floats)], "--tau", True
        if which == "k":
            v = draw(st.one_of(st.integers(max_value=0).map(str), not_an_int))
            return family, ["search", "--index", index, "--text=a cat", "--k", v], r"\bk\b", True
        if which == "ef":
            v = draw(st.one_of(st.integers(max_value=0).map(str), st.integers(min_value=1_000_001).map(str),
                               not_an_int))
            return family, ["search", "--index", index, "--text=a cat", "--ef-search", v], "ef-search", True
        table = work / f"b{n}.csv"
        table.write_text("text\na cat\n")
        if which == "batch":
            v = draw(st.one_of(st.integers(max_value=0).map(str), not_an_int))
            return family, ["index", "build", str(table), "--out", str(work / f"i{n}"), "--batch-size", v], \
                "batch", True
        opt = draw(st.sampled_from(["--hnsw-m", "--ef-construction", "--ef-search"]))
        v = draw(st.one_of(st.integers(-10**6, 0).map(str), not_an_int))
        return family, ["index", "build", str(table), "--out", str(work / f"i{n}"), "--ann", "hnsw", opt, v], \
            r"HNSW|Invalid value", True

    if family == "path":
        where = draw(st.sampled_from(["out_dir", "out_proc", "out_under_file", "out_empty", "out_dev",
                                      "index_dir", "index_file", "index_proc", "index_missing", "src"]))
        if where.startswith("out_"):
            out = {"out_dir": str(files / "no_images"), "out_proc": "/proc/hysac-fuzz/x.safetensors",
                   "out_under_file": str(files / "a_file" / "x.safetensors"), "out_empty": "",
                   "out_dev": "/dev/null"}[where]
            return family, ["encode", "--text=a cat", "--out", out], "--out", True
        if where.startswith("index_"):
            idx = {"index_dir": str(files / "not_an_index"), "index_file": str(files / "a_file"),
                   "index_proc": "/proc/self", "index_missing": str(work / "nope")}[where]
            if draw(st.booleans()):
                return family, ["search", "--index", idx, "--text=a cat"], "index", True
            return family, ["index", draw(st.sampled_from(["info", "verify"])), idx], "index", True
        src = draw(st.sampled_from([str(files / "no_images"), str(files / "utf16.txt"), "/proc/self/status",
                                    str(work / "missing.csv"), str(files / "a_file")]))
        return family, ["index", "build", src, "--out", str(work / f"i{n}")], None, True

    if family == "image_file":
        kind = draw(st.sampled_from(["pool", "pool", "random", "magic"]))
        if kind == "pool":
            path = str(draw(st.sampled_from([files / "garbage.png", files / "truncated.png", files / "zero.png",
                                             files / "strip.png", files / "notes.jpg", files / "no_images",
                                             files / "missing.png", Path("/dev/null"),
                                             Path("/proc/self/status")])))
            bad = True
        else:
            head = draw(st.sampled_from(MAGICS)) if kind == "magic" else b""
            path = str(work / f"r{n}{draw(st.sampled_from(['.png', '.jpg', '.gif', '.bmp', '.webp']))}")
            Path(path).write_bytes(head + draw(st.binary(max_size=400)))
            bad = False  # random bytes after a magic number may happen to decode
        return family, base(cmd) + ["--image", path], None, bad

    if family == "table":
        kind = draw(st.sampled_from(["deep_row", "deep_text", "deep_meta", "not_object", "invalid", "not_utf8",
                                     "random"]))
        suffix = ".jsonl"
        # deeper than any recursion limit in force here (Python's default is 1000; Hypothesis runs with ~2000)
        depth = draw(st.integers(2_500, 60_000))
        deep = "[" * depth + "]" * depth
        if kind == "deep_row":
            body = deep.encode()
        elif kind == "deep_text":
            body = ('{"text": "a cat"}\n{"text": ' + deep + "}").encode()
        elif kind == "deep_meta":
            body = ('{"text": "a cat", "meta": ' + "{\"k\": " * depth + "1" + "}" * depth + "}"
                    ).encode() if draw(st.booleans()) else ('{"text": "a cat", "meta": ' + deep + "}").encode()
        elif kind == "not_object":
            body = draw(st.sampled_from([b"[1, 2]", b"3", b'"text"', b"null", b"true"]))
        elif kind == "invalid":
            body = b'{"text": ' + draw(st.binary(max_size=30)).replace(b"\n", b" ") + b"\n"
        elif kind == "not_utf8":
            body = b'{"text": "a \xff\xfe cat"}\n'
        else:
            suffix = draw(st.sampled_from([".jsonl", ".csv", ".parquet", ".ndjson"]))
            body = draw(st.binary(max_size=300))
        table = work / f"t{n}{suffix}"
        table.write_bytes(body)
        if kind.startswith("deep"):
            return family, ["index", "build", str(table), "--out", str(work / f"i{n}"), "--no-progress"], \
                "nested too deeply", True
        return family, ["index", "build", str(table), "--out", str(work / f"i{n}"), "--no-progress"], None, \
            kind != "random"

    if family == "name":  # a file name that is not UTF-8, wherever a path is taken
        raw = os.fsdecode(draw(bad_name_bytes))
        p = work / f"n{n}-{raw}"
        opt = draw(st.sampled_from(["image", "text_file", "out", "index", "src", "index_out"]))
        if opt in ("image", "src"):
            folder = draw(st.booleans()) and opt == "image" and cmd != "search"  # search takes image files only
            if folder:  # a folder holding an image with a UTF-8 name, or a non-UTF-8 name in a UTF-8 folder
                if draw(st.booleans()):
                    p.mkdir()
                    (p / "ok.png").write_bytes(GOOD_PNG)
                else:
                    d = work / f"d{n}"
                    d.mkdir()
                    (d / f"{raw}.png").write_bytes(GOOD_PNG)
                    p = d
            else:
                p = p.with_name(p.name + ".png")
                p.write_bytes(GOOD_PNG)
            if opt == "src":
                return family, ["index", "build", str(p), "--out", str(work / f"i{n}")], "not valid UTF-8", True
            return family, base(cmd) + ["--image", str(p)], "not valid UTF-8", True
        if opt == "text_file":
            p.write_text("a cat\n")
            return family, base("classify" if cmd == "traverse" else cmd) + ["--text-file", str(p)], \
                "not valid UTF-8", True
        if opt == "out":
            return family, ["encode", "--text=a cat", "--out", str(p)], "not valid UTF-8", True
        if opt == "index":
            return family, ["search", "--index", str(p), "--text=a cat"], "not valid UTF-8", True
        table = work / f"o{n}.csv"
        table.write_text("text\na cat\n")
        return family, ["index", "build", str(table), "--out", str(p)], "not valid UTF-8", True

    # serve: bad numbers only, and an index that does not exist: the server never starts
    flag = draw(st.sampled_from(["--port", "--max-upload-mb", "--header-timeout", "--body-timeout",
                                 "--max-request-mpx", "--max-batch", "--max-k", "--coalesce", "--torch-threads"]))
    if flag == "--port":
        v = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=65_536)).map(str) | not_an_int)
    elif flag in ("--max-batch", "--max-k", "--coalesce"):
        v = draw(st.integers(max_value=0).map(str) | not_an_int)
    elif flag == "--torch-threads":
        v = draw(st.one_of(st.integers(max_value=0), st.integers(min_value=4097)).map(str) | not_an_int)
    else:
        v = draw(st.one_of(st.sampled_from(["nan", "inf", "-inf", "0", "-1", "1e309", "-0.0"]), letters,
                           st.floats(max_value=0).map(repr)))
    return family, ["serve", "--index", str(work / "no-such-index"), flag, v], flag.lstrip("-"), True


def test_cli_fuzz(env, patched_model, watchdog):
    """More than 500 generated bad invocations: exit 2 and one ``error:`` line each, no exception, no hang."""
    count = Counter()
    t0 = time.monotonic()

    @settings(max_examples=CLI_EXAMPLES, **SETTINGS)
    @given(case=cli_case(env))
    def check(case):
        family, args, expect, bad = case
        count.add(family)
        run_cli(args, bad=bad, expect=expect)

    check()
    print(f"\nCLI fuzz: {count.n} invocations in {time.monotonic() - t0:.1f} s: {count.by_family}")
    assert count.n >= 500, count.by_family
    assert len(count.by_family) == 8  # every family was drawn


@pytest.mark.parametrize("args, expect", [
    (["classify", "--text=a cat", "--threshold", "nan"], "--threshold must be a finite number"),
    (["classify", "--text=a cat", "--threshold", "-1"], "--threshold must be a finite number"),
    (["classify", "--text=a cat", "--threshold", "1e309"], "--threshold must be a finite number"),
    (["traverse", "--text=a cat", "--tau", "nan"], "--tau must be a finite number"),
    (["traverse", "--text=a cat", "--tau", "-1"], "--tau must be a finite number"),
    (["traverse", "--text=a cat", "--tau", "1e309"], "--tau must be a finite number"),
    (["search", "--index", "{index}", "--text=a cat", "--k", "-3"], "k must be >= 1, got -3"),
    (["search", "--index", "{index}", "--text=a cat", "--ef-search", "1e12"], r"Invalid value for '--ef-search'"),
    (["search", "--index", "{index}", "--text=a cat", "--ef-search", "1000000000000"], "--ef-search must be between"),
    (["search", "--index", "{index}", "--text=a\x1b[2Jcat"], "--text #1 contains a control character .U\\+001B"),
    (["classify", "--text=" + "x" * 10_001], r"--text #1 is too long: 10001 characters \(max 10000\)"),
    (["traverse", "--text=a \udcff cat"], r"--text #1 is not valid UTF-8 text \(undecodable byte 0xff"),
    (["encode", "--text=a cat", "--out", "{files}/no_images"], "--out .* is a directory"),
    (["encode", "--text=a cat", "--out", "/proc/hysac/x.safetensors"], "cannot (write|create)"),
    (["encode", "--text=a cat", "--out", "{files}/a_file/x.safetensors"], "cannot create the folder of --out"),
    (["classify", "--text-file", "{files}/utf16.txt"], "is UTF-16"),
    (["classify", "--text-file", "/proc/self/mem"], "cannot read text file /proc/self/mem"),
    (["classify", "--text-file", "{files}/empty.txt"], r"text file .*empty.txt is empty"),
    (["encode", "--text-file", "{files}/empty.txt", "--out", "{root}/e.safetensors"], r"text file .*empty.txt is empty"),
    (["search", "--index", "{index}", "--text-file", "{files}/empty.txt"], r"text file .*empty.txt is empty"),
    (["classify", "--image", "{files}/strip.png"], "none of the 1 inputs"),
    (["index", "build", "{files}/deep.jsonl", "--out", "{root}/deep-idx"], "deep.jsonl: nested too deeply"),
    (["classify", "--nope"], r"No such option: --nope .*\(see '.* classify --help'\)"),
])
def test_cli_named_cases(env, patched_model, args, expect):
    """The inputs the hardening issue names, one by one, with the message each gets."""
    (env["files"] / "deep.jsonl").write_text('{"text": ' + "[" * 5000 + "]" * 5000 + "}\n")
    fill = {"{index}": str(env["index"]), "{files}": str(env["files"]), "{root}": str(env["root"])}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
    run_cli(args, expect=expect)


def test_table_of_errors_shows_inputs_as_text_not_markup(env, patched_model, tmp_path):
    """A text file whose lines look like rich markup or carry escape codes is shown as text in the table."""
    f = tmp_path / "q.txt"
    f.write_bytes(b"[/red] closing tag\n[bold]x\x1b[31m\n")
    res = runner.invoke(cli_app, ["classify", "--text-file", str(f)])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert res.exit_code == 0 and "[/red] closing tag" in res.stdout and "\x1b[31m" not in res.stdout


def test_encode_out_is_written_whole_or_not_at_all(env, patched_model, tmp_path):
    out = tmp_path / "sub" / "emb.safetensors"
    run_cli(["encode", "--text=a cat", "--out", str(out)], bad=False)
    assert out.is_file() and not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def _subprocess(args: list, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, "-m", "hysac.cli", *args], capture_output=True, timeout=timeout,
                          env=env)


def test_real_argv_bytes_and_streams(env, tmp_path):
    """What only a real process shows: undecodable argv bytes, a non-UTF-8 file name and a usage error, each one
    line on the real stderr with exit code 2."""
    bad_name = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"
    with open(bad_name, "wb") as f:
        f.write(GOOD_PNG)
    cases = [
        ([b"classify", b"--text", b"caf\xe9 au lait"], rb"--text #1 is not valid UTF-8 text \(undecodable byte 0xe9"),
        ([b"classify", b"--image", bad_name], rb"caf\\xe9\.png' is not valid UTF-8"),
        ([b"search", b"--index", os.fsencode(str(env["index"])), b"--text", b"a", b"--k", b"1e12"],
         rb"Invalid value for '-k' / '--k'"),
    ]
    for args, expect in cases:
        r = _subprocess(args)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.returncode == 2, (args, r.stderr[-2000:])
        assert b"Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith(b"error: "), r.stderr
        assert re.search(expect, lines[0]), lines[0]


# ----------------------------------------------------------------------------------------------------- HTTP
MAX_BATCH, MAX_K, MAX_UPLOAD = 16, 50, 1024 * 1024


@pytest.fixture(scope="module")
def client(env):
    app = create_app(env["model"], env["index"], max_upload_bytes=MAX_UPLOAD, max_batch=MAX_BATCH, max_k=MAX_K,
                     warmup=False)
    with TestClient(app, base_url="http://127.0.0.1") as c:
        yield c


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                 st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4)), max_leaves=12)
JSON_HEADERS = {"content-type": "application/json"}


def _raw_json(d: dict) -> bytes:
    """JSON with NaN / Infinity allowed (what a careless client sends)."""
    return json.dumps(d, allow_nan=True).encode()


@st.composite
def http_case(draw):
    """(family, method, url, httpx kwargs, must_be_4xx) of one bad request."""
    family = draw(st.sampled_from(["body", "json_types", "search_k", "traverse_tau", "classify_lists",
                                   "uploads", "multipart_raw", "items", "content_type"]))
    path = draw(st.sampled_from(["/search", "/classify", "/traverse"]))

    if family == "body":  # not a JSON object
        body = draw(st.one_of(
            st.binary(max_size=200),
            json_values.map(lambda v: json.dumps(v).encode()).filter(lambda b: not b.startswith(b"{")),
            st.integers(1, 5000).map(lambda d: b"[" * d),
            st.integers(1, 100_000).map(lambda d: b'{"a":' * d),
            st.integers(1, 100_000).map(lambda d: b'{"texts": ' + b"[" * d + b"]" * d + b"}"),
            st.integers(MAX_UPLOAD + 1, 2 * MAX_UPLOAD).map(lambda n: b'{"text": "' + b"a" * n + b'"}'),
            st.sampled_from([b"", b" ", b"{", b'{"text": "a"', b'{"text": "a"} x', b"\xef\xbb\xbf{",
                             b'{"text": "\\ud800"}', b'{"texts": ["\xff"]}', b"NaN", b"{'text': 'a'}"]),
        ))
        return family, "POST", path, {"content": body, "headers": JSON_HEADERS}, True

    if family == "json_types":  # an object with wrong types / unknown fields
        keys = {"/search": ["text", "mode", "k", "modality", "rerank"], "/classify": ["texts", "threshold"],
                "/traverse": ["text", "target", "direction", "tau", "k"]}[path]
        d = draw(st.dictionaries(st.sampled_from(keys + ["query", "image", "", "x" * 50]), json_values,
                                 min_size=1, max_size=5))
        return family, "POST", path, {"content": _raw_json(d), "headers": JSON_HEADERS}, False

    if family == "search_k":
        k = draw(st.one_of(st.integers(max_value=0), st.integers(min_value=MAX_K + 1), st.integers(-10**40, -1),
                           st.integers(10**19, 10**40), st.floats().filter(lambda f: not 1 <= f <= MAX_K),
                           letters, st.booleans(), st.lists(st.integers(), max_size=2), st.none()))
        text = draw(st.one_of(st.just("a cat"), bad_texts.filter(lambda t: len(t) < 20_000)))
        return family, "POST", "/search", {"content": _raw_json({"text": text, "k": k}), "headers": JSON_HEADERS}, \
            True

    if family == "traverse_tau":
        tau = draw(st.one_of(st.sampled_from([float("nan"), float("inf"), float("-inf"), -1.0, -1e-300, 1e6 + 1,
                                              1e308]),
                             st.floats(max_value=-1e-12), st.floats(min_value=1e6, exclude_min=True),
                             letters, st.booleans()))
        body = {"text": "a cat", "tau": tau}
        if draw(st.booleans()):
            body["k"] = draw(st.integers(-10**6, 10**6).filter(lambda k: not 0 <= k <= MAX_K))
        return family, "POST", "/traverse", {"content": _raw_json(body), "headers": JSON_HEADERS}, True

    if family == "classify_lists":
        texts = draw(st.one_of(
            st.just([]),
            st.integers(MAX_BATCH + 1, 400).map(lambda n: ["a cat"] * n),
            st.lists(bad_texts.filter(lambda t: len(t) < 20_000), min_size=1, max_size=3),
            st.lists(json_values.filter(lambda v: not isinstance(v, str)), min_size=1, max_size=3),
            json_values.filter(lambda v: not isinstance(v, list)),
        ))
        body: dict = {"texts": texts}
        if draw(st.booleans()):
            body["threshold"] = draw(st.one_of(st.sampled_from([float("nan"), float("inf"), -1.0, 1e7]),
                                               st.text(max_size=5)))
        return family, "POST", "/classify", {"content": _raw_json(body), "headers": JSON_HEADERS}, True

    if family == "uploads":
        field = "images" if path == "/classify" else "image"
        kind = draw(st.sampled_from(["garbage", "truncated", "zero", "strip", "magic", "too_many", "text_too"]))
        if kind == "garbage":
            blobs = [draw(st.binary(min_size=1, max_size=2000))]
        elif kind == "truncated":
            # cut inside the pixel data (a PNG missing only its end chunk still decodes whole, and is accepted)
            blobs = [GOOD_PNG[: draw(st.integers(1, len(GOOD_PNG) - 64))]]
        elif kind == "zero":
            blobs = [b""]
        elif kind == "strip":
            blobs = [STRIP_PNG] * draw(st.integers(1, 8 if path == "/classify" else 1))
        elif kind == "magic":
            blobs = [draw(st.sampled_from(MAGICS)) + draw(st.binary(max_size=300))]
        elif kind == "too_many":
            blobs = [GOOD_PNG] * (MAX_BATCH + 1 if path == "/classify" else 2)
        else:
            blobs = [GOOD_PNG]
        name = draw(st.one_of(st.just("x.png"), st.text(max_size=30)))
        ctype = draw(st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "text/plain", ""]))
        files = [(field, (name, b, ctype)) for b in blobs]
        data = {"texts": "a cat"} if kind == "text_too" and path == "/classify" else (
            {"text": "a cat"} if kind == "text_too" else {})
        return family, "POST", path, {"files": files, "data": data}, kind not in ("magic", "text_too") or (
            kind == "text_too" and path != "/classify")

    if family == "multipart_raw":
        boundary = draw(st.sampled_from(["b", "xyz", "----x", ""]))
        body = draw(st.one_of(
            st.binary(max_size=500),
            st.builds(lambda name, fn, payload: (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{fn}"\r\n'
                "Content-Type: image/png\r\n\r\n").encode("utf-8", "surrogatepass") + payload,
                st.sampled_from(["image", "images", "texts", "k", ""]), st.text(max_size=10),
                st.binary(max_size=200)),
        ))
        ctype = f"multipart/form-data; boundary={boundary}" if boundary else "multipart/form-data"
        return family, "POST", path, {"content": body, "headers": {"content-type": ctype}}, False

    if family == "items":
        seg = draw(st.one_of(
            st.integers(max_value=-1).map(str), st.integers(min_value=10**6).map(str),
            st.sampled_from(["..", "../..", "../../etc/passwd", "%2e%2e%2f", "..%2F..%2Fetc%2Fpasswd", "1_0", " 5",
                             "٣", "0x10", "1e3", "-0", "+1", "00000000000000000000001", "/etc/passwd", "\\..\\"]),
            st.text(min_size=1, max_size=30).filter(lambda t: not (t.isascii() and t.isdigit())),
        ))
        if draw(st.booleans()):
            quoted = "".join(f"%{b:02X}" for b in seg.encode("utf-8", "surrogatepass"))
        else:
            quoted = urllib.parse.quote(seg, safe="/%")
        suffix = draw(st.sampled_from(["", "/image"]))
        return family, "GET", f"/items/{quoted}{suffix}", {}, True

    # content_type: a body that is not JSON or form data, or a wrong method
    ctype = draw(st.one_of(st.sampled_from(["text/plain", "application/xml", "image/png", "", "application/jsonx",
                                            "multipart/mixed", "application/x-www-form-urlencoded; charset=x"]),
                           st.text(alphabet="abcdefghij/+;= ", max_size=30)))
    method = draw(st.sampled_from(["POST", "PUT", "PATCH", "DELETE"]))
    return family, method, path, {"content": draw(st.binary(max_size=100)), "headers": {"content-type": ctype}}, \
        method != "POST"


def check_http(client: TestClient, method: str, url: str, kwargs: dict, must_be_4xx: bool) -> int:
    if url.startswith("/items/") and not client.build_request(method, url).url.path.startswith("/items/"):
        # the client resolved "/items/.." (or "%2e%2e") itself: what reaches the server is another path, e.g. the
        # page at "/"; it must still not fail
        r = client.request(method, url)
        assert r.status_code < 500, f"{method} {url}: {r.status_code} {r.text[:300]}"
        return r.status_code
    t0 = time.monotonic()
    r = client.request(method, url, follow_redirects=False, **kwargs)
    took = time.monotonic() - t0
    what = f"{method} {url[:100]} {str(kwargs)[:300]}"
    assert took < CALL_LIMIT_S, f"{what}: {took:.1f} s"
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    if url.startswith("/items/") and r.status_code in (307, 308):  # "/items/x/" → "/items/x" (trailing slash)
        return r.status_code
    assert r.headers.get("content-type", "").startswith("application/json"), f"{what}: {r.headers}"
    body = r.json()
    if r.status_code >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], f"{what}: {body}"
        assert body["status"] == r.status_code and body["code"], f"{what}: {body}"
        assert "\n" not in body["error"] and "Traceback" not in body["error"], f"{what}: {body}"
    elif must_be_4xx:
        pytest.fail(f"{what}: answered {r.status_code}, expected a 4xx: {str(body)[:300]}")
    return r.status_code


def test_http_fuzz(client, watchdog):
    """More than 300 generated bad requests: never a 5xx, always JSON, a 4xx with an error body where the input
    is bad; the service still answers afterwards."""
    count = Counter()
    statuses: dict[int, int] = {}
    t0 = time.monotonic()

    @settings(max_examples=HTTP_EXAMPLES, **SETTINGS)
    @given(case=http_case())
    def check(case):
        family, method, url, kwargs, must_be_4xx = case
        count.add(family)
        s = check_http(client, method, url, kwargs, must_be_4xx)
        statuses[s] = statuses.get(s, 0) + 1

    check()
    print(f"\nHTTP fuzz: {count.n} requests in {time.monotonic() - t0:.1f} s: {count.by_family}; status {statuses}")
    assert count.n >= 300, count.by_family
    assert len(count.by_family) == 9
    assert client.get("/health").status_code == 200
    assert client.post("/search", json={"text": "a dog", "k": 3}).status_code == 200


@pytest.mark.parametrize("url", ["/items/-1/image", "/items/99999999999999999999/image", "/items/abc/image",
                                 "/items/..%2F..%2Fetc%2Fpasswd/image", "/items/1_0", "/items/%205", "/items/%D9%A3",
                                 "/items/0x10/image", "/items/%00"])
def test_http_item_ids_are_plain_digits(client, url):
    r = client.get(url)
    assert r.status_code == 404 and r.json()["code"] == "not_found", (url, r.text)


@pytest.mark.parametrize("body, expect", [
    ({"texts": ["a\x1b[2Jcat"]}, "texts[0] contains a control character (U+001B"),
    ({"texts": ["a cat"], "threshold": -1}, "threshold"),
    ({"texts": ["a cat"], "threshold": 1e300}, "threshold"),
])
def test_http_refuses_what_the_cli_refuses(client, body, expect):
    r = client.post("/classify", json=body)
    assert r.status_code == 422 and expect in r.json()["error"], r.text
    r = client.post("/traverse", json={"text": "a cat", "tau": 1e300})
    assert r.status_code == 422 and "tau" in r.json()["error"]
