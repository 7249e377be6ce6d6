"""Image rules as the model must see them, on sizes and decoded images (PIL only, no ms-swift, no cache).

Public API: ``ImageProblem``, ``size_problem`` (declared vs stored size, EXIF named), ``processor_problem``
(Qwen-VL's limits), ``to_rgb`` (a decoded image as 8-bit RGB as a person sees it). No file is read here:
headers, loading, the full decode and its cache are ``data.images``. The rules: docs/data.md, "Images".
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
# EXIF orientations that swap width and height when a viewer applies them.
ROTATING_ORIENTATIONS = (5, 6, 7, 8)
MAX_ASPECT_RATIO = 200  # qwen_vl_utils.vision_process.MAX_RATIO; transformers' Qwen2-VL smart_resize
TRANSPARENT_BACKGROUND = (255, 255, 255)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageProblem(ValueError):
    """An image the model cannot be given as a person sees it; the message says why."""


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
    """The decoded image ``im`` (any PIL mode) as 8-bit RGB as a person sees it (docs/data.md, "Images").
    Raises ``ImageProblem`` for a mode without a defined display (``F``, ``I`` beyond 16 bits)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT or mode == "I":
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
