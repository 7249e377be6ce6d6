# Sourced by shell/test.sh and by shell/train.sh under CPU=1: glibc's allocator takes every block from its heap and
# keeps what is freed (unless these are set). By default each large tensor of a training step (a [tokens, vocab]
# chunk of logits, the embedding's gradient) is mapped afresh and zero-filled by the kernel, about a quarter of a
# tiny-model training step on CPU (bench/results_suite.md). No value changes.
export MALLOC_MMAP_MAX_="${MALLOC_MMAP_MAX_:-0}" MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-68719476736}"
