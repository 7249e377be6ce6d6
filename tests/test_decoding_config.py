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


@pytest.mark.parametrize("mode", [G.CONSTRAINED, G.COORDEXP])
def test_beam_search_and_coordexp_sampling_are_refused_naming_the_option(mode):
    from swift_coord_plugin.swift_ext.decoding import check_generation_options

    cfg = DecodingConfig(mode)
    with pytest.raises(DecodingConfigError, match="--num_beams 2"):
        check_generation_options(cfg, num_beams=2)
    check_generation_options(DecodingConfig(G.FREE), num_beams=4, temperature=0.7)  # free: ms-swift as it is
    check_generation_options(cfg, num_beams=1, temperature=0)
    if mode == G.COORDEXP:
        with pytest.raises(DecodingConfigError, match="--temperature 0.7"):
            check_generation_options(cfg, temperature=0.7)
    else:
        check_generation_options(cfg, temperature=0.7)  # constrained sampling draws from the allowed tokens


@pytest.mark.parametrize("option, mode", [({"num_beams": 3}, "constrained"),
                                          ({"do_sample": True, "temperature": 0.7}, "coordexp")])
def test_generate_refuses_before_generating(option, mode, monkeypatch):
    """The transformers backend's hook (``Template.generate``) refuses at its first batch, before ``generate``."""
    from transformers import GenerationConfig

    from swift_coord_plugin.swift_ext.decoding import generate_with_grammar

    monkeypatch.setenv("COORD_DECODING", mode)
    calls = []
    with pytest.raises(DecodingConfigError, match=f"--{next(k for k in option if k != 'do_sample')}"):
        generate_with_grammar(None, lambda *a, **k: calls.append(1), None,
                              generation_config=GenerationConfig(max_new_tokens=8, **option))
    assert calls == []


def test_answers_that_leave_the_grammar_are_counted_and_refused_by_coord_eval(tmp_path, monkeypatch, capsys):
    from swift_coord_plugin.swift_ext.decoding import OFF_GRAMMAR_KEY, record_off_grammar, write_record

    results = str(tmp_path / "r.jsonl")
    monkeypatch.setenv("COORD_DECODING_RECORD", record_path(results))
    write_record(DecodingConfig(G.CONSTRAINED).record(True))
    assert resolve(results, None, None)[0]["decoding"] == "constrained"
    record_off_grammar(2)  # e.g. from vLLM's engine process
    write_record(DecodingConfig(G.CONSTRAINED).record(True))  # another shard starting keeps the count
    record_off_grammar(1)
    with open(record_path(results)) as f:
        assert json.load(f)[OFF_GRAMMAR_KEY] == 3
    assert "coord-eval will refuse" in capsys.readouterr().out
    with pytest.raises(DecodingInfoError, match="3 answer\\(s\\) left the answer grammar"):
        resolve(results, None, None)


def test_transformers_processor_ends_and_counts_a_row_handed_a_forbidden_token(coord_tokenizer):
    import torch

    from swift_coord_plugin.swift_ext.decoding import GrammarLogitsProcessor

    end_ids = (151645, 151643)
    g = G.AnswerGrammar(G.GrammarVocab.from_tokenizer(coord_tokenizer, end_ids=end_ids), G.CONSTRAINED)
    v = g.vocab
    proc = GrammarLogitsProcessor(g, 20, False)
    prompt = [[1, 2], [1, 2]]
    proc(torch.tensor(prompt), torch.zeros(2, 152704))
    # row 0 follows the grammar; row 1 gets a coordinate where an object or the end belongs
    out = proc(torch.tensor([p + [t] for p, t in zip(prompt, [v.obj_start, v.coord_start])]), torch.zeros(2, 152704))
    assert proc.off_grammar == 1 and proc.states[1].phase == G.OFF and proc.states[0].phase == G.DESC
    assert set(torch.isfinite(out[1]).nonzero().flatten().tolist()) == set(end_ids)


def test_coord_eval_says_coordexp_is_truncated_to_the_recorded_top_k(tmp_path, capsys):
    from swift_coord_plugin.eval.scoring import EvalSettings, _decoding_settings

    results = str(tmp_path / "r.jsonl")
    info = _decoding_settings(EvalSettings(decode="coordexp", decoding="constrained", infer_backend="vllm"), results)
    assert "truncated to the top k" in info["coordexp_bins"]
    assert "top k recorded bins" in capsys.readouterr().err
    assert "coordexp_bins" not in _decoding_settings(EvalSettings(decode="argmax", decoding="constrained",
                                                                  infer_backend="vllm"), results)
