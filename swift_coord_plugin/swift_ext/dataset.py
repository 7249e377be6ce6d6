"""Dataset ``coord``: unified detection samples (JSONL) -> ms-swift rows for the ``qwen3_vl_coord`` template. This
module holds what does not load ms-swift; the ms-swift classes and their registration are in ``swift_dataset``.

Public: ``DATA_ROOT_ENV``, ``META_COLUMNS``, ``MAX_LISTED``, ``BadSamplesError``, ``resolve_data_path``.
Design notes: ``docs/design/swift_ext_dataset.md``.
"""
from __future__ import annotations

import os

from .. import environment
from ..environment import DATA_ROOT_ENV  # noqa: F401 (re-exported)

META_COLUMNS = ("image_id", "width", "height")
MAX_LISTED = 20


class BadSamplesError(ValueError):
    pass


def resolve_data_path(path: str) -> str:
    """Absolute path of the file named by ``coord:<path>``.

    Absolute paths are kept; a relative one is joined to ``$COORD_DATA_ROOT`` when set, else to the current
    directory. Raises ``FileNotFoundError`` naming the path as given and the folder it was resolved against.
    """
    root = environment.data_root()
    if os.path.isabs(path):
        full, base = path, None
    elif root:
        full, base = os.path.join(os.path.expanduser(root), path), f"${DATA_ROOT_ENV}={root}"
    else:
        full, base = os.path.abspath(path), f"the current directory {os.getcwd()} (${DATA_ROOT_ENV} is not set)"
    if not os.path.isfile(full):
        where = f" (relative to {base})" if base else ""
        raise FileNotFoundError(f"coord:{path}: no such file: {full}{where}")
    return os.path.abspath(full)
