#!/usr/bin/env bash
# Fetches, here, the wheels scripts/gpu_bench.sh installs on the GPU machine (Python 3.12,
# torch 2.11 with CUDA, no torchrec/pydantic there: ../shared/docs/DESIGN.md) into .whl/,
# which git ignores and the device call carries (`carry: [".whl"]`; ≈ 9 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    torchrec==1.6.1 fbgemm-gpu-cpu==1.6.0 tensordict==0.9.1 pyvers==0.1.0 orjson \
    pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
du -sh .whl
