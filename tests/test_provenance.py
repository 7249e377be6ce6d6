"""What a run and an evaluation were made with: coord_env.json, infer_settings.json, report.json settings,
and shell/eval.sh's CKPT=all (reuse of finished evaluations) and its choice of the inference resolution."""
import json
import os
import subprocess
import sys

from helpers import REPO, SAMPLE_DIR, SAMPLE_JSONL, swift_env
from swift_coord_plugin.cli import infer_settings
from swift_coord_plugin import provenance as pv

GT = str(SAMPLE_DIR / "instances.json")


def test_env_settings_keep_the_plugin_and_resolution_keys_only(tmp_path):
    env = {"COORD_INIT_SEED": "3", "COORDEXP_LAMBDA_COORD": "2", "MAX_PIXELS": "1024", "PATH": "/bin",
           "HOME": "/root", "XCOORD_X": "1"}
    assert pv.env_settings(env) == {"COORDEXP_LAMBDA_COORD": "2", "COORD_INIT_SEED": "3", "MAX_PIXELS": "1024"}
    pv.write_env_settings(str(tmp_path), env)
    assert pv.read_env_settings(str(tmp_path)) == pv.env_settings(env)
    assert pv.read_env_settings(str(tmp_path / "none")) is None


def test_image_set_digest_and_checkpoint_step(tmp_path):
    a, b = pv.image_set_digest([3, 1, 2, 2]), pv.image_set_digest([1, 2, 3])
    assert a == b and a["count"] == 3 and a["ids"] == [1, 2, 3]
    assert pv.image_set_digest([1, 2])["sha256"] != a["sha256"]
    ck = tmp_path / "checkpoint-40"
    ck.mkdir()
    assert pv.checkpoint_step(str(ck)) == 40
    (ck / "trainer_state.json").write_text(json.dumps({"global_step": 41}))
    assert pv.checkpoint_step(str(ck)) == 41
    assert pv.checkpoint_step(str(tmp_path)) is None


def test_checkpoints_in_step_order_and_the_last(tmp_path, capsys):
    from swift_coord_plugin.cli import checkpoints

    run = tmp_path / "run"
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-100", "checkpoint-2", "checkpoint-10-merged",
                 "checkpoint-x", "eval", "runs", "v0-checkpoint-500"):
        (run / name).mkdir(parents=True)
    (run / "checkpoint-1000").write_text("a file, not a checkpoint folder")
    want = [str(run / f"checkpoint-{n}") for n in (2, 9, 10, 100)]
    assert pv.list_checkpoints(str(run)) == want
    assert pv.last_checkpoint(str(run)) == want[-1]
    assert checkpoints.main([str(run)]) == 0 and capsys.readouterr().out.split() == want
    assert checkpoints.main([str(run), "--last"]) == 0 and capsys.readouterr().out == want[-1] + "\n"
    (run / "empty").mkdir()
    for none in (run / "empty", tmp_path / "missing", run / "checkpoint-1000"):
        assert pv.list_checkpoints(str(none)) == [] and pv.last_checkpoint(str(none)) is None
        assert checkpoints.main([str(none), "--last"]) == 1 and capsys.readouterr().out == ""


def test_eval_script_without_checkpoint_stops_naming_the_folder(tmp_path):
    """No checkpoint-N in OUT: eval.sh stops with its message and code 2, under CKPT unset and CKPT=all."""
    out = tmp_path / "run"
    (out / "checkpoint-x").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("python", f'exec "{sys.executable}" "$@"'), ("coord-plugin-path", "echo /nowhere")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"OUT": str(out), "GT": GT, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    for ckpt, message in (("", f"[eval] no checkpoint-* in {out} (set CKPT)"),
                          ("all", f"[eval] CKPT=all: no checkpoint-* in {out}")):
        proc = subprocess.run(["bash", str(REPO / "shell" / "eval.sh")], env={**env, "CKPT": ckpt}, cwd=str(REPO),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout.strip() == message, proc.stdout


def _ckpt(tmp_path, max_pixels=65536, step=20):
    run = tmp_path / "run"
    ck = run / f"checkpoint-{step}"
    ck.mkdir(parents=True)
    (ck / "args.json").write_text(json.dumps({"max_pixels": max_pixels}))
    return str(ck)


def test_inference_resolution_comes_from_the_run(tmp_path, capsys):
    ck = _ckpt(tmp_path)
    out = str(tmp_path / "eval" / "infer_settings.json")
    assert infer_settings.main(["write", "--checkpoint", ck, "--out", out]) == 0
    assert capsys.readouterr().out.strip() == "65536"
    s = json.load(open(out))
    assert s["max_pixels"] == 65536 and s["train_max_pixels"] == 65536 and s["checkpoint_step"] == 20
    assert s["max_pixels_source"] == "the run's args.json"
    infer_settings.main(["write", "--checkpoint", ck, "--out", out, "--max-pixels", "409600"])
    assert capsys.readouterr().out.strip() == "409600" and json.load(open(out))["max_pixels_source"] == "INFER_MAX_PIXELS"
    # A --max_pixels among the swift infer flags is what swift uses: recorded, nothing added.
    infer_settings.main(["write", "--checkpoint", ck, "--out", out, "--max-pixels", "409600", "--",
                         "--max_new_tokens", "10", "--max_pixels", "1000"])
    assert capsys.readouterr().out.strip() == "" and json.load(open(out))["max_pixels"] == 1000


def test_report_records_gt_images_and_inference(tmp_path):
    from swift_coord_plugin.eval.scoring import EvalSettings, evaluate_results
    from swift_coord_plugin.eval.synthetic import rows_from_boxes

    gt = json.load(open(GT))
    rows = rows_from_boxes(gt, gt["annotations"][:20], image_ids=[i["id"] for i in gt["images"][:5]])
    res = tmp_path / "infer_result.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ck = _ckpt(tmp_path)
    pv.write_inference_settings(str(tmp_path / "infer_settings.json"), ck, 65536, "test", environ={"COORD_X": "1"})
    s = evaluate_results(str(res), GT, EvalSettings(subset_from_results=True), progress=False).report["settings"]
    assert s["gt_sha256"] == pv.file_sha256(GT)
    assert s["image_set"] == pv.image_set_digest(i["id"] for i in gt["images"][:5])
    assert s["inference"]["checkpoint_step"] == 20 and s["inference"]["env"] == {"COORD_X": "1"}


def test_reuse_mismatches_names_each_difference(tmp_path):
    rec = tmp_path / "report.json"
    assert pv.reuse_mismatches(str(rec), {"settings.decode": "argmax"}) == [f"{rec}: not there"]
    rec.write_text(json.dumps({"settings": {"decode": "argmax", "inference": {"max_pixels": 65536}}}))
    assert pv.reuse_mismatches(str(rec), {"settings.decode": "argmax", "settings.inference.max_pixels": 65536}) == []
    assert pv.reuse_mismatches(str(rec), {"settings.inference.max_pixels": 32768, "settings.gt_sha256": "ab"}) == [
        "settings.inference.max_pixels: recorded 65536, asked 32768",
        'settings.gt_sha256: recorded (not recorded), asked "ab"']  # an older report is re-scored, not trusted
    rec.write_text("{")
    assert "not valid JSON" in pv.reuse_mismatches(str(rec), {"settings.decode": "argmax"})[0]


def test_checkpoint_digest_changes_when_retrained(tmp_path):
    ck = tmp_path / "checkpoint-5"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"a" * 10)
    (ck / "optimizer.pt").write_bytes(b"o")
    d = pv.checkpoint_digest(str(ck))
    (ck / "optimizer.pt").write_bytes(b"oo")  # not the weights
    assert pv.checkpoint_digest(str(ck)) == d
    st = os.stat(ck / "model.safetensors")
    os.utime(ck / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same size, written again
    assert pv.checkpoint_digest(str(ck)) != d


def _scored_run(tmp_path, val, steps=(5, 25)):
    """A run with checkpoints (weights, args.json) and, per checkpoint, a report.json made the way shell/eval.sh
    makes it: infer_settings.json through the same CLI, then coord-eval's scoring on synthetic answers."""
    from swift_coord_plugin.eval.scoring import EvalSettings, evaluate_results, write_outputs
    from swift_coord_plugin.eval.synthetic import rows_from_boxes

    gt = json.load(open(GT))
    ids = [json.loads(line)["image_id"] for line in open(val) if line.strip()]
    rows = rows_from_boxes(gt, gt["annotations"], image_ids=ids)
    out = tmp_path / "group_a"
    for step in steps:
        ck = out / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "model.safetensors").write_bytes(b"w" * step)
        (ck / "args.json").write_text(json.dumps({"max_pixels": 65536}))
        d = out / "eval" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        res = d / "infer_result.jsonl"
        res.write_text("".join(json.dumps(r) + "\n" for r in rows))
        env = {k: v for k, v in os.environ.items() if not k.startswith(pv.ENV_PREFIXES) and k not in pv.RESOLUTION_ENV}
        subprocess.run([sys.executable, "-m", "swift_coord_plugin.cli.infer_settings", "write", "--checkpoint", str(ck),
                        "--out", str(d / "infer_settings.json"), "--decoding", "constrained", "--infer-backend",
                        "transformers", "--val-data", str(val), "--infer-config", str(REPO / "templates" / "infer_eval.yaml"),
                        "--", "--max_new_tokens", "16"],
                       env={**env, "COORD_DECODING": "constrained", "PYTHONPATH": str(REPO)}, check=True,
                       stdout=subprocess.PIPE)
        ev = evaluate_results(str(res), GT, EvalSettings(val_data=str(val), score="logprob", decoding="constrained",
                                                         infer_backend="transformers"), progress=False)
        write_outputs(str(d), ev)
    return out


def test_eval_script_ckpt_all_reuses_only_matching_reports(tmp_path):
    """CKPT=all reuses a finished report.json only when it was made exactly as asked; a retrained checkpoint-N,
    another GT file, another image subset or another resolution is evaluated again, and the reason printed."""
    val = tmp_path / "val.jsonl"
    val.write_text(SAMPLE_JSONL.read_text())
    out = _scored_run(tmp_path, val)
    # Only python (no coord-plugin-path): a checkpoint that is not reused stops right after the decision.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    base = {k: v for k, v in swift_env().items() if not k.startswith(pv.ENV_PREFIXES) and k not in pv.RESOLUTION_ENV}
    base.update({"GROUP": "a", "OUT": str(out), "GT": GT, "CKPT": "all", "VAL_DATA": str(val),
                 "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}:/usr/bin:/bin"})

    def run(**change):
        proc = subprocess.run(["bash", str(REPO / "shell" / "eval.sh"), "--max_new_tokens", "16"],
                              env={**base, **change}, cwd=str(REPO), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=120)
        return proc.returncode, proc.stdout

    rc, log = run()
    assert rc == 0, log
    assert [line.split()[1] for line in log.splitlines() if "reusing" in line] == ["checkpoint-5:", "checkpoint-25:"]
    # A retrained checkpoint-25 (new weights): checkpoint-5 still reused, checkpoint-25 evaluated again.
    w = out / "checkpoint-25" / "model.safetensors"
    st = os.stat(w)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rc, log = run()
    assert rc == 2 and "checkpoint-5: reusing" in log and "coord-plugin-path not on PATH" in log, log
    assert "checkpoint-25: evaluating (settings.inference.checkpoint_digest: recorded" in log, log
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    # Another GT file (same name, other content), another image subset, another resolution.
    gt2 = tmp_path / "gt" / "instances.json"
    gt2.parent.mkdir()
    g = json.load(open(GT))
    g["annotations"] = g["annotations"][:-1]
    gt2.write_text(json.dumps(g))
    subset = tmp_path / "val_subset.jsonl"
    subset.write_text("".join(val.read_text().splitlines(keepends=True)[:5]))
    for change, reason in (({"GT": str(gt2)}, "settings.gt_sha256: recorded"),
                           ({"VAL_DATA": str(subset)}, "settings.inference.val_data_sha256: recorded"),
                           ({"INFER_MAX_PIXELS": "32768"}, "settings.inference.max_pixels: recorded 65536, asked 32768")):
        rc, log = run(**change)
        assert rc == 2 and "reusing" not in log and f"checkpoint-5: evaluating ({reason}" in log, (change, log)
    # Other swift infer flags, another decoding mode: not reused either.
    rc, log = run(DECODING="free")
    assert rc == 2 and "settings.inference.decoding: recorded \"constrained\", asked \"free\"" in log, log
    proc = subprocess.run(["bash", str(REPO / "shell" / "eval.sh"), "--max_new_tokens", "32"], env=base,
                          cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert proc.returncode == 2 and "settings.inference.swift_args[1]: recorded \"16\", asked \"32\"" in proc.stdout, proc.stdout


def test_reuse_of_a_rescoring_takes_the_inference_side_from_the_answers(tmp_path, capsys):
    """A report that re-scored another evaluation's answers is reused when that record and the checkpoint match."""
    val = tmp_path / "val.jsonl"
    val.write_text(SAMPLE_JSONL.read_text())
    out = _scored_run(tmp_path, val, steps=(5,))
    d, ck = out / "eval" / "checkpoint-5", out / "checkpoint-5"
    args = ["reuse", str(d / "report.json"), "--checkpoint", str(ck), "--gt", GT, "--decode", "argmax", "--score",
            "logprob", "--max-dets", "100", "--inference-from", str(d / "infer_settings.json")]
    assert infer_settings.main(args) == 0, capsys.readouterr().out
    st = os.stat(ck / "model.safetensors")
    os.utime(ck / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert infer_settings.main(args) == 1
    assert "settings.inference.checkpoint_digest: recorded" in capsys.readouterr().out


def _eval_sh(env, tmp_path):
    env = swift_env({"PYTHONPATH": str(REPO), **env,
                     "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")})
    return subprocess.run(["bash", str(REPO / "shell" / "eval.sh")], env=env, cwd=str(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def test_eval_script_named_evaluations_and_results_from(tmp_path, sample_jsonl):
    """EVAL_NAME writes OUT/eval/NAME/ (CKPT=all: OUT/eval/NAME/checkpoint-N/, reused there); RESULTS_FROM re-scores
    another evaluation's answers with coord-eval, without swift infer, and only for the checkpoint they came from."""
    from swift_coord_plugin.eval.synthetic import rows_from_boxes

    out = tmp_path / "group_a"
    ck = out / "checkpoint-20"
    ck.mkdir(parents=True)
    gt = json.load(open(GT))
    rows = "".join(json.dumps(r) + "\n" for r in rows_from_boxes(gt, gt["annotations"], top_k=5))
    for src in (out / "eval" / "argmax", out / "eval" / "argmax" / "checkpoint-20"):   # CKPT=20 and CKPT=all
        src.mkdir(parents=True)
        (src / "infer_result.jsonl").write_text(rows)
        pv.write_inference_settings(str(src / "infer_settings.json"), str(ck), 65536, "test", environ={},
                                    decoding="constrained", infer_backend="transformers")   # as eval.sh records
    base = {"OUT": str(out), "GT": GT, "VAL_DATA": sample_jsonl, "EVAL_NAME": "coordexp", "RESULTS_FROM": "argmax",
            "DECODE": "coordexp"}
    proc = _eval_sh(base, tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "swift infer" not in proc.stdout and "coord-eval --results " + str(out / "eval" / "argmax") in proc.stdout
    rep = json.loads((out / "eval" / "coordexp" / "report.json").read_text())
    s = rep["settings"]
    assert s["decode"] == "coordexp" and s["results"] == str(out / "eval" / "argmax" / "infer_result.jsonl")
    assert s["inference"]["checkpoint_step"] == 20 and rep["counts"]["rows"]["total"] == 9
    assert rep["metrics"]["AP50"] > 0.9                     # the GT boxes fed back
    assert not (out / "eval" / "report.json").exists()      # the unnamed evaluation is untouched
    # CKPT=all: into OUT/eval/coordexp/checkpoint-N/ from OUT/eval/argmax/checkpoint-N/, then reused.
    proc = _eval_sh({**base, "CKPT": "all"}, tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert json.loads((out / "eval" / "coordexp" / "checkpoint-20" / "report.json").read_text())["settings"][
        "results"] == str(out / "eval" / "argmax" / "checkpoint-20" / "infer_result.jsonl")
    proc = _eval_sh({**base, "CKPT": "all"}, tmp_path)
    assert proc.returncode == 0 and "checkpoint-20: reusing " + str(out / "eval" / "coordexp") in proc.stdout
    # Answers of another checkpoint, a missing source, a bad name: stopped, saying why.
    (out / "checkpoint-40").mkdir()
    proc = _eval_sh(base, tmp_path)          # CKPT = the last checkpoint, 40; the answers are checkpoint-20's
    assert proc.returncode == 2 and f"records checkpoint {ck}, not {out / 'checkpoint-40'}" in proc.stdout
    proc = _eval_sh({**base, "RESULTS_FROM": "free"}, tmp_path)
    assert proc.returncode == 2 and "RESULTS_FROM=free: no " + str(out / "eval" / "free" / "infer_result.jsonl") \
        in proc.stdout
    for bad in ("shards", "checkpoint-3", "../x"):
        proc = _eval_sh({**base, "EVAL_NAME": bad}, tmp_path)
        assert proc.returncode == 2 and f"EVAL_NAME={bad}: expected a name" in proc.stdout, proc.stdout
