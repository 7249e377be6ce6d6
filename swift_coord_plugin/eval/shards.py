"""Sharded inference without lost rows: split the validation samples, merge and check the result files
(no ms-swift import).

Why the launch script shards by itself: ``NPROC_PER_NODE=N swift infer`` (ms-swift 4.6) gives each rank a
contiguous shard and gathers the result lines to rank 0 with accelerate's ``gather_object``. That call
returns the local list unchanged unless accelerate's ``PartialState`` reports a distributed type; on a
machine without CUDA it reports none unless told to use the CPU (``ACCELERATE_USE_CPU``), so the result file
silently held rank 0's rows only. ``shell/eval.sh`` therefore runs one ``swift infer`` per shard, each with
its own result file, and merges them here; the merged file is checked against the validation samples, so a
crashed, ungathered or foreign shard is an error naming the missing rows, whatever the backend.

A row is identified by its ``image_id`` when the sample has one (results carry it in
``chat_template_kwargs.coord_meta``, see ``core.samples.row_meta``), else by its image path
(``core.samples.row_identity``, the identity ``core.samples.row_key`` writes to slots files).
"""
from __future__ import annotations

import collections
import json
import os
from typing import Dict, Iterator, List, Sequence, Tuple

from ..core.samples import row_identity, row_meta
from ..data import textfiles

MAX_LISTED = 20
RowKey = Tuple[str, object]


class ShardError(ValueError):
    """Results that do not hold every requested row exactly once; the message names files and rows."""


def _loads(line: str):
    try:
        import orjson

        return orjson.loads(line)
    except ImportError:  # pragma: no cover - orjson is a dependency of the package
        return json.loads(line)


def _jsonl(path: str) -> Iterator[Tuple[int, str, dict]]:
    """(line number, raw line, parsed object) of every non-blank line; ``ShardError`` names a bad line or a
    file that is not UTF-8 (``data.textfiles``: a UTF-8 byte-order mark is accepted and not copied)."""
    try:
        for lineno, line in textfiles.iter_lines(path):
            if not line.strip():
                continue
            try:
                obj = _loads(line)
            except ValueError as e:
                raise ShardError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(obj, dict):
                raise ShardError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, line, obj
    except textfiles.TextEncodingError as e:
        raise ShardError(str(e)) from None


def sample_key(sample: dict, base_dir: str) -> RowKey:
    """Identity of a unified sample (``core.samples.row_identity``): ``("image_id", id)``, else
    ``("image", image path)``, relative paths taken from ``base_dir`` (the samples file's folder, as the
    dataset loader does); ``("image", None)`` for a sample with neither."""
    return row_identity(sample.get("image_id"), sample.get("image", sample.get("images")), base_dir) \
        or ("image", None)


def result_key(row: dict) -> RowKey:
    """Identity of a ``swift infer`` result line, comparable with ``sample_key``: ``core.samples.row_identity``
    of its ``image_id`` (``row_meta``) and ``images`` (the tuple ``core.samples.row_key`` writes as JSON)."""
    return row_identity(row_meta(row).get("image_id"), row.get("images")) or ("image", None)


def _describe(keys: Sequence[RowKey]) -> str:
    shown = ", ".join(f"{kind} {value}" for kind, value in keys[:MAX_LISTED])
    more = f" ... and {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return shown + more


def read_samples(val_path: str) -> List[Tuple[int, dict]]:
    """(line number, sample) of every non-blank line of a unified-sample JSONL."""
    if not os.path.isfile(val_path):
        raise ShardError(f"{val_path}: no such file")
    return [(lineno, obj) for lineno, _, obj in _jsonl(val_path)]


def split_samples(val_path: str, n: int, out_dir: str) -> List[str]:
    """Write ``val_path``'s samples as ``min(n, rows)`` contiguous shards ``shard_<i>.jsonl`` in ``out_dir``
    (sizes differ by at most one, in file order; relative image paths made absolute so the shards load from
    another folder). Returns the shard paths. Raises ``ShardError`` for ``n < 1`` or an empty file."""
    if n < 1:
        raise ShardError(f"number of shards must be at least 1, got {n}")
    samples = read_samples(val_path)
    if not samples:
        raise ShardError(f"{val_path}: no samples")
    base_dir = os.path.dirname(os.path.abspath(val_path))
    n = min(n, len(samples))
    os.makedirs(out_dir, exist_ok=True)
    paths, start = [], 0
    for i in range(n):
        size = len(samples) // n + (1 if i < len(samples) % n else 0)
        lines = []
        for _, sample in samples[start:start + size]:
            image = sample.get("image")
            if isinstance(image, str) and not os.path.isabs(image):
                sample = dict(sample, image=os.path.normpath(os.path.join(base_dir, image)))
            lines.append(json.dumps(sample, ensure_ascii=False) + "\n")
        start += size
        path = os.path.join(out_dir, f"shard_{i}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(lines))
        paths.append(path)
    return paths


def check_results(result_paths: Sequence[str], val_path: str, out_path: str = None) -> Dict[str, int]:
    """Check that the result files together hold every row of ``val_path`` exactly once; with ``out_path``
    also write them, concatenated in the given order, lines unchanged, as one file.

    Returns ``{"requested": rows of val_path, "results": result lines}``. Raises ``ShardError`` listing the
    missing rows (by image id or path), the duplicated ones and the rows that are not in ``val_path``, with
    the file and line of each extra or duplicate.
    """
    base_dir = os.path.dirname(os.path.abspath(val_path))
    want = collections.Counter(sample_key(s, base_dir) for _, s in read_samples(val_path))
    got: collections.Counter = collections.Counter()
    where: Dict[RowKey, List[str]] = collections.defaultdict(list)
    out = open(out_path + ".tmp", "w", encoding="utf-8") if out_path else None
    try:
        for path in result_paths:
            if not os.path.isfile(path):
                raise ShardError(f"result file missing: {path} (did that shard's swift infer fail? see its log)")
            for lineno, line, row in _jsonl(path):
                key = result_key(row)
                got[key] += 1
                where[key].append(f"{path}:{lineno}")
                if out:
                    out.write(line if line.endswith("\n") else line + "\n")
    finally:
        if out:
            out.close()
    missing = sorted((k for k in want if got[k] < want[k]), key=str)
    extra = sorted((k for k in got if k not in want), key=str)
    dup = sorted((k for k in got if k in want and got[k] > want[k]), key=str)
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(want)} requested rows have no result: {_describe(missing)}")
    if dup:
        problems.append(f"{len(dup)} rows have more than one result: "
                        + "; ".join(f"{k[0]} {k[1]} at {', '.join(where[k])}" for k in dup[:MAX_LISTED]))
    if extra:
        problems.append(f"{len(extra)} result rows are not in {val_path}: "
                        + "; ".join(f"{k[0]} {k[1]} at {where[k][0]}" for k in extra[:MAX_LISTED]))
    if problems:
        if out_path:
            os.remove(out_path + ".tmp")
        raise ShardError(f"results {', '.join(result_paths)} do not hold every row of {val_path} exactly once:\n  "
                         + "\n  ".join(problems))
    if out_path:
        os.replace(out_path + ".tmp", out_path)
    return {"requested": sum(want.values()), "results": sum(got.values())}


def count_rows(path: str) -> int:
    """Complete lines (ending in a newline, not blank) of a JSONL file; 0 when it does not exist yet. A line
    being written is not counted."""
    if not os.path.isfile(path):
        return 0
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n") and line.strip():
                n += 1
    return n


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(done: int, total: int, elapsed_s: float, baseline: int = 0) -> str:
    """One line on sharded inference: rows done of ``total`` (percent), the rate of this run (rows per second
    over ``elapsed_s``, not counting the ``baseline`` rows that were already there, e.g. kept shards) and the
    time left at that rate ("unknown" before the first row)."""
    pct = 100.0 * done / total if total else 100.0
    rate = (done - baseline) / elapsed_s if elapsed_s > 0 else 0.0
    left = "done" if done >= total else (f"about {_duration((total - done) / rate)} left" if rate > 0
                                         else "time left unknown (no row yet)")
    return (f"[eval] shards: {done}/{total} rows ({pct:.1f}%) | {rate:.2f} rows/s | {left} | "
            f"{_duration(elapsed_s)} elapsed")
