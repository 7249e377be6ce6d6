"""Token classes of a concrete tokenizer, as the answer grammar needs them (no ms-swift import).

API: ``GrammarError``; ``GrammarVocab.from_tokenizer(tokenizer, end_ids)`` -> ``GrammarVocab`` (coordinate
range, markers, the ``SEP``/``POST`` separators read off rendered probe objects, end-of-turn ids, description
ids); ``GrammarVocab.desc_tokens(desc)``. Rules: docs/design/grammar.md ("Token classes").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

from . import codec
from .codec import NUM_BINS, OBJ_START
from .vocab import CoordVocab, VocabError


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

