"""Reading ``swift infer`` result files: one JSON object per line (no ms-swift import).

What a line holds (ms-swift 4.6, ``--result_path``): ``response`` (the generated text, special tokens
kept, the end-of-turn token removed), ``logprobs`` (``null``, or with ``--logprobs true``
``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", ...}, ...]}, ...]}``,
one entry per generated token, the end-of-turn token included), ``labels``, and the row's own columns:
``messages``, ``images`` (``[{"bytes": null, "path": ...}]``) and ``chat_template_kwargs``, where the
data pipeline keeps ``image_id``, ``width``, ``height`` (read with ``core.samples.row_meta``, which also
accepts them as top-level columns).

Objects are recovered with the codec's parser. With log-probabilities the generated tokens are parsed
(one piece per token) so that each coordinate keeps its own log-probability and top-k alternatives.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ..core import codec
from ..core.samples import row_key, row_meta
from ..data import textfiles

# Tokens that end a turn: the engine keeps them in ``logprobs`` but not in ``response``.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


class ResultsError(ValueError):
    """A result line that cannot be read; the message names the file, the line and the field."""


@dataclass(frozen=True)
class CoordToken:
    """One generated coordinate token.

    ``top`` holds the coordinate bins among the position's ``top_logprobs`` with their log-probabilities
    (None when the line has no ``top_logprobs``); ``top_k`` is how many alternatives were listed in all.
    """

    bin: int
    logprob: float
    top: Optional[Tuple[Tuple[int, float], ...]] = None
    top_k: int = 0
    index: Optional[int] = None  # its entry in ``logprobs.content`` (its position among the generated tokens)


@dataclass(frozen=True)
class PredictedObject:
    """A parsed object; ``coords`` (x1, y1, x2, y2 order) and ``desc_logprobs`` exist with logprobs."""

    desc: str
    bins: codec.Bins
    coords: Optional[Tuple[CoordToken, CoordToken, CoordToken, CoordToken]] = None
    desc_logprobs: Tuple[float, ...] = ()


@dataclass
class RowPrediction:
    """What one result line says about one image."""

    line: int
    image_id: Union[int, str, None]  # as written (see _id_field)
    file_name: Optional[str]
    width: Optional[int]
    height: Optional[int]
    objects: List[PredictedObject]
    parse_counts: Dict[str, int] = field(default_factory=dict)
    has_logprobs: bool = False
    # With logprobs: did generation end with an end-of-turn token (False: cut by max_new_tokens)?
    ended: Optional[bool] = None
    # With logprobs: does the parse of the tokens give the same boxes as the parse of ``response``?
    text_agrees: Optional[bool] = None
    image_path: Optional[str] = None  # the row's first image path as written (None: no path)
    row_key: Optional[str] = None  # ``core.samples.row_key`` (joins the row to its slots file line)


def count_lines(path: str) -> int:
    """Number of lines (the progress bar's total; blank lines included)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


# The per-token "bytes" arrays (UTF-8 of each token, unused here) are about half of a line with
# logprobs and most of its JSON values; they are cut before decoding, which halves the decoding time.
# The pattern cannot match inside a JSON string: there every '"' is escaped, never preceded by ', '.
# (The separators are those of ``json.dumps``, which ms-swift uses; other spellings are decoded as they are.)
_BYTES_RE = re.compile(r', "bytes": \[[^\]"]*\]')


try:  # a much faster decoder when installed (same results; its errors subclass json's)
    import orjson as _fast_json
except ImportError:  # pragma: no cover
    _fast_json = None


def _decode(raw: str):
    if _fast_json is not None:
        return _fast_json.loads(raw)
    return json.loads(_BYTES_RE.sub("", raw) if '"bytes"' in raw else raw)


def iter_lines(path: str) -> Iterator[Tuple[int, dict]]:
    """``(line_number, row)`` for each non-blank line; a line that is not a JSON object is an error.
    The file is read by ``data.textfiles`` (UTF-8, with or without a byte-order mark); another encoding is
    a ``ResultsError`` naming the file and the encoding."""
    try:
        for n, raw in textfiles.iter_lines(path):
            if not raw.strip():
                continue
            try:
                row = _decode(raw)
            except json.JSONDecodeError:
                try:  # decode the line as it is, for the position of the error
                    row = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise ResultsError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ResultsError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            yield n, row
    except textfiles.TextEncodingError as e:
        raise ResultsError(str(e)) from None


_SEP_RE = re.compile(r"[\\/]")


def image_path(images) -> Optional[str]:
    """The row's first image path (``images`` as swift writes it, or a plain path/list of paths)."""
    if isinstance(images, (list, tuple)):
        if not images:
            return None
        images = images[0]
    if isinstance(images, dict):
        images = images.get("path")
    if not isinstance(images, str) or not images.strip():
        return None
    return images.strip()


def image_file_name(images) -> Optional[str]:
    """Base name of the row's first image (``images`` as swift writes it, or a plain path/list of paths)."""
    path = image_path(images)
    return (_SEP_RE.split(path)[-1] or None) if path else None


def _id_field(row: dict, key: str, where: str) -> Union[int, str, None]:
    """An image id as written: an integer (also ``11.0``), or a string kept as it is (``"007"`` and ``"7"``
    may be two images of a file with string ids). The evaluator matches it against the ground truth's
    ids (``scoring.GtImages.internal_id``: ``"11"`` finds the integer id 11 of a file with integer ids)."""
    v = row.get(key)
    if isinstance(v, str) and v:
        return v
    return _int_field(row, key, where)


def _int_field(row: dict, key: str, where: str) -> Optional[int]:
    v = row.get(key)
    if v is None:
        return None
    if isinstance(v, bool):
        raise ResultsError(f"{where}: {key} must be an integer, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    raise ResultsError(f"{where}: {key} must be an integer, got {v!r}")


def _token_entries(logprobs, where: str) -> Optional[list]:
    """The per-token list of a ``logprobs`` field (None when the line has none)."""
    if logprobs is None:
        return None
    content = logprobs.get("content") if isinstance(logprobs, dict) else logprobs
    if content is None:
        return None
    if not isinstance(content, list):
        raise ResultsError(f"{where}: logprobs.content must be a list, got {type(content).__name__}")
    return content


def _logprob(entry, where: str, i: int, j: Optional[int] = None) -> float:
    """``entry['logprob']``; ``where``, ``i`` (token) and ``j`` (alternative) only name it in an error."""
    lp = entry.get("logprob")
    if type(lp) is float and lp < _INF:  # the common case, fast (NaN and +inf fail the comparison)
        return lp
    if isinstance(lp, bool) or not isinstance(lp, (int, float)) or math.isnan(lp) or lp == _INF:
        alt = "" if j is None else f".top_logprobs[{j}]"
        raise ResultsError(f"{where}: logprobs.content[{i}]{alt}: logprob must be a number below +infinity "
                           f"(-Infinity is accepted), got {lp!r}")
    return float(lp)


_INF = float("inf")


_BIN_CACHE: Dict[str, Optional[int]] = {}


def _bin_of(token: str) -> Optional[int]:
    """``codec.coord_bin_of``, memoised: top-k lists repeat the same few thousand tokens."""
    b = _BIN_CACHE.get(token, -1)
    if b == -1:
        b = codec.coord_bin_of(token)
        if len(_BIN_CACHE) < 200_000:
            _BIN_CACHE[token] = b
    return b


def _coord_token(entry: dict, k: int, where: str, i: int, keep_top: bool) -> CoordToken:
    top = entry.get("top_logprobs")
    if top is None or not keep_top:
        return CoordToken(k, _logprob(entry, where, i), index=i)
    if not isinstance(top, list):
        raise ResultsError(f"{where}: logprobs.content[{i}]: top_logprobs must be a list, got {type(top).__name__}")
    coords = []
    cache = _BIN_CACHE
    for j, alt in enumerate(top):  # the inner loop of CoordExp: kept lean
        tok = alt.get("token") if type(alt) is dict else None
        if type(tok) is not str:
            raise ResultsError(f"{where}: logprobs.content[{i}].top_logprobs[{j}] must be an object with a "
                               "string 'token'")
        b = cache.get(tok, -1)
        if b == -1:
            b = _bin_of(tok)
        if b is not None:
            lp = alt.get("logprob")
            if type(lp) is not float or not lp < _INF:
                lp = _logprob(alt, where, i, j)
            coords.append((b, lp))
    return CoordToken(k, _logprob(entry, where, i), tuple(coords), len(top), i)


def read_row(row: dict, line: int, path: str = "<results>", dedupe: bool = True,
             keep_top: bool = True) -> RowPrediction:
    """Parse one result line into objects with their per-token data. Raises ``ResultsError`` on a
    line that does not have the shape above (never on what the model wrote). ``keep_top=False``
    skips the ``top_logprobs`` (only CoordExp needs them)."""
    where = f"{path}:{line}"
    if "response" not in row:
        raise ResultsError(f"{where}: no 'response' field (is this a swift infer result file?)")
    response = row["response"]
    if response is None:
        response = ""
    if not isinstance(response, str):
        raise ResultsError(f"{where}: response must be a string, got {type(response).__name__}")
    meta = row_meta(row)
    pred = RowPrediction(
        line=line,
        image_id=_id_field(meta, "image_id", where),
        file_name=image_file_name(row.get("images")),
        image_path=image_path(row.get("images")),
        row_key=row_key(row),
        width=_int_field(meta, "width", where),
        height=_int_field(meta, "height", where),
        objects=[],
    )
    entries = _token_entries(row.get("logprobs"), where)
    if entries is None:
        parsed = codec.parse_objects(response, dedupe=dedupe)
        pred.parse_counts = parsed.counts
        pred.objects = [PredictedObject(o.desc, o.bins) for o in parsed.objects]
        return pred

    try:
        tokens = [e["token"] for e in entries]
        ok = all(type(t) is str for t in tokens)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("token"), str):
                raise ResultsError(f"{where}: logprobs.content[{i}] must be an object with a string 'token'")
    n = len(tokens)
    while n and tokens[n - 1] in END_OF_TURN_TOKENS:
        n -= 1
    pred.has_logprobs = True
    pred.ended = n < len(tokens)
    parsed = codec.parse_pieces(tokens[:n], dedupe=dedupe)
    pred.parse_counts = parsed.counts
    descs = [o.desc for o in parsed.objects]
    pred.text_agrees = "".join(tokens[:n]) == response
    if not pred.text_agrees:
        # Decoding a token at a time can differ from decoding the sequence (a multi-byte character
        # split over tokens). Same boxes in the same order: take the descriptions from the text.
        text = codec.parse_objects(response, dedupe=dedupe).objects
        if [o.bins for o in text] == [o.bins for o in parsed.objects]:
            pred.text_agrees = True
            descs = [o.desc for o in text]
    for o, desc in zip(parsed.objects, descs):
        coords = tuple(
            _coord_token(entries[i], k, where, i, keep_top) for k, i in zip(o.bins, o.coord_pieces))
        desc_lps = tuple(_logprob(entries[i], where, i) for i in o.desc_pieces)
        pred.objects.append(PredictedObject(desc, o.bins, coords, desc_lps))  # type: ignore[arg-type]
    return pred


def merge_counts(total: Dict[str, int], counts: Dict[str, int]) -> None:
    for k, v in counts.items():
        total[k] = total.get(k, 0) + v


def expected_bin(top: Sequence[Tuple[int, float]]) -> Optional[float]:
    """CoordExp of one position: ``sum_k p_k * k`` with ``p`` the top-k coordinate probabilities
    renormalised to sum to 1 (None when no coordinate token is among them, or when every one has
    log-probability ``-inf``: probability 0 cannot be renormalised, and 0/0 is a NaN coordinate)."""
    return expectation_and_mass(top)[0]


def coord_mass(top: Sequence[Tuple[int, float]]) -> float:
    """Probability the model gave the coordinate tokens listed in the top-k (before renormalising)."""
    return expectation_and_mass(top)[1]


def expectation_and_mass(top: Sequence[Tuple[int, float]]) -> Tuple[Optional[float], float]:
    """``(expected_bin(top), coord_mass(top))`` in one pass."""
    if not top:
        return None, 0.0
    m = max(lp for _, lp in top)
    if m == -_INF:  # every listed coordinate has probability 0 (grammar-masked engines write -Infinity)
        return None, 0.0
    z = e = 0.0
    for k, lp in top:
        w = math.exp(lp - m)  # shifted by the max: no underflow to 0/0
        z += w
        e += k * w
    return e / z, z * math.exp(m)
