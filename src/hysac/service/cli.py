"""``hysac serve``: run the HTTP service and web page with uvicorn (mounted by :mod:`hysac.cli`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError

__all__ = ["serve_command"]


def serve_command(
    index: Optional[Path] = typer.Option(None, "--index", "-x",
                                         help="Index directory to search (default: none; /search answers 503)."),
    model: Optional[str] = typer.Option(None, "--model", "-m",
                                        help="Model name or folder (default: the index's model, else the shipped "
                                             "hysac-mini)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", "-p", help="TCP port."),
    max_upload_mb: float = typer.Option(8, "--max-upload-mb", help="Largest request body, in MiB."),
    max_batch: int = typer.Option(16, "--max-batch", help="Most inputs per /classify request (16 keeps the largest request under 2 s and 1 GB on 2 cores; benchmarks/results/request_cost.md)."),
    max_k: int = typer.Option(100, "--max-k", help="Largest k a search may ask for."),
    torch_threads: Optional[int] = typer.Option(
        None, "--torch-threads", help="torch intra-op threads for inference (default: torch's, one per core; 1 is "
                                      "often faster for small models on a busy machine)."),
    keep_alive: int = typer.Option(30, "--keep-alive", help="Seconds an idle keep-alive connection stays open."),
    header_timeout: float = typer.Option(10, "--header-timeout", help="Seconds a client has to send its request "
                                                                     "headers before the connection is closed."),
    body_timeout: float = typer.Option(60, "--body-timeout", help="Seconds a client has to send its request body "
                                                                 "after the headers."),
    max_request_mpx: float = typer.Option(100, "--max-request-mpx", help="Most decoded megapixels of all uploads "
                                                                        "of one request together."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (warning: no access log)."),
    coalesce: int = typer.Option(64, "--coalesce", help="Most concurrent single queries (/search, /traverse) encoded "
                                                         "in one model call (1: one call per query)."),
    fast: bool = typer.Option(False, "--fast", help="Fast inference path (hysac.fast: GPU when CUDA is available, "
                                                    "else CPU; same scores to float/bf16 tolerance)."),
    allow_host: list[str] = typer.Option([], "--allow-host", help="Another Host name the server answers to "
                                                                  "(repeatable; '*' for any). Loopback names and "
                                                                  "--host are always allowed."),
) -> None:
    """Serve the HTTP API (/classify, /search, /traverse, /health, docs at /docs) and the web page at /."""
    import uvicorn

    from .app import create_app
    from .protocol import timeout_protocol

    if not 0 <= port <= 65535:
        raise InputError(f"port must be in 0..65535, got {port}")
    if max_batch < 1 or max_k < 1 or coalesce < 1:
        raise InputError("--max-batch, --max-k and --coalesce must be positive")
    for flag, value, hi in (("--max-upload-mb", max_upload_mb, 1024 * 1024),
                            ("--header-timeout", header_timeout, 86400), ("--body-timeout", body_timeout, 86400),
                            ("--max-request-mpx", max_request_mpx, 1e6)):
        if not (math.isfinite(value) and 0 < value <= hi):
            raise InputError(f"{flag} must be a positive finite number (at most {hi:g}), got {value}")
    if torch_threads is not None and not 1 <= torch_threads <= 4096:
        raise InputError(f"--torch-threads must be between 1 and 4096, got {torch_threads}")
    if index is not None and not index.exists():
        raise InputError(f"index not found: {index}")
    if torch_threads is not None:
        import torch

        torch.set_num_threads(torch_threads)
    from .app import LOCAL_HOSTS

    hosts = [*LOCAL_HOSTS, *([] if host in ("0.0.0.0", "::") else [host]), *allow_host]
    app = create_app(model, index, max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_batch=max_batch,
                     max_k=max_k, fast=fast, coalesce=coalesce, allowed_hosts=hosts,
                     max_request_pixels=int(max_request_mpx * 1_000_000))
    where = "0.0.0.0 (all interfaces)" if host == "0.0.0.0" else host
    typer.echo(f"hysac serve: model {app.state.engine.model.model_id}"
               + (f" (fast path: {app.state.fast['path']})" if app.state.fast else "")
               + (f", index {index}" if index is not None else ", no index")
               + f" — open http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/ (listening on {where})",
               err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level in ("debug", "info"),
                timeout_keep_alive=keep_alive, http=timeout_protocol(header_timeout, body_timeout))
