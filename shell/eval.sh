#!/usr/bin/env bash
# Inference on a trained group's checkpoint, then COCO scoring with coord-eval.
#
#   GROUP=b GT=data/coco/annotations/instances_val2017.json bash shell/eval.sh [more swift infer flags]
#
# Variables (default):
#   GROUP      a | b | c                                  (a)
#   OUT        the group's training output directory     (output/ablation/group_$GROUP)
#   CKPT       checkpoint to evaluate                     (the last checkpoint-* in OUT)
#   VAL_DATA   samples to run on, unified JSONL           (templates/infer_eval.yaml's)
#   GT         COCO instances JSON with the ground truth  (required)
#   DECODING   free | constrained | coordexp              (constrained; how swift infer generates, COORD_DECODING)
#   INFER_BACKEND transformers | vllm                     (transformers)
#              vllm runs the swift of the vLLM environment .venv-vllm (COORD_VLLM=1 bash shell/setup.sh);
#   VLLM_ARGS  its extra flags                 (--vllm_max_model_len 8192 --vllm_enforce_eager true)
#   DECODE     argmax | coordexp                          (argmax; how coord-eval reads the coordinate tokens)
#   SCORE      logprob | constant                         (logprob)
#   MAX_DETS   detections per image                       (100, COCO's default)
#   INFER_CONFIG                                          (templates/infer_eval.yaml)
#   NPROC_PER_NODE=N shards inference over N processes (ms-swift gathers one result file).
# Writes OUT/eval/infer_result.jsonl and OUT/eval/report.{json,md}, detections.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GROUP="${GROUP:-a}"
OUT="${OUT:-$ROOT/output/ablation/group_$GROUP}"
INFER_CONFIG="${INFER_CONFIG:-$ROOT/templates/infer_eval.yaml}"
DECODE="${DECODE:-argmax}"
DECODING="${DECODING:-constrained}"
INFER_BACKEND="${INFER_BACKEND:-transformers}"
case "$DECODING" in free|constrained|coordexp) ;; *) echo "[eval] DECODING=$DECODING: expected free|constrained|coordexp" >&2; exit 2;; esac
case "$INFER_BACKEND" in transformers|vllm) ;; *) echo "[eval] INFER_BACKEND=$INFER_BACKEND: expected transformers|vllm" >&2; exit 2;; esac
SCORE="${SCORE:-logprob}"
MAX_DETS="${MAX_DETS:-100}"
[ -n "${GT:-}" ] || { echo "[eval] set GT to the COCO instances JSON of the evaluated images" >&2; exit 2; }
[ -f "$GT" ] || { echo "[eval] GT not found: $GT" >&2; exit 2; }
if [ -z "${CKPT:-}" ]; then
  CKPT=$(ls -d "$OUT"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1 || true)
  [ -n "$CKPT" ] || { echo "[eval] no checkpoint-* in $OUT (set CKPT)" >&2; exit 2; }
fi
[ -d "$CKPT" ] || { echo "[eval] checkpoint not found: $CKPT" >&2; exit 2; }
EVAL_DIR="$OUT/eval"
mkdir -p "$EVAL_DIR"
ARGS=("$INFER_CONFIG" --result_path "$EVAL_DIR/infer_result.jsonl" --infer_backend "$INFER_BACKEND")
# The environment wins over the config's ENV block; the plugin records the mode next to the results.
export COORD_DECODING="$DECODING" COORD_DECODING_RECORD="$EVAL_DIR/infer_result.jsonl.decoding.json"
if [ -f "$CKPT/adapter_config.json" ]; then ARGS+=(--adapters "$CKPT"); else ARGS+=(--model "$CKPT"); fi
if [ -n "${VAL_DATA:-}" ]; then
  [ -f "$VAL_DATA" ] || { echo "[eval] VAL_DATA not found: $VAL_DATA" >&2; exit 2; }
  ARGS+=(--val_dataset "coord:$(realpath "$VAL_DATA")")
fi
SWIFT=(swift)
if [ "$INFER_BACKEND" = vllm ]; then
  # The vLLM environment's swift (COORD_VLLM=1 bash shell/setup.sh); VLLM_ARGS are its extra flags.
  VLLM_VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
  [ -x "$VLLM_VENV/bin/swift" ] || { echo "[eval] INFER_BACKEND=vllm needs $VLLM_VENV: COORD_VLLM=1 bash shell/setup.sh" >&2; exit 2; }
  SWIFT=("$VLLM_VENV/bin/swift")
  read -r -a VA <<< "${VLLM_ARGS:---vllm_max_model_len 8192 --vllm_enforce_eager true}"
  ARGS+=("${VA[@]}")
fi
rm -f "$EVAL_DIR/infer_result.jsonl" "$COORD_DECODING_RECORD"
echo "[eval] COORD_DECODING=$DECODING ${SWIFT[*]} infer ${ARGS[*]} $*"
"${SWIFT[@]}" infer "${ARGS[@]}" "$@"
echo "[eval] coord-eval --results $EVAL_DIR/infer_result.jsonl --gt $GT --out $EVAL_DIR --decode $DECODE --score $SCORE --max-dets $MAX_DETS --decoding $DECODING --infer-backend $INFER_BACKEND"
coord-eval --results "$EVAL_DIR/infer_result.jsonl" --gt "$GT" --out "$EVAL_DIR" \
  --decode "$DECODE" --score "$SCORE" --max-dets "$MAX_DETS" --decoding "$DECODING" --infer-backend "$INFER_BACKEND"
