#!/usr/bin/env bash
# Builds the project's virtual environment on a fresh machine (CPU only).
# Order matters: the pinned lock first (torch 2.13.0 CPU wheel, fbgemm-gpu-cpu 1.8.0),
# then torchrec with --no-deps so pip never pulls the CUDA `fbgemm-gpu` (DESIGN.md),
# then mtlrec itself, editable.
set -euo pipefail
venv=${1:-.venv}
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet -r requirements/lock.txt
"$venv/bin/pip" install --quiet --no-deps -r requirements/torchrec.txt
"$venv/bin/pip" install --quiet --no-deps -e .
"$venv/bin/python" -c "import torch, torchrec, polars, mlflow; print('env ok: torch', torch.__version__, 'polars', polars.__version__)"
