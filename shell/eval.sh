#!/usr/bin/env bash
# Inference on a trained group's checkpoint, then COCO scoring with coord-eval.
#
#   GROUP=b GT=data/coco/annotations/instances_val2017.json bash shell/eval.sh [more swift infer flags]
#
# Variables (default):
#   GROUP      a | b | c                                  (a)
#   OUT        the group's training output directory     (output/ablation/group_$GROUP)
#   CKPT       checkpoint to evaluate                     (the checkpoint-N of OUT with the largest N)
#              CKPT=all: every checkpoint-N of OUT, each into EVAL_ROOT/checkpoint-N/; coord-compare plots AP against
#              step from them. A finished report.json is reused only when it was made exactly as asked (the
#              checkpoint's weights and step, GT file, VAL_DATA rows, resolution, DECODE/SCORE/MAX_DETS/DECODING/
#              INFER_BACKEND, INFER_CONFIG, flags, EVAL_ARGS, COORD_* environment); otherwise the reason is printed
#   INFER_MAX_PIXELS  inference image resolution         (the max_pixels the run trained with, from args.json;
#              a --max_pixels among the extra flags wins); recorded in infer_settings.json and report.json
#   VAL_DATA   samples to run on, unified JSONL           ($COORD_DATA_ROOT/data/coco/val2017.jsonl, the file
#              templates/infer_eval.yaml names); the result file is checked to hold each of its rows exactly once
#   GT         COCO instances JSON with the ground truth  (required)
#   DECODING   free | constrained | coordexp              (constrained; how swift infer generates, COORD_DECODING)
#   INFER_BACKEND transformers | vllm                     (transformers)
#              vllm runs the swift of the vLLM environment .venv-vllm (COORD_VLLM=1 bash shell/setup.sh);
#              a mixture-of-experts checkpoint first goes through coord-export-vllm CKPT COPY, then CKPT=COPY;
#   VLLM_ARGS  its extra flags                 (--vllm_max_model_len 8192 --vllm_enforce_eager true)
#   VLLM_CPU_KVCACHE_SPACE  KV cache of vLLM's CPU build, GiB (2; ignored on GPUs)
#   DECODE     argmax | coordexp                          (argmax; how coord-eval reads the coordinate tokens)
#   SCORE      logprob | constant                         (logprob)
#   MAX_DETS   detections per image                       (100, COCO's default)
#   INFER_CONFIG                                          (templates/infer_eval.yaml)
#   EVAL_ARGS  more coord-eval options, e.g. "--plots --keep-duplicates" or "--all-gt-images"   ("")
#   NPROC_PER_NODE=N  N `swift infer` processes, each on a contiguous shard of VAL_DATA with its own result
#              file (OUT/eval/shards/), merged in order into one file and checked; GPUS_PER_SHARD (1) GPUs
#              each, taken in order from CUDA_VISIBLE_DEVICES (or 0..). One progress line across the shards every
#              EVAL_PROGRESS_S seconds (30): rows done, rate, time left, counted in the result files, which
#              receive EVAL_WRITE_BATCH rows at a time (32; 256 on vLLM). A re-run keeps each finished shard made
#              exactly as asked and re-runs the others from scratch. Not ms-swift's own NPROC_PER_NODE
#              launch: its gather keeps only rank 0's rows on a machine without CUDA (eval/shards.py).
#   COORD_DATA_ROOT  folder that relative coord: paths are resolved against   (the repository root)
#   EVAL_NAME  name of this evaluation: it goes to EVAL_ROOT=OUT/eval/EVAL_NAME/ (with its checkpoint-N/ and
#              shards/), so several evaluations of one run live side by side and coord-compare shows each as a
#              row (--eval NAME picks one). Unset or `default`: EVAL_ROOT=OUT/eval/ (the layout before names).
#   RESULTS_FROM  name of another evaluation of OUT (`default` = OUT/eval/) whose infer_result.jsonl is re-scored
#              here without running inference (same checkpoint; under CKPT=all the same checkpoint-N/), e.g.
#              EVAL_NAME=coordexp RESULTS_FROM=argmax DECODE=coordexp. DECODING/INFER_BACKEND must be what that
#              file was generated with (coord-eval checks them against its record).
# Writes EVAL_ROOT/infer_result.jsonl and EVAL_ROOT/report.{json,md}, detections.json.
# Paper table: all of val2017 (no #N), greedy (infer_eval.yaml), DECODE=argmax SCORE=logprob MAX_DETS=100
# (EVAL_NAME=argmax), then EVAL_NAME=coordexp RESULTS_FROM=argmax DECODE=coordexp re-scores the same result file
# as a second row (docs/evaluation.md).
# The plugin is passed from where it is now (`coord-plugin-path`): the path stored in the checkpoint's
# args.json is where it was at training time, and ms-swift stops if that path no longer exists (a moved
# repository, another machine).
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
for v in EVAL_NAME RESULTS_FROM; do   # a folder name under OUT/eval/, not one of the folders eval.sh itself makes
  n="${!v:-}"
  if [ -n "$n" ] && { ! [[ "$n" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || [[ "$n" =~ ^(checkpoint-.*|shards)$ ]]; }; then
    echo "[eval] $v=$n: expected a name of letters, digits, '.', '_', '-' (not checkpoint-* or shards)" >&2; exit 2
  fi
done
EVAL_ROOT="$OUT/eval"
[ -z "${EVAL_NAME:-}" ] || [ "$EVAL_NAME" = default ] || EVAL_ROOT="$OUT/eval/$EVAL_NAME"
MAX_DETS="${MAX_DETS:-100}"
[ -n "${GT:-}" ] || { echo "[eval] set GT to the COCO instances JSON of the evaluated images" >&2; exit 2; }
[ -f "$GT" ] || { echo "[eval] GT not found: $GT" >&2; exit 2; }
# --- CKPT=all: every saved checkpoint (AP along training), finished evaluations reused ------------------
if [ "${CKPT:-}" = "all" ]; then
  mapfile -t ALL_CKPTS < <(python -m swift_coord_plugin.cli.checkpoints "$OUT" || true)   # checkpoint-N, N ascending
  [ "${#ALL_CKPTS[@]}" -gt 0 ] || { echo "[eval] CKPT=all: no checkpoint-* in $OUT" >&2; exit 2; }
  ALL_VAL="${VAL_DATA:-${COORD_DATA_ROOT:-$ROOT}/data/coco/val2017.jsonl}"
  for c in "${ALL_CKPTS[@]}"; do
    d="$EVAL_ROOT/$(basename "$c")"
    FROM=()   # RESULTS_FROM: the inference side of the reused report is that evaluation's record
    if [ -n "${RESULTS_FROM:-}" ]; then
      src="$OUT/eval"; [ "$RESULTS_FROM" = default ] || src="$OUT/eval/$RESULTS_FROM"
      FROM=(--inference-from "$src/$(basename "$c")/infer_settings.json")
    fi
    # Reused only when everything that changes its numbers matches (provenance.reuse_mismatches); else why not.
    if WHY=$(python -m swift_coord_plugin.cli.infer_settings reuse "$d/report.json" --checkpoint "$c" --gt "$GT" \
             --decode "$DECODE" --score "$SCORE" --max-dets "$MAX_DETS" --decoding "$DECODING" \
             --infer-backend "$INFER_BACKEND" --val-data "$ALL_VAL" --infer-config "$INFER_CONFIG" \
             --max-pixels "${INFER_MAX_PIXELS:-}" --eval-args="${EVAL_ARGS:-}" ${FROM[@]+"${FROM[@]}"} -- "$@"); then
      echo "[eval] $(basename "$c"): reusing $d/report.json"; continue
    fi
    echo "[eval] $(basename "$c"): evaluating ($WHY)"
    CKPT="$c" EVAL_DIR="$d" bash "${BASH_SOURCE[0]}" "$@"
  done
  exit 0
fi
# -----------------------------------------------------------------------------------------------------
command -v coord-plugin-path >/dev/null \
  || { echo "[eval] coord-plugin-path not on PATH: run 'bash shell/setup.sh' and 'source .venv/bin/activate'" >&2; exit 2; }
if [ -z "${CKPT:-}" ]; then
  CKPT=$(python -m swift_coord_plugin.cli.checkpoints "$OUT" --last || true)
  [ -n "$CKPT" ] || { echo "[eval] no checkpoint-* in $OUT (set CKPT)" >&2; exit 2; }
fi
[ -d "$CKPT" ] || { echo "[eval] checkpoint not found: $CKPT" >&2; exit 2; }
if [ "$INFER_BACKEND" = vllm ]; then
  # A mixture-of-experts checkpoint saved by transformers 5 needs the copy coord-export-vllm writes.
  python -m swift_coord_plugin.cli.export_vllm --check "$CKPT" >&2 \
    || { echo "[eval] INFER_BACKEND=vllm: set CKPT to that copy (its args.json comes along)" >&2; exit 2; }
fi
EVAL_DIR="${EVAL_DIR:-$EVAL_ROOT}"
mkdir -p "$EVAL_DIR"
export COORD_DATA_ROOT="${COORD_DATA_ROOT:-$ROOT}"
VAL_DATA="${VAL_DATA:-$COORD_DATA_ROOT/data/coco/val2017.jsonl}"
[ -f "$VAL_DATA" ] || { echo "[eval] VAL_DATA not found: $VAL_DATA" >&2; exit 2; }
VAL_DATA="$(realpath "$VAL_DATA")"
score() {   # coord-eval on $RESULT into $EVAL_DIR
  read -r -a EXTRA_EVAL <<< "${EVAL_ARGS:-}"
  if ! [[ " ${EVAL_ARGS:-} " =~ \ --(all-gt-images|subset-from-results|val-data)[\ =] ]]; then
    EXTRA_EVAL+=(--val-data "$VAL_DATA")   # score exactly the images of VAL_DATA
  fi
  echo "[eval] coord-eval --results $RESULT --gt $GT --out $EVAL_DIR --decode $DECODE --score $SCORE --max-dets $MAX_DETS --decoding $DECODING --infer-backend $INFER_BACKEND ${EXTRA_EVAL[*]:-}"
  coord-eval --results "$RESULT" --gt "$GT" --out "$EVAL_DIR" \
    --decode "$DECODE" --score "$SCORE" --max-dets "$MAX_DETS" --decoding "$DECODING" --infer-backend "$INFER_BACKEND" ${EXTRA_EVAL[@]+"${EXTRA_EVAL[@]}"}
}
if [ -n "${RESULTS_FROM:-}" ]; then
  # Re-score another evaluation's answers: no inference, the same checkpoint (checked against its infer_settings.json).
  SRC="$OUT/eval"
  [ "$RESULTS_FROM" = default ] || SRC="$OUT/eval/$RESULTS_FROM"
  SRC="$SRC${EVAL_DIR#"$EVAL_ROOT"}"   # under CKPT=all: its checkpoint-N/
  RESULT="$SRC/infer_result.jsonl"
  [ -f "$RESULT" ] || { echo "[eval] RESULTS_FROM=$RESULTS_FROM: no $RESULT (run that evaluation first)" >&2; exit 2; }
  [ "$(realpath "$SRC")" != "$(realpath "$EVAL_DIR")" ] \
    || { echo "[eval] RESULTS_FROM=$RESULTS_FROM is this evaluation itself ($EVAL_DIR)" >&2; exit 2; }
  python -m swift_coord_plugin.cli.infer_settings same-checkpoint "$SRC/infer_settings.json" "$CKPT" >&2
  [ $# -eq 0 ] || echo "[eval] RESULTS_FROM=$RESULTS_FROM: no inference, the swift infer flags are not used: $*" >&2
  score
  exit 0
fi
ARGS=("$INFER_CONFIG" --external_plugins "$(coord-plugin-path)" --infer_backend "$INFER_BACKEND")
# The environment wins over the config's ENV block; the plugin records the mode next to the results.
export COORD_DECODING="$DECODING" COORD_DECODING_RECORD="$EVAL_DIR/infer_result.jsonl.decoding.json"
rm -f "$COORD_DECODING_RECORD"
if [ -f "$CKPT/adapter_config.json" ]; then ARGS+=(--adapters "$CKPT"); else ARGS+=(--model "$CKPT"); fi
SWIFT=(swift)
if [ "$INFER_BACKEND" = vllm ]; then
  # The vLLM environment's swift (COORD_VLLM=1 bash shell/setup.sh); VLLM_ARGS are its extra flags.
  VLLM_VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
  [ -x "$VLLM_VENV/bin/swift" ] || { echo "[eval] INFER_BACKEND=vllm needs $VLLM_VENV: COORD_VLLM=1 bash shell/setup.sh" >&2; exit 2; }
  SWIFT=("$VLLM_VENV/bin/swift")
  read -r -a VA <<< "${VLLM_ARGS:---vllm_max_model_len 8192 --vllm_enforce_eager true}"
  ARGS+=("${VA[@]}")
  # vLLM's CPU build otherwise reserves gpu_memory_utilization (0.9) of the machine's memory for its KV cache and
  # refuses to start when less than that is free ("Available memory ... is less than desired CPU memory
  # utilization"). A fixed KV cache skips that check; GPU builds ignore the variable.
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
fi
# --- sharded inference, check against VAL_DATA, coord-eval options (cluster set-up) --------------------
# Inference resolution: the run's (recorded with checkpoint and step in infer_settings.json, read by coord-eval).
PIX=$(python -m swift_coord_plugin.cli.infer_settings write --checkpoint "$CKPT" --out "$EVAL_DIR/infer_settings.json" \
      --max-pixels "${INFER_MAX_PIXELS:-}" --decoding "$DECODING" --infer-backend "$INFER_BACKEND" \
      --val-data "$VAL_DATA" --infer-config "$INFER_CONFIG" --eval-args="${EVAL_ARGS:-}" -- "$@")
[ -z "$PIX" ] || ARGS+=(--max_pixels "$PIX")
NSHARDS="${NPROC_PER_NODE:-1}"
GPUS_PER_SHARD="${GPUS_PER_SHARD:-1}"
[[ "$NSHARDS" =~ ^[1-9][0-9]*$ ]] || { echo "[eval] NPROC_PER_NODE must be a positive integer (got '$NSHARDS')" >&2; exit 2; }
unset NPROC_PER_NODE   # each shard is one plain process; the shards are launched here
SHARDS=(python -m swift_coord_plugin.cli.shards)
RESULT="$EVAL_DIR/infer_result.jsonl"
rm -f "$RESULT" "$RESULT.slots.jsonl"
# The exact E[k] and spread of every coordinate slot go to <result>.slots.jsonl (transformers backend, constrained or
# coordexp decoding; swift_ext/slots.py): coord-eval --decode coordexp then reads all 1000 bins, not the top k.
if [ "$NSHARDS" = "1" ]; then
  SL=(); [ "$INFER_BACKEND" = vllm ] || SL=("COORD_DECODING_SLOTS=$RESULT.slots.jsonl")
  echo "[eval] COORD_DECODING=$DECODING ${SWIFT[*]} infer ${ARGS[*]} --val_dataset coord:$VAL_DATA --result_path $RESULT $*"
  env ${SL[@]+"${SL[@]}"} "${SWIFT[@]}" infer "${ARGS[@]}" --val_dataset "coord:$VAL_DATA" --result_path "$RESULT" "$@"
  "${SHARDS[@]}" check --val "$VAL_DATA" "$RESULT"
else
  # A re-run keeps a finished shard when its result file holds every row of the shard and its stamp
  # (result_<i>.settings.json) matches this run: checkpoint, GT, rows, decoding, backend, resolution, flags
  # (provenance.reuse_mismatches). Any other result file is deleted first: swift infer appends to it.
  mkdir -p "$EVAL_DIR/shards"
  mapfile -t SHARD_FILES < <("${SHARDS[@]}" split --val "$VAL_DATA" --n "$NSHARDS" --out-dir "$EVAL_DIR/shards")
  for f in "$EVAL_DIR"/shards/shard_*.jsonl; do   # left by an earlier split into more shards
    i="${f##*/shard_}"; i="${i%.jsonl}"
    [ "$i" -lt "${#SHARD_FILES[@]}" ] || rm -f "$f" "$EVAL_DIR/shards/result_$i.jsonl" "$EVAL_DIR/shards/result_$i.jsonl.slots.jsonl" \
      "$EVAL_DIR/shards/result_$i.settings.json"
  done
  NGPU="$(python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)"
  IFS=',' read -r -a DEVICES <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((NGPU > 0 ? NGPU - 1 : 0)))}"
  if [ "$NGPU" -gt 0 ] && [ $(( ${#SHARD_FILES[@]} * GPUS_PER_SHARD )) -gt "$NGPU" ]; then
    echo "[eval] ${#SHARD_FILES[@]} shards x GPUS_PER_SHARD=$GPUS_PER_SHARD need more than the $NGPU visible GPUs" >&2; exit 2
  fi
  # Rows reach the result files EVAL_WRITE_BATCH at a time (ms-swift's --write_batch_size, 1000 by default):
  # the progress line counts them. vLLM batches only within one write batch, so it gets a larger one.
  WRITE=()
  [[ " $* " =~ \ --write_batch_size[\ =] ]] || \
    WRITE=(--write_batch_size "${EVAL_WRITE_BATCH:-$([ "$INFER_BACKEND" = vllm ] && echo 256 || echo 32)}")
  PIDS=(); PARTS=(); RUNNING=()
  for i in "${!SHARD_FILES[@]}"; do
    part="$EVAL_DIR/shards/result_$i.jsonl"; PARTS+=("$part"); stamp="$EVAL_DIR/shards/result_$i.settings.json"
    if WHY=$(python -m swift_coord_plugin.cli.infer_settings shard-reuse "$stamp" --result "$part" \
             --settings "$EVAL_DIR/infer_settings.json" --gt "$GT" --shard "${SHARD_FILES[$i]}"); then
      echo "[eval] shard $i: keeping $part (finished, made with the same checkpoint, GT, rows, decoding, backend, resolution and flags)"
      continue
    fi
    [ ! -e "$part" ] || echo "[eval] shard $i: deleting $part ($WHY)"
    rm -f "$part" "$part.slots.jsonl" "$stamp"
    dev=(); [ "$INFER_BACKEND" = vllm ] || dev=("COORD_DECODING_SLOTS=$part.slots.jsonl")
    if [ "$NGPU" -gt 0 ]; then
      dev+=("CUDA_VISIBLE_DEVICES=$(IFS=,; echo "${DEVICES[*]:$((i * GPUS_PER_SHARD)):$GPUS_PER_SHARD}")")
    fi
    echo "[eval] shard $i: ${dev[*]:-} ${SWIFT[*]} infer ... --val_dataset coord:${SHARD_FILES[$i]} --result_path $part ${WRITE[*]:-} (log: $EVAL_DIR/shards/infer_$i.log)"
    env ${dev[@]+"${dev[@]}"} "${SWIFT[@]}" infer "${ARGS[@]}" --val_dataset "coord:${SHARD_FILES[$i]}" --result_path "$part" \
      ${WRITE[@]+"${WRITE[@]}"} "$@" > "$EVAL_DIR/shards/infer_$i.log" 2>&1 &
    PIDS+=($!); RUNNING+=("$i")
  done
  # One progress line across shards every EVAL_PROGRESS_S seconds (30) while any runs.
  T0=$(date +%s); PROGRESS=("${SHARDS[@]}" progress --shards "${SHARD_FILES[@]}" --results "${PARTS[@]}")
  BASE=$("${PROGRESS[@]}" --rows-done)
  NEXT=$(( T0 + ${EVAL_PROGRESS_S:-30} ))
  while [ ${#PIDS[@]} -gt 0 ]; do
    alive=0; for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 1
    if [ "$(date +%s)" -ge "$NEXT" ]; then
      "${PROGRESS[@]}" --baseline "$BASE" --elapsed $(( $(date +%s) - T0 )) || true
      NEXT=$(( $(date +%s) + ${EVAL_PROGRESS_S:-30} ))
    fi
  done
  FAILED=()
  for k in "${!PIDS[@]}"; do
    i="${RUNNING[$k]}"
    if wait "${PIDS[$k]}"; then
      python -m swift_coord_plugin.cli.infer_settings shard-stamp --out "$EVAL_DIR/shards/result_$i.settings.json" \
        --settings "$EVAL_DIR/infer_settings.json" --gt "$GT" --shard "${SHARD_FILES[$i]}"
    else
      FAILED+=("$i")
    fi
  done
  "${PROGRESS[@]}" --baseline "$BASE" --elapsed $(( $(date +%s) - T0 )) || true
  for i in ${FAILED[@]+"${FAILED[@]}"}; do
    echo "[eval] shard $i failed; the end of $EVAL_DIR/shards/infer_$i.log:" >&2
    tail -20 "$EVAL_DIR/shards/infer_$i.log" >&2
  done
  [ ${#FAILED[@]} -eq 0 ] || { echo "[eval] a re-run keeps the finished shards and re-runs the others" >&2; exit 1; }
  "${SHARDS[@]}" merge --val "$VAL_DATA" --out "$RESULT" "${PARTS[@]}"
  # The slots files in shard order (each line keyed by its row); only when every shard has one.
  SLOTS_PARTS=(); for p in "${PARTS[@]}"; do [ ! -f "$p.slots.jsonl" ] || SLOTS_PARTS+=("$p.slots.jsonl"); done
  if [ ${#SLOTS_PARTS[@]} -gt 0 ] && [ ${#SLOTS_PARTS[@]} -eq ${#PARTS[@]} ]; then
    cat "${SLOTS_PARTS[@]}" > "$RESULT.slots.jsonl"
  elif [ ${#SLOTS_PARTS[@]} -gt 0 ]; then
    echo "[eval] only ${#SLOTS_PARTS[@]} of ${#PARTS[@]} shards wrote a slots file: no $RESULT.slots.jsonl (--decode coordexp reads the top k)" >&2
  fi
fi
score
