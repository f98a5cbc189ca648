#!/usr/bin/env bash
# Set up a virtual environment in .venv with hysac and its test dependencies (idempotent).
# torch is pinned to the CPU build first so that no multi-GB CUDA wheel is pulled in; on a GPU machine install
# the torch build you want before running this script (any torch >= 2.1 satisfies the package).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  python -m pip install --quiet "torch==${HYSAC_TORCH_VERSION:-2.13.0}"
fi
python -m pip install --quiet -e ".[dev]"
# The web-page test drives headless Chromium (Debian packages). Installed when we can (root + apt-get);
# set HYSAC_SKIP_BROWSER=1 to skip. Without it the browser test is skipped with a reason.
if [ -z "${HYSAC_SKIP_BROWSER:-}" ] && { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; } && command -v apt-get >/dev/null 2>&1 \
   && [ "$(id -u)" = "0" ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped" >&2
fi
echo "hysac $(python -c 'import importlib.metadata as m; print(m.version("hysac"))') ready in .venv (torch $(python -c 'import torch; print(torch.__version__)'))"
