"""The answer grammar as a token-level state machine (no ms-swift import).

API: the modes ``FREE | CONSTRAINED | COORDEXP`` (``MODES``), the phases of a sequence, ``GrammarState``
and ``AnswerGrammar`` (``initial_state``, ``advance``, ``advance_all``, ``advance_or_leave``, ``allowed_ids``,
``allowed_mask``, ``is_coord_slot``, ``min_object_tokens``). Rules and options: docs/design/grammar.md.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .grammar_vocab import GrammarError, GrammarVocab

FREE, CONSTRAINED, COORDEXP = "free", "constrained", "coordexp"
MODES = (FREE, CONSTRAINED, COORDEXP)
# The training cap (``coord-prepare-coco --max-objects``); kept equal by a test.
DEFAULT_MAX_OBJECTS = 30
DEFAULT_MAX_DESC_TOKENS = 32

# Phases of a sequence.
START = "start"        # before the first object or after <obj_end>: <obj_start> or end of turn
DESC = "desc"          # inside a description
COORD = "coord"        # one of the 4 coordinate slots
POST = "post"          # the fixed tokens after the 4th coordinate, then <obj_end>
DONE = "done"          # after the end of the turn: anything (finished rows are padded by the backend)
FREE_PHASE = "free"    # free mode: no tracking
OFF = "off"            # left the grammar (the backend appended a token it forbids): only the end of the turn

@dataclass(frozen=True)
class GrammarState:
    """Where one sequence stands in the grammar (immutable; ``advance`` returns a new one).

    ``phase``: one of ``start | desc | coord | post | done | free | off``; ``n_objects``: objects opened so far;
    ``desc_len``: description tokens written; ``node``: category-trie node (-1 without categories);
    ``coords``: bins written in the current object; ``post_index``: position in ``POST + <obj_end>``;
    ``lead_space``: the description so far is one bare ``SEP`` token (it opened with a space before a digit,
    a free description only): a token without a leading space must follow.
    """

    phase: str
    n_objects: int = 0
    desc_len: int = 0
    node: int = -1
    coords: Tuple[int, ...] = ()
    post_index: int = 0
    lead_space: bool = False


class AnswerGrammar:
    """The grammar of answers in one decoding mode (rules and options: docs/design/grammar.md)."""

    def __init__(self, vocab: GrammarVocab, mode: str = CONSTRAINED, *, ordered_boxes: bool = False,
                 max_objects: int = DEFAULT_MAX_OBJECTS, categories: Optional[Sequence[str]] = None,
                 max_desc_tokens: int = DEFAULT_MAX_DESC_TOKENS):
        if mode not in MODES:
            raise GrammarError(f"decoding mode must be one of {'|'.join(MODES)}, got {mode!r}")
        if isinstance(max_objects, bool) or not isinstance(max_objects, int) or max_objects < 0:
            raise GrammarError(f"max_objects must be an integer >= 0 (0: no cap), got {max_objects!r}")
        if isinstance(max_desc_tokens, bool) or not isinstance(max_desc_tokens, int) or max_desc_tokens < 1:
            raise GrammarError(f"max_desc_tokens must be an integer >= 1, got {max_desc_tokens!r}")
        self.vocab = vocab
        self.mode = mode
        self.ordered_boxes = bool(ordered_boxes)
        self.max_objects = max_objects
        self.max_desc_tokens = max_desc_tokens
        self.categories = tuple(categories) if categories else ()
        self._post_seq = tuple(vocab.post) + (vocab.obj_end,)
        self._start_ids = sorted({vocab.obj_start, *vocab.end_ids})
        self._end_ids = list(vocab.end_ids)
        self._desc_set = frozenset(vocab.desc_ids)
        self._bare_set = frozenset(vocab.desc_ids_bare)
        # Category trie over token ids: node -> {token: child}; terminal nodes end a name.
        self._children: List[Dict[int, int]] = [{}]
        self._terminal: List[bool] = [False]
        for name in self.categories:
            node = 0
            for t in vocab.desc_tokens(name):
                nxt = self._children[node].get(t)
                if nxt is None:
                    nxt = len(self._children)
                    self._children[node][t] = nxt
                    self._children.append({})
                    self._terminal.append(False)
                node = nxt
            self._terminal[node] = True
        self._masks: Dict[tuple, Tensor] = {}
        self._min_tokens = self.min_object_tokens()

    # -- states -------------------------------------------------------------------------------
    def initial_state(self) -> GrammarState:
        return GrammarState(FREE_PHASE if self.mode == FREE else START)

    def is_coord_slot(self, state: GrammarState) -> bool:
        return state.phase == COORD

    def _coord_low(self, state: GrammarState) -> int:
        """Lowest allowed bin at a coordinate slot (``ordered_boxes``: x2 >= x1, y2 >= y1)."""
        if self.ordered_boxes and len(state.coords) >= 2:
            return state.coords[len(state.coords) - 2]
        return 0

    def _cap_reached(self, state: GrammarState) -> bool:
        return bool(self.max_objects) and state.n_objects >= self.max_objects

    def min_object_tokens(self) -> int:
        """Tokens of the shortest object the grammar can still finish once opened (the longest category
        name counts with ``categories``): ``<obj_start>``, description, ``SEP``, 4 coordinates, ``POST``,
        ``<obj_end>``."""
        desc = max((len(self.vocab.desc_tokens(n)) for n in self.categories), default=1)
        return 1 + desc + 1 + 4 + len(self._post_seq)

    def _may_lead_space(self, remaining: Optional[int]) -> bool:
        """May a free description open with a bare ``SEP`` (a space before a digit)? It then needs a second
        description token, so room for ``SEP`` + 1 token + ``SEP`` + 4 coordinates + ``POST`` + ``<obj_end>``."""
        if not self.vocab.desc_ids_bare or self.max_desc_tokens < 2:
            return False
        return remaining is None or remaining >= 2 + 1 + 4 + len(self._post_seq)

    def _closing(self, state: GrammarState, remaining: Optional[int]) -> bool:
        """Must the answer wind down now to finish within ``remaining`` tokens?"""
        if remaining is None:
            return False
        if state.phase == START:
            return remaining < self._min_tokens
        if state.phase == DESC and state.desc_len > 0 and not self.categories:
            return remaining <= 1 + 4 + len(self._post_seq)  # SEP, 4 coordinates, POST, <obj_end>
        return False

    def allowed_ids(self, state: GrammarState, remaining: Optional[int] = None) -> Optional[List[int]]:
        """Sorted ids allowed next; ``None`` means every id (free mode, or a finished sequence)."""
        v = self.vocab
        p = state.phase
        if p in (FREE_PHASE, DONE):
            return None
        closing = self._closing(state, remaining)
        if p == START:
            return list(self._end_ids) if self._cap_reached(state) or closing else list(self._start_ids)
        if p == OFF:
            return list(self._end_ids)
        if p == COORD:
            return list(range(v.coord_start + self._coord_low(state), v.coord_end))
        if p == POST:
            return [self._post_seq[state.post_index]]
        # DESC
        if self.categories:
            node = state.node
            ids = set(self._children[node])
            if self._terminal[node]:
                ids.add(v.sep)
            return sorted(ids)
        if state.lead_space:
            return list(v.desc_ids_bare)
        if state.desc_len >= self.max_desc_tokens or closing:
            return [v.sep]
        if state.desc_len == 0:
            return sorted((*v.desc_ids, v.sep)) if self._may_lead_space(remaining) else list(v.desc_ids)
        return sorted((*v.desc_ids, v.sep))

    def advance(self, state: GrammarState, token_id: int) -> GrammarState:
        """The state after ``token_id``; raises ``GrammarError`` if the grammar does not allow it."""
        t = int(token_id)
        v = self.vocab
        p = state.phase
        if p in (FREE_PHASE, DONE):
            return state
        if p == OFF:
            return GrammarState(DONE, state.n_objects) if t in v.end_ids else state
        if p == START:
            if t in v.end_ids:
                return GrammarState(DONE, state.n_objects)
            if t == v.obj_start and not self._cap_reached(state):
                return GrammarState(DESC, state.n_objects + 1, 0, 0 if self.categories else -1)
        elif p == DESC:
            if self.categories:
                if t == v.sep and self._terminal[state.node]:
                    return GrammarState(COORD, state.n_objects)
                child = self._children[state.node].get(t)
                if child is not None:
                    return GrammarState(DESC, state.n_objects, state.desc_len + 1, child)
            else:
                if state.lead_space:
                    if t in self._bare_set:
                        return GrammarState(DESC, state.n_objects, state.desc_len + 1)
                elif t == v.sep and state.desc_len > 0:
                    return GrammarState(COORD, state.n_objects)
                elif t == v.sep and self._may_lead_space(None):
                    return GrammarState(DESC, state.n_objects, 1, lead_space=True)
                elif t in self._desc_set and state.desc_len < self.max_desc_tokens:
                    return GrammarState(DESC, state.n_objects, state.desc_len + 1)
        elif p == COORD:
            if v.is_coord(t) and t - v.coord_start >= self._coord_low(state):
                coords = state.coords + (t - v.coord_start,)
                if len(coords) == 4:
                    return GrammarState(POST, state.n_objects, coords=coords)
                return GrammarState(COORD, state.n_objects, coords=coords)
        elif p == POST:
            if t == self._post_seq[state.post_index]:
                if state.post_index + 1 == len(self._post_seq):
                    return GrammarState(START, state.n_objects)
                return GrammarState(POST, state.n_objects, coords=state.coords, post_index=state.post_index + 1)
        raise GrammarError(f"token {t} is not allowed in state {state} of the answer grammar ({self.mode})")

    def advance_all(self, state: GrammarState, token_ids: Iterable[int]) -> GrammarState:
        for t in token_ids:
            state = self.advance(state, t)
        return state

    def advance_or_leave(self, state: GrammarState, token_ids: Iterable[int]) -> Tuple[GrammarState, Optional[str]]:
        """``advance_all`` for a backend that cannot refuse a token it was handed: a token the grammar forbids
        (chosen by something other than the grammar) moves the sequence to ``off``, where only the end of the
        turn is allowed, instead of raising. Returns ``(state, why)``: ``why`` is ``None``, or the
        ``GrammarError`` message when the sequence left the grammar during these tokens (counted once: a
        sequence already ``off`` stays there silently)."""
        why = None
        for t in token_ids:
            try:
                state = self.advance(state, t)
            except GrammarError as e:
                state, why = GrammarState(OFF, state.n_objects), str(e)
        return state, why

    # -- masks ------------------------------------------------------------------------------------
    def _mask_key(self, state: GrammarState, remaining: Optional[int] = None) -> tuple:
        p = state.phase
        closing = self._closing(state, remaining)
        if p == START:
            return (START, self._cap_reached(state) or closing)
        if p == COORD:
            return (COORD, self._coord_low(state))
        if p == POST:
            return (POST, state.post_index)
        if p == OFF:
            return (OFF,)
        if p == DESC:
            if self.categories:
                return (DESC, state.node)
            if state.lead_space:
                return (DESC, "lead")
            if state.desc_len >= self.max_desc_tokens or closing:
                return (DESC, 2)
            if state.desc_len == 0:
                return (DESC, 0, self._may_lead_space(remaining))
            return (DESC, 1)
        return (p,)

    def allowed_mask(self, state: GrammarState, vocab_size: int, device=None,
                     remaining: Optional[int] = None) -> Tensor:
        """``BoolTensor[vocab_size]``: True where a token may come next (cached per kind of state)."""
        key = self._mask_key(state, remaining) + (int(vocab_size), str(device))
        m = self._masks.get(key)
        if m is None:
            ids = self.allowed_ids(state, remaining)
            if ids is None:
                m = torch.ones(vocab_size, dtype=torch.bool, device=device)
            else:
                m = torch.zeros(vocab_size, dtype=torch.bool, device=device)
                ids_t = torch.tensor([i for i in ids if i < vocab_size], dtype=torch.long, device=device)
                m[ids_t] = True
            self._masks[key] = m
        return m
