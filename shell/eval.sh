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
#   NPROC_PER_NODE=N shards inference over N processes (ms-swift gathers one result file).
# Writes OUT/eval/infer_result.jsonl and OUT/eval/report.{json,md}, detections.json.
# The plugin is passed from where it is now (`coord-plugin-path`): the path stored in the checkpoint's
# args.json is where it was at training time, and ms-swift stops if that path no longer exists (a moved
# repository, another machine).
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
command -v coord-plugin-path >/dev/null \
  || { echo "[eval] coord-plugin-path not on PATH: run 'bash shell/setup.sh' and 'source .venv/bin/activate'" >&2; exit 2; }
EVAL_DIR="$OUT/eval"
mkdir -p "$EVAL_DIR"
ARGS=("$INFER_CONFIG" --external_plugins "$(coord-plugin-path)" --result_path "$EVAL_DIR/infer_result.jsonl")
if [ -f "$CKPT/adapter_config.json" ]; then ARGS+=(--adapters "$CKPT"); else ARGS+=(--model "$CKPT"); fi
if [ -n "${VAL_DATA:-}" ]; then
  [ -f "$VAL_DATA" ] || { echo "[eval] VAL_DATA not found: $VAL_DATA" >&2; exit 2; }
  ARGS+=(--val_dataset "coord:$(realpath "$VAL_DATA")")
fi
rm -f "$EVAL_DIR/infer_result.jsonl"
echo "[eval] swift infer ${ARGS[*]} $*"
swift infer "${ARGS[@]}" "$@"
echo "[eval] coord-eval --results $EVAL_DIR/infer_result.jsonl --gt $GT --out $EVAL_DIR --decode $DECODE --score $SCORE --max-dets $MAX_DETS"
coord-eval --results "$EVAL_DIR/infer_result.jsonl" --gt "$GT" --out "$EVAL_DIR" \
  --decode "$DECODE" --score "$SCORE" --max-dets "$MAX_DETS"
