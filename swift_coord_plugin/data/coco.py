"""COCO instances JSON -> the plugin's unified detection samples, one JSON object per line
(``coord-prepare-coco``).

Public API: ``ConvertOptions``, ``convert_instances`` (loaded instances -> ``Conversion``: lines and
``Summary``), ``cap_objects``, ``write_conversion``, ``prepare_coco`` (read, convert, write),
``format_summary``, ``summary_path_for``. The file is read by ``data.coco_reader`` (``read_instances``,
``CocoFormatError``, ``category_descs`` are importable from here too), images are checked by
``data.images``. The rules, the output and the summary: docs/data.md.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

from ..core.codec import DetObject, OrderPolicy, is_narrow, normalize_box, order_objects, order_policy
from . import images as image_rules
from .coco_reader import CocoFormatError, annotation_error, category_descs, image_record, read_instances
from .descriptions import AmbiguousCategoriesError, distinct_descriptions

CAP_POLICIES = ("area", "scan")
DEFAULT_MAX_OBJECTS = 30
# How many problems one error message lists before it only counts the rest.
MAX_LISTED = 10
# How many images pass between two progress callbacks.
PROGRESS_EVERY = 2048


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
    # object order policy (codec.ORDER_POLICIES); None: y1x1 (coord-prepare-coco passes the COORD_ORDER setting).
    order: Optional[str] = None

    def __post_init__(self):
        if isinstance(self.max_objects, bool) or not isinstance(self.max_objects, int) or self.max_objects < 0:
            raise ValueError(f"max_objects must be an integer >= 0 (0: no cap), got {self.max_objects!r}")
        if self.cap_policy not in CAP_POLICIES:
            raise ValueError(f"cap_policy must be one of {CAP_POLICIES}, got {self.cap_policy!r}")
        if self.order is not None:
            order_policy(self.order)  # validated here

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
        iid, name, w, h = image_record(i, im, source)
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
    # well-formed record; any exception is turned into a precise error by annotation_error.
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
            raise annotation_error(i, ann, records, descs, source) from None

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
    """Check every present image file (``data.images.check_files``); a bad one is an error naming
    ``images[i] (id=...)``, or with ``skip_bad_images`` its record's path becomes ``False`` (dropped).
    Returns the number of bad images."""
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
