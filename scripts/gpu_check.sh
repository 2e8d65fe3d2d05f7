#!/usr/bin/env bash
# The GPU check as one prepared run: GPU time is scarce (a lent machine, minutes), so everything it needs is staged
# here first and it runs once there.
#
#   bash scripts/gpu_check.sh stage   # here, with the package registries: MNIST into .gpu/mnist, and into .gpu/wheels
#                                     # the wheels of the packages the GPU image lacks or holds at other versions
#   bash scripts/gpu_check.sh run     # on the GPU machine, from the repo root, with .gpu carried (device tool:
#                                     # carry [".gpu"]): the CUDA tests, then scripts.gpu_time_to_accuracy
#
# `run` writes into $OUT (the device tool's folder that comes back; default outputs/gpu): cuda_tests.log,
# gpu_time_to_accuracy.{json,md}, nvidia-smi.txt, run.log. Copy the JSON and markdown into records/ here.
# .gpu/ is git-ignored.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
# What scripts.train imports beyond the GPU image's own packages (torch, accelerate, safetensors, numpy, pyarrow,
# pandas, xxhash, tensorboard, ... are there), at this project's tested versions.
# transformers checks safetensors' and regex's versions when imported.
PACKAGES=(transformers tokenizers huggingface_hub httpx2 httpcore2 truststore click safetensors regex datasets evaluate
  dill multiprocess fsspec pytest pluggy iniconfig)

if [ "$MODE" = stage ]; then
  PY=${PYTHON:-.venv/bin/python}
  rm -rf .gpu && mkdir -p .gpu/wheels
  cp -r ../shared/data/mnist .gpu/mnist || { echo "stage: no ../shared/data/mnist to copy"; exit 1; }
  pins=()
  for name in "${PACKAGES[@]}"; do
    pins+=("$name==$("$PY" -c "import importlib.metadata as m; print(m.version('$name'))")")
  done
  platforms=()
  for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" --platform manylinux2014_x86_64 -d .gpu/wheels "${pins[@]}" || exit 1
  ls .gpu/wheels && du -sh .gpu
  exit 0
fi

[ "$MODE" = run ] || { echo "usage: bash scripts/gpu_check.sh stage|run"; exit 2; }
# Within the device tool's 10 minutes a command: ~1 min to install and import, 2 min of tests, 6.5 min of timing.
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
tee_pid=$!
finish() { exec >&- 2>&-; wait "$tee_pid"; exit "$1"; }
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if [ -d .gpu/wheels ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl || finish 1
  export PYTHONPATH=/tmp/site
fi
DATASET=.gpu/mnist
[ -d "$DATASET" ] || { echo "no $DATASET: run 'bash scripts/gpu_check.sh stage' here first, carry .gpu"; finish 1; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, torchvision, transformers, datasets, evaluate, accelerate, pytest
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')" || finish 1
# The tests that need CUDA (each skips clearly without it), and the CPU-side tests of the CUDA plan.
timeout 120 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_training.py tests/test_fast_kernels.py \
  -k "cuda or device or where_the_model" 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
timeout 400 "$PY" -m scripts.gpu_time_to_accuracy --dataset "$DATASET" --output "$OUT/gpu_time_to_accuracy.json" \
  --timeout 120
timing_rc=$?
echo "cuda tests rc $tests_rc, timing rc $timing_rc"
finish $(( tests_rc || timing_rc ))
