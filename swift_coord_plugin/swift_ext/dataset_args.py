"""Checks of ``--dataset`` / ``--val_dataset`` values made when the plugin is imported.

Two ways of naming a file end, without them, deep inside ms-swift: a file of unified samples (or a COCO
instances JSON) given as a bare path goes to ms-swift's generic preprocessor, which drops every row with
a traceback each and then divides by zero when it samples the empty set; and a ``#`` inside a ``coord:``
path is read as the ``#N`` sample count (``int()`` of the rest of the path). ms-swift imports the plugin
while it builds its arguments, before any dataset is read, so the values are checked then and a bad one
stops the run with what to write instead.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterable, List, Optional

from ..data import textfiles
from .rows import DATASET_NAME, coco_json_message, unescape_path
from .settings import arguments_being_built

_COCO_KEYS = re.compile(rb'"(images|annotations|categories)"\s*:\s*\[')
SNIFF_BYTES = 1 << 20


def file_kind(path: str) -> Optional[str]:
    """``"unified"`` (first line a JSON object with ``image`` and an ``objects`` list), ``"coco"`` (an
    ``images``/``annotations``/``categories`` list near the start), or None; reads at most the first MiB."""
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    first = text.split(b"\n", 1)[0]
    try:
        row = json.loads(first)
    except ValueError:
        row = None
    # a unified sample: 'image' and a list of objects (ms-swift's own rows hold messages, and objects as a dict)
    if isinstance(row, dict) and isinstance(row.get("image"), str) and isinstance(row.get("objects"), list) \
            and not {"messages", "conversations", "query", "response"} & set(row):
        return "unified"
    if isinstance(row, dict):  # a complete first line: a COCO file on one line, or some JSONL row
        lists = [k for k in ("images", "annotations", "categories") if isinstance(row.get(k), list)]
        return "coco" if len(lists) >= 2 else None
    # a first line that is not a JSON value by itself: a pretty-printed or very long JSON document
    if text.startswith(b"{") and _COCO_KEYS.search(text):
        return "coco"
    return None


def dataset_spec_problem(spec: str) -> Optional[str]:
    """What is wrong with one ``--dataset`` value, or None (names that are not files are ms-swift's)."""
    if not isinstance(spec, str):
        return None
    prefix = DATASET_NAME + ":"
    if spec.startswith(prefix):
        path = spec[len(prefix):]
        if "#" in path:
            head, tail = path.rsplit("#", 1)
            if not tail.strip().isdigit() or (os.path.isfile(path) and not os.path.isfile(unescape_path(head))):
                return (f"{spec}: ms-swift reads what follows the last '#' as a sample count (coord:PATH#N). "
                        f"A '#' that belongs to the path is written %23: {prefix}{path.replace('#', '%23')}")
            path = head
        path = unescape_path(path)
        if os.path.isfile(path):
            if file_kind(path) == "coco":
                return f"{spec}: {coco_json_message(path)}"
            try:
                textfiles.check_encoding(path)
            except (textfiles.TextEncodingError, OSError) as e:
                return f"{spec}: {e}"
        return None
    path = spec.split("#", 1)[0] if not os.path.isfile(spec) else spec
    if not os.path.isfile(path):
        return None
    kind = file_kind(path)
    if kind == "unified":
        return (f"{spec}: a file of unified samples given as a bare path goes to ms-swift's generic preprocessor, "
                f"which drops every row. Name it through the plugin's dataset: --dataset {prefix}{spec}")
    if kind == "coco":
        return f"{spec}: {coco_json_message(path)}"
    return None


def check_dataset_specs(specs: Iterable[str]) -> None:
    problems: List[str] = [p for p in (dataset_spec_problem(s) for s in specs) if p]
    if problems:
        raise ValueError("[swift-coord] dataset argument(s):\n  " + "\n  ".join(problems))


def check_current_arguments() -> None:
    """Check ``--dataset``/``--val_dataset`` of the ms-swift command that imports the plugin (if any)."""
    args = arguments_being_built()
    if args is None:
        return
    specs = []
    for name in ("dataset", "val_dataset"):
        value = getattr(args, name, None) or []
        specs += [value] if isinstance(value, str) else list(value)
    check_dataset_specs(specs)
