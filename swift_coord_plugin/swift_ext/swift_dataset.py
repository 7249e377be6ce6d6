"""The ms-swift classes of the dataset ``coord`` and its registration (imports ms-swift; imported only by
``register.register``, which ms-swift's plugin import calls).

Public: ``CoordSamplePreprocessor``, ``CoordSampleLoader``, ``register``. Design notes:
``docs/design/swift_ext_dataset.md``.
"""
from __future__ import annotations

import collections
import hashlib
import os
from typing import Any, Dict, Optional

from datasets import Dataset as HfDataset
from swift.dataset import DATASET_MAPPING, DatasetMeta, RowPreprocessor, register_dataset
from swift.dataset.loader import DatasetLoader
from swift.utils import get_logger

from ..core import codec
from ..core import images as image_rules
from ..core import samples as sample_rules
from ..data import images as image_files
from ..data import textfiles
from ..environment import bad_samples_policy, order_policy_setting
from . import dataset as dataset_rules
from .dataset import MAX_LISTED, META_COLUMNS, BadSamplesError, resolve_data_path
from .dataset_args import file_kind
from .rows import BINS_TYPE, DATASET_NAME, coco_json_message, unescape_path


def _code_version() -> str:
    """Part of ms-swift's map-cache file name: a changed rule must never reuse rows cached by older code."""
    h = hashlib.sha1()
    for path in (__file__, dataset_rules.__file__, codec.__file__, sample_rules.__file__, image_rules.__file__,
                 image_files.__file__):
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:10]


class CoordSamplePreprocessor(RowPreprocessor):
    """Unified sample -> ms-swift grounding row (see the module docstring)."""

    _cache_version = f"{RowPreprocessor.cache_format_version}-coord-{_code_version()}"

    @property
    def cache_format_version(self) -> str:
        # The rows depend on the order policy, which the run's settings give (read at map time).
        return f"{self._cache_version}-{order_policy_setting().name}"

    def __init__(self):
        super().__init__()
        self.source = "<dataset>"
        self.base_dir: Optional[str] = None
        self.last_report: Dict[str, Any] = {}
        self.order: Optional[codec.OrderPolicy] = None

    def _image_path(self, image: str) -> str:
        if self.base_dir and not os.path.isabs(image):
            return os.path.normpath(os.path.join(self.base_dir, image))
        return image

    def validate(self, dataset):
        """Indices of the valid rows; raises or counts according to ``COORD_BAD_SAMPLES``.

        Cheap checks on every row (``data.images.sample_problem``: shape, boxes, descriptions, the image header
        against the declared size and the processor's limits), then a full decode of every image still
        kept, read from the decode cache where it holds the file (``data.images.decode_problems``)."""
        policy = bad_samples_policy()
        features = set(dataset.features)
        if "image" not in features and "objects" not in features and features & {"annotations", "categories"}:
            raise BadSamplesError(coco_json_message(self.source))
        col_image = "image" if "image" in features else "images"
        n = len(dataset)
        images = dataset[col_image] if col_image in features else [None] * n
        objects = dataset["objects"] if "objects" in features else [None] * n
        widths = dataset["width"] if "width" in features else [None] * n
        heights = dataset["height"] if "height" in features else [None] * n
        keep, problems, counts = [], [], collections.Counter()
        narrow: Dict[int, int] = {}  # row -> boxes with a side narrower than a bin (widened by the codec)
        for i, (image, objs, w, h) in enumerate(zip(images, objects, widths, heights)):
            if isinstance(image, list) and len(image) == 1:
                image = image[0]
            if isinstance(image, dict):
                image = image.get("path")
            if isinstance(image, str):
                image = self._image_path(image)
            problem = image_files.sample_problem({"image": image, "objects": objs, "width": w, "height": h})
            if problem is None:
                keep.append((i, image))
                narrow[i] = sum(1 for o in objs or [] if codec.is_narrow(o["bbox"]))
                continue
            counts[problem[0]] += 1
            problems.append(f"{self.source}:{i + 1}: {problem[1]}")
        decoded = image_files.decode_problems([image for _, image in keep]) if keep else {}
        kept = []
        for i, image in keep:
            problem = decoded.get(image)
            if problem is None:
                kept.append(i)
                continue
            counts[sample_rules.UNREADABLE_IMAGE] += 1
            problems.append(f"{self.source}:{i + 1}: image {image}: {problem}")
        keep = kept
        problems.sort(key=lambda m: int(m[len(self.source) + 1:].split(":", 1)[0]))
        report = {"source": self.source, "rows": n, "kept": len(keep), "dropped": dict(counts),
                  "narrow_boxes_widened": sum(narrow.get(i, 0) for i in keep)}
        self.last_report = report
        if problems and policy == "error":
            listed = "\n  ".join(problems[:MAX_LISTED])
            more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            raise BadSamplesError(
                f"{len(problems)} bad sample(s) in {self.source} (by reason: {dict(counts)}):\n  {listed}{more}\n"
                "Fix them, or set COORD_BAD_SAMPLES=drop to drop and count them.")
        if n and not keep:
            listed = "\n  ".join(problems[:3])
            raise BadSamplesError(
                f"no sample of {self.source} was kept ({n} rows, dropped by reason: {dict(counts)}):\n  {listed}\n"
                "Is it a file of unified samples (one JSON object per line with 'image' and 'objects')? "
                "A COCO instances JSON must be converted first (coord-prepare-coco --ann FILE --images DIR "
                "--out train.jsonl, then --dataset coord:train.jsonl).")
        if not n:
            raise BadSamplesError(f"{self.source} holds no sample")
        return keep, report

    def __call__(self, dataset, **kwargs):
        logger = get_logger()
        self.order = order_policy_setting()
        if isinstance(dataset, HfDataset):
            keep, report = self.validate(dataset)
            if len(keep) != len(dataset):
                dataset = dataset.select(keep)
            msg = (f"[swift-coord] dataset {self.source}: {report['rows']} samples, {report['kept']} kept, "
                   f"dropped by reason: {report['dropped'] or 'none'}; boxes narrower than a bin, widened to "
                   f"one bin: {report['narrow_boxes_widened']}")
            logger.info(msg)
            print(msg, flush=True)
        else:
            logger.info(f"[swift-coord] streaming dataset {self.source}: samples are validated as they are read")
        out = super().__call__(dataset, **kwargs)
        return out

    def preprocess(self, row: Dict[str, Any]) -> Dict[str, Any]:
        image = row.get("image", row.get("images"))
        if isinstance(image, list) and len(image) == 1:
            image = image[0]
        if isinstance(image, dict):
            image = image.get("path")
        image = self._image_path(image) if isinstance(image, str) else image
        objects = row.get("objects") or []
        problem = image_files.sample_problem({"image": image, "objects": objects}, check_readable=False)
        if problem is not None:  # streaming only: tabular datasets were validated before mapping
            raise BadSamplesError(f"{self.source}: {problem[1]}")
        ordered = codec.order_objects((codec.DetObject(o["desc"], tuple(o["bbox"])) for o in objects),
                                      self.order or order_policy_setting())
        out = {
            "messages": [
                {"role": "user", "content": "<image>"},
                {"role": "assistant", "content": "<ref-object><bbox>" * len(objects)},
            ],
            "images": [image],
            "objects": {
                "ref": [codec.clean_desc(o.desc) for o in ordered],
                "bbox": [list(o.bins) for o in ordered],
                "bbox_type": BINS_TYPE,
            },
        }
        meta = {key: row[key] for key in META_COLUMNS if row.get(key) is not None}
        if meta:
            out["chat_template_kwargs"] = {sample_rules.EVAL_META_KEY: meta}
        return out

class CoordSampleLoader(DatasetLoader):
    """Loads ``coord:<path>``: the path after the colon, through the plugin's preprocessor."""

    def load(self, dataset_syntax=None, dataset_meta=None, *, use_hf=None):
        raw = "/".join(dataset_syntax.subsets)  # ms-swift splits subsets on '/'
        path = unescape_path(raw)
        if not path:
            raise ValueError("--dataset coord needs a file: --dataset coord:/path/to/samples.jsonl")
        path = resolve_data_path(path)
        if file_kind(path) == "coco":
            raise BadSamplesError(coco_json_message(path))
        try:  # the pyarrow JSON reader would stop with a message that names neither file nor encoding
            textfiles.check_encoding(path)
        except textfiles.TextEncodingError as e:
            raise BadSamplesError(f"coord:{path}: {e}") from None
        pre = dataset_meta.preprocess_func
        pre.source, pre.base_dir = path, os.path.dirname(path)
        self._coord_source = path
        return self._load_dataset_path(path, dataset_meta=dataset_meta)

    def post_process(self, train_dataset, *, dataset_sample=None, split_dataset_ratio=0., **kwargs):
        # split_dataset_ratio == 1 is how ms-swift loads --val_dataset: '#N' beyond the file's length
        # would stop on an assertion there; take every row instead, and say so.
        if (split_dataset_ratio == 1 and dataset_sample is not None and hasattr(train_dataset, "__len__")
                and dataset_sample > len(train_dataset)):
            msg = (f"[swift-coord] dataset {getattr(self, '_coord_source', '?')}: '#{dataset_sample}' asks "
                   f"{dataset_sample} validation rows, the file has {len(train_dataset)}: "
                   f"using all {len(train_dataset)}")
            print(msg, flush=True)
            dataset_sample = len(train_dataset)
        return DatasetLoader.post_process(train_dataset, dataset_sample=dataset_sample,
                                          split_dataset_ratio=split_dataset_ratio, **kwargs)


def register() -> None:
    """Register the dataset ``coord`` (``--dataset coord:<path>``; a no-op when registered already)."""
    if any(getattr(m, "dataset_name", None) == DATASET_NAME for m in DATASET_MAPPING.values()):
        return
    register_dataset(
        DatasetMeta(ms_dataset_id=DATASET_NAME, dataset_name=DATASET_NAME, preprocess_func=CoordSamplePreprocessor(),
                    loader=CoordSampleLoader, help="unified detection samples: --dataset coord:/path/samples.jsonl"),
        exist_ok=True)
