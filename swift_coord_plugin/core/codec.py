"""The sequence codec: the one definition of how boxes become tokens and back (no ms-swift, no torch).

API: the token strings (``coord_token``, ``new_tokens``, ``OBJ_START`` / ``OBJ_END``, ``coord_bin_of``), the
target text (``DetObject``, ``render_object`` / ``render_objects``: ``<obj_start> {desc} <|coord_x1|>..<|coord_y2|>
<obj_end>`` per object), what a sample may hold (``clean_desc``, ``desc_problem``, ``bbox_problem``,
``bins_problem``) and the response parser (``parse_objects``, ``PARSE_REASONS``). The bin rule (``core.bins``)
and the object order policies (``core.order``) are re-exported here. Rules: docs/design/codec.md.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Tuple

# The bin rule and the object order have their own modules; their names stay reachable as ``codec.X``.
from .bins import (NUM_BINS, Bins, Box, dequantize, dequantize_box, denormalize_box, is_narrow, normalize_box,
                   quantize, quantize_box, target_bins, widen_bins)  # noqa: F401
from .order import (DEFAULT_ORDER, ORDER_ENV, ORDER_POLICIES, ORDER_SEED_ENV, OrderKey, OrderPolicy, draw_order,
                    order_indices, order_key, order_objects, order_policy, order_seed, register_order_policy)  # noqa: F401

COORD_TOKEN_PREFIX = "<|coord_"
COORD_TOKEN_SUFFIX = "|>"
OBJ_START = "<obj_start>"
OBJ_END = "<obj_end>"
DEFAULT_PROMPT = "Describe all objects in the image with their bounding boxes."


def coord_token(k: int) -> str:
    """Spelling of the token for bin ``k`` (``0 <= k < NUM_BINS``)."""
    if not 0 <= int(k) < NUM_BINS:
        raise ValueError(f"coordinate bin {k} outside 0..{NUM_BINS - 1}")
    return f"{COORD_TOKEN_PREFIX}{int(k)}{COORD_TOKEN_SUFFIX}"


def new_tokens() -> List[str]:
    """The tokens the plugin adds, in id order: the coordinate bins 0..999 then the two markers.

    The order matters: added in this order, ``id(<|coord_k|>) == id(<|coord_0|>) + k``.
    """
    return [coord_token(k) for k in range(NUM_BINS)] + [OBJ_START, OBJ_END]


# Only the canonical spellings <|coord_0|>..<|coord_999|> (no leading zeros): exactly the added tokens.
COORD_TOKEN_RE = re.compile(r"<\|coord_(0|[1-9]\d{0,2})\|>")
# Splits text into coordinate tokens, markers and the text between them.
_PIECE_RE = re.compile(r"(<\|coord_(?:0|[1-9]\d{0,2})\|>|<obj_start>|<obj_end>)")


def coord_bin_of(piece: str) -> Optional[int]:
    """Bin index if ``piece`` is exactly one valid coordinate token, else None."""
    m = COORD_TOKEN_RE.fullmatch(piece)
    if m is None:
        return None
    k = int(m.group(1))
    return k if k < NUM_BINS else None


# ----------------------------------------------------------------------------- objects
@dataclass(frozen=True)
class DetObject:
    """One object of a sample: a description and a normalised ``(x1, y1, x2, y2)`` box."""

    desc: str
    bbox: Box

    @property
    def bins(self) -> Bins:
        """The target bins (``target_bins``: quantised, a side narrower than a bin widened to one bin)."""
        return target_bins(self.bbox)


def render_object(desc: str, bins: Sequence[int]) -> str:
    if len(bins) != 4:
        raise ValueError(f"a box needs 4 coordinates, got {len(bins)}")
    coords = "".join(coord_token(k) for k in bins)
    return f"{OBJ_START} {desc} {coords} {OBJ_END}"


def render_objects(objects: Iterable[DetObject]) -> str:
    """Assistant target for objects already in the order they should be written."""
    return "".join(render_object(o.desc, o.bins) for o in objects)


def clean_desc(desc: str) -> str:
    """Descriptions are single-line text without the markup of the codec, in Unicode NFC.

    NFC because the Qwen tokenizer normalises its input to NFC: a decomposed "crème" (e + combining
    accent) would train as the composed form anyway, and evaluation must compare the same form.
    """
    return unicodedata.normalize("NFC", " ".join(str(desc).split()))


def desc_problem(desc: object) -> Optional[str]:
    """Why ``desc`` cannot be a training description, or None if it can.

    Refused: non-strings, empty text, codec markup, any ``<``, and a space followed by a digit (Unicode
    category N) inside the text. The last two are what the answer grammar (``core.grammar``) cannot write
    after Qwen's pre-tokenizer (a bare space token before a digit is the separator that ends a description);
    a description that *starts* with a digit ("3D printer", "50 cent coin") is writable and accepted.
    """
    if not isinstance(desc, str):
        return f"desc must be a string, got {type(desc).__name__}"
    d = clean_desc(desc)
    if not d:
        return "desc is empty"
    if _PIECE_RE.search(d) or "<|" in d:
        return f"desc {desc!r} contains token markup"
    if "<" in d:
        return (f"desc {desc!r} contains '<': the answer grammar never writes '<' (markup such as <|coord_5|>, "
                "<obj_end> or <think> starts with it), so such an object could not be decoded; write it without '<'")
    for i in range(1, len(d)):
        if d[i - 1] == " " and unicodedata.category(d[i]).startswith("N"):
            return (f"desc {desc!r} has a space before a digit ({d[max(0, i - 8):i + 3]!r}): the tokenizer writes "
                    "that space as the separator token that ends a description before its box, so constrained "
                    "decoding without a category list could never write it; join or hyphenate it "
                    f"({d[:i - 1] + '-' + d[i:]!r})")
    return None


def bbox_problem(bbox: object) -> Optional[str]:
    """Why ``bbox`` is not a valid normalised box, or None if it is."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox must be a list of 4 numbers, got {bbox!r}"
    try:
        x1, y1, x2, y2 = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return f"bbox must hold numbers, got {bbox!r}"
    if any(math.isnan(v) or math.isinf(v) for v in (x1, y1, x2, y2)):
        return f"bbox holds NaN or inf: {bbox!r}"
    if min(x1, y1, x2, y2) < 0.0 or max(x1, y1, x2, y2) > 1.0:
        return f"bbox {bbox!r} outside [0, 1] (boxes are normalised x1, y1, x2, y2)"
    if x2 < x1 or y2 < y1:
        return f"bbox {bbox!r} has x2 < x1 or y2 < y1"
    return None


def bins_problem(bins: object) -> Optional[str]:
    """Why ``bins`` is not a valid quantised box (4 ints in 0..NUM_BINS-1, x1<=x2, y1<=y2), or None."""
    if not isinstance(bins, (list, tuple)) or len(bins) != 4:
        return f"a quantised box must be 4 bins, got {bins!r}"
    if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < NUM_BINS for k in bins):
        return f"bins must be integers in 0..{NUM_BINS - 1}, got {bins!r}"
    if bins[2] < bins[0] or bins[3] < bins[1]:
        return f"bins {bins!r} have x2 < x1 or y2 < y1"
    return None


# ----------------------------------------------------------------------------- parsing
# Reasons a piece of a response is dropped or repaired; the evaluator reports these counts.
DROP_INCOMPLETE = "dropped_incomplete_box"          # fewer than 4 coordinates
DROP_EXTRA_COORDS = "dropped_extra_coordinates"     # more than 4 coordinates in one object
DROP_BAD_COORD = "dropped_non_coordinate_in_box"    # text where a coordinate belongs
DROP_EMPTY_DESC = "dropped_empty_desc"
DROP_DUPLICATE = "dropped_duplicate"
DROP_TRUNCATED = "dropped_truncated"                # response ended inside an object
REPAIR_MISSING_END = "repaired_missing_obj_end"     # a complete box followed by <obj_start> / end of text
REPAIR_REVERSED = "repaired_reversed_coordinates"   # x2 < x1 or y2 < y1: the pair is swapped
IGNORED_STRAY_TEXT = "ignored_stray_text"           # non-space text outside any object
IGNORED_STRAY_COORDS = "ignored_coordinates_outside_object"
IGNORED_STRAY_END = "ignored_unmatched_obj_end"

PARSE_REASONS = (
    DROP_INCOMPLETE, DROP_EXTRA_COORDS, DROP_BAD_COORD, DROP_EMPTY_DESC, DROP_DUPLICATE, DROP_TRUNCATED,
    REPAIR_MISSING_END, REPAIR_REVERSED, IGNORED_STRAY_TEXT, IGNORED_STRAY_COORDS, IGNORED_STRAY_END,
)


@dataclass
class ParsedObject:
    """An object recovered from a response.

    ``bins`` are in (x1, y1, x2, y2) order after any repair; ``coord_pieces`` are the indices of the
    pieces (tokens) that carried each of them, in that same order, so that per-token data such as
    log-probabilities can be attached; ``desc_pieces`` likewise for the description.
    """

    desc: str
    bins: Bins
    coord_pieces: Tuple[int, int, int, int]
    desc_pieces: Tuple[int, ...] = ()
    repaired: Tuple[str, ...] = ()

    @property
    def bbox(self) -> Box:
        return dequantize_box(self.bins)


@dataclass
class ParseResult:
    objects: List[ParsedObject] = field(default_factory=list)
    counts: dict = field(default_factory=dict)

    def count(self, reason: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n


def split_pieces(text: str) -> List[str]:
    """Split text into coordinate tokens, markers and the plain text between them."""
    return [p for p in _PIECE_RE.split(text) if p != ""]


def parse_pieces(pieces: Sequence[str], dedupe: bool = True) -> ParseResult:
    """Recover every complete object from a sequence of pieces (tokens or text fragments).

    Never raises on any input. The rules, each counted under its reason in ``ParseResult.counts``:

    * An object opens at ``<obj_start>``. Text up to its first coordinate is its description.
    * Exactly 4 coordinates make a box. An object closes at ``<obj_end>``; if instead a new
      ``<obj_start>`` or the end of the response arrives after exactly 4 coordinates, the object is
      kept (``repaired_missing_obj_end``); with fewer, it is dropped (``dropped_incomplete_box`` /
      ``dropped_truncated`` at the end of the response).
    * More than 4 coordinates: dropped (``dropped_extra_coordinates``) - which four were meant is
      unknowable.
    * Non-space text after the first coordinate of an object and before its close (a
      non-coordinate token where a coordinate belongs): the object is dropped
      (``dropped_non_coordinate_in_box``).
    * ``x2 < x1`` or ``y2 < y1``: the two values are swapped (``repaired_reversed_coordinates``).
    * An empty description: dropped (``dropped_empty_desc``).
    * With ``dedupe``, an object identical (description and bins) to an earlier one of the same
      response is dropped (``dropped_duplicate``); it could only be a false positive.
    * Text, coordinates or ``<obj_end>`` outside any object are ignored and counted.
    """
    result = ParseResult()
    seen = set()
    state = None  # None outside an object, else dict(desc=[...], desc_idx=[...], coords=[...], bad=bool)

    def close(obj, how: Optional[str]) -> None:
        coords = obj["coords"]
        if obj["bad"]:
            result.count(DROP_BAD_COORD)
            return
        if len(coords) > 4:
            result.count(DROP_EXTRA_COORDS)
            return
        if len(coords) < 4:
            result.count(DROP_TRUNCATED if how == "eof" else DROP_INCOMPLETE)
            return
        desc = clean_desc("".join(obj["desc"]))
        if not desc:
            result.count(DROP_EMPTY_DESC)
            return
        repaired = []
        if how is not None:
            result.count(REPAIR_MISSING_END)
            repaired.append(REPAIR_MISSING_END)
        (x1, i1), (y1, j1), (x2, i2), (y2, j2) = coords
        if x2 < x1 or y2 < y1:
            result.count(REPAIR_REVERSED)
            repaired.append(REPAIR_REVERSED)
            if x2 < x1:
                x1, x2, i1, i2 = x2, x1, i2, i1
            if y2 < y1:
                y1, y2, j1, j2 = y2, y1, j2, j1
        key = (desc.lower(), (x1, y1, x2, y2))
        if dedupe and key in seen:
            result.count(DROP_DUPLICATE)
            return
        seen.add(key)
        result.objects.append(ParsedObject(desc, (x1, y1, x2, y2), (i1, j1, i2, j2),
                                           tuple(obj["desc_idx"]), tuple(repaired)))

    for idx, raw in enumerate(pieces):
        piece = raw if isinstance(raw, str) else ("" if raw is None else str(raw))
        if piece == OBJ_START:
            if state is not None:
                close(state, "next")
            state = {"desc": [], "desc_idx": [], "coords": [], "bad": False}
            continue
        if piece == OBJ_END:
            if state is None:
                result.count(IGNORED_STRAY_END)
            else:
                close(state, None)
                state = None
            continue
        k = coord_bin_of(piece.strip()) if "<|coord_" in piece else None
        if k is not None:
            if state is None:
                result.count(IGNORED_STRAY_COORDS)
            else:
                state["coords"].append((k, idx))
            continue
        if state is None:
            if piece.strip():
                result.count(IGNORED_STRAY_TEXT)
            continue
        if state["coords"]:
            if piece.strip():
                state["bad"] = True
        else:
            state["desc"].append(piece)
            state["desc_idx"].append(idx)
    if state is not None:
        close(state, "eof")
    return result


def parse_objects(text: str, dedupe: bool = True) -> ParseResult:
    """Parse a response (text with the special tokens kept) into objects; see ``parse_pieces``."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return parse_pieces(split_pieces(text), dedupe=dedupe)
