"""coord-make-shapes: boxes and areas from the visible pixels, splits from their own seeds, the real converter on it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swift_coord_plugin.data import shapes

BIN = Path(sys.executable).parent


def _make(out, *args):
    proc = subprocess.run([str(BIN / "coord-make-shapes"), str(out), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    # Up to 4 objects of up to 0.9 of the side: many overlaps and partly covered shapes.
    _make(out, "--train", "60", "--val", "20", "--select", "10", "--seed", "7", "--max-objects", "4",
          "--max-side", "0.9")
    return out


def test_every_box_and_area_is_that_of_the_visible_pixels(shapes_dir):
    from pycocotools import mask as mask_utils

    colours = dict(shapes.CLASSES)
    for split in ("train", "val", "select"):
        inst = json.load(open(shapes_dir / "annotations" / f"instances_{split}.json"))
        names = {c["id"]: c["name"] for c in inst["categories"]}
        files = {im["id"]: im["file_name"] for im in inst["images"]}
        covered = {}
        for a in inst["annotations"]:
            m = mask_utils.decode(a["segmentation"]).astype(bool)
            ys, xs = np.nonzero(m)
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert a["area"] == int(m.sum()) > 0
            assert list(mask_utils.toBbox(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))))) == a["bbox"]
            # The visible pixels are the object's colour (its class colour up to the drawn jitter of 20).
            pixels = np.asarray(Image.open(shapes_dir / "images" / split / files[a["image_id"]]).convert("RGB"))
            colour = pixels[m].astype(int)
            assert np.abs(colour - colour[0]).max() == 0
            assert np.abs(colour[0] - np.array(colours[names[a["category_id"]]])).max() <= 20
            # Visible masks of one image never overlap (a covered pixel belongs to the shape drawn last).
            seen = covered.setdefault(a["image_id"], np.zeros_like(m))
            assert not (seen & m).any()
            seen |= m


def test_the_set_is_a_task_with_overlaps_sizes_and_classes(shapes_dir):
    summary = json.load(open(shapes_dir / "summary.json"))
    train = summary["splits"]["train"]
    assert train["images"] == 60 and 1.0 < train["objects_per_image"] <= 4
    assert train["overlapping_image_share"] > 0.2
    assert train["size_share"]["small"] > 0 and train["size_share"]["medium"] > 0 and train["size_share"]["large"] > 0
    assert all(n > 0 for n in train["per_class"].values()) and len(train["per_class"]) >= 3
    assert [summary["splits"][s]["seed"] for s in ("train", "val", "select")] == [7, 8, 9]
    assert "| val | 8 | 20 |" in (shapes_dir / "summary.md").read_text()


def test_splits_share_no_image_and_a_seed_repeats_a_split(shapes_dir, tmp_path):
    def digests(d, split):
        return {Image.open(p).tobytes() for p in sorted((d / "images" / split).glob("*.png"))}

    train, val, select = (digests(shapes_dir, s) for s in ("train", "val", "select"))
    assert not (train & val) and not (train & select) and not (val & select)
    # A val-only split from the val seed of that set is the same images; another seed gives another set.
    _make(tmp_path / "again", "--train", "0", "--val", "20", "--val-seed", "8", "--max-objects", "4", "--max-side", "0.9")
    assert digests(tmp_path / "again", "val") == val
    assert not (tmp_path / "again" / "images" / "train").exists()
    _make(tmp_path / "fresh", "--train", "0", "--val", "20", "--val-seed", "12345", "--max-objects", "4",
          "--max-side", "0.9")
    assert not (digests(tmp_path / "fresh", "val") & val)


def test_bad_options_exit_2_naming_the_problem(tmp_path):
    proc = subprocess.run([str(BIN / "coord-make-shapes"), str(tmp_path / "x"), "--min-side", "0.5", "--max-side",
                           "0.2"], capture_output=True, text=True)
    assert proc.returncode == 2 and "sides 0.5..0.2" in proc.stderr
    proc = subprocess.run([str(BIN / "coord-make-shapes"), str(tmp_path / "x"), "--val-seed", "0"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "own seed" in proc.stderr


def test_the_converter_reads_it_unchanged(shapes_dir, tmp_path):
    out = tmp_path / "val.jsonl"
    proc = subprocess.run([str(BIN / "coord-prepare-coco"), "--ann", str(shapes_dir / "annotations" / "instances_val.json"),
                           "--images", str(shapes_dir / "images" / "val"), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    inst = json.load(open(shapes_dir / "annotations" / "instances_val.json"))
    assert len(rows) == 20 and sum(len(r["objects"]) for r in rows) == len(inst["annotations"])
    first = next(a for a in inst["annotations"] if a["image_id"] == rows[0]["image_id"])
    x, y, w, h = first["bbox"]
    assert any(np.allclose(o["bbox"], [x / 128, y / 128, (x + w) / 128, (y + h) / 128]) for o in rows[0]["objects"])
