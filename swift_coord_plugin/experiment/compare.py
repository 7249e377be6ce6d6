"""Compare ablation runs: loss curves, detection metrics, convergence, and a comparability check.

A run is an ms-swift output directory (``--add_version false`` or the ``v<N>-<time>`` folder) holding
``logging.jsonl``, ``args.json``, the plugin's ``coordexp_config.json`` and, when it was scored,
``eval/report.json`` written by ``coord-eval`` (or ``report.json`` in any direct sub-folder).
"""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

# Curves on shared axes: (key in logging.jsonl, title).
LOSS_CURVES = (("loss", "total loss"), ("text_loss", "text CE"), ("coord_ce_loss", "coordinate CE"),
               ("coord_loss", "geometric (alpha*L1 + beta*(1-GIoU))"))
DETECTION_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
# args.json keys that legitimately differ between the runs of one ablation.
EXPECTED_DIFFERENCES = {"loss_type", "output_dir", "logging_dir", "run_name", "training_args", "model_info",
                        "model_meta", "add_version", "model_kwargs"}
LOSS_ENV_PREFIX = "COORDEXP_"
DEFAULT_FRACTION = 0.9


@dataclass
class Run:
    path: str
    name: str
    train: List[dict] = field(default_factory=list)
    eval: List[dict] = field(default_factory=list)
    args: Dict[str, Any] = field(default_factory=dict)
    loss_config: Dict[str, Any] = field(default_factory=dict)
    report: Optional[dict] = None


def _step(row: dict) -> Optional[int]:
    gs = row.get("global_step/max_steps")
    if isinstance(gs, str) and "/" in gs:
        try:
            return int(gs.split("/")[0])
        except ValueError:
            return None
    return row.get("step")


def find_report(run_dir: str) -> Optional[str]:
    for cand in [os.path.join(run_dir, "eval", "report.json"), os.path.join(run_dir, "report.json")]:
        if os.path.isfile(cand):
            return cand
    found = sorted(glob.glob(os.path.join(run_dir, "*", "report.json")))
    return found[0] if found else None


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
    rep = find_report(path)
    if rep:
        with open(rep) as f:
            run.report = json.load(f)
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


def steps_to_fraction(xs: Sequence[int], ys: Sequence[float], fraction: float = DEFAULT_FRACTION,
                      higher_is_better: bool = False) -> Optional[int]:
    """First step that covers ``fraction`` of the way from the first to the final value (None if no data)."""
    if len(ys) < 2:
        return xs[0] if xs else None
    first, final = ys[0], ys[-1]
    target = first + fraction * (final - first)
    for x, y in zip(xs, ys):
        if (y >= target) if (higher_is_better or final > first) else (y <= target):
            return x
    return xs[-1]


def _filtered_kwargs(v) -> Any:
    if isinstance(v, dict):
        return {k: x for k, x in v.items() if not str(k).upper().startswith(LOSS_ENV_PREFIX)}
    return v


def comparability(runs: Sequence[Run]) -> List[str]:
    """Human-readable differences between runs outside the loss flags (empty list: comparable)."""
    issues = []
    if len(runs) < 2:
        return issues
    ref = runs[0]
    for run in runs[1:]:
        keys = (set(ref.args) | set(run.args)) - EXPECTED_DIFFERENCES
        diff = sorted(k for k in keys if ref.args.get(k) != run.args.get(k))
        if _filtered_kwargs(ref.args.get("model_kwargs")) != _filtered_kwargs(run.args.get("model_kwargs")):
            diff.append("model_kwargs (outside COORDEXP_*)")
        for k in diff:
            issues.append(f"{run.name} vs {ref.name}: `{k}` differs ({_short(ref.args.get(k))} vs "
                          f"{_short(run.args.get(k))})")
        if not ref.args or not run.args:
            issues.append(f"{run.name} vs {ref.name}: args.json missing, cannot check")
    # Same training length.
    last = {r.name: (r.train[-1]["_step"] if r.train else None) for r in runs}
    if len(set(last.values())) > 1:
        issues.append(f"runs stopped at different steps: {last}")
    return issues


def _short(v, n: int = 60) -> str:
    s = json.dumps(v, default=str) if not isinstance(v, str) else v
    return s if len(s) <= n else s[: n - 3] + "..."


def _plot_curves(runs: Sequence[Run], which: str, out_png: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prefix = "eval_" if which == "eval" else ""
    panels = [(prefix + k, t) for k, t in LOSS_CURVES]
    if not any(curve(getattr(r, which), k)[0] for r in runs for k, _ in panels):
        return False
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), sharex=True)
    for ax, (key, title) in zip(axes.flat, panels):
        for run in runs:
            xs, ys = curve(getattr(run, which), key)
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=run.name)
        ax.set_title(f"{which}: {title}  [{key}]", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged by any run", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return True


def _plot_metrics(runs: Sequence[Run], out_png: str) -> bool:
    scored = [r for r in runs if r.report and r.report.get("metrics")]
    if not scored:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(scored)
    for i, run in enumerate(scored):
        vals = [max(float(run.report["metrics"].get(m, float("nan"))), 0.0) for m in DETECTION_METRICS]
        ax.bar([j + i * width for j in range(len(DETECTION_METRICS))], vals, width, label=run.name)
    ax.set_xticks([j + width * (len(scored) - 1) / 2 for j in range(len(DETECTION_METRICS))])
    ax.set_xticklabels(DETECTION_METRICS)
    ax.set_ylabel("COCO metric")
    ax.set_title("detection metrics (pycocotools)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return True


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def compare_runs(run_dirs: Sequence[str], out_dir: str, names: Optional[Sequence[str]] = None,
                 fraction: float = DEFAULT_FRACTION) -> Dict[str, Any]:
    """Write the plots, ``summary.md`` and ``summary.json`` into ``out_dir``; return the summary."""
    os.makedirs(out_dir, exist_ok=True)
    runs = [load_run(p, names[i] if names else None) for i, p in enumerate(run_dirs)]
    plots = {}
    for which in ("train", "eval"):
        png = os.path.join(out_dir, f"{which}_losses.png")
        if _plot_curves(runs, which, png):
            plots[f"{which}_losses"] = os.path.basename(png)
    png = os.path.join(out_dir, "detection_metrics.png")
    if _plot_metrics(runs, png):
        plots["detection_metrics"] = os.path.basename(png)

    rows = []
    for run in runs:
        eval_xs, eval_ys = curve(run.eval, "eval_loss")
        train_xs, train_ys = curve(run.train, "loss")
        if eval_xs:
            conv, conv_on = steps_to_fraction(eval_xs, eval_ys, fraction), "eval_loss"
        else:
            conv, conv_on = steps_to_fraction(train_xs, train_ys, fraction), "loss"
        metrics = (run.report or {}).get("metrics") or {}
        rows.append({
            "name": run.name, "path": run.path, "loss_type": run.args.get("loss_type"),
            "loss_config": run.loss_config, "metrics": {m: metrics.get(m) for m in DETECTION_METRICS},
            "final_train_loss": train_ys[-1] if train_ys else None,
            "final_eval_loss": eval_ys[-1] if eval_ys else None,
            "steps": train_xs[-1] if train_xs else None,
            "convergence_step": conv, "convergence_on": conv_on,
            "eval_settings": (run.report or {}).get("settings"),
        })
    issues = comparability(runs)
    summary = {"runs": rows, "comparable": not issues, "comparability_issues": issues, "plots": plots,
               "convergence_definition": (f"first logged step that covers {fraction:.0%} of the way from the first "
                                          "to the final value of eval_loss (train loss when no eval was logged)")}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(format_summary(summary))
    return summary


def format_summary(summary: Dict[str, Any]) -> str:
    runs = summary["runs"]
    lines = ["# Ablation comparison", ""]
    if summary["comparable"]:
        lines.append("All runs share every setting outside the loss flags (args.json compared key by key).")
    else:
        lines.append("**NOT COMPARABLE**: the runs differ outside the loss flags:")
        lines += [f"- {i}" for i in summary["comparability_issues"]]
    lines += ["", "## Detection metrics", "",
              "| run | loss_type | " + " | ".join(DETECTION_METRICS) + " |",
              "|---|---|" + "---|" * len(DETECTION_METRICS)]
    for r in runs:
        lines.append(f"| {r['name']} | {r['loss_type'] or 'cross_entropy'} | "
                     + " | ".join(_fmt(r["metrics"].get(m)) for m in DETECTION_METRICS) + " |")
    flag_keys = sorted({k for r in runs for k in (r["loss_config"] or {})})
    if flag_keys:
        lines += ["", "## Loss flags", "", "| run | " + " | ".join(flag_keys) + " |",
                  "|---|" + "---|" * len(flag_keys)]
        for r in runs:
            lines.append(f"| {r['name']} | " + " | ".join(_fmt((r["loss_config"] or {}).get(k)) for k in flag_keys)
                         + " |")
    lines += ["", "## Training", "", "| run | steps | final train loss | final eval loss | convergence step |",
              "|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['name']} | {_fmt(r['steps'])} | {_fmt(r['final_train_loss'])} | "
                     f"{_fmt(r['final_eval_loss'])} | {_fmt(r['convergence_step'])} ({r['convergence_on']}) |")
    lines += ["", f"Convergence: {summary['convergence_definition']}.", ""]
    for key, png in summary["plots"].items():
        lines.append(f"![{key}]({png})")
    return "\n".join(lines) + "\n"
