"""The vLLM side of decoding that needs no vLLM: engine arguments per mode, the run's record, and the
CoordExp bin exchange (the processor itself runs in the vLLM environment: test_vllm_e2e.py)."""
import json

import pytest
import torch

from swift_coord_plugin.core import grammar as G
from swift_coord_plugin.swift_ext import vllm_decoding as VD
from swift_coord_plugin.swift_ext.decoding import DecodingConfig


@pytest.mark.parametrize("mode", G.MODES)
def test_engine_kwargs_and_record(mode, tmp_path, monkeypatch):
    record = tmp_path / "r.json"
    monkeypatch.setenv("COORD_DECODING_RECORD", str(record))
    kwargs = VD.engine_kwargs(DecodingConfig(mode=mode))
    if mode == G.FREE:
        assert kwargs == {}  # vLLM as it is: raw full-vocabulary log-probabilities
    else:
        assert kwargs == {"logits_processors": [VD.PROCESSOR_FQCN], "logprobs_mode": "processed_logprobs"}
        module, cls = VD.PROCESSOR_FQCN.split(":")
        assert module == VD.__name__ and cls == "CoordGrammarLogitsProcessor"
    rec = json.loads(record.read_text())
    assert rec["decoding"] == mode and rec["infer_backend"] == "vllm"
    assert rec["logprobs"] == VD.logprobs_distribution(mode)


def test_record_is_read_by_coord_eval(tmp_path, monkeypatch):
    from swift_coord_plugin.eval.decoding_info import record_path, resolve

    results = tmp_path / "infer.jsonl"
    monkeypatch.setenv("COORD_DECODING_RECORD", record_path(str(results)))
    VD.engine_kwargs(DecodingConfig(mode=G.COORDEXP))
    settings, warning = resolve(str(results), None, None)
    assert warning is None
    assert settings["decoding"] == "coordexp" and settings["infer_backend"] == "vllm"
    assert settings["logprobs_distribution"] == VD.LOGPROBS_COORDEXP_SWAPPED


def test_swap_in_coordexp_bins_is_a_permutation_of_the_restricted_distribution():
    gen = torch.Generator().manual_seed(0)
    start, bins, vocab = 5, 50, 60
    logits = torch.full((8, vocab), float("-inf"))
    logits[:, start:start + bins] = torch.randn(8, bins, generator=gen) * 3
    logits[0, start + 7] = logits[0, start + 9] = 100.0  # a tie at the mode
    before = torch.log_softmax(logits.double(), -1)
    chosen = start + torch.randint(0, bins, (8,), generator=gen)
    chosen[1] = start + int(logits[1].argmax()) - start  # the chosen bin is already the mode
    out = logits.clone()
    VD.swap_in_coordexp_bins(out, torch.arange(8), chosen, start, bins)
    after = torch.log_softmax(out.double(), -1)
    assert torch.equal(out.argmax(-1), chosen)  # vLLM's greedy sampler emits the CoordExp bin
    for r in range(8):
        k, m = int(chosen[r]), int(logits[r].argmax())
        want = before[r].clone()
        want[k], want[m] = before[r, m], before[r, k]
        torch.testing.assert_close(after[r], want, atol=1e-5, rtol=0)
