"""Property: on random valid ground truth / result pairs ``coord-eval`` gives pycocotools' 12 numbers, and on
random malformed ones it exits 2.

The generator draws what real files hold: integer image ids (0 included) or string ones, images of any size,
crowd regions, images without boxes, rows without objects, rows matched by file name, categories written in
another case (and a root category named like an annotated one that owns no box), GT boxes on the bin grid
(found exactly) and off it, jittered and false detections with distinct scores. The reference is
pycocotools' COCOeval called here on the file as written, with the boxes the model wrote (bin k of an axis
of S pixels is k * S / 1000). The evaluation runs in-process through the function ``coord-eval``'s ``main``
calls (``evaluate_results``; 1,000 cases in about a minute), malformed cases through ``main`` itself, and
a handful of both through the installed ``coord-eval`` command.
"""
import contextlib
import copy
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from swift_coord_plugin.cli.evaluate import main
from swift_coord_plugin.core import codec
from swift_coord_plugin.eval.scoring import METRIC_NAMES, EvalSettings, evaluate_results
from swift_coord_plugin.eval.synthetic import response_row

N_VALID = 1000
NAMES = ("person", "dog", "traffic light", "car", "zebra", "crème brûlée", "hot dog", "umbrella")
CASES = (str.lower, str.upper, str.title, lambda s: s.replace(" ", "_"), lambda s: s)


def random_case(rng: random.Random):
    """``(gt, rows, reference detections)`` of one valid pair."""
    n_images = rng.randint(1, 5)
    if rng.random() < 0.5:
        ids = rng.sample(range(0, 60), n_images)
    else:
        ids = rng.sample(["0", "7", "img-1", "cam/0003", "ÿ_12", "00", "a b", "x"], n_images)
    names = rng.sample(NAMES, rng.randint(1, 4))
    cat_ids = rng.sample(range(0, 100), len(names) + 1)
    cats = [{"id": c, "name": n} for c, n in zip(cat_ids, names)]
    images = []
    for k, iid in enumerate(ids):
        side = 1000 if rng.random() < 0.3 else None
        images.append({"id": iid, "file_name": f"dir/im_{k}_{rng.randint(0, 9999)}.jpg",
                       "width": side or rng.randint(40, 1500), "height": side or rng.randint(40, 1500)})
    anns, dets, rows = [], [], []
    for img in images:
        W, H = img["width"], img["height"]
        objects, used = [], set()
        for _ in range(rng.choice((0, 0, 1, 2, 3, 4))):
            cat = rng.choice(cats)
            if rng.random() < 0.5:  # on the bin grid: the box the model writes is this one
                b = sorted(rng.sample(range(0, 1001), 2)), sorted(rng.sample(range(0, 1001), 2))
                x1, x2, y1, y2 = b[0][0] * W / 1000, b[0][1] * W / 1000, b[1][0] * H / 1000, b[1][1] * H / 1000
            else:
                x1, y1 = rng.uniform(0, W - 2), rng.uniform(0, H - 2)
                x2, y2 = rng.uniform(x1 + 1, W), rng.uniform(y1 + 1, H)
            crowd = int(rng.random() < 0.1)
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat["id"],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": crowd})
            if not crowd and rng.random() < 0.75:
                bins = codec.quantize_box(codec.normalize_box((x1, y1, x2, y2), W, H))
                if rng.random() < 0.3:
                    bins = tuple(min(999, max(0, v + rng.randint(-30, 30))) for v in bins)
                objects.append((cat, bins))
        for _ in range(rng.choice((0, 0, 1, 2))):  # false detections
            x1, y1 = rng.randint(0, 990), rng.randint(0, 990)
            objects.append((rng.choice(cats), (x1, y1, rng.randint(x1 + 1, 999), rng.randint(y1 + 1, 999))))
        written = []
        for cat, bins in objects:
            x1b, y1b, x2b, y2b = bins
            if x2b <= x1b or y2b <= y1b or bins in used:
                continue
            used.add(bins)
            score = None
            while score is None or score in {d["score"] for d in dets}:
                score = round(rng.uniform(0.01, 0.99), 3)
            written.append((rng.choice(CASES)(cat["name"]), bins, score))
            x1p, x2p, y1p, y2p = x1b * W / 1000, x2b * W / 1000, y1b * H / 1000, y2b * H / 1000
            dets.append({"image_id": img["id"], "category_id": cat["id"], "bbox": [x1p, y1p, x2p - x1p, y2p - y1p],
                         "score": score})
        rows.append(response_row(img, written, logprobs=True, by="file_name" if rng.random() < 0.2 else "image_id"))
    annotated = {a["category_id"] for a in anns}
    twin = [c for c in cats if c["id"] in annotated]
    if twin and rng.random() < 0.3:  # a root category named like an annotated class, owning no box
        cats.insert(0, {"id": cat_ids[-1], "name": rng.choice(CASES)(rng.choice(twin)["name"])})
    rng.shuffle(rows)
    if not dets:  # at least one detection (pycocotools' loadRes takes no empty list)
        return random_case(rng)
    return {"images": images, "annotations": anns, "categories": cats}, rows, dets


def reference_stats(gt: dict, dets) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def write_case(folder: Path, gt: dict, rows) -> tuple:
    folder.mkdir(parents=True, exist_ok=True)
    gt_path, results = folder / "gt.json", folder / "r.jsonl"
    gt_path.write_text(json.dumps(gt, ensure_ascii=False), encoding="utf-8")
    results.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(gt_path), str(results)


SETTINGS = dict(decoding="free", infer_backend="transformers")


def test_coord_eval_equals_pycocotools_on_random_valid_pairs(tmp_path):
    import time

    rng = random.Random(20260101)
    kinds = {"string_ids": 0, "id_0": 0, "crowd": 0, "empty_images": 0, "root_twin": 0, "off_grid": 0}
    t0, c0 = time.perf_counter(), time.process_time()
    for n in range(N_VALID):
        gt, rows, dets = random_case(rng)
        gt_path, results = write_case(tmp_path / str(n % 4), gt, rows)
        ev = evaluate_results(results, gt_path, EvalSettings(**SETTINGS), progress=False)
        got = np.array([ev.report["metrics"][m] for m in METRIC_NAMES])
        want = reference_stats(gt, dets)
        assert np.allclose(got, want, atol=1e-12, rtol=0), (n, json.dumps(gt), got, want)
        ids = [i["id"] for i in gt["images"]]
        kinds["string_ids"] += isinstance(ids[0], str)
        kinds["id_0"] += 0 in ids or "0" in ids
        kinds["crowd"] += any(a["iscrowd"] for a in gt["annotations"])
        kinds["empty_images"] += len({a["image_id"] for a in gt["annotations"]}) < len(ids)
        kinds["root_twin"] += len({c["name"].lower() for c in gt["categories"]}) < len(gt["categories"])
        kinds["off_grid"] += any(abs(a["bbox"][0] * 1000 / i["width"] - round(a["bbox"][0] * 1000 / i["width"])) > 1e-6
                                 for a in gt["annotations"] for i in gt["images"] if i["id"] == a["image_id"])
    print(f"{N_VALID} random valid pairs in {time.perf_counter() - t0:.1f}s ({time.process_time() - c0:.1f}s CPU): "
          f"{kinds}")
    assert all(v >= 50 for v in kinds.values()), kinds  # every kind is drawn often


def _utf16(folder: Path, name: str):
    p = folder / name
    p.write_bytes(p.read_text(encoding="utf-8").encode("utf-16"))


MALFORMED = {
    # (change to the GT dict, change to the rows, change to the files) -> exit 2
    "image_width_0": lambda gt, rows: gt["images"][0].update(width=0),
    "negative_box": lambda gt, rows: gt["annotations"] and gt["annotations"][0]["bbox"].__setitem__(2, -1.0)
    or gt["images"][0].update(height=-5),
    "duplicate_image_id": lambda gt, rows: gt["images"].append(dict(gt["images"][0], file_name="other.jpg")),
    "unknown_category": lambda gt, rows: gt["annotations"].append(
        {"id": 999, "image_id": gt["images"][0]["id"], "category_id": 1000, "bbox": [1, 1, 5, 5]}),
    "float_image_id": lambda gt, rows: gt["images"][0].update(id=1.5),
    "ambiguous_categories": lambda gt, rows: (
        gt["categories"].append({"id": 1000, "name": gt["categories"][-1]["name"].upper()}),
        gt["annotations"].append({"id": 999, "image_id": gt["images"][0]["id"], "category_id": 1000,
                                  "bbox": [1, 1, 5, 5]}),
        gt["annotations"].append({"id": 998, "image_id": gt["images"][0]["id"],
                                  "category_id": gt["categories"][-2]["id"], "bbox": [1, 1, 5, 5]})),
    "lvis_federated": lambda gt, rows: gt["images"][-1].update(neg_category_ids=[], not_exhaustive_category_ids=[]),
    "no_annotations_key": lambda gt, rows: gt.pop("annotations"),
    "duplicate_row": lambda gt, rows: rows.append(copy.deepcopy(rows[0])),
    "missing_row": lambda gt, rows: rows.pop(),
    "nan_logprob": lambda gt, rows: [e for r in rows for e in r["logprobs"]["content"]
                                     if codec.coord_bin_of(e["token"]) is not None][0].update(logprob=float("nan")),
}
FILE_FAULTS = {
    "gt_utf16": lambda folder: _utf16(folder, "gt.json"),
    "results_utf16": lambda folder: _utf16(folder, "r.jsonl"),
    "results_not_json": lambda folder: open(folder / "r.jsonl", "a").write('{"response": "<|obj|>\n'),
}


def malformed_cases(rng: random.Random, n: int):
    kinds = list(MALFORMED) + list(FILE_FAULTS)
    for k in range(n):
        kind = kinds[k % len(kinds)]
        gt, rows, _ = random_case(rng)
        if kind in MALFORMED:
            MALFORMED[kind](gt, rows)
        yield kind, gt, rows


def test_coord_eval_exits_2_on_every_malformed_pair(tmp_path, capsys):
    rng = random.Random(7)
    seen = set()
    for n, (kind, gt, rows) in enumerate(malformed_cases(rng, 140)):
        folder = tmp_path / str(n % 4)
        gt_path, results = write_case(folder, gt, rows)
        if kind in FILE_FAULTS:
            FILE_FAULTS[kind](folder)
        code = main(["--results", results, "--gt", gt_path, "--out", str(folder / "out"), "--no-progress",
                     "--decoding", "free", "--infer-backend", "transformers"])
        err = capsys.readouterr().err
        assert code == 2, (kind, json.dumps(gt)[:2000])
        assert "Traceback" not in err and ("gt.json" in err or "r.jsonl" in err), (kind, err)
        seen.add(kind)
    assert seen == set(MALFORMED) | set(FILE_FAULTS)


def test_the_installed_command_on_a_few_pairs(tmp_path):
    coord_eval = str(Path(sys.executable).parent / "coord-eval")
    rng = random.Random(99)
    for n in range(3):
        gt, rows, dets = random_case(rng)
        gt_path, results = write_case(tmp_path / f"v{n}", gt, rows)
        out = tmp_path / f"v{n}" / "out"
        proc = subprocess.run([coord_eval, "--results", results, "--gt", gt_path, "--out", str(out),
                               "--no-progress", "--decoding", "free", "--infer-backend", "transformers"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        report = json.loads((out / "report.json").read_text())
        got = np.array([report["metrics"][m] if report["metrics"][m] is not None else -1.0 for m in METRIC_NAMES])
        assert np.allclose(got, reference_stats(gt, dets), atol=1e-12, rtol=0)
        written = json.loads((out / "detections.json").read_text())
        assert {d["image_id"] for d in written} <= {i["id"] for i in gt["images"]}  # the file's own ids
    for n, (kind, gt, rows) in enumerate(malformed_cases(random.Random(5), 3)):
        gt_path, results = write_case(tmp_path / f"m{n}", gt, rows)
        proc = subprocess.run([coord_eval, "--results", results, "--gt", gt_path, "--out", str(tmp_path / "o"),
                               "--no-progress"], capture_output=True, text=True)
        assert proc.returncode == 2 and "coord-eval: error:" in proc.stderr, (kind, proc.stderr)
