"""The sequence codec: the one definition of how boxes become tokens and back.

Every other module (data conversion, the template, the losses, the evaluator) imports its rules
from here. Nothing in this module imports ms-swift or torch.

Rules
-----
* Coordinates are normalised to [0, 1] relative to the image width (x) and height (y).
* Bin rule: ``k = round(c * NUM_BINS)`` with halves rounded up (``floor(c * NUM_BINS + 0.5)``),
  clamped to ``0 .. NUM_BINS - 1``. Decoding: ``k / NUM_BINS``. The worst-case error is half a
  bin (0.0005 of the side) except at ``c = 1`` which decodes to 0.999.
* Targets: a side whose two ends fall into one bin is widened to one bin (``target_bins``), so no target
  box has zero area.
* Object order: a policy chosen with ``COORD_ORDER`` (``ORDER_POLICIES``). The default, ``y1x1``
  (the spec), is ``y1`` ascending, then ``x1`` ascending, compared on the *bins* the model sees first
  and on the continuous normalised values only among equal bins; remaining ties keep their input order
  (a stable sort). ``x1y1`` swaps the two. ``random`` writes the ``y1x1`` order into files and re-draws a
  permutation per sample and epoch when a sample is encoded (``draw_order``, seeded).
* Target text, per object, with the exact spacing (one ASCII space on each side of ``desc``)::

      <obj_start> {desc} <|coord_x1|><|coord_y1|><|coord_x2|><|coord_y2|> <obj_end>

  Objects are concatenated with no separator; an image with no object renders as ``""``.
"""
from __future__ import annotations

import hashlib
import math
import os
import random
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

NUM_BINS = 1000
COORD_TOKEN_PREFIX = "<|coord_"
COORD_TOKEN_SUFFIX = "|>"
OBJ_START = "<obj_start>"
OBJ_END = "<obj_end>"
DEFAULT_PROMPT = "Describe all objects in the image with their bounding boxes."

Box = Tuple[float, float, float, float]
Bins = Tuple[int, int, int, int]


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


# ----------------------------------------------------------------------------- numbers
def quantize(c: float) -> int:
    """Normalised coordinate -> bin index (round half up, clamp to 0..NUM_BINS-1)."""
    c = float(c)
    if math.isnan(c):
        raise ValueError("cannot quantise NaN")
    k = math.floor(c * NUM_BINS + 0.5)
    return min(max(k, 0), NUM_BINS - 1)


def dequantize(k: float) -> float:
    """Bin index (possibly fractional, e.g. an expectation) -> normalised coordinate."""
    return float(k) / NUM_BINS


def quantize_box(box: Sequence[float]) -> Bins:
    return tuple(quantize(c) for c in box)  # type: ignore[return-value]


def dequantize_box(bins: Sequence[float]) -> Box:
    return tuple(dequantize(k) for k in bins)  # type: ignore[return-value]


def widen_bins(bins: Sequence[int]) -> Bins:
    """``bins`` ``(x1, y1, x2, y2)`` with every side whose two ends share a bin widened to one bin.

    A box narrower than a bin quantises to ``x1 == x2`` (or ``y1 == y2``): a zero-area target whose IoU with
    any prediction is 0, and whose IoU-loss gradient on a thin prediction is thousands of times a normal
    box's. Such a side ``(k, k)`` becomes ``(k, k + 1)``, and ``(998, 999)`` at the last bin: the far end
    moves, so ``x1``/``y1``, which decide the object order, keep their bins (except at bin 999).
    Other sides are returned unchanged.
    """
    x1, y1, x2, y2 = (int(k) for k in bins)
    if x1 == x2:
        x1, x2 = (x1, x1 + 1) if x1 < NUM_BINS - 1 else (x1 - 1, x1)
    if y1 == y2:
        y1, y2 = (y1, y1 + 1) if y1 < NUM_BINS - 1 else (y1 - 1, y1)
    return (x1, y1, x2, y2)


def is_narrow(bbox: Sequence[float]) -> bool:
    """Whether the normalised ``bbox`` has a side narrower than a bin (both ends in one bin after
    ``quantize``); ``target_bins`` widens such a side."""
    k = quantize_box(bbox)
    return k[0] == k[2] or k[1] == k[3]


def target_bins(bbox: Sequence[float]) -> Bins:
    """The bins a target box is written with: ``quantize_box``, then ``widen_bins`` (no side of zero extent).
    The template, the dataset preprocessor and ``DetObject.bins`` use this; evaluation never does (it scores
    against the ground truth in pixels)."""
    return widen_bins(quantize_box(bbox))


def normalize_box(xyxy_pixels: Sequence[float], width: float, height: float, clip: bool = True) -> Box:
    """Absolute pixel ``[x1, y1, x2, y2]`` -> normalised ``[0, 1]`` box (clipped by default)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    x1, y1, x2, y2 = (float(v) for v in xyxy_pixels)
    box = (x1 / width, y1 / height, x2 / width, y2 / height)
    if clip:
        box = tuple(min(max(v, 0.0), 1.0) for v in box)  # type: ignore[assignment]
    return box


def denormalize_box(box: Sequence[float], width: float, height: float) -> Box:
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 * width, y1 * height, x2 * width, y2 * height)


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


# ----------------------------------------------------------------------------- object order
ORDER_ENV = "COORD_ORDER"             # the object order policy of training targets
ORDER_SEED_ENV = "COORD_ORDER_SEED"   # the seed of the ``random`` policy's draws (default 0)
DEFAULT_ORDER = "y1x1"

OrderKey = Callable[[Sequence[float]], tuple]


@dataclass(frozen=True)
class OrderPolicy:
    """How the objects of a target are ordered.

    ``key(bbox)``: the sort key of a normalised ``(x1, y1, x2, y2)`` box (stable sort, ascending): the order
    written into files and, for a fixed policy, the order trained on. ``redraw``: the template
    re-orders every time it encodes a sample, with ``draw_order`` (seeded per sample and epoch), starting
    from the ``key`` order.
    """

    name: str
    key: OrderKey
    redraw: bool = False
    description: str = ""


def _y1x1_key(bbox: Sequence[float]) -> tuple:
    y1, x1 = float(bbox[1]), float(bbox[0])
    return (quantize(y1), quantize(x1), y1, x1)


def _x1y1_key(bbox: Sequence[float]) -> tuple:
    y1, x1 = float(bbox[1]), float(bbox[0])
    return (quantize(x1), quantize(y1), x1, y1)


ORDER_POLICIES: Dict[str, OrderPolicy] = {}


def register_order_policy(policy: OrderPolicy, exist_ok: bool = False) -> None:
    """Add a policy under ``policy.name`` (then selectable with ``COORD_ORDER=<name>``)."""
    if policy.name in ORDER_POLICIES and not exist_ok:
        raise ValueError(f"order policy {policy.name!r} is already registered")
    ORDER_POLICIES[policy.name] = policy


register_order_policy(OrderPolicy("y1x1", _y1x1_key, description="top to bottom, then left to right (the spec)"))
register_order_policy(OrderPolicy("x1y1", _x1y1_key, description="left to right, then top to bottom"))
register_order_policy(OrderPolicy("random", _y1x1_key, redraw=True,
                                  description="a new permutation per sample and epoch, seeded"))


def order_policy(name: Optional[str] = None, environ: Optional[Mapping[str, str]] = None) -> OrderPolicy:
    """The policy ``name``, or the one ``COORD_ORDER`` names (default ``y1x1``). ``ValueError`` names the
    setting and the registered policies when it is unknown."""
    if name is None:
        environ = os.environ if environ is None else environ
        name = environ.get(ORDER_ENV, "") or DEFAULT_ORDER
    key = str(name).strip().lower()
    if key not in ORDER_POLICIES:
        raise ValueError(f"{ORDER_ENV}={name!r} is not an object order policy; registered: {sorted(ORDER_POLICIES)}")
    return ORDER_POLICIES[key]


def order_seed(environ: Optional[Mapping[str, str]] = None) -> int:
    """``COORD_ORDER_SEED`` as an integer (default 0); ``ValueError`` naming it otherwise."""
    environ = os.environ if environ is None else environ
    raw = environ.get(ORDER_SEED_ENV, "0")
    try:
        return int(str(raw).strip())
    except ValueError:
        raise ValueError(f"{ORDER_SEED_ENV}={raw!r} is not an integer") from None


def order_key(bbox: Sequence[float], policy: Optional[OrderPolicy] = None) -> tuple:
    """The sort key of ``bbox`` under ``policy`` (default: the ``y1x1`` policy, bins first)."""
    return (policy or ORDER_POLICIES[DEFAULT_ORDER]).key(bbox)


def order_indices(bboxes: Sequence[Sequence[float]], policy: Optional[OrderPolicy] = None) -> List[int]:
    """Indices of normalised ``bboxes`` in the policy's key order (stable for ties)."""
    p = policy or ORDER_POLICIES[DEFAULT_ORDER]
    return sorted(range(len(bboxes)), key=lambda i: p.key(bboxes[i]))


def order_objects(objects: Iterable[DetObject], policy: Optional[OrderPolicy] = None) -> List[DetObject]:
    """Objects in the policy's key order (default ``y1x1``: bins of ``y1`` then ``x1``, then the continuous
    values), stable for ties."""
    p = policy or ORDER_POLICIES[DEFAULT_ORDER]
    return sorted(objects, key=lambda o: p.key(o.bbox))


def draw_order(n: int, sample_key: str, epoch: int, seed: int) -> List[int]:
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch, sample_key)``.

    The generator is seeded with the SHA-256 of those three (not Python's salted ``hash``), so the same run
    draws the same orders in every process and on every machine, and a new epoch draws new ones.
    """
    digest = hashlib.sha256(f"{int(seed)}|{int(epoch)}|{sample_key}".encode("utf-8")).digest()
    perm = list(range(n))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(perm)
    return perm


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
