#!/usr/bin/env bash
# Inference on a trained group's checkpoint, then COCO scoring with coord-eval.
#
#   GROUP=b GT=data/coco/annotations/instances_val2017.json bash shell/eval.sh [more swift infer flags]
#
# Variables (default):
#   GROUP      a | b | c                                  (a)
#   OUT        the group's training output directory     (output/ablation/group_$GROUP)
#   CKPT       checkpoint to evaluate                     (the last checkpoint-* in OUT)
#              CKPT=all: every checkpoint-* of OUT, each into OUT/eval/checkpoint-N/ (a finished report.json
#              with the same DECODE/SCORE/MAX_DETS is reused); coord-compare plots AP against step from them
#   INFER_MAX_PIXELS  inference image resolution         (the max_pixels the run trained with, from args.json;
#              a --max_pixels among the extra flags wins); recorded in infer_settings.json and report.json
#   VAL_DATA   samples to run on, unified JSONL           (templates/infer_eval.yaml's)
#   GT         COCO instances JSON with the ground truth  (required)
#   DECODE     argmax | coordexp                          (argmax)
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
SCORE="${SCORE:-logprob}"
MAX_DETS="${MAX_DETS:-100}"
[ -n "${GT:-}" ] || { echo "[eval] set GT to the COCO instances JSON of the evaluated images" >&2; exit 2; }
[ -f "$GT" ] || { echo "[eval] GT not found: $GT" >&2; exit 2; }
# --- CKPT=all: every saved checkpoint (AP along training), finished evaluations reused ------------------
if [ "${CKPT:-}" = "all" ]; then
  mapfile -t ALL_CKPTS < <(ls -d "$OUT"/checkpoint-* 2>/dev/null | awk -F'checkpoint-' '{print $NF"\t"$0}' \
                           | sort -n | cut -f2-)
  [ "${#ALL_CKPTS[@]}" -gt 0 ] || { echo "[eval] CKPT=all: no checkpoint-* in $OUT" >&2; exit 2; }
  for c in "${ALL_CKPTS[@]}"; do
    d="$OUT/eval/$(basename "$c")"
    if python -m swift_coord_plugin.cli.infer_settings reuse "$d/report.json" "$DECODE" "$SCORE" "$MAX_DETS"; then
      echo "[eval] $(basename "$c"): reusing $d/report.json"; continue
    fi
    CKPT="$c" EVAL_DIR="$d" bash "${BASH_SOURCE[0]}" "$@"
  done
  exit 0
fi
# -----------------------------------------------------------------------------------------------------
if [ -z "${CKPT:-}" ]; then
  CKPT=$(ls -d "$OUT"/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1 || true)
  [ -n "$CKPT" ] || { echo "[eval] no checkpoint-* in $OUT (set CKPT)" >&2; exit 2; }
fi
[ -d "$CKPT" ] || { echo "[eval] checkpoint not found: $CKPT" >&2; exit 2; }
EVAL_DIR="${EVAL_DIR:-$OUT/eval}"
mkdir -p "$EVAL_DIR"
ARGS=("$INFER_CONFIG" --result_path "$EVAL_DIR/infer_result.jsonl")
if [ -f "$CKPT/adapter_config.json" ]; then ARGS+=(--adapters "$CKPT"); else ARGS+=(--model "$CKPT"); fi
if [ -n "${VAL_DATA:-}" ]; then
  [ -f "$VAL_DATA" ] || { echo "[eval] VAL_DATA not found: $VAL_DATA" >&2; exit 2; }
  ARGS+=(--val_dataset "coord:$(realpath "$VAL_DATA")")
fi
rm -f "$EVAL_DIR/infer_result.jsonl"
# Inference resolution: the run's (recorded with checkpoint and step in infer_settings.json, read by coord-eval).
PIX=$(python -m swift_coord_plugin.cli.infer_settings write --checkpoint "$CKPT" --out "$EVAL_DIR/infer_settings.json" \
      --max-pixels "${INFER_MAX_PIXELS:-}" -- "$@")
[ -z "$PIX" ] || ARGS+=(--max_pixels "$PIX")
echo "[eval] swift infer ${ARGS[*]} $*"
swift infer "${ARGS[@]}" "$@"
echo "[eval] coord-eval --results $EVAL_DIR/infer_result.jsonl --gt $GT --out $EVAL_DIR --decode $DECODE --score $SCORE --max-dets $MAX_DETS"
coord-eval --results "$EVAL_DIR/infer_result.jsonl" --gt "$GT" --out "$EVAL_DIR" \
  --decode "$DECODE" --score "$SCORE" --max-dets "$MAX_DETS"
