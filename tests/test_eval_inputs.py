"""coord-eval on inputs as other tools and people write them (ground-truth files, descriptions, coverage,
--max-dets): each kind of fault with the right value.

Where the right value is AP 1.0, ground-truth boxes that sit exactly on the bin grid (integer pixels of a
1000 x 1000 image: bin k is pixel k) are fed back as answers.
"""
import json
import re
import unicodedata

import numpy as np
import pytest
from helpers import REPO, fed_back, toy_gt, write_json, write_rows

from swift_coord_plugin.cli.evaluate import main
from swift_coord_plugin.data import coco as converter
from swift_coord_plugin.eval.scoring import EvalError, EvalSettings, evaluate_results
from swift_coord_plugin.eval.synthetic import response_row, rows_from_boxes

SAMPLE = REPO / "assets" / "coco_sample"


# ----------------------------------------------------------------------------- GT files as tools write them
def test_gt_without_area_iscrowd_or_ids_scores_with_the_implied_values(tmp_path):
    gt = toy_gt()
    for a in gt["annotations"]:
        del a["area"], a["iscrowd"], a["id"]
    gt_path = write_json(tmp_path / "gt.json", gt)
    ev = evaluate_results(fed_back(gt, tmp_path / "r.jsonl"), gt_path, progress=False)
    assert ev.report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert ev.report["settings"]["gt_repairs"] == {
        "area_filled_with_box_area": 6, "iscrowd_filled_with_0": 6, "annotation_ids_assigned": 6,
        "annotation_ids_reason": "6 missing", "image_ids_mapped_to_integers": 0, "ignore_flagged_scored_as_boxes": 0}


@pytest.mark.parametrize("ids", [[1, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5], ["a", 1, 2, 3, 4, 5]])
def test_gt_ids_pycocotools_cannot_use_are_reassigned(tmp_path, ids):
    # pycocotools indexes annotations by id (a duplicate replaces a box) and means "unmatched" by id 0
    # (a detection matched to the box with id 0 counts as a false positive): both lose AP silently.
    gt = toy_gt()
    for a, i in zip(gt["annotations"], ids):
        a["id"] = i
    gt_path = write_json(tmp_path / "gt.json", gt)
    ev = evaluate_results(fed_back(gt, tmp_path / "r.jsonl"), gt_path, progress=False)
    assert ev.report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert ev.report["settings"]["gt_repairs"]["annotation_ids_assigned"] == 6


def test_gt_with_a_byte_order_mark_is_read_like_the_converter_reads_it(tmp_path):
    gt = toy_gt()
    gt_path = write_json(tmp_path / "gt.json", gt, bom=True)
    assert converter.read_instances(gt_path)["images"]  # the converter accepts it ...
    ev = evaluate_results(fed_back(gt, tmp_path / "r.jsonl"), gt_path, progress=False)  # ... and so does coord-eval
    assert ev.report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("field, value, message", [
    ("category_id", "1", r"annotations\[2\]\): category_id '1' is not a category id"),
    ("bbox", [1, 2, 3], r"annotations\[2\]\): bbox must be 4 finite numbers"),
    ("bbox", [1, 2, -3, 4], r"annotations\[2\]\): bbox width and height must be >= 0"),
    ("iscrowd", 2, r"annotations\[2\]\): iscrowd must be 0 or 1"),
    ("area", "big", r"annotations\[2\]\): area must be a number"),
    ("image_id", 99, r"annotations\[2\]\): image_id 99 is not an image id"),
])
def test_gt_the_scorer_cannot_score_is_exit_2_before_the_row_pass(tmp_path, capsys, field, value, message):
    gt = toy_gt()
    gt["annotations"][2][field] = value
    gt_path = write_json(tmp_path / "gt.json", gt)
    results = tmp_path / "r.jsonl"
    results.write_text("not json\n")  # the row pass would fail on line 1: the GT error must come first
    assert main(["--results", str(results), "--gt", gt_path, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "gt.json" in err
    assert re.search(message, err), err


def test_gt_image_ids_must_be_integers_or_strings(tmp_path):
    gt = toy_gt()
    gt["images"][1]["id"] = 11.5
    gt_path = write_json(tmp_path / "gt.json", gt)
    with pytest.raises(EvalError, match=r"gt.json: images\[1\]: id must be an integer or a non-empty string"):
        evaluate_results(fed_back(toy_gt(), tmp_path / "r.jsonl"), gt_path, progress=False)


# ----------------------------------------------------------------------------- descriptions
def test_category_names_in_another_unicode_form_still_match(tmp_path):
    names = ("crème brûlée", "crêpe")
    gt = toy_gt(tuple(unicodedata.normalize("NFD", n) for n in names))  # decomposed in the GT file
    gt_path = write_json(tmp_path / "gt.json", gt)
    # the model writes the composed form (the tokenizer normalises training text to NFC)
    results = fed_back(gt, tmp_path / "r.jsonl", desc_of=lambda n: unicodedata.normalize("NFC", n))
    ev = evaluate_results(results, gt_path, progress=False)
    assert ev.report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert ev.report["counts"]["objects"]["unmatched_description"] == 0
    # and the other way round
    gt2 = toy_gt(tuple(unicodedata.normalize("NFC", n) for n in names))
    results = fed_back(gt2, tmp_path / "r2.jsonl", desc_of=lambda n: unicodedata.normalize("NFD", n))
    ev = evaluate_results(results, write_json(tmp_path / "gt2.json", gt2), progress=False)
    assert ev.report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)


def test_a_model_trained_with_a_description_map_is_scored_through_it(tmp_path):
    gt = toy_gt(("person", "dog"))
    gt_path = write_json(tmp_path / "gt.json", gt)
    phrases = {"person": "a person", "dog": "a small dog"}
    results = fed_back(gt, tmp_path / "r.jsonl", desc_of=phrases.get)
    plain = evaluate_results(results, gt_path, progress=False)
    assert plain.report["metrics"]["AP"] == 0.0  # phrases no category name matches
    assert plain.report["settings"]["category_mapping"]["desc_map"] is None
    assert "WARNING: 6 of 6 objects have a description that maps to no category" in plain.report["headline"]
    assert "--desc-map" in plain.report["headline"]
    inline = '{"1": "a person", "dog": "a small dog"}'
    ev = evaluate_results(results, gt_path, EvalSettings(desc_map=inline), progress=False)
    assert ev.report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12) and "WARNING" not in ev.report["headline"]
    assert ev.report["settings"]["category_mapping"]["desc_map"]["map"] == {"1": "a person", "dog": "a small dog"}
    # the converter's summary records the map it used: coord-eval takes it from there as well
    sample = json.loads((SAMPLE / "instances.json").read_text())
    summary = converter.prepare_coco(str(SAMPLE / "instances.json"), str(SAMPLE / "images"),
                                     str(tmp_path / "train.jsonl"),
                                     converter.ConvertOptions(desc_map={"1": "a person", "18": "a small dog"}))
    assert summary.options["desc_map"]
    summary_path = converter.summary_path_for(str(tmp_path / "train.jsonl"))
    trained = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert any(o["desc"] == "a person" for r in trained for o in r["objects"])
    sample_results = fed_back(sample, tmp_path / "s.jsonl",
                              desc_of=lambda n: {"person": "a person", "dog": "a small dog"}.get(n, n))
    ev = evaluate_results(sample_results, str(SAMPLE / "instances.json"), EvalSettings(desc_map=summary_path),
                          progress=False)
    assert ev.report["counts"]["objects"]["unmatched_description"] == 0
    assert ev.report["metrics"]["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert "conversion summary" in ev.report["settings"]["category_mapping"]["desc_map"]["source"]
    with pytest.raises(EvalError, match="neither a category id nor a category name"):
        evaluate_results(results, gt_path, EvalSettings(desc_map='{"unicorn": "a unicorn"}'), progress=False)


# ----------------------------------------------------------------------------- which images are scored
def test_missing_rows_are_an_error_unless_a_subset_is_asked_for(tmp_path, capsys):
    gt = toy_gt(n_images=4)
    gt_path = write_json(tmp_path / "gt.json", gt)
    results = fed_back(gt, tmp_path / "r.jsonl", drop_images=(12,))
    with pytest.raises(EvalError, match=r"1 of 4 GT images .* have no row .*: 12 \(img2.jpg\)"):
        evaluate_results(results, gt_path, progress=False)
    sub = evaluate_results(results, gt_path, EvalSettings(subset_from_results=True), progress=False)
    assert sub.report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert sub.report["headline"].startswith("Scored 3 of 4 GT images") and "WARNING" in sub.report["headline"]
    every = evaluate_results(results, gt_path, EvalSettings(all_gt_images=True), progress=False)
    assert every.report["coverage"]["scored_images"] == 4 and every.report["metrics"]["AR100"] == pytest.approx(0.75)
    # the CLI: exit 2 without a choice; with one, the report's first line says what was scored
    out = tmp_path / "out"
    assert main(["--results", results, "--gt", gt_path, "--out", str(out), "--no-progress"]) == 2
    assert "--subset-from-results" in capsys.readouterr().err
    assert main(["--results", results, "--gt", gt_path, "--out", str(out), "--no-progress",
                 "--subset-from-results"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("**Scored 3 of 4 GT images") and "WARNING" in captured.err
    assert (out / "report.md").read_text().startswith("**Scored 3 of 4 GT images")


def test_val_data_needs_every_row_exactly_once(tmp_path, capsys):
    gt = toy_gt(n_images=4)
    gt_path = write_json(tmp_path / "gt.json", gt)
    val = write_rows(tmp_path / "val.jsonl", [{"image": f"/data/{i['file_name']}", "image_id": i["id"],
                                               "objects": []} for i in gt["images"][:3]])
    rows = [json.loads(x) for x in open(fed_back(gt, tmp_path / "all.jsonl"))]
    good = write_rows(tmp_path / "good.jsonl", rows[:3])
    ev = evaluate_results(good, gt_path, EvalSettings(val_data=val), progress=False)
    assert ev.report["coverage"]["scored_images"] == 3 and ev.report["metrics"]["AP"] == pytest.approx(1.0)
    assert ev.report["headline"].startswith("Scored 3 of 4 GT images (the images of --val-data")
    cases = {
        "missing": (rows[:2], r"1 image\(s\) of --val-data have no result row: 12 \(img2.jpg\)"),
        "duplicate": (rows[:3] + [rows[1]], r"line 4 repeats image 11 \(first at line 2\)"),
        "extra": (rows, r"1 row\(s\) for images not in --val-data: 13 \(img3.jpg\)"),
    }
    for name, (subset, message) in cases.items():
        with pytest.raises(EvalError, match=message):
            evaluate_results(write_rows(tmp_path / f"{name}.jsonl", subset), gt_path, EvalSettings(val_data=val),
                             progress=False)
    assert main(["--results", str(tmp_path / "missing.jsonl"), "--gt", gt_path, "--out", str(tmp_path / "o"),
                 "--val-data", val, "--no-progress"]) == 2
    assert "does not hold every row of --val-data" in capsys.readouterr().err
    # a val file that is not the GT's split
    other = write_rows(tmp_path / "other.jsonl", [{"image": "/x/zzz.jpg", "objects": []}])
    with pytest.raises(EvalError, match=r"other.jsonl:1: unknown file name"):
        evaluate_results(good, gt_path, EvalSettings(val_data=other), progress=False)


def test_the_image_file_size_is_compared_with_the_gt_size(tmp_path):
    gt = json.loads((SAMPLE / "instances.json").read_text())
    for img in gt["images"]:
        img["file_name"] = str(SAMPLE / "images" / img["file_name"])  # rows carry the real paths
    rows = rows_from_boxes(gt, gt["annotations"], logprobs=False)
    gt["images"][0]["width"] += 10  # the GT of another version of the first image
    gt_path = write_json(tmp_path / "gt.json", gt)
    ev = evaluate_results(write_rows(tmp_path / "r.jsonl", rows), gt_path, progress=False)
    r = ev.report["counts"]["rows"]
    assert r["size_differs_from_gt"] == 1 and r["size_differs_from_gt_lines"] == [1]
    assert r["image_file_not_checked"] == 0
    assert "1 image files store another pixel size" in ev.report["headline"]


# ----------------------------------------------------------------------------- --max-dets N
def coco_ap_ar(gts, dets, max_dets, thresholds=tuple(0.5 + 0.05 * i for i in range(10))):
    """COCO bbox AP and AR of one image and one category, written from the COCO detection-evaluation
    definition (cocodataset.org/#detection-eval), not from pycocotools: the ``max_dets`` highest-scored
    detections, greedy matching in score order to the best-IoU unmatched GT with IoU >= t, for t in
    .50:.05:.95; precision made monotone from the right and sampled at the 101 recall points 0:.01:1
    (0 beyond the last recall reached); AP and AR (final recall) averaged over t."""
    def iou(a, b):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    dets = sorted(dets, key=lambda d: -d[1])[:max_dets]
    aps, ars = [], []
    for t in thresholds:
        used, tp = set(), []
        for box, _ in dets:
            best, hit = None, None
            for g, gbox in enumerate(gts):
                v = iou(box, gbox)
                if g not in used and v >= t - 1e-12 and (best is None or v > best):
                    best, hit = v, g
            if hit is not None:
                used.add(hit)
            tp.append(hit is not None)
        n_tp = np.cumsum(tp)
        recall = n_tp / len(gts)
        precision = n_tp / np.arange(1, len(tp) + 1)
        for i in range(len(precision) - 1, 0, -1):
            precision[i - 1] = max(precision[i - 1], precision[i])
        sampled = []
        for r in np.linspace(0, 1, 101):
            idx = [i for i, rc in enumerate(recall) if rc >= r - 1e-12]
            sampled.append(precision[idx[0]] if idx else 0.0)
        aps.append(np.mean(sampled))
        ars.append(recall[-1] if len(recall) else 0.0)
    return float(np.mean(aps)), float(np.mean(ars))


def test_max_dets_n_gives_ap_at_n(tmp_path):
    # One 1000 x 1000 image, one category, 12 GT boxes of 50 x 50 px on the bin grid; 15 detections in
    # falling score order: exact hits, two false positives, one box shifted 5 px (IoU 0.818: a hit only up
    # to t = .80), and three hits ranked 13th-15th that only count when max_dets >= 13.
    gts = [(60 * i + 10, 100, 60 * i + 60, 150) for i in range(12)]
    far = (900, 900, 950, 950)
    shifted = (gts[1][0] + 5, gts[1][1], gts[1][2] + 5, gts[1][3])
    order = [gts[0], far, shifted] + gts[2:9] + [(800, 800, 840, 840), gts[9]] + gts[10:12] + [(905, 900, 955, 950)]
    dets = [(box, round(0.99 - 0.05 * i, 2)) for i, box in enumerate(order)]
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 1000, "height": 1000}],
          "categories": [{"id": 1, "name": "person"}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": [b[0], b[1], 50, 50],
                           "area": 2500.0, "iscrowd": 0} for i, b in enumerate(gts)]}
    gt_path = write_json(tmp_path / "gt.json", gt)
    # written in score order (the generation order of a model), each score carried by its logprobs
    row = response_row(gt["images"][0], [("person", box, s) for box, s in dets], logprobs=True)
    results = write_rows(tmp_path / "r.jsonl", [row])
    seen = {}
    for n in (10, 12, 100):
        m = evaluate_results(results, gt_path, EvalSettings(max_dets=n), progress=False).report["metrics"]
        ap, ar = coco_ap_ar(gts, dets, n)
        assert m["AP"] == pytest.approx(ap, abs=1e-9), n
        assert m["AR100"] == pytest.approx(ar, abs=1e-9), n  # the key holds AR@N
        assert m["AR10"] == pytest.approx(coco_ap_ar(gts, dets, 10)[1], abs=1e-9)
        assert m["AP50"] == pytest.approx(coco_ap_ar(gts, dets, n, thresholds=(0.5,))[0], abs=1e-9)
        seen[n] = m["AP"]
    assert seen[10] < seen[12] < seen[100]  # the cut is really applied to AP
