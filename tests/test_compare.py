"""coord-compare on synthetic run directories: comparability, seeds, bootstrap, yardsticks, pictures, HTML.

The runs' evaluations are real: result rows written from the shipped COCO sample's boxes (jittered), scored
by coord-eval's own pipeline against the real annotations.
"""
import json
import os
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from helpers import SAMPLE_DIR
from swift_coord_plugin.core.yardsticks import COMMON_CURVES
from swift_coord_plugin.eval.scoring import EvalSettings, evaluate_results, write_outputs
from swift_coord_plugin.eval.synthetic import rows_from_boxes
from swift_coord_plugin.experiment import compare as cmp
from swift_coord_plugin.provenance import write_env_settings, write_inference_settings

GT = str(SAMPLE_DIR / "instances.json")
LOSS = {"A": "coordexp_ce", "B": "coordexp_geom", "C": "coordexp_hybrid"}


def _score(run_dir, sub, jitter, seed, step, score="logprob", max_pixels=65536, image_ids=None, gt_path=GT):
    gt = json.load(open(gt_path))
    rng = np.random.default_rng(seed)
    boxes = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        j = rng.uniform(-jitter, jitter, 4)
        boxes.append({"image_id": a["image_id"], "category_id": a["category_id"],
                      "bbox": [max(0, x + j[0]), max(0, y + j[1]), max(2, w + j[2]), max(2, h + j[3])],
                      "score": float(rng.uniform(0.05, 1))})
    rows = rows_from_boxes(gt, boxes, image_ids=image_ids)
    for r in rows:
        r["images"][0]["path"] = str(SAMPLE_DIR / "images" / r["images"][0]["path"])
    ckpt = os.path.join(run_dir, f"checkpoint-{step}")
    os.makedirs(ckpt, exist_ok=True)
    ev_dir = os.path.join(run_dir, sub)
    os.makedirs(ev_dir, exist_ok=True)
    results = os.path.join(ev_dir, "infer_result.jsonl")
    with open(results, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    write_inference_settings(os.path.join(ev_dir, "infer_settings.json"), ckpt, max_pixels, "test", environ={})
    ev = evaluate_results(results, gt_path, EvalSettings(score=score, subset_from_results=image_ids is not None),
                          progress=False)
    write_outputs(ev_dir, ev)
    return ev.report


def _run(tmp_path, name, group, seed=42, jitter=8.0, env=None, score="logprob", max_pixels=65536,
         image_ids=None, yard_level=0.6, steps=30, evaluation="eval", gt_path=GT):
    d = tmp_path / name
    d.mkdir()
    rows = []
    for s in range(10, steps + 1, 10):
        rows.append({"loss": 2.0 / s, "text_loss": 1.0, "global_step/max_steps": f"{s}/{steps}"})
        ev = {"eval_loss": 3.0 / s, "global_step/max_steps": f"{s}/{steps}"}
        for key, higher in COMMON_CURVES:
            level = yard_level * s / steps
            ev["eval_" + key] = level if higher else 100 * (1 - level)
        rows.append(ev)
    (d / "logging.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "args.json").write_text(json.dumps({"model": "m", "loss_type": LOSS[group], "seed": seed,
                                             "data_seed": seed, "max_pixels": 65536, "learning_rate": 1e-4,
                                             "output_dir": str(d)}))
    (d / "coordexp_config.json").write_text(json.dumps({"flags": {"use_coord_ce": group != "B"}}))
    write_env_settings(str(d), {"COORD_INIT_SEED": "0", **(env or {})})
    if evaluation:
        _score(str(d), f"{evaluation}/checkpoint-10", jitter * 3, seed + 1, 10, score, max_pixels, image_ids, gt_path)
        _score(str(d), evaluation, jitter, seed, steps, score, max_pixels, image_ids, gt_path)
    return str(d)


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and not v.startswith("#")]


def test_compare_groups_seeds_bootstrap_pictures_and_html(tmp_path):
    runs = [_run(tmp_path, "a1", "A", seed=42, jitter=12, yard_level=0.5),
            _run(tmp_path, "a2", "A", seed=43, jitter=12, yard_level=0.55),
            _run(tmp_path, "b1", "B", seed=42, jitter=30, yard_level=0.3),
            _run(tmp_path, "c1", "C", seed=42, jitter=1, yard_level=0.8)]
    out = tmp_path / "cmp"
    s = cmp.compare_runs(runs, str(out), names=["A", "A", "B", "C"], n_resamples=300, gallery_images=2)
    # Only the seeds differ, and A has two where B and C have one: that is named.
    assert s["comparability_issues"] == [
        "`data_seed` differs (args.json: the set of values of each group): A: [\"42\", \"43\"]; B: [\"42\"]; "
        "C: [\"42\"]",
        "`seed` differs (args.json: the set of values of each group): A: [\"42\", \"43\"]; B: [\"42\"]; C: [\"42\"]"]
    assert s["groups"] == {"A": ["A", "A"], "B": ["B"], "C": ["C"]}
    # The layout without evaluation names (eval/report.json) is the evaluation `default`, the only row.
    assert s["evaluation"] == "default" and list(s["evaluations"]) == ["default"] and s["selection"]["on"] is None
    md = (out / "summary.md").read_text()
    # The order the reader needs: metrics and differences first, the groups' own losses last.
    titles = re.findall(r"^## (.+)$", md, flags=re.M)
    assert titles[:6] == ["Comparability", "Detection metrics", "AP along training",
                          "Common yardsticks (the same measure for every group)", "Why answers failed",
                          "Per category, IoU of matches, gallery"]
    assert titles[6] == "Own losses (NOT comparable across groups)"
    assert md.count("NOT COMPARABLE") == 1 and " ± " in md and "C − A" in md and "B − A" in md
    # Bootstrap: C's exact-ish boxes beat A's jittered ones beyond the noise; B's worse ones lose.
    b = s["bootstrap"]["groups"]
    assert s["bootstrap"]["baseline"] == "A" and s["bootstrap"]["n_images"] == 9
    assert b["C"]["diff"]["AP"]["value"] > 0 and b["C"]["diff"]["AP"]["excludes_zero"]
    assert b["B"]["diff"]["AP"]["value"] < 0
    assert b["C"]["vs"]["B"]["AP"]["value"] == pytest.approx(b["C"]["AP"]["value"] - b["B"]["AP"]["value"])
    assert "C − B" in md
    # Two-level intervals: A's two seeds are in its intervals, B's and C's single runs have no seed level; the
    # headline of the metrics says so, and the image-only intervals are shown beside.
    assert s["bootstrap"]["n_seeds"] == {"A": 2, "B": 1, "C": 1}
    assert s["bootstrap"]["covers"] == "images, and the seeds of A only (B, C: one run)"
    assert b["C"]["diff"]["covers"] == "images, and the seeds of A only (C: one run)"
    assert b["C"]["vs"]["B"]["covers"] == "images only"
    metrics_sec = md.split("## Detection metrics")[1]
    assert metrics_sec.lstrip().startswith("**The intervals cover image sampling, and training seeds only for the "
                                           "groups with several runs**: B, C have one run")
    assert "AP 95% CI (images)" in md and "interval covers" in md
    # One run per group: the headline says the intervals cover image sampling only.
    single = [cmp.load_run(p, n) for p, n in zip([runs[0], runs[2], runs[3]], "ABC")]
    cmp.assign_groups(single, names_given=True)
    boot1 = cmp.bootstrap_groups(single, ["A", "B", "C"], 100, 0, [])
    assert boot1["covers"] == "images only"
    assert boot1["headline"].startswith("**The intervals cover image sampling only**")
    assert boot1["groups"]["C"]["diff"]["AP"]["ci"] == boot1["groups"]["C"]["diff"]["AP"]["ci_images"]
    # Group metrics are the mean of the seeds' reports.
    rep = [json.load(open(os.path.join(r, "eval", "report.json"))) for r in runs[:2]]
    assert s["group_metrics"]["A"]["AP"]["mean"] == pytest.approx(np.mean([r["metrics"]["AP"] for r in rep]))
    # AP along training: two checkpoints per run.
    assert [p["step"] for p in s["runs"][0]["ap_along_training"]] == [10, 30]
    # Convergence on the common yardsticks: C reaches 90% of the best level (its own) first, B never.
    conv = {c["curve"]: c for c in s["convergence"]}
    iou = conv["box_iou_argmax"]
    assert iou["best"] == pytest.approx(0.8) and iou["runs"]["C"]["step"] == 30 and iou["runs"]["B"]["step"] is None
    err = conv["coord_bin_err"]
    assert not err["higher_is_better"] and err["best"] == pytest.approx(20.0)
    for png in ("yardsticks.png", "ap_vs_step.png", "detection_metrics.png", "per_category_ap.png",
                "iou_histograms.png", "train_losses.png", "eval_losses.png"):
        assert (out / png).stat().st_size > 5000, png
    assert len(s["gallery"]) == 2 and all((out / g).is_file() for g in s["gallery"])
    # Every file index.html references exists.
    page = (out / "index.html").read_text()
    parser = _Refs()
    parser.feed(page)
    assert len(parser.refs) >= 13
    missing = [r for r in parser.refs if not (out / r).is_file()]
    assert not missing, missing
    assert "<table>" in page and "Own losses (NOT comparable across groups)" in page


def test_ground_truth_with_string_image_ids_compares_like_integer_ids(tmp_path):
    """detections.json carries a string-id file's own ids; the bootstrap and the gallery map them to the
    evaluator's integers, so both files give the same comparison."""
    gt = json.load(open(GT))
    name = {im["id"]: f"img-{im['id']:012d}" for im in gt["images"]}
    for im in gt["images"]:
        im["id"] = name[im["id"]]
    for a in gt["annotations"]:
        a["image_id"] = name[a["image_id"]]
    string_gt = tmp_path / "instances_string_ids.json"
    string_gt.write_text(json.dumps(gt))
    summaries = {}
    for kind, path in (("int", GT), ("str", str(string_gt))):
        (tmp_path / kind).mkdir()
        runs = [_run(tmp_path / kind, "a", "A", jitter=12, gt_path=path), _run(tmp_path / kind, "c", "C", jitter=1,
                                                                              gt_path=path)]
        summaries[kind] = cmp.compare_runs(runs, str(tmp_path / kind / "cmp"), names=["A", "C"], n_resamples=100,
                                           gallery_images=2)
    dets = json.load(open(tmp_path / "str" / "a" / "eval" / "detections.json"))
    assert dets and all(d["image_id"] in name.values() for d in dets)  # the file's own ids
    b_int, b_str = (summaries[k]["bootstrap"]["groups"]["C"]["diff"]["AP"] for k in ("int", "str"))
    assert b_int["value"] > 0 and b_str["value"] == pytest.approx(b_int["value"])
    assert b_str["ci"] == pytest.approx(b_int["ci"])
    assert len(summaries["str"]["gallery"]) == 2
    assert all((tmp_path / "str" / "cmp" / g).is_file() for g in summaries["str"]["gallery"])
    md = (tmp_path / "str" / "cmp" / "summary.md").read_text()
    assert "image img-" in md and "no bootstrap" not in md


def _fake(name, group="", args=None, env=None, settings=None, steps=100):
    base = {"model": "m", "seed": 42, "data_seed": 42, "max_pixels": 65536, "loss_type": "coordexp_ce"}
    report = None
    if settings is not None:
        report = {"metrics": {}, "settings": settings}
    return cmp.Run(path=name, name=name, group=group or name, args={**base, **(args or {})},
                   env=env if env is not None else {"COORD_INIT_SEED": "0"}, report=report,
                   train=[{"_step": steps, "loss": 1.0}])


SETTINGS = {"decode": "argmax", "decoding": "constrained", "infer_backend": "transformers", "score": "logprob",
            "max_dets": 100, "gt_sha256": "g1", "image_set": {"sha256": "i1", "count": 5000},
            "images": "GT images with a result row", "dedupe_identical_objects": True,
            "inference": {"checkpoint_step": 5000, "max_pixels": 65536, "env": {}}}


def _with(**changes):
    s = json.loads(json.dumps(SETTINGS))
    for k, v in changes.items():
        d = s
        parts = k.split("__")
        for p in parts[:-1]:
            d = d[p]
        if v is None:
            d.pop(parts[-1])
        else:
            d[parts[-1]] = v
    return s


def test_comparability_names_every_setting_that_changes_the_numbers():
    ref = _fake("A", settings=SETTINGS)
    assert cmp.comparability([ref, _fake("B", args={"loss_type": "coordexp_geom"}, settings=SETTINGS)]) == []
    cases = {
        "`decoding`": _with(decoding="coordexp"),
        "`infer_backend`": _with(infer_backend=None),          # not recorded: unknown differs from known
        "`score`": _with(score="constant"),
        "`max_dets`": _with(max_dets=1000),
        "`gt_sha256`": _with(gt_sha256="g2"),
        "`image_set.sha256`": _with(image_set={"sha256": "i2", "count": 500}),
        "`inference.checkpoint_step`": _with(inference={"checkpoint_step": 4000, "max_pixels": 65536, "env": {}}),
        "`inference.max_pixels`": _with(inference={"checkpoint_step": 5000, "max_pixels": 409600, "env": {}}),
    }
    for key, settings in cases.items():
        issues = cmp.comparability([ref, _fake("B", settings=settings)])
        assert any(i.startswith(key + " differs") for i in issues), (key, issues)
    # Evaluated at another resolution than trained, even when both runs did the same.
    s = _with(inference={"checkpoint_step": 5000, "max_pixels": 409600, "env": {}})
    issues = cmp.comparability([_fake("A", settings=s), _fake("B", settings=s)])
    assert issues == ["A: evaluated at max_pixels 409600 but trained at 65536",
                      "B: evaluated at max_pixels 409600 but trained at 65536"]
    # Environment-only settings; the loss keys (COORDEXP_*) may differ, a missing record is unknown.
    issues = cmp.comparability([ref, _fake("B", env={"COORD_INIT_SEED": "0", "COORD_PROMPT": "other",
                                                     "COORDEXP_USE_COORD_CE": "false"}, settings=SETTINGS)])
    assert len(issues) == 1 and issues[0].startswith("`COORD_PROMPT` differs (environment, coord_env.json)")
    b = _fake("B", settings=SETTINGS)
    b.env = None
    assert any("COORD_INIT_SEED" in i and "unknown" in i for i in cmp.comparability([ref, b]))
    # args.json outside the loss flags; seeds differ within a group only.
    issues = cmp.comparability([ref, _fake("B", args={"learning_rate": 2e-4}, settings=SETTINGS)])
    assert any(i.startswith("`learning_rate` differs (args.json)") for i in issues)
    a2 = _fake("A2", group="A", args={"seed": 43, "data_seed": 43}, settings=SETTINGS)
    ref_a = _fake("A1", group="A", settings=SETTINGS)
    assert cmp.comparability([ref_a, a2]) == []
    issues = cmp.comparability([ref_a, a2, _fake("B", settings=SETTINGS)])
    assert any(i.startswith("`seed` differs") and "A: " in i for i in issues)
    # Not scored / different training length.
    issues = cmp.comparability([ref, _fake("B", settings=None, steps=90)])
    assert any("not scored" in i and "B" in i for i in issues) and any("training length" in i for i in issues)


def test_coord_init_seed_is_a_seed_key_not_a_setting():
    """Runs of one group that differ only in COORD_INIT_SEED are replicates (comparable); across groups the set
    of seeds must match, and a repeated seed triple is no replicate."""
    def run(name, group, init, seed=42, loss="coordexp_ce"):
        return _fake(name, group=group, args={"seed": seed, "data_seed": seed, "loss_type": loss},
                     env={"COORD_INIT_SEED": init, "COORD_PROMPT": "p"}, settings=SETTINGS)

    a = [run("A1", "A", "0"), run("A2", "A", "1")]
    b = [run("B1", "B", "0", loss="coordexp_geom"), run("B2", "B", "1", loss="coordexp_geom")]
    assert cmp.comparability(a + b) == []
    assert [cmp.seed_label(r) for r in a] == ["42/42/0", "42/42/1"]
    assert cmp.run_seeds(a[1]) == {"seed": "42", "data_seed": "42", "COORD_INIT_SEED": "1"}
    # Another set of initialisation seeds in B: named as a seed difference, not as an environment setting.
    b[1] = run("B2", "B", "2", loss="coordexp_geom")
    assert cmp.comparability(a + b) == [
        '`COORD_INIT_SEED` differs (environment, coord_env.json: the set of values of each group): '
        'A: ["0", "1"]; B: ["0", "2"]']
    # The same triple twice in a group is the same replicate; other COORD_* settings are still compared.
    issues = cmp.comparability([run("A1", "A", "0"), run("A2", "A", "0")])
    assert issues == ["group A: 2 runs but repeated seeds (42/42/0, 42/42/0 as seed/data_seed/COORD_INIT_SEED): "
                      "not independent replicates"]
    other = run("A2", "A", "1")
    other.env["COORD_PROMPT"] = "q"
    assert [i.split(" (")[0] for i in cmp.comparability([run("A1", "A", "0"), other])] == ["`COORD_PROMPT` differs"]


def test_convergence_on_yardsticks_not_on_own_loss():
    """A run that plateaus early at a worse level does not 'converge first'."""
    def run(name, ious, errs):
        r = _fake(name)
        r.eval = [{"_step": 10 * (i + 1), "eval_box_iou_argmax": v, "eval_coord_bin_err": e,
                   "eval_box_iou_argmax_at75": 0.0, "eval_loss": 1.0 / (i + 1)} for i, (v, e) in enumerate(zip(ious, errs))]
        return r

    early = run("B", [0.30, 0.31, 0.31, 0.31], [60, 50, 50, 50])   # plateaus at once, at a worse level
    slow = run("A", [0.10, 0.30, 0.50, 0.60], [90, 40, 25, 20])
    conv = {c["curve"]: c for c in cmp.convergence([slow, early], fraction=0.9)}
    iou = conv["box_iou_argmax"]
    assert iou["best"] == 0.6 and iou["target"] == pytest.approx(0.54) and iou["best_run"] == "A"
    assert iou["runs"]["A"] == {"step": 40, "best": 0.6, "final": 0.6}
    assert iou["runs"]["B"] == {"step": None, "best": 0.31, "final": 0.31}
    err = conv["coord_bin_err"]
    assert err["target"] == pytest.approx(20 / 0.9) and err["runs"]["A"]["step"] == 40 and err["runs"]["B"]["step"] is None
    # Nobody above 0: no target, no step.
    assert conv["box_iou_argmax_at75"]["target"] is None and conv["box_iou_argmax_at75"]["runs"]["A"]["step"] is None


def _compare_cli(*args):
    """coord-compare's entry point in this process: (exit code, stdout + stderr)."""
    import contextlib
    import io
    from types import SimpleNamespace
    from swift_coord_plugin.cli.compare import main

    buf, code = io.StringIO(), 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        try:
            main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return SimpleNamespace(returncode=code, stdout=buf.getvalue())


def test_named_evaluations_are_rows_each_checked_on_its_own(tmp_path):
    """shell/eval.sh EVAL_NAME=argmax / EVAL_NAME=coordexp: RUN/eval/argmax/ and RUN/eval/coordexp/ (real coord-eval
    reports). Each evaluation is a row per group with its own interval and its own comparability; --eval picks one."""
    a = _run(tmp_path, "a1", "A", jitter=12, evaluation="eval/argmax")
    b = _run(tmp_path, "b1", "B", jitter=2, evaluation="eval/argmax")
    _score(a, "eval/coordexp", 20, 7, 30)
    _score(b, "eval/coordexp", 20, 8, 30, score="constant")   # scored another way: not comparable in that row
    out = tmp_path / "cmp"
    s = cmp.compare_runs([a, b], str(out), names=["A", "B"], n_resamples=200, gallery_images=0)
    assert s["evaluation"] == "argmax" and list(s["evaluations"]) == ["argmax", "coordexp"]
    ev = s["evaluations"]
    assert ev["argmax"]["comparable"] and s["comparable"]
    assert not ev["coordexp"]["comparable"]
    assert [i.split(" differs")[0] for i in ev["coordexp"]["comparability_issues"]] == ["`score`"]
    for name in ("argmax", "coordexp"):
        for run, g in ((a, "A"), (b, "B")):
            rep = json.load(open(os.path.join(run, "eval", name, "report.json")))
            assert ev[name]["group_metrics"][g]["AP"]["mean"] == pytest.approx(rep["metrics"]["AP"])
            lo, hi = ev[name]["bootstrap"]["groups"][g]["AP"]["ci"]
            assert lo <= rep["metrics"]["AP"] <= hi
    # The detailed sections show the first evaluation: its AP along training comes from eval/argmax/checkpoint-N.
    assert [p["step"] for p in s["runs"][0]["ap_along_training"]] == [10, 30]
    md = (out / "summary.md").read_text()
    assert "| evaluation | group | n | AP | AP50 | AP75 | AP 95% CI | checkpoint | comparable |" in md
    assert re.search(r"^\| coordexp \| B \| 1 \| .* \| NO \|$", md, flags=re.M)
    assert re.search(r"^\| argmax \| A \| 1 \| .* \| yes \|$", md, flags=re.M)
    assert "evaluation `coordexp`: **NOT COMPARABLE**: `score` differs" in md
    # --eval through the command: one evaluation, its reports.
    proc = _compare_cli(a, b, "--names", "A", "B", "--out", tmp_path / "cmp2", "--eval", "coordexp",
                        "--bootstrap", "0", "--gallery", "0")
    assert proc.returncode == 0, proc.stdout
    s2 = json.load(open(tmp_path / "cmp2" / "summary.json"))
    assert s2["evaluation"] == "coordexp" and list(s2["evaluations"]) == ["coordexp"] and not s2["comparable"]
    assert s2["runs"][0]["metrics"]["AP"] == json.load(open(os.path.join(a, "eval", "coordexp", "report.json")))["metrics"]["AP"]
    proc = _compare_cli(a, b, "--out", tmp_path / "cmp3", "--eval", "free")
    assert proc.returncode == 2 and "--eval free: no run has an evaluation of that name (found: argmax, coordexp" \
        in proc.stdout, proc.stdout


def test_select_on_a_held_out_split_and_test_set_selection(tmp_path):
    """--select-on NAME chooses each run's checkpoint by its AP in evaluation NAME and reads the scored evaluation at
    that checkpoint; the summary says which split chose it, and flags a choice made on the scored images."""
    ids = [i["id"] for i in json.load(open(GT))["images"]]
    sel_ids, test_ids = ids[:4], ids[4:]
    runs = []
    for name, group, seed in (("a1", "A", 1), ("b1", "B", 2)):
        d = _run(tmp_path, name, group, seed=42, evaluation=None)
        # Selection split: step 10 is the best (small jitter) for A, step 30 for B. Scored split: CKPT=all at both.
        _score(d, "eval/select/checkpoint-10", 1 if group == "A" else 30, seed, 10, image_ids=sel_ids)
        _score(d, "eval/select/checkpoint-30", 30 if group == "A" else 1, seed, 30, image_ids=sel_ids)
        _score(d, "eval/test/checkpoint-10", 10, seed + 5, 10, image_ids=test_ids)
        _score(d, "eval/test/checkpoint-30", 12, seed + 6, 30, image_ids=test_ids)
        runs.append(d)
    s = cmp.compare_runs(runs, str(tmp_path / "cmp"), names=["A", "B"], n_resamples=0, gallery_images=0,
                         select_on="select")
    assert [(x["run"], x["step"]) for x in s["selection"]["runs"]] == [("A", 10), ("B", 30)]
    assert list(s["evaluations"]) == ["test"]       # the selection split is not a scored row
    assert s["selection"]["rows"]["test"] == {"images": "held out", "shared_images": 0, "test_set_selection": False}
    for run, step, row in zip(runs, (10, 30), s["runs"]):
        rep = json.load(open(os.path.join(run, "eval", "test", f"checkpoint-{step}", "report.json")))
        assert row["metrics"]["AP"] == rep["metrics"]["AP"]
    md = (tmp_path / "cmp" / "summary.md").read_text()
    assert "highest AP in evaluation `select` (A 10, B 30)" in md and "disjoint from the scored ones" in md
    assert "TEST-SET SELECTION" not in md
    # Chosen on the images it is scored on: flagged, in the summary and the table.
    proc = _compare_cli(*runs, "--names", "A", "B", "--out", tmp_path / "cmp2", "--eval", "test", "--select-on", "test",
                        "--bootstrap", "0", "--gallery", "0")
    assert proc.returncode == 0, proc.stdout
    s2 = json.load(open(tmp_path / "cmp2" / "summary.json"))
    assert s2["evaluations"]["test"]["test_set_selection"] and s2["selection"]["rows"]["test"]["images"] == "same"
    assert "**TEST-SET SELECTION**: the checkpoint was chosen on the same images it is scored on" in \
        (tmp_path / "cmp2" / "summary.md").read_text()
    # No selection: said so; a scored checkpoint before the end of training is named as a possible selection.
    s3 = cmp.compare_runs(runs, str(tmp_path / "cmp3"), names=["A", "B"], n_resamples=0, gallery_images=0,
                          eval_name="select")
    md3 = (tmp_path / "cmp3" / "summary.md").read_text()
    assert s3["selection"]["on"] is None and "Checkpoint: not chosen by the comparison" in md3
    assert "Not the last training step" not in md3           # latest scored = step 30 = the last step
    os.remove(os.path.join(runs[0], "eval", "select", "checkpoint-30", "report.json"))
    cmp.compare_runs(runs, str(tmp_path / "cmp4"), names=["A", "B"], n_resamples=0, gallery_images=0, eval_name="select")
    assert "Not the last training step for A (step 10 of 30)" in (tmp_path / "cmp4" / "summary.md").read_text()
    # A selection split that scored no checkpoint of a run: a clear error.
    shutil.rmtree(os.path.join(runs[1], "eval", "test"))
    proc = _compare_cli(*runs, "--out", tmp_path / "cmp6", "--select-on", "test", "--bootstrap", "0")
    assert proc.returncode == 2 and "b1" in proc.stdout and "evaluation `test` has no scored checkpoint" in proc.stdout


def test_selection_overlap_of_the_selection_and_scored_images():
    from swift_coord_plugin.provenance import image_set_digest
    s = lambda gt, ids: {"gt_sha256": gt, "image_set": image_set_digest(ids)}  # noqa: E731
    assert cmp.selection_overlap(s("g", [1, 2, 3]), s("g", [1, 2, 3])) == ("same", 3)
    assert cmp.selection_overlap(s("g", [1, 2, 3]), s("g", [3, 4])) == ("overlap", 1)
    assert cmp.selection_overlap(s("g", [1, 2]), s("g", [3, 4])) == ("held out", 0)
    assert cmp.selection_overlap(s("train", [1, 2]), s("val", [1, 2])) == ("other GT file", None)
    assert cmp.selection_overlap({"image_set": {}}, s("g", [1])) == ("unknown", None)


def test_reference_predictor_and_data_summary_beside_the_groups(tmp_path):
    """--reference LABEL=REPORT (an untrained predictor scored by coord-eval, e.g. coord-constant-baseline) is shown
    beside the groups with whether it was scored on the same GT file and images; --data-summary shows the data."""
    from swift_coord_plugin.data.shapes import ShapesConfig, SplitSpec, make_shapes
    from swift_coord_plugin.eval.constant import constant_rows

    runs = [_run(tmp_path, "a1", "A"), _run(tmp_path, "b1", "B", jitter=20)]
    gt = json.load(open(GT))
    ref = tmp_path / "constant"
    # The constant predictor (each class's mean box of these images) on the runs' images, scored by coord-eval.
    rows = constant_rows(gt, gt)
    for path, some in ((tmp_path / "all.jsonl", rows), (tmp_path / "some.jsonl", rows[:4])):
        path.write_text("".join(json.dumps(r) + "\n" for r in some))
    write_outputs(str(ref), evaluate_results(str(tmp_path / "all.jsonl"), GT, EvalSettings(), progress=False))
    other = tmp_path / "constant_subset"
    write_outputs(str(other), evaluate_results(str(tmp_path / "some.jsonl"), GT,
                                               EvalSettings(subset_from_results=True), progress=False))
    shapes = tmp_path / "shapes"
    make_shapes(str(shapes), [SplitSpec("train", 4, 0), SplitSpec("val", 3, 1)], ShapesConfig(max_objects=3))
    proc = _compare_cli(*runs, "--out", tmp_path / "cmp", "--names", "A", "B", "--bootstrap", "0", "--gallery", "0",
                        "--reference", f"constant=predictor={ref / 'report.json'}",
                        "--reference", f"subset={other / 'report.json'}", "--data-summary", shapes / "summary.json")
    assert proc.returncode == 0, proc.stdout
    s = json.load(open(tmp_path / "cmp" / "summary.json"))
    refs = {r["label"]: r for r in s["references"]}
    assert refs["constant=predictor"]["same_images"] and not refs["subset"]["same_images"]
    rep = json.load(open(ref / "report.json"))
    assert refs["constant=predictor"]["metrics"]["AP50"] == rep["metrics"]["AP50"] < 0.5
    md = (tmp_path / "cmp" / "summary.md").read_text()
    assert re.search(r"^## Data$", md, flags=re.M) and "| val | 1 | 3 |" in md
    assert re.search(r"\| constant=predictor \| yes \| [0-9.]+ \| " + f"{rep['metrics']['AP50']:.4f}", md)
    assert "| subset | **NO** |" in md
    bad = _compare_cli(*runs, "--out", tmp_path / "cmp2", "--reference", "nolabel")
    assert bad.returncode == 2 and "LABEL=REPORT" in bad.stdout
    missing = _compare_cli(*runs, "--out", tmp_path / "cmp3", "--reference", f"x={tmp_path / 'none.json'}")
    assert missing.returncode == 2 and "reference 'x': no report at" in missing.stdout
