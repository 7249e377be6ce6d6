"""Finding and reading runs and their evaluations (no ms-swift import).

``load_run`` reads a run directory into a ``Run`` with every ``Evaluation`` it holds (``evaluation_names``,
``find_report``, ``load_evaluation``); ``use_evaluation`` chooses the one shown; ``curve`` and ``common_curve``
read logged values along the steps.
"""
from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...provenance import checkpoint_name_step, read_env_settings

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


def _name_step_or_minus_one(path: str) -> int:
    step = checkpoint_name_step(path)
    return -1 if step is None else step


def _latest_checkpoint_report(eval_dir: str) -> Optional[str]:
    per_ckpt = sorted(glob.glob(os.path.join(eval_dir, "checkpoint-*", "report.json")),
                      key=lambda p: _name_step_or_minus_one(os.path.dirname(p)))
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
        step = report_step(r, d)
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


def report_step(report: dict, report_dir: str) -> Optional[int]:
    step = ((report.get("settings") or {}).get("inference") or {}).get("checkpoint_step")
    if isinstance(step, int):
        return step
    return checkpoint_name_step(report_dir) if report_dir else None


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
