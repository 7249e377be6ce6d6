#!/usr/bin/env bash
# Compare the three groups: comparability, detection metrics with bootstrap intervals, AP along training,
# common yardsticks and convergence, failure reasons, pictures, own losses (summary.md, index.html).
#   ABLATION=output/ablation bash shell/compare.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ABLATION="${ABLATION:-$ROOT/output/ablation}"
for g in a b c; do
  [ -d "$ABLATION/group_$g" ] || { echo "[compare] missing run: $ABLATION/group_$g" >&2; exit 2; }
done
echo "[compare] coord-compare $ABLATION/group_a $ABLATION/group_b $ABLATION/group_c --out $ABLATION/compare"
exec coord-compare "$ABLATION/group_a" "$ABLATION/group_b" "$ABLATION/group_c" \
  --names "A (CE)" "B (CoordExp geom)" "C (hybrid)" --out "$ABLATION/compare" "$@"
