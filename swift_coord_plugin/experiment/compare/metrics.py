"""The detection-metrics section (no ms-swift import): per group mean ± std over seeds, the differences between
groups with two-level bootstrap intervals, untrained references, and one row per compared evaluation.

``group_metrics`` computes what the section shows (``GroupMetrics``); ``metrics_section`` returns the ``Section``;
``evaluation_table`` (one row per evaluation and group) and ``load_references`` (untrained predictors' reports).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .. import figures
from .checks import dotted
from .loading import Run
from .render import Section
from .sections import Comparison
from .selection import selection_text
from .stats import bootstrap_groups, fmt, fmt_ci, fmt_pm, mean_std

DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


@dataclass
class GroupMetrics:
    """The numbers of the metrics section: per group and metric the mean and std over seeds, the primary
    evaluation's bootstrap (None when not computed) and the ``evaluation_table`` entries (empty without reports)."""

    mean: Dict[str, Dict[str, Optional[float]]]
    std: Dict[str, Dict[str, Optional[float]]]
    boot: Optional[dict]
    eval_rows: List[dict]


def group_metrics(c: Comparison, n_resamples: int, seed: int) -> GroupMetrics:
    """Mean ± std of every detection metric per group, the bootstrap of the primary evaluation (``n_resamples`` > 0)
    and one table entry per evaluation and group (with its own bootstrap when there are several evaluations)."""
    runs, groups, notes = c.runs, c.groups, c.notes
    metric_mean: Dict[str, Dict[str, Optional[float]]] = {}
    metric_std: Dict[str, Dict[str, Optional[float]]] = {}
    for g, rs in c.by_group.items():
        metric_mean[g], metric_std[g] = {}, {}
        for m in DETECTION_METRICS:
            mean, std, _ = mean_std([((r.report or {}).get("metrics") or {}).get(m) for r in rs])
            metric_mean[g][m], metric_std[g][m] = mean, std
    boot = (bootstrap_groups(runs, groups, n_resamples, seed, notes)
            if n_resamples > 0 and any(r.report for r in runs) else None)
    if not any(r.report for r in runs):
        eval_rows = []
    else:
        eval_rows = evaluation_table(c.views, groups, c.row_issues, c.selection,
                                     n_resamples if len(c.rows_evals) > 1 else 0, seed, notes, {c.primary: boot})
    return GroupMetrics(metric_mean, metric_std, boot, eval_rows)


def evaluation_table(views: Dict[str, List[Run]], groups: Sequence[str], row_issues: Dict[str, List[str]],
                     selection: dict, n_resamples: int, seed: int, notes: List[str],
                     boots: Dict[str, Optional[dict]]) -> List[dict]:
    """One entry per evaluation and group: the table cells, the metrics (mean, std over seeds) and the
    evaluation's bootstrap (``boots`` given, else computed when ``n_resamples`` > 0)."""
    out = []
    for e, view in views.items():
        boot = boots[e] if e in boots else (bootstrap_groups(view, groups, n_resamples, seed, notes)
                                            if n_resamples > 0 and any(r.report for r in view) else None)
        chosen = "as found" if not selection["on"] else f"best AP in `{selection['on']}`" + (
            ": TEST-SET SELECTION" if (selection["rows"].get(e) or {}).get("test_set_selection") else "")
        for g in groups:
            rs = [r for r in view if r.group == g]
            ms = {m: mean_std([((r.report or {}).get("metrics") or {}).get(m) for r in rs]) for m in DETECTION_METRICS}
            ci = ((boot or {}).get("groups") or {}).get(g, {}).get("AP", {}).get("ci")
            out.append({"evaluation": e, "group": g, "bootstrap": boot,
                        "metrics": {m: {"mean": v[0], "std": v[1]} for m, v in ms.items()},
                        "cells": [e, g, str(sum(1 for r in rs if r.report))]
                        + [fmt_pm(ms[m][0], ms[m][1]) for m in ("AP", "AP50", "AP75")]
                        + [fmt_ci(ci), chosen, "yes" if not row_issues[e] else "NO"]})
    return out


def load_references(references: Sequence[Tuple[str, str]], reports: Sequence[dict]) -> List[dict]:
    """Untrained predictors' reports: per ``(label, report.json)`` its metrics and ``same_images``, whether it was
    scored on the GT file and images of every one of ``reports`` (the runs'). Raises FileNotFoundError naming a
    missing report."""
    out = []
    for label, path in references:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"reference {label!r}: no report at {path}")
        with open(path) as f:
            rep = json.load(f)
        same = all(dotted(rep.get("settings"), k) == dotted(o.get("settings"), k)
                   for o in reports for k in ("gt_sha256", "image_set.sha256"))
        out.append({"label": label, "report": path, "same_images": same,
                    "metrics": {m: (rep.get("metrics") or {}).get(m) for m in DETECTION_METRICS}})
    return out


def metrics_section(c: Comparison, gm: GroupMetrics, refs: Sequence[dict]) -> Section:
    """2. Detection metrics per group, the untrained references, the differences between groups with their
    bootstrap intervals, every evaluation's row, and the bar chart."""
    runs, groups, rows_evals, primary, selection = c.runs, c.groups, c.rows_evals, c.primary, c.selection
    by_group, metric_mean, metric_std, boot, eval_rows = c.by_group, gm.mean, gm.std, gm.boot, gm.eval_rows
    sec = Section("Detection metrics")
    if boot:
        sec.text(boot["headline"])
    if any(r.report for r in runs):
        sec.text(selection_text(selection, primary, runs))
        sec.text("COCO bbox metrics (pycocotools) of the scored checkpoint; mean ± std over the runs (seeds) "
                 "of a group. AR100 is the recall at the evaluation's max detections." +
                 (f" Evaluation `{primary}`; every evaluation is a row of the table that follows."
                  if len(rows_evals) > 1 else ""))
        sec.table(["group", "n"] + list(DETECTION_METRICS),
                  [[g, str(sum(1 for r in by_group[g] if r.report))]
                   + [fmt_pm(metric_mean[g][m], metric_std[g][m]) for m in DETECTION_METRICS] for g in groups])
        if refs:
            sec.text("Not trained, on the same images (a task is a task when these stay far below the groups):")
            sec.table(["reference", "same GT and images"] + list(DETECTION_METRICS),
                      [[x["label"], "yes" if x["same_images"] else "**NO**"]
                       + [fmt(x["metrics"][m]) for m in DETECTION_METRICS] for x in refs])
        if boot:
            b = boot["groups"]
            sec.text(f"Differences to the baseline group **{boot['baseline']}** (then between the other groups), "
                     f"with 95% two-level bootstrap intervals ({boot['n_resamples']} replicates: each group's runs "
                     f"drawn with replacement, then the {boot['n_images']} evaluated images, the same images for "
                     "every group; method in docs/comparison.md). A difference is larger than the noise the "
                     "interval covers when its interval excludes 0.")
            pairs = [(g, boot["baseline"], b[g]["diff"]) for g in groups if g in b and g != boot["baseline"]]
            pairs += [(g, o, d) for g in groups if g in b for o, d in b[g].get("vs", {}).items()]
            rows, rows_images = [], []
            for g, o, diff in pairs:
                row, row_images, verdict = [f"{g} − {o}"], [f"{g} − {o}"], []
                for m in ("AP", "AP50", "AP75"):
                    d = diff[m]
                    row += [f"{d['value']:+.4f}", fmt_ci(d["ci"])]
                    row_images += [fmt_ci(d["ci_images"])]
                    verdict.append(f"{m}: {'yes' if d['excludes_zero'] else 'no'}")
                rows.append(row + [diff["covers"], "; ".join(verdict)])
                rows_images.append(row_images + ["; ".join(f"{m}: {'yes' if diff[m]['excludes_zero_images'] else 'no'}"
                                                           for m in ("AP", "AP50", "AP75"))])
            if rows:
                sec.table(["difference", "ΔAP", "95% CI", "ΔAP50", "95% CI", "ΔAP75", "95% CI", "interval covers",
                           "larger than the noise?"], rows)
            if rows and boot["covers"] != "images only":
                sec.text("The same differences with intervals over image sampling only (every run once): what an "
                         "analysis that ignores the seeds would claim.")
                sec.table(["difference", "AP 95% CI (images)", "AP50 95% CI (images)", "AP75 95% CI (images)",
                           "excludes 0?"], rows_images)
            sec.text("Each group's own value (mean over its runs) with its 95% interval" +
                     ("; with 2 runs the seed level has 1 degree of freedom, so a group's interval is wide where "
                      "its runs disagree." if boot["covers"] != "images only" else "."))
            sec.table(["group", "runs", "AP", "AP 95% CI", "AP50", "AP50 95% CI", "AP75", "AP75 95% CI"],
                      [[g, str(b[g]["n_seeds"]), fmt(b[g]["AP"]["value"]), fmt_ci(b[g]["AP"]["ci"]),
                        fmt(b[g]["AP50"]["value"]), fmt_ci(b[g]["AP50"]["ci"]), fmt(b[g]["AP75"]["value"]),
                        fmt_ci(b[g]["AP75"]["ci"])] for g in groups if g in b])
        if len(rows_evals) > 1:
            sec.text("Every evaluation of the runs, one row per evaluation and group (mean ± std over seeds; the AP "
                     "interval is the two-level bootstrap (seeds, then images) of that evaluation; comparability within the "
                     "evaluation).")
            sec.table(["evaluation", "group", "n", "AP", "AP50", "AP75", "AP 95% CI", "checkpoint", "comparable"],
                      [row["cells"] for row in eval_rows])
            for e in rows_evals[1:]:
                sec.text(f"- `{e}`: " + selection_text(selection, e, c.views[e]))
        png = os.path.join(c.out_dir, "detection_metrics.png")
        drawn = figures.plot_metric_bars(groups, c.colors, DETECTION_METRICS, metric_mean, metric_std, png,
                                         "detection metrics (pycocotools), mean ± std over seeds", "COCO metric")
        sec.figure(drawn, png, "detection_metrics", "detection metrics", c.plots)
    else:
        sec.text("No run has an evaluation (report.json): run shell/eval.sh first.")
    return sec
