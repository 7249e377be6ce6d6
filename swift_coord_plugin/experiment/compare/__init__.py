"""Compare ablation runs so that the comparison answers the question (no ms-swift import).

Public: ``compare_runs`` (report.py) and the names below (loading, checks, sections, rendering). Design notes:
``docs/design/experiment_compare_package.md``.
"""
from __future__ import annotations

from .checks import (ENV_SEED_KEYS, EVAL_SETTINGS, EXPECTED_DIFFERENCES, LOSS_ENV_PREFIX, SEED_KEYS, UNKNOWN,
                     assign_groups, comparability, not_recorded, run_seeds, seed_label)
from .loading import (DEFAULT_EVAL, Evaluation, Run, common_curve, curve, evaluation_dir, evaluation_names,
                      find_report, load_evaluation, load_run, use_evaluation)
from .metrics import DETECTION_METRICS, load_references
from .pictures import GALLERY_IMAGES
from .render import Section, format_summary, render_html, render_markdown
from .report import BOOTSTRAP_RESAMPLES, compare_runs
from .sections import LOSS_CURVES, data_section
from .selection import checkpoint_selection, evaluation_rows, evaluation_view, select_checkpoint, selection_overlap
from .stats import DEFAULT_FRACTION, bootstrap_groups, convergence, steps_to_level

__all__ = [
    "BOOTSTRAP_RESAMPLES", "DEFAULT_EVAL", "DEFAULT_FRACTION", "DETECTION_METRICS", "ENV_SEED_KEYS", "EVAL_SETTINGS",
    "EXPECTED_DIFFERENCES", "GALLERY_IMAGES", "LOSS_CURVES", "LOSS_ENV_PREFIX", "SEED_KEYS", "UNKNOWN",
    "Evaluation", "Run", "Section",
    "assign_groups", "bootstrap_groups", "checkpoint_selection", "common_curve", "comparability", "compare_runs",
    "convergence", "curve", "data_section", "evaluation_dir", "evaluation_names", "evaluation_rows",
    "evaluation_view", "find_report", "format_summary", "load_evaluation", "load_references", "load_run",
    "not_recorded", "render_html", "render_markdown", "run_seeds", "seed_label", "select_checkpoint",
    "selection_overlap", "steps_to_level", "use_evaluation",
]
