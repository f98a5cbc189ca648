"""Run the app with uvicorn in a background thread on a free loopback port (tests, benchmarks, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["free_socket", "serve_in_thread"]


def free_socket(host: str = "127.0.0.1") -> socket.socket:
    """A listening-ready TCP socket bound to a free port of ``host`` (handed to uvicorn: no port race)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", *, log_level: str = "warning",
                    timeout: float = 30.0, **config: Any) -> Iterator[str]:
    """Serve ``app`` on a free port of ``host`` in a daemon thread; yields the base URL; stops on exit."""
    import uvicorn

    sock = free_socket(host)
    port = sock.getsockname()[1]
    from .protocol import timeout_protocol

    config.setdefault("http", timeout_protocol())
    cfg = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on", **config)
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hysac-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn server thread exited during startup")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start within {timeout} s")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)
        sock.close()
