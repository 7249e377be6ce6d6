"""Groups, seeds and comparability of runs (no ms-swift import).

``assign_groups`` (which runs are seeds of one group), ``run_seeds`` / ``seed_label`` (a run's seeds),
``comparability`` (every difference in a setting that changes the numbers) and ``not_recorded`` (settings no
run recorded).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

from .loading import Run

# args.json keys that legitimately differ between the runs of one ablation.
EXPECTED_DIFFERENCES = {"loss_type", "output_dir", "logging_dir", "run_name", "training_args", "model_info",
                        "model_meta", "add_version", "model_kwargs"}
SEED_KEYS = ("seed", "data_seed")
# coord_env.json keys that are seeds too (the new rows' initialisation): they may differ within a group.
ENV_SEED_KEYS = ("COORD_INIT_SEED",)
LOSS_ENV_PREFIX = "COORDEXP_"
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
def dotted(d: Optional[dict], key: str):
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
            vals = {r.name: dotted(r.report.get("settings"), key) for r in scored}
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
        if scored and all(dotted(r.report.get("settings"), key) == UNKNOWN for r in scored):
            out.append(f"{what} (`{key}`)")
    if runs and all(r.env is None for r in runs):
        out.append("environment settings (coord_env.json)")
    return out

