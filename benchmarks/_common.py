"""Shared helpers for benchmark scripts: machine description and result writing."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import torch

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_name(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1m": os.getloadavg()[0],
    }
    return info


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(*modules: str) -> dict:
    """``{module: __version__}`` (None for a module that is missing); ``"hysac"`` reads the installed metadata."""
    out: dict = {}
    for mod in modules:
        try:
            if mod == "hysac":
                from importlib.metadata import version

                out[mod] = version("hysac")
            else:
                out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing or odd package is reported as None
            out[mod] = None
    return out


def write(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
    print(markdown)


def wait_for_health(proc, url: str, log_path: Path, timeout: float, poll: float = 0.3):
    """Poll ``url``/health until it answers 200 (returns ``(proc, url)``); exit with the server log's tail if the
    server process dies or ``timeout`` seconds pass."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited during startup:\n{Path(log_path).read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    proc.kill()
    raise SystemExit("server did not start in time")


def stop_server(proc, timeout: float = 20) -> None:
    """Terminate a benchmark's server process, killing it if it has not exited after ``timeout`` seconds."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
