"""Bootstrap over seeds and images: per-image re-accumulation equals pycocotools, known-answer intervals
(image level alone and both levels). The coverage simulation is tests/test_bootstrap_coverage.py."""
import numpy as np
import pytest

from swift_coord_plugin.eval.bootstrap import (GroupReplicates, PerImageMatches, paired_bootstrap, resample_weights,
                                                two_level_interval)
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


def _seeds(coco, jitters, seed0=1):
    """One run per jitter (a 'seed' of a group): its own detections and scores."""
    return [_matches(coco, _detections(coco, jitter=j, seed=seed0 + k))[1] for k, j in enumerate(jitters)]


def test_two_level_identical_groups_interval_contains_zero():
    """The same three runs in both groups: the difference is 0 and its interval holds 0; the seed level makes
    it wider than the image-only one (each group draws its runs independently)."""
    coco = _gt()
    runs = _seeds(coco, [12, 12, 12])
    out = paired_bootstrap({"A": runs, "B": list(runs)}, "A", n_resamples=300, seed=0)
    d = out["B"]["diff"]["AP"]
    assert d["value"] == 0 and d["ci"][0] < 0 < d["ci"][1] and not d["excludes_zero"]
    assert d["ci"][1] - d["ci"][0] > d["ci_images"][1] - d["ci_images"][0]
    assert out["B"]["diff"]["covers"] == "images and seeds" and out["A"]["n_seeds"] == 3


def test_two_level_strictly_better_group_excludes_zero():
    """Every run of C has exact boxes, every run of A jittered ones (same scores and false positives)."""
    coco = _gt()
    a = _seeds(coco, [14, 14, 14])
    c = _seeds(coco, [0, 0, 0])
    out = paired_bootstrap({"A": a, "C": c}, "A", n_resamples=300, seed=0)
    for m in ("AP", "AP75"):
        d = out["C"]["diff"][m]
        assert d["value"] > 0 and d["ci"][0] > 0 and d["excludes_zero"], (m, d)


def test_seeds_that_disagree_widen_the_interval():
    """C's two runs disagree strongly (exact boxes vs heavily jittered ones): its interval against A holds the
    seed noise and is much wider than the image-only interval; with one run per group the two are the same."""
    coco = _gt()
    a = _seeds(coco, [10, 10])
    c = _seeds(coco, [0, 30], seed0=5)
    out = paired_bootstrap({"A": a, "C": c}, "A", n_resamples=400, seed=0)
    d = out["C"]["diff"]["AP"]
    width, width_images = d["ci"][1] - d["ci"][0], d["ci_images"][1] - d["ci_images"][0]
    assert width > 2 * width_images, (d["ci"], d["ci_images"])
    assert d["df"] is not None and d["seed_scale"] > 1 and d["sd_seeds"] > d["sd_images"]
    # Without the seed level (one run each) the interval is the image-only one.
    one = paired_bootstrap({"A": a[:1], "C": c[:1]}, "A", n_resamples=400, seed=0)["C"]["diff"]
    assert one["AP"]["ci"] == one["AP"]["ci_images"] and one["AP"]["df"] is None and one["covers"] == "images only"


def test_two_level_interval_is_the_welch_t_interval_without_image_noise():
    """No image noise (every replicate of a run equals its value): the interval's width follows the seed
    level alone, and the correction makes a plain 2-seed resample wider by sqrt(2) * t_nu / z."""
    from scipy.stats import norm, t

    b = 2000
    vals_a, vals_c = np.array([0.30, 0.34]), np.array([0.40, 0.48])
    groups = [GroupReplicates(values=v, replicates=np.repeat(v[:, None], b, axis=1),
                              seed_counts=resample_weights(2, b, (0, 1, j))) for j, v in enumerate((vals_a, vals_c))]
    terms = [(1.0, groups[1]), (-1.0, groups[0])]
    plain = two_level_interval(terms, small_sample_correction=False)
    fixed = two_level_interval(terms)
    assert plain["value"] == fixed["value"] == pytest.approx(0.12)
    assert plain["ci_images"] == [pytest.approx(0.12), pytest.approx(0.12)] and plain["sd_images"] < 1e-12
    v = np.array([np.var(vals_a, ddof=1) / 2, np.var(vals_c, ddof=1) / 2])
    nu = v.sum() ** 2 / (v ** 2).sum()
    assert fixed["df"] == pytest.approx(nu)
    # Plain: the seed means take 3 values per group (runs drawn (2,0), (1,1), (0,2)); the extremes of the
    # difference, +-(0.04 + 0.02), each have probability 1/16 > 2.5%, so they are the interval's ends.
    assert plain["ci"] == [pytest.approx(0.12 - 0.06), pytest.approx(0.12 + 0.06)]
    k = np.sqrt(2) * t.ppf(0.975, nu) / norm.ppf(0.975)
    assert fixed["ci"] == [pytest.approx(0.12 - 0.06 * k), pytest.approx(0.12 + 0.06 * k)]
    with pytest.raises(ValueError, match="same replicates"):
        two_level_interval([(1.0, groups[0]), (1.0, GroupReplicates([0.1], np.zeros((1, 5)), np.ones((5, 1))))])
    with pytest.raises(ValueError, match=r"seed_counts must be \[5, 2\]"):
        GroupReplicates([0.1, 0.2], np.zeros((2, 5)), np.ones((5, 3)))
