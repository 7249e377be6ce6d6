"""Checks of the vLLM logits processors that run inside the vLLM environment (.venv-vllm).

Not collected by the main suite (no ``test_`` prefix): ``tests/test_vllm_decoding.py`` runs this file with the
vLLM environment's pytest, passing in ``COORD_TEST_CKPT`` a folder with the plugin's tokenizer and a generation
config (all the processors read from a checkpoint); ``tests/test_vllm_e2e.py`` runs it on a trained checkpoint.
The V1 processor is driven the way vLLM's V1 sampler drives it: ``update_state`` with a ``BatchUpdate``
(requests added, swapped, removed), ``apply`` on a ``[batch, vocab]`` float32 logits tensor, the greedy token
taken as the argmax of the result and appended to the request's output list, and the recorded
log-probabilities computed as vLLM's ``processed_logprobs`` are (log-softmax of the result). The Model Runner V2
processor is loaded by vLLM's V2 loader and driven by a harness of that runner (below).
"""
import functools
import math
import os
import random
from types import SimpleNamespace

import pytest
import torch

from swift_coord_plugin.core import codec
from swift_coord_plugin.core import grammar as G

vllm = pytest.importorskip("vllm")
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from swift_coord_plugin.swift_ext.vllm_decoding import PLACEHOLDER as PLACEHOLDER_ID  # noqa: E402
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
        processed = proc.apply(logits.clone())  # catches each row up with its new tokens, then masks
        coord_slot = [proc.rows[i].state.phase == G.COORD if i in proc.rows else False for i in range(len(at))]
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
    proc.apply(torch.zeros(2, 152704))
    assert proc.rows[0].state.phase == G.DESC and proc.rows[1].state.phase == G.START
    c = []
    proc.update_state(BatchUpdate(2, [0], [(0, None, [1], c)], []))  # request 0 finished, a new one takes row 0
    assert proc.rows[0].state.phase == G.START and proc.outputs[0] is c
    logits = torch.zeros(2, 152704)
    out = proc.apply(logits)
    allowed = set(torch.isfinite(out[0]).nonzero().flatten().tolist())
    assert allowed == {v.obj_start, *v.end_ids}


# -- Model Runner V2 ------------------------------------------------------------------------------------------
# vLLM's V2 runner cannot run on CPUs (it needs Triton's GPU backend), so the harness below does what it does
# to a custom processor, step by step (vllm/v1/worker/gpu/model_runner.py, states.py, sample/sampler.py):
# * a request takes a slot from a free list (``RequestState.add_request``: prompt_len, prefill_len, total_len and
#   all_token_ids written) and the sampler calls ``add_request(slot, sampling_params)``; a finished or preempted
#   request frees its slot with no call to the processor, and a later request reuses it;
# * every step ``apply(logits, ctx)`` gets one row per scheduled request in a new order (``expanded_idx_mapping``
#   row -> slot), including rows the processor does not own (here: a slot it was never given, as in a dummy run);
# * a request in chunked prefill has a row but commits no token; a preempted request comes back in another slot
#   with its partial answer in the prefill (``prefill_len > prompt_len``);
# * after sampling, the token is committed to ``all_token_ids[slot, total_len]`` and ``total_len`` grows;
# * processed log-probabilities are the log-softmax after temperature and min_p (``Sampler.apply_sampling_params``).
# The same steps go through the V1 processor (asynchronous scheduling: a placeholder -1 first, the real id
# before the next ``apply``) and, per request, through the transformers backend's processor; all three must
# choose the same tokens and record the same distributions.

MODEL_VOCAB = 152704  # logit rows of the model (the tokenizer has fewer ids: those are never allowed)
V2_REQUESTS, V2_CONCURRENCY = 200, 8  # requests through the harness, and at most this many at a time


def _v2_setup(mode, monkeypatch, max_slots, max_len):
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as V2Interface
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors
    from vllm.v1.sample.logits_processor import LogitsProcessor as V1Interface
    from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns

    from swift_coord_plugin.swift_ext import vllm_decoding as VD

    monkeypatch.setenv("COORD_DECODING", mode)
    monkeypatch.setenv("COORD_DECODING_MAX_OBJECTS", str(MAX_OBJECTS))
    cfg = SimpleNamespace(model_config=SimpleNamespace(model=CKPT, tokenizer=CKPT), speculative_config=None)
    import numpy as np

    # The fields of vllm.v1.worker.gpu.states.RequestState a processor sees (its UVA buffers need a GPU).
    req_states = SimpleNamespace(
        device=torch.device("cpu"), max_num_reqs=max_slots, vocab_size=MODEL_VOCAB,
        all_token_ids=SimpleNamespace(gpu=torch.zeros(max_slots, max_len, dtype=torch.int32)),
        prompt_len=SimpleNamespace(np=np.zeros(max_slots, dtype=np.int32)),
        prefill_len=SimpleNamespace(np=np.zeros(max_slots, dtype=np.int32)),
        total_len=SimpleNamespace(gpu=torch.zeros(max_slots, dtype=torch.int32)))
    (v2,) = build_custom_logits_processors(cfg, req_states, False, [VD.PROCESSOR_FQCN])  # vLLM's V2 loader
    assert isinstance(v2, V2Interface) and isinstance(v2, VD.GrammarProcessorV2)
    (cls,) = _load_logitsprocs_by_fqcns([VD.PROCESSOR_FQCN])  # vLLM's V1 loader, constructed as V1 does
    v1 = cls(cfg, torch.device("cpu"), False)
    assert isinstance(v1, V1Interface) and isinstance(v1, VD.GrammarProcessorV1)
    return v2, v1, req_states


def _after_sampling_params(logits, temperature, min_p):
    """Model Runner V2's ``apply_temperature`` and ``apply_min_p`` on one row (in place semantics, new tensor)."""
    x = logits.clone()
    if temperature not in (0.0, 1.0):
        x = x / temperature
    if min_p > 0:
        x[x < x.max() + math.log(min_p)] = float("-inf")
    return x


def _exchange(lp, a, b):
    out = lp.clone()
    out[a], out[b] = lp[b], lp[a]
    return out


@pytest.mark.parametrize("mode", [G.CONSTRAINED, G.COORDEXP])
def test_model_runner_v2_matches_v1_and_transformers(mode, monkeypatch):
    """>= 200 requests, >= 8 at a time, through the V2 processor as the V2 runner drives it; each sampled step
    compared with the V1 processor (fed the same tokens, with asynchronous placeholders) and the transformers
    backend's processor (one per request, fed the same history)."""
    from vllm import SamplingParams
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext
    import numpy as np

    from swift_coord_plugin.swift_ext.decoding import GrammarLogitsProcessor

    assert CKPT, "COORD_TEST_CKPT must name a folder with the plugin's tokenizer"
    n_requests, concurrency, max_slots, max_len = V2_REQUESTS, V2_CONCURRENCY, 12, 96
    foreign = max_slots - 1  # a slot the processor is never given (a dummy run's row)
    v2, v1, rs = _v2_setup(mode, monkeypatch, max_slots, max_len)
    g = v2.grammar
    v = g.vocab
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    hf_cls = GrammarLogitsProcessor

    class Req:
        def __init__(self, rid):
            self.rid = rid
            self.prompt = [rng.randrange(1, 150000) for _ in range(rng.randint(2, 6))]
            greedy = mode == G.COORDEXP or rid % 3
            self.params = SamplingParams(max_tokens=rng.choice([12, 25, 40, 64]),
                                         temperature=0.0 if greedy else 0.8, min_p=0.0 if greedy else 0.05)
            self.generated = []
            self.slot = None
            self.chunks = 0  # chunked-prefill steps still to go (no token committed)
            self.hf = hf_cls(g, self.params.max_tokens, True)
            self.v1_index = None
            self.v1_out = []  # vLLM V1's running output list of this request
            self.pending = None  # the real id of the last sampled token (async scheduling: a placeholder first)

    free = list(range(max_slots - 1))
    queue = [Req(i) for i in range(n_requests)]
    live, preempted, finished = [], [], []
    v1_free = list(range(64))
    v1_removed = []
    counts = dict(steps=0, compared=0, greedy=0, sampled=0, chunked=0, preempted=0, resumed=0, foreign=0,
                  coord=0, max_live=0, v1_moves=0)

    def place(req, prefill):
        req.slot = free.pop()  # as RequestState.add_request: the last freed slot first
        rs.prompt_len.np[req.slot] = len(req.prompt)
        rs.prefill_len.np[req.slot] = len(prefill)
        rs.total_len.gpu[req.slot] = len(prefill)
        rs.all_token_ids.gpu[req.slot, :len(prefill)] = torch.tensor(prefill, dtype=torch.int32)
        req.chunks = rng.choice([0, 0, 1, 2])
        assert v2.add_request(req.slot, req.params) is True

    while queue or live or preempted:
        # V1's persistent batch: finished requests leave (their index is reused), new ones are added.
        added = []
        while queue and len(live) < concurrency and free:
            req = queue.pop(0)
            place(req, req.prompt)
            req.v1_index = min(v1_free)
            v1_free.remove(req.v1_index)
            added.append((req.v1_index, req.params, req.prompt, req.v1_out))
            live.append(req)
        if preempted and free and rng.random() < 0.3:  # resumption after preemption, in whatever slot is free
            req = preempted.pop(0)
            place(req, req.prompt + req.generated)
            assert rs.prefill_len.np[req.slot] > rs.prompt_len.np[req.slot] or not req.generated
            counts["resumed"] += 1
            live.append(req)
        moved = []
        v1_live = sorted([r for r in live + preempted], key=lambda r: r.v1_index)
        if len(v1_live) >= 2 and rng.random() < 0.2:  # V1 condenses/reorders: swap two requests' indices
            a, b = rng.sample(v1_live, 2)
            moved.append((a.v1_index, b.v1_index, MoveDirectionality.SWAP))
            a.v1_index, b.v1_index = b.v1_index, a.v1_index
            counts["v1_moves"] += 1
        # Asynchronous scheduling on V1: the step's update sees a placeholder for last step's token ...
        for req in live + preempted:
            if req.pending is not None:
                req.v1_out.append(PLACEHOLDER_ID)
        v1.update_state(BatchUpdate(64, list(v1_removed), added, moved) if (added or moved or v1_removed)
                        else None)
        v1_removed.clear()
        # ... and the real id replaces it before the sampler runs.
        for req in live + preempted:
            if req.pending is not None:
                assert req.v1_out[-1] == PLACEHOLDER_ID
                req.v1_out[-1] = req.pending
                req.pending = None
        if not live:
            continue
        counts["max_live"] = max(counts["max_live"], len(live))
        order = live[:]
        rng.shuffle(order)
        slots = [r.slot for r in order]
        with_foreign = rng.random() < 0.25
        if with_foreign:
            slots.append(foreign)
            counts["foreign"] += 1
        rows = len(slots)
        logits = torch.randn(rows, MODEL_VOCAB, generator=gen) * 4
        logits[:, v.obj_start] += 9.0  # a model that sometimes opens objects
        logits[:, v.end_ids[0]] += 7.0
        raw = logits.clone()
        idx = torch.tensor(slots, dtype=torch.int64)
        ctx = LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.array(slots),
                            expanded_local_pos=torch.zeros(rows, dtype=torch.int64),
                            input_ids=torch.zeros(rows, dtype=torch.int64),
                            pos=rs.total_len.gpu[idx].long() - 1,
                            seq_lens_upper_bound_np=rs.total_len.gpu[idx].numpy().copy())
        out2 = v2.apply(logits, ctx)
        if with_foreign:
            assert torch.equal(out2[-1], raw[-1]), "a row the processor does not own must be left as it is"
        # The V1 processor on its own batch layout: the same logits rows at the requests' V1 indices.
        v1_rows = max(r.v1_index for r in live + preempted) + 1
        v1_logits = torch.zeros(v1_rows, MODEL_VOCAB)
        for i, req in enumerate(order):
            v1_logits[req.v1_index] = raw[i]
        out1 = v1.apply(v1_logits)
        counts["steps"] += 1
        for i, req in enumerate(order):
            t, mp = req.params.temperature, req.params.min_p
            processed = _after_sampling_params(out2[i], t, mp)
            recorded = torch.log_softmax(processed.double(), -1)  # V2's processed_logprobs
            if t == 0:
                tok = int(processed.argmax())
            else:
                tok = int(torch.multinomial(torch.softmax(processed.double(), -1), 1, generator=gen))
            if req.chunks:  # chunked prefill: the row is sampled, the token dropped, nothing committed
                req.chunks -= 1
                counts["chunked"] += 1
                continue
            # -- references: V1 (same processed step) and transformers (same history) --
            torch.testing.assert_close(out1[req.v1_index], out2[i], atol=0, rtol=0)
            rec1 = torch.log_softmax(_after_sampling_params(out1[req.v1_index], t, mp).double(), -1)
            torch.testing.assert_close(rec1, recorded, atol=1e-6, rtol=0)
            ids = torch.tensor([req.prompt + req.generated])
            hf_out = req.hf(ids, raw[i:i + 1].clone())[0]
            hf_rec = torch.log_softmax(req.hf.recorded.pop()[0].double(), -1)  # what ms-swift records
            at_coord = g.is_coord_slot(v2.rows[req.slot].state)
            counts["coord"] += at_coord
            if t == 0:
                assert tok == int(hf_out.argmax()), (req.rid, len(req.generated), tok, int(hf_out.argmax()))
                counts["greedy"] += 1
                if mode == G.COORDEXP and at_coord:
                    mode_bin = int(hf_rec.argmax())
                    torch.testing.assert_close(recorded, _exchange(hf_rec, tok, mode_bin), atol=1e-5, rtol=0)
                else:
                    torch.testing.assert_close(recorded, hf_rec, atol=1e-5, rtol=0)
            else:  # sampling (constrained only): the same distribution before temperature, the token allowed
                counts["sampled"] += 1
                torch.testing.assert_close(torch.log_softmax(out2[i].double(), -1), hf_rec, atol=1e-5, rtol=0)
                assert torch.isfinite(hf_rec[tok])
            counts["compared"] += 1
            # -- commit, as the runner's post_update does --
            n = int(rs.total_len.gpu[req.slot])
            rs.all_token_ids.gpu[req.slot, n] = tok
            rs.total_len.gpu[req.slot] = n + 1
            req.generated.append(tok)
            req.pending = tok
            if tok in v.end_ids or len(req.generated) >= req.params.max_tokens:
                live.remove(req)
                free.append(req.slot)  # no hook: the next request in this slot must start afresh
                finished.append(req)
                v1_removed.append(req.v1_index)
                v1_free.append(req.v1_index)
            elif rng.random() < 0.03:  # preemption: the slot is freed, the request comes back later
                live.remove(req)
                free.append(req.slot)
                preempted.append(req)
                counts["preempted"] += 1

    print(f"[v2 harness] {mode}: {counts}", flush=True)
    assert len(finished) == n_requests
    assert counts["max_live"] >= concurrency and counts["compared"] > 4 * n_requests, counts
    assert counts["chunked"] and counts["preempted"] and counts["resumed"] and counts["foreign"], counts
    assert counts["coord"] > n_requests // 2 and counts["v1_moves"], counts
    if mode == G.CONSTRAINED:
        assert counts["sampled"] > n_requests // 2, counts
    assert v2.off_grammar == v1.off_grammar == 0
    n_objects = 0
    for req in finished:
        parsed = codec.parse_pieces(_pieces(v2, req.generated))
        assert set(parsed.counts) <= {"repaired_reversed_coordinates", "dropped_duplicate"}, (req.rid, parsed.counts)
        n_objects += len(parsed.objects)
    assert n_objects >= n_requests // 4, n_objects  # random logits open objects
    print(f"[v2 harness] {mode}: all checks passed, {n_objects} objects", flush=True)


def _context(slots):
    import numpy as np
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext

    idx = torch.tensor(slots, dtype=torch.int64)
    n = len(slots)
    return LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.array(slots),
                         expanded_local_pos=torch.zeros(n, dtype=torch.int64), input_ids=torch.zeros(n, dtype=torch.int64),
                         pos=torch.zeros(n, dtype=torch.int64), seq_lens_upper_bound_np=np.zeros(n, dtype=np.int32))


def _allowed(row):
    return set(torch.isfinite(row).nonzero().flatten().tolist())


def test_asynchronous_placeholders_do_not_advance_the_grammar(monkeypatch):
    """V1 runner with asynchronous scheduling: the step's ``update_state`` sees a placeholder (-1) for the token
    sampled at the previous step; vLLM replaces it with the real id before the sampler (``apply``) runs."""
    proc = _processor(G.CONSTRAINED, monkeypatch)
    v = proc.grammar.vocab
    out = []
    proc.update_state(BatchUpdate(1, [], [(0, SimpleNamespace(max_tokens=None), [1], out)], []))
    assert _allowed(proc.apply(torch.zeros(1, MODEL_VOCAB))[0]) == {v.obj_start, *v.end_ids}
    out.append(PLACEHOLDER_ID)  # the scheduler's placeholder for the token sampled (<obj_start>)
    proc.update_state(None)
    assert proc.rows[0].seen == 0 and proc.rows[0].state.phase == G.START
    out[-1] = v.obj_start  # the real id arrives
    allowed = _allowed(proc.apply(torch.zeros(1, MODEL_VOCAB))[0])
    assert proc.rows[0].seen == 1 and proc.rows[0].state.phase == G.DESC
    assert v.obj_start not in allowed and set(v.desc_ids) <= allowed
    out.append(PLACEHOLDER_ID)  # a placeholder still there when the sampler runs: refused, never guessed
    with pytest.raises(RuntimeError, match="placeholder"):
        proc.apply(torch.zeros(1, MODEL_VOCAB))
    assert proc.rows[0].seen == 1 and proc.off_grammar == 0


def test_validate_params_refuses_coordexp_with_a_temperature_on_both_runners(monkeypatch):
    from functools import partial

    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.sample.logits_processor import validate_logits_processors_parameters
    from vllm.v1.worker.gpu.sample.logits_processor import build_custom_logits_processors_params_validator

    from swift_coord_plugin.swift_ext.vllm_decoding import PROCESSOR_FQCN

    checks = (build_custom_logits_processors_params_validator([PROCESSOR_FQCN]),
              partial(validate_logits_processors_parameters, [PROCESSOR_FQCN]))
    for mode in (G.CONSTRAINED, G.COORDEXP):
        monkeypatch.setenv("COORD_DECODING", mode)
        for check in checks:  # vLLM's admission check of each runner
            check(SamplingParams(temperature=0.0, max_tokens=8))
            if mode == G.COORDEXP:
                with pytest.raises(VLLMValidationError, match="--temperature 0.7"):
                    check(SamplingParams(temperature=0.7, max_tokens=8))
            else:
                check(SamplingParams(temperature=0.7, max_tokens=8))


def test_v2_request_handed_a_forbidden_token_is_ended_and_counted(tmp_path, monkeypatch):
    """Something other than the grammar committed a token it forbids (e.g. V2's thinking-budget forcing): the
    answer may only end from there, and the run's record counts it (coord-eval refuses the record)."""
    import json

    from vllm import SamplingParams

    record = tmp_path / "r.jsonl.decoding.json"
    monkeypatch.setenv("COORD_DECODING_RECORD", str(record))
    v2, _v1, rs = _v2_setup(G.CONSTRAINED, monkeypatch, 4, 32)
    v = v2.grammar.vocab
    for slot in (0, 2):
        rs.prompt_len.np[slot] = rs.prefill_len.np[slot] = 2
        rs.total_len.gpu[slot] = 2
        rs.all_token_ids.gpu[slot, :2] = torch.tensor([1, 2], dtype=torch.int32)
        v2.add_request(slot, SamplingParams(max_tokens=20))
    v2.apply(torch.zeros(2, MODEL_VOCAB), _context([2, 0]))
    rs.all_token_ids.gpu[0, 2], rs.all_token_ids.gpu[2, 2] = v.coord_start, v.obj_start  # slot 0: forbidden
    rs.total_len.gpu[0] = rs.total_len.gpu[2] = 3
    out = v2.apply(torch.zeros(2, MODEL_VOCAB), _context([2, 0]))
    assert _allowed(out[1]) == set(v.end_ids) and v2.rows[0].state.phase == G.OFF
    assert v2.rows[2].state.phase == G.DESC and v.obj_start not in _allowed(out[0])
    assert v2.off_grammar == 1 and json.loads(record.read_text())["off_grammar_rows"] == 1
    rs.all_token_ids.gpu[0, 3] = v.obj_start  # still off: not counted twice
    rs.total_len.gpu[0] = 4
    v2.apply(torch.zeros(1, MODEL_VOCAB), _context([0]))
    assert v2.off_grammar == 1 and json.loads(record.read_text())["off_grammar_rows"] == 1
