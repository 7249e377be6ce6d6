"""Box decoding (argmax / coordexp), confidence scores and pixel conversion."""
import math

import pytest

from swift_coord_plugin.eval.detections import DecodeStats, coco_bbox, decode_bins, object_score
from swift_coord_plugin.eval.results import CoordToken, PredictedObject, expected_bin

L = math.log


def obj(tops, bins=(10, 20, 30, 40), lps=(-0.1, -0.2, -0.3, -0.4), desc_lps=(-1.0,)):
    coords = tuple(CoordToken(b, lp, None if t is None else tuple(t), 5) for b, lp, t in zip(bins, lps, tops))
    return PredictedObject("dog", bins, coords, desc_lps)


def test_expected_bin_renormalises_over_the_coordinate_tokens():
    assert expected_bin([(10, L(0.5)), (20, L(0.25)), (30, L(0.25))]) == pytest.approx(17.5)
    # only 40% of the mass on coordinates in the top-k: renormalised, (0.3*10 + 0.1*20) / 0.4
    assert expected_bin([(10, L(0.3)), (20, L(0.1))]) == pytest.approx(12.5)
    assert expected_bin([(7, -1000.0)]) == 7.0  # no underflow to 0/0
    assert expected_bin([]) is None


def test_argmax_is_the_generated_bin():
    o = obj([None] * 4)
    assert decode_bins(o, "argmax") == (10.0, 20.0, 30.0, 40.0)


def test_coordexp_statistics_fallback_and_swap():
    stats = DecodeStats()
    tops = [[(10, L(0.6)), (30, L(0.2))],  # x1 -> 15
            [],  # no coordinate token in the top-k: keeps the generated 20
            [(30, L(0.5)), (0, L(0.5))],  # x2 -> 15 ... equals x1: no swap
            [(40, L(0.9))]]
    assert decode_bins(obj(tops), "coordexp", stats) == pytest.approx((15.0, 20.0, 15.0, 40.0))
    d = stats.as_dict()
    assert d["coordinate_positions"] == 4 and d["positions_without_coordinate_in_top_k"] == 1
    assert d["positions_by_coordinate_tokens_in_top_k"] == {"0": 1, "1": 1, "2": 2}
    assert d["mean_coordinate_tokens_in_top_k"] == pytest.approx(5 / 4)
    assert d["mean_coordinate_probability_in_top_k"] == pytest.approx((0.8 + 0 + 1.0 + 0.9) / 4)
    assert d["top_k"] == 5 and d["swapped_pairs"] == 0
    tops = [[(30, 0.0)], [(40, 0.0)], [(10, 0.0)], [(20, 0.0)]]  # expectations reversed in both pairs
    assert decode_bins(obj(tops), "coordexp", stats) == (10.0, 20.0, 30.0, 40.0)
    assert stats.swapped_pairs == 2


def test_coordexp_needs_top_logprobs():
    with pytest.raises(ValueError, match="top_logprobs"):
        decode_bins(obj([None] * 4), "coordexp")
    with pytest.raises(ValueError, match="top_logprobs"):
        decode_bins(PredictedObject("dog", (1, 2, 3, 4)), "coordexp")


def test_scores():
    o = obj([None] * 4)
    assert object_score(o, "logprob") == pytest.approx(math.exp(-0.25))
    assert object_score(o, "logprob_desc") == pytest.approx(math.exp(-2.0 / 5))
    assert object_score(o, "constant") == 1.0
    assert object_score(PredictedObject("dog", (1, 2, 3, 4)), "constant") == 1.0
    with pytest.raises(ValueError, match="logprobs"):
        object_score(PredictedObject("dog", (1, 2, 3, 4)), "logprob")
    s = 0.236
    carried = obj([None] * 4, lps=(L(s),) * 4)
    assert object_score(carried, "logprob") == pytest.approx(s, rel=1e-15)


def test_coco_bbox_in_pixels():
    assert coco_bbox((100, 200, 300, 400), 640, 480) == pytest.approx([64.0, 96.0, 128.0, 96.0])
    assert coco_bbox((0, 0, 999, 999), 427, 640) == pytest.approx([0, 0, 0.999 * 427, 0.999 * 640])
    assert coco_bbox((12.5, 0, 12.5, 1), 1000, 1000) == pytest.approx([12.5, 0, 0, 1])
