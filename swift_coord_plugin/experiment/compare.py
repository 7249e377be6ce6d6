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
"""
from __future__ import annotations

import glob
import html
import json
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.yardsticks import COMMON_CURVES
from . import figures
from ..provenance import file_sha256, read_env_settings

# The groups' own objectives: (key in logging.jsonl, title). Not comparable across groups.
LOSS_CURVES = (("loss", "total loss"), ("text_loss", "text CE"), ("coord_ce_loss", "coordinate CE"),
               ("coord_loss", "geometric (alpha*L1 + beta*(1-GIoU))"))
DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
# args.json keys that legitimately differ between the runs of one ablation.
EXPECTED_DIFFERENCES = {"loss_type", "output_dir", "logging_dir", "run_name", "training_args", "model_info",
                        "model_meta", "add_version", "model_kwargs"}
SEED_KEYS = ("seed", "data_seed")
# coord_env.json keys that are seeds too (the new rows' initialisation): they may differ within a group.
ENV_SEED_KEYS = ("COORD_INIT_SEED",)
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


DEFAULT_EVAL = "default"          # the evaluation in eval/ itself (shell/eval.sh without EVAL_NAME)
_NOT_EVAL_NAMES = re.compile(r"^(checkpoint-\d+|shards)$")   # folders eval.sh makes inside an evaluation


@dataclass
class Evaluation:
    """One named evaluation of a run: its report (the one compared), the folder holding it, and every
    scored checkpoint's report ``(step, dir, report)`` in step order."""

    name: str
    report: Optional[dict] = None
    report_dir: Optional[str] = None
    checkpoint_reports: List[Tuple[int, str, dict]] = field(default_factory=list)


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
    evaluations: Dict[str, Evaluation] = field(default_factory=dict)  # every evaluation found, by name
    eval_name: Optional[str] = None                                   # the one in report/report_dir


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


def _latest_checkpoint_report(eval_dir: str) -> Optional[str]:
    per_ckpt = sorted(glob.glob(os.path.join(eval_dir, "checkpoint-*", "report.json")),
                      key=lambda p: _ckpt_step(os.path.dirname(p)))
    return per_ckpt[-1] if per_ckpt else None


def evaluation_dir(run_dir: str, eval_name: str = DEFAULT_EVAL) -> str:
    """The folder of evaluation ``eval_name`` of a run: ``eval/`` for ``default``, else ``eval/NAME``."""
    return os.path.join(run_dir, "eval") if eval_name == DEFAULT_EVAL else os.path.join(run_dir, "eval", eval_name)


def evaluation_names(run_dir: str) -> List[str]:
    """The evaluations of a run that hold a report: ``default`` first (when ``find_report`` finds one), then the
    named ones (``eval/NAME/`` with ``report.json`` or ``checkpoint-N/report.json``) in alphabetical order."""
    names = [DEFAULT_EVAL] if find_report(run_dir) else []
    for d in sorted(glob.glob(os.path.join(run_dir, "eval", "*", ""))):
        name = os.path.basename(os.path.normpath(d))
        if name != DEFAULT_EVAL and not _NOT_EVAL_NAMES.match(name) and find_report(run_dir, name):
            names.append(name)
    return names


def find_report(run_dir: str, eval_name: str = DEFAULT_EVAL) -> Optional[str]:
    """The report of evaluation ``eval_name`` of a run, or None.

    ``default``: ``eval/report.json``, ``report.json``, ``*/report.json`` (one level down, not a named
    evaluation's), else the latest ``eval/checkpoint-N/report.json``. A named evaluation: ``eval/NAME/report.json``,
    else the latest ``eval/NAME/checkpoint-N/report.json``."""
    if eval_name != DEFAULT_EVAL:
        d = evaluation_dir(run_dir, eval_name)
        rep = os.path.join(d, "report.json")
        return rep if os.path.isfile(rep) else _latest_checkpoint_report(d)
    for cand in [os.path.join(run_dir, "eval", "report.json"), os.path.join(run_dir, "report.json")]:
        if os.path.isfile(cand):
            return cand
    found = sorted(glob.glob(os.path.join(run_dir, "*", "report.json")))
    if found:
        return found[0]
    return _latest_checkpoint_report(os.path.join(run_dir, "eval"))


def load_evaluation(run_dir: str, eval_name: str = DEFAULT_EVAL) -> Evaluation:
    """Evaluation ``eval_name`` of a run (``find_report``) with every scored checkpoint's report; an empty
    ``Evaluation`` (report None) when the run has none of that name."""
    ev = Evaluation(name=eval_name)
    rep = find_report(run_dir, eval_name)
    if rep:
        with open(rep) as f:
            ev.report = json.load(f)
        ev.report_dir = os.path.dirname(rep)
    seen = set()
    per_ckpt = sorted(glob.glob(os.path.join(evaluation_dir(run_dir, eval_name), "checkpoint-*", "report.json")))
    for p in per_ckpt + ([rep] if rep else []):
        d = os.path.dirname(p)
        if p == rep:
            r = ev.report
        else:
            with open(p) as f:
                r = json.load(f)
        step = _report_step(r, d)
        if step is not None and step not in seen:
            seen.add(step)
            ev.checkpoint_reports.append((step, d, r))
    ev.checkpoint_reports.sort(key=lambda t: t[0])
    return ev


def use_evaluation(run: Run, ev: Optional[Evaluation]) -> None:
    """Make ``ev`` the evaluation the run's ``report``, ``report_dir`` and ``checkpoint_reports`` show."""
    run.eval_name = ev.name if ev else None
    run.report = ev.report if ev else None
    run.report_dir = ev.report_dir if ev else None
    run.checkpoint_reports = list(ev.checkpoint_reports) if ev else []


def _report_step(report: dict, report_dir: str) -> Optional[int]:
    step = ((report.get("settings") or {}).get("inference") or {}).get("checkpoint_step")
    if isinstance(step, int):
        return step
    s = _ckpt_step(report_dir)
    return s if s >= 0 else None


def load_run(path: str, name: Optional[str] = None, eval_name: Optional[str] = None) -> Run:
    """A run directory (or its newest ``v<N>-<time>`` folder) with every evaluation in ``run.evaluations``.
    ``run.report`` is evaluation ``eval_name``'s; by default ``default``'s, else the only named one's (None
    when the run has several named ones and no ``default``: choose with ``eval_name``).
    Raises FileNotFoundError (no directory, no ``logging.jsonl``), ValueError (a line of it is not JSON)."""
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
    run.evaluations = {n: load_evaluation(path, n) for n in evaluation_names(path)}
    if eval_name is None:
        eval_name = DEFAULT_EVAL if DEFAULT_EVAL in run.evaluations or len(run.evaluations) != 1 \
            else next(iter(run.evaluations))
    use_evaluation(run, run.evaluations.get(eval_name))
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


# ---------------------------------------------------------------------------------------------- evaluations
def evaluation_rows(runs: Sequence[Run], eval_name: Optional[str] = None,
                    select_on: Optional[str] = None) -> List[str]:
    """The evaluations compared, one row each: ``[eval_name]``, else every evaluation any run holds (``default``
    first, then by name), less the selection evaluation ``select_on`` when another one is there.
    Raises ValueError naming the evaluations found when ``eval_name`` or ``select_on`` is in no run."""
    found: List[str] = []
    for r in runs:
        found += [n for n in r.evaluations if n not in found]
    found.sort(key=lambda n: (n != DEFAULT_EVAL, n))
    for what, n in (("--eval", eval_name), ("--select-on", select_on)):
        if n is not None and n not in found:
            raise ValueError(f"{what} {n}: no run has an evaluation of that name (found: "
                             f"{', '.join(found) or 'none'}; shell/eval.sh EVAL_NAME={n} writes one)")
    if eval_name is not None:
        return [eval_name]
    rows = [n for n in found if n != select_on]
    return rows or found


def select_checkpoint(run: Run, select_on: str, metric: str = "AP") -> Tuple[int, float]:
    """``(step, value)`` of the run's checkpoint with the highest ``metric`` in evaluation ``select_on`` (the
    earliest such step on a tie), over every scored checkpoint of it (``CKPT=all``).
    Raises ValueError naming the run when that evaluation scored no checkpoint."""
    ev = run.evaluations.get(select_on)
    scored = [(s, float(rep["metrics"][metric])) for s, _, rep in (ev.checkpoint_reports if ev else [])
              if isinstance((rep.get("metrics") or {}).get(metric), (int, float))]
    if not scored:
        raise ValueError(f"{run.name} ({run.path}): evaluation `{select_on}` has no scored checkpoint with "
                         f"{metric} (CKPT=all EVAL_NAME={select_on} bash shell/eval.sh)")
    best = max(v for _, v in scored)
    return min(s for s, v in scored if v == best), best


def evaluation_view(run: Run, eval_name: str, step: Optional[int] = None) -> Run:
    """A copy of ``run`` whose ``report`` is evaluation ``eval_name``'s, at checkpoint ``step`` when given (no
    report when that evaluation did not score that step, or the run has no such evaluation)."""
    view = replace(run)
    ev = run.evaluations.get(eval_name)
    if ev is not None and step is not None:
        d, rep = next(((d, rep) for s, d, rep in ev.checkpoint_reports if s == step), (None, None))
        ev = Evaluation(eval_name, rep, d, ev.checkpoint_reports)
    use_evaluation(view, ev)
    view.eval_name = eval_name
    return view


def selection_overlap(chosen_on: Optional[dict], scored: Optional[dict]) -> Tuple[str, Optional[int]]:
    """Whether the images that chose a checkpoint (the ``settings`` of the selection report) are the scored ones
    (``settings`` of the scored report): ``("same", n)`` the same GT file and image set, ``("overlap", k)`` the
    same GT file and ``k`` shared image ids, ``("held out", 0)`` disjoint ids of the same GT file, ``("other GT
    file", None)`` another GT file (ids not comparable), ``("unknown", None)`` not recorded."""
    a, b = (chosen_on or {}), (scored or {})
    ga, gb = a.get("gt_sha256"), b.get("gt_sha256")
    sa, sb = a.get("image_set") or {}, b.get("image_set") or {}
    if not ga or not gb:
        return "unknown", None
    if ga != gb:
        return "other GT file", None
    if sa.get("sha256") and sa.get("sha256") == sb.get("sha256"):
        return "same", sa.get("count")
    if sa.get("ids") is None or sb.get("ids") is None:
        return "unknown", None
    k = len(set(sa["ids"]) & set(sb["ids"]))
    return ("overlap", k) if k else ("held out", 0)


def checkpoint_selection(runs: Sequence[Run], select_on: Optional[str], rows: Sequence[str]) -> dict:
    """How each row's checkpoint was chosen. Without ``select_on``: each run's report as found (no selection).
    With it: per run the step ``select_checkpoint`` chooses and, per row, how the selection images relate to the
    scored ones (``selection_overlap``, the worst over the runs: same > overlap > unknown > other GT > held
    out); ``test_set_selection`` is True when any run was chosen on images it is scored on.
    Raises ValueError from ``select_checkpoint``."""
    if not select_on:
        return {"on": None, "metric": None, "runs": [], "rows": {}}
    chosen = [select_checkpoint(r, select_on) for r in runs]
    order = ["same", "overlap", "unknown", "other GT file", "held out"]
    out = {"on": select_on, "metric": "AP",
           "runs": [{"run": r.name, "step": s, "AP": v} for r, (s, v) in zip(runs, chosen)], "rows": {}}
    for e in rows:
        verdicts = []
        for r, (s, _) in zip(runs, chosen):
            sel = evaluation_view(r, select_on, s).report
            scored = evaluation_view(r, e, s).report
            if scored is not None:
                verdicts.append(selection_overlap((sel or {}).get("settings"), scored.get("settings")))
        worst = min(verdicts, key=lambda v: order.index(v[0])) if verdicts else ("unknown", None)
        out["rows"][e] = {"images": worst[0], "shared_images": worst[1],
                          "test_set_selection": worst[0] in ("same", "overlap")}
    return out


def _selection_text(sel: dict, row: str, runs: Sequence[Run]) -> str:
    if not sel["on"]:
        steps = sorted({s for s in (_report_step(r.report, r.report_dir or "") for r in runs if r.report)
                        if s is not None})
        last = {r.name: r.train[-1]["_step"] for r in runs if r.train}
        early = [f"{r.name} (step {_report_step(r.report, r.report_dir or '')} of {last[r.name]})" for r in runs
                 if r.report and r.name in last and (_report_step(r.report, r.report_dir or "") or 0) < last[r.name]]
        t = (f"Checkpoint: not chosen by the comparison: each run's report of evaluation `{row}` as found "
             f"(its report.json, else its latest scored checkpoint; step {', '.join(map(str, steps)) or '?'}).")
        if early:
            t += (" Not the last training step for " + ", ".join(early) + ": if that checkpoint was picked by its "
                  "AP on these images, that is **test-set selection**; pick it on held-out images with "
                  "`--select-on NAME` (docs/comparison.md).")
        return t
    v = sel["rows"].get(row) or {"images": "unknown", "shared_images": None, "test_set_selection": False}
    steps = ", ".join(f"{x['run']} {x['step']}" for x in sel["runs"])
    t = (f"Checkpoint: each run's checkpoint with the highest {sel['metric']} in evaluation `{sel['on']}` "
         f"({steps}); evaluation `{row}` is read at that checkpoint. ")
    if v["test_set_selection"]:
        what = ("the same images" if v["images"] == "same" else f"{v['shared_images']} of the same images")
        return t + (f"**TEST-SET SELECTION**: the checkpoint was chosen on {what} it is scored on: the numbers "
                    "are optimistic; choose on a held-out selection split (docs/evaluation.md).")
    return t + {"held out": "The selection images are disjoint from the scored ones (same GT file).",
                "other GT file": "The selection images come from another GT file than the scored ones.",
                "unknown": "Whether the selection images differ from the scored ones is not recorded."}[v["images"]]


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


def run_seeds(run: Run) -> Dict[str, str]:
    """The run's seeds, in the order ``seed``, ``data_seed`` (args.json), ``COORD_INIT_SEED`` (coord_env.json):
    a value not recorded is ``unknown``, an environment seed the run did not set is ``(unset)``."""
    out = {k: str(run.args.get(k, UNKNOWN)) if run.args else UNKNOWN for k in SEED_KEYS}
    for k in ENV_SEED_KEYS:
        out[k] = UNKNOWN if run.env is None else run.env.get(k, "(unset)")
    return out


def seed_label(run: Run) -> str:
    """``seed/data_seed/COORD_INIT_SEED``, e.g. ``42/42/1``."""
    return "/".join(run_seeds(run).values())


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
        keys = sorted(set().union(*(r.args for r in runs)) - EXPECTED_DIFFERENCES - set(SEED_KEYS))
        with_args = [r for r in runs if r.args]
        for k in keys:
            vals = {r.name: r.args.get(k, UNKNOWN) for r in with_args}
            if _differs(vals):
                issues.append(_line(f"`{k}`", vals, "args.json"))
        vals = {r.name: _filtered_kwargs(r.args.get("model_kwargs")) for r in with_args}
        if _differs(vals):
            issues.append(_line("`model_kwargs`", vals, "args.json, outside COORDEXP_*"))
        # Seeds (args.json and coord_env.json): the same set in every group; within a group they differ.
        groups: Dict[str, List[Run]] = {}
        for r in runs:
            groups.setdefault(r.group or r.name, []).append(r)
        for k, where in ([(k, "args.json") for k in sorted(SEED_KEYS)]
                         + [(k, "environment, coord_env.json") for k in ENV_SEED_KEYS]):
            sets = {g: sorted({run_seeds(r)[k] for r in rs}) for g, rs in groups.items()
                    if k in ENV_SEED_KEYS or all(r.args for r in rs)}
            if _differs(sets):
                issues.append(_line(f"`{k}`", sets, f"{where}: the set of values of each group"))
        for g, rs in groups.items():
            tuples = [tuple(run_seeds(r).values()) for r in rs]
            if len(set(tuples)) < len(rs):
                issues.append(f"group {g}: {len(rs)} runs but repeated seeds ({', '.join(seed_label(r) for r in rs)}"
                              f" as {'/'.join(run_seeds(rs[0]))}): not independent replicates")
        # Environment-only settings (coord_env.json), outside the loss flags and the seeds.
        envs = {r.name: ({k: v for k, v in r.env.items()
                          if not k.startswith(LOSS_ENV_PREFIX) and k not in ENV_SEED_KEYS}
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
    from ..eval.bootstrap import interval_covers, paired_bootstrap

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
    n_seeds = {g: len(p) for g, p in matches.items()}
    single = [g for g, n in n_seeds.items() if n < 2]
    covers = interval_covers(list(n_seeds.items()))
    if len(single) == len(n_seeds):
        headline = ("**The intervals cover image sampling only**: every group has one run, so the noise of "
                    "training (seed: initialisation, data order) is in no interval and a difference can be seed "
                    "noise; train several seeds per group to include it (docs/comparison.md).")
    elif not single:
        headline = ("**The intervals cover image sampling and training seeds**: a two-level bootstrap (the runs "
                    "of each group, then the images, paired across groups) with a small-sample correction for "
                    f"{'/'.join(str(n) for n in n_seeds.values())} seeds per group (docs/comparison.md).")
    else:
        headline = ("**The intervals cover image sampling, and training seeds only for the groups with several "
                    f"runs**: {', '.join(single)} {'has' if len(single) == 1 else 'have'} one run, whose seed noise "
                    "is in no interval (docs/comparison.md).")
    return {"baseline": baseline, "n_resamples": n_resamples, "seed": seed, "alpha": 0.05,
            "n_images": len(ref), "n_seeds": n_seeds, "covers": covers, "headline": headline, "groups": out}


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


def _evaluation_table(views: Dict[str, List[Run]], groups: Sequence[str], row_issues: Dict[str, List[str]],
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
            ms = {m: _mean_std([((r.report or {}).get("metrics") or {}).get(m) for r in rs]) for m in DETECTION_METRICS}
            ci = ((boot or {}).get("groups") or {}).get(g, {}).get("AP", {}).get("ci")
            out.append({"evaluation": e, "group": g, "bootstrap": boot,
                        "metrics": {m: {"mean": v[0], "std": v[1]} for m, v in ms.items()},
                        "cells": [e, g, str(sum(1 for r in rs if r.report))]
                        + [_pm(ms[m][0], ms[m][1]) for m in ("AP", "AP50", "AP75")]
                        + [_ci(ci), chosen, "yes" if not row_issues[e] else "NO"]})
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
        same = all(_dotted(rep.get("settings"), k) == _dotted(o.get("settings"), k)
                   for o in reports for k in ("gt_sha256", "image_set.sha256"))
        out.append({"label": label, "report": path, "same_images": same,
                    "metrics": {m: (rep.get("metrics") or {}).get(m) for m in DETECTION_METRICS}})
    return out


def data_section(summary_path: str) -> "Section":
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
    primary = rows_evals[0]
    runs = views[primary]
    colors = figures.group_colors(groups)
    notes: List[str] = []
    row_issues = {e: comparability(v) for e, v in views.items()}
    issues = row_issues[primary]
    unrecorded = not_recorded(runs)
    plots: Dict[str, str] = {}
    sections: List[Section] = []
    by_group = {g: [r for r in runs if r.group == g] for g in groups}

    if data_summary:
        sections.append(data_section(data_summary))
    refs = load_references(references, [r.report for r in runs if r.report])

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
    if boot:
        sec.text(boot["headline"])
    if any(r.report for r in runs):
        sec.text(_selection_text(selection, primary, runs))
        sec.text("COCO bbox metrics (pycocotools) of the scored checkpoint; mean ± std over the runs (seeds) "
                 "of a group. AR100 is the recall at the evaluation's max detections." +
                 (f" Evaluation `{primary}`; every evaluation is a row of the table that follows."
                  if len(rows_evals) > 1 else ""))
        sec.table(["group", "n"] + list(DETECTION_METRICS),
                  [[g, str(sum(1 for r in by_group[g] if r.report))]
                   + [_pm(metric_mean[g][m], metric_std[g][m]) for m in DETECTION_METRICS] for g in groups])
        if refs:
            sec.text("Not trained, on the same images (a task is a task when these stay far below the groups):")
            sec.table(["reference", "same GT and images"] + list(DETECTION_METRICS),
                      [[x["label"], "yes" if x["same_images"] else "**NO**"]
                       + [_fmt(x["metrics"][m]) for m in DETECTION_METRICS] for x in refs])
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
                    row += [f"{d['value']:+.4f}", _ci(d["ci"])]
                    row_images += [_ci(d["ci_images"])]
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
                      [[g, str(b[g]["n_seeds"]), _fmt(b[g]["AP"]["value"]), _ci(b[g]["AP"]["ci"]),
                        _fmt(b[g]["AP50"]["value"]), _ci(b[g]["AP50"]["ci"]), _fmt(b[g]["AP75"]["value"]),
                        _ci(b[g]["AP75"]["ci"])] for g in groups if g in b])
        if len(rows_evals) > 1:
            eval_rows = _evaluation_table(views, groups, row_issues, selection, n_resamples, seed, notes,
                                          {primary: boot})
            sec.text("Every evaluation of the runs, one row per evaluation and group (mean ± std over seeds; the AP "
                     "interval is the two-level bootstrap (seeds, then images) of that evaluation; comparability within the "
                     "evaluation).")
            sec.table(["evaluation", "group", "n", "AP", "AP50", "AP75", "AP 95% CI", "checkpoint", "comparable"],
                      [row["cells"] for row in eval_rows])
            for e in rows_evals[1:]:
                sec.text(f"- `{e}`: " + _selection_text(selection, e, views[e]))
        else:
            eval_rows = _evaluation_table(views, groups, row_issues, selection, 0, seed, notes, {primary: boot})
        png = os.path.join(out_dir, "detection_metrics.png")
        drawn = figures.plot_metric_bars(groups, colors, DETECTION_METRICS, metric_mean, metric_std, png,
                                         "detection metrics (pycocotools), mean ± std over seeds", "COCO metric")
        sec.figure(drawn, png, "detection_metrics", "detection metrics", plots)
    else:
        eval_rows = []
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
                  "seed": r.args.get("seed"), "seeds": run_seeds(r), "loss_config": r.loss_config, "env": r.env,
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
        "evaluation": primary, "selection": selection,
        "evaluations": {e: {"comparable": not row_issues[e], "comparability_issues": row_issues[e],
                            "group_metrics": {row["group"]: row["metrics"] for row in eval_rows if row["evaluation"] == e},
                            "bootstrap": next((row["bootstrap"] for row in eval_rows if row["evaluation"] == e), None),
                            "checkpoint_chosen_on": selection["on"],
                            "test_set_selection": bool((selection["rows"].get(e) or {}).get("test_set_selection"))}
                        for e in rows_evals},
        "bootstrap": boot, "convergence": conv, "references": refs,
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
