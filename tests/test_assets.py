"""The shipped COCO sample is what the converter makes of the shipped annotations."""
import json
import os

from helpers import SAMPLE_DIR, SAMPLE_JSONL, read_jsonl
from swift_coord_plugin.data.images import sample_problem
from swift_coord_plugin.data.coco import prepare_coco


def test_shipped_samples_equal_converter_output(tmp_path):
    out = tmp_path / "samples.jsonl"
    prepare_coco(str(SAMPLE_DIR / "instances.json"), str(SAMPLE_DIR / "images"), str(out))
    made, shipped = read_jsonl(out), read_jsonl(SAMPLE_JSONL)
    assert len(shipped) == 9 <= 16
    for m, s in zip(made, shipped):
        assert os.path.basename(m["image"]) == os.path.basename(s["image"])
        assert {k: v for k, v in m.items() if k != "image"} == {k: v for k, v in s.items() if k != "image"}
        s = dict(s, image=str(SAMPLE_DIR / s["image"]))
        assert sample_problem(s) is None


def test_shipped_annotations_are_real_coco():
    inst = json.load(open(SAMPLE_DIR / "instances.json"))
    assert len(inst["images"]) == 9 and len(inst["categories"]) == 80
    for im in inst["images"]:
        from PIL import Image

        with Image.open(SAMPLE_DIR / "images" / im["file_name"]) as f:
            assert f.size == (im["width"], im["height"])
