"""The web page (``/``, ``/static``) and the API docs pages served from local assets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["router", "WEB_DIR", "docs_static_dir", "mount_static"]

WEB_DIR = Path(__file__).resolve().parents[1] / "web"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index_page():
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


def docs_static_dir() -> Optional[Path]:
    """Swagger UI / ReDoc assets shipped by the ``fastapi-offline`` package, so /docs works offline; None (FastAPI's
    CDN-hosted docs page) when it is not installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    d = Path(fastapi_offline.__file__).resolve().parent / "static"
    return d if (d / "swagger-ui-bundle.js").is_file() else None


def mount_static(app: FastAPI, docs_static: Optional[Path]) -> None:
    """The page's files under ``/static``; with local docs assets, ``/docs`` and ``/redoc`` pages that use them."""
    app.mount("/static", StaticFiles(directory=str(WEB_DIR)), name="static")
    if docs_static is None:
        return
    app.mount("/_docs", StaticFiles(directory=str(docs_static)), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} — API docs",
                                   swagger_js_url="/_docs/swagger-ui-bundle.js",
                                   swagger_css_url="/_docs/swagger-ui.css", swagger_favicon_url="/_docs/favicon.png")

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{app.title} — ReDoc",
                              redoc_js_url="/_docs/redoc.standalone.js", redoc_favicon_url="/_docs/favicon.png",
                              with_google_fonts=False)
