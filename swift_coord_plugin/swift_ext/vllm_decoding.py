"""The answer grammar on vLLM: logits processors for both of vLLM's model runners around one grammar step
(``grammar_step``, i.e. ``core.grammar.apply_grammar``).

Which runner: vLLM decides when it builds the engine (``VllmConfig.use_v2_model_runner``; Model Runner V2 where
Triton works, i.e. on GPUs), and that runner's loader checks the named class against its interface and builds
it. ``CoordGrammarLogitsProcessor`` subclasses both interfaces and, when built, returns ``GrammarProcessorV1``
or ``GrammarProcessorV2`` according to the arguments the building runner passes. docs/evaluation.md says
what each reads and what is refused (beam search, ``coordexp`` with a temperature, speculative decoding).

How it reaches the engine: ms-swift's ``VllmEngine`` merges ``template.prepare_engine_kwargs()`` into
vLLM's ``EngineArgs``. The plugin's template returns :func:`engine_kwargs`, which under ``constrained``
or ``coordexp`` names this processor (``logits_processors``, by its ``module:Class`` name, so vLLM's
engine process imports it itself) and asks for ``logprobs_mode="processed_logprobs"``: the
log-probabilities vLLM then records are those of the logits after the processor, i.e. of the softmax
over what the grammar allows (at a coordinate slot: the softmax restricted to the coordinate tokens).
Under ``free`` nothing is added (vLLM's default, raw full-vocabulary log-probabilities).

vLLM applies a custom processor to every request of the engine, so the mode is per engine (per
``swift infer`` run), read from the environment with the transformers backend's ``DecodingConfig``
(``COORD_DECODING`` and its options, see ``decoding.py``; ``--model_kwargs`` puts its keys there, and
vLLM's engine processes inherit it). The run's decoding record (``COORD_DECODING_RECORD``) says
``infer_backend: vllm`` and which distribution the log-probabilities hold.

Per-request state: on the V1 runner through ``update_state`` (each request added to the persistent batch
brings a reference to its running list of output token ids; ``apply`` advances the row's grammar state over the
real ids appended since the last step, never over a placeholder of asynchronous scheduling); on Model Runner
V2 per request slot (``add_request`` resets it; ``apply`` reads the slot's committed history). A request handed
a token the grammar forbids is ended and counted in the record (``decoding.record_off_grammar``).

CoordExp on vLLM: vLLM's greedy sampler emits the argmax of the very logits whose log-softmax it
records, so a processor cannot emit ``round(E[k])`` and record the restricted distribution unchanged.
At a coordinate slot under ``coordexp`` the processor therefore writes the restricted logits with two
bins exchanged: the CoordExp bin takes the restricted mode's logit (raised by one float step, so that
it is the unique argmax) and the mode takes the CoordExp bin's. The recorded distribution is a
permutation of the restricted one (same normaliser, every other bin exact); the emitted token's
recorded probability is the mode's. When the CoordExp bin is the mode nothing moves (up to the step).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import torch
from transformers import AutoTokenizer, GenerationConfig

from ..core import grammar as G
from .decoding import (LOGPROBS_GRAMMAR, LOGPROBS_RAW, STATS, DecodingConfig, DecodingConfigError, build_grammar,
                       check_generation_options, record_off_grammar, write_record)

PROCESSOR_FQCN = "swift_coord_plugin.swift_ext.vllm_decoding:CoordGrammarLogitsProcessor"
BACKEND = "vllm"
# Which distribution the ``logprobs`` of the result rows hold on vLLM (the record and the docs say it).
LOGPROBS_COORDEXP_SWAPPED = (LOGPROBS_GRAMMAR + "; coordexp: the emitted bin and the restricted mode exchanged "
                             "(vLLM emits the argmax of the logits it records)")


def logprobs_distribution(mode: str) -> str:
    """What vLLM's recorded log-probabilities are under ``mode`` (greedy decoding, temperature 0)."""
    return {G.FREE: LOGPROBS_RAW, G.CONSTRAINED: LOGPROBS_GRAMMAR, G.COORDEXP: LOGPROBS_COORDEXP_SWAPPED}[mode]


def decoding_record(config: DecodingConfig) -> dict:
    """The record of a vLLM run (``COORD_DECODING_RECORD``; ``coord-eval`` reads it)."""
    rec = config.record(True)
    rec.update(infer_backend=BACKEND, logprobs=logprobs_distribution(config.mode))
    return rec


def engine_kwargs(config: Optional[DecodingConfig] = None) -> Dict[str, object]:
    """vLLM ``EngineArgs`` that install the grammar of ``config`` (default: ``DecodingConfig.from_env()``).

    Also prints the run's decoding record and writes it to ``COORD_DECODING_RECORD`` when that names a file.
    """
    config = config or DecodingConfig.from_env()
    rec = decoding_record(config)
    write_record(rec)
    if config.mode == G.FREE:
        return {}
    return {"logits_processors": [PROCESSOR_FQCN], "logprobs_mode": "processed_logprobs"}


def _end_ids(model_dir: str, tokenizer) -> List[int]:
    """The ids that end an answer: the generation config's eos ids, else the tokenizer's eos."""
    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except (OSError, ValueError):
        eos = None
    if eos is None:
        eos = tokenizer.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def grammar_for_model(model_dir: str, tokenizer_dir: Optional[str] = None,
                      config: Optional[DecodingConfig] = None) -> G.AnswerGrammar:
    """``AnswerGrammar`` of the checkpoint at ``model_dir`` under ``config`` (default: from the environment)."""
    config = config or DecodingConfig.from_env()
    key = (model_dir, tokenizer_dir, config)
    if key not in _GRAMMARS:  # one per process: a processor of each runner interface may be built (tests)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
        _GRAMMARS.clear()
        _GRAMMARS[key] = build_grammar(config, tokenizer, _end_ids(model_dir, tokenizer))
    return _GRAMMARS[key]


_GRAMMARS: Dict[tuple, G.AnswerGrammar] = {}


def swap_in_coordexp_bins(logits: torch.Tensor, rows: torch.Tensor, chosen: torch.Tensor, coord_start: int,
                          num_bins: int) -> None:
    """In place: at ``rows`` of ``logits`` ``[B, V]`` (coordinate slots, already masked to the coordinate
    tokens), exchange the logit of the CoordExp bin ``chosen`` (token ids, ``LongTensor[len(rows)]``) with
    that of the restricted mode, and raise it by one float step so that it is the unique argmax.

    The log-softmax of the result is the restricted one with those two bins exchanged (module docstring).
    """
    if rows.numel() == 0:
        return
    block = logits[rows, coord_start:coord_start + num_bins]
    local = chosen - coord_start
    top, mode = block.max(dim=-1)
    ar = torch.arange(rows.numel(), device=logits.device)
    at_chosen = block[ar, local].clone()
    block[ar, mode] = at_chosen
    block[ar, local] = torch.nextafter(top, torch.full_like(top, float("inf")))
    logits[rows, coord_start:coord_start + num_bins] = block


def grammar_step(grammar: G.AnswerGrammar, logits: torch.Tensor, states: List["G.GrammarState"],
                 remaining: List[Optional[int]]) -> torch.Tensor:
    """The grammar's step on vLLM, for both runners: ``logits`` ``[rows, V]`` float32 (masked in place) and one
    state and budget per row (``None`` state: a row the processor does not own, left as it is) -> the logits
    vLLM samples from and records (``processed_logprobs``: their log-softmax, after temperature and min_p).

    Under ``coordexp`` a coordinate slot gets the restricted logits with the CoordExp bin and the restricted
    mode exchanged (``swap_in_coordexp_bins``, module docstring)."""
    done = G.GrammarState(G.DONE)
    states = [done if s is None else s for s in states]
    step = G.apply_grammar(grammar, logits, states, with_logprobs=False, remaining=remaining, inplace=True)
    if grammar.mode != G.COORDEXP:
        return step.logits
    # coordexp: step.logits keeps only the chosen token; record the restricted distribution instead.
    v = grammar.vocab
    coord_rows = [i for i, s in enumerate(states) if grammar.is_coord_slot(s)]
    out = step.logits
    if coord_rows:
        rows = torch.tensor(coord_rows, dtype=torch.long, device=out.device)
        block = torch.full_like(out[rows], float("-inf"))
        block[:, v.coord_start:v.coord_end] = step.coord_logprobs[rows].to(out.dtype)
        swap_in_coordexp_bins(block, torch.arange(rows.numel(), device=out.device), step.chosen[rows],
                              v.coord_start, v.num_bins)
        out[rows] = block
    return out


PLACEHOLDER = -1  # vLLM's token id for a sampled token not yet copied back (asynchronous scheduling)


class _Row:
    """One request's grammar state: ``state`` after the first ``seen`` generated tokens; ``max_tokens``: the
    request's length limit (the grammar closes boxes before it)."""

    __slots__ = ("state", "seen", "max_tokens")

    def __init__(self, grammar: G.AnswerGrammar, max_tokens: Optional[int]):
        self.state = grammar.initial_state()
        self.seen = 0
        self.max_tokens = max_tokens

    def catch_up(self, grammar: G.AnswerGrammar, generated: List[int]) -> int:
        """Advance over ``generated`` (all the request's generated ids so far) beyond ``seen``; returns 1 when the
        request left the grammar here, else 0.

        Only real ids advance: the history is read up to the first placeholder (-1); the real ids replace it
        in vLLM's list before the next step and are read then. A history shorter than ``seen`` (vLLM discarded
        tokens) is replayed from the start."""
        n = len(generated)
        try:
            n = generated.index(PLACEHOLDER)
        except ValueError:
            pass
        if n < self.seen:
            self.state, self.seen = grammar.initial_state(), 0
        if n == self.seen:
            return 0
        self.state, why = grammar.advance_or_leave(self.state, generated[self.seen:n])
        self.seen = n
        if why is not None:
            print(f"[swift-coord] vLLM: a request left the answer grammar ({why}); its answer is ended there",
                  flush=True)
            return 1
        return 0

    def remaining(self, generated: int) -> Optional[int]:
        return None if self.max_tokens is None else self.max_tokens - generated


def _grammar_from_config(vllm_config) -> G.AnswerGrammar:
    model_config = vllm_config.model_config
    if getattr(vllm_config, "speculative_config", None):
        raise ValueError("the answer grammar's logits processor does not support speculative decoding "
                         "(remove --speculative_config / speculative decoding)")
    return grammar_for_model(model_config.model, model_config.tokenizer)


def validate_sampling_params(sampling_params) -> None:
    """vLLM's per-request check (both runners' ``validate_params``): ``ValueError`` naming the option the
    grammar cannot serve (``decoding.check_generation_options``: beam search, ``coordexp`` with a temperature)."""
    try:
        check_generation_options(DecodingConfig.from_env(), num_beams=1,
                                 temperature=getattr(sampling_params, "temperature", 0) or 0)
    except DecodingConfigError as e:
        raise ValueError(str(e)) from None


try:  # the classes exist only where vLLM is installed (the .venv-vllm environment)
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
except ImportError:  # pragma: no cover - main environment
    LogitsProcessor = None
try:  # Model Runner V2's interface (vLLM >= 0.32)
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as LogitsProcessorV2
except ImportError:  # pragma: no cover - older vLLM or main environment
    LogitsProcessorV2 = None


if LogitsProcessor is not None:

    class GrammarProcessorV1(LogitsProcessor):
        """The grammar on vLLM's V1 model runner (``vllm.v1.sample.logits_processor``): per-request state
        comes through ``update_state`` (rows added, moved, removed by batch index); each request brings a
        reference to its running list of generated ids, read in ``apply`` (after vLLM has replaced the
        placeholders of asynchronous scheduling)."""

        runner = "v1"

        def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
            self.grammar = _grammar_from_config(vllm_config)
            self.rows: Dict[int, _Row] = {}
            self.outputs: Dict[int, List[int]] = {}
            self.off_grammar = 0
            print(f"[swift-coord] vLLM logits processor (V1 model runner): answer grammar, mode "
                  f"{self.grammar.mode}", flush=True)

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            validate_sampling_params(sampling_params)

        def is_argmax_invariant(self) -> bool:
            return False  # it decides what greedy decoding emits

        def update_state(self, batch_update: Optional["BatchUpdate"]) -> None:
            t0 = time.perf_counter()
            if batch_update is not None:
                for index in batch_update.removed:
                    self.rows.pop(index, None)
                    self.outputs.pop(index, None)
                for index, params, _prompt_ids, output_ids in batch_update.added:
                    self.rows[index] = _Row(self.grammar, getattr(params, "max_tokens", None))
                    self.outputs[index] = output_ids
                for a, b, direction in batch_update.moved:
                    for table in (self.rows, self.outputs):
                        va, vb = table.pop(a, None), table.pop(b, None)
                        if va is not None:
                            table[b] = va
                        if direction == MoveDirectionality.SWAP and vb is not None:
                            table[a] = vb
            STATS["seconds"] += time.perf_counter() - t0  # the grammar's time (bench/bench_decode.py)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            t0 = time.perf_counter()
            states, remaining, left = [], [], 0
            for i in range(logits.shape[0]):
                row = self.rows.get(i)
                if row is None:
                    states.append(None)
                    remaining.append(None)
                    continue
                out = self.outputs[i]
                left += row.catch_up(self.grammar, out)
                if row.seen != len(out):
                    raise RuntimeError(f"row {i}: generated ids still hold a placeholder at sampling time "
                                       f"({out[-4:]}); the grammar cannot mask this step")
                states.append(row.state)
                remaining.append(row.remaining(len(out)))
            if left:
                self.off_grammar += left
                record_off_grammar(left)
            # In place, like vLLM's own processors: this step's logits are the engine's to overwrite.
            out = grammar_step(self.grammar, logits, states, remaining)
            STATS["steps"] += 1
            STATS["seconds"] += time.perf_counter() - t0
            return out


if LogitsProcessorV2 is not None:

    class GrammarProcessorV2(LogitsProcessorV2):
        """The grammar on vLLM's Model Runner V2 (``vllm.v1.worker.gpu.sample.logits_processor``).

        State per request slot (``add_request`` resets it all: slots are reused and there is no removal
        hook). Each ``apply`` maps its rows to slots through ``ctx.expanded_idx_mapping`` (rows of slots never
        added here, e.g. a dummy run's, are left as they are), reads each slot's committed history
        ``all_token_ids[slot, prompt_len:total_len]`` (only real sampled ids are committed there; after a
        preemption the request is added again with ``prefill_len > prompt_len`` and its partial answer is
        replayed), and applies the same grammar step as on the V1 runner. A chunked-prefill step commits no
        token, so the state does not move. Cost: two small device-to-host reads per step (the slots' lengths and
        their new ids)."""

        runner = "v2"

        def __init__(self, vllm_config, req_states: "LogitsProcRequestState"):
            self.grammar = _grammar_from_config(vllm_config)
            self.req_states = req_states
            self.rows: Dict[int, _Row] = {}
            self.off_grammar = 0
            print(f"[swift-coord] vLLM logits processor (Model Runner V2): answer grammar, mode "
                  f"{self.grammar.mode}", flush=True)

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            validate_sampling_params(sampling_params)

        def add_request(self, req_idx: int, sampling_params) -> bool:
            self.rows[req_idx] = _Row(self.grammar, getattr(sampling_params, "max_tokens", None))
            return True

        def _histories(self, slots: List[int]) -> Tuple[Dict[int, int], Dict[int, List[int]]]:
            """For ``slots``: how many ids each request has generated, and those beyond what its row has seen
            (two device reads)."""
            rs = self.req_states
            dev = rs.total_len.gpu.device
            idx = torch.tensor(slots, dtype=torch.long, device=dev)
            total = rs.total_len.gpu[idx].tolist()
            prompt = [int(rs.prompt_len.np[s]) for s in slots]
            generated = {s: t - p for s, t, p in zip(slots, total, prompt)}
            want_s, want_p, owner = [], [], []
            for s, p in zip(slots, prompt):
                row = self.rows[s]
                if generated[s] < row.seen:  # cannot happen in vLLM 0.32: replay from the start
                    row.state, row.seen = self.grammar.initial_state(), 0
                for k in range(row.seen, generated[s]):
                    want_s.append(s)
                    want_p.append(p + k)
                    owner.append(s)
            new: Dict[int, List[int]] = {s: [] for s in slots}
            if want_s:
                ids = rs.all_token_ids.gpu[torch.tensor(want_s, dtype=torch.long, device=dev),
                                           torch.tensor(want_p, dtype=torch.long, device=dev)].tolist()
                for s, t in zip(owner, ids):
                    new[s].append(int(t))
            return generated, new

        def apply(self, logits: torch.Tensor, ctx: "LogitsContext") -> torch.Tensor:
            t0 = time.perf_counter()
            row_slots = ctx.expanded_idx_mapping.tolist()
            if len(row_slots) != logits.shape[0]:
                raise RuntimeError(f"{logits.shape[0]} logits rows for {len(row_slots)} slots")
            mine = sorted({s for s in row_slots if s in self.rows})
            if not mine:
                return logits
            generated, new = self._histories(mine)
            left = 0
            for s in mine:
                row = self.rows[s]
                if new[s]:
                    row.state, why = self.grammar.advance_or_leave(row.state, new[s])
                    row.seen += len(new[s])
                    if why is not None:
                        left += 1
                        print(f"[swift-coord] vLLM: a request left the answer grammar ({why}); its answer is "
                              "ended there", flush=True)
            if left:
                self.off_grammar += left
                record_off_grammar(left)
            states = [self.rows[s].state if s in self.rows else None for s in row_slots]
            remaining = [self.rows[s].remaining(generated[s]) if s in self.rows else None for s in row_slots]
            out = grammar_step(self.grammar, logits, states, remaining)
            STATS["steps"] += 1
            STATS["seconds"] += time.perf_counter() - t0
            return out


def _select_processor(cls, vllm_config, *args, **kwargs):
    """The processor for the runner that constructs it: Model Runner V2's loader passes
    ``(vllm_config, LogitsProcRequestState)``, the V1 runner's ``(vllm_config, device, is_pin_memory)``."""
    if LogitsProcessorV2 is not None and len(args) + len(kwargs) == 1:
        state = args[0] if args else kwargs.get("req_states")
        if isinstance(state, LogitsProcRequestState):
            return GrammarProcessorV2(vllm_config, state)
    if LogitsProcessor is None:
        raise RuntimeError("vLLM's logits-processor interface is not importable")
    return GrammarProcessorV1(vllm_config, *args, **kwargs)


if LogitsProcessor is not None:
    _BASES = (LogitsProcessor,) if LogitsProcessorV2 is None else (LogitsProcessor, LogitsProcessorV2)

    class CoordGrammarLogitsProcessor(*_BASES):
        """The name ``engine_kwargs`` gives vLLM (``PROCESSOR_FQCN``). vLLM chooses its model runner when it
        builds the engine (``VllmConfig.use_v2_model_runner``: V2 where Triton works, i.e. on GPUs, unless
        ``VLLM_USE_V2_MODEL_RUNNER=0``), and that runner's loader checks the class against its own interface and
        constructs it. This class passes both checks and, when constructed, returns the processor of the
        runner that constructs it (``GrammarProcessorV1`` or ``GrammarProcessorV2``, the same grammar step);
        it is never an instance itself."""

        def __new__(cls, vllm_config, *args, **kwargs):
            return _select_processor(cls, vllm_config, *args, **kwargs)

        @classmethod
        def validate_params(cls, sampling_params) -> None:
            validate_sampling_params(sampling_params)
