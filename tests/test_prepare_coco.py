"""The COCO converter (``data.coco`` and ``coord-prepare-coco``) on real COCO records from coco128.

Expected values are derived independently of the converter: grouping and category names from
pycocotools' own index, box arithmetic written out here, counts from the raw JSON.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers import REPO, base_sft_args, read_jsonl, run_swift, shared_data_or_skip
from swift_coord_plugin.core import codec
from swift_coord_plugin.data import images as image_files
from swift_coord_plugin.core.codec import bbox_problem, desc_problem, parse_objects, quantize_box
from swift_coord_plugin.data import coco
from swift_coord_plugin.data.coco import CocoFormatError, ConvertOptions

ANN = ("coco128", "annotations", "instances_train2017.json")
EMPTY_IMAGES = {250, 508}  # coco128 images without any annotation (see the data's README)


@pytest.fixture(scope="module")
def coco128() -> Path:
    return shared_data_or_skip("coco128")


@pytest.fixture(scope="module")
def ann_path(coco128) -> Path:
    return coco128 / "annotations" / "instances_train2017.json"


@pytest.fixture(scope="module")
def raw(ann_path) -> dict:
    with open(ann_path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def cocoapi(ann_path):
    from pycocotools.coco import COCO

    return COCO(str(ann_path))


def run(tmp_path, data_or_path, images_dir, name="out", **options):
    """Convert (writing the JSON first when given a dict); returns (rows, summary dict)."""
    if isinstance(data_or_path, dict):
        ann = tmp_path / f"{name}.json"
        ann.write_text(json.dumps(data_or_path))
    else:
        ann = data_or_path
    out = tmp_path / f"{name}.jsonl"
    summary = coco.prepare_coco(str(ann), str(images_dir), str(out), ConvertOptions(**options))
    return read_jsonl(out), summary.to_dict()


def subset(raw: dict, image_ids, keep_meta=True) -> dict:
    """The real records of some images (deep copies, so tests may edit them)."""
    ids = set(image_ids)
    out = {"categories": copy.deepcopy(raw["categories"]),
           "images": [copy.deepcopy(im) for im in raw["images"] if im["id"] in ids],
           "annotations": [copy.deepcopy(a) for a in raw["annotations"] if a["image_id"] in ids]}
    if keep_meta:
        out["info"], out["licenses"] = raw["info"], raw["licenses"]
    return out


def expected_box(bbox, w, h):
    x, y, bw, bh = bbox
    clamp = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    return [clamp(x / w), clamp(y / h), clamp((x + bw) / w), clamp((y + bh) / h)]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, ann_path, coco128):
    tmp = tmp_path_factory.mktemp("default")
    rows, summary = run(tmp, ann_path, coco128 / "images", name="train")
    return rows, summary, tmp / "train.jsonl"


@pytest.fixture(scope="module")
def uncapped(tmp_path_factory, ann_path, coco128):
    rows, summary = run(tmp_path_factory.mktemp("uncapped"), ann_path, coco128 / "images", max_objects=0)
    return rows, summary


# ----------------------------------------------------------------------------- the output format
def test_every_line_is_a_valid_sample_with_evaluation_fields(default_run, raw, coco128):
    rows, summary, out = default_run
    assert [r["image_id"] for r in rows] == [im["id"] for im in raw["images"]]  # JSON order, none lost
    sizes = {im["id"]: (im["width"], im["height"], im["file_name"]) for im in raw["images"]}
    for r in rows:
        assert set(r) == {"image", "image_id", "width", "height", "objects"}
        w, h, name = sizes[r["image_id"]]
        assert (r["width"], r["height"]) == (w, h)
        assert os.path.isabs(r["image"]) and os.path.samefile(r["image"], coco128 / "images" / name)
        for o in r["objects"]:
            assert desc_problem(o["desc"]) is None and bbox_problem(o["bbox"]) is None
        # What the dataset preprocessor will check, with the image file opened.
        assert image_files.sample_problem(r) is None
    # The summary lies next to the output and says the same as the returned one.
    on_disk = json.loads(Path(coco.summary_path_for(str(out))).read_text())
    assert Path(coco.summary_path_for(str(out))).name == "train.summary.json"
    assert on_disk == summary


def test_summary_counts_add_up(default_run, raw):
    rows, s, _ = default_run
    crowd = sum(1 for a in raw["annotations"] if a.get("iscrowd"))
    assert s["images"] == len(raw["images"]) == 128 and s["annotations"] == len(raw["annotations"])
    assert s["images_written"] == len(rows)
    assert s["objects_kept"] == sum(len(r["objects"]) for r in rows)
    assert s["dropped_objects"]["crowd"] == crowd == 10
    assert s["annotations"] == s["objects_kept"] + sum(s["dropped_objects"].values())
    assert s["images"] == s["images_written"] + sum(s["dropped_images"].values())
    assert set(s["dropped_objects"]) == {"crowd", "degenerate", "over_cap", "missing_file", "bad_image"}
    assert set(s["dropped_images"]) == {"missing_file", "bad_image", "empty"}


# ----------------------------------------------------------------------------- bbox, desc, crowd
def test_boxes_and_descs_match_pycocotools(uncapped, cocoapi):
    rows, summary = uncapped
    assert summary["dropped_objects"]["over_cap"] == 0
    for r in rows:
        info = cocoapi.loadImgs(r["image_id"])[0]
        anns = cocoapi.loadAnns(cocoapi.getAnnIds(imgIds=[r["image_id"]], iscrowd=False))
        want = sorted((cocoapi.loadCats(a["category_id"])[0]["name"],
                       tuple(round(v, 9) for v in expected_box(a["bbox"], info["width"], info["height"])))
                      for a in anns)
        got = sorted((o["desc"], tuple(round(v, 9) for v in o["bbox"])) for o in r["objects"])
        assert got == want, r["image_id"]


def test_crowd_annotations_are_never_targets(uncapped, raw, tmp_path, coco128):
    rows, _ = uncapped
    by_id = {r["image_id"]: r for r in rows}
    sizes = {im["id"]: (im["width"], im["height"]) for im in raw["images"]}
    for a in raw["annotations"]:
        if a["iscrowd"]:
            box = [round(v, 9) for v in expected_box(a["bbox"], *sizes[a["image_id"]])]
            assert box not in [[round(v, 9) for v in o["bbox"]] for o in by_id[a["image_id"]]["objects"]]
    # An image whose only annotation is a crowd one is left without objects.
    data = subset(raw, [257])
    data["annotations"] = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(data["annotations"]) == 1
    rows, s = run(tmp_path, data, coco128 / "images")
    assert rows[0]["objects"] == [] and s["dropped_objects"]["crowd"] == 1 and s["empty_images_written"] == 1


def test_boxes_are_clipped_and_degenerate_ones_dropped(raw, tmp_path, coco128):
    data = subset(raw, [9])
    im = data["images"][0]
    W, H = im["width"], im["height"]
    anns = [a for a in data["annotations"] if not a["iscrowd"]][:5]
    a_right, a_left, a_out, a_flat, a_neg = anns
    a_right["bbox"] = [W - 10.5, H - 20.25, 40.0, 60.0]      # over the right and bottom edges
    a_left["bbox"] = [-12.0, -3.0, 50.0, 30.0]                # over the left and top edges
    a_out["bbox"] = [W + 5.0, 10.0, 20.0, 20.0]              # entirely right of the image
    a_flat["bbox"] = [100.0, 100.0, 0.0, 25.0]               # zero width
    a_neg["bbox"] = [100.0, 100.0, 30.0, -5.0]               # negative height
    data["annotations"] = anns
    rows, s = run(tmp_path, data, coco128 / "images", max_objects=0)
    boxes = {tuple(o["bbox"]) for o in rows[0]["objects"]}
    assert boxes == {((W - 10.5) / W, (H - 20.25) / H, 1.0, 1.0), (0.0, 0.0, 38.0 / W, 27.0 / H)}
    assert s["dropped_objects"]["degenerate"] == 3 and s["objects_kept"] == 2


def test_boxes_narrower_than_a_bin_are_kept_and_counted(raw, tmp_path, coco128):
    """x1 and x2 in one bin: written as annotated (the file keeps the continuous box), counted in the summary,
    and widened to one bin when trained (``codec.target_bins``), so no zero-area target reaches the IoU loss."""
    data = subset(raw, [9])
    W = data["images"][0]["width"]
    anns = [a for a in data["annotations"] if not a["iscrowd"]][:3]
    anns[0]["bbox"] = [W * 0.1561, 10.0, W * 0.0003, 40.0]   # 0.1561..0.1564 of the width: bin 156 twice
    data["annotations"] = anns
    rows, s = run(tmp_path, data, coco128 / "images", max_objects=0)
    assert s["narrow_objects"] == 1 and s["objects_kept"] == 3 and s["dropped_objects"]["degenerate"] == 0
    narrow = [o for o in rows[0]["objects"] if codec.is_narrow(o["bbox"])]
    assert len(narrow) == 1 and codec.DetObject(narrow[0]["desc"], tuple(narrow[0]["bbox"])).bins[0:3:2] == (156, 157)
    assert "narrower than a bin (widened to one bin in training): 1" in coco.format_summary(coco.Summary(**s))


def test_desc_map_by_id_and_by_name(raw, tmp_path, coco128, cocoapi):
    ids = [9, 25, 30]
    data = subset(raw, ids)
    names = {c["id"]: c["name"] for c in raw["categories"]}
    used = Counter(names[a["category_id"]] for a in data["annotations"] if not a["iscrowd"])
    (first, _), (second, _) = used.most_common(2)
    first_id = next(k for k, v in names.items() if v == first)
    mapping = {str(first_id): "a  round\tthing", second: "something else"}
    plain, _ = run(tmp_path, data, coco128 / "images", name="plain", max_objects=0)
    mapped, _ = run(tmp_path, data, coco128 / "images", name="mapped", max_objects=0, desc_map=mapping)
    renamed = {first: "a round thing", second: "something else"}  # whitespace is normalised
    for p, m in zip(plain, mapped):
        assert [renamed.get(o["desc"], o["desc"]) for o in p["objects"]] == [o["desc"] for o in m["objects"]]
        assert [o["bbox"] for o in p["objects"]] == [o["bbox"] for o in m["objects"]]
    assert Counter(o["desc"] for r in mapped for o in r["objects"])["something else"] == used[second]

    with pytest.raises(CocoFormatError, match=r"key 'no such category' is neither"):
        run(tmp_path, data, coco128 / "images", desc_map={"no such category": "x"})
    with pytest.raises(CocoFormatError, match=r"key 'dog'.*token markup"):
        run(tmp_path, data, coco128 / "images", desc_map={"dog": "a <obj_start> dog"})
    with pytest.raises(CocoFormatError, match=r"keys '1' and 'person' both name category 1"):
        run(tmp_path, data, coco128 / "images", desc_map={"1": "a", "person": "b"})


# ----------------------------------------------------------------------------- order and cap
def test_objects_are_ordered_top_left_to_bottom_right(uncapped, default_run):
    """y1 then x1 on the bins the model sees, the continuous values only among equal bins."""
    q = codec.quantize
    for rows in (uncapped[0], default_run[0]):
        for r in rows:
            keys = [(q(o["bbox"][1]), q(o["bbox"][0]), o["bbox"][1], o["bbox"][0]) for o in r["objects"]]
            assert keys == sorted(keys), r["image_id"]


def test_bin_ties_change_the_order_of_continuous_values_only_there(uncapped):
    """Ordering on bins first differs from the former continuous-value order exactly at pairs sharing a y1 bin
    whose x1 bins would have gone down (the former order is written out here as it was: sorted on (y1, x1))."""
    q = codec.quantize
    changed = down_before = 0
    for r in uncapped[0]:
        objs = r["objects"]
        former = sorted(objs, key=lambda o: (o["bbox"][1], o["bbox"][0]))
        for a, b in zip(former, former[1:]):
            if q(a["bbox"][1]) == q(b["bbox"][1]) and q(b["bbox"][0]) < q(a["bbox"][0]):
                down_before += 1
        if former != objs:
            changed += 1
            # Same objects; the only differences are within runs of equal y1 bins.
            assert sorted(map(str, former)) == sorted(map(str, objs))
            assert [q(o["bbox"][1]) for o in former] == [q(o["bbox"][1]) for o in objs]
        for a, b in zip(objs, objs[1:]):
            if q(a["bbox"][1]) == q(b["bbox"][1]):
                assert q(a["bbox"][0]) <= q(b["bbox"][0]), r["image_id"]
    # coco128: some images change (the former order put x1 bins going down within a y1 bin).
    assert down_before > 0 and changed > 0
    print(f"bin-tie fix: {down_before} adjacent pairs with a shared y1 bin and decreasing x1 bins before, "
          f"{changed} images reordered")


def test_x1y1_order_policy(raw, tmp_path, coco128):
    rows, summary = run(tmp_path, subset(raw, [r["id"] for r in raw["images"][:20]]), coco128 / "images",
                        max_objects=0, order="x1y1")
    assert summary["options"]["order"] == "x1y1"
    q = codec.quantize
    for r in rows:
        keys = [(q(o["bbox"][0]), q(o["bbox"][1]), o["bbox"][0], o["bbox"][1]) for o in r["objects"]]
        assert keys == sorted(keys), r["image_id"]
    with pytest.raises(ValueError, match="COORD_ORDER.*registered"):
        ConvertOptions(order="z-order")


def test_order_ties_keep_annotation_order(raw, tmp_path, coco128):
    data = subset(raw, [30])
    real = [a for a in data["annotations"] if not a["iscrowd"]]
    base = real[0]
    twins = []
    for k, cat in enumerate((1, 18, 62)):  # same x, y; different class and size; fresh ids
        a = copy.deepcopy(base)
        a["id"], a["category_id"] = 10 ** 9 + k, cat
        a["bbox"] = [base["bbox"][0], base["bbox"][1], base["bbox"][2] * (1 + k) / 4, base["bbox"][3] / (1 + k)]
        twins.append(a)
    names = {c["id"]: c["name"] for c in raw["categories"]}
    im = data["images"][0]
    corner = [base["bbox"][0] / im["width"], base["bbox"][1] / im["height"]]
    for anns in (real + twins, list(reversed(real + twins))):
        data["annotations"] = anns
        rows, _ = run(tmp_path, data, coco128 / "images", max_objects=0)
        got = [o["desc"] for o in rows[0]["objects"] if o["bbox"][:2] == corner]
        want = [names[a["category_id"]] for a in anns if a["bbox"][:2] == base["bbox"][:2]]
        assert got == want and len(want) == 4


def _over_cap_images(raw):
    groups = {}
    for a in raw["annotations"]:
        if not a["iscrowd"]:
            groups.setdefault(a["image_id"], []).append(a)
    return {i: g for i, g in groups.items() if len(g) > coco.DEFAULT_MAX_OBJECTS}


def test_cap_area_keeps_the_largest_boxes(default_run, raw):
    rows, s, _ = default_run
    big = _over_cap_images(raw)
    assert len(big) == 4  # coco128 has four images with more than 30 objects
    cap = coco.DEFAULT_MAX_OBJECTS
    assert s["dropped_objects"]["over_cap"] == sum(len(g) - cap for g in big.values())
    sizes = {im["id"]: (im["width"], im["height"]) for im in raw["images"]}
    names = {c["id"]: c["name"] for c in raw["categories"]}
    by_id = {r["image_id"]: r for r in rows}
    for iid, anns in big.items():
        areas = sorted(a["bbox"][2] * a["bbox"][3] for a in anns)
        assert areas[-cap] > areas[-cap - 1]  # no tie at the cut in this data
        want = sorted((names[a["category_id"]], tuple(round(v, 9) for v in expected_box(a["bbox"], *sizes[iid])))
                      for a in anns if a["bbox"][2] * a["bbox"][3] >= areas[-cap])
        got = sorted((o["desc"], tuple(round(v, 9) for v in o["bbox"])) for o in by_id[iid]["objects"])
        assert got == want


def test_cap_scan_keeps_the_first_in_order(uncapped, raw, tmp_path, ann_path, coco128):
    rows, s = run(tmp_path, ann_path, coco128 / "images", cap_policy="scan")
    full = {r["image_id"]: r["objects"] for r in uncapped[0]}
    for r in rows:
        assert r["objects"] == full[r["image_id"]][:coco.DEFAULT_MAX_OBJECTS]
    big = _over_cap_images(raw)
    assert s["dropped_objects"]["over_cap"] == sum(len(g) - coco.DEFAULT_MAX_OBJECTS for g in big.values())
    # The two policies keep different objects where the cap bites.
    area_rows, _ = run(tmp_path, ann_path, coco128 / "images", name="area")
    area = {r["image_id"]: r["objects"] for r in area_rows}
    assert any(area[i] != [r for r in rows if r["image_id"] == i][0]["objects"] for i in big)


def test_max_objects_zero_means_no_cap(uncapped, raw):
    rows, s = uncapped
    assert s["objects_kept"] == sum(1 for a in raw["annotations"] if not a["iscrowd"])
    assert max(len(r["objects"]) for r in rows) == max(len(g) for g in _over_cap_images(raw).values())


def test_cap_area_ties_keep_the_earlier_annotation(raw, tmp_path, coco128):
    data = subset(raw, [9])
    base = next(a for a in data["annotations"] if not a["iscrowd"])
    late, early = copy.deepcopy(base), copy.deepcopy(base)
    early["id"], late["id"] = 10 ** 9, 10 ** 9 + 1
    early["category_id"], late["category_id"] = 1, 18           # person, dog
    early["bbox"] = [300.0, 200.0, 20.0, 10.0]                  # the same area, lower in the image
    late["bbox"] = [10.0, 10.0, 10.0, 20.0]
    data["annotations"] = [early, late]
    rows, s = run(tmp_path, data, coco128 / "images", max_objects=1)
    assert [o["desc"] for o in rows[0]["objects"]] == ["person"] and s["dropped_objects"]["over_cap"] == 1
    rows, _ = run(tmp_path, data, coco128 / "images", max_objects=1, cap_policy="scan")
    assert [o["desc"] for o in rows[0]["objects"]] == ["dog"]


# ----------------------------------------------------------------------------- images
def test_empty_images_are_kept_by_default_and_dropped_on_request(default_run, tmp_path, ann_path, coco128):
    rows, s, _ = default_run
    assert {r["image_id"] for r in rows if not r["objects"]} == EMPTY_IMAGES
    assert s["empty_images_written"] == 2 and s["dropped_images"]["empty"] == 0
    dropped, sd = run(tmp_path, ann_path, coco128 / "images", drop_empty=True)
    assert {r["image_id"] for r in dropped} == {r["image_id"] for r in rows} - EMPTY_IMAGES
    assert sd["dropped_images"]["empty"] == 2 and sd["images_written"] == 126 and sd["empty_images_written"] == 0


def test_missing_image_files_are_an_error_or_counted(raw, tmp_path, coco128):
    ids = [im["id"] for im in raw["images"][:6]]
    data = subset(raw, ids)
    images = tmp_path / "images"
    images.mkdir()
    present = data["images"][:4]
    for im in present:
        (images / im["file_name"]).symlink_to(coco128 / "images" / im["file_name"])
    absent = [im["file_name"] for im in data["images"][4:]]
    with pytest.raises(CocoFormatError) as err:
        run(tmp_path, data, images)
    assert all(name in str(err.value) for name in absent) and "2 image file(s)" in str(err.value)
    assert not (tmp_path / "out.jsonl").exists()

    rows, s = run(tmp_path, data, images, skip_missing=True, max_objects=0)
    assert [r["image_id"] for r in rows] == [im["id"] for im in present]
    absent_ids = {im["id"] for im in data["images"][4:]}
    lost = sum(1 for a in data["annotations"] if a["image_id"] in absent_ids and not a["iscrowd"])
    assert lost > 0
    assert s["dropped_images"]["missing_file"] == 2 and s["dropped_objects"]["missing_file"] == lost
    assert s["annotations"] == s["objects_kept"] + sum(s["dropped_objects"].values())


# ----------------------------------------------------------------------------- bad input
def test_json_without_info_and_licenses_loads(raw, tmp_path, coco128):
    data = subset(raw, [9, 25], keep_meta=False)
    assert "info" not in data and "licenses" not in data
    rows, s = run(tmp_path, data, coco128 / "images")
    assert [r["image_id"] for r in rows] == [9, 25] and s["objects_kept"] > 0


@pytest.mark.parametrize("skip_polygons", [True, False])
def test_malformed_json_error_names_the_position(raw, tmp_path, skip_polygons):
    text = json.dumps(subset(raw, [9, 25]), indent=1)
    bad_at = text.index('"bbox"')
    broken = text[:bad_at] + '"bbox": [1, 2,, 3, 4], ' + text[bad_at:]
    path = tmp_path / "broken.json"
    path.write_text(broken)
    with pytest.raises(json.JSONDecodeError) as plain:
        json.loads(broken)
    with pytest.raises(CocoFormatError) as err:
        coco.read_instances(str(path), skip_polygons=skip_polygons)
    assert str(path) in str(err.value)
    assert f"line {plain.value.lineno}, column {plain.value.colno}" in str(err.value)
    path.write_text(text[: len(text) // 2])  # truncated
    with pytest.raises(CocoFormatError, match="malformed JSON at line"):
        coco.read_instances(str(path), skip_polygons=skip_polygons)
    path.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(CocoFormatError, match="no 'categories' key"):
        coco.read_instances(str(path), skip_polygons=skip_polygons)


def test_records_pointing_nowhere_are_errors_naming_them(raw, tmp_path, coco128):
    for field, value, message in (("image_id", 987654321, "image_id 987654321 is not an image of this file"),
                                  ("category_id", 12, "category_id 12 is not a category of this file"),
                                  ("bbox", [1.0, 2.0, 3.0], r"bbox must be 4 finite numbers"),
                                  ("bbox", [1.0, 2.0, "3", 4.0], r"bbox must be 4 finite numbers"),
                                  ("iscrowd", 2, "iscrowd must be 0 or 1")):
        data = subset(raw, [9, 25])
        target = data["annotations"][3]
        target[field] = value
        with pytest.raises(CocoFormatError) as err:
            run(tmp_path, data, coco128 / "images")
        assert f"annotation id={target['id']} (annotations[3])" in str(err.value)
        assert re.search(message, str(err.value)), str(err.value)
    data = subset(raw, [9, 25])
    data["images"][1]["height"] = 0
    with pytest.raises(CocoFormatError, match=r"images\[1\] \(id=25\): height must be a positive number"):
        run(tmp_path, data, coco128 / "images")
    data = subset(raw, [9, 25])
    data["images"].append(copy.deepcopy(data["images"][0]))
    with pytest.raises(CocoFormatError, match=r"images\[2\]: duplicate image id 9"):
        run(tmp_path, data, coco128 / "images")


def test_fast_reader_equals_a_full_parse(ann_path, raw, tmp_path):
    fast = coco.read_instances(str(ann_path))
    expected = copy.deepcopy(raw)
    for a in expected["annotations"]:
        if isinstance(a["segmentation"], list):
            a["segmentation"] = None
    assert fast == expected
    assert sum(isinstance(a["segmentation"], dict) for a in fast["annotations"]) == 10  # RLE is parsed
    assert coco.read_instances(str(ann_path), skip_polygons=False) == raw

    # Pretty-printed text, exponents, and the key's text inside strings (which must stay untouched).
    data = subset(raw, [9])
    data["info"] = {"description": 'a "segmentation": [[1, 2]] inside a string', 'x"segmentation': "y"}
    data["categories"][0]["name"] = '"segmentation": [[3]]'
    data["annotations"][0]["segmentation"] = [[1e2, -2.5E-1, 3], [4, 5, 6]]
    path = tmp_path / "tricky.json"
    path.write_text(json.dumps(data, indent=3))
    got = coco.read_instances(str(path))
    assert got["info"] == data["info"] and got["categories"] == data["categories"]
    assert all(a["segmentation"] is None for a in got["annotations"] if not a["iscrowd"])
    assert [a["bbox"] for a in got["annotations"]] == [a["bbox"] for a in data["annotations"]]


# ----------------------------------------------------------------------------- command line
def test_command_line(tmp_path, ann_path, coco128, default_run):
    exe = Path(sys.executable).parent / "coord-prepare-coco"
    out = tmp_path / "cli.jsonl"
    proc = subprocess.run([str(exe), "--ann", str(ann_path), "--images", str(coco128 / "images"),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == default_run[2].read_text()  # the library's output, byte for byte
    assert "128/128" in proc.stderr and "converting" in proc.stderr  # the progress bar
    assert "objects: 939 annotations, 896 kept; dropped: crowd 10, degenerate 0, over_cap 33" in proc.stdout
    assert (tmp_path / "cli.summary.json").exists()

    proc = subprocess.run([str(exe), "--ann", str(ann_path), "--images", str(tmp_path), "--out",
                           str(tmp_path / "none.jsonl"), "--no-progress"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "128 image file(s)" in proc.stderr and "000000000009.jpg" in proc.stderr
    proc = subprocess.run([str(exe), "--ann", str(ann_path), "--images", str(coco128 / "images"), "--out",
                           str(tmp_path / "m.jsonl"), "--no-progress", "--max-objects", "2", "--cap-policy", "scan",
                           "--drop-empty", "--desc-map", '{"person": "human"}', "--order", "x1y1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "m.jsonl")
    assert len(rows) == 126 and max(len(r["objects"]) for r in rows) == 2
    descs = {o["desc"] for r in rows for o in r["objects"]}
    assert "human" in descs and "person" not in descs
    options = json.loads((tmp_path / "m.summary.json").read_text())["options"]
    assert options == {"max_objects": 2, "cap_policy": "scan", "drop_empty": True, "skip_missing": False,
                       "check_images": True, "skip_bad_images": False, "workers": None,
                       "desc_map": {"person": "human"}, "order": "x1y1"}


# ----------------------------------------------------------------------------- through ms-swift
@pytest.mark.e2e
def test_converted_coco128_trains_through_the_plugin_preprocessor(tmp_path, ann_path, coco128, tiny_model_dir):
    data = tmp_path / "coco128.jsonl"
    summary = coco.prepare_coco(str(ann_path), str(coco128 / "images"), str(data))
    n_rows = len(read_jsonl(data))
    assert n_rows == summary.images_written == 128
    out = tmp_path / "sft"
    proc = run_swift("sft", base_sft_args(tiny_model_dir, str(data), str(out), steps=2,
                                          extra=["--strict", "true"]), cwd=tmp_path, timeout=300)
    log = proc.stdout
    # The plugin's preprocessor ran on this file and kept every row (ms-swift's generic one logs nothing
    # of the kind), and ms-swift kept them all after preprocessing (--strict would have raised on a drop).
    m = re.search(rf"\[swift-coord\] dataset {re.escape(str(data))}: (\d+) samples, (\d+) kept, "
                  r"dropped by reason: none", log)
    assert m and int(m.group(1)) == int(m.group(2)) == n_rows, log[-4000:]
    m = re.search(r"train_dataset: Dataset\(\{.*?num_rows: (\d+)", log, re.S)
    assert m and int(m.group(1)) == n_rows
    # The example ms-swift prints is one of the converted samples, written as coordinate tokens.
    m = re.search(r"\[INPUT\] .*?<\|im_start\|>assistant\n(.*?)<\|im_end\|>", log, re.S)
    assert m, "ms-swift printed no encoded example"
    shown = [(o.desc, o.bins) for o in parse_objects(m.group(1)).objects]
    converted = [[(o["desc"], quantize_box(o["bbox"])) for o in r["objects"]] for r in read_jsonl(data)]
    assert shown or not m.group(1).strip(), m.group(1)  # text that parses to nothing is a rendering bug
    assert shown in converted
    logged = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in logged if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in steps)


# ----------------------------------------------------------------------------- image check
def test_images_the_model_cannot_take_as_annotated_are_named_or_dropped(tmp_path):
    """A truncated JPEG and an image annotated in its EXIF-rotated frame (made here from shipped images)."""
    import shutil

    from PIL import Image

    from swift_coord_plugin.core import images as image_rules

    src = REPO / "assets" / "coco_sample"
    inst = json.loads((src / "instances.json").read_text())
    folder = tmp_path / "images"
    shutil.copytree(src / "images", folder)
    cut, rot = inst["images"][1], inst["images"][2]
    data = (folder / cut["file_name"]).read_bytes()
    (folder / cut["file_name"]).write_bytes(data[: len(data) // 2])
    with Image.open(folder / rot["file_name"]) as im:
        im.load()
        exif = Image.Exif()
        exif[image_rules.EXIF_ORIENTATION] = 6
        im.save(folder / rot["file_name"], exif=exif)
    rot["width"], rot["height"] = rot["height"], rot["width"]  # annotated as a viewer shows it
    ann = tmp_path / "inst.json"
    ann.write_text(json.dumps(inst))
    with pytest.raises(coco.CocoFormatError) as e:
        coco.prepare_coco(str(ann), str(folder), str(tmp_path / "o.jsonl"))
    msg = str(e.value)
    assert "2 image(s)" in msg
    assert f"images[1] (id={cut['id']})" in msg and "truncated" in msg
    assert f"images[2] (id={rot['id']})" in msg and "EXIF-rotated view (orientation 6)" in msg
    s = coco.prepare_coco(str(ann), str(folder), str(tmp_path / "o.jsonl"),
                          coco.ConvertOptions(skip_bad_images=True))
    lost = sum(1 for a in inst["annotations"] if a["image_id"] in (cut["id"], rot["id"]) and not a.get("iscrowd"))
    assert s.dropped_images["bad_image"] == 2 and s.dropped_objects["bad_image"] == lost
    assert s.images_written == len(inst["images"]) - 2
    assert s.annotations == s.objects_kept + sum(s.dropped_objects.values())
    # the decode is paid once: the second conversion took every decodable file from the cache (the
    # rotated one is refused by its header, before any decoding)
    assert s.image_check["files"] == len(inst["images"])
    assert s.image_check["from_cache"] == len(inst["images"]) - 1 and s.image_check["decoded"] == 0
