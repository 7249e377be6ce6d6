"""The answer grammar as a token-level state machine, and the three decoding modes (no ms-swift import).

The grammar is the codec's rendering (``codec.render_object``) read as token ids: an answer is zero or
more objects followed by the end of the turn, each object exactly the token sequence the template
trains on::

    <obj_start>  desc-tokens  SEP  <|coord_x1|> <|coord_y1|> <|coord_x2|> <|coord_y2|>  POST...  <obj_end>

``SEP`` (the space between the description and the first coordinate) and ``POST`` (the space between
the last coordinate and ``<obj_end>``) are not assumed: ``GrammarVocab.from_tokenizer`` tokenises rendered
probe objects and reads them off, and refuses a tokenizer where they are not fixed tokens.

API (stable)
------------
``GrammarVocab.from_tokenizer(tokenizer, end_ids)``
    token classes of a concrete tokenizer: coordinate range, markers, ``SEP``/``POST``, end-of-turn
    ids, and which ids may appear inside a description.
``AnswerGrammar(vocab, mode, ordered_boxes=False, max_objects=DEFAULT_MAX_OBJECTS, categories=None,
max_desc_tokens=DEFAULT_MAX_DESC_TOKENS)``
    ``mode`` is one of ``MODES`` = ``free | constrained | coordexp``.
    ``initial_state()`` -> ``GrammarState`` (immutable, one per sequence);
    ``advance(state, token_id)`` -> the next ``GrammarState`` (``GrammarError`` for a forbidden token);
    ``advance_or_leave(state, token_ids)`` -> ``(state, why)``: for a backend handed a token it cannot refuse,
    a forbidden token moves the sequence to ``off`` (only the end of the turn from there) and says why;
    ``allowed_ids(state, remaining=None)`` -> sorted ``list`` of the allowed next ids (``None``: every id,
    free mode); ``allowed_mask(state, vocab_size, device, remaining=None)`` -> ``BoolTensor[vocab_size]``;
    ``is_coord_slot(state)``. ``remaining`` (optional) is the number of tokens the backend will still
    generate, this one included (``max_new_tokens`` minus those written): with it, an object is only
    opened when it can be finished, and a description ends in time, so a length limit never cuts a box.
``apply_grammar(grammar, logits, states, with_logprobs=True, remaining=None, *, inplace=False,
with_masked_logits=False)`` -> ``GrammarStep``
    the one torch function both inference backends call on a ``[batch, vocab]`` logits tensor:
    processed logits, the token the grammar decides (coordexp), the log-probabilities to record (or
    the masked logits whose log-softmax they are), and the restricted coordinate distribution. The
    backends call it in place on their own copy of the step's logits.

Modes
-----
``free``         no masking; the recorded log-probabilities are the model's full-vocabulary ones.
``constrained``  only what the grammar allows next; at a coordinate slot only the ``NUM_BINS`` coordinate
                 tokens, so greedy decoding is the argmax of the softmax restricted to them.
``coordexp``     as ``constrained``, but at a coordinate slot the emitted token is the CoordExp decision
                 ``k = round(sum_k p_k * k)`` (half up, the codec's bin rule) under the restricted softmax
                 (``coordexp.expected_bins``); it is fed back into the sequence like any token.
Under ``constrained`` and ``coordexp`` the log-probabilities to record are those of the softmax over the
tokens the grammar allows; at a coordinate slot that is the restricted coordinate distribution (for
coordexp too: the emitted token keeps its probability under that distribution, not 1).

Options (defaults)
------------------
* ``ordered_boxes`` (off): ``x2 >= x1`` and ``y2 >= y1`` enforced by masking the lower bins. Off, so that an
  ablation measures the loss, not the mask; the parser repairs reversed pairs anyway.
* ``max_objects`` (``DEFAULT_MAX_OBJECTS`` = the training cap of ``coord-prepare-coco``): after that many
  objects only the end of the turn is allowed. ``0``: no cap.
* ``categories`` (none): descriptions restricted to these names (a token trie built from the rendering of
  each name), so that no detection is lost to an unmatched description. Where one name is another followed
  by the separator token (``"person"`` and ``"person 2"``), the shorter one wins.
* ``max_desc_tokens`` (32): a free description longer than this must end (only ``SEP`` is allowed), so a
  model that never leaves its description cannot run the answer out of tokens.

Description tokens (free descriptions): every ordinary token of the tokenizer whose text is non-empty,
holds no whitespace except one leading space and no ``<`` (so no markup such as ``<|coord_5|>`` can be
spelled out of text pieces); the bare ``SEP`` token ends the description. As its *first* token, a
description may also be the bare ``SEP`` followed by a token without a leading space: Qwen's pre-tokenizer
writes a description that starts with a digit that way (``" 3D printer"`` -> ``" "``, ``"3"``, ``"D"``,
``" printer"``). A space before a digit *inside* a description (``"person 2"``) is the same bare token
where the description could end, so a free description cannot continue after it: ``codec.desc_problem``
refuses such descriptions (and any ``<``) for training, so everything the template trains on is writable
(``tests/test_grammar.py``, a property test over real category names).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from . import codec
from .codec import NUM_BINS, OBJ_END, OBJ_START
from .coordexp import expected_bins

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


class GrammarError(ValueError):
    """A tokenizer the grammar cannot be derived from, a bad option, or a token the grammar forbids."""


@dataclass(frozen=True)
class GrammarVocab:
    """The token classes of one tokenizer, as the grammar needs them.

    ``desc_ids``: sorted ids allowed inside a free description; ``sep``: id of the token between the
    description and the first coordinate; ``post``: ids between the 4th coordinate and ``<obj_end>``;
    ``end_ids``: ids that end the answer (end of turn / end of text); ``vocab_size``: the tokenizer's
    length (the model may have more logit rows: those are never allowed).
    """

    coord_start: int
    obj_start: int
    obj_end: int
    sep: int
    post: Tuple[int, ...]
    end_ids: Tuple[int, ...]
    desc_ids: Tuple[int, ...]
    vocab_size: int
    num_bins: int = NUM_BINS
    tokenize: object = field(default=None, compare=False, repr=False)  # text -> ids (for categories)
    # desc_ids without a leading space: what may follow a bare SEP token that *opens* a description
    # (Qwen's pre-tokenizer writes " 3D printer" as " ", "3", "D", " printer")
    desc_ids_bare: Tuple[int, ...] = ()

    @property
    def coord_end(self) -> int:
        return self.coord_start + self.num_bins

    def is_coord(self, token_id: int) -> bool:
        return self.coord_start <= token_id < self.coord_end

    def desc_tokens(self, desc: str) -> Tuple[int, ...]:
        """Token ids the template writes for ``desc`` between ``<obj_start>`` and ``SEP``."""
        if self.tokenize is None:
            raise GrammarError("this GrammarVocab has no tokenizer: build it with GrammarVocab.from_tokenizer")
        return _desc_tokens_of(self.tokenize, desc, self)

    @classmethod
    def from_tokenizer(cls, tokenizer, end_ids: Optional[Iterable[int]] = None) -> "GrammarVocab":
        """Derive the token classes from the codec's rendering in ``tokenizer`` (a HF tokenizer or processor).

        ``end_ids``: the ids that end an answer (the generation config's eos ids); default the
        tokenizer's ``eos_token_id``. Raises ``GrammarError`` when the coordinate tokens are missing or
        the separators around them are not fixed tokens.
        """
        from .vocab import CoordVocab, VocabError

        tok = getattr(tokenizer, "tokenizer", tokenizer)
        try:
            cv = CoordVocab.from_tokenizer(tok)
        except VocabError as e:
            raise GrammarError(str(e)) from e
        if end_ids is None:
            end_ids = [tok.eos_token_id] if tok.eos_token_id is not None else []
        end = tuple(sorted({int(i) for i in end_ids}))
        if not end:
            raise GrammarError("no end-of-turn id: pass end_ids (the generation config's eos_token_id)")

        def encode(text: str) -> List[int]:
            return list(tok.encode(text, add_special_tokens=False))

        sep, post = _separators(encode, cv)
        n = len(tok)
        special = set(int(i) for i in getattr(tok, "all_special_ids", []) or [])
        added = getattr(tok, "added_tokens_decoder", None) or {}
        special.update(int(i) for i in added)
        special.update((cv.obj_start, cv.obj_end, sep, *post, *end))
        texts = tok.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                 clean_up_tokenization_spaces=False)
        desc = tuple(i for i, t in enumerate(texts)
                     if i not in special and not cv.is_coord(i) and _is_desc_text(t))
        if not desc:
            raise GrammarError("no token of the tokenizer can appear in a description")
        bare = tuple(i for i in desc if not texts[i].startswith(" "))
        return cls(coord_start=cv.coord_start, obj_start=cv.obj_start, obj_end=cv.obj_end, sep=sep,
                   post=post, end_ids=end, desc_ids=desc, vocab_size=n, tokenize=encode, desc_ids_bare=bare)


def _is_desc_text(text: str) -> bool:
    body = text[1:] if text.startswith(" ") else text
    return bool(body) and "<" not in body and not any(ch.isspace() for ch in body)


_PROBE_BINS = (12, 34, 567, 890)


def _object_ids(encode, desc: str, bins=_PROBE_BINS) -> List[int]:
    return encode(codec.render_object(desc, bins))


def _split_object(ids: List[int], vocab) -> Tuple[List[int], List[int]]:
    """Token ids of one rendered object -> (between <obj_start> and 1st coordinate, after 4th coordinate
    up to <obj_end>), checking the markers and the 4 coordinate ids."""
    coords = [i for i, t in enumerate(ids) if vocab.is_coord(t)]
    if (len(coords) != 4 or ids[0] != vocab.obj_start or ids[-1] != vocab.obj_end
            or coords != list(range(coords[0], coords[0] + 4))):
        raise GrammarError(f"the rendered object tokenises unexpectedly: {ids}")
    return ids[1:coords[0]], ids[coords[3] + 1:-1]


def _separators(encode, cv) -> Tuple[int, Tuple[int, ...]]:
    seps, posts = set(), set()
    for desc in ("dog", "traffic light", "person", "hair drier"):
        head, post = _split_object(_object_ids(encode, desc), cv)
        plain = encode(f"{OBJ_START} {desc}")[1:]
        if not head or head[:-1] != plain:
            raise GrammarError(f"the description {desc!r} tokenises differently before a coordinate ({head}) "
                               f"than alone ({plain}): the separator is not a token of its own")
        seps.add(head[-1])
        posts.add(tuple(post))
    if len(seps) != 1 or len(posts) != 1:
        raise GrammarError(f"the separators around the coordinates are not fixed tokens: {seps}, {posts}")
    return seps.pop(), posts.pop()


def _desc_tokens_of(encode, desc: str, vocab: GrammarVocab) -> Tuple[int, ...]:
    problem = codec.desc_problem(desc)
    if problem:
        raise GrammarError(f"category {desc!r}: {problem}")
    head, _ = _split_object(_object_ids(encode, codec.clean_desc(desc)), vocab)
    if not head or head[-1] != vocab.sep or len(head) < 2:
        raise GrammarError(f"category {desc!r}: its rendering does not end with the separator token")
    return tuple(head[:-1])


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
    """The grammar of answers in one decoding mode; see the module docstring for the rules and options."""

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


@dataclass
class GrammarStep:
    """What ``apply_grammar`` returns for one decoding step of a batch of ``B`` rows over ``V`` logits.

    ``logits``: ``[B, V]`` processed logits (input dtype): ``-inf`` where the grammar forbids a token; under
    coordexp at a coordinate slot only the chosen token stays finite. ``chosen``: ``LongTensor[B]``, the
    token the grammar decided (coordexp at a coordinate slot), ``-1`` elsewhere. ``logprobs``: ``[B, V]``
    float32 log-probabilities to record (``None`` unless asked for): the full-vocabulary ones in free
    mode, else those of the softmax over the allowed tokens. ``coord_slot``: ``BoolTensor[B]``.
    ``coord_logprobs``: ``[B, NUM_BINS]`` float32 log-softmax over the (allowed) coordinate tokens at
    coordinate-slot rows, ``nan`` in the other rows. ``masked_logits`` (``None`` unless asked for with
    ``with_masked_logits``): ``[B, V]`` logits after the grammar's mask and before the coordexp decision,
    i.e. the logits whose log-softmax is ``logprobs`` (the same tensor as ``logits`` except under
    coordexp at a coordinate slot); a backend that log-softmaxes what it records can record these
    instead of ``logprobs`` and skip one ``[B, V]`` log-softmax per step.
    """

    logits: Tensor
    chosen: Tensor
    logprobs: Optional[Tensor]
    coord_slot: Tensor
    coord_logprobs: Tensor
    masked_logits: Optional[Tensor] = None


def round_half_up(x: Tensor) -> Tensor:
    """The codec's rounding (``floor(x + 0.5)``) on a tensor of fractional bins -> int64."""
    return torch.floor(x + 0.5).to(torch.int64)


# How a kind of state masks one row in place (cached per kind, vocabulary size and device):
# ("all",) nothing forbidden; ("range", a, b) only the columns a..b-1 allowed (the coordinate slots);
# ("keep", ids) few allowed: save them, fill the row with -inf, write them back;
# ("drop", ids) few forbidden: fill those columns with -inf (a free description).
_PlanT = tuple


def _mask_plan(grammar: "AnswerGrammar", state: GrammarState, vocab_size: int, device,
               remaining: Optional[int]) -> _PlanT:
    key = ("plan",) + grammar._mask_key(state, remaining) + (int(vocab_size), str(device))
    plan = grammar._masks.get(key)
    if plan is not None:
        return plan
    ids = grammar.allowed_ids(state, remaining)
    if ids is None:
        plan = ("all",)
    else:
        ids = [i for i in ids if i < vocab_size]
        if ids and ids == list(range(ids[0], ids[0] + len(ids))) and len(ids) > 1:
            plan = ("range", ids[0], ids[-1] + 1)
        elif 2 * len(ids) <= vocab_size:
            plan = ("keep", torch.tensor(ids, dtype=torch.long, device=device))
        else:
            allowed = torch.zeros(vocab_size, dtype=torch.bool)
            allowed[torch.tensor(ids, dtype=torch.long)] = True
            plan = ("drop", (~allowed).nonzero().flatten().to(device))
    grammar._masks[key] = plan
    return plan


def _row_index(grammar: "AnswerGrammar", rows: Tuple[int, ...], batch: int, device):
    """Rows ``rows`` of a ``[batch, V]`` tensor as an indexer: a slice when they are all rows, else a cached
    ``LongTensor`` (cached so that a step does not copy a fresh index list to the device)."""
    if len(rows) == batch:
        return slice(None)
    key = ("rows", rows, str(device))
    t = grammar._masks.get(key)
    if t is None:
        if len(grammar._masks) > 4096:  # bound the cache (row patterns of large batches)
            for k in [k for k in grammar._masks if k[0] == "rows"]:
                del grammar._masks[k]
        t = torch.tensor(rows, dtype=torch.long, device=device)
        grammar._masks[key] = t
    return t


def _apply_plan(x: Tensor, rows: Optional[Tuple[int, ...]], plan: _PlanT) -> None:
    """Mask ``rows`` of ``x`` ``[B, V]`` (``None``: all rows) in place by ``plan``.

    A subset of rows is masked row by row through basic slicing (each row a contiguous view, filled like a
    ``memset``): on CPU that is 3-6x faster than one advanced-index assignment over the same rows
    (``bench/results_decode.md``)."""
    kind = plan[0]
    if kind == "all":
        return
    neg = float("-inf")
    targets = [x] if rows is None else [x[i:i + 1] for i in rows]
    if kind == "range":
        a, b = plan[1], plan[2]
        for t in targets:
            t[:, :a].fill_(neg)
            t[:, b:].fill_(neg)
    elif kind == "keep":
        ids = plan[1]
        for t in targets:
            kept = t.index_select(1, ids)
            t.fill_(neg)
            t.index_copy_(1, ids, kept)
    else:  # drop
        ids = plan[1]
        for t in targets:
            t.index_fill_(1, ids, neg)


def apply_grammar(grammar: AnswerGrammar, logits: Tensor, states: Sequence[GrammarState],
                  with_logprobs: bool = True,
                  remaining: Union[None, int, Sequence[Optional[int]]] = None, *,
                  inplace: bool = False, with_masked_logits: bool = False) -> GrammarStep:
    """One decoding step under ``grammar`` for ``logits`` ``[B, V]`` and the ``B`` rows' ``states``.

    ``remaining``: tokens each row may still generate, this one included (one int for all rows, one per
    row, or None: unlimited); see ``AnswerGrammar.allowed_ids``. ``inplace``: mask ``logits`` itself
    instead of a copy, for a backend that hands over a tensor of its own (transformers' float32 copy of
    the step's logits, vLLM's logits); the returned ``logits`` is then that tensor, except under coordexp
    at a step with a coordinate slot when ``logprobs`` or ``masked_logits`` are asked for (``logits`` then
    holds the masked logits and the returned ``GrammarStep.logits`` is a new tensor).
    ``with_masked_logits``: also return ``GrammarStep.masked_logits``.

    The same function serves every inference backend. Cost: rows in the same kind of state are masked
    together, in place, touching only what the kind needs (a coordinate slot: fill the columns outside
    the ``NUM_BINS`` coordinate tokens; start/post: save the few allowed logits, fill the row, write them
    back; a free description: fill the few forbidden columns), plus a ``[B, V]`` copy when not
    ``inplace`` and a ``[B, V]`` log-softmax with ``with_logprobs``; under coordexp a new ``[B, V]`` tensor
    for the decision when the masked logits are asked for at a step with a coordinate slot. Plans and row
    indices are cached.
    Raises ``GrammarError`` when ``len(states) != B``.
    """
    if logits.ndim != 2 or logits.shape[0] != len(states):
        raise GrammarError(f"logits must be [batch, vocab] with one state per row: {tuple(logits.shape)} "
                           f"for {len(states)} states")
    v = grammar.vocab
    B, V = logits.shape
    device = logits.device
    chosen = torch.full((B,), -1, dtype=torch.long, device=device)
    coord_logprobs = torch.full((B, v.num_bins), float("nan"), dtype=torch.float32, device=device)
    coord_rows = tuple(i for i, s in enumerate(states) if s.phase == COORD)
    coord_slot = torch.zeros(B, dtype=torch.bool, device=device)
    if coord_rows:
        coord_slot[_row_index(grammar, coord_rows, B, device)] = True
    if grammar.mode == FREE:
        lp = torch.log_softmax(logits.float(), dim=-1) if with_logprobs else None
        return GrammarStep(logits, chosen, lp, coord_slot, coord_logprobs,
                           logits if with_masked_logits else None)
    if remaining is None or isinstance(remaining, int):
        remaining = [remaining] * B
    x = logits if inplace else logits.clone()
    decide = grammar.mode == COORDEXP and bool(coord_rows)
    groups: Dict[_PlanT, List[int]] = {}
    plans: Dict[int, _PlanT] = {}
    for i, (s, r) in enumerate(zip(states, remaining)):
        if s.phase in (FREE_PHASE, DONE):
            continue
        plan = _mask_plan(grammar, s, V, device, r)
        key = (plan[0], plan[1], plan[2]) if plan[0] == "range" else (plan[0], id(plan[1]))
        plans[key] = plan
        groups.setdefault(key, []).append(i)
    for key, rows in groups.items():
        _apply_plan(x, None if len(rows) == B else tuple(rows), plans[key])
    masked = x
    if coord_rows:
        cr = _row_index(grammar, coord_rows, B, device)
        block = x[cr, v.coord_start:v.coord_end]
        coord_logprobs[cr] = torch.log_softmax(block.float(), dim=-1)
        if decide:
            bins = round_half_up(expected_bins(block)).clamp(0, v.num_bins - 1)
            ids = bins + v.coord_start
            if with_logprobs or with_masked_logits:
                # Keep ``x`` as the masked logits; the decision goes to a new tensor (a fill, not a copy,
                # of the coordinate rows).
                out = torch.full_like(x, float("-inf"))
                coord_set = set(coord_rows)
                for i in range(B):
                    if i not in coord_set:
                        out[i].copy_(x[i])
                x = out
            if isinstance(cr, slice):
                x.fill_(float("-inf"))
                x.scatter_(1, ids.unsqueeze(1), 0.0)
                chosen.copy_(ids)
            else:
                for i in coord_rows:
                    x[i].fill_(float("-inf"))
                x[cr, ids] = 0.0
                chosen[cr] = ids
    lp = torch.log_softmax(masked.float(), dim=-1) if with_logprobs else None
    return GrammarStep(x, chosen, lp, coord_slot, coord_logprobs, masked if with_masked_logits else None)
