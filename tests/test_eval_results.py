"""Reading swift infer result lines: parsing what a model really writes, logprob alignment, errors, fuzzing."""
import json
import math
import random

import pytest

from swift_coord_plugin.core import codec
from swift_coord_plugin.eval.results import ResultsError, image_file_name, iter_lines, read_row

WORDS = ["person", "dog", "dining table", "tv", "café", "a", "the red car", "  ", "\n", "日本", "<", "|", ">",
         "<obj", "_start>", "<|coord_", "12|>", "<|coord_1000|>", "<|coord_-1|>", "<|coord_0007|>", "coord", "0.5",
         "[1, 2, 3, 4]", "<|im_end|>", "<|endoftext|>", "\ufffd", "\x00", " ,", "{", "}"]


def coord(k):
    return codec.coord_token(k)


def random_piece(rng):
    r = rng.random()
    if r < 0.35:
        return coord(rng.randrange(codec.NUM_BINS))
    if r < 0.5:
        return codec.OBJ_START
    if r < 0.6:
        return codec.OBJ_END
    if r < 0.65:
        return " "
    return rng.choice(WORDS)


def rendered(rng, n):
    return codec.render_objects(codec.DetObject(rng.choice(["person", "dog", "tv", "hot dog"]), _box(rng))
                                for _ in range(n))


def _box(rng):
    x1, x2 = sorted([rng.random(), rng.random()])
    y1, y2 = sorted([rng.random(), rng.random()])
    return (x1, y1, x2, y2)


def mutate(rng, text):
    """Character- and piece-level damage: truncation, deletion, duplication, insertion, swaps."""
    pieces = codec.split_pieces(text)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if not pieces:
            pieces = [random_piece(rng)]
        i = rng.randrange(len(pieces))
        if op == 0:
            pieces = pieces[:i]
        elif op == 1:
            del pieces[i]
        elif op == 2:
            pieces[i:i] = pieces[i:i + rng.randint(1, 12)]
        elif op == 3:
            pieces.insert(i, random_piece(rng))
        elif op == 4:
            j = rng.randrange(len(pieces))
            pieces[i], pieces[j] = pieces[j], pieces[i]
        else:
            s = "".join(pieces)
            cut = rng.randrange(len(s) + 1)
            pieces = codec.split_pieces(s[:cut])
    return "".join(pieces)


def tokenize(rng, text):
    """Pieces, with text pieces further cut at random places (as a BPE tokenizer would)."""
    out = []
    for p in codec.split_pieces(text):
        if codec.coord_bin_of(p) is not None or p in (codec.OBJ_START, codec.OBJ_END) or len(p) < 2:
            out.append(p)
            continue
        cuts = sorted(rng.sample(range(1, len(p)), min(len(p) - 1, rng.randint(0, 3))))
        for a, b in zip([0] + cuts, cuts + [len(p)]):
            out.append(p[a:b])
    return out


def logprob_row(tokens, response=None, end=True, top=True, rng=None):
    """A result line whose token i has logprob -(i+1)/1000 (so a coordinate's logprob names its token)."""
    content = []
    for i, t in enumerate(tokens + (["<|im_end|>"] if end else [])):
        e = {"token": t, "logprob": -(i + 1) / 1000.0, "bytes": list(t.encode("utf-8"))}
        if top:
            alts = [{"token": t, "logprob": e["logprob"]}]
            if rng is not None:
                alts += [{"token": random_piece(rng), "logprob": -5.0 - rng.random()} for _ in range(3)]
            e["top_logprobs"] = alts
        content.append(e)
    return {"response": "".join(tokens) if response is None else response, "logprobs": {"content": content},
            "images": [{"bytes": None, "path": "/x/y/000000000009.jpg"}]}


def check_invariants(pred, tokens=None):
    assert set(pred.parse_counts) <= set(codec.PARSE_REASONS)
    assert all(v > 0 for v in pred.parse_counts.values())
    for o in pred.objects:
        assert len(o.bins) == 4 and all(0 <= k < codec.NUM_BINS for k in o.bins)
        assert o.bins[0] <= o.bins[2] and o.bins[1] <= o.bins[3]
        assert o.desc.strip() and codec.OBJ_START not in o.desc and codec.OBJ_END not in o.desc
        if tokens is not None:
            assert o.coords is not None
            for k, c in zip(o.bins, o.coords):
                i = round(-c.logprob * 1000) - 1
                assert c.bin == k and codec.coord_bin_of(tokens[i]) == k  # the logprob came from that very token
                assert c.top is not None and (k, c.logprob) in c.top


# ----------------------------------------------------------------------------- fuzzing
def test_fuzz_random_and_mutated_responses_never_raise():
    rng = random.Random(1234)
    n_objects = 0
    for trial in range(3000):
        if trial % 3 == 0:
            text = "".join(random_piece(rng) for _ in range(rng.randint(0, 40)))
        else:
            text = mutate(rng, rendered(rng, rng.randint(0, 6)))
        res = codec.parse_objects(text)
        pred = read_row({"response": text}, trial + 1)
        check_invariants(pred)
        assert [(o.desc, o.bins) for o in pred.objects] == [(o.desc, o.bins) for o in res.objects]
        tokens = tokenize(rng, text)
        tpred = read_row(logprob_row(tokens, end=rng.random() < 0.5, rng=rng), trial + 1)
        check_invariants(tpred, tokens)
        assert tpred.text_agrees
        assert [(o.desc, o.bins) for o in tpred.objects] == [(o.desc, o.bins) for o in pred.objects]
        n_objects += len(pred.objects)
    assert n_objects > 1000  # the mutations leave plenty of objects to recover


def test_fuzz_arbitrary_strings_and_values():
    rng = random.Random(7)
    alphabet = "<|>_/ coordobjstartend0123456789\n\t\ufffdé"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        check_invariants(read_row({"response": s}, 1))
    for value in (None, 3, 2.5, ["a"], {"b": 1}):
        check_invariants(read_row({"response": None}, 1))
        assert codec.parse_pieces([value, codec.OBJ_START, value]).objects == []


# ----------------------------------------------------------------------------- what a model writes
def test_clean_response_round_trips():
    rng = random.Random(0)
    objs = codec.order_objects(codec.DetObject(d, _box(rng)) for d in ["person", "dog", "tv", "person"])
    text = codec.render_objects(objs)
    pred = read_row({"response": text}, 1)
    assert [(o.desc, o.bins) for o in pred.objects] == [(o.desc, o.bins) for o in objs]
    assert pred.parse_counts == {}


def test_truncated_answer_keeps_every_complete_object():
    rng = random.Random(5)
    objs = [codec.DetObject("dog", _box(rng)) for _ in range(8)]
    text = codec.render_objects(objs)
    ends = [i + len(codec.OBJ_END) for i in range(len(text)) if text.startswith(codec.OBJ_END, i)]
    for cut in range(0, len(text) + 1, 7):
        complete = sum(1 for e in ends if e <= cut)
        got = read_row({"response": text[:cut]}, 1).objects
        assert complete <= len(got) <= complete + 1
        assert [o.bins for o in got[:complete]] == [o.bins for o in objs[:complete]]


def test_documented_repairs_and_drops():
    c = coord
    text = ("junk " + c(1) + codec.OBJ_END  # stray text, stray coordinate, stray end
            + codec.OBJ_START + " dog " + c(50) + c(60) + c(10) + c(20) + " " + codec.OBJ_END  # reversed
            + codec.OBJ_START + " cat " + c(1) + c(2) + c(3)  # 3 coordinates then a new object
            + codec.OBJ_START + " cow " + c(1) + c(2) + c(3) + c(4) + c(5) + codec.OBJ_END  # 5
            + codec.OBJ_START + " bus " + c(1) + "7" + c(3) + c(4) + c(5) + codec.OBJ_END  # text in the box
            + codec.OBJ_START + "  " + c(1) + c(2) + c(3) + c(4) + codec.OBJ_END  # no description
            + codec.OBJ_START + " dog " + c(10) + c(20) + c(50) + c(60) + codec.OBJ_END  # duplicate
            + codec.OBJ_START + " car " + c(1) + c(2) + c(3) + c(4)  # missing end, then truncated
            + codec.OBJ_START + " tv " + c(9))
    pred = read_row({"response": text}, 1)
    assert [(o.desc, o.bins) for o in pred.objects] == [("dog", (10, 20, 50, 60)), ("car", (1, 2, 3, 4))]
    assert pred.parse_counts == {
        codec.IGNORED_STRAY_TEXT: 1, codec.IGNORED_STRAY_COORDS: 1, codec.IGNORED_STRAY_END: 1,
        codec.REPAIR_REVERSED: 1, codec.DROP_INCOMPLETE: 1, codec.DROP_EXTRA_COORDS: 1, codec.DROP_BAD_COORD: 1,
        codec.DROP_EMPTY_DESC: 1, codec.DROP_DUPLICATE: 1, codec.REPAIR_MISSING_END: 1, codec.DROP_TRUNCATED: 1}


# ----------------------------------------------------------------------------- logprobs
def test_logprobs_align_with_coordinates_after_a_swap():
    tokens = [codec.OBJ_START, " dog", " ", coord(50), coord(60), coord(10), coord(20), " ", codec.OBJ_END]
    pred = read_row(logprob_row(tokens), 3)
    (o,) = pred.objects
    assert o.bins == (10, 20, 50, 60)
    assert [round(-c.logprob * 1000) - 1 for c in o.coords] == [5, 6, 3, 4]
    assert o.desc_logprobs == (-0.002, -0.003)
    assert pred.ended and pred.text_agrees and pred.has_logprobs


def test_no_end_of_turn_token_means_cut_by_max_tokens():
    tokens = [codec.OBJ_START, " dog ", coord(1), coord(2), coord(3)]
    pred = read_row(logprob_row(tokens, end=False), 1)
    assert pred.ended is False and pred.objects == [] and pred.parse_counts == {codec.DROP_TRUNCATED: 1}


def test_split_multibyte_character_takes_descriptions_from_the_text():
    tokens = [codec.OBJ_START, " caf", "\ufffd", " ", coord(1), coord(2), coord(3), coord(4), codec.OBJ_END]
    pred = read_row(logprob_row(tokens, response=f"{codec.OBJ_START} café {''.join(tokens[4:8])}{codec.OBJ_END}"), 1)
    assert pred.text_agrees and [o.desc for o in pred.objects] == ["café"]
    other = read_row(logprob_row(tokens, response=""), 1)
    assert other.text_agrees is False and [o.desc for o in other.objects] == ["caf\ufffd"]


def test_top_logprobs_keep_only_coordinate_tokens():
    tokens = [codec.OBJ_START, " dog ", coord(1), coord(2), coord(3), coord(4), codec.OBJ_END]
    row = logprob_row(tokens)
    row["logprobs"]["content"][2]["top_logprobs"] = [
        {"token": coord(1), "logprob": -0.1}, {"token": "1", "logprob": -2.0}, {"token": coord(2), "logprob": -3.0},
        {"token": "<|coord_1000|>", "logprob": -4.0}]
    c = read_row(row, 1).objects[0].coords[0]
    assert c.top == ((1, -0.1), (2, -3.0)) and c.top_k == 4
    del row["logprobs"]["content"][3]["top_logprobs"]
    assert read_row(row, 1).objects[0].coords[1].top is None


# ----------------------------------------------------------------------------- row shape
def test_image_file_name_forms():
    assert image_file_name([{"bytes": None, "path": "/a/b/c.jpg"}]) == "c.jpg"
    assert image_file_name(["rel/d.jpg"]) == "d.jpg"
    assert image_file_name("C:\\data\\e.jpg") == "e.jpg"
    assert image_file_name([]) is None and image_file_name(None) is None
    assert image_file_name([{"bytes": "xx", "path": None}]) is None


def test_image_meta_from_the_pipeline_column_or_top_level():
    row = {"response": "", "chat_template_kwargs": {"coord_meta": {"image_id": 42, "width": 640, "height": 480}}}
    pred = read_row(row, 1)
    assert (pred.image_id, pred.width, pred.height) == (42, 640, 480)
    pred = read_row({"response": "", "image_id": "43", "width": 10.0}, 1)
    assert (pred.image_id, pred.width, pred.height) == ("43", 10, None)  # matched to GT id 43 by GtImages


@pytest.mark.parametrize("row,msg", [
    ({"messages": []}, "no 'response'"),
    ({"response": 5}, "response must be a string"),
    ({"response": "", "image_id": [1]}, "image_id must be an integer"),
    ({"response": "", "logprobs": {"content": 3}}, "logprobs.content must be a list"),
    ({"response": "", "logprobs": {"content": [{"logprob": 0.0}]}}, "logprobs.content[0]"),
    ({"response": "", "logprobs": {"content": [{"token": codec.OBJ_START, "logprob": 0.0},
                                               {"token": " a", "logprob": 0.0}] +
                                  [{"token": coord(1), "logprob": "x"}] * 4}}, "logprobs.content[2]: logprob"),
])
def test_malformed_lines_name_file_line_and_field(row, msg):
    with pytest.raises(ResultsError) as e:
        read_row(row, 17, "res.jsonl")
    assert "res.jsonl:17" in str(e.value) and msg in str(e.value)


def test_iter_lines_reports_bad_json_with_its_line(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"response": ""}) + "\n\n" + '{"response": "x"\n')
    with pytest.raises(ResultsError, match=r"r.jsonl:3: not valid JSON"):
        list(iter_lines(str(p)))
    p.write_text("[1, 2]\n")
    with pytest.raises(ResultsError, match=r"r.jsonl:1: expected a JSON object"):
        list(iter_lines(str(p)))


def test_coordinate_logprob_is_finite_number():
    tokens = [codec.OBJ_START, " dog ", coord(1), coord(2), coord(3), coord(4), codec.OBJ_END]
    row = logprob_row(tokens)
    row["logprobs"]["content"][2]["logprob"] = float("nan")
    with pytest.raises(ResultsError, match="logprob must be a number"):
        read_row(row, 1)
    row["logprobs"]["content"][2]["logprob"] = -math.inf  # a certain-to-fail token is still a number
    assert read_row(row, 1).objects[0].coords[0].logprob == -math.inf


@pytest.mark.parametrize("fast", [True, False])
def test_cutting_bytes_arrays_never_changes_a_row(tmp_path, monkeypatch, fast):
    from swift_coord_plugin.eval import results as results_mod

    if not fast:  # the standard-library decoder, which cuts the bytes arrays first
        monkeypatch.setattr(results_mod, "_fast_json", None)
    rng = random.Random(3)
    tricky = ['x, "bytes": [1, 2]', '\\", "bytes": [3]', '"bytes"', "]", "<|coord_5|>", "é"]
    rows = []
    for _ in range(200):
        toks = [rng.choice(tricky + WORDS) for _ in range(rng.randint(0, 12))]
        row = logprob_row(toks, rng=rng)
        row["images"] = [{"bytes": None, "path": rng.choice(tricky)}]
        rows.append(row)
    p = tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=rng.random() < 0.5) + "\n" for r in rows))

    def without_bytes(o):
        if isinstance(o, dict):
            return {k: without_bytes(v) for k, v in o.items() if not (k == "bytes" and isinstance(v, list))}
        if isinstance(o, list):
            return [without_bytes(v) for v in o]
        return o

    assert [without_bytes(r) for _, r in iter_lines(str(p))] == [without_bytes(r) for r in rows]
