"""Shared helpers of the test suite: the real ms-swift CLI on the tiny model, one-step SGD runs, the toy loss
batch with its reference formulas, and toy COCO files."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torchvision.ops import distance_box_iou_loss, generalized_box_iou

from swift_coord_plugin import provenance
from swift_coord_plugin.core.vocab import CoordVocab
from swift_coord_plugin.eval.synthetic import quantised_objects, response_row

# --- ms-swift CLI on the tiny model ---
REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "swift_coord_plugin" / "entry" / "swift_plugin.py")
SAMPLE_DIR = REPO / "assets" / "coco_sample"
SAMPLE_JSONL = SAMPLE_DIR / "samples.jsonl"
SHARED_DATA = REPO.parent / "shared" / "data"
SWIFT = str(Path(sys.executable).parent / "swift")
# Small images keep the tiny model's sequences short (about 70 visual tokens for a 640x480 image).
MAX_PIXELS = "65536"


def _worker_port() -> str:
    """torchrun's rendezvous port for this test process: pytest-xdist workers (``gw0``, ``gw1``, ...) run
    multi-process launches at the same time, so each gets its own (tests that pass ``MASTER_PORT`` keep theirs)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    return str(29500 + 37 * n)


def swift_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                "PYTHONUNBUFFERED": "1", "MAX_PIXELS": MAX_PIXELS})
    env.setdefault("MASTER_PORT", _worker_port())
    env.update(extra or {})
    return env


def run_swift(subcommand: str, args: List[str], cwd, env: Optional[Dict[str, str]] = None, timeout: int = 600,
              check: bool = True, launcher_env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``swift <subcommand> <args>`` for real; on failure the error shows the end of its output."""
    cmd = [SWIFT, subcommand, *[str(a) for a in args]]
    full_env = swift_env(env)
    full_env.update(launcher_env or {})
    proc = subprocess.run(cmd, cwd=str(cwd), env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    Path(cwd, f"swift-{subcommand}.log").write_text(proc.stdout)
    if check and proc.returncode != 0:
        raise AssertionError(f"swift {subcommand} failed ({proc.returncode}):\n{' '.join(cmd)}\n"
                             f"...{proc.stdout[-6000:]}")
    return proc


def base_sft_args(model_dir, dataset, output_dir, *, steps: int = 3, batch_size: int = 2, tuner: str = "full",
                  loss_type: Optional[str] = None, extra: Optional[List[str]] = None) -> List[str]:
    """The standard flags of a tiny CPU training run with the plugin (fp32, no version suffix)."""
    args = [
        "--model", model_dir, "--model_type", "qwen3_vl_coord", "--template", "qwen3_vl_coord",
        "--external_plugins", PLUGIN, "--dataset", f"coord:{dataset}",
        "--tuner_type", tuner, "--torch_dtype", "float32", "--fp16", "false", "--bf16", "false",
        "--check_model", "false", "--max_steps", str(steps), "--per_device_train_batch_size", str(batch_size),
        "--gradient_accumulation_steps", "1", "--learning_rate", "1e-4", "--output_dir", output_dir,
        "--add_version", "false", "--save_only_model", "true", "--save_steps", str(steps), "--logging_steps", "1",
        "--dataloader_num_workers", "0", "--report_to", "none", "--seed", "42", "--data_seed", "42",
        "--max_pixels", MAX_PIXELS, "--dataset_num_proc", "1",
    ]
    if loss_type:
        args += ["--loss_type", loss_type]
    return args + list(extra or [])


def base_infer_args(ckpt_dir, dataset, result_path, *, max_new_tokens: int = 64, extra=None) -> List[str]:
    return ["--model", ckpt_dir, "--val_dataset", f"coord:{dataset}", "--infer_backend", "transformers",
            "--max_new_tokens", str(max_new_tokens), "--temperature", "0", "--result_path", result_path,
            "--max_pixels", MAX_PIXELS, "--max_batch_size", "4"] + list(extra or [])


def last_checkpoint(output_dir) -> str:
    ckpt = provenance.last_checkpoint(str(output_dir))
    assert ckpt, f"no checkpoint in {output_dir}: {os.listdir(output_dir)}"
    return ckpt


def rows_digests(log: str) -> List[str]:
    """The ``rows digest`` each process of a ``swift sft`` run printed (``swift_ext.model.rows_digest``)."""
    return re.findall(r"rows digest ([0-9a-f]{16})", log)


def read_jsonl(path) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def absolute_samples(src, dst) -> str:
    """Copy a unified-sample JSONL with its relative image paths made absolute."""
    src = Path(src)
    rows = read_jsonl(src)
    for r in rows:
        if not os.path.isabs(r["image"]):
            r["image"] = str((src.parent / r["image"]).resolve())
    Path(dst).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(dst)


def shared_data_or_skip(*parts) -> Path:
    """A path under ../shared/data; skip outside CI when absent, fail under CI."""
    import pytest

    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise AssertionError(f"CI needs the shared COCO data at {path}")
        pytest.skip(f"needs the shared COCO data at {path} (present in CI)")
    return path


# --- one-step SGD runs ---
# One plain-SGD step (lr 1, no clipping, no decay): the weight update is the gradient.
SGD_ONE_STEP = ["--optim", "sgd", "--learning_rate", "1.0", "--lr_scheduler_type", "constant", "--warmup_ratio", "0",
                "--max_grad_norm", "0", "--weight_decay", "0", "--save_steps", "1"]


def checkpoint_weights(out):
    """The weights saved by a one-step run in ``out`` (``checkpoint-1/model.safetensors``), by name."""
    return load_file(os.path.join(out, "checkpoint-1", "model.safetensors"))


def train_logs(out):
    """The training rows (those with a ``loss``) of ``out/logging.jsonl``."""
    return [r for r in read_jsonl(os.path.join(out, "logging.jsonl")) if "loss" in r]


def assert_same_update(ref, other, base, rtol=1e-4):
    """``other`` made the same one-step update as ``ref``, relative to the size of that update."""
    moved = 0
    for name, w in ref.items():
        w0 = base[name]
        rows = min(w.shape[0], w0.shape[0])  # the resized embedding: compare the rows of the base model
        update = (w[:rows] - w0[:rows]).abs().max().item()
        diff = (w - other[name]).abs().max().item()
        assert diff <= rtol * update + 1e-8, f"{name}: weights differ by {diff:.3g}, update {update:.3g}"
        moved += update > 0
    assert moved > 10  # the step did train the language model


def base_weights(model_dir):
    """The weights of the model a run started from, by name."""
    return load_file(os.path.join(model_dir, "model.safetensors"))


# --- toy loss batch and the loss written out ---
# A toy vocabulary (K coordinate bins from CS, object start S and end E; I is the ignored label) and two rows.
K = 1000
CS, S, E = 40, 1, 2
DESC, SPACE, EOT = 5, 6, 7
V = CS + K + 24
I = -100
VOCAB = CoordVocab(coord_start=CS, obj_start=S, obj_end=E)


def build_row(objects, prompt=3, tail=(EOT,), total=None, close_last=True):
    """Labels of one sequence and, independently of the parser, the target positions of each box.

    Returns (labels, boxes) with boxes = [(positions of x1..y2 in the logits, bins)].
    """
    labels = [I] * prompt
    boxes = []
    for j, bins in enumerate(objects):
        labels += [S, DESC]
        pos = []
        for k in bins:
            pos.append(len(labels) - 1)  # logits[t] predicts labels[t + 1]
            labels.append(CS + k)
        labels.append(SPACE)
        if close_last or j < len(objects) - 1:
            labels.append(E)
        if len(bins) == 4:
            boxes.append((pos, list(bins)))
    labels += list(tail)
    if total is not None:
        labels += [I] * (total - len(labels))
    return labels, boxes


def make_logits(B, T, seed=0, dtype=torch.float32, boxes=()):
    """Random logits; at the given box rows the coordinate logits favour low x1/y1 and high x2/y2 bins, so
    that the CoordExp boxes are valid (x2 > x1) and torchvision's GIoU can serve as the reference."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    ramp = torch.linspace(-4.0, 4.0, K, dtype=torch.float64)
    for b, pos in boxes:
        for j, t in enumerate(pos):
            z[b, t, CS:CS + K] += -ramp if j < 2 else ramp
    return z.to(dtype).requires_grad_(True)


def reference_loss(logits, labels, boxes, cfg, num_items):
    """The loss written out directly from its definition, independent of the parser and of the fused
    cross-entropy: F.cross_entropy, softmax over the coordinate slice, torchvision's GIoU."""
    Bn, T, Vn = logits.shape
    x = logits.double()
    targets = torch.full_like(labels, I)
    targets[:, :-1] = labels[:, 1:]
    ce = F.cross_entropy(x.reshape(-1, Vn), targets.reshape(-1), ignore_index=I, reduction="none").reshape(Bn, T)
    is_coord = (targets >= CS) & (targets < CS + K)
    text = (targets != I) & ~is_coord
    total = (ce * text).sum()
    if cfg.use_coord_ce:
        total = total + cfg.lambda_coord_ce * (ce * is_coord).sum()
    k = torch.arange(K, dtype=torch.float64)
    if cfg.use_coordexp_loss:
        for b, pos, bins in boxes:
            p = torch.softmax(x[b, pos, CS:CS + K], dim=-1)
            pred = (p * k).sum(-1) / K
            gt = torch.tensor(bins, dtype=torch.float64) / K
            g = cfg.alpha_l1 * (pred - gt).abs().sum()
            if cfg.use_geom_loss:
                assert pred[2] > pred[0] and pred[3] > pred[1]
                g = g + cfg.beta_giou * (1 - generalized_box_iou(pred[None], gt[None])[0, 0])
            total = total + cfg.lambda_coord * 4 * g
    if cfg.lambda_gate > 0:
        logp = torch.log_softmax(x, -1)
        mass = logp[..., CS:CS + K].logsumexp(-1)
        total = total + cfg.lambda_gate * (-mass * is_coord).sum()
    return total / num_items


def two_rows():
    r0, b0 = build_row([[100, 200, 600, 700], [10, 20, 30, 40], [5, 6]], prompt=4, total=32)
    r1, b1 = build_row([[300, 310, 800, 900]], prompt=9, total=32)
    labels = torch.tensor([r0, r1])
    boxes = [(0, p, bins) for p, bins in b0] + [(1, p, bins) for p, bins in b1]
    return labels, boxes


# --- reference CIoU ---
class _PaperAspect(torch.autograd.Function):
    """CIoU's ``v`` with the gradient of Zheng et al. 2020, eq. 12, ``w^2 + h^2`` replaced by 1:
    ``dv/dw = -8/pi^2 (atan(wt/ht) - atan(w/h)) h``, ``dv/dh = 8/pi^2 (atan(wt/ht) - atan(w/h)) w``."""

    @staticmethod
    def forward(ctx, w, h, wt, ht):
        d = torch.atan(wt / ht) - torch.atan(w / h)
        ctx.save_for_backward(d, w, h)
        return 4 / math.pi ** 2 * d ** 2

    @staticmethod
    def backward(ctx, grad):
        d, w, h = ctx.saved_tensors
        return -grad * 8 / math.pi ** 2 * d * h, grad * 8 / math.pi ** 2 * d * w, None, None


def ciou_loss_paper(pred, target):
    """Reference ``1 - CIoU`` for boxes with x2 > x1, y2 > y1: torchvision's DIoU loss + alpha * v (alpha
    constant), with the paper's gradient of ``v``. Its value is torchvision's ``complete_box_iou_loss``."""
    w, h = pred[:, 2] - pred[:, 0], pred[:, 3] - pred[:, 1]
    wt, ht = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
    v = _PaperAspect.apply(w, h, wt, ht)
    with torch.no_grad():
        inter_w = (torch.minimum(pred[:, 2], target[:, 2]) - torch.maximum(pred[:, 0], target[:, 0])).clamp(min=0)
        inter_h = (torch.minimum(pred[:, 3], target[:, 3]) - torch.maximum(pred[:, 1], target[:, 1])).clamp(min=0)
        inter = inter_w * inter_h
        iou = inter / (w * h + wt * ht - inter)
        alpha = v / (1 - iou + v)
    return distance_box_iou_loss(pred, target, eps=1e-7) + alpha * v


# --- toy COCO files ---
def toy_gt(names=("person", "dog"), n_images=3, side=1000):
    """``n_images`` images of side x side px, each with one box of every category, on the bin grid."""
    gt = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}
    aid = 0
    for i in range(n_images):
        gt["images"].append({"id": 10 + i, "file_name": f"img{i}.jpg", "width": side, "height": side})
        for c in range(len(names)):
            aid += 1
            x, y = 100 + 200 * c + 10 * i, 50 + 300 * c
            gt["annotations"].append({"id": aid, "image_id": 10 + i, "category_id": c + 1,
                                      "bbox": [x, y, 150, 120], "area": 150.0 * 120, "iscrowd": 0})
    return gt


def write_json(path, obj, bom=False):
    path.write_text(("\ufeff" if bom else "") + json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return str(path)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def fed_back(gt, path, desc_of=None, drop_images=()):
    """GT boxes written back as answers (quantised, constant scores), descriptions from ``desc_of(name)``."""
    objs = quantised_objects(gt, gt["annotations"])
    rows = [response_row(img, [(desc_of(d) if desc_of else d, bins, score) for d, bins, score in
                               objs.get(img["id"], [])], logprobs=False)
            for img in gt["images"] if img["id"] not in drop_images]
    return write_rows(path, rows)


# --- optional environments ---
# The optional vLLM environment (shell/setup_vllm.sh; COORD_VLLM=1 bash shell/setup.sh).
VLLM_VENV = Path(os.environ.get("VLLM_VENV", str(REPO / ".venv-vllm")))


def vllm_venv_or_skip() -> Path:
    """The vLLM environment's bin/ folder; skip outside CI when it was not built, fail under CI."""
    import pytest

    bin_dir = VLLM_VENV / "bin"
    if not (VLLM_VENV / ".coord-setup-stamp").is_file() or not (bin_dir / "swift").is_file():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            raise AssertionError(f"CI needs the vLLM environment at {VLLM_VENV} (shell/test.sh builds it)")
        pytest.skip(f"needs the vLLM environment at {VLLM_VENV}: COORD_VLLM=1 bash shell/setup.sh (CI builds it)")
    return bin_dir
