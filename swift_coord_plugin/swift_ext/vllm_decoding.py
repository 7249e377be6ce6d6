"""The answer grammar on vLLM: a V1 logits processor around ``core.grammar.apply_grammar``.

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

Per-request state comes through ``update_state``: each request added to the persistent batch brings a
reference to its running list of output token ids; before each step the processor advances that row's
grammar state over the tokens appended since the last step.

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
from typing import Dict, List, Optional

import torch

from ..core import grammar as G
from .decoding import LOGPROBS_GRAMMAR, LOGPROBS_RAW, STATS, DecodingConfig, build_grammar, write_record

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
    from transformers import GenerationConfig

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
    from transformers import AutoTokenizer

    config = config or DecodingConfig.from_env()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
    return build_grammar(config, tokenizer, _end_ids(model_dir, tokenizer))


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


try:  # the class exists only where vLLM is installed (the .venv-vllm environment)
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality
except ImportError:  # pragma: no cover - main environment
    LogitsProcessor = None


if LogitsProcessor is not None:

    class _Row:
        __slots__ = ("output_ids", "state", "seen", "max_tokens")

        def __init__(self, output_ids: List[int], state: "G.GrammarState", max_tokens: Optional[int]):
            self.output_ids = output_ids  # vLLM's running list of this request's generated ids
            self.state = state
            self.seen = 0
            self.max_tokens = max_tokens  # the request's length limit: the grammar closes boxes before it

    class CoordGrammarLogitsProcessor(LogitsProcessor):
        """vLLM V1 logits processor applying the answer grammar (``COORD_DECODING``) to every request."""

        def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
            model_config = vllm_config.model_config
            self.grammar = grammar_for_model(model_config.model, model_config.tokenizer)
            self.rows: Dict[int, _Row] = {}
            self.violations = 0
            print(f"[swift-coord] vLLM logits processor: answer grammar, mode {self.grammar.mode}", flush=True)

        def is_argmax_invariant(self) -> bool:
            return False  # it decides what greedy decoding emits

        def update_state(self, batch_update: Optional["BatchUpdate"]) -> None:
            t0 = time.perf_counter()
            self._update_state(batch_update)
            STATS["seconds"] += time.perf_counter() - t0  # the grammar's time (bench/bench_decode.py)

        def _update_state(self, batch_update: Optional["BatchUpdate"]) -> None:
            if batch_update is not None:
                for index in batch_update.removed:
                    self.rows.pop(index, None)
                for index, params, _prompt_ids, output_ids in batch_update.added:
                    self.rows[index] = _Row(output_ids, self.grammar.initial_state(),
                                            getattr(params, "max_tokens", None))
                for a, b, direction in batch_update.moved:
                    ra, rb = self.rows.pop(a, None), self.rows.pop(b, None)
                    if ra is not None:
                        self.rows[b] = ra
                    if direction == MoveDirectionality.SWAP and rb is not None:
                        self.rows[a] = rb
            for row in self.rows.values():
                new = row.output_ids[row.seen:]
                if not new:
                    continue
                row.seen += len(new)
                try:
                    row.state = self.grammar.advance_all(row.state, new)
                except G.GrammarError as e:
                    # Only reachable when something else chose the token (e.g. a forced stop string):
                    # the row is left unconstrained rather than the engine stopped.
                    self.violations += 1
                    print(f"[swift-coord] a request left the answer grammar ({e}); it decodes freely from "
                          f"here ({self.violations} such requests)", flush=True)
                    row.state = G.GrammarState(G.DONE)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.rows:
                return logits
            t0 = time.perf_counter()
            out = self._apply(logits)
            STATS["steps"] += 1
            STATS["seconds"] += time.perf_counter() - t0
            return out

        def _apply(self, logits: torch.Tensor) -> torch.Tensor:
            done = G.GrammarState(G.DONE)
            states, remaining = [], []
            for i in range(logits.shape[0]):
                row = self.rows.get(i)
                states.append(row.state if row is not None else done)
                remaining.append(None if row is None or row.max_tokens is None
                                 else row.max_tokens - len(row.output_ids))
            # In place, like vLLM's own processors: this step's logits are the engine's to overwrite.
            step = G.apply_grammar(self.grammar, logits, states, with_logprobs=False, remaining=remaining,
                                   inplace=True)
            if self.grammar.mode != G.COORDEXP:
                return step.logits
            # coordexp: step.logits keeps only the chosen token; record the restricted distribution instead.
            v = self.grammar.vocab
            coord_rows = [i for i, s in enumerate(states) if self.grammar.is_coord_slot(s)]
            out = step.logits
            if coord_rows:
                rows = torch.tensor(coord_rows, dtype=torch.long, device=out.device)
                block = torch.full_like(out[rows], float("-inf"))
                block[:, v.coord_start:v.coord_end] = step.coord_logprobs[rows].to(out.dtype)
                swap_in_coordexp_bins(block, torch.arange(rows.numel(), device=out.device), step.chosen[rows],
                                      v.coord_start, v.num_bins)
                out[rows] = block
            return out
