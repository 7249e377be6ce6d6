"""Which evaluations are compared and at which checkpoint (no ms-swift import).

``evaluation_rows`` (the evaluations compared), ``select_checkpoint`` and ``checkpoint_selection`` (each run's
checkpoint chosen by its AP in a selection evaluation), ``evaluation_view`` (a run read at one evaluation and
step), ``selection_overlap`` (selection images against scored ones) and ``selection_text`` (what the summary says).
"""
from __future__ import annotations

from dataclasses import replace
from typing import List, Optional, Sequence, Tuple

from .loading import DEFAULT_EVAL, Evaluation, Run, report_step, use_evaluation


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


def selection_text(sel: dict, row: str, runs: Sequence[Run]) -> str:
    if not sel["on"]:
        steps = sorted({s for s in (report_step(r.report, r.report_dir or "") for r in runs if r.report)
                        if s is not None})
        last = {r.name: r.train[-1]["_step"] for r in runs if r.train}
        early = [f"{r.name} (step {report_step(r.report, r.report_dir or '')} of {last[r.name]})" for r in runs
                 if r.report and r.name in last and (report_step(r.report, r.report_dir or "") or 0) < last[r.name]]
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
