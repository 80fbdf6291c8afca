#!/usr/bin/env bash
# The GPU checks in one command, for the few minutes a GPU machine is lent (README,
# "GPU checks"). From a bare machine with Python and torch: installs the carried wheels
# (.whl/, made here by scripts/gpu_wheels.sh: torchrec, fbgemm-gpu-cpu, tensordict,
# pydantic, …), runs the training-throughput benchmark (MMoE at MTReclib
# sizes, eager / torch.compile / CUDA graphs, B = 2048 and 16384, data generated on the
# device), a QM9 run of EW and the per-task-gradient methods (`mtlrec.training.
# qm9_throughput`, sized for ≈ 2 minutes but not yet timed on a GPU; its Parquet file copied to .gpu-data/qm9.parquet, which
# git ignores and the device call carries) and the CUDA tests, and writes every result as
# files under $OUT (default: gpu-results/).
#
# Without a GPU it runs the same code on the CPU at toy sizes (CI checks it that way; QM9
# then comes from ../shared/data); MTLREC_GPU_BENCH_ARGS / MTLREC_GPU_QM9_ARGS replace the
# benchmarks' arguments.
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
    qm9_args=${MTLREC_GPU_QM9_ARGS:-"--train 10000 --valid 1000 --epochs 2"}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv" 2>&1
else
    args=${MTLREC_GPU_BENCH_ARGS:-"--toy --batch 64 --steps 3 --modes eager"}
    qm9_args=${MTLREC_GPU_QM9_ARGS:-"--toy"}
fi
qm9=${QM9_PARQUET:-.gpu-data/qm9.parquet}
[ -f "$qm9" ] || qm9=../shared/data/qm9/qm9.parquet
status=0
# shellcheck disable=SC2086  # the arguments are words on purpose
PYTHONUNBUFFERED=1 "$python" -m mtlrec.training.throughput --out "$out/throughput.json" $args \
    2>&1 | tee "$out/throughput.log" || status=1
if [ -f "$qm9" ]; then
    # shellcheck disable=SC2086
    PYTHONUNBUFFERED=1 "$python" -m mtlrec.training.qm9_throughput --data "$qm9" --out "$out/qm9.json" \
        $qm9_args 2>&1 | tee "$out/qm9.log" || status=1
else
    echo "no QM9 file at .gpu-data/qm9.parquet or ../shared/data/qm9/qm9.parquet: QM9 run skipped" | tee "$out/qm9.log"
fi
"$python" -m pytest -p no:cacheprovider --noconftest -q -o addopts="" tests/test_cuda.py \
    2>&1 | tee "$out/cuda_tests.log" || status=1
exit $status
