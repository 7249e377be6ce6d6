#!/usr/bin/env bash
# Train one ablation group with stock `swift sft` and the group's run configuration.
#
#   GROUP=b bash shell/train.sh [more swift sft flags, which override the configuration]
#
# Variables (default):
#   GROUP       a | b | c                                   (a)
#   CONFIG      run configuration                           (templates/group_$GROUP.yaml)
#   MODEL       Qwen3-VL checkpoint (dir or hub id)         (the configuration's)
#   DATA        training samples, unified JSONL             (the configuration's)
#   VAL_DATA    validation samples, unified JSONL           (the configuration's)
#   OUT         output directory                            (output/ablation/group_$GROUP)
#   TUNER       full | lora | dora                          (full)
#   DEEPSPEED   "" | zero2 | zero3 | zero2_offload | zero3_offload   ("")
#   NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT: passed to torchrun by ms-swift.
#     DeepSpeed needs a launcher even for one process: with DEEPSPEED set, NPROC_PER_NODE defaults to 1.
# Plugin settings (COORDEXP_*, COORD_ORDER, COORD_ORDER_SEED; docs/losses.md "Setting a switch") set in the
# shell are passed on and beat the configuration's ENV block; each one is printed. The plugin checks every
# key when swift starts, before the model loads: a misspelt COORDEXP_* key stops the run there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GROUP="${GROUP:-a}"
case "$GROUP" in a|b|c) ;; *) echo "[train] GROUP must be a, b or c (got '$GROUP')" >&2; exit 2;; esac
CONFIG="${CONFIG:-$ROOT/templates/group_$GROUP.yaml}"
OUT="${OUT:-$ROOT/output/ablation/group_$GROUP}"
TUNER="${TUNER:-full}"
DEEPSPEED="${DEEPSPEED:-}"
[ -f "$CONFIG" ] || { echo "[train] configuration not found: $CONFIG" >&2; exit 2; }
command -v swift >/dev/null || { echo "[train] swift not on PATH: run 'bash shell/setup.sh' and 'source .venv/bin/activate'" >&2; exit 2; }
PLUGIN="$(coord-plugin-path)"

ARGS=("$CONFIG" --external_plugins "$PLUGIN" --output_dir "$OUT")
[ -n "${MODEL:-}" ] && ARGS+=(--model "$MODEL")
if [ -n "${DATA:-}" ]; then
  [ -f "$DATA" ] || { echo "[train] DATA not found: $DATA" >&2; exit 2; }
  ARGS+=(--dataset "coord:$(realpath "$DATA")")
fi
if [ -n "${VAL_DATA:-}" ]; then
  [ -f "$VAL_DATA" ] || { echo "[train] VAL_DATA not found: $VAL_DATA" >&2; exit 2; }
  ARGS+=(--val_dataset "coord:$(realpath "$VAL_DATA")")
fi
case "$TUNER" in
  full) ARGS+=(--tuner_type full) ;;
  lora) ARGS+=(--tuner_type lora --modules_to_save embed_tokens lm_head) ;;
  dora) ARGS+=(--tuner_type lora --use_dora true --modules_to_save embed_tokens lm_head) ;;
  *) echo "[train] TUNER must be full, lora or dora (got '$TUNER')" >&2; exit 2 ;;
esac
if [ -n "$DEEPSPEED" ]; then
  ARGS+=(--deepspeed "$DEEPSPEED")
  export NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
fi
for v in $(env | grep -oE '^(COORDEXP_[A-Za-z0-9_]*|COORD_ORDER|COORD_ORDER_SEED)=' | tr -d '=' || true); do
  echo "[train] $v=${!v} from the shell (beats the configuration's ENV block)"
done
mkdir -p "$OUT"
echo "[train] group $GROUP | tuner $TUNER | deepspeed ${DEEPSPEED:-none} | NPROC_PER_NODE=${NPROC_PER_NODE:-unset} NNODES=${NNODES:-unset}"
echo "[train] swift sft ${ARGS[*]} $*"
exec swift sft "${ARGS[@]}" "$@"
