"""Compare ablation runs so that the comparison answers the question (no ms-swift import).

A run is an ms-swift output directory (``--add_version false`` or the ``v<N>-<time>`` folder) holding
``logging.jsonl``, ``args.json``, the plugin's ``coordexp_config.json`` and ``coord_env.json`` and, when
scored, one or more evaluations (``shell/eval.sh``, ``coord-eval``): the evaluation named ``default`` in
``eval/`` itself (``eval/report.json`` and, with ``CKPT=all``, ``eval/checkpoint-N/report.json``) and named
ones in ``eval/NAME/`` (``EVAL_NAME=NAME``, the same layout inside). Each evaluation is a row of the metrics
table (``--eval NAME`` compares one); the comparability check applies within each evaluation. With
``select_on`` the checkpoint of each run is the one with the highest AP in that evaluation, and the others
are read at that checkpoint; the summary says which evaluation (which images) chose it and flags a choice
made on the scored images themselves.

What ``compare_runs`` writes, in the order a reader needs it (``summary.md``, ``index.html``,
``summary.json`` and PNGs):

1. **Comparability**: every setting that changes the numbers, compared across runs: ``args.json`` outside
   the loss flags, the environment-only settings (``coord_env.json``, ``COORD_*``), and per evaluation
   the box decode rule, the decoding mode and backend, the score, max detections, the GT file (SHA-256),
   the evaluated images, the checkpoint step and the inference resolution (also against the training
   resolution). A setting that was not recorded is ``unknown``, which differs from any known value.
2. **Detection metrics** per group (mean ± std over seeds) and the **differences between groups** with
   two-level bootstrap intervals (the runs of each group, then the images, paired: ``eval.bootstrap``), under
   a headline saying what the intervals cover (image sampling only when every group has one run).
3. **AP along training** (every scored checkpoint).
4. **Common yardsticks** (``core.yardsticks``: teacher-forced IoU of the argmax and CoordExp boxes,
   coordinate accuracy and bin error), and **convergence** on them: the first step at which a run reaches
   ``fraction`` of the best value any run reached (for an error, ``best / fraction``), with each run's level.
5. **Why answers failed**: parser counts by reason, unmatched descriptions, coordinate mass.
6. Pictures: per-category AP, IoU histograms, a seeded gallery of evaluation images (GT | each group).
7. The groups' **own losses, last**, labelled as not comparable across groups (each optimises another
   objective).

Runs with the same display name (``--names``) are seeds of one group; without names, runs with the same
loss type and loss flags form a group. A run's seeds are ``seed`` and ``data_seed`` (args.json) and
``COORD_INIT_SEED`` (coord_env.json): they may differ within a group, and each group must have the same set.

The package: ``loading`` (runs and evaluations), ``selection`` (evaluations compared, checkpoint selection),
``checks`` (groups, seeds, comparability), ``stats`` (convergence, bootstrap, number formats), ``sections``,
``metrics`` and ``pictures`` (one function per section of the summary), ``render`` (markdown and HTML) and
``report`` (``compare_runs``). Everything public is importable from here.
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
