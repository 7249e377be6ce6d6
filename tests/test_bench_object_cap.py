"""bench/object_cap.py: the share of images and boxes beyond a per-image object cap (docs/data.md's table)."""
import json
import subprocess
import sys

from helpers import REPO, shared_data_or_skip
from swift_coord_plugin.data.coco import ConvertOptions, convert_instances, read_instances


def test_boxes_beyond_the_cap_agree_with_the_converters_over_cap_count():
    coco128 = shared_data_or_skip("coco128")
    ann, images = coco128 / "annotations" / "instances_train2017.json", coco128 / "images"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "object_cap.py"), "--ann", str(ann), "--images",
                           str(images), "--caps", "10", "30", "--json"], stdout=subprocess.PIPE, text=True, check=True)
    table = json.loads(proc.stdout)
    instances = read_instances(str(ann))
    for row in table["caps"]:
        # the converter's own count of objects dropped by the cap, an independent path to the same number
        conv = convert_instances(instances, str(images), ConvertOptions(max_objects=row["cap"]))
        assert row["boxes_beyond"] == conv.summary.dropped_objects["over_cap"] > 0
        # an image over the cap keeps exactly `cap` objects
        kept = [len(json.loads(line)["objects"]) for line in conv.lines]
        assert 0 < row["images_over"] <= kept.count(row["cap"])
    assert table["boxes"] == conv.summary.objects_kept + conv.summary.dropped_objects["over_cap"]
