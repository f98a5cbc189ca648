"""Checks of user-supplied texts and paths shared by the CLI and the service, so that both refuse the same
inputs with the same reason, and a helper that makes any string printable as UTF-8.

* :func:`text_problem` — why a text cannot be classified / searched (empty, too long, not valid UTF-8, a control
  character), or None.
* :func:`path_problem` — why a path given on the command line cannot be used (a file name that is not valid
  UTF-8), or None.
* :func:`check_settings` — a mapping of settings against a dataclass's fields: unknown keys and values of the
  wrong type (read from the annotations) get a one-line error naming ``where.key``.
* :func:`printable` — a string with undecodable bytes and lone surrogates shown as backslash escapes (never fails
  to encode as UTF-8); :func:`one_line` — the same on one line with control characters escaped too (a terminal
  escape sequence in an error message is shown, not run).
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import InputError

__all__ = ["MAX_TEXT_CHARS", "text_problem", "path_problem", "check_settings", "printable", "one_line"]

#: the longest text accepted (characters); the service's ``max_text_chars`` default and the CLI's limit
MAX_TEXT_CHARS = 10_000

#: control characters that are not whitespace: C0 (but tab, newline, vertical tab, form feed, carriage return and
#: the separators U+001C-U+001F), DEL and C1 (but NEL). ESC (U+001B) starts terminal escape sequences.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_reason(text: str) -> Optional[str]:
    m = _SURROGATE.search(text)
    if m is None:
        return None
    c = ord(m.group())
    if 0xDC80 <= c <= 0xDCFF:  # how Python carries an undecodable byte of a command-line argument or file name
        return f"undecodable byte 0x{c - 0xDC00:02x} at position {m.start()}"
    return f"lone surrogate U+{c:04X} at position {m.start()}"


def text_problem(text: str, max_chars: int = MAX_TEXT_CHARS) -> Optional[tuple[str, str]]:
    """``(code, reason)`` when ``text`` cannot be used as a query or an input to classify, else None. ``code`` is
    ``"empty_query"`` for an empty or blank text and ``"invalid_input"`` otherwise; ``reason`` completes a
    sentence that starts with the input's name, e.g. ``"is too long: 20000 characters (max 10000)"``."""
    if not isinstance(text, str):
        return "invalid_input", f"is {type(text).__name__}, not a string"
    if not text.strip():
        return "empty_query", "is empty"
    if len(text) > max_chars:
        return "invalid_input", f"is too long: {len(text)} characters (max {max_chars})"
    bad = _surrogate_reason(text)
    if bad is not None:
        return "invalid_input", f"is not valid UTF-8 text ({bad})"
    m = _CONTROL.search(text)
    if m is not None:
        return "invalid_input", (f"contains a control character (U+{ord(m.group()):04X} at position {m.start()}); "
                                 "remove it or use plain whitespace")
    return None


def path_problem(path: str | os.PathLike) -> Optional[str]:
    """Why ``path`` cannot be used as a file name, or None. On POSIX a file name is bytes; one that is not valid
    UTF-8 reaches Python with lone surrogates and could be neither printed, stored in an index nor written into a
    JSON result."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        try:
            s.decode("utf-8")
        except UnicodeDecodeError as e:
            return f"file name '{printable(os.fsdecode(s))}' is not valid UTF-8 (byte 0x{s[e.start]:02x})"
        return None
    bad = _surrogate_reason(s)
    if bad is not None:
        return (f"file name '{printable(s)}' is not valid UTF-8 ({bad}); rename the file or link it under a UTF-8 "
                "name")
    if "\x00" in s:
        return f"file name '{one_line(s)}' contains a NUL byte"
    return None


def check_settings(cls: type, d: Mapping[str, Any], where: str, skip: tuple[str, ...] = ()) -> None:
    """Refuse keys of ``d`` that are not fields of the dataclass ``cls``, and values whose type is not one of the
    field's annotation (``int``, ``float`` (an int is one too), ``bool``, ``str`` (or a path), ``None``; a bool is
    never taken for a number). Fields in ``skip`` are the caller's to check. One-line :class:`InputError` naming
    ``where.<key>``."""
    known = sorted(f.name for f in dataclasses.fields(cls))
    bad = sorted(set(d) - set(known))
    if bad:
        raise InputError(f"{where}: unknown keys {bad}; known: {known}")
    for f in dataclasses.fields(cls):
        if f.name not in d or f.name in skip:
            continue
        v, kinds = d[f.name], str(f.type).replace(" ", "").split("|")
        ok = ((v is None and "None" in kinds) or (isinstance(v, bool) and "bool" in kinds)
              or (not isinstance(v, bool) and isinstance(v, int) and ("int" in kinds or "float" in kinds))
              or (isinstance(v, float) and "float" in kinds) or (isinstance(v, (str, Path)) and "str" in kinds))
        if not ok:
            raise InputError(f"{where}.{f.name}: expected {' or '.join(kinds)}, got {v!r}")


def printable(s: str) -> str:
    """``s`` with undecodable bytes (``\\xff``) and other lone surrogates (``\\ud800``) as backslash escapes, so
    that printing it as UTF-8 never fails; unchanged when it is valid text."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return os.fsencode(s).decode("utf-8", "backslashreplace")  # file-name bytes back, shown as \xff
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(s: str, limit: int = 2000) -> str:
    """A message on one line: whitespace runs (newlines included) collapsed, printable, control characters as
    ``\\xNN`` escapes, at most ``limit`` characters."""
    s = " ".join(printable(str(s)).split())
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", s)
    return s if len(s) <= limit else s[: limit - 1] + "…"
