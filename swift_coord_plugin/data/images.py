"""Image files as the model must see them: loading, the checks of a file, and the full-decode cache.

Public API: ``header`` (size, mode, EXIF orientation), ``load_rgb`` (a file decoded and converted by
``core.images.to_rgb``), ``stored_size``, ``cheap_check`` (header only), ``image_problem`` and
``sample_problem`` (a unified sample with its image file, the reasons of ``core.samples``),
``decode_problem`` and ``full_check`` (full decode), ``check_files`` and
``decode_problems`` (many files, in parallel processes, cached), ``DecodeCache`` and ``cache_path``
(``$COORD_IMAGE_CHECK_CACHE``). The names of ``core.images`` used here are importable from here too.
The rules: docs/data.md, "Images"; the cache: docs/design/data.md.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Optional, Tuple

from PIL import Image

from .. import environment
from ..core import samples as sample_rules
from ..core.images import EXIF_ORIENTATION, ImageProblem, processor_problem, size_problem, to_rgb


def header(path: str) -> Tuple[int, int, str, int]:
    """``(width, height, mode, exif_orientation)`` from the file's header (no pixel decoding; the
    orientation is 1 when the file has none). Raises ``OSError`` / PIL's errors for an unreadable file."""
    with Image.open(path) as im:
        try:
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a malformed EXIF block does not make the pixels unreadable
            orientation = 1
        return im.size[0], im.size[1], im.mode, orientation


def stored_size(path: Optional[str]) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of the pixels stored in ``path``; None when it is not a readable image file."""
    if not path or not os.path.isfile(path):
        return None
    try:
        w, h, _, _ = header(path)
    except Exception:
        return None
    return w, h


def load_rgb(source):
    """Open ``source`` (a path or a file object), decode it fully and return ``to_rgb`` of it.

    Raises ``ImageProblem`` naming the reason for a file that cannot be decoded (truncated, corrupt,
    a decompression bomb) or shown (see ``to_rgb``)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()
                return to_rgb(im)
    except ImageProblem:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBomb* ...
        raise ImageProblem(f"cannot be decoded ({e.__class__.__name__}: {e})") from None


def full_check(path: str, declared_w=None, declared_h=None) -> Optional[str]:
    """Everything the model needs from the file, with a full decode: readable to the last byte,
    a mode ``to_rgb`` can show, a size the processor accepts, the declared size (if any) the stored one.
    Returns the problem, or None. This is the slow check (milliseconds per COCO image)."""
    try:
        w, h, _, orientation = header(path)
    except Exception as e:
        return f"cannot be read ({e.__class__.__name__}: {e})"
    problem = size_problem((w, h), orientation, declared_w, declared_h) or processor_problem(w, h)
    if problem:
        return problem
    try:
        load_rgb(path)
    except ImageProblem as e:
        return str(e)
    return None


def cheap_check(path: str, declared_w=None, declared_h=None) -> Optional[str]:
    """The header-only part of ``full_check`` (size, orientation, processor limits): run at every load."""
    try:
        w, h, _, orientation = header(path)
    except Exception as e:
        return f"cannot be read ({e.__class__.__name__}: {e})"
    return size_problem((w, h), orientation, declared_w, declared_h) or processor_problem(w, h)


def image_problem(path: str, check_readable: bool = True, width=None, height=None) -> Optional[Tuple[str, str]]:
    """``(reason, message)`` (reasons of ``core.samples``) for the cheap checks of a sample's image file:
    present; with ``check_readable`` its header readable, its stored size equal to the declared ``width``/
    ``height`` when given (EXIF orientation named), a size the processor accepts. None when it passes.
    The full decode is ``decode_problems`` (cached)."""
    if not os.path.isfile(path):
        return sample_rules.MISSING_IMAGE, f"image file not found: {path}"
    if check_readable:
        try:
            w, h, _, orientation = header(path)
        except Exception as e:
            return sample_rules.UNREADABLE_IMAGE, f"image cannot be read: {path} ({e.__class__.__name__}: {e})"
        p = size_problem((w, h), orientation, width, height)
        if p:
            return sample_rules.IMAGE_SIZE_MISMATCH, f"{path}: {p} (fields width, height)"
        p = processor_problem(w, h)
        if p:
            return sample_rules.UNSUPPORTED_IMAGE, f"{path}: {p}"
    return None


def sample_problem(sample, check_readable: bool = True) -> Optional[Tuple[str, str]]:
    """``(reason, message)`` for the first problem of a unified sample, or None if it is valid: its fields
    (``core.samples.fields_problem``), then its image file (``image_problem``; the sample's ``width``/
    ``height``, when it has them, must be the stored pixel size of its image)."""
    problem = sample_rules.fields_problem(sample)
    if problem is None:
        problem = image_problem(sample["image"], check_readable, sample.get("width"), sample.get("height"))
    return problem


def decode_problem(path: str) -> Optional[str]:
    """The slow part of ``full_check``: decode every byte and convert (``load_rgb``); the problem or None."""
    try:
        load_rgb(path)
    except ImageProblem as e:
        return str(e)
    except OSError as e:  # the file went away between checks
        return f"cannot be read ({e.__class__.__name__}: {e})"
    return None


# ----------------------------------------------------------------------------- the decode cache
# One ``[path, mtime_ns, size, problem]`` JSON line per checked file (docs/design/data.md).
CACHE_ENV = environment.IMAGE_CHECK_CACHE_ENV
CACHE_FILE = "image_checks.jsonl"


def cache_path() -> str:
    """``$COORD_IMAGE_CHECK_CACHE`` (a folder), else ``~/.cache/swift_coord_plugin``, + ``image_checks.jsonl``."""
    folder = environment.image_check_cache_dir()
    return os.path.join(folder, CACHE_FILE)


def _file_key(path: str):
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size


def _decode_keyed(path: str):
    """``(path, mtime_ns, size, problem)``; the key is taken before decoding (a later change invalidates)."""
    try:
        mtime, size = _file_key(path)
    except OSError as e:
        return path, None, None, f"cannot be read ({e.__class__.__name__}: {e})"
    return path, mtime, size, decode_problem(path)


class DecodeCache:
    """Full-decode results by image path, valid for the file's (mtime_ns, size); see ``cache_path``."""

    def __init__(self, path: Optional[str] = None):
        self.path = path or cache_path()
        self.entries = {}
        self.hits = self.added = 0  # lookups answered / results added by this object
        if os.path.isfile(self.path):
            with open(self.path, "r", encoding="utf-8") as f:
                for line in f:
                    try:
                        p, mtime, size, problem = json.loads(line)
                    except (ValueError, TypeError):
                        continue  # a line cut by a crash: that image is decoded again
                    self.entries[p] = (mtime, size, problem)

    def lookup(self, path: str):
        """``(True, problem)`` when the cache holds the file as it is now, else ``(False, None)``."""
        hit = self.entries.get(path)
        if hit is None:
            return False, None
        try:
            if (hit[0], hit[1]) != _file_key(path):
                return False, None
        except OSError:
            return False, None
        self.hits += 1
        return True, hit[2]

    def add(self, results) -> None:
        """Append ``(path, mtime_ns, size, problem)`` results (unkeyed ones are not cached)."""
        lines = []
        for p, mtime, size, problem in results:
            if mtime is None:
                continue
            self.entries[p] = (mtime, size, problem)
            self.added += 1
            lines.append(json.dumps([p, mtime, size, problem]) + "\n")
        if not lines:
            return
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:  # one write: concurrent writers interleave lines
                f.write("".join(lines))
        except OSError:
            pass  # a read-only cache folder costs time, not correctness


def check_files(items, cache: Optional[DecodeCache] = None, workers: Optional[int] = None, progress=None) -> dict:
    """``{path: problem or None}`` for ``(path, declared_width, declared_height)`` items: the header checks
    (``cheap_check``, every time) and the full decode (``decode_problems``, cached). A path listed twice
    with different declared sizes is checked against each; the first problem is kept."""
    out, done = {}, set()
    for path, w, h in items:
        if (path, w, h) in done or out.get(path) is not None:
            continue
        done.add((path, w, h))
        out[path] = cheap_check(path, w, h)
    decodable = [p for p, problem in out.items() if problem is None]
    for path, problem in decode_problems(decodable, cache, workers, progress).items():
        if problem is not None:
            out[path] = problem
    return out


def decode_problems(paths, cache: Optional[DecodeCache] = None, workers: Optional[int] = None,
                    progress=None) -> dict:
    """``{path: problem or None}`` for every path, decoding (in ``workers`` processes, default all CPUs)
    only those the cache does not hold, and adding them to it. ``progress(n)`` is called as files are done."""
    cache = cache if cache is not None else DecodeCache()
    out, todo = {}, []
    for p in dict.fromkeys(paths):
        hit, problem = cache.lookup(p)
        if hit:
            out[p] = problem
        else:
            todo.append(p)
    if progress is not None and len(out):
        progress(len(out))
    if not todo:
        return out
    workers = workers or os.cpu_count() or 1
    results = []
    if workers <= 1 or len(todo) < 64:
        for p in todo:
            results.append(_decode_keyed(p))
            if progress is not None:
                progress(1)
    else:
        # spawn: the caller may be a training process with threads (forking those can deadlock)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(_decode_keyed, todo, chunksize=64):
                results.append(r)
                if progress is not None:
                    progress(1)
    cache.add(results)
    out.update({p: problem for p, _, _, problem in results})
    return out
