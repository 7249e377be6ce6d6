"""Reading and checking a COCO instances JSON: the one reader of the converter and the evaluator.

Public API: ``CocoFormatError``, ``read_instances`` (the file, its top level checked), ``load_desc_map``
(``--desc-map``), ``category_descs`` (category id -> description), ``image_record`` and
``annotation_error`` (one record checked, its error naming it). The rules: docs/data.md, "Errors" and
"Speed"; the split of the data modules: docs/design/data.md.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Dict, List, Mapping, Optional

from . import textfiles
from ..core.codec import clean_desc, desc_problem


class CocoFormatError(ValueError):
    """The instances JSON (or a description map) is unusable; the message names the file and record."""


# ----------------------------------------------------------------------------- reading
# A polygon segmentation: a list of flat lists of numbers. Only such values are skipped by the fast
# reader; anything else (RLE dicts, odd shapes) is left in place for the JSON parser.
_POLYGON_SEGMENTATION = re.compile(
    r'"segmentation"\s*:\s*(\[\s*\[[-+.0-9eE,\s]*\](?:\s*,\s*\[[-+.0-9eE,\s]*\])*\s*\])')
_SEGMENTATION_KEY = '"segmentation"'


def _without_polygons(text: str) -> str:
    """``text`` with every polygon ``segmentation`` value replaced by ``null``.

    Polygons are most of a COCO file's bytes and the converter never reads them; not building
    tens of millions of floats makes loading about three times faster. A match must start at the
    key's opening quote, so the key text inside a JSON string (where its quotes are escaped) is
    never touched.
    """
    out: List[str] = []
    start = cur = 0
    find, match = text.find, _POLYGON_SEGMENTATION.match
    while True:
        k = find(_SEGMENTATION_KEY, cur)
        if k < 0:
            break
        m = match(text, k)
        if m is None:
            cur = k + len(_SEGMENTATION_KEY)
            continue
        out.append(text[start:m.start(1)])
        out.append("null")
        start = cur = m.end()
    if not out:
        return text
    out.append(text[start:])
    return "".join(out)


def _decode_error(path: str, err: json.JSONDecodeError, text: str) -> CocoFormatError:
    lo = max(0, err.pos - 40)
    excerpt = text[lo:err.pos + 40].replace("\n", " ")
    return CocoFormatError(f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg} "
                           f"(near {excerpt!r})")


def read_instances(path: str, skip_polygons: bool = True) -> Dict[str, Any]:
    """Load and check the top level of a COCO instances JSON.

    ``info`` and ``licenses`` are optional; ``images``, ``annotations`` and ``categories`` must be
    lists. With ``skip_polygons`` polygon segmentations are not parsed (they come back as None); the
    values are then not syntax-checked, everything else is. Errors name the file and the position.
    """
    try:
        text = textfiles.read_text(path)
    except OSError as e:
        raise CocoFormatError(f"{path}: cannot read the annotation file ({e.strerror or e})") from None
    except textfiles.TextEncodingError as e:
        raise CocoFormatError(str(e)) from None
    try:
        data = json.loads(_without_polygons(text) if skip_polygons else text)
    except json.JSONDecodeError:
        # Positions in the stripped text differ from the file's: report the error from the original.
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise _decode_error(path, err, text) from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: the top level must be a JSON object with 'images', 'annotations' "
                              f"and 'categories', got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise CocoFormatError(f"{path}: no {key!r} key (a COCO instances file needs 'images', "
                                  f"'annotations' and 'categories'; 'info' and 'licenses' are optional)")
        if not isinstance(data[key], list):
            raise CocoFormatError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    return data


# ----------------------------------------------------------------------------- descriptions
def load_desc_map(spec: str) -> Dict[str, Any]:
    """A description map from a JSON file path, or from inline JSON text starting with ``{``."""
    where = "--desc-map (inline JSON)" if spec.lstrip().startswith("{") else spec
    try:
        if spec.lstrip().startswith("{"):
            value = json.loads(spec)
        else:
            value = json.loads(textfiles.read_text(spec))
    except OSError as e:
        raise CocoFormatError(f"{spec}: cannot read the description map ({e.strerror or e})") from None
    except textfiles.TextEncodingError as e:
        raise CocoFormatError(str(e)) from None
    except json.JSONDecodeError as e:
        raise CocoFormatError(f"{where}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    if not isinstance(value, dict):
        raise CocoFormatError(f"{where}: a description map must be a JSON object "
                              f"{{category id or name: description}}, got {type(value).__name__}")
    return value


def _is_int_key(key: Any) -> bool:
    if isinstance(key, bool):
        return False
    if isinstance(key, int):
        return True
    return isinstance(key, str) and re.fullmatch(r"[+-]?\d+", key.strip()) is not None


def category_descs(categories: List[Any], desc_map: Optional[Mapping[Any, str]] = None,
                   source: str = "<instances>") -> Dict[Any, str]:
    """category id -> description: the category name, or the map's phrase.

    A map key is a category id (``"18"`` or ``18``) or, failing that, a category name. Unknown
    keys, two keys for one category and descriptions the codec cannot render are errors.
    """
    names: Dict[Any, str] = {}
    by_name: Dict[str, Any] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
            raise CocoFormatError(f"{source}: categories[{i}] needs 'id' and 'name', got {_short(cat)}")
        cid = cat["id"]
        if not isinstance(cid, (int, str)) or isinstance(cid, bool):
            raise CocoFormatError(f"{source}: categories[{i}]: id must be an integer or string, got {cid!r}")
        if cid in names:
            raise CocoFormatError(f"{source}: categories[{i}]: duplicate category id {cid!r}")
        names[cid] = cat["name"]
        if isinstance(cat["name"], str):
            by_name.setdefault(cat["name"], cid)

    descs = dict(names)
    mapped_from: Dict[Any, Any] = {}
    for key, phrase in (desc_map or {}).items():
        cid = None
        if _is_int_key(key) and int(key) in names:
            cid = int(key)
        elif key in names:
            cid = key
        elif key in by_name:
            cid = by_name[key]
        if cid is None:
            raise CocoFormatError(f"description map: key {key!r} is neither a category id nor a category name "
                                  f"of {source}")
        if cid in mapped_from:
            raise CocoFormatError(f"description map: keys {mapped_from[cid]!r} and {key!r} both name category "
                                  f"{cid!r} ({names[cid]!r})")
        mapped_from[cid] = key
        descs[cid] = phrase

    for cid, desc in descs.items():
        problem = desc_problem(desc)
        if problem:
            origin = f"description map key {mapped_from[cid]!r}" if cid in mapped_from else source
            raise CocoFormatError(f"{origin}: category {cid!r} ({names[cid]!r}): {problem}")
        descs[cid] = clean_desc(desc)
    return descs


# ----------------------------------------------------------------------------- records
def _short(record: Any, limit: int = 160) -> str:
    if isinstance(record, dict) and "segmentation" in record:
        record = {k: ("..." if k == "segmentation" else v) for k, v in record.items()}
    text = repr(record)
    return text if len(text) <= limit else text[:limit] + "...}"


def image_record(i: int, im: Any, source: str):
    """``(id, file_name, width, height)`` of ``images[i]``, or an error naming it. Without ``file_name``
    the name is ``<split folder>/<file>`` of ``coco_url`` (LVIS files; docs/data.md, "The output")."""
    if not isinstance(im, dict):
        raise CocoFormatError(f"{source}: images[{i}] must be an object, got {_short(im)}")
    missing = [k for k in ("id", "width", "height") if k not in im]
    if "file_name" not in im and not (isinstance(im.get("coco_url"), str) and im["coco_url"].strip("/")):
        missing.append("file_name (nor coco_url)")
    if missing:
        raise CocoFormatError(f"{source}: images[{i}] (id={im.get('id')!r}) has no {', '.join(missing)}")
    iid, w, h = im["id"], im["width"], im["height"]
    name = im["file_name"] if "file_name" in im else "/".join(im["coco_url"].rstrip("/").split("/")[-2:])
    if not isinstance(iid, (int, str)) or isinstance(iid, bool):
        raise CocoFormatError(f"{source}: images[{i}]: id must be an integer or string, got {iid!r}")
    if not isinstance(name, str) or not name:
        raise CocoFormatError(f"{source}: images[{i}] (id={iid!r}): file_name must be a non-empty string")
    for key, v in (("width", w), ("height", h)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise CocoFormatError(f"{source}: images[{i}] (id={iid!r}): {key} must be a positive number, got {v!r}")
    return iid, name, w, h


def _is_key(value: Any, mapping: Mapping[Any, Any]) -> bool:
    """``value in mapping``, False for an unhashable value (a list where an id belongs)."""
    try:
        return value in mapping
    except TypeError:
        return False


def annotation_error(i: int, ann: Any, images: Mapping[Any, Any], descs: Mapping[Any, str],
                      source: str) -> CocoFormatError:
    """The precise problem of ``annotations[i]`` (called only once the fast path has failed)."""
    if not isinstance(ann, dict):
        return CocoFormatError(f"{source}: annotations[{i}] must be an object, got {_short(ann)}")
    where = f"{source}: annotation id={ann.get('id')!r} (annotations[{i}])"
    missing = [k for k in ("image_id", "category_id", "bbox") if k not in ann]
    if missing:
        return CocoFormatError(f"{where} has no {', '.join(missing)}")
    if not _is_key(ann["image_id"], images):
        return CocoFormatError(f"{where}: image_id {ann['image_id']!r} is not an image of this file")
    if not _is_key(ann["category_id"], descs):
        return CocoFormatError(f"{where}: category_id {ann['category_id']!r} is not a category of this file")
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1, None):
        return CocoFormatError(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
    bbox = ann["bbox"]
    ok = (isinstance(bbox, list) and len(bbox) == 4
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox))
    if not ok:
        return CocoFormatError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
    return CocoFormatError(f"{where}: unusable record {_short(ann)}")
