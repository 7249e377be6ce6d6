"""The codec's rules: bins, order, rendering and parsing (milliseconds, no model)."""
import math
import random

import pytest

from swift_coord_plugin.core import codec
from swift_coord_plugin.core.codec import DetObject
from swift_coord_plugin.environment import order_policy_setting, order_seed_setting


def test_quantize_rule_and_clamp():
    assert codec.NUM_BINS == 1000
    assert codec.quantize(0.0) == 0
    assert codec.quantize(0.0004) == 0
    assert codec.quantize(0.0006) == 1
    assert codec.quantize(0.25) == 250
    assert codec.quantize(0.9994) == 999
    assert codec.quantize(0.9996) == 999  # round(999.6) = 1000, clamped to 999
    assert codec.quantize(1.0) == 999
    assert codec.quantize(-0.2) == 0 and codec.quantize(3.0) == 999
    # Halves round up (not to even): 0.0125 * 1000 = 12.5 -> 13; 0.0135 -> 14.
    assert codec.quantize(0.0125) == 13 and codec.quantize(0.0135) == 14
    with pytest.raises(ValueError):
        codec.quantize(float("nan"))


def test_dequantize_and_error_bound():
    assert codec.dequantize(0) == 0.0 and codec.dequantize(999) == 0.999 and codec.dequantize(250) == 0.25
    rng = random.Random(0)
    for _ in range(10000):
        c = rng.random() * 0.999
        assert abs(codec.dequantize(codec.quantize(c)) - c) <= 0.0005 + 1e-12
    for k in range(codec.NUM_BINS):  # every bin is a fixed point
        assert codec.quantize(codec.dequantize(k)) == k


def test_tokens_spelling_and_order():
    toks = codec.new_tokens()
    assert len(toks) == 1002 and len(set(toks)) == 1002
    assert toks[0] == "<|coord_0|>" and toks[999] == "<|coord_999|>"
    assert toks[1000:] == ["<obj_start>", "<obj_end>"]
    assert codec.coord_bin_of("<|coord_17|>") == 17
    assert codec.coord_bin_of("<|coord_1000|>") is None and codec.coord_bin_of("<|coord_x|>") is None
    with pytest.raises(ValueError):
        codec.coord_token(1000)


def test_order_is_y1_then_x1_and_stable():
    objs = [DetObject("a", (0.5, 0.3, 0.6, 0.4)), DetObject("b", (0.1, 0.3, 0.2, 0.4)),
            DetObject("c", (0.9, 0.1, 1.0, 0.2)), DetObject("d", (0.1, 0.3, 0.9, 0.9)),
            DetObject("e", (0.0, 0.7, 0.1, 0.8))]
    assert [o.desc for o in codec.order_objects(objs)] == ["c", "b", "d", "a", "e"]  # b, d tie: input order


def test_render_exact_spacing():
    objs = [DetObject("dog", (0.1, 0.2, 0.3, 0.4)), DetObject("traffic light", (0.0, 0.5, 1.0, 1.0))]
    assert codec.render_objects(objs) == (
        "<obj_start> dog <|coord_100|><|coord_200|><|coord_300|><|coord_400|> <obj_end>"
        "<obj_start> traffic light <|coord_0|><|coord_500|><|coord_999|><|coord_999|> <obj_end>")
    assert codec.render_objects([]) == ""


def test_parse_round_trip_random():
    rng = random.Random(1)
    words = ["person", "dog", "hot dog", "traffic light", "a b  c"]
    for _ in range(300):
        objs = []
        for _ in range(rng.randint(0, 12)):
            x1, x2 = sorted(rng.random() for _ in range(2))
            y1, y2 = sorted(rng.random() for _ in range(2))
            objs.append(DetObject(rng.choice(words), (x1, y1, x2, y2)))
        objs = codec.order_objects(objs)
        res = codec.parse_objects(codec.render_objects(objs), dedupe=False)
        assert res.counts == {}
        assert [(o.desc, o.bins) for o in res.objects] == [(codec.clean_desc(o.desc), o.bins) for o in objs]


def test_parse_repairs_and_counts():
    good = "<obj_start> cat <|coord_1|><|coord_2|><|coord_3|><|coord_4|> <obj_end>"
    text = ("junk " + good
            + "<obj_start> dog <|coord_50|><|coord_60|><|coord_10|><|coord_70|>"  # reversed x, missing end
            + good  # duplicate
            + "<obj_start> bus <|coord_1|><|coord_2|>7<|coord_3|><|coord_4|> <obj_end>"  # text in box
            + "<obj_start> car <|coord_1|><|coord_2|><|coord_3|> <obj_end>"  # 3 coords
            + "<obj_start> van <|coord_1|><|coord_2|><|coord_3|><|coord_4|><|coord_5|> <obj_end>"  # 5 coords
            + "<obj_end><|coord_9|>"
            + "<obj_start> truck <|coord_1|><|coord_2|>")  # truncated
    res = codec.parse_objects(text)
    assert [(o.desc, o.bins) for o in res.objects] == [("cat", (1, 2, 3, 4)), ("dog", (10, 60, 50, 70))]
    assert res.counts == {
        codec.IGNORED_STRAY_TEXT: 1, codec.REPAIR_MISSING_END: 1, codec.REPAIR_REVERSED: 1, codec.DROP_DUPLICATE: 1,
        codec.DROP_BAD_COORD: 1, codec.DROP_INCOMPLETE: 1, codec.DROP_EXTRA_COORDS: 1, codec.IGNORED_STRAY_END: 1,
        codec.IGNORED_STRAY_COORDS: 1, codec.DROP_TRUNCATED: 1}
    # The pieces of the reversed box follow the swap: x1 came from the third coordinate token.
    dog = res.objects[1]
    pieces = codec.split_pieces(text)
    assert [codec.coord_bin_of(pieces[i]) for i in dog.coord_pieces] == [10, 60, 50, 70]


def test_parse_never_raises_on_odd_input():
    for text in [None, 5, "", "<obj_start>", "<obj_end>" * 3, "<|coord_|>", "<|coord_99999|>", "\x00<obj_start>\n"]:
        codec.parse_objects(text)


def test_bbox_and_desc_problems():
    assert codec.bbox_problem([0, 0, 1, 1]) is None
    assert "outside" in codec.bbox_problem([0, 0, 1.2, 1])
    assert "x2 < x1" in codec.bbox_problem([0.5, 0, 0.4, 1])
    assert codec.bbox_problem([0, 0, 1]) and codec.bbox_problem([0, 0, "a", 1]) and codec.bbox_problem([0, 0, math.nan, 1])
    assert codec.desc_problem("dog") is None
    assert codec.desc_problem("  ") and codec.desc_problem(None) and codec.desc_problem("a <obj_end>")
    assert codec.bins_problem([1, 2, 3, 4]) is None and codec.bins_problem([1, 2, 1000, 4])


def test_only_canonical_coordinate_spellings():
    assert codec.coord_bin_of("<|coord_0007|>") is None and codec.coord_bin_of("<|coord_00|>") is None
    assert codec.coord_bin_of("<|coord_0|>") == 0 and codec.coord_bin_of("<|coord_999|>") == 999
    res = codec.parse_objects("<obj_start> a <|coord_1|><|coord_0002|><|coord_3|><|coord_4|> <obj_end>")
    assert res.objects == [] and res.counts == {codec.DROP_BAD_COORD: 1}


# ----------------------------------------------------------------------------- order policies
def test_default_order_is_on_bins_first_then_continuous_values():
    # a and b share the y1 bin 300 (0.3004 and 0.2996 both round to 300): x1 bins decide, not the raw y1.
    a, b = DetObject("a", (0.51, 0.2996, 0.6, 0.4)), DetObject("b", (0.2, 0.3004, 0.3, 0.4))
    assert [o.desc for o in codec.order_objects([a, b])] == ["b", "a"]
    # The former rule (continuous y1, then x1) wrote x1 bins going down within the y1 bin: a (510) before b (200).
    assert [o.desc for o in sorted([a, b], key=lambda o: (o.bbox[1], o.bbox[0]))] == ["a", "b"]
    # Equal bins on both: the continuous values decide, then the input order.
    c, d = DetObject("c", (0.2002, 0.3001, 0.3, 0.4)), DetObject("d", (0.1998, 0.3001, 0.3, 0.4))
    assert [o.desc for o in codec.order_objects([c, d])] == ["d", "c"]
    assert [o.desc for o in codec.order_objects([d, DetObject("e", d.bbox)])] == ["d", "e"]


def test_x1y1_policy_and_registry():
    objs = [DetObject("a", (0.5, 0.1, 0.6, 0.2)), DetObject("b", (0.1, 0.9, 0.2, 1.0)),
            DetObject("c", (0.1, 0.3, 0.2, 0.4))]
    assert [o.desc for o in codec.order_objects(objs, codec.order_policy("x1y1"))] == ["c", "b", "a"]
    assert [o.desc for o in codec.order_objects(objs, codec.order_policy("Y1X1"))] == ["a", "c", "b"]
    assert codec.order_policy().name == "y1x1" and codec.order_policy(None).name == "y1x1"
    assert order_policy_setting({"COORD_ORDER": "x1y1"}).name == "x1y1"
    with pytest.raises(ValueError, match=r"COORD_ORDER='diagonal'.*\['random', 'x1y1', 'y1x1'\]"):
        codec.order_policy("diagonal")
    with pytest.raises(ValueError, match="COORD_ORDER_SEED"):
        codec.order_seed("one")
    assert codec.order_seed() == 0 and codec.order_seed(" 7 ") == 7 and codec.order_seed(3) == 3
    with pytest.raises(ValueError, match=r"COORD_ORDER_SEED='1\.5' is not an integer"):
        codec.order_seed("1.5")
    # A new policy is one registration away from COORD_ORDER.
    policy = codec.OrderPolicy("area_desc", lambda b: (-round((b[2] - b[0]) * (b[3] - b[1]), 9),))
    codec.register_order_policy(policy)
    try:
        assert order_policy_setting({"COORD_ORDER": "area_desc"}) is policy
        assert [o.desc for o in codec.order_objects(objs, policy)] == ["a", "b", "c"]  # equal areas: input order
        with pytest.raises(ValueError, match="already registered"):
            codec.register_order_policy(policy)
    finally:
        del codec.ORDER_POLICIES["area_desc"]


def test_order_settings_come_from_the_caller(monkeypatch):
    """The core reads no environment: ``COORD_ORDER`` / ``COORD_ORDER_SEED`` are read by the glue
    (``swift_ext.rows``) and handed over."""
    monkeypatch.setenv("COORD_ORDER", "x1y1")
    monkeypatch.setenv("COORD_ORDER_SEED", "5")
    assert codec.order_policy().name == "y1x1" and codec.order_seed() == 0
    assert order_policy_setting().name == "x1y1" and order_seed_setting() == 5
    assert order_policy_setting({}).name == "y1x1" and order_seed_setting({}) == 0
    assert order_policy_setting({"COORD_ORDER": ""}).name == "y1x1"
    with pytest.raises(ValueError, match=r"COORD_ORDER='spiral' is not an object order policy; registered"):
        order_policy_setting({"COORD_ORDER": "spiral"})
    with pytest.raises(ValueError, match=r"COORD_ORDER_SEED='one' is not an integer"):
        order_seed_setting({"COORD_ORDER_SEED": "one"})


def test_random_draw_is_a_seeded_permutation_per_sample_and_epoch():
    draws = {(s, e, k): codec.draw_order(12, k, e, s) for s in (0, 1) for e in (0, 1, 2) for k in ("x.jpg", "y.jpg")}
    for key, perm in draws.items():
        assert sorted(perm) == list(range(12))
        assert codec.draw_order(12, key[2], key[1], key[0]) == perm  # reproducible
    assert len({tuple(p) for p in draws.values()}) == len(draws)  # every seed / epoch / sample draws anew
    assert codec.draw_order(0, "x", 0, 0) == [] and codec.draw_order(1, "x", 5, 3) == [0]


def test_a_side_narrower_than_a_bin_is_widened_to_one_bin():
    # x1 = 0.1561, x2 = 0.1564: both in bin 156 -> (156, 157); y spans bins 100..300: unchanged.
    assert codec.quantize_box((0.1561, 0.1, 0.1564, 0.3)) == (156, 100, 156, 300)
    assert codec.is_narrow((0.1561, 0.1, 0.1564, 0.3)) and not codec.is_narrow((0.1, 0.1, 0.2, 0.3))
    assert codec.target_bins((0.1561, 0.1, 0.1564, 0.3)) == (156, 100, 157, 300)
    assert codec.DetObject("pole", (0.1561, 0.1, 0.1564, 0.3)).bins == (156, 100, 157, 300)
    # both sides, and the last bin (the far end cannot move past 999: the near end moves instead)
    assert codec.target_bins((0.9996, 0.0, 1.0, 0.0004)) == (998, 0, 999, 1)
    assert codec.widen_bins((5, 6, 7, 8)) == (5, 6, 7, 8)
    rng = random.Random(0)
    for _ in range(2000):
        a, b = sorted(rng.random() for _ in range(2))
        c, d = sorted(rng.random() for _ in range(2))
        k = codec.target_bins((a, c, b, d))
        assert k[2] > k[0] and k[3] > k[1] and codec.bins_problem(list(k)) is None
        q = codec.quantize_box((a, c, b, d))
        assert (k[0], k[1]) == (q[0], q[1]) or 999 in (q[0], q[1])  # x1, y1 (the order keys) keep their bins
