"""Image files as the model must see them: checks and the one conversion to RGB (PIL only, no ms-swift).

Frame. Boxes are in COCO's frame: the pixel grid stored in the file (``width`` x ``height`` of the
image record), never the EXIF-rotated view some viewers show. The model is given the stored pixels as
they are (no EXIF transpose), so boxes and pixels agree. A declared size that matches the stored grid
only after an EXIF rotation means the annotation was made in the displayed frame: refused
(``size_problem``), because its boxes would land on other pixels.

Colour (``to_rgb``): what a person sees, as 8-bit RGB.

* ``RGB``: as is. ``L``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, palette ``P`` without transparency:
  PIL's conversion to RGB (CMYK by PIL's formula, no ICC colour management).
* transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent colour, ``RGBa``): composited on
  **white** (``TRANSPARENT_BACKGROUND``), the page colour most viewers and documents use. Dropping the
  alpha channel (what a plain ``convert("RGB")`` does) would show the colour values hidden under
  transparent pixels, often black or noise.
* 16-bit greyscale (``I;16``, ``I;16L``, ``I;16B``, and ``I`` whose values fit in 0..65535): scaled
  ``v * 255 / 65535`` (rounded). PIL's own conversion clips at 255, turning most of such an image white.
* anything else (``F`` float images, ``I`` with values beyond 16 bits): refused with a message.

Processor limits (``processor_problem``): Qwen-VL's ``smart_resize`` (transformers' Qwen2-VL image
processor and ``qwen_vl_utils``) raises for an aspect ratio above 200; PIL refuses images over twice
``Image.MAX_IMAGE_PIXELS`` as decompression bombs (and warns above it).
"""
from __future__ import annotations

from typing import Optional, Tuple

EXIF_ORIENTATION = 0x0112
# EXIF orientations that swap width and height when a viewer applies them.
ROTATING_ORIENTATIONS = (5, 6, 7, 8)
MAX_ASPECT_RATIO = 200  # qwen_vl_utils.vision_process.MAX_RATIO; transformers' Qwen2-VL smart_resize
TRANSPARENT_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageProblem(ValueError):
    """An image the model cannot be given as a person sees it; the message says why."""


def header(path: str) -> Tuple[int, int, str, int]:
    """``(width, height, mode, exif_orientation)`` from the file's header (no pixel decoding; the
    orientation is 1 when the file has none). Raises ``OSError`` / PIL's errors for an unreadable file."""
    from PIL import Image

    with Image.open(path) as im:
        try:
            orientation = int(im.getexif().get(EXIF_ORIENTATION, 1) or 1)
        except Exception:  # a malformed EXIF block does not make the pixels unreadable
            orientation = 1
        return im.size[0], im.size[1], im.mode, orientation


def stored_size(path: Optional[str]) -> Optional[Tuple[int, int]]:
    """``(width, height)`` of the pixels stored in ``path``; None when it is not a readable image file."""
    import os

    if not path or not os.path.isfile(path):
        return None
    try:
        w, h, _, _ = header(path)
    except Exception:
        return None
    return w, h


def size_problem(stored: Tuple[int, int], orientation: int, declared_w, declared_h) -> Optional[str]:
    """Why a declared ``width``/``height`` does not describe the stored pixel grid, or None.

    ``declared_w``/``declared_h`` may be None (not declared: nothing to compare)."""
    if declared_w is None or declared_h is None:
        return None
    w, h = stored
    if (float(declared_w), float(declared_h)) == (float(w), float(h)):
        return None
    if orientation in ROTATING_ORIENTATIONS and (float(declared_w), float(declared_h)) == (float(h), float(w)):
        return (f"declared width x height {declared_w}x{declared_h} is the EXIF-rotated view (orientation "
                f"{orientation}); the file stores {w}x{h} pixels. Boxes must be in the stored frame (COCO's): "
                "annotate the stored pixels, or save the image rotated (PIL ImageOps.exif_transpose) and "
                "annotate that")
    return f"declared width x height {declared_w}x{declared_h} but the file stores {w}x{h} pixels"


def processor_problem(width: int, height: int) -> Optional[str]:
    """Why Qwen-VL's image processor would refuse an image of this size, or None."""
    from PIL import Image

    if width < 1 or height < 1:
        return f"image has no pixels ({width}x{height})"
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        return (f"aspect ratio {ratio:.1f} of {width}x{height} is above {MAX_ASPECT_RATIO}, the limit of "
                "Qwen-VL's image processor")
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > 2 * limit:
        return f"{width}x{height} pixels is above PIL's decompression-bomb limit ({2 * limit} pixels)"
    return None


def to_rgb(im):
    """The decoded image ``im`` (any PIL mode) as 8-bit RGB as a person sees it; see the module doc.
    Raises ``ImageProblem`` for a mode without a defined display (``F``, ``I`` beyond 16 bits)."""
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT or mode == "I":
        import numpy as np

        a = np.asarray(im, dtype=np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageProblem(f"{mode} image with values outside 0..65535: no defined display range")
        grey = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        raise ImageProblem("floating-point (mode F) image: no defined display range")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    elif mode == "P":
        return im.convert("RGB")
    if mode == "RGBa":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(source):
    """Open ``source`` (a path or a file object), decode it fully and return ``to_rgb`` of it.

    Raises ``ImageProblem`` naming the reason for a file that cannot be decoded (truncated, corrupt,
    a decompression bomb) or shown (see ``to_rgb``)."""
    import warnings

    from PIL import Image

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
# A full decode of COCO train (118k images) costs minutes; it is paid once: results are kept in an
# append-only JSON-lines file, one ``[path, mtime_ns, size, problem]`` per checked file, valid while the
# file's modification time and size are unchanged. The converter fills it; the dataset check reads it
# and decodes only what it does not hold.
CACHE_ENV = "COORD_IMAGE_CHECK_CACHE"
CACHE_FILE = "image_checks.jsonl"


def cache_path() -> str:
    """``$COORD_IMAGE_CHECK_CACHE`` (a folder), else ``~/.cache/swift_coord_plugin``, + ``image_checks.jsonl``."""
    import os

    folder = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "swift_coord_plugin")
    return os.path.join(folder, CACHE_FILE)


def _file_key(path: str):
    import os

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
        import json
        import os

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
        import json
        import os

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
    import os

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
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the caller may be a training process with threads (forking those can deadlock)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for r in pool.map(_decode_keyed, todo, chunksize=64):
                results.append(r)
                if progress is not None:
                    progress(1)
    cache.add(results)
    out.update({p: problem for p, _, _, problem in results})
    return out
