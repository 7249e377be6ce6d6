"""The evaluator against pycocotools on real COCO data: published demo detections and GT fed back.

The reference numbers are computed here, independently of the evaluator's conversion: boxes quantised
with the codec's bin rule, turned back into pixels inline (k / 1000 * side), scored by pycocotools itself.
"""
import contextlib
import copy
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from helpers import SHARED_DATA, shared_data_or_skip
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swift_coord_plugin.core import codec
from swift_coord_plugin.eval.scoring import METRIC_NAMES, EvalError, EvalSettings, evaluate_results, write_outputs
from swift_coord_plugin.eval.synthetic import quantised_objects, response_row, rows_from_boxes

DEMO = SHARED_DATA / "cocoapi_val2014_100"
C128 = SHARED_DATA / "coco128" / "annotations" / "instances_train2017.json"


def need(path: Path) -> Path:
    return shared_data_or_skip(*path.relative_to(SHARED_DATA).parts)


def load(path: Path) -> dict:
    with open(need(path)) as f:
        return json.load(f)


def write_rows(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def pycocotools_stats(gt_path, dets, img_ids=None, max_dets=100):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "bbox")
        if img_ids is not None:
            ev.params.imgIds = sorted(img_ids)
        ev.params.maxDets = [1, 10, max_dets]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


def quantised_reference(gt: dict, boxes, constant=False):
    """The boxes as a coordinate-token model would give them back, ordered within each image by the
    codec's object order (the bins of y1, x1, then y1, x1 on the normalised box), in pixels."""
    imgs = {i["id"]: i for i in gt["images"]}
    out = []
    for b in boxes:
        img = imgs[b["image_id"]]
        w, h = img["width"], img["height"]
        x, y, bw, bh = b["bbox"]
        norm = [min(max(v, 0.0), 1.0) for v in (x / w, y / h, (x + bw) / w, (y + bh) / h)]
        k = [codec.quantize(v) for v in norm]
        x1, y1, x2, y2 = k[0] / 1000 * w, k[1] / 1000 * h, k[2] / 1000 * w, k[3] / 1000 * h
        out.append(((b["image_id"], k[1], k[0], norm[1], norm[0]), {
            "image_id": b["image_id"], "category_id": b["category_id"], "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": 1.0 if constant else b["score"]}))
    return [d for _, d in sorted(out, key=lambda t: t[0])]  # sorted() is stable: ties keep input order


def as_list(metrics: dict):
    return [metrics[n] for n in METRIC_NAMES]


# ----------------------------------------------------------------------------- published demo detections
@pytest.fixture(scope="module")
def demo():
    gt_path = need(DEMO / "instances_val2014_100.json")
    return gt_path, load(gt_path), load(DEMO / "instances_val2014_fakebbox100_results.json"), \
        load(DEMO / "reference_metrics.json")["full_100_images"]["bbox"]


def test_demo_detections_match_pycocotools_and_the_published_ap(demo, tmp_path):
    gt_path, gt, dets, published = demo
    assert pycocotools_stats(gt_path, dets)[0] == pytest.approx(published[0], abs=1e-12)  # same data as cocoapi
    results = write_rows(tmp_path / "r.jsonl", rows_from_boxes(gt, dets, logprobs=True, by="image_id"))
    ev = evaluate_results(results, str(gt_path), progress=False)
    ref = pycocotools_stats(gt_path, quantised_reference(gt, dets))
    assert as_list(ev.report["metrics"]) == pytest.approx(ref, abs=1e-9)
    assert abs(ev.report["metrics"]["AP"] - published[0]) < 0.01
    assert ev.report["settings"]["score"] == "logprob"
    c = ev.report["counts"]
    assert c["rows"]["matched_by_image_id"] == 100 and c["objects"]["detections"] == len(dets)
    assert c["images"]["evaluated"] == 100 and sum(c["parser"].values()) == 0
    # detections.json re-scored by pycocotools alone gives the same numbers
    write_outputs(str(tmp_path / "out"), ev)
    with open(tmp_path / "out" / "detections.json") as f:
        written = json.load(f)
    assert pycocotools_stats(gt_path, written) == pytest.approx(as_list(ev.report["metrics"]), abs=1e-12)


def test_coordexp_with_a_single_alternative_is_argmax(demo, tmp_path):
    gt_path, gt, dets, _ = demo
    results = write_rows(tmp_path / "r.jsonl", rows_from_boxes(gt, dets, logprobs=True, top_k=1))
    a = evaluate_results(results, str(gt_path), EvalSettings(decode="argmax"), progress=False)
    e = evaluate_results(results, str(gt_path), EvalSettings(decode="coordexp"), progress=False)
    assert as_list(e.report["metrics"]) == as_list(a.report["metrics"])
    ce = e.report["counts"]["coordexp"]
    assert ce["coordinate_positions"] == 4 * len(dets) and ce["top_k"] == 1
    assert ce["positions_by_coordinate_tokens_in_top_k"] == {"1": 4 * len(dets)}


def test_constant_scores_rank_by_generation_order(demo, tmp_path):
    gt_path, gt, dets, _ = demo
    results = write_rows(tmp_path / "r.jsonl", rows_from_boxes(gt, dets, logprobs=True))
    ev = evaluate_results(results, str(gt_path), EvalSettings(score="constant"), progress=False)
    ref = pycocotools_stats(gt_path, quantised_reference(gt, dets, constant=True))
    assert as_list(ev.report["metrics"]) == pytest.approx(ref, abs=1e-9)
    # The same objects generated least confident first: constant scores change AP, confidences do not
    # (ties keep their relative order, which is how pycocotools breaks them).
    objs = quantised_objects(gt, dets)
    other = write_rows(tmp_path / "other.jsonl", [response_row(img, sorted(objs.get(img["id"], []), key=lambda o: o[2]))
                                                  for img in gt["images"]])
    moved = evaluate_results(other, str(gt_path), EvalSettings(score="constant"), progress=False)
    assert abs(moved.report["metrics"]["AP"] - ev.report["metrics"]["AP"]) > 1e-3
    fwd_lp = evaluate_results(results, str(gt_path), progress=False).report["metrics"]
    moved_lp = evaluate_results(other, str(gt_path), progress=False).report["metrics"]
    assert as_list(moved_lp) == as_list(fwd_lp)


# ----------------------------------------------------------------------------- GT fed back
def test_coco128_ground_truth_fed_back(tmp_path):
    gt = load(C128)
    results = write_rows(tmp_path / "r.jsonl", rows_from_boxes(gt, gt["annotations"], logprobs=False,
                                                               by="file_name"))
    ev = evaluate_results(results, str(C128), progress=False)
    m = ev.report["metrics"]
    ref = pycocotools_stats(C128, quantised_reference(gt, gt["annotations"], constant=True))
    assert as_list(m) == pytest.approx(ref, abs=1e-9)
    assert m["AP50"] == 1.0 and 0.98 < m["AP"] < 1.0
    c = ev.report["counts"]
    assert ev.report["settings"]["score"] == "constant"
    assert c["rows"]["matched_by_file_name"] == 128 and c["rows"]["without_objects"] == 2
    assert c["objects"]["detections"] == len(gt["annotations"]) and c["objects"]["unmatched_description"] == 0
    assert ev.report["matched_iou"]["matched_at_iou_0.5"] == c["images"]["gt_boxes"]


# ----------------------------------------------------------------------------- counts
@pytest.fixture(scope="module")
def c128():
    return load(C128)


def test_every_row_and_object_is_accounted_for(c128, tmp_path):
    gt = c128
    ids = [i["id"] for i in gt["images"][:10]]
    rows = rows_from_boxes(gt, [a for a in gt["annotations"] if a["image_id"] in ids], image_ids=ids)
    rows[1] = rows_from_boxes(gt, [a for a in gt["annotations"] if a["image_id"] == ids[1]], image_ids=[ids[1]],
                              by="file_name")[0]
    dup = copy.deepcopy(rows[2])
    unknown_id = copy.deepcopy(rows[3])
    unknown_id["chat_template_kwargs"]["coord_meta"]["image_id"] = 10 ** 9
    unknown_name = {"response": rows[4]["response"], "images": [{"path": "/elsewhere/nope.jpg"}]}
    no_image = {"response": "", "images": []}
    extra = (f"{codec.OBJ_START} unicorn {''.join(codec.coord_token(k) for k in (1, 2, 3, 4))} {codec.OBJ_END}"
             f"{codec.OBJ_START} people {''.join(codec.coord_token(k) for k in (5, 6, 7, 8))} {codec.OBJ_END}")
    rows[0]["response"] += extra
    rows[0]["logprobs"] = None
    # A second row for an image (ms-swift appends to an existing result file): the evaluation stops, naming the lines.
    mixed = write_rows(tmp_path / "mixed.jsonl", rows[:8] + [dup, unknown_id, unknown_name, no_image])
    with pytest.raises(EvalError, match=r"line 9 repeats image .* \(first at line 3\)"):
        evaluate_results(mixed, str(C128), EvalSettings(subset_from_results=True), progress=False)
    results = write_rows(tmp_path / "r.jsonl", rows[:8] + [unknown_id, unknown_name, no_image])
    ev = evaluate_results(results, str(C128), EvalSettings(subset_from_results=True), progress=False)
    c = ev.report["counts"]
    assert c["rows"]["total"] == 11
    assert c["rows"]["matched_by_image_id"] == 7 and c["rows"]["matched_by_file_name"] == 1
    assert c["rows"]["unmatched"] == {"unknown_image_id": 1, "unknown_file_name": 1, "no_image_id_or_file_name": 1}
    assert c["rows"]["duplicate_image"] == 0
    # rows name bare file names: no image file to compare with the GT size (tests/test_eval_inputs.py does)
    assert c["rows"]["size_differs_from_gt"] == 0 and c["rows"]["image_file_not_checked"] == 8
    assert c["images"]["evaluated"] == 8 and c["images"]["gt_images_without_row"] == 120
    o = c["objects"]
    n_in = lambda r: len(codec.parse_objects(r["response"]).objects)  # noqa: E731
    assert o["parsed"] == sum(n_in(r) for r in rows[:8] + [unknown_id, unknown_name])
    assert o["in_unmatched_rows"] == n_in(unknown_id) + n_in(unknown_name)
    assert o["in_duplicate_rows"] == 0
    assert o["unmatched_description"] == 1 and c["unmatched_descriptions"] == {"unicorn": 1}
    assert ev.report["settings"]["category_mapping"]["aliases_used"] == {"people -> person": 1}
    assert o["parsed"] == o["in_unmatched_rows"] + o["in_duplicate_rows"] + o["unmatched_description"] + \
        o["detections"]
    assert ev.report["settings"]["score"] == "constant"  # two rows with objects have no logprobs
    assert "2 rows with objects have no logprobs" in ev.report["settings"]["score_choice"]
    everything = evaluate_results(results, str(C128), EvalSettings(all_gt_images=True), progress=False)
    assert everything.report["counts"]["images"]["evaluated"] == 128
    assert everything.report["metrics"]["AR100"] < ev.report["metrics"]["AR100"]


def test_max_dets_counts_what_cocoeval_ignores(c128, tmp_path):
    gt = c128
    results = write_rows(tmp_path / "r.jsonl", rows_from_boxes(gt, gt["annotations"]))
    per_image, per_pair = Counter(), Counter()
    for a in gt["annotations"]:
        per_image[a["image_id"]] += 1
        per_pair[a["image_id"], a["category_id"]] += 1
    ev = evaluate_results(results, str(C128), EvalSettings(max_dets=10), progress=False)
    o = ev.report["counts"]["objects"]
    # pycocotools applies max_dets to each (image, category) pair
    assert o["beyond_max_dets"] == sum(max(0, n - 10) for n in per_pair.values()) > 0
    assert o["images_over_max_dets"] == sum(1 for n in per_image.values() if n > 10)
    ref = pycocotools_stats(C128, quantised_reference(gt, [dict(a, score=1.0) for a in gt["annotations"]]),
                            max_dets=10)
    # pycocotools' summarize takes AP at a hard-coded 100 detections (-1 here); the other 11 are at 10.
    # AP itself at N is checked against an independent computation in test_eval_inputs.py.
    assert ref[0] == -1.0 and ev.report["metrics"]["AP"] > 0
    assert as_list(ev.report["metrics"])[1:] == pytest.approx(ref[1:], abs=1e-9)


def test_empty_answers_score_zero(c128, tmp_path):
    results = write_rows(tmp_path / "r.jsonl", rows_from_boxes(c128, []))
    ev = evaluate_results(results, str(C128), progress=False)
    assert ev.report["metrics"]["AP"] == 0.0 and ev.report["metrics"]["AR100"] == 0.0
    assert ev.detections == [] and ev.report["counts"]["rows"]["without_objects"] == 128


# ----------------------------------------------------------------------------- clear errors
def test_logprob_settings_without_logprobs_stop_with_the_fix(c128, tmp_path):
    results = write_rows(tmp_path / "r.jsonl", rows_from_boxes(c128, c128["annotations"], logprobs=False))
    for settings in (EvalSettings(decode="coordexp"), EvalSettings(score="logprob")):
        with pytest.raises(EvalError, match=r"r.jsonl:1: .*--logprobs true --top_logprobs K"):
            evaluate_results(results, str(C128), settings, progress=False)
    rows = rows_from_boxes(c128, c128["annotations"], logprobs=True, top_k=0)
    results = write_rows(tmp_path / "r2.jsonl", rows)
    with pytest.raises(EvalError, match="needs top_logprobs"):
        evaluate_results(results, str(C128), EvalSettings(decode="coordexp"), progress=False)


def test_nothing_matched_is_an_error(c128, tmp_path):
    results = write_rows(tmp_path / "r.jsonl", [{"response": "", "images": [{"path": "x.jpg"}]}])
    with pytest.raises(EvalError, match="no row of .* matched an image"):
        evaluate_results(results, str(C128), progress=False)
    with pytest.raises(EvalError, match="a COCO instances file needs"):
        bad = tmp_path / "gt.json"
        bad.write_text("{}")
        evaluate_results(results, str(bad), progress=False)
    with pytest.raises(EvalError, match="--max-dets"):
        evaluate_results(results, str(C128), EvalSettings(max_dets=5), progress=False)
