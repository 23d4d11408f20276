#!/usr/bin/env bash
# The GPU checks (benchmarks/gpu_check.py) as one device call. Prepare once, on this machine
# (.whl and .gpu are in .gitignore; together with the tree they stay under the 64 MiB carried):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     -d .whl duckdb==2.0.1      # optimorph's one import the GPU image lacks
#   mkdir -p .gpu/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fashion-mnist/
# then run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=540).
# The image's python3 has JAX with CUDA; optimorph runs from src/ (its pins are for CPUs).
set -uo pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX takes 75% of the GPU's memory per process by default; the recipe's subprocess needs some.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
[ -d .gpu ] && export OPTIMORPH_DATA="$PWD/.gpu"
out="${OUT:-runs/gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 \
  | tee "$out/nvidia-smi.txt"
python3 benchmarks/gpu_check.py --out "$out" --budget "${GPU_CHECK_BUDGET:-420}" "$@" 2>&1 \
  | grep -v -i "warning" | tee "$out/gpu_check.log"
