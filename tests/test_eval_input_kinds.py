"""Files people really have, through the real commands (``coord-eval``, ``coord-prepare-coco``, the shards
tool; their ``main``): each gives pycocotools' number on what the user meant, or exit 2 naming the file,
the line or record, and what to do. Boxes sit on the bin grid (1000 x 1000 px images) where the right value
is 1.0."""
import json
import math
import shutil

import pytest
from helpers import REPO, fed_back, toy_gt, write_json, write_rows

from swift_coord_plugin.cli import evaluate, prepare_coco
from swift_coord_plugin.cli import shards as shards_cli
from swift_coord_plugin.core import codec
from swift_coord_plugin.eval.synthetic import response_row

SAMPLE = REPO / "assets" / "coco_sample"
BOM = b"\xef\xbb\xbf"


def coord_eval(tmp_path, results, gt, *extra):
    out = tmp_path / "eval"
    code = evaluate.main(["--results", str(results), "--gt", str(gt), "--out", str(out), "--no-progress",
                          "--decoding", "free", "--infer-backend", "transformers", *map(str, extra)])
    report = json.loads((out / "report.json").read_text()) if code == 0 else None
    return code, report, out


def reference_ap(gt: dict, detections) -> float:
    """pycocotools' AP of ``detections`` on ``gt`` as it is (its own ids), called directly."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes([dict(d) for d in detections]), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


# ----------------------------------------------------------------------------- duplicate rows
def test_rows_of_two_runs_in_one_result_file_stop_coord_eval(tmp_path, capsys):
    # swift infer appends to an existing --result_path: a stale run (here: no objects) then the new one.
    gt = toy_gt(n_images=3)
    gt_path = write_json(tmp_path / "gt.json", gt)
    good = [json.loads(x) for x in open(fed_back(gt, tmp_path / "good.jsonl"))]
    stale = [response_row(img, [], logprobs=False) for img in gt["images"]]
    results = write_rows(tmp_path / "r.jsonl", stale + good)
    for extra in ([], ["--all-gt-images"], ["--subset-from-results"]):
        code, _, _ = coord_eval(tmp_path, results, gt_path, *extra)
        assert code == 2
        err = capsys.readouterr().err
        assert "r.jsonl holds 3 more row(s) for images that already have one" in err
        assert "line 4 repeats image 10 (first at line 1)" in err and "appends to an existing --result_path" in err
    code, report, _ = coord_eval(tmp_path, write_rows(tmp_path / "new.jsonl", good), gt_path)
    assert code == 0 and report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)


# ----------------------------------------------------------------------------- -Infinity log-probabilities
def test_minus_infinity_logprobs_keep_the_generated_bin_under_coordexp(tmp_path):
    gt = toy_gt(names=("person",), n_images=3)
    gt_path = write_json(tmp_path / "gt.json", gt)
    rows, expected = [], []
    for img, ann in zip(gt["images"], gt["annotations"]):
        x, y, w, h = ann["bbox"]
        bins = [x, y, x + w, y + h]
        if img["id"] == 10:
            bins[2] = x + 10  # the generated x2 is wrong (IoU 0.07), and every top-k entry there is -inf
        row = response_row(img, [("person", tuple(bins), 0.9)], logprobs=True, top_k=3)
        if img["id"] == 10:
            coords = [e for e in row["logprobs"]["content"] if codec.coord_bin_of(e["token"]) is not None]
            coords[2]["logprob"] = -math.inf
            for alt in coords[2]["top_logprobs"]:
                alt["logprob"] = -math.inf
        rows.append(row)
        expected.append({"image_id": img["id"], "category_id": 1, "bbox": [bins[0], bins[1], bins[2] - bins[0],
                                                                            bins[3] - bins[1]],
                         "score": 0.0 if img["id"] == 10 else 0.9})
    results = write_rows(tmp_path / "r.jsonl", rows)
    assert "-Infinity" in (tmp_path / "r.jsonl").read_text()
    code, report, out = coord_eval(tmp_path, results, gt_path, "--decode", "coordexp")
    assert code == 0
    dets = json.loads((out / "detections.json").read_text(),
                      parse_constant=lambda c: pytest.fail(f"{c} in detections.json"))
    assert all(math.isfinite(v) for d in dets for v in d["bbox"])
    assert report["counts"]["coordexp"]["positions_with_only_minus_infinity_logprobs"] == 1
    assert report["counts"]["coordexp"]["positions_without_coordinate_in_top_k"] == 1
    right = reference_ap(gt, expected)
    assert right == pytest.approx(0.6634, abs=1e-4)  # 2 of 3 found, the miss ranked last
    assert report["metrics"]["AP"] == pytest.approx(right, abs=1e-12)


# ----------------------------------------------------------------------------- text encodings
def test_one_reader_for_every_json_input(tmp_path, capsys):
    gt = toy_gt()
    gt_path = write_json(tmp_path / "gt.json", gt)
    results = fed_back(gt, tmp_path / "r.jsonl")
    text = (tmp_path / "r.jsonl").read_text(encoding="utf-8")
    val_rows = [{"image": f"/data/{i['file_name']}", "image_id": i["id"], "objects": []} for i in gt["images"]]
    val_text = "".join(json.dumps(r) + "\n" for r in val_rows)

    # UTF-8 with a byte-order mark: accepted everywhere (results, GT, --val-data, the shards tool)
    (tmp_path / "bom.jsonl").write_bytes(BOM + text.encode())
    (tmp_path / "val_bom.jsonl").write_bytes(BOM + val_text.encode())
    bom_gt = write_json(tmp_path / "gt_bom.json", gt, bom=True)
    code, report, _ = coord_eval(tmp_path, tmp_path / "bom.jsonl", bom_gt, "--val-data", tmp_path / "val_bom.jsonl")
    assert code == 0 and report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)
    merged = tmp_path / "merged.jsonl"
    assert shards_cli.main(["merge", "--val", str(tmp_path / "val_bom.jsonl"), "--out", str(merged),
                            str(tmp_path / "bom.jsonl")]) == 0
    assert merged.read_bytes() == text.encode()  # lines unchanged, the mark not copied
    capsys.readouterr()

    # UTF-16 (PowerShell 5.1's '>'): refused naming the file and the encoding, by every tool
    (tmp_path / "r16.jsonl").write_bytes(text.encode("utf-16"))
    (tmp_path / "gt16.json").write_bytes(json.dumps(gt).encode("utf-16"))
    (tmp_path / "val16.jsonl").write_bytes(val_text.encode("utf-16-le"))  # no mark: found by its zero bytes
    for args in ([tmp_path / "r16.jsonl", gt_path], [results, tmp_path / "gt16.json"],
                 [results, gt_path, "--val-data", tmp_path / "val16.jsonl"]):
        code, _, _ = coord_eval(tmp_path, *args)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        bad = [a for a in args if "16" in str(a)][0]
        assert f"{bad}: the file is UTF-16 LE" in err and "must be UTF-8" in err
    assert shards_cli.main(["check", "--val", str(tmp_path / "val_bom.jsonl"), str(tmp_path / "r16.jsonl")]) == 2
    assert "r16.jsonl: the file is UTF-16 LE (with a byte-order mark) text" in capsys.readouterr().err
    assert shards_cli.main(["split", "--val", str(tmp_path / "val16.jsonl"), "--n", "2",
                            "--out-dir", str(tmp_path / "s")]) == 2
    assert "val16.jsonl: the file is UTF-16 LE (no byte-order mark)" in capsys.readouterr().err
    # bytes that are not UTF-8 further in: the line
    (tmp_path / "latin1.jsonl").write_bytes(text.encode() + '{"response": "caf\u00e9"}\n'.encode("latin-1"))
    code, _, _ = coord_eval(tmp_path, tmp_path / "latin1.jsonl", gt_path)
    assert code == 2 and "latin1.jsonl:4: not UTF-8 text" in capsys.readouterr().err


def test_the_converter_reads_through_the_same_reader(tmp_path, capsys):
    ann = json.loads((SAMPLE / "instances.json").read_text())
    (tmp_path / "ann16.json").write_bytes(json.dumps(ann).encode("utf-16"))
    args = ["--images", str(SAMPLE / "images"), "--out", str(tmp_path / "t.jsonl"), "--no-progress"]
    assert prepare_coco.main(["--ann", str(tmp_path / "ann16.json"), *args]) == 2
    assert "ann16.json: the file is UTF-16 LE (with a byte-order mark)" in capsys.readouterr().err
    (tmp_path / "map.json").write_bytes(BOM + b'{"1": "a person"}')
    assert prepare_coco.main(["--ann", str(SAMPLE / "instances.json"), "--desc-map", str(tmp_path / "map.json"),
                              *args]) == 0
    assert '"a person"' in (tmp_path / "t.jsonl").read_text()


def test_the_coord_dataset_names_file_and_encoding(tmp_path, sample_jsonl):
    from swift.dataset import load_dataset

    from swift_coord_plugin.swift_ext.dataset_args import dataset_spec_problem
    from swift_coord_plugin.swift_ext.register import register

    register()
    path = tmp_path / "train16.jsonl"
    path.write_bytes(open(sample_jsonl, encoding="utf-8").read().encode("utf-16"))
    with pytest.raises(ValueError, match=r"train16.jsonl: the file is UTF-16 LE \(with a byte-order mark\) text"):
        load_dataset([f"coord:{path}"], load_from_cache_file=False)
    # and swift sft/infer stop on it while building their arguments, before the model loads
    assert "train16.jsonl: the file is UTF-16 LE" in dataset_spec_problem(f"coord:{path}")


# ----------------------------------------------------------------------------- categories
def test_a_root_category_with_the_class_name_and_no_boxes_resolves_to_the_annotated_one(tmp_path):
    # Roboflow exports: category 0 is the dataset root, often named like the class, owning no box.
    gt = toy_gt(("dogs", "cat"))
    gt["categories"].insert(0, {"id": 0, "name": "Dogs", "supercategory": "none"})
    gt_path = write_json(tmp_path / "gt.json", gt)
    code, report, _ = coord_eval(tmp_path, fed_back(gt, tmp_path / "r.jsonl"), gt_path)
    assert code == 0 and report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)
    table = report["per_category"]
    assert table["1"]["name"] == "dogs" and table["1"]["num_detections"] == 3 and table["1"]["AP"] == 1.0
    assert table["0"]["num_detections"] == 0


@pytest.mark.parametrize("names, desc_map, message", [
    (("dog", "dog"), None, "id 1 ('dog') and id 2 ('dog') share the name 'dog'"),
    (("Traffic Light", "traffic_light"), None, "id 1 ('Traffic Light') and id 2 ('traffic_light') share the name"),
    (("dog", "puppy"), '{"1": "a dog", "2": "A dog"}', "id 1 ('dog') and id 2 ('puppy') share the description"),
])
def test_categories_nobody_can_tell_apart_are_refused_by_converter_and_evaluator(tmp_path, capsys, names,
                                                                                 desc_map, message):
    gt = toy_gt(names)
    gt_path = write_json(tmp_path / "gt.json", gt)
    extra = ["--desc-map", desc_map] if desc_map else []
    code, _, _ = coord_eval(tmp_path, fed_back(gt, tmp_path / "r.jsonl"), gt_path, *extra)
    assert code == 2 and message in capsys.readouterr().err
    ann = json.loads((SAMPLE / "instances.json").read_text())
    used = sorted({a["category_id"] for a in ann["annotations"]})[:2]
    by_id = {c["id"]: c for c in ann["categories"]}
    for cid, name in zip(used, names):
        by_id[cid]["name"] = name
    if desc_map:
        desc_map = json.dumps(dict(zip(map(str, used), json.loads(desc_map).values())))
    code = prepare_coco.main(["--ann", write_json(tmp_path / "ann.json", ann), "--images", str(SAMPLE / "images"),
                              "--out", str(tmp_path / "t.jsonl"), "--no-progress", *extra[:1],
                              *([desc_map] if desc_map else [])])
    err = capsys.readouterr().err
    assert code == 2 and f"id {used[0]}" in err and f"id {used[1]}" in err and "cannot tell apart" in err


def test_per_category_tables_are_read_by_id_in_both_formats():
    from swift_coord_plugin.eval.scoring import per_category_by_id

    new = {"per_category": {"1": {"id": 1, "name": "dog", "AP": 0.5}, "2": {"id": 2, "name": "dog", "AP": 0.1}}}
    old = {"per_category": {"dog": {"id": 1, "AP": 0.5}, "cat": {"id": 2, "AP": 0.1}}}
    assert per_category_by_id(new)[2]["name"] == "dog" and per_category_by_id(new)[1]["AP"] == 0.5
    assert per_category_by_id(old) == {1: {"id": 1, "AP": 0.5, "name": "dog"}, 2: {"id": 2, "AP": 0.1, "name": "cat"}}


# ----------------------------------------------------------------------------- image ids
def test_string_image_ids_are_scored_and_written_back(tmp_path):
    gt = toy_gt(n_images=3)
    for img, new in zip(gt["images"], ("cam-A/0001", "0", "7")):
        for a in gt["annotations"]:
            if a["image_id"] == img["id"]:
                a["image_id"] = new
        img["id"] = new
    gt_path = write_json(tmp_path / "gt.json", gt)
    code, report, out = coord_eval(tmp_path, fed_back(gt, tmp_path / "r.jsonl"), gt_path)
    assert code == 0 and report["metrics"]["AP"] == pytest.approx(1.0, abs=1e-12)
    assert report["settings"]["gt_repairs"]["image_ids_mapped_to_integers"] == 3
    dets = json.loads((out / "detections.json").read_text())
    assert {d["image_id"] for d in dets} == {"cam-A/0001", "0", "7"}
    assert reference_ap(gt, dets) == pytest.approx(1.0, abs=1e-12)  # detections.json scores against the file


# ----------------------------------------------------------------------------- "ignore": 1
def test_ignore_flags_are_counted_by_converter_and_evaluator(tmp_path, capsys):
    ann = json.loads((SAMPLE / "instances.json").read_text())
    plain = [a for a in ann["annotations"] if not a.get("iscrowd")]
    plain[0]["ignore"], plain[1]["ignore"] = 1, 1
    ann_path = write_json(tmp_path / "ann.json", ann)
    assert prepare_coco.main(["--ann", ann_path, "--images", str(SAMPLE / "images"), "--out",
                              str(tmp_path / "t.jsonl"), "--no-progress", "--max-objects", "0"]) == 0
    assert "2 with \"ignore\": 1 kept as objects" in capsys.readouterr().out
    summary = json.loads((tmp_path / "t.summary.json").read_text())
    assert summary["ignore_flagged"] == 2 and summary["objects_kept"] == len(plain)
    code, report, _ = coord_eval(tmp_path, fed_back(ann, tmp_path / "r.jsonl"), ann_path)
    assert code == 0 and "2 GT boxes of" in report["headline"] and "\"ignore\": 1" in report["headline"]
    assert report["settings"]["gt_repairs"]["ignore_flagged_scored_as_boxes"] == 2


# ----------------------------------------------------------------------------- LVIS
def test_lvis_federated_gt_is_refused_and_coco_url_names_are_read(tmp_path, capsys):
    gt = toy_gt()
    gt["images"][1]["neg_category_ids"] = [2]
    gt["images"][1]["not_exhaustive_category_ids"] = []
    code, _, _ = coord_eval(tmp_path, fed_back(toy_gt(), tmp_path / "r.jsonl"), write_json(tmp_path / "gt.json", gt))
    err = capsys.readouterr().err
    assert code == 2 and "images[1] (id=11) has neg_category_ids and not_exhaustive_category_ids" in err
    assert "LVIS" in err and "LVISEval" in err
    # the converter: LVIS names images by coco_url only; <images>/<split>/<file> or <images>/<file>
    ann = json.loads((SAMPLE / "instances.json").read_text())
    for im in ann["images"]:
        del im["file_name"]
        im["coco_url"] = f"http://images.cocodataset.org/val2017/{im['id']:012d}.jpg"
    ann_path = write_json(tmp_path / "lvis.json", ann)
    out = tmp_path / "t.jsonl"
    assert prepare_coco.main(["--ann", ann_path, "--images", str(SAMPLE / "images"), "--out", str(out),
                              "--no-progress"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == len(ann["images"]) and rows[0]["image"] == str(SAMPLE / "images" / "000000000009.jpg")
    split = tmp_path / "coco" / "val2017"
    shutil.copytree(SAMPLE / "images", split)
    assert prepare_coco.main(["--ann", ann_path, "--images", str(tmp_path / "coco"), "--out", str(out),
                              "--no-progress", "--no-image-check"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["image"] == str(split / "000000000009.jpg")
