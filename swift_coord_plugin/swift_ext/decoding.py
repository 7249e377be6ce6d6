"""Grammar-constrained decoding on ms-swift's transformers backend (``swift infer --infer_backend transformers``).

The mode and its options are environment keys, set the ms-swift way (``--model_kwargs '{"COORD_DECODING":
"constrained"}'``, a YAML ``ENV:`` block, or the environment):

``COORD_DECODING`` (``free | constrained | coordexp``, ``core.grammar``), ``COORD_DECODING_ORDERED``,
``COORD_DECODING_MAX_OBJECTS``, ``COORD_DECODING_CATEGORIES``, ``COORD_DECODING_RECORD`` and
``COORD_DECODING_SLOTS`` (``slots.py``); defaults and meanings: docs/losses.md, "Setting a switch: every key of
the plugin".

Hook: ``Template.generate`` (the template calls ``generate_with_grammar``), which the transformers engine
calls around ``model.generate``. The grammar runs as the last logits processor. ms-swift computes the
``logprobs`` of a result row from ``output.logits``, which transformers fills with the RAW logits (before
any processor); under ``constrained``/``coordexp`` this module replaces them with the grammar-masked logits
(``-inf`` where the grammar forbids a token; under coordexp those before the CoordExp decision), whose
log-softmax, which ms-swift takes, is the grammar-restricted distribution (at a coordinate slot: the softmax
over the coordinate tokens), so the recorded log-probabilities of the emitted token and its top-k are those
the answer was decoded from.
ms-swift's streaming path (``--stream true``) records its own copy of the scores and is not covered.

Refused at the first batch, naming the option (``check_generation_options``; vLLM refuses the same per request):
``--num_beams`` > 1 under ``constrained``/``coordexp`` (beam search reorders the rows, whose grammar states
would belong to other beams), and ``--temperature`` > 0 under ``coordexp`` (the decision is ``round(E[k])``).

A row handed a token the grammar forbids (only something other than the grammar can choose one) is ended
there (``core.grammar.OFF``: only the end of the turn) and counted in the record as ``off_grammar_rows``;
``coord-eval`` refuses such a record.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

from transformers import LogitsProcessor, LogitsProcessorList

from .. import environment
from ..core import grammar as G
from ..core.coordexp import expected_bins_and_spread
from ..core.flags import parse_bool
# The record's count of answers that left the grammar (``coord-eval`` refuses a record where it is not 0).
from ..eval.decoding_info import OFF_GRAMMAR_KEY
from .slots import ENV_SLOTS, append_rows, slots_path

ENV_MODE = "COORD_DECODING"
ENV_ORDERED = "COORD_DECODING_ORDERED"
ENV_MAX_OBJECTS = "COORD_DECODING_MAX_OBJECTS"
ENV_CATEGORIES = "COORD_DECODING_CATEGORIES"
ENV_RECORD = environment.DECODING_RECORD_ENV
BACKEND = "transformers"

# Which distribution the ``logprobs`` of the result rows hold.
LOGPROBS_RAW = "raw: full-vocabulary softmax of the model"
LOGPROBS_GRAMMAR = "grammar: softmax over the tokens the grammar allows (coordinate slots: over the coordinate tokens)"


class DecodingConfigError(ValueError):
    pass


def load_categories(path: str) -> List[str]:
    """Category names from a COCO instances JSON (``categories[].name``) or a text file (one name a line).

    Raises ``DecodingConfigError`` naming the file when it is missing, unreadable or holds no name.
    """
    if not os.path.isfile(path):
        raise DecodingConfigError(f"{ENV_CATEGORIES}: no such file {path!r}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith(".json"):
            data = json.loads(text)
            names = [c["name"] for c in data["categories"]] if isinstance(data, dict) else list(data)
        else:
            names = [line.strip() for line in text.splitlines()]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DecodingConfigError(f"{ENV_CATEGORIES}: cannot read category names from {path!r}: {e}") from e
    names = [n for n in names if isinstance(n, str) and n.strip()]
    if not names:
        raise DecodingConfigError(f"{ENV_CATEGORIES}: {path!r} holds no category name")
    return names


@dataclass(frozen=True)
class DecodingConfig:
    """The decoding mode and options of an inference run (see the module docstring)."""

    mode: str = G.FREE
    ordered_boxes: bool = False
    max_objects: int = G.DEFAULT_MAX_OBJECTS
    categories_file: Optional[str] = None

    @classmethod
    def from_env(cls, env=None) -> "DecodingConfig":
        """Read and validate the ``COORD_DECODING*`` keys; ``DecodingConfigError`` names the bad key."""
        env = environment.current(env)
        mode = env.get(ENV_MODE, G.FREE).strip().lower() or G.FREE
        if mode not in G.MODES:
            raise DecodingConfigError(f"{ENV_MODE}={env.get(ENV_MODE)!r}: expected one of {'|'.join(G.MODES)}")
        raw_max = env.get(ENV_MAX_OBJECTS, str(G.DEFAULT_MAX_OBJECTS)).strip()
        try:
            max_objects = int(raw_max)
        except ValueError:
            raise DecodingConfigError(f"{ENV_MAX_OBJECTS}={raw_max!r}: expected an integer >= 0") from None
        if max_objects < 0:
            raise DecodingConfigError(f"{ENV_MAX_OBJECTS}={raw_max!r}: expected an integer >= 0")
        cats = env.get(ENV_CATEGORIES, "").strip() or None
        if cats is not None:
            load_categories(cats)  # fail at start-up, naming the file
        return cls(mode, parse_bool(ENV_ORDERED, env.get(ENV_ORDERED, "false"), DecodingConfigError, empty=False), max_objects, cats)

    def record(self, logprobs_recorded: bool) -> dict:
        """What a run writes about its decoding (``COORD_DECODING_RECORD``; ``coord-eval`` reads it)."""
        d = {"decoding": self.mode, "infer_backend": BACKEND,
             "logprobs": (LOGPROBS_RAW if self.mode == G.FREE else LOGPROBS_GRAMMAR) if logprobs_recorded else None}
        d.update({k: v for k, v in asdict(self).items() if k != "mode"})
        return d


def check_generation_options(config: DecodingConfig, num_beams: Optional[int] = 1,
                             temperature: Optional[float] = 0) -> None:
    """Refuse generation options the grammar cannot serve, naming the option (``DecodingConfigError``).

    * ``--num_beams`` > 1 under ``constrained``/``coordexp``: beam search reorders the rows every step, so a
      row's grammar state would belong to another beam.
    * ``--temperature`` > 0 under ``coordexp``: the CoordExp decision is ``round(E[k])``; on vLLM a sampled
      step would draw from the restricted distribution instead, so both backends refuse it.
    ``temperature``: the sampling temperature, 0 (or None) for greedy decoding.
    """
    if config.mode == G.FREE:
        return
    if num_beams is not None and int(num_beams) > 1:
        raise DecodingConfigError(f"--num_beams {num_beams}: beam search is not supported under "
                                  f"{ENV_MODE}={config.mode} (the grammar keeps one state per row, and beam "
                                  "search reorders rows every step); use --num_beams 1")
    if config.mode == G.COORDEXP and temperature is not None and float(temperature) > 0:
        raise DecodingConfigError(f"--temperature {temperature}: {ENV_MODE}=coordexp writes the CoordExp bin "
                                  "round(E[k]) at every coordinate slot, which sampling would replace; use "
                                  "--temperature 0 (or COORD_DECODING=constrained to sample)")


def build_grammar(config: DecodingConfig, tokenizer, end_ids) -> G.AnswerGrammar:
    vocab = G.GrammarVocab.from_tokenizer(tokenizer, end_ids=end_ids)
    cats = load_categories(config.categories_file) if config.categories_file else None
    return G.AnswerGrammar(vocab, config.mode, ordered_boxes=config.ordered_boxes,
                           max_objects=config.max_objects, categories=cats)


class GrammarLogitsProcessor(LogitsProcessor):
    """Applies ``core.grammar.apply_grammar`` to every step of ``model.generate``.

    Keeps one grammar state per row (advanced with the token the previous step appended) and, with
    ``record``, the masked logits to report per step (``[batch, vocab]`` float32 each; their
    log-softmax is the distribution the step was decoded from).
    """

    def __init__(self, grammar: G.AnswerGrammar, max_new_tokens: Optional[int], record: bool,
                 slots: bool = False):
        self.grammar = grammar
        # With ``slots``: per row, ``[t, E, std]`` of each coordinate slot (``swift_ext.slots``).
        self.slots = [] if slots else None
        self.max_new_tokens = max_new_tokens
        self.record = record
        self.recorded = []
        self.states = None
        self.prompt_len = 0
        self.off_grammar = 0  # rows that received a token the grammar forbids (from outside the grammar)

    def __call__(self, input_ids, scores):
        t0 = time.perf_counter()
        if self.states is None:
            self.states = [self.grammar.initial_state() for _ in range(input_ids.shape[0])]
            self.prompt_len = input_ids.shape[1]
            if self.slots is not None:
                self.slots = [[] for _ in range(input_ids.shape[0])]
        else:
            for b, t in enumerate(input_ids[:, -1].tolist()):
                self.states[b], why = self.grammar.advance_or_leave(self.states[b], (t,))
                if why is not None:
                    self.off_grammar += 1
                    print(f"[swift-coord] decoding: row {b} of the batch left the answer grammar ({why}); "
                          "it is ended there and counted in the decoding record", flush=True)
        remaining = None
        if self.max_new_tokens is not None:
            remaining = self.max_new_tokens - (input_ids.shape[1] - self.prompt_len)
        # In place: ``scores`` is transformers' own float32 copy of the step's logits. ms-swift
        # log-softmaxes what ``output.logits`` holds, so recording the masked logits (before the
        # coordexp decision) records the grammar-restricted distribution without a log-softmax here.
        step = G.apply_grammar(self.grammar, scores, self.states, with_logprobs=False,
                               remaining=remaining, inplace=True, with_masked_logits=self.record)
        if self.record:
            self.recorded.append(step.masked_logits)
        if self.slots is not None and bool(step.coord_slot.any()):
            rows = step.coord_slot.nonzero().flatten()
            mean, std = expected_bins_and_spread(step.coord_logprobs[rows])
            t = input_ids.shape[1] - self.prompt_len
            for r, e, s in zip(rows.tolist(), mean.tolist(), std.tolist()):
                self.slots[r].append([t, e, s])
        STATS["steps"] += 1
        STATS["seconds"] += time.perf_counter() - t0
        return step.logits


# Time spent in the grammar processor since the last ``reset_stats()`` (for bench/bench_decode.py).
STATS = {"steps": 0, "seconds": 0.0}


def reset_stats() -> None:
    STATS.update(steps=0, seconds=0.0)


_CACHE = {}


def grammar_for(template, config: DecodingConfig, end_ids) -> G.AnswerGrammar:
    key = (id(template.tokenizer), config, tuple(end_ids))
    g = _CACHE.get(key)
    if g is None:
        g = build_grammar(config, template.tokenizer, end_ids)
        _CACHE.clear()
        _CACHE[key] = g
    return g


def _end_ids(template, generation_config) -> List[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        eos = template.tokenizer.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    return [int(i) for i in ids if i is not None]


_ANNOUNCED = set()




def _record_path() -> Optional[str]:
    return environment.decoding_record_path()


def _update_record(update) -> Optional[dict]:
    """Read-modify-write ``COORD_DECODING_RECORD`` under an exclusive lock (the shards of a sharded run, and
    vLLM's engine process next to ms-swift's, share one record); ``update(old or None) -> new``."""
    path = _record_path()
    if path is None:
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = None
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    old = json.load(f)
            except (OSError, ValueError):
                old = None
        rec = update(old if isinstance(old, dict) else None)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(rec, f, indent=1)
        os.replace(tmp, path)
    return rec


def write_record(rec: dict) -> None:
    """Print the run's decoding record and write it to ``COORD_DECODING_RECORD`` when that names a file.

    The count of answers that left the grammar (``off_grammar_rows``) already in that file is kept, like the
    result rows ms-swift appends to an existing result file (``shell/eval.sh`` removes the record first)."""
    rec = dict(rec)

    def update(old):
        rec[OFF_GRAMMAR_KEY] = int((old or {}).get(OFF_GRAMMAR_KEY, 0) or 0)
        return rec

    _update_record(update)
    rec.setdefault(OFF_GRAMMAR_KEY, 0)
    print(f"[swift-coord] decoding: {json.dumps(rec)}", flush=True)


def record_off_grammar(rows: int) -> None:
    """Add ``rows`` answers that left the grammar to the record's ``off_grammar_rows`` (and say so).

    A token the grammar forbids reaches a row only when something else chose it; the row is ended there
    (``core.grammar.OFF``), and ``coord-eval`` refuses to score the run as constrained."""
    if rows <= 0:
        return

    def update(old):
        rec = dict(old or {})
        rec[OFF_GRAMMAR_KEY] = int(rec.get(OFF_GRAMMAR_KEY, 0) or 0) + rows
        return rec

    rec = _update_record(update)
    total = rows if rec is None else rec[OFF_GRAMMAR_KEY]
    print(f"[swift-coord] decoding: {rows} answer(s) left the answer grammar ({OFF_GRAMMAR_KEY} in the record: "
          f"{total}); coord-eval will refuse these results", flush=True)


def _announce(config: DecodingConfig, record: bool) -> None:
    rec = config.record(record)
    key = json.dumps(rec, sort_keys=True)
    if key not in _ANNOUNCED:
        _ANNOUNCED.add(key)
        write_record(rec)


def _write_slots(path: str, proc, out, row_keys, vocab) -> None:
    """Append one ``swift_ext.slots`` line per answer of the batch: ``[t, bin, E, std]`` per coordinate slot."""
    seqs = out["sequences"] if hasattr(out, "keys") else out
    gen = seqs[:, proc.prompt_len:].tolist()
    slots = proc.slots or [[] for _ in gen]
    if not row_keys or len(gen) % len(row_keys):
        raise RuntimeError(f"{ENV_SLOTS}: the batch has {len(gen)} answers but the template saw "
                           f"{len(row_keys or ())} requests; no slot can be joined to its row")
    per_request = len(gen) // len(row_keys)  # num_return_sequences answers per request, in order
    lines = []
    for b, row in enumerate(slots):
        lines.append([[t, gen[b][t] - vocab.coord_start, e, s] for t, e, s in row])
    append_rows(path, [row_keys[b // per_request] for b in range(len(gen))], lines)


def generate_with_grammar(template, base_generate, model, *args, **kwargs):
    """``Template.generate`` under the decoding mode of ``COORD_DECODING`` (see the module docstring)."""
    config = DecodingConfig.from_env()
    # The rows' keys, left by the template's data_collator for this batch (``swift_ext.slots``).
    row_keys = getattr(template, "coord_row_keys", None)
    if row_keys is not None:
        template.coord_row_keys = None
    gc = kwargs.get("generation_config")
    record = bool(gc is not None and getattr(gc, "output_logits", False)
                  and getattr(gc, "return_dict_in_generate", False))
    check_generation_options(config, num_beams=getattr(gc, "num_beams", 1),
                             temperature=getattr(gc, "temperature", 0) if getattr(gc, "do_sample", False) else 0)
    _announce(config, record)
    if config.mode == G.FREE:
        return base_generate(model, *args, **kwargs)
    grammar = grammar_for(template, config, _end_ids(template, gc))
    side_file = slots_path()
    proc = GrammarLogitsProcessor(grammar, getattr(gc, "max_new_tokens", None), record, slots=side_file is not None)
    kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), proc])
    out = base_generate(model, *args, **kwargs)
    record_off_grammar(proc.off_grammar)
    if side_file is not None:
        _write_slots(side_file, proc, out, row_keys, grammar.vocab)
    if record and proc.recorded and getattr(out, "logits", None) is not None:
        if len(out.logits) != len(proc.recorded):
            raise RuntimeError(f"generate returned {len(out.logits)} logit steps but the grammar saw "
                               f"{len(proc.recorded)}")
        out["logits"] = tuple(proc.recorded)
    return out
