"""One decoding step under the answer grammar on a ``[batch, vocab]`` logits tensor (no ms-swift import).

API: ``apply_grammar(grammar, logits, states, ...)`` -> ``GrammarStep``, the one torch function both inference
backends (transformers, vLLM) call. How the masks are applied and what they cost: docs/design/grammar.md
("The decoding step").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .coordexp import decide_bins
from .grammar_machine import COORD, COORDEXP, DONE, FREE, FREE_PHASE, AnswerGrammar, GrammarState
from .grammar_vocab import GrammarError


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
            bins = decide_bins(block)
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
