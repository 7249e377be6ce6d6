"""``compare_runs``: load the runs, check them, build the sections in reading order and write ``summary.md``,
``index.html``, ``summary.json`` and the PNGs (no ms-swift import). ``summary_json`` is what ``summary.json`` holds.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import figures
from .checks import EVAL_SETTINGS, assign_groups, comparability, dotted, not_recorded, run_seeds
from .loading import DEFAULT_EVAL, load_run
from .metrics import DETECTION_METRICS, GroupMetrics, group_metrics, load_references, metrics_section
from .pictures import GALLERY_IMAGES, draw_gallery, pictures_section
from .render import Section, render_html, render_markdown
from .sections import (Comparison, ap_along_training_section, comparability_section, data_section,
                       failures_section, notes_section, own_losses_section, yardsticks_section)
from .selection import checkpoint_selection, evaluation_rows, evaluation_view
from .stats import DEFAULT_FRACTION, convergence

BOOTSTRAP_RESAMPLES = 1000


def compare_runs(run_dirs: Sequence[str], out_dir: str, names: Optional[Sequence[str]] = None,
                 fraction: float = DEFAULT_FRACTION, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                 gallery_images: int = GALLERY_IMAGES, eval_name: Optional[str] = None,
                 select_on: Optional[str] = None, references: Sequence[Tuple[str, str]] = (),
                 data_summary: Optional[str] = None) -> Dict[str, Any]:
    """Write the plots, ``summary.md``, ``index.html`` and ``summary.json`` into ``out_dir``; return the summary.

    ``references``: ``(label, report.json)`` of predictors that were not trained (e.g. ``coord-constant-baseline``
    scored by ``coord-eval``), shown beside the groups when scored on the same GT file and images.
    ``data_summary``: a ``coord-make-shapes`` ``summary.json``, shown as the data the study ran on.

    ``eval_name``: the evaluation compared (default: every evaluation, one row each; the detailed sections show
    the first). ``select_on``: choose each run's checkpoint by its AP in that evaluation (``checkpoint_selection``).
    Raises FileNotFoundError/ValueError from ``load_run``, ValueError from ``evaluation_rows`` and
    ``checkpoint_selection``."""
    loaded = [load_run(p, names[i] if names else None) for i, p in enumerate(run_dirs)]
    groups = assign_groups(loaded, bool(names))
    rows_evals = evaluation_rows(loaded, eval_name, select_on) or [DEFAULT_EVAL]
    selection = checkpoint_selection(loaded, select_on, rows_evals)
    steps_chosen = [x["step"] for x in selection["runs"]] or [None] * len(loaded)
    views = {e: [evaluation_view(r, e, st) for r, st in zip(loaded, steps_chosen)] for e in rows_evals}
    os.makedirs(out_dir, exist_ok=True)
    c = Comparison(views, groups, {e: comparability(v) for e, v in views.items()}, selection, out_dir,
                   figures.group_colors(groups))
    unrecorded = not_recorded(c.runs)
    sections: List[Section] = [data_section(data_summary)] if data_summary else []
    refs = load_references(references, [r.report for r in c.runs if r.report])

    gm = group_metrics(c, n_resamples, seed)
    conv = convergence(c.runs, fraction)
    sections += [comparability_section(c, unrecorded), metrics_section(c, gm, refs), ap_along_training_section(c),
                 yardsticks_section(c, conv, fraction), failures_section(c)]
    gallery = draw_gallery(c, gallery_images, seed)
    sections += [pictures_section(c, gallery), own_losses_section(c)]
    sections += [s for s in [notes_section(c.notes)] if s is not None]

    summary = summary_json(c, gm, unrecorded, refs, conv, fraction, gallery)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(render_markdown(sections))
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(render_html(sections))
    summary["sections"] = sections
    return summary


def summary_json(c: Comparison, gm: GroupMetrics, unrecorded: List[str], refs: List[dict], conv: List[dict],
                 fraction: float, gallery: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
    """What ``summary.json`` holds: groups, runs, group metrics, comparability, selection, every evaluation's row,
    bootstrap, convergence, references, plots, gallery and notes."""
    runs, groups, selection, row_issues, issues = c.runs, c.groups, c.selection, c.row_issues, c.issues
    metric_mean, metric_std, boot, eval_rows = gm.mean, gm.std, gm.boot, gm.eval_rows
    return {
        "groups": {g: [r.name for r in rs] for g, rs in c.by_group.items()},
        "runs": [{"name": r.name, "group": r.group, "path": r.path, "loss_type": r.args.get("loss_type"),
                  "seed": r.args.get("seed"), "seeds": run_seeds(r), "loss_config": r.loss_config, "env": r.env,
                  "metrics": {m: ((r.report or {}).get("metrics") or {}).get(m) for m in DETECTION_METRICS},
                  "eval_settings": {k: dotted((r.report or {}).get("settings"), k) for k, _ in EVAL_SETTINGS}
                  if r.report else None,
                  "ap_along_training": [{"step": s, "AP": rep["metrics"].get("AP"), "AP50": rep["metrics"].get("AP50"),
                                         "AP75": rep["metrics"].get("AP75"), "report": d}
                                        for s, d, rep in r.checkpoint_reports],
                  "steps": r.train[-1]["_step"] if r.train else None} for r in runs],
        "group_metrics": {g: {m: {"mean": metric_mean[g][m], "std": metric_std[g][m]} for m in DETECTION_METRICS}
                          for g in groups},
        "comparable": not issues, "comparability_issues": issues, "not_recorded": unrecorded,
        "evaluation": c.primary, "selection": selection,
        "evaluations": {e: {"comparable": not row_issues[e], "comparability_issues": row_issues[e],
                            "group_metrics": {row["group"]: row["metrics"] for row in eval_rows if row["evaluation"] == e},
                            "bootstrap": next((row["bootstrap"] for row in eval_rows if row["evaluation"] == e), None),
                            "checkpoint_chosen_on": selection["on"],
                            "test_set_selection": bool((selection["rows"].get(e) or {}).get("test_set_selection"))}
                        for e in c.rows_evals},
        "bootstrap": boot, "convergence": conv, "references": refs,
        "convergence_definition": (f"first eval step at which a run reaches {fraction:.0%} of the best value any run "
                                   f"reached on a common yardstick (best / {fraction:g} for the bin error)"),
        "plots": c.plots, "gallery": [rel for _, rel in gallery], "notes": c.notes,
    }
