#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite. Extra arguments go to pytest.
# The vLLM environment (.venv-vllm) is built too, so that the vLLM tests run; COORD_VLLM=0 skips it
# (the vLLM tests then skip, except under CI where they fail).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
COORD_VLLM="${COORD_VLLM:-1}" bash shell/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The package's import layers (.importlinter): an import from a lower layer into a higher one fails here.
"$ROOT/.venv/bin/lint-imports" --no-logo --no-cache
# Two pytest-xdist workers, each taking whole test files (module fixtures such as a trained checkpoint are built
# once) in collection order, the longest files first (tests/conftest.py SLOWEST_FIRST): most of an end-to-end test
# is a `swift` process starting up, so two at a time use the 2 cores of the test machine better than one. Each
# process then gets one torch thread (OMP_NUM_THREADS, unless set): two workers of two threads each on two cores
# wait on each other (bench/results_suite.md). COORD_TEST_WORKERS=0 runs in one process, with torch's own default.
WORKERS="${COORD_TEST_WORKERS:-2}"
if [ "$WORKERS" != 0 ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
source "$ROOT/shell/cpu_allocator.sh"   # glibc keeps freed memory: no fresh zero-filled pages each step
exec "$ROOT/.venv/bin/python" -m pytest -q -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"
