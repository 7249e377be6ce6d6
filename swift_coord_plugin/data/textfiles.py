"""The one reader of the project's JSON and JSONL inputs: UTF-8, with or without a byte-order mark.

Annotation files, description maps, unified samples, validation files and ``swift infer`` results are all
read here (the converter, ``coord-eval``, the shards tool and the ``coord:`` dataset's check). UTF-8 is
what JSON requires (RFC 8259 section 8.1); a leading UTF-8 byte-order mark, which Windows tools write, is
skipped. Any other encoding is refused naming the file and the encoding found, never guessed: UTF-16 and
UTF-32 are recognised by their byte-order mark, or without one by the zero bytes ASCII text has in them
(Windows PowerShell 5.1's ``>`` writes UTF-16 LE with a mark). Bytes that are not UTF-8 further in are an
error naming the file, the line and the byte.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

UTF8_BOM = b"\xef\xbb\xbf"
# Longest marks first: the UTF-32 LE mark starts with the UTF-16 LE one.
_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32 LE (with a byte-order mark)"),
         (b"\x00\x00\xfe\xff", "UTF-32 BE (with a byte-order mark)"),
         (b"\xff\xfe", "UTF-16 LE (with a byte-order mark)"),
         (b"\xfe\xff", "UTF-16 BE (with a byte-order mark)"))
SNIFF_BYTES = 64
FIX = ("JSON and JSONL inputs must be UTF-8 (a UTF-8 byte-order mark is accepted): re-save the file as UTF-8 "
       "(PowerShell: `Get-Content IN | Set-Content -Encoding utf8 OUT`; Python: open(..., encoding='utf-8'))")


class TextEncodingError(ValueError):
    """A JSON/JSONL input that is not UTF-8 text; the message names the file, the encoding or the byte."""


def foreign_encoding(head: bytes) -> Optional[str]:
    """The name of a non-UTF-8 encoding that the first bytes of a file show, or None.

    ``head``: the file's first bytes (``SNIFF_BYTES`` are enough). Recognised: UTF-32/UTF-16 by their
    byte-order mark, and without one by the pattern of zero bytes that ASCII characters (every JSON
    structural character) have in them. None does not prove the file is UTF-8; decoding tells.
    """
    for bom, name in _BOMS:
        if head.startswith(bom):
            return name
    h = head[:SNIFF_BYTES - SNIFF_BYTES % 4]
    if len(h) >= 4 and b"\x00" in h:
        if all(h[i] == 0 for i in range(len(h)) if i % 4 != 0) and h[0]:
            return "UTF-32 LE (no byte-order mark)"
        if all(h[i] == 0 for i in range(len(h)) if i % 4 != 3) and h[3]:
            return "UTF-32 BE (no byte-order mark)"
        h2 = h[:len(h) - len(h) % 2]
        odd, even = h2[1::2], h2[0::2]
        if odd.count(0) >= len(odd) // 2 and even.count(0) < len(even) // 4:
            return "UTF-16 LE (no byte-order mark)"
        if even.count(0) >= len(even) // 2 and odd.count(0) < len(odd) // 4:
            return "UTF-16 BE (no byte-order mark)"
        return "binary data (zero bytes)"
    return None


def encoding_error(path: str, head: bytes) -> Optional[TextEncodingError]:
    """The error to raise for ``path`` whose first bytes are ``head``, or None when they look like UTF-8."""
    found = foreign_encoding(head)
    if found is None:
        return None
    return TextEncodingError(f"{path}: the file is {found} text, not UTF-8. {FIX}")


def check_encoding(path: str) -> None:
    """Raise ``TextEncodingError`` when the first bytes of ``path`` show another encoding than UTF-8
    (``OSError`` when it cannot be read). Cheap: reads ``SNIFF_BYTES``; the rest is checked as it is read."""
    with open(path, "rb") as f:
        err = encoding_error(path, f.read(SNIFF_BYTES))
    if err is not None:
        raise err


def decode_utf8(raw: bytes, path: str) -> str:
    """``raw`` (a whole file) as text, a leading UTF-8 byte-order mark removed; ``TextEncodingError``
    naming the encoding found, or the line and byte offset of the first byte that is not UTF-8."""
    err = encoding_error(path, raw[:SNIFF_BYTES])
    if err is not None:
        raise err
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise TextEncodingError(f"{path}:{line}: not UTF-8 text (byte offset {e.start}: {e.reason}). "
                                f"{FIX}") from None


def read_text(path: str) -> str:
    """The whole file as text (see ``decode_utf8``). Raises ``TextEncodingError``, or ``OSError``."""
    with open(path, "rb") as f:
        raw = f.read()
    return decode_utf8(raw, path)


def iter_lines(path: str) -> Iterator[Tuple[int, str]]:
    """``(line number from 1, text)`` of every line of a JSONL file, the newline kept, a leading UTF-8
    byte-order mark removed. Raises ``TextEncodingError`` before the first line for another encoding, and
    at the line that holds a byte that is not UTF-8; ``OSError`` when the file cannot be read."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
        err = encoding_error(path, head)
        if err is not None:
            raise err
        f.seek(3 if head.startswith(UTF8_BOM) else 0)
        for n, raw in enumerate(f, start=1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TextEncodingError(f"{path}:{n}: not UTF-8 text (byte {e.start} of the line: {e.reason}). "
                                        f"{FIX}") from None
