#!/usr/bin/env bash
# Create .venv and install the project with its `dev` extra (everything: core, train, onnx, demo, test tools); a quick
# no-op when everything is already there. A user who only runs the model needs just `pip install minivision-hf`.
#   bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Every module of the `dev` extra (core + train + onnx + demo + test tools) installed: nothing to do. find_spec looks
# without importing (a second, not the ~20 s gradio and torch take); -I keeps the repo's onnx/ folder off the path.
MODULES="torch torchvision transformers safetensors minivision_hf datasets evaluate accelerate tensorboard matplotlib
  onnx onnxruntime onnxscript gradio gradio_client playwright pytest ruff"
if .venv/bin/python -I -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))" \
  $MODULES 2>/dev/null; then
  echo "setup: .venv is ready"
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch/torchvision first, pinned: these versions lie on this machine's disk (others download gigabytes).
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[dev]"
echo "setup: installed into .venv"
