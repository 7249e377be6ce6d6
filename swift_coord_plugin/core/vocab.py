"""Token ids of the coordinate vocabulary in a concrete tokenizer (no ms-swift import)."""
from __future__ import annotations

from dataclasses import dataclass

from .codec import NUM_BINS, OBJ_END, OBJ_START, coord_token


class VocabError(ValueError):
    pass


@dataclass(frozen=True)
class CoordVocab:
    """Ids of ``<|coord_0|>``..``<|coord_999|>`` (contiguous) and of the two object markers."""

    coord_start: int  # id of <|coord_0|>; <|coord_k|> is coord_start + k
    obj_start: int
    obj_end: int
    num_bins: int = NUM_BINS

    @property
    def coord_end(self) -> int:
        """One past the id of the last coordinate token."""
        return self.coord_start + self.num_bins

    def is_coord(self, token_id: int) -> bool:
        return self.coord_start <= token_id < self.coord_end

    def coord_id(self, k: int) -> int:
        return self.coord_start + int(k)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "CoordVocab":
        """Look the tokens up and check they are single, contiguous, ordered ids.

        Raises ``VocabError`` saying what is missing, e.g. when the model was loaded without the
        plugin's tokens (use ``--model_type qwen3_vl_coord`` or ``--new_special_tokens``).
        """
        tok = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps the tokenizer
        vocab = tok.get_vocab()
        missing = [t for t in (coord_token(0), coord_token(NUM_BINS - 1), OBJ_START, OBJ_END) if t not in vocab]
        if missing:
            raise VocabError(
                f"the tokenizer lacks the coordinate tokens {missing}: load the model with "
                "--model_type qwen3_vl_coord (adds them) or pass them with --new_special_tokens")
        start = vocab[coord_token(0)]
        for k in range(NUM_BINS):
            if vocab.get(coord_token(k)) != start + k:
                raise VocabError(
                    f"coordinate token ids are not contiguous: {coord_token(k)} has id "
                    f"{vocab.get(coord_token(k))}, expected {start + k}")
        # One token each when encoded inside text.
        probe = tok.encode(f"a {coord_token(7)}{OBJ_START}{OBJ_END}", add_special_tokens=False)
        if start + 7 not in probe or vocab[OBJ_START] not in probe or vocab[OBJ_END] not in probe:
            raise VocabError("coordinate tokens are split when encoded: they must be added as special tokens")
        return cls(coord_start=start, obj_start=vocab[OBJ_START], obj_end=vocab[OBJ_END])
