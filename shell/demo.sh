#!/usr/bin/env bash
# The main job on the embedded default: the A/B/C study on synthetic shapes, on a CPU, scored on held-out images.
#
#   bash shell/demo.sh                 # the study: tiny Qwen3-VL (vision tower trained) learns to localise shapes;
#                                      # every group scored on images it never saw (docs/study.md)
#   SEEDS=3 bash shell/demo.sh         # 3 seeds per group: mean ± std and intervals that hold the training noise
#   DEMO=coco-sample bash shell/demo.sh   # pipeline smoke test on the 9 shipped COCO images (memorised, not learned)
#   MODEL=/path/to/Qwen3-VL-2B-Instruct COCO=/data/coco bash shell/demo.sh    # the configurations as they are, on a GPU
#
# Variables: OUT (output/demo), SEEDS (1), STEPS (the study: 600), DECODING (constrained), INFER_BACKEND
# (transformers | vllm: builds .venv-vllm), TRAIN_IMAGES / VAL_IMAGES / SELECT_IMAGES (2000 / 200 / 100).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${INFER_BACKEND:-}" = vllm ]; then COORD_VLLM=1 bash shell/setup.sh; else bash shell/setup.sh; fi
source .venv/bin/activate
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
OUT="${OUT:-$ROOT/output/demo}"
SEEDS="${SEEDS:-1}"
[[ "$SEEDS" =~ ^[1-9][0-9]*$ ]] || { echo "[demo] SEEDS must be a positive integer (got '$SEEDS')" >&2; exit 2; }
DEMO="${DEMO:-shapes}"
mkdir -p "$OUT/data"
T0=$(date +%s)
say() { echo "[demo] $(date +%H:%M:%S) (+$(( $(date +%s) - T0 ))s) $*"; }
run_dir() { if [ "$2" = 0 ]; then echo "$OUT/group_$1"; else echo "$OUT/group_$1_seed$2"; fi; }

EVALS=(argmax)          # named evaluations of every run (OUT/group_*/eval/<name>/)
if [ -n "${MODEL:-}" ]; then
  COCO="${COCO:?set COCO to the folder with annotations/ train2017/ val2017/}"
  GT="$COCO/annotations/instances_val2017.json"
  for split in train val; do
    [ -f "$OUT/data/$split.jsonl" ] || coord-prepare-coco --ann "$COCO/annotations/instances_${split}2017.json" \
      --images "$COCO/${split}2017" --out "$OUT/data/$split.jsonl" --max-objects 30
  done
  TRAIN="$OUT/data/train.jsonl"; VAL="$OUT/data/val.jsonl"; TRAIN_VAL="$VAL"
  TRAIN_ARGS=(); [ -n "${STEPS:-}" ] && TRAIN_ARGS+=(--max_steps "$STEPS")
  INFER_ARGS=()
  EVAL_CKPT=""
else
  export CPU="${CPU:-1}"   # shell/train.sh's CPU recipe (fp32)
  # Attention heads of 64 (vLLM's CPU attention rejects the tiny default 16): one model for both backends.
  TINY="$OUT/tiny-qwen3-vl-head64"
  MODEL="$TINY"
  [ -f "$MODEL/config.json" ] || coord-make-tiny-model "$MODEL" --head-dim 64 >/dev/null
  COMMON=(--torch_dtype float32 --fp16 false --bf16 false --gradient_accumulation_steps 1 --weight_decay 0
          --save_only_model true --dataloader_num_workers 0 --dataset_num_proc 1 --gradient_checkpointing false
          --check_model false --report_to none)
  if [ "$DEMO" = coco-sample ]; then
    echo "[demo] NOTE: DEMO=coco-sample over-fits and scores the same 9 COCO images: it shows the pipeline working,"
    echo "[demo]       not detection quality (the study is the default: bash shell/demo.sh)."
    GT="$ROOT/assets/coco_sample/instances.json"
    coord-prepare-coco --ann "$GT" --images "$ROOT/assets/coco_sample/images" --out "$OUT/data/train.jsonl" \
      --max-objects 6 --no-progress
    TRAIN="$OUT/data/train.jsonl"; VAL="$TRAIN"; TRAIN_VAL="$TRAIN"
    STEPS="${STEPS:-100}"
    TRAIN_ARGS=("${COMMON[@]}" --max_pixels 65536 --max_steps "$STEPS" --per_device_train_batch_size 3
                --per_device_eval_batch_size 3 --learning_rate 1e-2 --warmup_ratio 0 --lr_scheduler_type constant
                --eval_steps 10 --save_steps 25 --save_total_limit 4 --logging_steps 10
                --freeze_vit true --freeze_aligner true)
    INFER_ARGS=(--max_new_tokens 200 --max_batch_size 9)
    EVAL_CKPT=all
  elif [ "$DEMO" = shapes ]; then
    # The study (docs/study.md): held-out images, vision tower trained, sizes chosen by measurement on 2 cores.
    SHAPES="$OUT/data/shapes"
    say "stage 1/5: synthetic shapes (${TRAIN_IMAGES:-2000} train, ${VAL_IMAGES:-200} val, ${SELECT_IMAGES:-100} select images; under a minute)"
    if [ ! -f "$SHAPES/summary.json" ]; then
      coord-make-shapes "$SHAPES" --train "${TRAIN_IMAGES:-2000}" --val "${VAL_IMAGES:-200}" \
        --select "${SELECT_IMAGES:-100}" --seed 0 --image-size 128 --min-objects 1 --max-objects "${MAX_OBJECTS:-1}" \
        --min-side 0.25 --max-side 0.9
    fi
    for split in train val select; do
      [ -f "$OUT/data/$split.jsonl" ] || coord-prepare-coco --ann "$SHAPES/annotations/instances_$split.json" \
        --images "$SHAPES/images/$split" --out "$OUT/data/$split.jsonl" --no-progress >/dev/null
    done
    GT="$SHAPES/annotations/instances_val.json"
    TRAIN="$OUT/data/train.jsonl"; VAL="$OUT/data/val.jsonl"; TRAIN_VAL="$OUT/data/select.jsonl"
    STEPS="${STEPS:-600}"
    # The loss from hidden states (COORDEXP_LEAN): the same numbers as the standard path, cheaper.
    export COORDEXP_LEAN="${COORDEXP_LEAN:-true}"
    TRAIN_ARGS=("${COMMON[@]}" --max_pixels 16384 --max_steps "$STEPS" --per_device_train_batch_size 16
                --per_device_eval_batch_size 16 --learning_rate 2e-3 --warmup_ratio 0.05 --lr_scheduler_type cosine
                --eval_steps $(( STEPS / 3 )) --save_steps $(( STEPS / 3 )) --save_total_limit 3 --logging_steps 20
                --freeze_vit false --freeze_aligner false)
    INFER_ARGS=(--max_new_tokens 64 --max_batch_size 50)
    EVALS=(argmax expectation coordexp)
    EVAL_CKPT=all
  else
    echo "[demo] DEMO must be shapes or coco-sample (got '$DEMO')" >&2; exit 2
  fi
fi

GROUPS_=(a b c)
say "stage 2/5: train ${#GROUPS_[@]} groups x $SEEDS seed(s) (the study: about 5 min a run on 2 cores; ms-swift's bars show progress)"
for ((s = 0; s < SEEDS; s++)); do
  for g in "${GROUPS_[@]}"; do
    d="$(run_dir "$g" "$s")"
    if [ -f "$d/logging.jsonl" ] && ls -d "$d"/checkpoint-* >/dev/null 2>&1 && [ "${RESUME:-0}" = 0 ] \
       && grep -q '"global_step/max_steps": "\([0-9]*\)/\1"' "$d/logging.jsonl"; then
      say "group $g seed $s: finished run found in $d, kept"; continue
    fi
    say "train group $g, seed $s -> $d"
    # Seeds of one group: model initialisation of the new rows (COORD_INIT_SEED) and data order (--seed/--data_seed).
    COORD_INIT_SEED="$s" GROUP=$g MODEL="$MODEL" DATA="$TRAIN" VAL_DATA="$TRAIN_VAL" OUT="$d" RESUME="${RESUME:-0}" \
      bash shell/train.sh ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"} --seed "$((42 + s))" --data_seed "$((42 + s))"
  done
done
say "stage 3/5: score every run on the held-out images (about 1 min a checkpoint and readout)"
for ((s = 0; s < SEEDS; s++)); do
  for g in "${GROUPS_[@]}"; do
    d="$(run_dir "$g" "$s")"
    for e in "${EVALS[@]}"; do
      say "evaluate group $g seed $s: $e"
      if [ "$e" = expectation ]; then
        # The argmax answers re-read: each box from E[k] over all 1000 bins of each coordinate slot, recorded at
        # inference (<result>.slots.jsonl; no second inference).
        GROUP=$g OUT="$d" VAL_DATA="$VAL" GT="$GT" CKPT="${EVAL_CKPT:-}" EVAL_NAME="$e" RESULTS_FROM=argmax \
          DECODE=coordexp bash shell/eval.sh
      elif [ "$e" = coordexp ]; then
        # The CoordExp readout: at every coordinate slot the decoder writes round(E[k]) over all 1000 bins (under
        # the answer grammar), and feeds it back; the last checkpoint.
        GROUP=$g OUT="$d" VAL_DATA="$VAL" GT="$GT" EVAL_NAME=coordexp DECODING=coordexp DECODE=argmax \
          bash shell/eval.sh ${INFER_ARGS[@]+"${INFER_ARGS[@]}"}
      else
        # The argmax readout under the answer grammar (DECODING, default constrained), every saved checkpoint.
        GROUP=$g OUT="$d" VAL_DATA="$VAL" GT="$GT" CKPT="${EVAL_CKPT:-}" EVAL_NAME="$e" \
          bash shell/eval.sh ${INFER_ARGS[@]+"${INFER_ARGS[@]}"}
      fi
    done
  done
done
REFS=()
if [ -n "${SHAPES:-}" ]; then
    say "stage 4/5: the best constant predictor (each class's mean training box) on the same images"
    mkdir -p "$OUT/constant"
    coord-constant-baseline --train-ann "$SHAPES/annotations/instances_train.json" --val-ann "$GT" \
      --out "$OUT/constant/infer_result.jsonl"
    coord-eval --results "$OUT/constant/infer_result.jsonl" --gt "$GT" --out "$OUT/constant" >/dev/null
    REFS=(--reference "constant predictor (mean training box per class)=$OUT/constant/report.json")
fi
say "stage 5/5: compare (bootstrap intervals; under a minute)"
COMPARE_ARGS=(${REFS[@]+"${REFS[@]}"})
[ -n "${SHAPES:-}" ] && COMPARE_ARGS+=(--data-summary "$SHAPES/summary.json")
ABLATION="$OUT" bash shell/compare.sh "${COMPARE_ARGS[@]}"
say "done: $OUT/compare/summary.md and $OUT/compare/index.html"
