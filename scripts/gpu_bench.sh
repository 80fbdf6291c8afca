#!/usr/bin/env bash
# The GPU checks in one command, for the few minutes a GPU machine is lent (README,
# "GPU checks"). From a bare machine with Python and torch: installs the carried wheels
# (.whl/, made here by scripts/gpu_wheels.sh: torchrec, fbgemm-gpu-cpu, tensordict,
# pydantic, …), runs the training-throughput benchmark (MMoE at MTReclib sizes, eager /
# torch.compile / CUDA graphs, B = 2048 and 16384, data generated on the device) and the
# CUDA tests, and writes every result as files under $OUT (default: gpu-results/).
#
# Without a GPU it runs the same code on the CPU at toy sizes (CI checks it that way);
# MTLREC_GPU_BENCH_ARGS replaces the benchmark's arguments.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
python=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/mtlrec-site .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/mtlrec-site"
fi
if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    args=${MTLREC_GPU_BENCH_ARGS:-"--batch 2048 16384 --steps 50"}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
else
    args=${MTLREC_GPU_BENCH_ARGS:-"--toy --batch 64 --steps 3 --modes eager"}
fi
status=0
# shellcheck disable=SC2086  # the arguments are words on purpose
PYTHONUNBUFFERED=1 "$python" -m mtlrec.training.throughput --out "$out/throughput.json" $args \
    2>&1 | tee "$out/throughput.log" || status=1
"$python" -m pytest -p no:cacheprovider --noconftest -q -o addopts="" tests/test_cuda.py \
    2>&1 | tee "$out/cuda_tests.log" || status=1
exit $status
