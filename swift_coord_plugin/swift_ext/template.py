"""Template ``qwen3_vl_coord``: the helpers of its ms-swift class that do not load ms-swift (the class itself,
``CoordQwen3VLTemplate``, and its registration are in ``swift_template``).

Public: ``EncodeFailure``, ``REPLACED_ROWS``, ``load_image_as_seen``, ``row_where``, ``CoordOrderEpochCallback``.
Design notes: ``docs/design/swift_ext_template.md``.
"""
from __future__ import annotations

import io
import os

from transformers import TrainerCallback

from ..core import codec
from ..data import images


class EncodeFailure(BaseException):
    """A training row that could not be encoded. A ``BaseException`` on purpose: ms-swift's lazy dataset
    catches ``Exception`` and silently trains on a random other row instead (see the module doc)."""


# Rows ms-swift replaced in this process, by reason (with COORD_BAD_SAMPLES=drop or for --max_length).
REPLACED_ROWS = {}


def load_image_as_seen(image):
    """A row's image (path, ``{"bytes", "path"}`` or PIL image) as ``data.images.load_rgb`` gives it."""
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    if isinstance(image, bytes):
        return images.load_rgb(io.BytesIO(image))
    if isinstance(image, str):
        if image.startswith(("http://", "https://", "data:")) or not os.path.isfile(image):
            return image  # ms-swift's own loader: URLs, base64, ROOT_IMAGE_DIR-relative paths
        try:
            return images.load_rgb(image)
        except images.ImageProblem as e:
            raise images.ImageProblem(f"image {image}: {e}") from None
    if hasattr(image, "mode"):
        return images.to_rgb(image)
    return image

class CoordOrderEpochCallback(TrainerCallback):
    """Tells the template the epoch that is starting (the ``random`` order draws per epoch).

    ``on_epoch_begin`` runs before the trainer starts the epoch's data loader iterator, whose workers get the
    template as it is then.
    """

    def __init__(self, template):
        self.template = template

    def on_epoch_begin(self, args, state, control, **kwargs):
        epoch = int(round(state.epoch or 0))
        if epoch != self.template.coord_order_epoch:
            print(f"[swift-coord] {codec.ORDER_ENV}=random: drawing the object orders of epoch {epoch}", flush=True)
        self.template.coord_order_epoch = epoch


def row_where(inputs) -> str:
    """The image path and image id of a row, for messages."""
    row = inputs if isinstance(inputs, dict) else getattr(inputs, "__dict__", {})
    images = row.get("images") or []
    image = images[0] if images else None
    if isinstance(image, dict):
        image = image.get("path")
    meta = (row.get("chat_template_kwargs") or {}).get("coord_meta") or {}
    ident = f" (image_id {meta['image_id']})" if "image_id" in meta else ""
    return f"{image if isinstance(image, str) else 'an in-memory image'}{ident}"
