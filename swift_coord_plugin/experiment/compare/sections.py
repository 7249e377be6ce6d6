"""The sections of the summary built from the runs themselves (no ms-swift import).

``Comparison`` holds what every section is built from. ``data_section``, ``comparability_section``,
``ap_along_training_section``, ``yardsticks_section``, ``failures_section``, ``own_losses_section`` and
``notes_section`` each return a ``Section``; the detection metrics are in ``metrics``, the pictures in ``pictures``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ...core.yardsticks import COMMON_CURVES
from .. import figures
from .checks import EVAL_SETTINGS, run_seeds, seed_label
from .loading import Run, common_curve, curve
from .render import Section
from .stats import fmt, fmt_pm, mean_std

# The groups' own objectives: (key in logging.jsonl, title). Not comparable across groups.
LOSS_CURVES = (("loss", "total loss"), ("text_loss", "text CE"), ("coord_ce_loss", "coordinate CE"),
               ("coord_loss", "geometric (alpha*L1 + beta*(1-GIoU))"))


@dataclass
class Comparison:
    """What the sections are built from: per compared evaluation (the first is the primary one, which the detailed
    sections show) the runs read at it (``views``) and its comparability issues (``row_issues``), the groups in
    order (the first is the baseline), the checkpoint selection, the output folder, and the plots and notes
    collected on the way."""

    views: Dict[str, List[Run]]
    groups: List[str]
    row_issues: Dict[str, List[str]]
    selection: dict
    out_dir: str
    colors: Dict[str, str]
    plots: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    @property
    def rows_evals(self) -> List[str]:
        return list(self.views)

    @property
    def primary(self) -> str:
        return self.rows_evals[0]

    @property
    def runs(self) -> List[Run]:
        """The runs read at the primary evaluation."""
        return self.views[self.primary]

    @property
    def issues(self) -> List[str]:
        return self.row_issues[self.primary]

    @property
    def by_group(self) -> Dict[str, List[Run]]:
        return {g: [r for r in self.runs if r.group == g] for g in self.groups}


def data_section(summary_path: str) -> Section:
    """The data a study ran on, from a ``coord-make-shapes`` ``summary.json``: splits, classes, objects per image,
    COCO size buckets, overlaps and how the splits were made."""
    with open(summary_path) as f:
        summary = json.load(f)
    c = summary["config"]
    sec = Section("Data")
    sec.text(f"Synthetic shapes ({summary_path}): {c['image_size']}x{c['image_size']} px, "
             f"{c['min_objects']}-{c['max_objects']} objects per image, sides {c['min_side']:.2f}-{c['max_side']:.2f} "
             f"of the image, classes: {', '.join(c['classes'])}. {summary['how']}.")
    sec.table(["split", "seed", "images", "objects / image", "small", "medium", "large", "images with overlap"],
              [[name, str(st["seed"]), str(st["images"]), f"{st['objects_per_image']:.2f}",
                f"{st['size_share']['small']:.2f}", f"{st['size_share']['medium']:.2f}",
                f"{st['size_share']['large']:.2f}", f"{st['overlapping_image_share']:.2f}"]
               for name, st in summary["splits"].items()])
    return sec


def comparability_section(c: Comparison, unrecorded: Sequence[str]) -> Section:
    """1. What differs between the runs (each compared evaluation on its own), what no run recorded, the groups."""
    runs, issues, rows_evals, primary, row_issues = c.runs, c.issues, c.rows_evals, c.primary, c.row_issues
    sec = Section("Comparability")
    if issues:
        sec.text("**NOT COMPARABLE**: the runs differ in settings that change the numbers:")
        for i in issues:
            sec.text(f"- {i}")
    else:
        sec.text("All runs share every compared setting: args.json outside the loss flags, the environment "
                 "settings (coord_env.json), and for the evaluations " +
                 ", ".join(w for _, w in EVAL_SETTINGS) + ".")
    if len(rows_evals) > 1:
        sec.text(f"The above is evaluation `{primary}` (the sections below show it). Each other evaluation is "
                 "checked on its own:")
        for e in rows_evals[1:]:
            extra = [i for i in row_issues[e] if i not in issues]
            if not row_issues[e]:
                sec.text(f"- evaluation `{e}`: comparable")
            else:
                sec.text(f"- evaluation `{e}`: **NOT COMPARABLE**" + (": " + "; ".join(extra) if extra else
                                                                       " (the differences above)"))
    if unrecorded:
        sec.text("Not recorded by any run (unchecked): " + "; ".join(unrecorded) + ".")
    sec.table(["group", "runs", "seeds (" + "/".join(run_seeds(runs[0])) + ")", "loss_type", "path(s)"],
              [[g, str(len(rs)), ", ".join(seed_label(r) for r in rs),
                str(rs[0].args.get("loss_type") or "cross_entropy"), ", ".join(r.path for r in rs)]
               for g, rs in c.by_group.items()])
    return sec


def ap_along_training_section(c: Comparison) -> Section:
    """3. AP of every scored checkpoint, one line per run."""
    runs, colors, plots = c.runs, c.colors, c.plots
    sec = Section("AP along training")
    steps = sorted({s for r in runs for s, _, _ in r.checkpoint_reports})
    if steps:
        sec.text("Every scored checkpoint (`CKPT=all bash shell/eval.sh`); one line per run.")
        sec.table(["run"] + [f"AP @ {s}" for s in steps],
                  [[r.name] + [fmt(next((rep["metrics"].get("AP") for st, _, rep in r.checkpoint_reports
                                          if st == s), None)) for s in steps] for r in runs])
        series = [(r.name, r.group, colors[r.group],
                   {m: ([s for s, _, _ in r.checkpoint_reports],
                        [max(float(rep["metrics"].get(m, 0.0)), 0.0) for _, _, rep in r.checkpoint_reports])
                    for m in ("AP", "AP50", "AP75")}) for r in runs]
        png = os.path.join(c.out_dir, "ap_vs_step.png")
        drawn = figures.plot_curves(series, [("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75")], png,
                                    "COCO AP of each scored checkpoint", ncols=3)
        sec.figure(drawn, png, "ap_vs_step", "AP, AP50, AP75 against step", plots)
    else:
        sec.text("No checkpoint was scored.")
    return sec


def yardsticks_section(c: Comparison, conv: List[dict], fraction: float) -> Section:
    """4. The common yardsticks' final values per group and the convergence on them (``stats.convergence``)."""
    runs, colors, plots = c.runs, c.colors, c.plots
    sec = Section("Common yardsticks (the same measure for every group)")
    sec.text("Teacher-forced on the eval set at every eval step, whatever the loss: IoU of the argmax box and "
             "of the CoordExp box with the target box (mean, fraction with IoU >= 0.5 / 0.75), coordinate "
             "accuracy and mean bin error (core/yardsticks.py).")
    final_rows = []
    for g, rs in c.by_group.items():
        row = [g]
        for name, _ in COMMON_CURVES:
            mean, std, _ = mean_std([(common_curve(r, name)[1] or [None])[-1] for r in rs])
            row.append(fmt_pm(mean, std, 3))
        final_rows.append(row)
    sec.table(["group (final value)"] + [n for n, _ in COMMON_CURVES], final_rows)
    if conv:
        sec.text(f"Convergence: the first step at which a run reaches {fraction:.0%} of the best value any run "
                 f"reached (for the bin error: best / {fraction:g}); 'never' = not within the run. Next to it "
                 "the best level the run reached.")
        sec.table(["yardstick", "best (run)", "target"] + [f"{r.name}: step (best)" for r in runs],
                  [[cv["curve"], f"{cv['best']:.3f} ({cv['best_run']})",
                    "- (no run above 0)" if cv["target"] is None else f"{cv['target']:.3f}"]
                   + [("-" if cv["target"] is None else fmt(cv["runs"][r.name]["step"])
                       if cv["runs"][r.name]["step"] is not None else "never")
                      + f" ({fmt(cv['runs'][r.name]['best'], 3)})" for r in runs] for cv in conv])
    series = [(r.name, r.group, colors[r.group], {n: common_curve(r, n)[:2] for n, _ in COMMON_CURVES}) for r in runs]
    png = os.path.join(c.out_dir, "yardsticks.png")
    drawn = figures.plot_curves(series, [(n, n + (" (lower is better)" if not h else "")) for n, h in COMMON_CURVES],
                                png, "common yardsticks (eval, teacher-forced)")
    if not sec.figure(drawn, png, "yardsticks", "common yardsticks against step", plots):
        sec.text("No run logged the yardsticks (runs trained before they existed, or not with a coordexp_* loss).")
    return sec


def failure_rows(runs: Sequence[Run]) -> Tuple[List[str], List[List[str]]]:
    """The head and rows of the failures table, one row per run."""
    reasons = sorted({k for r in runs if r.report for k, v in (r.report["counts"].get("parser") or {}).items() if v})
    head = ["run", "rows", "rows without objects", "parsed objects", "unmatched descriptions", "zero-area boxes",
            "coord mass (eval)"] + [f"parser: {k}" for k in reasons]
    rows = []
    for r in runs:
        _, mass, _ = common_curve(r, "coord_mass")
        mass_v = mass[-1] if mass else None
        if not r.report:
            rows.append([r.name, "-", "-", "-", "-", "-", fmt(mass_v)] + ["-"] * len(reasons))
            continue
        c = r.report["counts"]
        rows.append([r.name, fmt(c["rows"].get("total")), fmt(c["rows"].get("without_objects")),
                     fmt(c["objects"].get("parsed")), fmt(c["objects"].get("unmatched_description")),
                     fmt(c["objects"].get("zero_area_boxes")), fmt(mass_v)]
                    + [fmt((c.get("parser") or {}).get(k, 0)) for k in reasons])
    return head, rows


def failures_section(c: Comparison) -> Section:
    """5. Why answers failed: parser counts by reason, unmatched descriptions, coordinate mass."""
    runs = c.runs
    sec = Section("Why answers failed")
    sec.text("Per run: result rows, rows with no object, parsed objects, descriptions that matched no "
             "category, zero-area boxes, the last eval coordinate mass (probability the model puts on "
             "coordinate tokens at coordinate slots), and the parser's counts by reason "
             "(docs/evaluation.md).")
    sec.table(*failure_rows(runs))
    top_unmatched = []
    for r in runs:
        un = ((r.report or {}).get("counts") or {}).get("unmatched_descriptions") or {}
        if un:
            top_unmatched.append(f"{r.name}: " + ", ".join(f"`{k}` {v}" for k, v in list(un.items())[:8]))
    if top_unmatched:
        sec.text("Most frequent unmatched descriptions:")
        for t in top_unmatched:
            sec.text(f"- {t}")
    return sec


def own_losses_section(c: Comparison) -> Section:
    """7. The groups' own losses and loss flags, labelled as not comparable across groups."""
    runs, colors, plots = c.runs, c.colors, c.plots
    sec = Section("Own losses (NOT comparable across groups)")
    sec.text("Each group optimises its own objective (B has no coordinate CE, C adds a geometric term), so "
             "a lower total loss does not mean better boxes; compare groups on the sections above.")
    rows = []
    for r in runs:
        _, tr = curve(r.train, "loss")
        _, ev = curve(r.eval, "eval_loss")
        rows.append([r.name, str(r.args.get("loss_type") or "cross_entropy"), fmt(tr[-1] if tr else None),
                     fmt(ev[-1] if ev else None), fmt(r.train[-1]["_step"] if r.train else None)])
    sec.table(["run", "loss_type", "final train loss (own)", "final eval loss (own)", "steps"], rows)
    flag_keys = sorted({k for r in runs for k in (r.loss_config or {})})
    if flag_keys:
        sec.table(["run"] + flag_keys, [[r.name] + [fmt((r.loss_config or {}).get(k)) for k in flag_keys]
                  for r in runs])
    for which in ("train", "eval"):
        prefix = "eval_" if which == "eval" else ""
        series = [(r.name, r.group, colors[r.group], {prefix + k: curve(getattr(r, which), prefix + k)
                                                      for k, _ in LOSS_CURVES}) for r in runs]
        png = os.path.join(c.out_dir, f"{which}_losses.png")
        drawn = figures.plot_curves(series, [(prefix + k, f"{which}: {t} [{prefix + k}]") for k, t in LOSS_CURVES],
                                    png, f"{which}: each group's own loss terms (not comparable across groups)",
                                    ncols=2)
        sec.figure(drawn, png, f"{which}_losses", f"{which} loss terms (own objectives)", plots)
    return sec


def notes_section(notes: Sequence[str]) -> Optional[Section]:
    """What could not be done on the way (no bootstrap, no gallery), one item each; None without notes."""
    return Section("Notes", blocks=[("text", f"- {n}") for n in notes]) if notes else None
