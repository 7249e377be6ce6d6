"""What a run and an evaluation were made with, beyond ``args.json`` (no ms-swift import).

Some settings reach a run through the environment only (``COORD_INIT_SEED``, ``COORD_PROMPT``, the
``COORDEXP_*`` loss keys when set in the shell or a YAML ``ENV:`` block; ms-swift's image-resolution
variables): ``args.json`` never shows them. The plugin writes them to ``<output_dir>/coord_env.json``
when the trainer builds the loss, ``coord-eval`` writes the ones of the evaluation into
``report.json`` (``settings.env``), and ``coord-compare`` compares both.

An evaluation is also identified by its ground truth (SHA-256 of the GT file), the set of images it
scored (count and SHA-256 of the sorted ids), the checkpoint and its step, and the inference image
resolution; ``shell/eval.sh`` writes the inference side to ``infer_settings.json`` next to the
result file and ``coord-eval`` copies it into ``settings.inference``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Dict, Iterable, Mapping, Optional

ENV_FILE = "coord_env.json"
INFER_SETTINGS_FILE = "infer_settings.json"
ENV_PREFIXES = ("COORD_", "COORDEXP_")
# ms-swift / qwen-vl-utils read the image resolution from these when no flag is given.
RESOLUTION_ENV = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM")
# Where files go, not how numbers are made: never a reason to call runs not comparable.
PATH_ENV = ("COORD_DECODING_RECORD", "COORD_DATA_ROOT", "COORD_IMAGE_CHECK_CACHE")


def env_settings(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment keys that change a run or an evaluation: ``COORD_*``, ``COORDEXP_*`` and the
    resolution variables (``RESOLUTION_ENV``), sorted by name."""
    environ = os.environ if environ is None else environ
    return {k: str(v) for k, v in sorted(environ.items()) if (k.startswith(ENV_PREFIXES) or k in RESOLUTION_ENV) and k not in PATH_ENV}


def write_env_settings(output_dir: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """Write ``env_settings`` to ``<output_dir>/coord_env.json``; returns the path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, ENV_FILE)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"env": env_settings(environ)}, f, indent=2)
    return path


def read_env_settings(run_dir: str) -> Optional[Dict[str, str]]:
    """The ``env`` of ``<run_dir>/coord_env.json``, or None when the run has none (an older run)."""
    path = os.path.join(run_dir, ENV_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    env = data.get("env") if isinstance(data, dict) else None
    if not isinstance(env, dict):
        raise ValueError(f"{path}: expected {{\"env\": {{...}}}}")
    return {str(k): str(v) for k, v in env.items()}


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def image_set_digest(image_ids: Iterable[int]) -> Dict[str, object]:
    """``{"count", "sha256", "ids"}`` of a set of image ids: the digest (of the sorted ids, comma-joined decimal)
    compares two evaluations at a glance, the ids let the comparison re-score both on the same images."""
    ids = sorted({int(i) for i in image_ids})
    return {"count": len(ids), "sha256": hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest(), "ids": ids}


def checkpoint_step(path: Optional[str]) -> Optional[int]:
    """The global step of a checkpoint directory: ``trainer_state.json``'s ``global_step``, else the
    ``checkpoint-N`` suffix of its name; None when neither is there."""
    if not path:
        return None
    state = os.path.join(path, "trainer_state.json")
    if os.path.isfile(state):
        try:
            with open(state, encoding="utf-8") as f:
                step = json.load(f).get("global_step")
            if isinstance(step, int):
                return step
        except ValueError:
            pass
    m = re.search(r"checkpoint-(\d+)$", os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def read_inference_settings(results_path: str) -> Optional[dict]:
    """``infer_settings.json`` next to a result file (written by ``shell/eval.sh``), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(results_path)), INFER_SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def train_max_pixels(checkpoint: str) -> Optional[int]:
    """The ``max_pixels`` a run trained with: the checkpoint's ``args.json`` (ms-swift writes one into every
    checkpoint), else the run directory's; None when neither has it."""
    for cand in (os.path.join(checkpoint, "args.json"),
                 os.path.join(os.path.dirname(os.path.normpath(checkpoint)), "args.json")):
        if os.path.isfile(cand):
            with open(cand, encoding="utf-8") as f:
                value = json.load(f).get("max_pixels")
            if value is not None:
                return int(value)
    return None


def write_inference_settings(path: str, checkpoint: str, max_pixels, source: str,
                             environ: Optional[Mapping[str, str]] = None) -> dict:
    """The inference side of an evaluation (``shell/eval.sh`` calls it through ``coord-infer-settings``):
    checkpoint path and step, ``max_pixels`` and where it came from (``source``), the run's training
    ``max_pixels`` when its ``args.json`` is found, and the environment settings."""
    data = {"checkpoint": os.path.abspath(checkpoint), "checkpoint_step": checkpoint_step(checkpoint),
            "max_pixels": None if max_pixels in (None, "") else int(max_pixels), "max_pixels_source": source,
            "train_max_pixels": train_max_pixels(checkpoint), "env": env_settings(environ)}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    return data


def evaluation_provenance(gt_path: str, image_ids: Iterable[int], results_path: str,
                          environ: Optional[Mapping[str, str]] = None) -> dict:
    """The keys ``coord-eval`` adds to ``report.json`` ``settings``: ``gt_sha256``, ``image_set``,
    ``inference`` (``infer_settings.json`` next to the results, ``{}`` when absent) and ``env``."""
    return {"gt_sha256": file_sha256(gt_path), "image_set": image_set_digest(image_ids),
            "inference": read_inference_settings(results_path) or {}, "env": env_settings(environ)}


def report_matches(report_path: str, decode: str, score: str, max_dets: int,
                   decoding: Optional[str] = None, infer_backend: Optional[str] = None) -> bool:
    """Whether a finished ``report.json`` was scored with these settings (so it can be reused); ``decoding`` and
    ``infer_backend`` (how ``swift infer`` generated) are compared when given."""
    try:
        with open(report_path, encoding="utf-8") as f:
            s = json.load(f).get("settings", {})
    except (OSError, ValueError):
        return False
    if decoding is not None and s.get("decoding") != decoding:
        return False
    if infer_backend is not None and s.get("infer_backend") != infer_backend:
        return False
    return s.get("decode") == decode and s.get("score") == score and int(s.get("max_dets", -1)) == int(max_dets)
