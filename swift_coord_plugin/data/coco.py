"""COCO instances JSON -> unified detection samples, one JSON object per line.

Each written line is::

    {"image": "/abs/images/x.jpg", "image_id": 42, "width": 640, "height": 480,
     "objects": [{"desc": "dog", "bbox": [x1, y1, x2, y2]}, ...]}

The rules (documented with their reasons in ``docs/data.md``):

* bbox: COCO ``[x, y, w, h]`` in pixels -> ``codec.normalize_box([x, y, x + w, y + h], W, H)`` with
  W, H from the image record (clipped to [0, 1]); a box of zero (or negative) width or height after
  clipping is dropped and counted as ``degenerate``.
* desc: the category name, or its replacement from a description map; validated by
  ``codec.desc_problem``.
* ``iscrowd=1`` annotations are never targets (counted as ``crowd``). ``"ignore": 1`` on a non-crowd
  annotation is not a COCO field: it is trained as an object, as pycocotools scores it, and counted
  (``ignore_flagged``).
* two categories whose descriptions normalise alike (``descriptions.distinct_descriptions``) and
  that both have annotations are an error naming their ids: the evaluator could not tell them apart.
* image file: ``file_name`` under the images folder; without ``file_name``, the last part of
  ``coco_url`` (LVIS), under ``<images>/<split folder of the URL>/`` when that file exists, else
  directly under the images folder.
* order: ``codec.order_objects`` under the order policy (``ConvertOptions.order``, default the
  ``COORD_ORDER`` setting, else ``y1x1``: bins of y1, then of x1, then the continuous values; ties keep
  annotation order). ``random`` writes the ``y1x1`` order: the draw happens when training encodes a sample.
* cap: ``area`` keeps the ``max_objects`` largest boxes (ties: earlier annotation first) and then
  orders them; ``scan`` orders all and keeps the first ``max_objects``. ``max_objects=0``: no cap.
* images left without objects are kept with ``"objects": []`` unless ``drop_empty``.
* images whose file is missing are an error, or with ``skip_missing`` dropped and counted.
* images (``check_images``, default on) are checked as the model will need them (``core.images``): the
  stored pixel grid must be the record's ``width`` x ``height`` (an EXIF rotation that would explain the
  difference is named), the size within Qwen-VL's processor limits, and every byte decodable in a mode
  that can be shown. This full decode runs in parallel and is cached by file, modification time and size,
  so the dataset check at training time does not pay it again. A bad image is an error naming the record
  and the file, or with ``skip_bad_images`` dropped and counted (``bad_image``).
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..core import textfiles
from ..core.codec import (DetObject, OrderPolicy, clean_desc, desc_problem, is_narrow, normalize_box, order_objects,
                          order_policy)
from .descriptions import AmbiguousCategoriesError, distinct_descriptions

CAP_POLICIES = ("area", "scan")
DEFAULT_MAX_OBJECTS = 30
# How many problems one error message lists before it only counts the rest.
MAX_LISTED = 10
# How many images pass between two progress callbacks.
PROGRESS_EVERY = 2048


class CocoFormatError(ValueError):
    """The instances JSON (or a description map) is unusable; the message names the file and record."""


@dataclass(frozen=True)
class ConvertOptions:
    """What the converter does with objects and images; validated on construction."""

    max_objects: int = DEFAULT_MAX_OBJECTS
    cap_policy: str = "area"
    drop_empty: bool = False
    skip_missing: bool = False
    check_images: bool = True
    skip_bad_images: bool = False
    workers: Optional[int] = None  # processes of the image decode (None: all CPUs)
    # category id -> description, replacing the category name (see ``resolve_desc_map``).
    desc_map: Optional[Mapping[Any, str]] = None
    # object order policy (codec.ORDER_POLICIES); None: the COORD_ORDER setting, else y1x1.
    order: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.max_objects, bool) or not isinstance(self.max_objects, int) or self.max_objects < 0:
            raise ValueError(f"max_objects must be an integer >= 0 (0: no cap), got {self.max_objects!r}")
        if self.cap_policy not in CAP_POLICIES:
            raise ValueError(f"cap_policy must be one of {CAP_POLICIES}, got {self.cap_policy!r}")
        if self.order is not None:
            order_policy(self.order)  # validated here; None is resolved from COORD_ORDER when converting

    @property
    def order_policy(self) -> OrderPolicy:
        return order_policy(self.order)


@dataclass
class Summary:
    """Counts of one conversion. Invariants (checked by the tests)::

        annotations == objects_kept + sum(dropped_objects.values())
        images == images_written + sum(dropped_images.values())
    """

    source: str = ""
    images_dir: str = ""
    output: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    images: int = 0
    annotations: int = 0
    images_written: int = 0
    empty_images_written: int = 0
    objects_kept: int = 0
    # kept objects with a side narrower than a bin, written as they are and widened to one bin when trained
    # (codec.target_bins)
    narrow_objects: int = 0
    dropped_objects: Dict[str, int] = field(
        default_factory=lambda: {"crowd": 0, "degenerate": 0, "over_cap": 0, "missing_file": 0, "bad_image": 0})
    dropped_images: Dict[str, int] = field(default_factory=lambda: {"missing_file": 0, "bad_image": 0, "empty": 0})
    # non-crowd annotations with a true "ignore" field: trained (and scored) as ordinary objects
    ignore_flagged: int = 0
    # files checked by the image check: decoded now / taken from the decode cache
    image_check: Dict[str, Any] = field(default_factory=dict)
    seconds: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Conversion:
    """The converted samples (as JSONL lines, in the order of the JSON's ``images``) and their summary."""

    lines: List[str]
    summary: Summary


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


# ----------------------------------------------------------------------------- conversion
def _short(record: Any, limit: int = 160) -> str:
    if isinstance(record, dict) and "segmentation" in record:
        record = {k: ("..." if k == "segmentation" else v) for k, v in record.items()}
    text = repr(record)
    return text if len(text) <= limit else text[:limit] + "...}"


def _image_record(i: int, im: Any, source: str):
    """``(id, file_name, width, height)`` of ``images[i]``, or an error naming it. Without ``file_name``
    the name is ``<split folder>/<file>`` of ``coco_url`` (LVIS files; see ``image_path``)."""
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


def _annotation_error(i: int, ann: Any, images: Mapping[Any, Any], descs: Mapping[Any, str],
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


def box_area_px(bbox, width: float, height: float) -> float:
    """Area in pixels of a normalised box, rounded to 1e-4 px^2.

    COCO coordinates have two decimals, so true areas are multiples of 1e-4 px^2; the rounding
    removes the floating-point noise of normalising, so that equal areas compare equal.
    """
    x1, y1, x2, y2 = bbox
    return round((x2 - x1) * width * (y2 - y1) * height, 4)


def cap_objects(objects: List[DetObject], max_objects: int, policy: str, width: float = 1.0,
                height: float = 1.0, order: Optional[OrderPolicy] = None) -> List[DetObject]:
    """Apply the cap to objects given in annotation order; returns them in the ``order`` policy's order
    (default ``y1x1``).

    ``area``: the ``max_objects`` largest boxes (``box_area_px`` with the image's ``width`` and
    ``height``; equal areas: the earlier annotation wins), then ordered. ``scan``: all ordered, then
    the first ``max_objects``. ``max_objects == 0``: no cap.
    """
    if max_objects == 0 or len(objects) <= max_objects:
        return order_objects(objects, order)
    if policy == "scan":
        return order_objects(objects, order)[:max_objects]
    if policy != "area":
        raise ValueError(f"cap_policy must be one of {CAP_POLICIES}, got {policy!r}")
    areas = [box_area_px(o.bbox, width, height) for o in objects]
    largest = sorted(range(len(objects)), key=lambda i: -areas[i])[:max_objects]  # stable: ties by index
    largest.sort()  # back to annotation order, so that order ties still keep it
    return order_objects([objects[i] for i in largest], order)


def convert_instances(instances: Mapping[str, Any], images_dir: str, options: ConvertOptions = ConvertOptions(),
                      source: str = "<instances>", progress: Optional[Callable[[int], None]] = None) -> Conversion:
    """Apply the rules to loaded instances (see ``read_instances``).

    ``progress(n)`` is called as images are done, with the number done since the last call.
    Raises ``CocoFormatError`` naming the record for unknown images or categories, malformed
    records, and (without ``options.skip_missing``) missing image files.
    """
    t0 = time.perf_counter()
    images_dir_abs = os.path.abspath(images_dir)
    descs = category_descs(instances["categories"], options.desc_map, source)
    _check_distinct(instances, descs, source, options)
    options_record = {k: v for k, v in asdict(options).items() if k != "desc_map"}
    options_record["desc_map"] = {str(k): v for k, v in options.desc_map.items()} if options.desc_map else None
    options_record["order"] = options.order_policy.name
    summary = Summary(source=source, images_dir=images_dir_abs, options=options_record)
    images = instances["images"]
    annotations = instances["annotations"]
    summary.images, summary.annotations = len(images), len(annotations)

    # Images: id -> [path, width, height, annotations]; the file check happens here, before any work.
    records: Dict[Any, list] = {}
    missing: List[str] = []
    join, abspath, exists = os.path.join, os.path.abspath, os.path.exists
    for i, im in enumerate(images):
        iid, name, w, h = _image_record(i, im, source)
        if iid in records:
            raise CocoFormatError(f"{source}: images[{i}]: duplicate image id {iid!r}")
        path = abspath(join(images_dir_abs, name))
        present = exists(path)
        if not present and "file_name" not in im:  # coco_url: <split>/<file>, or <file> in the split folder
            name = name.rsplit("/", 1)[-1]
            path = abspath(join(images_dir_abs, name))
            present = exists(path)
        if not present:
            missing.append(name)
        records[iid] = [path if present else None, w, h, []]
    if missing and not options.skip_missing:
        listed = ", ".join(missing[:MAX_LISTED]) + (f", ... ({len(missing) - MAX_LISTED} more)"
                                                     if len(missing) > MAX_LISTED else "")
        raise CocoFormatError(f"{len(missing)} image file(s) of {source} not found under {images_dir_abs}: "
                              f"{listed} (skip_missing / --skip-missing drops and counts them)")
    bad_images = 0
    if options.check_images:
        bad_images = _check_images(records, images, options, source, summary)

    # Annotations: group by image; crowd ones are counted and left out. The fast path assumes a
    # well-formed record; any exception is turned into a precise error by _annotation_error.
    crowd = ignore_flagged = 0
    isfinite = math.isfinite
    for i, ann in enumerate(annotations):
        try:
            rec = records[ann["image_id"]]
            cid = ann["category_id"]
            if cid not in descs:
                raise KeyError(cid)
            flag = ann.get("iscrowd", 0)
            if flag:
                if flag != 1:
                    raise ValueError(flag)
                crowd += 1
                continue
            if flag is not None and flag != 0:
                raise ValueError(flag)
            if ann.get("ignore"):
                ignore_flagged += 1
            x, y, w, h = ann["bbox"]
            if not isfinite(x + y + w + h):  # also rejects strings (TypeError)
                raise ValueError(ann["bbox"])
            rec[3].append((cid, x, y, x + w, y + h))
        except Exception:
            raise _annotation_error(i, ann, records, descs, source) from None

    # Per image: normalise, drop degenerate boxes, cap, order, serialise.
    degenerate = over_cap = lost_to_missing = lost_to_bad = written_empty = kept = dropped_empty = narrow = 0
    max_objects, policy, drop_empty = options.max_objects, options.cap_policy, options.drop_empty
    order = options.order_policy
    lines: List[str] = []
    dumps = json.dumps
    pending = 0
    for iid, (path, width, height, anns) in records.items():
        pending += 1
        if progress is not None and pending >= PROGRESS_EVERY:
            progress(pending)
            pending = 0
        if path is None:
            lost_to_missing += len(anns)
            continue
        if path is False:  # a bad image, dropped with skip_bad_images
            lost_to_bad += len(anns)
            continue
        objects = []
        for cid, x1, y1, x2, y2 in anns:
            # Finite pixels (checked above), clipped by normalize_box, positive extent (checked here):
            # every kept box satisfies codec.bbox_problem by construction, so it is not re-checked per box.
            box = normalize_box((x1, y1, x2, y2), width, height)
            if not (box[2] > box[0] and box[3] > box[1]):
                degenerate += 1
                continue
            objects.append(DetObject(descs[cid], box))
        n = len(objects)
        if max_objects and n > max_objects:
            over_cap += n - max_objects
        objects = cap_objects(objects, max_objects, policy, width, height, order)
        if not objects:
            if drop_empty:
                dropped_empty += 1
                continue
            written_empty += 1
        kept += len(objects)
        narrow += sum(1 for o in objects if is_narrow(o.bbox))
        lines.append(dumps({"image": path, "image_id": iid, "width": width, "height": height,
                            "objects": [{"desc": o.desc, "bbox": list(o.bbox)} for o in objects]}))
    if progress is not None and pending:
        progress(pending)

    summary.images_written = len(lines)
    summary.empty_images_written = written_empty
    summary.ignore_flagged = ignore_flagged
    summary.objects_kept = kept
    summary.narrow_objects = narrow
    summary.dropped_objects.update(crowd=crowd, degenerate=degenerate, over_cap=over_cap,
                                   missing_file=lost_to_missing, bad_image=lost_to_bad)
    summary.dropped_images.update(missing_file=len(missing), bad_image=bad_images, empty=dropped_empty)
    summary.seconds["convert"] = round(time.perf_counter() - t0, 3)
    return Conversion(lines, summary)


def _check_distinct(instances: Mapping[str, Any], descs: Mapping[Any, str], source: str,
                    options: ConvertOptions) -> None:
    """Refuse two annotated categories with one description (``descriptions.distinct_descriptions``)."""
    annotated = set()
    for a in instances["annotations"]:
        try:
            annotated.add(a["category_id"])
        except (TypeError, KeyError):
            pass  # reported with its record by the annotation pass
    names = {c.get("id"): c.get("name") for c in instances["categories"] if isinstance(c, dict)}
    try:
        distinct_descriptions(descs, annotated, names,
                              "description (after --desc-map)" if options.desc_map else "name")
    except AmbiguousCategoriesError as e:
        raise CocoFormatError(f"{source}: {e}") from None


def _check_images(records: Dict[Any, list], images: List[Any], options: ConvertOptions, source: str,
                  summary: Summary) -> int:
    """Check every present image file (``core.images.check_files``); a bad one is an error naming
    ``images[i] (id=...)``, or with ``skip_bad_images`` its record's path becomes ``False`` (dropped).
    Returns the number of bad images."""
    from ..core import images as image_rules

    t0 = time.perf_counter()
    cache = image_rules.DecodeCache()
    items = [(rec[0], rec[1], rec[2]) for rec in records.values() if rec[0] is not None]
    unique = set(p for p, _, _ in items)
    problems = image_rules.check_files(items, cache, options.workers)
    bad = []
    for i, im in enumerate(images):
        rec = records[im["id"]]
        if rec[0] is None:
            continue
        p = problems.get(rec[0])
        if p is not None:
            bad.append(f"images[{i}] (id={im['id']!r}) {rec[0]}: {p}")
            rec[0] = False
    summary.image_check = {"files": len(unique), "decoded": cache.added, "from_cache": cache.hits,
                           "cache": cache.path, "seconds": round(time.perf_counter() - t0, 3)}
    if bad and not options.skip_bad_images:
        listed = "\n  ".join(bad[:MAX_LISTED]) + (f"\n  ... ({len(bad) - MAX_LISTED} more)"
                                                   if len(bad) > MAX_LISTED else "")
        raise CocoFormatError(f"{len(bad)} image(s) of {source} the model cannot be given as annotated:\n  {listed}\n"
                              "(fields width/height are the stored pixel size; --skip-bad-images drops and "
                              "counts them)")
    return len(bad)


# ----------------------------------------------------------------------------- writing
def summary_path_for(out_path: str) -> str:
    """``train.jsonl`` -> ``train.summary.json`` (next to the output)."""
    root, _ = os.path.splitext(out_path)
    return root + ".summary.json"


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_conversion(conversion: Conversion, out_path: str) -> str:
    """Write the JSONL (one join, replaced atomically) and the summary next to it; returns its path."""
    t0 = time.perf_counter()
    out_path = os.path.abspath(out_path)
    parent = os.path.dirname(out_path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    lines = conversion.lines
    _write_atomic(out_path, "\n".join(lines) + "\n" if lines else "")
    summary = conversion.summary
    summary.output = out_path
    summary.seconds["write"] = round(time.perf_counter() - t0, 3)
    path = summary_path_for(out_path)
    _write_atomic(path, json.dumps(summary.to_dict(), indent=2) + "\n")
    return path


def prepare_coco(ann_path: str, images_dir: str, out_path: str, options: ConvertOptions = ConvertOptions(),
                 progress_factory: Optional[Callable[[int], Callable[[int], None]]] = None,
                 skip_polygons: bool = True) -> Summary:
    """Read, convert and write. ``progress_factory(total_images)`` returns a ``progress(n)`` callback."""
    t0 = time.perf_counter()
    instances = read_instances(ann_path, skip_polygons=skip_polygons)
    read_s = time.perf_counter() - t0
    progress = progress_factory(len(instances["images"])) if progress_factory else None
    conversion = convert_instances(instances, images_dir, options, source=ann_path, progress=progress)
    del instances
    conversion.summary.source = os.path.abspath(ann_path)
    write_conversion(conversion, out_path)
    summary = conversion.summary
    summary.seconds = {"read": round(read_s, 3), **summary.seconds,
                       "total": round(time.perf_counter() - t0, 3)}
    # The summary file was written before the total was known: rewrite it with the final timings.
    _write_atomic(summary_path_for(summary.output), json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def format_summary(summary: Summary) -> str:
    """The closing summary printed by the command line."""
    d = summary
    drops_o = ", ".join(f"{k} {v}" for k, v in d.dropped_objects.items())
    drops_i = ", ".join(f"{k} {v}" for k, v in d.dropped_images.items())
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in d.seconds.items())
    return "\n".join([
        f"images:  {d.images} in the JSON, {d.images_written} written "
        f"({d.empty_images_written} with no object); dropped: {drops_i}",
        f"objects: {d.annotations} annotations, {d.objects_kept} kept; dropped: {drops_o}; "
        f"narrower than a bin (widened to one bin in training): {d.narrow_objects}"
        + (f"; {d.ignore_flagged} with \"ignore\": 1 kept as objects (see the data docs)" if d.ignore_flagged else ""),
        f"output:  {d.output}  (summary: {summary_path_for(d.output) if d.output else '-'})",
        (f"checks:  {d.image_check['files']} image files, {d.image_check['decoded']} decoded, "
         f"{d.image_check['from_cache']} from the decode cache ({d.image_check['seconds']:.1f}s)"
         if d.image_check else "checks:  images not checked (--no-image-check)"),
        f"time:    {secs}",
    ])
