#!/usr/bin/env bash
# The GPU check as one prepared run: GPU time is scarce (a lent machine, minutes), so everything it needs is staged
# here first and it runs once there.
#
#   bash scripts/gpu_check.sh stage   # here, with the package registries: MNIST into .gpu/mnist, and into .gpu/wheels
#                                     # the wheels of the packages the GPU image lacks or holds at other versions
#   bash scripts/gpu_check.sh run     # on the GPU machine, from the repo root, with .gpu carried (device tool:
#                                     # carry [".gpu"], timeout_s 600): the CUDA tests, then
#                                     # scripts.gpu_time_to_accuracy; it ends within GPU_CHECK_BUDGET_S (540 s)
#
# `run` writes into $OUT (the device tool's folder that comes back; default outputs/gpu): cuda_tests.log,
# gpu_time_to_accuracy.{json,md}, nvidia-smi.txt, run.log (also what a failed step printed), each written as it goes.
# Its exit status is non-zero when a step failed or no CUDA GPU was seen. Copy the JSON and markdown into records/.
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
  # The device tool carries the working tree (tracked and untracked-not-ignored files) and .gpu: 64 MiB at most.
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null |
    awk '{s += $1} END {print s + 0}')
  total=$(( (tree + $(du -sb .gpu | cut -f1)) / 1048576 ))
  echo "carried: ${total} MiB of the device tool's 64 (the tree and .gpu; run with carry [\".gpu\"])"
  [ "$total" -lt 62 ] || { echo "stage: ${total} MiB is too close to the device tool's 64 MiB"; exit 1; }
  exit 0
fi

[ "$MODE" = run ] || { echo "usage: bash scripts/gpu_check.sh stage|run"; exit 2; }
# Within the device tool's 10 minutes a command (give it timeout_s 600): every step's time comes out of one budget
# (GPU_CHECK_BUDGET_S, default 540 s: ~1 min to install and import, at most 2 min of tests, the rest timing), so the
# run ends, its files written, before the tool's limit. Nothing is fetched there: pip --no-index, the Hub offline.
OUT=${OUT:-outputs/gpu}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
tee_pid=$!
finish() { exec >&- 2>&-; wait "$tee_pid"; exit "$1"; }
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-540}))
left() { local s=$((deadline - SECONDS)); echo $((s < $1 ? (s > 1 ? s : 1) : $1)); }  # seconds for a step, <= $1
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_EVALUATE_OFFLINE=1
export HF_HUB_DISABLE_TELEMETRY=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # the image's pytest plugins, not ours
PY=${PYTHON:-python3}
if [ -d .gpu/wheels ]; then
  timeout "$(left 120)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/wheels/*.whl || { echo "pip install of .gpu/wheels failed (rc $?)"; finish 1; }
  export PYTHONPATH=/tmp/site
fi
DATASET=.gpu/mnist
[ -d "$DATASET" ] || { echo "no $DATASET: run 'bash scripts/gpu_check.sh stage' here first, carry .gpu"; finish 1; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
echo "nvidia-smi rc $?"
echo "pip check, the lines on what the run imports:"
timeout "$(left 60)" "$PY" -m pip check | grep -i -E "transformers|tokenizers|huggingface|datasets|evaluate|accel|torch|arrow"
timeout "$(left 120)" "$PY" -c "import torch, torchvision, transformers, datasets, evaluate, accelerate, pytest, pyarrow
print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'torchvision', torchvision.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__,
      'accelerate', accelerate.__version__, 'pyarrow', pyarrow.__version__, 'pytest', pytest.__version__)
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO GPU')" || { echo "imports failed"; finish 1; }
timing_args=()
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "NO CUDA GPU: the CUDA tests skip, and the timing runs --allow-cpu --smoke (its logic only, no GPU figures)"
  timing_args=(--allow-cpu --smoke)
fi
# The tests that need CUDA (each skips clearly without it), and the CPU-side tests of the CUDA plan.
timeout -k 5 "$(left 120)" "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_training.py \
  tests/test_fast_kernels.py -k "cuda or device or where_the_model" 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
# The script stops itself within --budget (a configuration cut short is recorded); timeout is the backstop.
budget=$(left 600)
timeout -k 5 $((budget + 15)) "$PY" -m scripts.gpu_time_to_accuracy --dataset "$DATASET" \
  --output "$OUT/gpu_time_to_accuracy.json" --timeout 120 --budget "$budget" "${timing_args[@]}"
timing_rc=$?
echo "cuda tests rc $tests_rc, timing rc $timing_rc, $SECONDS s${timing_args[*]:+, NO GPU}"
finish $(( tests_rc || timing_rc || ${#timing_args[@]} ))
