#!/usr/bin/env bash
# Launch the Gradio demo (spaces_app/app.py) on the shipped weights; sets up .venv first if needed.
#
#     bash scripts/demo.sh                                   # http://127.0.0.1:7860
#     GRADIO_SERVER_PORT=8000 bash scripts/demo.sh           # another port
#     MINIVISION_MODEL=outputs/quick bash scripts/demo.sh    # another model folder (or a Hub id)
#
# Installs only when .venv cannot already import everything the demo needs: torch and torchvision first, pinned
# (pip finds these versions on this machine's disk; any other version would download gigabytes), then the package
# with its dev extras from pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

if "$VENV/bin/python" -c "import torch, torchvision, transformers, gradio, minivision_hf" 2>/dev/null; then
    echo "$VENV already has the demo's dependencies: skipping install"
else
    "$VENV/bin/pip" install torch==2.14.1 torchvision==0.29.1
    "$VENV/bin/pip" install -e ".[dev]"
fi

export GRADIO_ANALYTICS_ENABLED=False
HOST=${GRADIO_SERVER_NAME:-127.0.0.1}
PORT=${GRADIO_SERVER_PORT:-7860}
echo "Mini-Vision-V2 demo at http://$HOST:$PORT/ (Ctrl-C to stop)"
exec env GRADIO_SERVER_NAME="$HOST" GRADIO_SERVER_PORT="$PORT" "$VENV/bin/python" spaces_app/app.py
