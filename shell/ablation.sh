#!/usr/bin/env bash
# The ablation study in one command, per model size:
#   prepare COCO -> train groups A, B, C (SEEDS runs each) -> evaluate every run on val2017 -> compare.
#
#   SIZE=2b COCO=/data/coco bash shell/ablation.sh [--dry-run] [more swift sft flags, for every run alike]
#
# Variables (default):
#   SIZE      2b | 4b | 8b | 30b-a3b                                                            (2b)
#             preset (README, per-size table): model, GPUs, DeepSpeed stage, lean path, tuner:
#               2b, 4b   Qwen3-VL-{2B,4B}-Instruct     8 GPUs            zero2  lean off  full
#               8b       Qwen3-VL-8B-Instruct          8 GPUs            zero3  lean off  full
#               30b-a3b  Qwen3-VL-30B-A3B-Instruct     2 nodes x 8 GPUs  zero3  lean on   full
#             every size trains with the same global batch, GLOBAL_BATCH (128) = 4 per GPU x GPUs x the
#             gradient accumulation this script passes
#   MODEL     local folder or hub id (the preset's Qwen/...); offline nodes: docs/cluster.md
#   COCO      folder with annotations/instances_{train,val}2017.json, train2017/ and val2017/       (required)
#   OUT       the study's folder                                                  (output/ablation_$SIZE)
#   SEEDS     runs per group (1). Run k trains with --seed and --data_seed 42+k and COORD_INIT_SEED k, in
#             OUT/group_<g> (k = 0) and OUT/group_<g>_seed<42+k>, the names shell/compare.sh aggregates
#   NPROC_PER_NODE, NNODES, DEEPSPEED, TUNER, LEAN (true|false): override the preset, for all groups alike
#   NODE_RANK, MASTER_ADDR, MASTER_PORT: several nodes run this same command; rank 0 prepares, evaluates
#             and compares, the others wait for the data and join each training
#   EVAL_NPROC  inference shards of each evaluation                                     (NPROC_PER_NODE)
#   DECODE SCORE MAX_DETS DECODING INFER_BACKEND INFER_CONFIG: the evaluation, passed to shell/eval.sh
#             (argmax logprob 100 constrained transformers templates/infer_eval.yaml: the paper-table row)
#   STAGES    the stages to run, in order                          ("prepare train evaluate compare")
#             e.g. STAGES=prepare on a CPU node first; a stage left out is listed, not run
#   --dry-run print every command of the study with what a run would do with it (run, resume, skip) and
#             run nothing
# Re-runs skip a finished stage only when nothing that changes its numbers changed:
#   prepare, train  a stamp (coord_stage.json) of the exact command and the SHA-256 of its input files
#                   (cli/stage.py); an interrupted training with the same stamp resumes from its last
#                   checkpoint; one with another stamp moves to OUT/replaced/<name>-<time> and is trained
#                   afresh
#   evaluate        a report.json made exactly as asked (the reuse rule of shell/eval.sh, cli/infer_settings.py)
#   compare         always runs (it reads the reports)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
SIZE="${SIZE:-2b}"
case "$SIZE" in
  2b)      P_MODEL=Qwen/Qwen3-VL-2B-Instruct;      P_NPROC=8; P_NNODES=1; P_DS=zero2; P_LEAN=false ;;
  4b)      P_MODEL=Qwen/Qwen3-VL-4B-Instruct;      P_NPROC=8; P_NNODES=1; P_DS=zero2; P_LEAN=false ;;
  8b)      P_MODEL=Qwen/Qwen3-VL-8B-Instruct;      P_NPROC=8; P_NNODES=1; P_DS=zero3; P_LEAN=false ;;
  30b-a3b) P_MODEL=Qwen/Qwen3-VL-30B-A3B-Instruct; P_NPROC=8; P_NNODES=2; P_DS=zero3; P_LEAN=true ;;
  *) echo "[ablation] SIZE must be 2b, 4b, 8b or 30b-a3b (got '$SIZE')" >&2; exit 2 ;;
esac
MODEL="${MODEL:-$P_MODEL}"
NPROC="${NPROC_PER_NODE:-$P_NPROC}"
NNODES="${NNODES:-$P_NNODES}"
DEEPSPEED="${DEEPSPEED-$P_DS}"
LEAN="${LEAN:-$P_LEAN}"
TUNER="${TUNER:-full}"
SEEDS="${SEEDS:-1}"
GLOBAL_BATCH="${GLOBAL_BATCH:-128}"
PER_GPU=4
NODE_RANK="${NODE_RANK:-0}"
OUT="${OUT:-$ROOT/output/ablation_$SIZE}"
for v in NPROC NNODES SEEDS GLOBAL_BATCH; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "[ablation] $v must be a positive integer (got '${!v}')" >&2; exit 2; }
done
case "$LEAN" in true|false) ;; *) echo "[ablation] LEAN must be true or false (got '$LEAN')" >&2; exit 2;; esac
GPUS=$(( NPROC * NNODES ))
(( GLOBAL_BATCH % (PER_GPU * GPUS) == 0 )) || {
  echo "[ablation] GLOBAL_BATCH=$GLOBAL_BATCH is not $PER_GPU per GPU x $GPUS GPUs x a whole gradient accumulation" >&2; exit 2; }
GA=$(( GLOBAL_BATCH / (PER_GPU * GPUS) ))
[ -n "${COCO:-}" ] || { echo "[ablation] set COCO to the folder with annotations/ train2017/ val2017/" >&2; exit 2; }
ANN_TRAIN="$COCO/annotations/instances_train2017.json"; ANN_VAL="$COCO/annotations/instances_val2017.json"
for f in "$ANN_TRAIN" "$ANN_VAL"; do [ -f "$f" ] || { echo "[ablation] COCO: $f not found" >&2; exit 2; }; done
for d in "$COCO/train2017" "$COCO/val2017"; do [ -d "$d" ] || { echo "[ablation] COCO: $d not found" >&2; exit 2; }; done
DECODE="${DECODE:-argmax}"; SCORE="${SCORE:-logprob}"; MAX_DETS="${MAX_DETS:-100}"
DECODING="${DECODING:-constrained}"; INFER_BACKEND="${INFER_BACKEND:-transformers}"
INFER_CONFIG="${INFER_CONFIG:-$ROOT/templates/infer_eval.yaml}"
EVAL_NPROC="${EVAL_NPROC:-$NPROC}"
command -v coord-prepare-coco >/dev/null \
  || { echo "[ablation] coord-prepare-coco not on PATH: run 'bash shell/setup.sh' and 'source .venv/bin/activate'" >&2; exit 2; }
# The weights first: an offline node without them stops here, not after hours of preparation.
USE_HF_FLAG=(); [[ " $* " =~ \ --use_hf\ ([Tt]rue|1)\  ]] && USE_HF_FLAG=(--use-hf)
python -m swift_coord_plugin.cli.model_source "$MODEL" ${USE_HF_FLAG[@]+"${USE_HF_FLAG[@]}"} >/dev/null \
  || { echo "[ablation] the model weights are not reachable (above); docs/cluster.md says how to bring them" >&2; exit 2; }

STAGE=(python -m swift_coord_plugin.cli.stage)
STAGES=" ${STAGES:-prepare train evaluate compare} "
for st in $STAGES; do
  case "$st" in prepare|train|evaluate|compare) ;; *) echo "[ablation] STAGES: unknown stage '$st'" >&2; exit 2;; esac
done
wanted() { [[ "$STAGES" == *" $1 "* ]] || { say "$1: not in STAGES, not run"; return 1; }; }
say() { echo "[ablation] $*"; }
show() { printf '%q ' "$@" | sed 's/ $//'; echo; }   # a command as a line that can be pasted into a shell
echo "[ablation] SIZE=$SIZE model $MODEL | $NNODES node(s) x $NPROC GPUs | deepspeed ${DEEPSPEED:-none} | lean $LEAN |" \
     "tuner $TUNER | global batch $GLOBAL_BATCH = $PER_GPU x $GPUS GPUs x $GA | seeds $SEEDS | OUT=$OUT$([ $DRY = 1 ] && echo ' | dry run')"

# --- 1. prepare ------------------------------------------------------------------------------------------
DATA="$OUT/data"; TRAIN="$DATA/train2017.jsonl"; VAL="$DATA/val2017.jsonl"
for split in train val; do
  ann="$COCO/annotations/instances_${split}2017.json"; out="$DATA/${split}2017.jsonl"; stamp="$out.stage.json"
  CMD=(coord-prepare-coco --ann "$ann" --images "$COCO/${split}2017" --out "$out")
  [ "$split" = train ] && CMD+=(--max-objects 30 --cap-policy area)   # the configurations' training data
  state=none; [ ! -f "$stamp" ] || state=$("${STAGE[@]}" check "$stamp" --input "$ann" -- "${CMD[@]}")
  [ -f "$out" ] || [ "$state" != finished ] || state="changed: $out is gone"
  if [ "$state" = finished ]; then say "prepare $split: skip (finished with this command and annotation file)"; show "${CMD[@]}"; continue; fi
  say "prepare $split: run ($state)"; show "${CMD[@]}"
  { [ "$DRY" = 1 ] || ! wanted prepare; } && continue
  if [ "$NODE_RANK" != 0 ]; then
    until [ "$("${STAGE[@]}" check "$stamp" --input "$ann" -- "${CMD[@]}")" = finished ]; do sleep 30; done
    continue
  fi
  mkdir -p "$DATA"; rm -f "$stamp"
  "${CMD[@]}"
  "${STAGE[@]}" mark "$stamp" --status finished --input "$ann" -- "${CMD[@]}"
done

# --- 2. train ---------------------------------------------------------------------------------------------
RUNS=()
INPUTS=(--input "$TRAIN" --input "$VAL"); [ -d "$MODEL" ] && INPUTS+=(--input "$MODEL")
for g in a b c; do
  for ((k = 0; k < SEEDS; k++)); do
    seed=$(( 42 + k ))
    dir="$OUT/group_$g"; [ "$k" = 0 ] || dir="$OUT/group_${g}_seed$seed"
    RUNS+=("$g:$dir")
    CMD=(env GROUP="$g" MODEL="$MODEL" DATA="$TRAIN" VAL_DATA="$VAL#500" OUT="$dir" TUNER="$TUNER" DEEPSPEED="$DEEPSPEED"
         NPROC_PER_NODE="$NPROC" NNODES="$NNODES" COORD_INIT_SEED="$k")
    [ "$LEAN" = true ] && CMD+=(COORDEXP_LEAN=true)
    CMD+=(bash "$ROOT/shell/train.sh" --seed "$seed" --data_seed "$seed" --per_device_train_batch_size "$PER_GPU"
          --gradient_accumulation_steps "$GA" "$@")
    stamp="$dir/coord_stage.json"
    state=none; [ ! -f "$stamp" ] || state=$("${STAGE[@]}" check "$stamp" "${INPUTS[@]}" -- "${CMD[@]}")
    case "$state" in
      finished) say "train $g seed $seed: skip (finished with this command and data)"; show "${CMD[@]}"; continue ;;
      started)  say "train $g seed $seed: resume (interrupted with this command and data)"; resume=auto ;;
      none)
        if [ -e "$dir" ]; then
          say "train $g seed $seed: $dir exists but was not made by this script (no $stamp): move it away or set OUT" >&2
          [ "$DRY" = 1 ] || exit 2
        fi
        say "train $g seed $seed: run"; resume=0 ;;
      *)        say "train $g seed $seed: run afresh ($state); $dir moves to $OUT/replaced/$(basename "$dir")-<time>"; resume=0 ;;
    esac
    show "${CMD[@]}"
    { [ "$DRY" = 1 ] || ! wanted train; } && continue
    if [ "$NODE_RANK" = 0 ]; then
      if [ "$state" != started ] && [ -e "$dir" ]; then   # out of compare.sh's group_<g>_seed* pattern
        mkdir -p "$OUT/replaced"; mv "$dir" "$OUT/replaced/$(basename "$dir")-$(date +%Y%m%d-%H%M%S)"
      fi
      "${STAGE[@]}" mark "$stamp" --status started "${INPUTS[@]}" -- "${CMD[@]}"
    fi
    RESUME="$resume" "${CMD[@]}"
    [ "$NODE_RANK" != 0 ] || "${STAGE[@]}" mark "$stamp" --status finished "${INPUTS[@]}" -- "${CMD[@]}"
  done
done
[ "$NODE_RANK" = 0 ] || { say "node $NODE_RANK: trainings done; node 0 evaluates and compares"; exit 0; }

# --- 3. evaluate (each run's last checkpoint on all of val2017) -------------------------------------------------
for run in "${RUNS[@]}"; do
  g="${run%%:*}"; dir="${run#*:}"; WHY="not trained yet"
  CMD=(env GROUP="$g" OUT="$dir" GT="$ANN_VAL" VAL_DATA="$VAL" NPROC_PER_NODE="$EVAL_NPROC" DECODE="$DECODE" SCORE="$SCORE"
       MAX_DETS="$MAX_DETS" DECODING="$DECODING" INFER_BACKEND="$INFER_BACKEND" INFER_CONFIG="$INFER_CONFIG"
       bash "$ROOT/shell/eval.sh")
  ckpt=$(python -m swift_coord_plugin.cli.checkpoints "$dir" --last || true)
  if [ -n "$ckpt" ] && [ -f "$VAL" ] && WHY=$(python -m swift_coord_plugin.cli.infer_settings reuse "$dir/eval/report.json" \
       --checkpoint "$ckpt" --gt "$ANN_VAL" --decode "$DECODE" --score "$SCORE" --max-dets "$MAX_DETS" \
       --decoding "$DECODING" --infer-backend "$INFER_BACKEND" --val-data "$VAL" --infer-config "$INFER_CONFIG" \
       --max-pixels "${INFER_MAX_PIXELS:-}" --eval-args="${EVAL_ARGS:-}"); then
    say "evaluate $(basename "$dir"): skip ($dir/eval/report.json made exactly as asked)"; show "${CMD[@]}"; continue
  fi
  say "evaluate $(basename "$dir"): run ($WHY)"; show "${CMD[@]}"
  [ "$DRY" = 1 ] || ! wanted evaluate || "${CMD[@]}"
done

# --- 4. compare ------------------------------------------------------------------------------------------------
CMD=(env ABLATION="$OUT" bash "$ROOT/shell/compare.sh")
say "compare: run"; show "${CMD[@]}"
[ "$DRY" = 1 ] || ! wanted compare || { "${CMD[@]}"; say "done: $OUT/compare/summary.md and $OUT/compare/index.html"; }
