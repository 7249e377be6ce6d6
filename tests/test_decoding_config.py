"""The decoding configuration keys (swift_ext.decoding) and coord-eval's decoding record (eval.decoding_info)."""
from __future__ import annotations

import json

import pytest

from helpers import SAMPLE_DIR
from swift_coord_plugin.core import grammar as G
from swift_coord_plugin.eval.decoding_info import DecodingInfoError, record_path, resolve
from swift_coord_plugin.swift_ext.decoding import DecodingConfig, DecodingConfigError, load_categories


def test_defaults_and_values():
    assert DecodingConfig.from_env({}) == DecodingConfig(G.FREE, False, G.DEFAULT_MAX_OBJECTS, None)
    c = DecodingConfig.from_env({"COORD_DECODING": "CoordExp", "COORD_DECODING_ORDERED": "true",
                                 "COORD_DECODING_MAX_OBJECTS": "0"})
    assert (c.mode, c.ordered_boxes, c.max_objects) == (G.COORDEXP, True, 0)
    rec = c.record(logprobs_recorded=True)
    assert rec["decoding"] == "coordexp" and rec["infer_backend"] == "transformers"
    assert rec["logprobs"].startswith("grammar") and DecodingConfig().record(True)["logprobs"].startswith("raw")
    assert DecodingConfig().record(False)["logprobs"] is None


@pytest.mark.parametrize("env, key", [
    ({"COORD_DECODING": "beam"}, "COORD_DECODING="),
    ({"COORD_DECODING_MAX_OBJECTS": "-1"}, "COORD_DECODING_MAX_OBJECTS="),
    ({"COORD_DECODING_MAX_OBJECTS": "many"}, "COORD_DECODING_MAX_OBJECTS="),
    ({"COORD_DECODING_ORDERED": "perhaps"}, "COORD_DECODING_ORDERED="),
    ({"COORD_DECODING_CATEGORIES": "/nonexistent/names.txt"}, "no such file"),
])
def test_bad_keys_are_named(env, key):
    with pytest.raises(DecodingConfigError, match=key):
        DecodingConfig.from_env(env)


def test_categories_from_coco_json_and_text(tmp_path):
    names = load_categories(str(SAMPLE_DIR / "instances.json"))
    with open(SAMPLE_DIR / "instances.json") as f:
        assert names == [c["name"] for c in json.load(f)["categories"]]
    txt = tmp_path / "names.txt"
    txt.write_text("dog\n\ntraffic light\n")
    assert load_categories(str(txt)) == ["dog", "traffic light"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DecodingConfigError, match="no category name"):
        load_categories(str(empty))


def test_eval_reads_the_record_and_refuses_contradictions(tmp_path, capsys):
    results = str(tmp_path / "r.jsonl")
    info, warning = resolve(results, None, None)
    assert info["decoding"] == info["infer_backend"] == "unknown" and "not recorded" in warning
    info, warning = resolve(results, "free", "transformers")
    assert (info["decoding"], info["decoding_source"], warning) == ("free", "command line", None)
    with open(record_path(results), "w") as f:
        json.dump(DecodingConfig(G.CONSTRAINED).record(True), f)
    info, warning = resolve(results, None, None)
    assert info["decoding"] == "constrained" and info["infer_backend"] == "transformers" and warning is None
    assert info["logprobs_distribution"].startswith("grammar")
    assert resolve(results, "constrained", "transformers")[0] == info
    with pytest.raises(DecodingInfoError, match="contradicts"):
        resolve(results, "free", None)
    with pytest.raises(DecodingInfoError, match="contradicts"):
        resolve(results, None, "vllm")
