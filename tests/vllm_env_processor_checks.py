"""Checks of the vLLM logits processor that run inside the vLLM environment (.venv-vllm).

Not collected by the main suite (no ``test_`` prefix): ``tests/test_vllm_e2e.py`` runs this file with the
vLLM environment's pytest, passing a checkpoint trained by the plugin in ``COORD_TEST_CKPT`` (its tokenizer
holds the coordinate tokens). The processor is driven the way vLLM's sampler drives it: ``update_state``
with a ``BatchUpdate`` (requests added, swapped, removed), ``apply`` on a ``[batch, vocab]`` float32
logits tensor, the greedy token taken as the argmax of the result and appended to the request's output list,
and the recorded log-probabilities computed as vLLM's ``processed_logprobs`` are (log-softmax of the result).
"""
import functools
import os
from types import SimpleNamespace

import pytest
import torch

from swift_coord_plugin.core import codec
from swift_coord_plugin.core import grammar as G

vllm = pytest.importorskip("vllm")
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from swift_coord_plugin.swift_ext.vllm_decoding import CoordGrammarLogitsProcessor  # noqa: E402

CKPT = os.environ.get("COORD_TEST_CKPT", "")
MAX_OBJECTS = 3
ROWS = 6
LIMIT = 50  # tokens; fewer than 3 objects of up to 40 tokens


def _processor(mode, monkeypatch):
    monkeypatch.setenv("COORD_DECODING", mode)
    monkeypatch.setenv("COORD_DECODING_MAX_OBJECTS", str(MAX_OBJECTS))
    cfg = SimpleNamespace(model_config=SimpleNamespace(model=CKPT, tokenizer=CKPT))
    return CoordGrammarLogitsProcessor(cfg, torch.device("cpu"), False)


def _run(proc, vocab_rows, steps, seed):
    """Greedy decoding of random logits through ``proc`` with batch moves; returns (outputs, records).

    ``records``: for each coordinate slot, (raw logits row, processed row) to check the distribution.
    """
    gen = torch.Generator().manual_seed(seed)
    v = proc.grammar.vocab
    outputs = [[] for _ in range(ROWS)]
    finished = [False] * ROWS
    at = list(range(ROWS))  # batch index -> request
    # Half of the requests carry a length limit: the grammar must close their boxes before it.
    limits = [LIMIT if i % 2 else None for i in range(ROWS)]
    proc.update_state(BatchUpdate(ROWS, [], [(i, SimpleNamespace(max_tokens=limits[i]), [1, 2, 3], outputs[i])
                                             for i in range(ROWS)], []))
    records = []
    for step in range(steps):
        if step == 7:  # vLLM condenses and reorders its persistent batch: swap two rows, move one
            at[0], at[3] = at[3], at[0]
            proc.update_state(BatchUpdate(ROWS, [], [], [(0, 3, MoveDirectionality.SWAP)]))
        logits = torch.randn(len(at), vocab_rows, generator=gen) * 4
        # Random-ish model: sometimes prefers structure tokens, so that objects get opened and closed.
        logits[:, v.obj_start] += 8.0
        coord_slot = [proc.rows[i].state.phase == G.COORD if i in proc.rows else False for i in range(len(at))]
        processed = proc.apply(logits.clone())
        tokens = processed.argmax(dim=-1)
        for i, req in enumerate(at):
            if finished[req]:
                continue
            if coord_slot[i]:
                records.append((logits[i], processed[i], int(tokens[i])))
            outputs[req].append(int(tokens[i]))
            if int(tokens[i]) in v.end_ids or len(outputs[req]) == limits[req]:
                finished[req] = True
        proc.update_state(None)
        if all(finished):
            break
    return outputs, finished, records


@functools.lru_cache(maxsize=None)
def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(CKPT)


def _pieces(proc, ids):
    tok = _tokenizer()
    return [tok.decode([i]) for i in ids if i not in proc.grammar.vocab.end_ids]


@pytest.mark.parametrize("mode", [G.CONSTRAINED, G.COORDEXP])
def test_every_answer_parses_completely(mode, monkeypatch):
    assert CKPT, "COORD_TEST_CKPT must name a checkpoint trained by the plugin"
    proc = _processor(mode, monkeypatch)
    vocab_rows = 152704
    outputs, finished, records = _run(proc, vocab_rows, steps=400, seed=1)
    assert all(finished), "the object cap and the description cap must end every answer"
    assert any(len(outputs[i]) == LIMIT for i in range(1, ROWS, 2)), "some answer should meet its length limit"
    n_objects = 0
    for ids in outputs:
        parsed = codec.parse_pieces(_pieces(proc, ids))
        # Nothing dropped or ignored; the only repair allowed is a reversed pair (ordered_boxes is off).
        assert set(parsed.counts) <= {"repaired_reversed_coordinates"}, parsed.counts
        n_objects += len(parsed.objects)
        assert len(parsed.objects) <= MAX_OBJECTS
    assert n_objects >= ROWS, "random logits should open some objects"
    assert records
    v = proc.grammar.vocab
    for raw, processed, token in records:
        restricted = torch.log_softmax(raw[v.coord_start:v.coord_end].double(), -1)
        recorded = torch.log_softmax(processed.double(), -1)
        # Nothing outside the coordinate tokens can be emitted or recorded.
        assert torch.isinf(recorded[:v.coord_start]).all() and torch.isinf(recorded[v.coord_end:]).all()
        rec = recorded[v.coord_start:v.coord_end]
        k = token - v.coord_start
        if mode == G.CONSTRAINED:
            assert k == int(restricted.argmax())
            torch.testing.assert_close(rec, restricted, atol=1e-5, rtol=0)
        else:
            # CoordExp decision computed here independently: round half up of the expectation in float64.
            expected = float((restricted.exp() * torch.arange(codec.NUM_BINS, dtype=torch.float64)).sum())
            assert k == int(torch.floor(torch.tensor(expected + 0.5))), (k, expected)
            mode_bin = int(restricted.argmax())
            swapped = restricted.clone()
            swapped[k], swapped[mode_bin] = restricted[mode_bin], restricted[k]
            torch.testing.assert_close(rec, swapped, atol=1e-5, rtol=0)


def test_removed_and_added_requests(monkeypatch):
    proc = _processor(G.CONSTRAINED, monkeypatch)
    v = proc.grammar.vocab
    a, b = [], []
    proc.update_state(BatchUpdate(2, [], [(0, None, [1], a), (1, None, [1], b)], []))
    a.append(v.obj_start)
    proc.update_state(None)
    assert proc.rows[0].state.phase == G.DESC and proc.rows[1].state.phase == G.START
    c = []
    proc.update_state(BatchUpdate(2, [0], [(0, None, [1], c)], []))  # request 0 finished, a new one takes row 0
    assert proc.rows[0].state.phase == G.START and proc.rows[0].output_ids is c
    logits = torch.zeros(2, 152704)
    out = proc.apply(logits)
    allowed = set(torch.isfinite(out[0]).nonzero().flatten().tolist())
    assert allowed == {v.obj_start, *v.end_ids}
