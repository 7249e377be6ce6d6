#!/usr/bin/env bash
# The main job on the embedded default, on a CPU in a few minutes:
#   build the tiny random Qwen3-VL (real tokenizer) -> convert the shipped COCO sample ->
#   train groups A, B and C with identical seeds, data and steps -> swift infer with logprobs ->
#   coord-eval for each -> coord-compare.
#
#   bash shell/demo.sh                         # every group decoded under the answer grammar (DECODING=constrained)
#   DECODING=free bash shell/demo.sh           # stock decoding (group B then writes no box); also coordexp
#   MODEL=/path/to/Qwen3-VL-2B-Instruct COCO=/data/coco bash shell/demo.sh    # the real thing, on a GPU
#
#   INFER_BACKEND=vllm bash shell/demo.sh     # inference on vLLM (builds .venv-vllm; same tiny model and training)
#
# With MODEL set, the group configurations in templates/ are used as they are (bf16, their batch, steps
# and schedule) on $COCO/annotations/instances_{train,val}2017.json; STEPS overrides max_steps.
# Without MODEL: a tiny randomly initialised model shows the pipeline working, not detection quality.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${INFER_BACKEND:-}" = vllm ]; then COORD_VLLM=1 bash shell/setup.sh; else bash shell/setup.sh; fi
source .venv/bin/activate
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
OUT="${OUT:-$ROOT/output/demo}"
mkdir -p "$OUT/data"
T0=$(date +%s)

if [ -z "${MODEL:-}" ]; then
  echo "[demo] NOTE: a tiny randomly initialised model shows the pipeline working, not detection quality."
  # Attention heads of 64 (not the tiny default 16, which vLLM's CPU attention rejects): the same model and
  # checkpoints serve the transformers and the vLLM demo.
  TINY="$OUT/tiny-qwen3-vl-head64"
  MODEL="$TINY"
  [ -f "$MODEL/config.json" ] || coord-make-tiny-model "$MODEL" --head-dim 64
  export CPU="${CPU:-1}"   # shell/train.sh's CPU recipe (fp32); the flags below make the run small
  GT="$ROOT/assets/coco_sample/instances.json"
  # At most 6 objects per image (the largest) so that the tiny model can over-fit its 9 images within
  # the time of a demo; coord-eval still scores against every ground-truth box of those images.
  coord-prepare-coco --ann "$GT" --images "$ROOT/assets/coco_sample/images" --out "$OUT/data/train.jsonl" \
    --max-objects 6 --no-progress
  TRAIN="$OUT/data/train.jsonl"; VAL="$OUT/data/train.jsonl"   # over-fit and score the same 9 images
  STEPS="${STEPS:-100}"
  TRAIN_ARGS=(--torch_dtype float32 --fp16 false --bf16 false --max_pixels 65536 --max_steps "$STEPS"
              --per_device_train_batch_size 3 --per_device_eval_batch_size 3 --gradient_accumulation_steps 1
              --learning_rate 1e-2 --warmup_ratio 0 --lr_scheduler_type constant --weight_decay 0
              --eval_steps 10 --save_steps 25 --save_total_limit 4 --save_only_model true --logging_steps 10 --dataloader_num_workers 0
              --dataset_num_proc 1 --gradient_checkpointing false --check_model false --report_to none
              --freeze_vit true --freeze_aligner true)
  INFER_ARGS=(--max_new_tokens 200 --max_batch_size 9)   # the image resolution comes from each run
  EVAL_CKPT="${EVAL_CKPT:-all}"   # every checkpoint (each 25 steps): AP along training
else
  COCO="${COCO:?set COCO to the folder with annotations/ train2017/ val2017/}"
  GT="$COCO/annotations/instances_val2017.json"
  for split in train val; do
    [ -f "$OUT/data/$split.jsonl" ] || coord-prepare-coco --ann "$COCO/annotations/instances_${split}2017.json" \
      --images "$COCO/${split}2017" --out "$OUT/data/$split.jsonl" --max-objects 30
  done
  TRAIN="$OUT/data/train.jsonl"; VAL="$OUT/data/val.jsonl"
  TRAIN_ARGS=(); [ -n "${STEPS:-}" ] && TRAIN_ARGS+=(--max_steps "$STEPS")
  INFER_ARGS=()
fi

for g in a b c; do
  echo "[demo] ===== train group $g ====="
  GROUP=$g MODEL="$MODEL" DATA="$TRAIN" VAL_DATA="$VAL" OUT="$OUT/group_$g" RESUME="${RESUME:-0}" \
    bash shell/train.sh ${TRAIN_ARGS[@]+"${TRAIN_ARGS[@]}"}
done
for g in a b c; do
  echo "[demo] ===== evaluate group $g ====="
  GROUP=$g OUT="$OUT/group_$g" VAL_DATA="$VAL" GT="$GT" CKPT="${EVAL_CKPT:-}" \
    bash shell/eval.sh ${INFER_ARGS[@]+"${INFER_ARGS[@]}"}
done
ABLATION="$OUT" bash shell/compare.sh
echo "[demo] done in $(( $(date +%s) - T0 ))s: $OUT/compare/summary.md and $OUT/compare/index.html"
[ "$MODEL" != "${TINY:-}" ] || echo "[demo] (tiny random model: the numbers show the pipeline working, not detection quality)"
