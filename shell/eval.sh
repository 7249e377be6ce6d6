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
#   DECODE     argmax | coordexp                          (argmax)
#   SCORE      logprob | constant                         (logprob)
#   MAX_DETS   detections per image                       (100, COCO's default)
#   INFER_CONFIG                                          (templates/infer_eval.yaml)
#   INFER_BACKEND transformers | vllm                     (the configuration's: transformers)
#              vllm runs the swift of the vLLM environment .venv-vllm (COORD_VLLM=1 bash shell/setup.sh);
#              VLLM_ARGS are its extra flags         (--vllm_max_model_len 8192 --vllm_enforce_eager true)
#   NPROC_PER_NODE=N shards inference over N processes (ms-swift gathers one result file).
# Writes OUT/eval/infer_result.jsonl and OUT/eval/report.{json,md}, detections.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GROUP="${GROUP:-a}"
OUT="${OUT:-$ROOT/output/ablation/group_$GROUP}"
INFER_CONFIG="${INFER_CONFIG:-$ROOT/templates/infer_eval.yaml}"
DECODE="${DECODE:-argmax}"
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
ARGS=("$INFER_CONFIG" --result_path "$EVAL_DIR/infer_result.jsonl")
if [ -f "$CKPT/adapter_config.json" ]; then ARGS+=(--adapters "$CKPT"); else ARGS+=(--model "$CKPT"); fi
if [ -n "${VAL_DATA:-}" ]; then
  [ -f "$VAL_DATA" ] || { echo "[eval] VAL_DATA not found: $VAL_DATA" >&2; exit 2; }
  ARGS+=(--val_dataset "coord:$(realpath "$VAL_DATA")")
fi
SWIFT=(swift)
if [ -n "${INFER_BACKEND:-}" ]; then
  case "$INFER_BACKEND" in transformers|vllm) ;; *) echo "[eval] INFER_BACKEND must be transformers or vllm (got '$INFER_BACKEND')" >&2; exit 2;; esac
  ARGS+=(--infer_backend "$INFER_BACKEND")
fi
if [ "${INFER_BACKEND:-}" = vllm ]; then
  VLLM_VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
  [ -x "$VLLM_VENV/bin/swift" ] || { echo "[eval] INFER_BACKEND=vllm needs $VLLM_VENV: COORD_VLLM=1 bash shell/setup.sh" >&2; exit 2; }
  SWIFT=("$VLLM_VENV/bin/swift")
  read -r -a VA <<< "${VLLM_ARGS:---vllm_max_model_len 8192 --vllm_enforce_eager true}"
  ARGS+=("${VA[@]}")
fi
rm -f "$EVAL_DIR/infer_result.jsonl"
echo "[eval] ${SWIFT[*]} infer ${ARGS[*]} $*"
"${SWIFT[@]}" infer "${ARGS[@]}" "$@"
echo "[eval] coord-eval --results $EVAL_DIR/infer_result.jsonl --gt $GT --out $EVAL_DIR --decode $DECODE --score $SCORE --max-dets $MAX_DETS"
coord-eval --results "$EVAL_DIR/infer_result.jsonl" --gt "$GT" --out "$EVAL_DIR" \
  --decode "$DECODE" --score "$SCORE" --max-dets "$MAX_DETS"
