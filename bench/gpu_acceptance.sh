#!/usr/bin/env bash
# GPU acceptance run (bench/gpu_acceptance.py): the loss stage, `swift sft` steps of a Qwen3-VL-2B-shaped model per
# group, constrained decoding and (when vLLM imports) vLLM, on one GPU with the machine's own torch and transformers.
# Each stage's table is appended to $OUT/results_gpu.md (and its rows to $OUT/rows.jsonl) when it finishes, then to
# bench/results_gpu.md. Extra arguments go to the python module (e.g. --stages loss sft, --device cpu).
#
# On a machine without ms-swift and its companions, a wheel kit in .whl/ (install_on_gpu.sh and the wheels) is
# installed first into $COORD_KIT_TARGET (default /tmp/site); torch, transformers and numpy stay the machine's.
#   OUT=/tmp/acceptance bash bench/gpu_acceptance.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
OUT="${OUT:-$ROOT/output/gpu_acceptance}"
if ! "$PY" -c 'import swift, deepspeed' 2>/dev/null; then
  if [ -f "$ROOT/.whl/install_on_gpu.sh" ]; then
    TARGET="${COORD_KIT_TARGET:-/tmp/site}"
    echo "[acceptance] installing the wheel kit .whl/ into $TARGET"
    # shellcheck disable=SC1091
    source "$ROOT/.whl/install_on_gpu.sh" "$ROOT/.whl" "$TARGET" >/dev/null
    export PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" PATH="$TARGET/bin:$PATH"
  else
    echo "[acceptance] ms-swift or deepspeed does not import with $PY, and there is no wheel kit in .whl/" >&2
    exit 2
  fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
exec "$PY" "$ROOT/bench/gpu_acceptance.py" --out "$OUT" --record "$ROOT/bench/results_gpu.md" \
  --command "bash bench/gpu_acceptance.sh${*:+ $*}" "$@"
