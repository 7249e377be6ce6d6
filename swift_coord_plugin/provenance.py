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
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

from . import environment

ENV_FILE = "coord_env.json"
INFER_SETTINGS_FILE = "infer_settings.json"
ENV_PREFIXES = ("COORD_", "COORDEXP_")
# ms-swift / qwen-vl-utils read the image resolution from these when no flag is given.
RESOLUTION_ENV = ("MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM")
# Where files go, not how numbers are made: never a reason to call runs not comparable.
PATH_ENV = (environment.DECODING_RECORD_ENV, environment.DATA_ROOT_ENV, environment.IMAGE_CHECK_CACHE_ENV)


def env_settings(environ: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment keys that change a run or an evaluation: ``COORD_*``, ``COORDEXP_*`` and the
    resolution variables (``RESOLUTION_ENV``), sorted by name."""
    environ = environment.current(environ)
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


def checkpoint_name_step(path: str) -> Optional[int]:
    """N of a path whose last part is ``checkpoint-N`` (a trailing separator allowed), else None."""
    m = re.search(r"checkpoint-(\d+)$", os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: str) -> List[str]:
    """The ``checkpoint-N`` folders of a run folder in step order (N as a number: ``checkpoint-9`` before
    ``checkpoint-10``; equal N by name), each as ``os.path.join(run_dir, name)``. Entries whose name is not
    ``checkpoint-N`` (``checkpoint-N-merged``, ``eval``, ...) and files are left out; ``[]`` when there is
    none or ``run_dir`` does not exist. ``shell/eval.sh`` and ``shell/ablation.sh`` use it through
    ``python -m swift_coord_plugin.cli.checkpoints``."""
    try:
        names = os.listdir(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for name in names:
        step = checkpoint_name_step(name) if name.startswith("checkpoint-") else None
        if step is not None and os.path.isdir(os.path.join(run_dir, name)):
            found.append((step, name))
    return [os.path.join(run_dir, name) for _, name in sorted(found)]


def last_checkpoint(run_dir: str) -> Optional[str]:
    """The ``checkpoint-N`` folder of ``run_dir`` with the largest N (``list_checkpoints``), or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


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
    return checkpoint_name_step(path)


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


def inference_identity(checkpoint: str, max_pixels, *, decoding: Optional[str] = None,
                       infer_backend: Optional[str] = None, val_data: Optional[str] = None,
                       infer_config: Optional[str] = None, swift_args: Sequence[str] = (),
                       environ: Optional[Mapping[str, str]] = None) -> dict:
    """What makes the rows of an inference what they are (``INFERENCE_IDENTITY`` keys): the checkpoint's weights
    (``checkpoint_digest``) and step, ``max_pixels``, the decoding mode and backend, the samples run on
    (``val_data_sha256``: SHA-256 of the VAL_DATA file), the ``swift infer`` configuration file (SHA-256) and
    extra flags, and the environment settings (``env_settings``). Raises ``FileNotFoundError`` for a missing
    checkpoint, VAL_DATA or configuration file."""
    return {"checkpoint_digest": checkpoint_digest(checkpoint), "checkpoint_step": checkpoint_step(checkpoint),
            "max_pixels": None if max_pixels in (None, "") else int(max_pixels),
            "decoding": decoding, "infer_backend": infer_backend,
            "val_data_sha256": file_sha256(val_data) if val_data else None,
            "infer_config_sha256": file_sha256(infer_config) if infer_config else None,
            "swift_args": list(swift_args), "env": env_settings(environ)}


INFERENCE_IDENTITY = ("checkpoint_digest", "checkpoint_step", "max_pixels", "decoding", "infer_backend",
                      "val_data_sha256", "infer_config_sha256", "swift_args", "env")


def write_inference_settings(path: str, checkpoint: str, max_pixels, source: str,
                             environ: Optional[Mapping[str, str]] = None, *, coord_eval_args: str = "",
                             **identity) -> dict:
    """The inference side of an evaluation (``shell/eval.sh`` calls it through ``cli.infer_settings write``):
    checkpoint path, ``max_pixels`` and where it came from (``source``), the run's training ``max_pixels`` when
    its ``args.json`` is found, the ``inference_identity`` (``identity``: its keyword arguments) and the
    ``coord-eval`` options eval.sh adds (``coord_eval_args``, ``EVAL_ARGS``)."""
    data = {"checkpoint": os.path.abspath(checkpoint), "max_pixels_source": source,
            "train_max_pixels": train_max_pixels(checkpoint),
            **inference_identity(checkpoint, max_pixels, environ=environ, **identity),
            "coord_eval_args": coord_eval_args}
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


# ------------------------------------------------------------------------------------------- reuse of finished work
# Weight files whose size and modification time identify a checkpoint (a retrained ``checkpoint-N`` writes new ones).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")
NOT_RECORDED = "(not recorded)"


def checkpoint_digest(path: str) -> str:
    """Identity of a checkpoint's weights: SHA-256 (hex) of the name, size in bytes and modification time (ns) of
    each weight file (``*.safetensors``, ``*.bin``, ``*.pth`` at its top level; ``index.json`` files included).

    Sizes and times, not bytes: reading 4-60 GB per checkpoint on every re-run would cost minutes, and a retrained
    or copied-over ``checkpoint-N`` has new times. Raises ``FileNotFoundError`` when ``path`` is not a folder."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        if name.endswith(WEIGHT_SUFFIXES) or name.endswith(".index.json"):
            st = os.stat(os.path.join(path, name))
            h.update(f"{name}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _recorded(d, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return NOT_RECORDED
        d = d[part]
    return d


def _short(v) -> str:
    s = v if v == NOT_RECORDED else json.dumps(v, default=str)
    return s if len(s) <= 80 else s[:77] + "..."


def _differences(key: str, have, want, out: list) -> None:
    """Append one line per differing leaf (dict keys and list items named, e.g. ``env.COORD_X``, ``command[3]``)."""
    if json.dumps(have, sort_keys=True, default=str) == json.dumps(want, sort_keys=True, default=str):
        return
    if isinstance(have, dict) and isinstance(want, dict):
        for k in sorted(set(have) | set(want)):
            _differences(f"{key}.{k}", have.get(k, NOT_RECORDED), want.get(k, NOT_RECORDED), out)
    elif isinstance(have, list) and isinstance(want, list):
        if len(have) == len(want):
            for i, (h, w) in enumerate(zip(have, want)):
                _differences(f"{key}[{i}]", h, w, out)
        else:  # from the first item that differs
            i = next((i for i, (h, w) in enumerate(zip(have, want)) if h != w), min(len(have), len(want)))
            out.append(f"{key}[{i}:]: recorded {_short(have[i:])}, asked {_short(want[i:])}")
    else:
        out.append(f"{key}: recorded {_short(have)}, asked {_short(want)}")


def reuse_mismatches(recorded_path: str, wanted: Mapping[str, object]) -> list:
    """Why a finished piece of work (a ``report.json``, a shard's or a stage's stamp: a JSON object) may NOT be
    reused for the one asked: one line per key of ``wanted`` (dotted keys into the file's object, e.g.
    ``"settings.inference.max_pixels"``) whose recorded value differs, naming both values. An empty list means a
    full match: reuse it. A missing or unreadable file is one reason; a key the file does not record is a
    mismatch too (an older report is re-scored rather than trusted). This is the one reuse rule of the project:
    ``shell/eval.sh`` (``CKPT=all`` and sharded inference) and ``shell/ablation.sh`` call it."""
    try:
        with open(recorded_path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError:
        return [f"{recorded_path}: not there"]
    except ValueError as e:
        return [f"{recorded_path}: not valid JSON ({e})"]
    out: list = []
    for key, want in wanted.items():
        _differences(key, _recorded(data, key), want, out)
    return out


def evaluation_wanted(inference: Mapping[str, object], gt_sha256: str, *, decode: Optional[str] = None,
                      score: Optional[str] = None, max_dets: Optional[int] = None,
                      coord_eval_args: Optional[str] = None) -> Dict[str, object]:
    """The dotted keys ``reuse_mismatches`` checks in a ``report.json`` (or a shard's stamp, written in the same
    shape): the GT file's SHA-256 and every ``INFERENCE_IDENTITY`` key of ``inference`` (the record
    ``inference_identity`` builds); with ``decode`` given, also the scoring side (decode, score, max detections,
    the ``coord-eval`` options, and the decoding mode and backend coord-eval resolved)."""
    wanted: Dict[str, object] = {"settings.gt_sha256": gt_sha256}
    wanted.update({f"settings.inference.{k}": inference.get(k) for k in INFERENCE_IDENTITY})
    if decode is not None:
        wanted.update({"settings.decode": decode, "settings.score": score, "settings.max_dets": int(max_dets),
                       "settings.decoding": inference.get("decoding"),
                       "settings.infer_backend": inference.get("infer_backend"),
                       "settings.inference.coord_eval_args": coord_eval_args or ""})
    return wanted
