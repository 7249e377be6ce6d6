"""End to end on the tiny model: swift sft -> swift infer --logprobs true --top_logprobs K -> coord-eval.

A few training steps leave the model writing junk, so AP is about 0 there; what is checked is the
plumbing (rows matched through the data pipeline's image ids, logprobs read, every count consistent,
detections re-scorable with pycocotools). The real result lines are then given ground-truth answers, in the
format swift writes, to check that the same rows score AP50 = 1.
"""
import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, base_infer_args, base_sft_args, last_checkpoint, read_jsonl, run_swift
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swift_coord_plugin.eval.results import END_OF_TURN_TOKENS
from swift_coord_plugin.eval.scoring import METRIC_NAMES, EvalSettings, evaluate_results
from swift_coord_plugin.eval.synthetic import quantised_objects, response_row

pytestmark = pytest.mark.e2e

GT = REPO / "assets" / "coco_sample" / "instances.json"
IMAGE_IDS = (30, 92)  # two samples with two objects each: short sequences
TOP_K = 5


def coord_eval(args, cwd):
    exe = Path(sys.executable).parent / "coord-eval"
    return subprocess.run([str(exe), *args], cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=120)


def test_sft_infer_coord_eval(tiny_model_dir, sample_jsonl, tmp_path):
    samples = [r for r in read_jsonl(sample_jsonl) if r["image_id"] in IMAGE_IDS]
    data = tmp_path / "two.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in samples))
    out = str(tmp_path / "sft")
    run_swift("sft", base_sft_args(tiny_model_dir, str(data), out, steps=1), tmp_path)
    result = tmp_path / "infer.jsonl"
    run_swift("infer", base_infer_args(last_checkpoint(out), str(data), str(result), max_new_tokens=16,
                                       extra=["--logprobs", "true", "--top_logprobs", str(TOP_K)]), tmp_path)
    rows = read_jsonl(result)
    assert len(rows) == 2 and all(r["logprobs"]["content"] for r in rows)

    proc = coord_eval(["--results", str(result), "--gt", str(GT), "--out", str(tmp_path / "eval"),
                       "--decode", "coordexp", "--plots", "--val-data", str(data)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| AP | AP50 |" in proc.stdout and "coord-eval" in proc.stderr  # the table and the progress bar
    for name in ("report.json", "report.md", "detections.json", "iou_histogram.png",
                 "coordinate_distributions.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["metrics"]) == set(METRIC_NAMES)
    s, c = report["settings"], report["counts"]
    assert s["decode"] == "coordexp" and s["score"] == "logprob" and s["max_dets"] == 100
    r = c["rows"]
    assert r["total"] == 2 and r["matched_by_image_id"] == 2 and r["with_logprobs"] == 2 and r["unmatched"] == {}
    cut = sum(1 for row in rows if row["logprobs"]["content"][-1]["token"] not in END_OF_TURN_TOKENS)
    assert r["without_end_of_turn"] == cut
    assert c["images"]["evaluated"] == 2 and c["images"]["gt_images_without_row"] == 7
    assert report["headline"].startswith("Scored 2 of 9 GT images (the images of --val-data")
    # the rows carry the real image paths: their stored pixel grids were compared with the GT's sizes
    assert r["size_differs_from_gt"] == 0 and r["image_file_not_checked"] == 0
    o = c["objects"]
    assert o["parsed"] == o["in_unmatched_rows"] + o["in_duplicate_rows"] + o["unmatched_description"] + \
        o["detections"]
    assert c["coordexp"]["coordinate_positions"] == 4 * o["detections"]
    assert c["coordexp"]["top_k"] in (0, TOP_K)
    dets = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert len(dets) == o["detections"]
    if dets:  # whatever the junk model wrote is re-scorable by pycocotools alone
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(GT))
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
            ev.params.imgIds = list(IMAGE_IDS)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        assert list(ev.stats) == pytest.approx([report["metrics"][n] for n in METRIC_NAMES], abs=1e-12)

    # The same real result lines with ground-truth answers written as the model would write them.
    gt_json = json.loads(GT.read_text())
    objs = quantised_objects(gt_json, gt_json["annotations"])
    images = {i["id"]: i for i in gt_json["images"]}
    for row in rows:
        iid = row["chat_template_kwargs"]["coord_meta"]["image_id"]
        fake = response_row(images[iid], objs[iid], logprobs=True, top_k=1)
        row["response"], row["logprobs"] = fake["response"], fake["logprobs"]
    perfect = tmp_path / "perfect.jsonl"
    perfect.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ev = evaluate_results(str(perfect), str(GT), EvalSettings(val_data=str(data)), progress=False)
    assert ev.report["metrics"]["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert ev.report["counts"]["rows"]["matched_by_image_id"] == 2
    assert ev.report["counts"]["objects"]["detections"] == sum(len(objs[i]) for i in IMAGE_IDS)
