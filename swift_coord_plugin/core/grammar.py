"""The answer grammar of constrained decoding: the public API, one import for both inference backends.

An answer is zero or more objects, each exactly the token sequence the template trains on
(``codec.render_object`` read as token ids), then the end of the turn. Decoding modes: ``free``,
``constrained``, ``coordexp`` (``MODES``). The parts, each in its own module:

* ``grammar_vocab``: ``GrammarVocab.from_tokenizer(tokenizer, end_ids)`` (token classes), ``GrammarError``;
* ``grammar_machine``: ``AnswerGrammar(vocab, mode, ordered_boxes=False, max_objects=DEFAULT_MAX_OBJECTS,
  categories=None, max_desc_tokens=DEFAULT_MAX_DESC_TOKENS)`` and ``GrammarState`` (the state machine);
* ``grammar_step``: ``apply_grammar(grammar, logits, states, ...)`` -> ``GrammarStep`` (one masked step);
* ``coordexp``: ``decide_bins`` / ``round_half_up`` (the CoordExp decision).

Rules, options and rationale: docs/design/grammar.md; the modes as users see them: docs/evaluation.md §2.
"""
from __future__ import annotations

from .coordexp import decide_bins, round_half_up
from .grammar_machine import (COORD, COORDEXP, CONSTRAINED, DEFAULT_MAX_DESC_TOKENS, DEFAULT_MAX_OBJECTS, DESC, DONE,
                              FREE, FREE_PHASE, MODES, OFF, POST, START, AnswerGrammar, GrammarState)
from .grammar_step import GrammarStep, apply_grammar
from .grammar_vocab import GrammarError, GrammarVocab

__all__ = [
    "FREE", "CONSTRAINED", "COORDEXP", "MODES", "DEFAULT_MAX_OBJECTS", "DEFAULT_MAX_DESC_TOKENS",
    "START", "DESC", "COORD", "POST", "DONE", "FREE_PHASE", "OFF",
    "GrammarError", "GrammarVocab", "GrammarState", "AnswerGrammar", "GrammarStep", "apply_grammar",
    "round_half_up", "decide_bins",
]
