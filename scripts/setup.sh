#!/usr/bin/env bash
# Create .venv and install the project with its dev extras; quick no-op when everything is already there.
#   bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if .venv/bin/python -c "import torch, torchvision, transformers, datasets, evaluate, gradio, onnxruntime, playwright, pytest, minivision_hf" 2>/dev/null; then
  echo "setup: .venv is ready"
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision first, pinned: these versions lie on this machine's disk (others download gigabytes).
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[dev]"
echo "setup: installed into .venv"
