"""``swift infer`` results -> COCO detections -> pycocotools' COCOeval -> report (no ms-swift import).

``evaluate_results`` does the whole pass and returns an ``Evaluation``; ``write_outputs`` writes
``report.json``, ``report.md`` and ``detections.json`` (COCO results format, re-scorable with
pycocotools as it is). Every count in the report is explained in the project's evaluation docs.

This module is the public import path; the code lives in ``pycoco`` (the pycocotools adapter, and the
low-level names ``quiet``, ``IOU_HIST_EDGES``, ``Evaluation``), ``inputs`` (settings, ground truth,
``--val-data``, ``--desc-map``), ``tally`` (the row pass), ``evaluation`` (``evaluate_results``,
coverage) and ``report`` (report sections, markdown, files).
"""
from __future__ import annotations

from .evaluation import evaluate_results
from .inputs import MAX_LISTED, EvalError, EvalSettings, GtImages, load_eval_desc_map, load_gt, read_val_data
from .pycoco import (IOU_HIST_EDGES, METRIC_NAMES, Evaluation, coco_stats, matched_ious, per_category,
                     per_category_by_id, quiet, run_cocoeval)
from .report import _decoding_settings, describe_repairs, format_markdown, metrics_table, write_outputs

__all__ = [
    "IOU_HIST_EDGES", "MAX_LISTED", "METRIC_NAMES", "EvalError", "EvalSettings", "Evaluation", "GtImages",
    "coco_stats", "describe_repairs", "evaluate_results", "format_markdown", "load_eval_desc_map", "load_gt",
    "matched_ious", "metrics_table", "per_category", "per_category_by_id", "quiet", "read_val_data",
    "run_cocoeval", "write_outputs", "_decoding_settings",
]
