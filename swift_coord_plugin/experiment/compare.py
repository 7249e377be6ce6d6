"""Compare ablation runs so that the comparison answers the question (no ms-swift import).

A run is an ms-swift output directory (``--add_version false`` or the ``v<N>-<time>`` folder) holding
``logging.jsonl``, ``args.json``, the plugin's ``coordexp_config.json`` and ``coord_env.json`` and, when
scored, ``eval/report.json`` (``coord-eval``) and, with ``CKPT=all``, ``eval/checkpoint-N/report.json``.

What ``compare_runs`` writes, in the order a reader needs it (``summary.md``, ``index.html``,
``summary.json`` and PNGs):

1. **Comparability**: every setting that changes the numbers, compared across runs: ``args.json`` outside
   the loss flags, the environment-only settings (``coord_env.json``, ``COORD_*``), and per evaluation
   the box decode rule, the decoding mode and backend, the score, max detections, the GT file (SHA-256),
   the evaluated images, the checkpoint step and the inference resolution (also against the training
   resolution). A setting that was not recorded is ``unknown``, which differs from any known value.
2. **Detection metrics** per group (mean ± std over seeds) and the **differences to the baseline group**
   with paired-bootstrap intervals over images (``eval.bootstrap``).
3. **AP along training** (every scored checkpoint).
4. **Common yardsticks** (``core.yardsticks``: teacher-forced IoU of the argmax and CoordExp boxes,
   coordinate accuracy and bin error), and **convergence** on them: the first step at which a run reaches
   ``fraction`` of the best value any run reached (for an error, ``best / fraction``), with each run's level.
5. **Why answers failed**: parser counts by reason, unmatched descriptions, coordinate mass.
6. Pictures: per-category AP, IoU histograms, a seeded gallery of evaluation images (GT | each group).
7. The groups' **own losses, last**, labelled as not comparable across groups (each optimises another
   objective).

Runs with the same display name (``--names``) are seeds of one group; without names, runs with the same
loss type and loss flags form a group.
"""
from __future__ import annotations

import glob
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.yardsticks import COMMON_CURVES
from . import figures
from .provenance import read_env_settings

# The groups' own objectives: (key in logging.jsonl, title). Not comparable across groups.
LOSS_CURVES = (("loss", "total loss"), ("text_loss", "text CE"), ("coord_ce_loss", "coordinate CE"),
               ("coord_loss", "geometric (alpha*L1 + beta*(1-GIoU))"))
DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
# args.json keys that legitimately differ between the runs of one ablation.
EXPECTED_DIFFERENCES = {"loss_type", "output_dir", "logging_dir", "run_name", "training_args", "model_info",
                        "model_meta", "add_version", "model_kwargs"}
SEED_KEYS = {"seed", "data_seed"}
LOSS_ENV_PREFIX = "COORDEXP_"
DEFAULT_FRACTION = 0.9
UNKNOWN = "unknown"
# report.json settings that change the numbers: (dotted key, what it is).
EVAL_SETTINGS = (
    ("decode", "box decode rule"),
    ("decoding", "decoding mode"),
    ("infer_backend", "inference backend"),
    ("score", "detection score"),
    ("max_dets", "max detections per image"),
    ("gt_sha256", "GT file (SHA-256)"),
    ("image_set.sha256", "set of evaluated images"),
    ("images", "image selection rule"),
    ("dedupe_identical_objects", "duplicate-object rule"),
    ("inference.checkpoint_step", "checkpoint step"),
    ("inference.max_pixels", "inference resolution (max_pixels)"),
    ("inference.env", "inference environment (COORD_*)"),
)
GALLERY_IMAGES = 6
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class Run:
    path: str
    name: str
    train: List[dict] = field(default_factory=list)
    eval: List[dict] = field(default_factory=list)
    args: Dict[str, Any] = field(default_factory=dict)
    loss_config: Dict[str, Any] = field(default_factory=dict)
    report: Optional[dict] = None
    report_dir: Optional[str] = None
    env: Optional[Dict[str, str]] = None          # coord_env.json (None: not recorded)
    checkpoint_reports: List[Tuple[int, str, dict]] = field(default_factory=list)  # (step, dir, report)
    group: str = ""


def _step(row: dict) -> Optional[int]:
    gs = row.get("global_step/max_steps")
    if isinstance(gs, str) and "/" in gs:
        try:
            return int(gs.split("/")[0])
        except ValueError:
            return None
    return row.get("step")


def _ckpt_step(path: str) -> int:
    m = re.search(r"checkpoint-(\d+)$", path.rstrip("/\\"))
    return int(m.group(1)) if m else -1


def find_report(run_dir: str) -> Optional[str]:
    """``eval/report.json``, ``report.json``, ``*/report.json``, else the latest ``eval/checkpoint-N/report.json``."""
    for cand in [os.path.join(run_dir, "eval", "report.json"), os.path.join(run_dir, "report.json")]:
        if os.path.isfile(cand):
            return cand
    found = sorted(glob.glob(os.path.join(run_dir, "*", "report.json")))
    if found:
        return found[0]
    per_ckpt = sorted(glob.glob(os.path.join(run_dir, "eval", "checkpoint-*", "report.json")),
                      key=lambda p: _ckpt_step(os.path.dirname(p)))
    return per_ckpt[-1] if per_ckpt else None


def _report_step(report: dict, report_dir: str) -> Optional[int]:
    step = ((report.get("settings") or {}).get("inference") or {}).get("checkpoint_step")
    if isinstance(step, int):
        return step
    s = _ckpt_step(report_dir)
    return s if s >= 0 else None


def load_run(path: str, name: Optional[str] = None) -> Run:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"run directory not found: {path}")
    log = os.path.join(path, "logging.jsonl")
    if not os.path.isfile(log):
        versions = sorted(glob.glob(os.path.join(path, "v*-*", "logging.jsonl")))
        if not versions:
            raise FileNotFoundError(f"{path}: no logging.jsonl (is it an ms-swift output directory?)")
        log = versions[-1]
        path = os.path.dirname(log)
    run = Run(path=path, name=name or os.path.basename(os.path.normpath(path)))
    with open(log) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ValueError(f"{log}:{n}: not JSON ({e})") from None
            step = _step(row)
            if step is None:
                continue
            row["_step"] = step
            if any(k.startswith("eval_") for k in row):
                run.eval.append(row)
            elif "loss" in row:
                run.train.append(row)
    for fname, attr in (("args.json", "args"), ("coordexp_config.json", "loss_config")):
        p = os.path.join(path, fname)
        if os.path.isfile(p):
            with open(p) as f:
                setattr(run, attr, json.load(f))
    if isinstance(run.loss_config.get("flags"), dict):  # coordexp_config.json: {"flags": {...}, ...}
        run.loss_config = run.loss_config["flags"]
    run.env = read_env_settings(path)
    rep = find_report(path)
    if rep:
        with open(rep) as f:
            run.report = json.load(f)
        run.report_dir = os.path.dirname(rep)
    seen = set()
    for p in sorted(glob.glob(os.path.join(path, "eval", "checkpoint-*", "report.json"))) + ([rep] if rep else []):
        d = os.path.dirname(p)
        with open(p) as f:
            r = json.load(f)
        step = _report_step(r, d)
        if step is not None and step not in seen:
            seen.add(step)
            run.checkpoint_reports.append((step, d, r))
    run.checkpoint_reports.sort(key=lambda t: t[0])
    return run


def curve(rows: Sequence[dict], key: str) -> Tuple[List[int], List[float]]:
    xs, ys = [], []
    for r in rows:
        v = r.get(key)
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                continue
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(r["_step"])
            ys.append(float(v))
    return xs, ys


def common_curve(run: Run, name: str) -> Tuple[List[int], List[float], str]:
    """A yardstick's curve: the eval rows (``eval_<name>``) when logged, else the train rows."""
    xs, ys = curve(run.eval, "eval_" + name)
    if xs:
        return xs, ys, "eval_" + name
    xs, ys = curve(run.train, name)
    return xs, ys, name


# ---------------------------------------------------------------------------------------------- groups
def assign_groups(runs: Sequence[Run], names_given: bool) -> List[str]:
    """Group label of each run; the order of first appearance is the groups' order (the first is the baseline)."""
    order: List[str] = []
    if names_given:
        for r in runs:
            r.group = r.name
    else:
        label_of: Dict[str, str] = {}
        for r in runs:
            key = json.dumps([r.args.get("loss_type"), r.loss_config], sort_keys=True, default=str)
            r.group = label_of.setdefault(key, r.name)
    for r in runs:
        if r.group not in order:
            order.append(r.group)
    return order


# ---------------------------------------------------------------------------------------------- comparability
def _dotted(d: Optional[dict], key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return UNKNOWN
        d = d[part]
    return UNKNOWN if d is None else d


def _filtered_kwargs(v) -> Any:
    if isinstance(v, dict):
        return {k: x for k, x in v.items() if not str(k).upper().startswith(LOSS_ENV_PREFIX)}
    return v


def _short(v, n: int = 60) -> str:
    s = json.dumps(v, default=str, sort_keys=True) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."


def _differs(values: Dict[str, Any]) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) for v in values.values()}) > 1


def _line(what: str, values: Dict[str, Any], where: str = "") -> str:
    return f"{what} differs" + (f" ({where})" if where else "") + ": " + "; ".join(
        f"{n}: {_short(v)}" for n, v in values.items())


def comparability(runs: Sequence[Run]) -> List[str]:
    """Differences between runs in anything that changes the numbers, one line per setting naming it and
    each run's value (empty list: comparable). See the module doc for what is compared."""
    issues: List[str] = []
    if not runs:
        return issues
    multi = len(runs) > 1
    # args.json, outside the loss flags; seeds may differ within a group (that is what seeds are).
    if multi:
        missing = [r.name for r in runs if not r.args]
        if missing:
            issues.append(f"args.json missing, cannot check the training settings: {', '.join(missing)}")
        keys = sorted(set().union(*(r.args for r in runs)) - EXPECTED_DIFFERENCES - SEED_KEYS)
        with_args = [r for r in runs if r.args]
        for k in keys:
            vals = {r.name: r.args.get(k, UNKNOWN) for r in with_args}
            if _differs(vals):
                issues.append(_line(f"`{k}`", vals, "args.json"))
        vals = {r.name: _filtered_kwargs(r.args.get("model_kwargs")) for r in with_args}
        if _differs(vals):
            issues.append(_line("`model_kwargs`", vals, "args.json, outside COORDEXP_*"))
        # Seeds: the same set in every group.
        groups: Dict[str, List[Run]] = {}
        for r in with_args:
            groups.setdefault(r.group or r.name, []).append(r)
        for k in sorted(SEED_KEYS):
            sets = {g: sorted({str(r.args.get(k, UNKNOWN)) for r in rs}) for g, rs in groups.items()}
            if _differs(sets):
                issues.append(_line(f"`{k}`", sets, "args.json: the set of values of each group"))
            for g, rs in groups.items():
                if len(rs) > 1 and len({str(r.args.get(k)) for r in rs}) < len(rs) and k == "seed":
                    issues.append(f"group {g}: {len(rs)} runs but repeated `seed` values "
                                  f"({[r.args.get(k) for r in rs]}): not independent seeds")
        # Environment-only settings (coord_env.json), outside the loss flags.
        envs = {r.name: ({k: v for k, v in r.env.items() if not k.startswith(LOSS_ENV_PREFIX)}
                         if r.env is not None else UNKNOWN) for r in runs}
        if _differs(envs):
            keys = sorted(set().union(*(e for e in envs.values() if isinstance(e, dict))))
            for k in keys:
                vals = {n: (e.get(k, "(unset)") if isinstance(e, dict) else UNKNOWN) for n, e in envs.items()}
                if _differs(vals):
                    issues.append(_line(f"`{k}`", vals, "environment, coord_env.json"))
            if not keys:
                issues.append(_line("environment settings (coord_env.json)", {n: "recorded" if isinstance(e, dict)
                                                                              else UNKNOWN for n, e in envs.items()}))
    # Evaluations.
    scored = [r for r in runs if r.report]
    unscored = [r.name for r in runs if not r.report]
    if unscored and scored:
        issues.append(f"not scored (no report.json): {', '.join(unscored)}")
    if len(scored) > 1:
        for key, what in EVAL_SETTINGS:
            vals = {r.name: _dotted(r.report.get("settings"), key) for r in scored}
            if _differs(vals):
                issues.append(_line(f"`{key}`", vals, f"evaluation: {what}"))
    for r in scored:
        inf = (r.report.get("settings") or {}).get("inference") or {}
        train_px = r.args.get("max_pixels", inf.get("train_max_pixels"))
        if inf.get("max_pixels") is not None and train_px is not None and int(inf["max_pixels"]) != int(train_px):
            issues.append(f"{r.name}: evaluated at max_pixels {inf['max_pixels']} but trained at {train_px}")
    # Same training length.
    if multi:
        last = {r.name: (r.train[-1]["_step"] if r.train else None) for r in runs}
        if _differs(last):
            issues.append(_line("training length", last, "last logged step"))
    return issues


def not_recorded(runs: Sequence[Run]) -> List[str]:
    """Settings no run recorded (equal as 'unknown', so not a difference, but unchecked)."""
    out = []
    scored = [r for r in runs if r.report]
    for key, what in EVAL_SETTINGS:
        if scored and all(_dotted(r.report.get("settings"), key) == UNKNOWN for r in scored):
            out.append(f"{what} (`{key}`)")
    if runs and all(r.env is None for r in runs):
        out.append("environment settings (coord_env.json)")
    return out


# ---------------------------------------------------------------------------------------------- convergence
def steps_to_level(xs: Sequence[int], ys: Sequence[float], target: float, higher_is_better: bool) -> Optional[int]:
    """First step whose value reaches ``target`` (>= for higher-is-better, <= otherwise); None if never."""
    for x, y in zip(xs, ys):
        if (y >= target) if higher_is_better else (y <= target):
            return x
    return None


def convergence(runs: Sequence[Run], fraction: float = DEFAULT_FRACTION) -> List[dict]:
    """Per common yardstick: the best value any run reached, the target level (``fraction * best``, or
    ``best / fraction`` for an error) and per run the first step reaching it, its best and final value."""
    out = []
    for name, higher in COMMON_CURVES:
        per = {r.name: common_curve(r, name) for r in runs}
        values = [y for xs, ys, _ in per.values() for y in ys]
        if not values:
            continue
        best = max(values) if higher else min(values)
        # No run above 0 on a higher-is-better yardstick: nothing was reached, no convergence to report.
        target = None if higher and best <= 0 else (fraction * best if higher else best / fraction)
        row = {"curve": name, "logged_as": sorted({k for _, _, k in per.values() if _}), "higher_is_better": higher,
               "best": best, "best_run": next(n for n, (xs, ys, _) in per.items() if best in ys),
               "target": target, "runs": {}}
        for n, (xs, ys, _) in per.items():
            row["runs"][n] = {"step": steps_to_level(xs, ys, target, higher) if ys and target is not None else None,
                              "best": (max(ys) if higher else min(ys)) if ys else None,
                              "final": ys[-1] if ys else None}
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------- aggregation
def _mean_std(values: Sequence[Optional[float]]) -> Tuple[Optional[float], Optional[float], int]:
    v = [float(x) for x in values if isinstance(x, (int, float)) and x is not None and math.isfinite(x) and x >= 0]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None), len(v)


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _pm(mean, std, digits: int = 4) -> str:
    if mean is None:
        return "-"
    return _fmt(mean, digits) + (f" ± {std:.{digits}f}" if std is not None else "")


def _ci(ci, digits: int = 4) -> str:
    if not ci or ci[0] is None:
        return "-"
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


# ---------------------------------------------------------------------------------------------- bootstrap
def _per_image_matches(run: Run, notes: List[str]):
    from ..eval.bootstrap import PerImageMatches
    from ..eval.scoring import load_gt, run_cocoeval
    from .provenance import file_sha256

    s = (run.report or {}).get("settings") or {}
    gt, ids = s.get("gt"), (s.get("image_set") or {}).get("ids")
    dets_path = os.path.join(run.report_dir or "", "detections.json")
    if not gt or not os.path.isfile(gt) or ids is None or not os.path.isfile(dets_path):
        notes.append(f"{run.name}: no bootstrap (needs report.json with settings.gt, settings.image_set.ids and "
                     "detections.json next to it; re-score with this coord-eval)")
        return None
    if s.get("gt_sha256") and file_sha256(gt) != s["gt_sha256"]:
        notes.append(f"{run.name}: no bootstrap (the GT file {gt} changed since it was scored)")
        return None
    with open(dets_path) as f:
        dets = json.load(f)
    ev = run_cocoeval(load_gt(gt), dets, ids, int(s.get("max_dets", 100)))
    return PerImageMatches.from_cocoeval(ev)


def bootstrap_groups(runs: Sequence[Run], groups: Sequence[str], n_resamples: int, seed: int,
                     notes: List[str]) -> Optional[dict]:
    from ..eval.bootstrap import paired_bootstrap

    scored = {g: [r for r in runs if r.group == g and r.report] for g in groups}
    scored = {g: rs for g, rs in scored.items() if rs}
    if len(scored) < 1:
        return None
    matches = {}
    for g, rs in scored.items():
        pims = [_per_image_matches(r, notes) for r in rs]
        if any(p is None for p in pims):
            continue
        matches[g] = pims
    baseline = next((g for g in groups if g in matches), None)
    if baseline is None:
        return None
    ref = matches[baseline][0].image_ids
    for g in list(matches):
        if any(p.image_ids != ref for p in matches[g]):
            notes.append(f"{g}: no paired bootstrap against {baseline} (scored on other images)")
            del matches[g]
    out = paired_bootstrap(matches, baseline, n_resamples=n_resamples, seed=seed)
    return {"baseline": baseline, "n_resamples": n_resamples, "seed": seed, "alpha": 0.05,
            "n_images": len(ref), "groups": out}


# ---------------------------------------------------------------------------------------------- sections
@dataclass
class Section:
    """A titled part of the summary: paragraphs, tables and pictures in reading order (``blocks``), rendered
    the same way to markdown and HTML."""

    title: str
    blocks: List[Tuple[str, Any]] = field(default_factory=list)  # ("text", str) | ("table", (head, rows)) | ("image", (caption, rel))

    def text(self, t: str) -> None:
        self.blocks.append(("text", t))

    def table(self, head: List[str], rows: List[List[str]]) -> None:
        self.blocks.append(("table", (head, rows)))

    def image(self, caption: str, rel: str) -> None:
        self.blocks.append(("image", (caption, rel)))

    def figure(self, drawn: bool, png: str, key: str, caption: str, plots: Dict[str, str]) -> bool:
        """Show ``png`` (and list it in ``plots`` under ``key``) if the plotting call ``drawn`` it."""
        if drawn:
            plots[key] = os.path.basename(png)
            self.image(caption, plots[key])
        return drawn

    @property
    def images(self) -> List[Tuple[str, str]]:
        return [b for k, b in self.blocks if k == "image"]


def _failure_rows(runs: Sequence[Run]) -> Tuple[List[str], List[List[str]]]:
    reasons = sorted({k for r in runs if r.report for k, v in (r.report["counts"].get("parser") or {}).items() if v})
    head = ["run", "rows", "rows without objects", "parsed objects", "unmatched descriptions", "zero-area boxes",
            "coord mass (eval)"] + [f"parser: {k}" for k in reasons]
    rows = []
    for r in runs:
        _, mass, _ = common_curve(r, "coord_mass")
        mass_v = mass[-1] if mass else None
        if not r.report:
            rows.append([r.name, "-", "-", "-", "-", "-", _fmt(mass_v)] + ["-"] * len(reasons))
            continue
        c = r.report["counts"]
        rows.append([r.name, _fmt(c["rows"].get("total")), _fmt(c["rows"].get("without_objects")),
                     _fmt(c["objects"].get("parsed")), _fmt(c["objects"].get("unmatched_description")),
                     _fmt(c["objects"].get("zero_area_boxes")), _fmt(mass_v)]
                    + [_fmt((c.get("parser") or {}).get(k, 0)) for k in reasons])
    return head, rows


def compare_runs(run_dirs: Sequence[str], out_dir: str, names: Optional[Sequence[str]] = None,
                 fraction: float = DEFAULT_FRACTION, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                 gallery_images: int = GALLERY_IMAGES) -> Dict[str, Any]:
    """Write the plots, ``summary.md``, ``index.html`` and ``summary.json`` into ``out_dir``; return the summary."""
    os.makedirs(out_dir, exist_ok=True)
    runs = [load_run(p, names[i] if names else None) for i, p in enumerate(run_dirs)]
    groups = assign_groups(runs, bool(names))
    colors = figures.group_colors(groups)
    notes: List[str] = []
    issues = comparability(runs)
    unrecorded = not_recorded(runs)
    plots: Dict[str, str] = {}
    sections: List[Section] = []
    by_group = {g: [r for r in runs if r.group == g] for g in groups}

    # 1. Comparability.
    sec = Section("Comparability")
    if issues:
        sec.text("**NOT COMPARABLE**: the runs differ in settings that change the numbers:")
        for i in issues:
            sec.text(f"- {i}")
    else:
        sec.text("All runs share every compared setting: args.json outside the loss flags, the environment "
                 "settings (coord_env.json), and for the evaluations " +
                 ", ".join(w for _, w in EVAL_SETTINGS) + ".")
    if unrecorded:
        sec.text("Not recorded by any run (unchecked): " + "; ".join(unrecorded) + ".")
    sec.table(["group", "runs", "seeds", "loss_type", "path(s)"],
              [[g, str(len(rs)), ", ".join(str(r.args.get("seed", "?")) for r in rs),
                str(rs[0].args.get("loss_type") or "cross_entropy"), ", ".join(r.path for r in rs)]
               for g, rs in by_group.items()])
    sections.append(sec)

    # 2. Detection metrics and differences.
    metric_mean: Dict[str, Dict[str, Optional[float]]] = {}
    metric_std: Dict[str, Dict[str, Optional[float]]] = {}
    for g, rs in by_group.items():
        metric_mean[g], metric_std[g] = {}, {}
        for m in DETECTION_METRICS:
            mean, std, _ = _mean_std([((r.report or {}).get("metrics") or {}).get(m) for r in rs])
            metric_mean[g][m], metric_std[g][m] = mean, std
    boot = (bootstrap_groups(runs, groups, n_resamples, seed, notes)
            if n_resamples > 0 and any(r.report for r in runs) else None)
    sec = Section("Detection metrics")
    if any(r.report for r in runs):
        sec.text("COCO bbox metrics (pycocotools) of the scored checkpoint; mean ± std over the runs (seeds) "
                 "of a group. AR100 is the recall at the evaluation's max detections.")
        sec.table(["group", "n"] + list(DETECTION_METRICS),
                  [[g, str(sum(1 for r in by_group[g] if r.report))]
                   + [_pm(metric_mean[g][m], metric_std[g][m]) for m in DETECTION_METRICS] for g in groups])
        if boot:
            b = boot["groups"]
            sec.text(f"Differences to the baseline group **{boot['baseline']}** (then between the other groups), "
                     f"with 95% paired-bootstrap "
                            f"intervals over the {boot['n_images']} evaluated images ({boot['n_resamples']} "
                            "resamples; method in docs/comparison.md). A difference is larger than the noise of "
                            "the image sample when its interval excludes 0.")
            pairs = [(g, boot["baseline"], b[g]["diff"]) for g in groups if g in b and g != boot["baseline"]]
            pairs += [(g, o, d) for g in groups if g in b for o, d in b[g].get("vs", {}).items()]
            rows = []
            for g, o, diff in pairs:
                row = [f"{g} − {o}"]
                verdict = []
                for m in ("AP", "AP50", "AP75"):
                    d = diff[m]
                    row += [f"{d['value']:+.4f}", _ci(d["ci"])]
                    verdict.append(f"{m}: {'yes' if d['excludes_zero'] else 'no'}")
                rows.append(row + ["; ".join(verdict)])
            if rows:
                sec.table(["difference", "ΔAP", "95% CI", "ΔAP50", "95% CI", "ΔAP75", "95% CI",
                           "larger than the noise?"], rows)
            sec.table(["group", "AP", "AP 95% CI", "AP50", "AP50 95% CI", "AP75", "AP75 95% CI"],
                      [[g, _fmt(b[g]["AP"]["value"]), _ci(b[g]["AP"]["ci"]), _fmt(b[g]["AP50"]["value"]),
                        _ci(b[g]["AP50"]["ci"]), _fmt(b[g]["AP75"]["value"]), _ci(b[g]["AP75"]["ci"])]
                       for g in groups if g in b])
        png = os.path.join(out_dir, "detection_metrics.png")
        drawn = figures.plot_metric_bars(groups, colors, DETECTION_METRICS, metric_mean, metric_std, png,
                                         "detection metrics (pycocotools), mean ± std over seeds", "COCO metric")
        sec.figure(drawn, png, "detection_metrics", "detection metrics", plots)
    else:
        sec.text("No run has an evaluation (report.json): run shell/eval.sh first.")
    sections.append(sec)

    # 3. AP along training.
    sec = Section("AP along training")
    steps = sorted({s for r in runs for s, _, _ in r.checkpoint_reports})
    if steps:
        sec.text("Every scored checkpoint (`CKPT=all bash shell/eval.sh`); one line per run.")
        sec.table(["run"] + [f"AP @ {s}" for s in steps],
                  [[r.name] + [_fmt(next((rep["metrics"].get("AP") for st, _, rep in r.checkpoint_reports
                                          if st == s), None)) for s in steps] for r in runs])
        series = [(r.name, r.group, colors[r.group],
                   {m: ([s for s, _, _ in r.checkpoint_reports],
                        [max(float(rep["metrics"].get(m, 0.0)), 0.0) for _, _, rep in r.checkpoint_reports])
                    for m in ("AP", "AP50", "AP75")}) for r in runs]
        png = os.path.join(out_dir, "ap_vs_step.png")
        drawn = figures.plot_curves(series, [("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75")], png,
                                    "COCO AP of each scored checkpoint", ncols=3)
        sec.figure(drawn, png, "ap_vs_step", "AP, AP50, AP75 against step", plots)
    else:
        sec.text("No checkpoint was scored.")
    sections.append(sec)

    # 4. Common yardsticks and convergence.
    sec = Section("Common yardsticks (the same measure for every group)")
    sec.text("Teacher-forced on the eval set at every eval step, whatever the loss: IoU of the argmax box and "
             "of the CoordExp box with the target box (mean, fraction with IoU >= 0.5 / 0.75), coordinate "
             "accuracy and mean bin error (core/yardsticks.py).")
    final_rows = []
    for g, rs in by_group.items():
        row = [g]
        for name, _ in COMMON_CURVES:
            mean, std, _ = _mean_std([(common_curve(r, name)[1] or [None])[-1] for r in rs])
            row.append(_pm(mean, std, 3))
        final_rows.append(row)
    sec.table(["group (final value)"] + [n for n, _ in COMMON_CURVES], final_rows)
    conv = convergence(runs, fraction)
    if conv:
        sec.text(f"Convergence: the first step at which a run reaches {fraction:.0%} of the best value any run "
                 f"reached (for the bin error: best / {fraction:g}); 'never' = not within the run. Next to it "
                 "the best level the run reached.")
        sec.table(["yardstick", "best (run)", "target"] + [f"{r.name}: step (best)" for r in runs],
                  [[c["curve"], f"{c['best']:.3f} ({c['best_run']})",
                    "- (no run above 0)" if c["target"] is None else f"{c['target']:.3f}"]
                   + [("-" if c["target"] is None else _fmt(c["runs"][r.name]["step"])
                       if c["runs"][r.name]["step"] is not None else "never")
                      + f" ({_fmt(c['runs'][r.name]['best'], 3)})" for r in runs] for c in conv])
    series = [(r.name, r.group, colors[r.group], {n: common_curve(r, n)[:2] for n, _ in COMMON_CURVES}) for r in runs]
    png = os.path.join(out_dir, "yardsticks.png")
    drawn = figures.plot_curves(series, [(n, n + (" (lower is better)" if not h else "")) for n, h in COMMON_CURVES],
                                png, "common yardsticks (eval, teacher-forced)")
    if not sec.figure(drawn, png, "yardsticks", "common yardsticks against step", plots):
        sec.text("No run logged the yardsticks (runs trained before they existed, or not with a coordexp_* loss).")
    sections.append(sec)

    # 5. Why answers failed.
    sec = Section("Why answers failed")
    sec.text("Per run: result rows, rows with no object, parsed objects, descriptions that matched no "
             "category, zero-area boxes, the last eval coordinate mass (probability the model puts on "
             "coordinate tokens at coordinate slots), and the parser's counts by reason "
             "(docs/evaluation.md).")
    sec.table(*_failure_rows(runs))
    top_unmatched = []
    for r in runs:
        un = ((r.report or {}).get("counts") or {}).get("unmatched_descriptions") or {}
        if un:
            top_unmatched.append(f"{r.name}: " + ", ".join(f"`{k}` {v}" for k, v in list(un.items())[:8]))
    if top_unmatched:
        sec.text("Most frequent unmatched descriptions:")
        for t in top_unmatched:
            sec.text(f"- {t}")
    sections.append(sec)

    # 6. Pictures: per category, IoU histograms, gallery.
    sec = Section("Per category, IoU of matches, gallery")
    # keyed by category id (reports before keyed it by name; per_category_by_id reads both)
    from ..eval.scoring import per_category_by_id

    tables = {id(r): per_category_by_id(r.report or {}) for r in runs}
    cat_gt: Dict[int, int] = {}
    cat_name: Dict[int, str] = {}
    for table in tables.values():
        for cid, c in table.items():
            cat_gt[cid] = max(cat_gt.get(cid, 0), int(c.get("num_gt") or 0))
            cat_name.setdefault(cid, str(c["name"]))
    top = [c for c, n in sorted(cat_gt.items(), key=lambda kv: -kv[1]) if n > 0][:20]
    shared = {n for n in cat_name.values() if list(cat_name.values()).count(n) > 1}
    label = {c: cat_name[c] + (f" ({c})" if cat_name[c] in shared else "") for c in top}
    cats = [label[c] for c in top]
    if cats:
        cmean = {g: {} for g in groups}
        cstd = {g: {} for g in groups}
        for g, rs in by_group.items():
            for c in top:
                cmean[g][label[c]], cstd[g][label[c]], _ = _mean_std([tables[id(r)].get(c, {}).get("AP") for r in rs])
        png = os.path.join(out_dir, "per_category_ap.png")
        drawn = figures.plot_metric_bars(groups, colors, cats, cmean, cstd, png,
                                         f"AP per category ({len(cats)} with most GT boxes)", "AP")
        sec.figure(drawn, png, "per_category_ap", "AP per category", plots)
    png = os.path.join(out_dir, "iou_histograms.png")
    hists = [(r.name, colors[r.group], (r.report.get("matched_iou") or {}).get("histogram_edges") or [],
              (r.report.get("matched_iou") or {}).get("histogram") or []) for r in runs if r.report]
    sec.figure(figures.plot_iou_histograms(hists, png), png, "iou_histograms", "IoU of matched detections", plots)
    gallery = _gallery(runs, groups, colors, out_dir, gallery_images, seed, notes)
    for caption, rel in gallery:
        sec.image(caption, rel)
    if not sec.images:
        sec.text("No evaluation to draw.")
    sections.append(sec)

    # 7. Own losses, last.
    sec = Section("Own losses (NOT comparable across groups)")
    sec.text("Each group optimises its own objective (B has no coordinate CE, C adds a geometric term), so "
             "a lower total loss does not mean better boxes; compare groups on the sections above.")
    rows = []
    for r in runs:
        _, tr = curve(r.train, "loss")
        _, ev = curve(r.eval, "eval_loss")
        rows.append([r.name, str(r.args.get("loss_type") or "cross_entropy"), _fmt(tr[-1] if tr else None),
                     _fmt(ev[-1] if ev else None), _fmt(r.train[-1]["_step"] if r.train else None)])
    sec.table(["run", "loss_type", "final train loss (own)", "final eval loss (own)", "steps"], rows)
    flag_keys = sorted({k for r in runs for k in (r.loss_config or {})})
    if flag_keys:
        sec.table(["run"] + flag_keys, [[r.name] + [_fmt((r.loss_config or {}).get(k)) for k in flag_keys]
                  for r in runs])
    for which in ("train", "eval"):
        prefix = "eval_" if which == "eval" else ""
        series = [(r.name, r.group, colors[r.group], {prefix + k: curve(getattr(r, which), prefix + k)
                                                      for k, _ in LOSS_CURVES}) for r in runs]
        png = os.path.join(out_dir, f"{which}_losses.png")
        drawn = figures.plot_curves(series, [(prefix + k, f"{which}: {t} [{prefix + k}]") for k, t in LOSS_CURVES],
                                    png, f"{which}: each group's own loss terms (not comparable across groups)",
                                    ncols=2)
        sec.figure(drawn, png, f"{which}_losses", f"{which} loss terms (own objectives)", plots)
    sections.append(sec)
    if notes:
        sections.append(Section("Notes", blocks=[("text", f"- {n}") for n in notes]))

    summary = {
        "groups": {g: [r.name for r in rs] for g, rs in by_group.items()},
        "runs": [{"name": r.name, "group": r.group, "path": r.path, "loss_type": r.args.get("loss_type"),
                  "seed": r.args.get("seed"), "loss_config": r.loss_config, "env": r.env,
                  "metrics": {m: ((r.report or {}).get("metrics") or {}).get(m) for m in DETECTION_METRICS},
                  "eval_settings": {k: _dotted((r.report or {}).get("settings"), k) for k, _ in EVAL_SETTINGS}
                  if r.report else None,
                  "ap_along_training": [{"step": s, "AP": rep["metrics"].get("AP"), "AP50": rep["metrics"].get("AP50"),
                                         "AP75": rep["metrics"].get("AP75"), "report": d}
                                        for s, d, rep in r.checkpoint_reports],
                  "steps": r.train[-1]["_step"] if r.train else None} for r in runs],
        "group_metrics": {g: {m: {"mean": metric_mean[g][m], "std": metric_std[g][m]} for m in DETECTION_METRICS}
                          for g in groups},
        "comparable": not issues, "comparability_issues": issues, "not_recorded": unrecorded,
        "bootstrap": boot, "convergence": conv,
        "convergence_definition": (f"first eval step at which a run reaches {fraction:.0%} of the best value any run "
                                   f"reached on a common yardstick (best / {fraction:g} for the bin error)"),
        "plots": plots, "gallery": [rel for _, rel in gallery], "notes": notes,
    }
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(render_markdown(sections))
    with open(os.path.join(out_dir, "index.html"), "w", encoding="utf-8") as f:
        f.write(render_html(sections))
    summary["sections"] = sections
    return summary


def _gallery(runs: Sequence[Run], groups: Sequence[str], colors: Dict[str, str], out_dir: str, k: int, seed: int,
             notes: List[str]) -> List[Tuple[str, str]]:
    """A seeded sample of evaluation images, the first scored run of each group side by side."""
    reps = []
    for g in groups:
        r = next((r for r in runs if r.group == g and r.report and r.report_dir), None)
        if r is not None:
            reps.append(r)
    if not reps or k <= 0:
        return []
    s = reps[0].report.get("settings") or {}
    gt_path = s.get("gt")
    paths = figures.image_paths_from_results(s.get("results"))
    if not gt_path or not os.path.isfile(gt_path) or not paths:
        notes.append("no gallery: the GT file or the images of the result file are not found")
        return []
    with open(gt_path) as f:
        gt = json.load(f)
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    gt_by_img: Dict[int, list] = {}
    for a in gt["annotations"]:
        gt_by_img.setdefault(int(a["image_id"]), []).append((a["bbox"], cats.get(a["category_id"], "?")))
    dets = {}
    for r in reps:
        p = os.path.join(r.report_dir, "detections.json")
        by_img: Dict[int, list] = {}
        if os.path.isfile(p):
            with open(p) as f:
                for d in json.load(f):
                    by_img.setdefault(int(d["image_id"]), []).append((d["bbox"], cats.get(d["category_id"], "?"),
                                                                      float(d.get("score", 1.0))))
        dets[r.group] = by_img
    ids = sorted(set(paths) & set(((s.get("image_set") or {}).get("ids")) or paths))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(ids, size=min(k, len(ids)), replace=False).tolist()) if ids else []
    os.makedirs(os.path.join(out_dir, "gallery"), exist_ok=True)
    out = []
    for iid in chosen:
        rel = os.path.join("gallery", f"image_{iid}.png")
        figures.draw_gallery_image(paths[iid], gt_by_img.get(iid, []),
                                   [(r.group, colors[r.group], dets[r.group].get(iid, [])) for r in reps],
                                   os.path.join(out_dir, rel), f"image {iid}: {len(gt_by_img.get(iid, []))} GT boxes")
        out.append((f"image {iid}", rel))
    return out


# ---------------------------------------------------------------------------------------------- rendering
def render_markdown(sections: Sequence[Section]) -> str:
    lines = ["# Ablation comparison", ""]
    for sec in sections:
        lines += [f"## {sec.title}", ""]
        prev = None
        for kind, b in sec.blocks:
            cur = "item" if kind == "text" and b.startswith("- ") else kind
            if prev is not None and (prev != cur or cur in ("table", "text")) and lines[-1] != "":
                lines.append("")
            if kind == "text":
                lines.append(b)
            elif kind == "table":
                head, rows = b
                lines.append("| " + " | ".join(head) + " |")
                lines.append("|" + "---|" * len(head))
                lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            else:
                lines.append(f"![{b[0]}]({b[1]})")
            prev = cur
        lines.append("")
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Escape, then the two markdown marks the summary uses: **bold** and `code`."""
    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def render_html(sections: Sequence[Section]) -> str:
    """One static page (no script, no server) with the same sections, tables and pictures as summary.md."""
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\"><title>Ablation comparison</title>",
           "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
           "margin:1em 0;font-size:13px}td,th{border:1px solid #bbb;padding:3px 7px;text-align:left}"
           "th{background:#eee}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
           "figure{margin:0 0 1em 0}strong{color:#b00}</style></head><body>",
           "<h1>Ablation comparison</h1>", "<nav><ul>"]
    for i, sec in enumerate(sections):
        out.append(f"<li><a href=\"#s{i}\">{html.escape(sec.title)}</a></li>")
    out.append("</ul></nav>")
    for i, sec in enumerate(sections):
        out.append(f"<h2 id=\"s{i}\">{html.escape(sec.title)}</h2>")
        items: List[str] = []
        for kind, b in sec.blocks:
            if kind == "text" and b.startswith("- "):
                items.append(f"<li>{_inline(b[2:])}</li>")
                continue
            if items:
                out += ["<ul>"] + items + ["</ul>"]
                items = []
            if kind == "text":
                out.append(f"<p>{_inline(b)}</p>")
            elif kind == "table":
                head, rows = b
                out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows]
                out.append("</table>")
            else:
                caption, rel = b
                src = html.escape(rel.replace(os.sep, "/"), quote=True)
                out.append(f"<figure><a href=\"{src}\"><img src=\"{src}\" alt=\"{html.escape(caption, quote=True)}\">"
                           f"</a><figcaption>{html.escape(caption)}</figcaption></figure>")
        if items:
            out += ["<ul>"] + items + ["</ul>"]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def format_summary(summary: Dict[str, Any]) -> str:
    """The markdown of a ``compare_runs`` result (what ``summary.md`` holds)."""
    return render_markdown(summary["sections"])
