#!/usr/bin/env bash
# Train one ablation group with stock `swift sft` and the group's run configuration.
#
#   GROUP=b bash shell/train.sh [more swift sft flags, which override the configuration]
#
# Variables (default):
#   GROUP       a | b | c                                   (a)
#   CONFIG      run configuration                           (templates/group_$GROUP.yaml)
#   MODEL       Qwen3-VL checkpoint (dir or hub id)         (the configuration's)
#               a hub id comes from ModelScope, or Hugging Face with --use_hf true; offline (HF_HUB_OFFLINE=1)
#               it must be in that hub's cache, else train.sh stops naming it (docs/cluster.md)
#   DATA        training samples, unified JSONL [#N]        (the configuration's)
#   VAL_DATA    validation samples, unified JSONL [#N]      (the configuration's; '#N': N rows, all if fewer)
#   OUT         output directory                            (output/ablation/group_$GROUP)
#   TUNER       full | lora | dora                          (full)
#     lora/dora also set LORA_RANK (64), LORA_ALPHA (128), LORA_LR (1e-4: the configuration's 1e-5 is
#     a full-fine-tuning rate); a --learning_rate/--lora_rank given after the script wins.
#   RESUME      auto | 0 | <checkpoint dir>: auto resumes from OUT/last-checkpoint when it exists (a re-submitted
#               pre-empted job continues with its optimizer state); 0 starts afresh         (auto)
#   CPU=1       a CPU dry run (fp32, no bf16; one data worker; gloo when NPROC_PER_NODE>1). Without a GPU,
#               train.sh stops unless CPU=1 or your own flags say --bf16 false
#   COORD_DATA_ROOT  folder that relative coord: paths are resolved against   (the repository root)
#   DEEPSPEED   "" | zero2 | zero3 | zero2_offload | zero3_offload   ("")
#   NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT: passed to torchrun by ms-swift.
#     DeepSpeed needs a launcher even for one process: with DEEPSPEED set, NPROC_PER_NODE defaults to 1.
# Plugin settings (COORDEXP_*, COORD_ORDER, COORD_ORDER_SEED, COORD_INPUT_NOISE_*; docs/losses.md "Setting a switch") set in the
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
# --- paths, CPU, LoRA rate (cluster set-up) ---------------------------------------------------------
export COORD_DATA_ROOT="${COORD_DATA_ROOT:-$ROOT}"
coord_data() {  # coord:<absolute path>[#N] for a file given as PATH[#N]; fails naming the variable
  local name="$1" value="$2" file="${2%%#*}" sample=""
  [ "$file" != "$value" ] && sample="#${value#*#}"
  [ -f "$file" ] || { echo "[train] $name not found: $file" >&2; exit 2; }
  [ -z "$sample" ] || [[ "$sample" =~ ^#[1-9][0-9]*$ ]] || { echo "[train] $name: '$sample' must be #N with N > 0" >&2; exit 2; }
  echo "coord:$(realpath "$file")$sample"
}
LORA_ARGS=(--lora_rank "${LORA_RANK:-64}" --lora_alpha "${LORA_ALPHA:-128}" --learning_rate "${LORA_LR:-1e-4}")
# -----------------------------------------------------------------------------------------------------

ARGS=("$CONFIG" --external_plugins "$PLUGIN" --output_dir "$OUT")
[ -n "${MODEL:-}" ] && ARGS+=(--model "$MODEL")
if [ -n "${DATA:-}" ]; then
  SPEC="$(coord_data DATA "$DATA")" || exit 2
  ARGS+=(--dataset "$SPEC")
fi
if [ -n "${VAL_DATA:-}" ]; then
  SPEC="$(coord_data VAL_DATA "$VAL_DATA")" || exit 2
  ARGS+=(--val_dataset "$SPEC")
fi
case "$TUNER" in
  full) ARGS+=(--tuner_type full) ;;
  lora) ARGS+=(--tuner_type lora --modules_to_save embed_tokens lm_head "${LORA_ARGS[@]}") ;;
  dora) ARGS+=(--tuner_type lora --use_dora true --modules_to_save embed_tokens lm_head "${LORA_ARGS[@]}") ;;
  *) echo "[train] TUNER must be full, lora or dora (got '$TUNER')" >&2; exit 2 ;;
esac
if [ -n "$DEEPSPEED" ]; then
  ARGS+=(--deepspeed "$DEEPSPEED")
  export NPROC_PER_NODE="${NPROC_PER_NODE:-1}"
fi
for v in $(env | grep -oE '^(COORDEXP_[A-Za-z0-9_]*|COORD_ORDER|COORD_ORDER_SEED|COORD_INPUT_NOISE_BINS|COORD_INPUT_NOISE_PROB)=' | tr -d '=' || true); do
  echo "[train] $v=${!v} from the shell (beats the configuration's ENV block)"
done
# --- resume, CPU dry run (cluster set-up) -------------------------------------------------------------
RESUME="${RESUME:-auto}"
if [ "$RESUME" = "auto" ]; then
  [ -e "$OUT/last-checkpoint" ] && ARGS+=(--resume_from_checkpoint "$(realpath "$OUT/last-checkpoint")")
elif [ "$RESUME" != "0" ]; then
  [ -d "$RESUME" ] || { echo "[train] RESUME checkpoint not found: $RESUME" >&2; exit 2; }
  ARGS+=(--resume_from_checkpoint "$(realpath "$RESUME")")
fi
if [ "${CPU:-0}" = "1" ]; then
  ARGS+=(--torch_dtype float32 --bf16 false --fp16 false --dataloader_num_workers 0 --dataset_num_proc 1)
  source "$(dirname "${BASH_SOURCE[0]}")/cpu_allocator.sh"   # glibc keeps freed memory (no value changes)
  [ "${NPROC_PER_NODE:-1}" -gt 1 ] && ARGS+=(--use_cpu true)   # gloo; without it ranks are not really distributed
elif [[ " $* " != *" --bf16 false "* ]] \
     && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "[train] no GPU visible: the configurations train in bf16 on GPUs. For a CPU dry run set CPU=1" >&2
  echo "[train] (fp32; e.g. GROUP=a MODEL=<small Qwen3-VL> CPU=1 bash shell/train.sh --max_steps 2)" >&2
  exit 2
fi
# --- weights (docs/cluster.md): a local folder, or a hub id that ModelScope (default) or Hugging Face (--use_hf
# true) downloads; on an offline node (HF_HUB_OFFLINE=1) a hub id must already be in that hub's cache ----------
WEIGHTS="${MODEL:-$(sed -n 's/^model:[[:space:]]*\([^[:space:]#]*\).*/\1/p' "$CONFIG" | head -1)}"
WHAT="${MODEL:+MODEL}"; WHAT="${WHAT:-the model of $CONFIG}"
for ((k = 1; k < $#; k++)); do [ "${!k}" = --model ] && { n=$((k + 1)); WEIGHTS="${!n}"; WHAT="--model"; }; done
USE_HF_FLAG=(); [[ " $* " =~ \ --use_hf\ ([Tt]rue|1)\  ]] && USE_HF_FLAG=(--use-hf)
python -m swift_coord_plugin.cli.model_source "$WEIGHTS" --what "$WHAT" ${USE_HF_FLAG[@]+"${USE_HF_FLAG[@]}"} >/dev/null \
  || { echo "[train] the model weights are not reachable (above); docs/cluster.md says how to bring them" >&2; exit 2; }
# -----------------------------------------------------------------------------------------------------
mkdir -p "$OUT"
echo "[train] group $GROUP | tuner $TUNER | deepspeed ${DEEPSPEED:-none} | NPROC_PER_NODE=${NPROC_PER_NODE:-unset} NNODES=${NNODES:-unset} | cpu ${CPU:-0} | resume $RESUME | COORD_DATA_ROOT=$COORD_DATA_ROOT"
echo "[train] swift sft ${ARGS[*]} $*"
exec swift sft "${ARGS[@]}" "$@"
