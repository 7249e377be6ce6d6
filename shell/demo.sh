#!/usr/bin/env bash
# The main job on the embedded default: build the tiny random Qwen3-VL (real tokenizer), then train
# Group A (cross-entropy on every token) a few steps on the shipped COCO sample with stock `swift sft`,
# and run `swift infer` on the checkpoint.
#
#   bash shell/demo.sh                      # CPU, tiny model, about a minute
#   MODEL=/path/to/Qwen3-VL-2B-Instruct STEPS=500 bash shell/demo.sh   # a real checkpoint on a GPU
#
# A tiny randomly initialised model shows the pipeline working, not detection quality.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash shell/setup.sh
source .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

OUT="${OUT:-$ROOT/output/demo}"
STEPS="${STEPS:-6}"
DATA="${DATA:-$ROOT/assets/coco_sample/samples.jsonl}"
mkdir -p "$OUT"
T0=$(date +%s)

if [ -z "${MODEL:-}" ]; then
  MODEL="$OUT/tiny-qwen3-vl"
  [ -f "$MODEL/config.json" ] || coord-make-tiny-model "$MODEL"
  DEVICE_ARGS=(--torch_dtype float32 --fp16 false --bf16 false --max_pixels 65536)
  INFER_ARGS=(--max_pixels 65536)
  echo "[demo] NOTE: a tiny randomly initialised model shows the pipeline working, not detection quality."
else
  DEVICE_ARGS=(--torch_dtype bfloat16)
  INFER_ARGS=()
fi

set -x
swift sft \
  --model "$MODEL" --model_type qwen3_vl_coord --template qwen3_vl_coord \
  --external_plugins "$ROOT/swift_coord_plugin/entry/swift_plugin.py" \
  --dataset "coord:$DATA" --tuner_type full "${DEVICE_ARGS[@]}" \
  --check_model false --max_steps "$STEPS" --per_device_train_batch_size 2 --gradient_accumulation_steps 1 \
  --learning_rate 1e-4 --seed 42 --output_dir "$OUT/group_a" --add_version false --save_only_model true \
  --save_steps "$STEPS" --logging_steps 1 --dataloader_num_workers 0 --report_to none
CKPT=$(ls -d "$OUT"/group_a/checkpoint-* | sort -t- -k2 -n | tail -1)
swift infer --model "$CKPT" --val_dataset "coord:$DATA" --infer_backend transformers --temperature 0 \
  --max_new_tokens 64 --max_batch_size 4 --result_path "$OUT/group_a/infer_result.jsonl" \
  --logprobs true --top_logprobs 5 ${INFER_ARGS[@]+"${INFER_ARGS[@]}"}
set +x
python - "$OUT/group_a/infer_result.jsonl" <<'PY'
import json, sys
from swift_coord_plugin.core.codec import parse_objects
rows = [json.loads(l) for l in open(sys.argv[1])]
objs = [parse_objects(r["response"]) for r in rows]
print(f"[demo] {len(rows)} responses, {sum(len(o.objects) for o in objs)} objects parsed")
PY
echo "[demo] done in $(( $(date +%s) - T0 ))s; outputs under $OUT"
