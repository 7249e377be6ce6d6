"""Shared helpers of the test suite: running the real ms-swift CLI on the tiny model."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

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
    ckpts = sorted(glob.glob(os.path.join(output_dir, "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    assert ckpts, f"no checkpoint in {output_dir}: {os.listdir(output_dir)}"
    return ckpts[-1]


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
