#!/usr/bin/env bash
# Launch the Gradio demo (spaces_app/app.py) on the shipped weights; sets up .venv first if needed.
#
#     bash scripts/demo.sh                                   # http://127.0.0.1:7860
#     GRADIO_SERVER_PORT=8000 bash scripts/demo.sh           # another port
#     MINIVISION_MODEL=outputs/quick bash scripts/demo.sh    # another model folder (or a Hub id)
#
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh  # creates .venv and installs only what is missing
VENV=.venv

export GRADIO_ANALYTICS_ENABLED=False
HOST=${GRADIO_SERVER_NAME:-127.0.0.1}
PORT=${GRADIO_SERVER_PORT:-7860}
echo "Mini-Vision-V2 demo at http://$HOST:$PORT/ (Ctrl-C to stop)"
exec env GRADIO_SERVER_NAME="$HOST" GRADIO_SERVER_PORT="$PORT" "$VENV/bin/python" spaces_app/app.py
