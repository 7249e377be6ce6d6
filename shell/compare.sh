#!/usr/bin/env bash
# Compare the three groups: comparability, detection metrics with bootstrap intervals, AP along training,
# common yardsticks and convergence, failure reasons, pictures, own losses (summary.md, index.html).
#   ABLATION=output/ablation bash shell/compare.sh [more coord-compare flags]
# Seeds: runs in $ABLATION/group_<g>_seed<N>/ (e.g. OUT=output/ablation/group_a_seed43 bash shell/train.sh
# --seed 43 --data_seed 43) join group <g> and are aggregated (mean ± std).
# Evaluations (shell/eval.sh EVAL_NAME=...): one row each; --eval NAME compares one, --select-on NAME chooses each
# run's checkpoint on that (held-out) evaluation (docs/comparison.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ABLATION="${ABLATION:-$ROOT/output/ablation}"
declare -A LABEL=([a]="A (CE)" [b]="B (CoordExp geom)" [c]="C (hybrid)")
RUNS=(); NAMES=()
for g in a b c; do
  [ -d "$ABLATION/group_$g" ] || { echo "[compare] missing run: $ABLATION/group_$g" >&2; exit 2; }
  for d in "$ABLATION/group_$g" "$ABLATION/group_${g}"_seed*; do
    [ -d "$d" ] || continue
    RUNS+=("$d"); NAMES+=("${LABEL[$g]}")
  done
done
echo "[compare] coord-compare ${RUNS[*]} --out $ABLATION/compare"
exec coord-compare "${RUNS[@]}" --names "${NAMES[@]}" --out "$ABLATION/compare" "$@"
