"""Paired bootstrap over images: per-image re-accumulation equals pycocotools, known-answer intervals."""
import numpy as np
import pytest

from swift_coord_plugin.eval.bootstrap import PerImageMatches, paired_bootstrap, resample_weights
from swift_coord_plugin.eval.scoring import run_cocoeval


def _gt(n_images=30, n_cats=3, seed=0):
    from pycocotools.coco import COCO

    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 640, "height": 480, "file_name": f"{i}.jpg"})
        for _ in range(rng.integers(0, 5)):
            x, y = rng.uniform(0, 500), rng.uniform(0, 350)
            w, h = rng.uniform(5, 140), rng.uniform(5, 130)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, n_cats + 1)),
                         "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c, "name": f"c{c}"} for c in range(1, n_cats + 1)]}
    coco.createIndex()
    return coco


def _detections(coco, jitter, seed=1, fp_rate=0.3):
    """Each GT box jittered by ``jitter`` px (0: exact), plus random false positives; distinct scores."""
    rng = np.random.default_rng(seed)
    dets = []
    for a in coco.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        j = rng.uniform(-jitter, jitter, 4) if jitter else np.zeros(4)
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]})
        if rng.uniform() < fp_rate:
            dets.append({"image_id": a["image_id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": [rng.uniform(0, 500), rng.uniform(0, 350), 30.0, 30.0]})
    scores = rng.permutation(len(dets)) / len(dets) + 0.01
    for d, s in zip(dets, scores):
        d["score"] = float(s)
    return dets


def _matches(coco, dets):
    ev = run_cocoeval(coco, dets, [i["id"] for i in coco.dataset["images"]])
    return ev, PerImageMatches.from_cocoeval(ev)


def test_unit_weights_give_cocoeval_numbers():
    coco = _gt()
    ev, pim = _matches(coco, _detections(coco, jitter=12))
    m = pim.metrics()
    for name, idx in (("AP", 0), ("AP50", 1), ("AP75", 2)):
        assert m[name][0] == pytest.approx(ev.stats[idx], abs=1e-12), name
    assert 0.05 < ev.stats[0] < 0.95  # a non-trivial case


def test_weights_equal_cocoeval_on_the_resampled_images():
    """A replicate = COCOeval run on a GT file where each image is copied w_i times (new ids)."""
    from pycocotools.coco import COCO

    coco = _gt(n_images=25, seed=3)
    dets = _detections(coco, jitter=10, seed=4)
    _, pim = _matches(coco, dets)
    w = resample_weights(len(pim.image_ids), 3, seed=7)
    got = pim.metrics(w)
    for b in range(w.shape[0]):
        images, anns, new_dets = [], [], []
        for i, img_id in enumerate(pim.image_ids):
            for c in range(int(w[b, i])):
                nid = img_id * 100 + c
                images.append({**coco.imgs[img_id], "id": nid})
                anns += [{**a, "id": len(anns) + k + 1, "image_id": nid}
                         for k, a in enumerate(coco.imgToAnns[img_id])]
                new_dets += [{**d, "image_id": nid} for d in dets if d["image_id"] == img_id]
        rs = COCO()
        rs.dataset = {"images": images, "annotations": anns, "categories": coco.dataset["categories"]}
        rs.createIndex()
        ev = run_cocoeval(rs, new_dets, [i["id"] for i in images])
        for name, idx in (("AP", 0), ("AP50", 1), ("AP75", 2)):
            assert got[name][b] == pytest.approx(ev.stats[idx], abs=1e-12), (b, name)


def test_identical_runs_interval_contains_zero():
    coco = _gt()
    dets = _detections(coco, jitter=12)
    _, a = _matches(coco, dets)
    _, b = _matches(coco, [dict(d) for d in dets])
    out = paired_bootstrap({"A": [a], "B": [b]}, "A", n_resamples=200, seed=0)
    d = out["B"]["diff"]["AP"]
    assert d["value"] == 0 and d["ci"][0] <= 0 <= d["ci"][1] and not d["excludes_zero"]
    lo, hi = out["A"]["AP"]["ci"]
    assert lo < out["A"]["AP"]["value"] < hi and hi - lo > 0.01  # the noise itself is not zero


def test_strictly_better_copy_interval_excludes_zero():
    coco = _gt()
    worse = _detections(coco, jitter=14, seed=1)
    better = _detections(coco, jitter=0, seed=1)   # same detections and scores, exact boxes
    _, a = _matches(coco, worse)
    _, c = _matches(coco, better)
    out = paired_bootstrap({"A": [a], "C": [c]}, "A", n_resamples=200, seed=0)
    for m in ("AP", "AP75"):
        d = out["C"]["diff"][m]
        assert d["value"] > 0 and d["ci"][0] > 0 and d["excludes_zero"], (m, d)
    # Seeds: a group of two runs is their mean in every replicate.
    out2 = paired_bootstrap({"A": [a, a], "C": [c, a]}, "A", n_resamples=50, seed=0)
    assert out2["C"]["AP"]["value"] == pytest.approx((out["C"]["AP"]["value"] + out["A"]["AP"]["value"]) / 2)


def test_different_image_sets_refused():
    coco = _gt()
    dets = _detections(coco, jitter=12)
    _, a = _matches(coco, dets)
    ev = run_cocoeval(coco, dets, [i["id"] for i in coco.dataset["images"]][:-3])
    with pytest.raises(ValueError, match="same evaluated images"):
        paired_bootstrap({"A": [a], "B": [PerImageMatches.from_cocoeval(ev)]}, "A", n_resamples=10)
