"""shell/ablation.sh: the whole study per model size (dry run), stage stamps that skip only what finished with the
same command and inputs, and weights that an offline node cannot reach stopping train.sh/ablation.sh at once."""
import json
import os
import shlex
import subprocess
import sys

import pytest

from helpers import REPO, SAMPLE_DIR, swift_env

BIN = os.path.dirname(sys.executable)


def _clean_environ() -> dict:
    """This process's environment without the plugin's settings: an in-process ms-swift run of another test in this
    worker may have exported some (``--model_kwargs`` goes to os.environ), and the stage stamps record them."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("COORDEXP_", "COORD_"))}


def _run(script, env, *args, timeout=300):
    full = swift_env({"PATH": BIN + os.pathsep + os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **env})
    for k in [k for k in full if k.startswith(("COORDEXP_", "COORD_"))]:
        del full[k]
    full.update({k: v for k, v in env.items()})
    return subprocess.run(["bash", str(REPO / "shell" / script), *args], env=full, cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


@pytest.fixture()
def coco(tmp_path):
    """A COCO-shaped folder: the shipped sample as both splits."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / "annotations" / f"instances_{split}.json").write_text((SAMPLE_DIR / "instances.json").read_text())
        (root / split).symlink_to(SAMPLE_DIR / "images")
    return root


def _lines(log, prefix):
    out = log.splitlines()
    return [(line, out[i + 1]) for i, line in enumerate(out[:-1]) if line.startswith(prefix)]


@pytest.mark.parametrize("size,model,ds,nodes,lean,ga", [
    ("2b", "Qwen/Qwen3-VL-2B-Instruct", "zero2", "1", False, "4"),
    ("4b", "Qwen/Qwen3-VL-4B-Instruct", "zero2", "1", False, "4"),
    ("8b", "Qwen/Qwen3-VL-8B-Instruct", "zero3", "1", False, "4"),
    ("30b-a3b", "Qwen/Qwen3-VL-30B-A3B-Instruct", "zero3", "2", True, "2"),
])
def test_dry_run_prints_the_whole_study_per_size(tmp_path, coco, size, model, ds, nodes, lean, ga):
    out = tmp_path / "study"
    # HF_HUB_OFFLINE=0: the hub id is taken as downloadable (nothing is downloaded in a dry run).
    proc = _run("ablation.sh", {"SIZE": size, "SEEDS": "2", "COCO": str(coco), "OUT": str(out), "HF_HUB_OFFLINE": "0"},
                "--dry-run", "--max_steps", "10")
    assert proc.returncode == 0, proc.stdout
    log = proc.stdout
    assert f"global batch 128 = 4 x {8 * int(nodes)} GPUs x {ga}" in log
    prep = _lines(log, "[ablation] prepare ")
    assert [p[1].split()[0] for p in prep] == ["coord-prepare-coco"] * 2
    train = _lines(log, "[ablation] train ")
    assert [t[0].split(":")[0] for t in train] == [f"[ablation] train {g} seed {s}" for g in "abc" for s in (42, 43)]
    for (_, cmd), (g, seed) in zip(train, [(g, s) for g in "abc" for s in (42, 43)]):
        argv = shlex.split(cmd)
        run_dir = out / (f"group_{g}" if seed == 42 else f"group_{g}_seed{seed}")
        assert f"OUT={run_dir}" in argv and f"MODEL={model}" in argv and f"DEEPSPEED={ds}" in argv
        assert f"NNODES={nodes}" in argv and "NPROC_PER_NODE=8" in argv and f"COORD_INIT_SEED={seed - 42}" in argv
        assert ("COORDEXP_LEAN=true" in argv) == lean and "TUNER=full" in argv
        i = argv.index(str(REPO / "shell" / "train.sh"))
        assert argv[i + 1:] == ["--seed", str(seed), "--data_seed", str(seed), "--per_device_train_batch_size", "4",
                                "--gradient_accumulation_steps", ga, "--max_steps", "10"]
    ev = _lines(log, "[ablation] evaluate ")
    assert len(ev) == 6 and all("shell/eval.sh" in c and "DECODE=argmax" in c for _, c in ev)
    assert _lines(log, "[ablation] compare: run")[0][1].endswith("shell/compare.sh")
    assert not out.exists()  # a dry run writes nothing


def test_rerun_skips_finished_stages_only_when_nothing_changed(tmp_path, coco):
    out = tmp_path / "study"
    env = {"SIZE": "2b", "COCO": str(coco), "OUT": str(out), "HF_HUB_OFFLINE": "0"}
    proc = _run("ablation.sh", {**env, "STAGES": "prepare"})
    assert proc.returncode == 0, proc.stdout
    assert "train: not in STAGES, not run" in proc.stdout and (out / "data" / "train2017.jsonl").is_file()
    assert not (out / "group_a").exists()
    proc = _run("ablation.sh", env, "--dry-run")
    assert proc.returncode == 0, proc.stdout
    assert "[ablation] prepare train: skip (finished with this command and annotation file)" in proc.stdout
    assert "[ablation] prepare val: skip" in proc.stdout
    # A training that finished with this command and data (its stamp as the script writes it) is skipped ...
    (_, cmd), = [t for t in _lines(proc.stdout, "[ablation] train a seed 42")]
    (out / "group_a").mkdir()
    stamp = out / "group_a" / "coord_stage.json"
    inputs = ["--input", str(out / "data" / "train2017.jsonl"), "--input", str(out / "data" / "val2017.jsonl")]
    subprocess.run([sys.executable, "-m", "swift_coord_plugin.cli.stage", "mark", str(stamp), "--status", "finished",
                    *inputs, "--", *shlex.split(cmd)], check=True, env={**_clean_environ(), "PYTHONPATH": str(REPO)})
    proc = _run("ablation.sh", env, "--dry-run")
    assert "[ablation] train a seed 42: skip (finished with this command and data)" in proc.stdout, proc.stdout
    assert "[ablation] train b seed 42: run" in proc.stdout
    # ... and trained again when a flag, a loss setting of the environment or the data changes.
    proc = _run("ablation.sh", env, "--dry-run", "--max_steps", "10")
    assert "[ablation] train a seed 42: run afresh (changed: command[" in proc.stdout, proc.stdout
    proc = _run("ablation.sh", {**env, "COORDEXP_LAMBDA_COORD": "2"}, "--dry-run")
    assert ("[ablation] train a seed 42: run afresh (changed: env.COORDEXP_LAMBDA_COORD: recorded (not recorded), "
            'asked "2")') in proc.stdout, proc.stdout
    ann = coco / "annotations" / "instances_train2017.json"
    gt = json.loads(ann.read_text())
    gt["annotations"] = gt["annotations"][:-1]
    ann.write_text(json.dumps(gt))
    proc = _run("ablation.sh", env, "--dry-run")
    assert f"[ablation] prepare train: run (changed: inputs.{ann}: recorded" in proc.stdout, proc.stdout
    assert "[ablation] prepare val: skip" in proc.stdout
    # An interrupted training with the same stamp resumes.
    stamp.write_text(stamp.read_text().replace('"finished"', '"started"'))
    proc = _run("ablation.sh", env, "--dry-run")
    assert "[ablation] train a seed 42: resume (interrupted with this command and data)" in proc.stdout, proc.stdout


def test_offline_node_missing_weights_fail_fast_naming_them(tmp_path, coco):
    """HF_HUB_OFFLINE=1 (swift_env): a missing folder, or a hub id in no cache, stops train.sh and ablation.sh
    before anything runs, naming the path or the variable and the cache looked in. (A local model folder loading
    offline: test_cluster_scripts.py::test_cpu_recipe_paths_resume_and_sharded_eval trains and evaluates with
    MODEL=<folder> under HF_HUB_OFFLINE=1.)"""
    missing = tmp_path / "weights" / "Qwen3-VL-2B-Instruct"
    proc = _run("train.sh", {"GROUP": "a", "CPU": "1", "MODEL": str(missing)})
    assert proc.returncode == 2 and f"MODEL={missing}: no such folder" in proc.stdout, proc.stdout
    assert "swift sft" not in proc.stdout
    empty = tmp_path / "ms_cache"
    proc = _run("train.sh", {"GROUP": "a", "CPU": "1", "MODELSCOPE_CACHE": str(empty)})
    assert proc.returncode == 2, proc.stdout
    assert (f"the model of {REPO / 'templates' / 'group_a.yaml'}=Qwen/Qwen3-VL-2B-Instruct is a hub id, "
            f"HF_HUB_OFFLINE=1 says this node is offline, and ModelScope's cache ({empty}) does not hold it") in proc.stdout
    proc = _run("train.sh", {"GROUP": "a", "CPU": "1", "HF_HUB_CACHE": str(empty)}, "--use_hf", "true")
    assert proc.returncode == 2 and f"Hugging Face's cache ({empty}) does not hold it" in proc.stdout, proc.stdout
    proc = _run("ablation.sh", {"SIZE": "8b", "COCO": str(coco), "OUT": str(tmp_path / "s"), "MODELSCOPE_CACHE": str(empty)})
    assert proc.returncode == 2 and "MODEL=Qwen/Qwen3-VL-8B-Instruct is a hub id" in proc.stdout, proc.stdout
    assert not (tmp_path / "s").exists()
    # A folder without config.json is not a model folder.
    missing.mkdir(parents=True)
    proc = _run("ablation.sh", {"COCO": str(coco), "OUT": str(tmp_path / "s"), "MODEL": str(missing)}, "--dry-run")
    assert proc.returncode == 2 and f"MODEL={missing} is a folder without config.json" in proc.stdout, proc.stdout
