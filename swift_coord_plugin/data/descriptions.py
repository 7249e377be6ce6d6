"""When two category descriptions are the same one (no ms-swift import).

``normalize_desc`` is the form a description is compared in (by the evaluator's category rule and by
the converter); ``distinct_descriptions`` maps each normalised description to one category and raises
``AmbiguousCategoriesError`` for two annotated categories that share one: the converter refuses to write
such a dataset, the evaluator to score against such a ground truth (one rule for both).
"""
from __future__ import annotations

import re
from typing import Any, Collection, Dict, List, Mapping, Optional

from ..core import codec

_SEP_RE = re.compile(r"[\s_\-]+")
_STRIP = " \t\n.,;:!?\"'`()[]{}"


def normalize_desc(desc: str) -> str:
    """Unicode NFC (``codec.clean_desc``, as training writes descriptions), lower case; ``-``/``_``/runs of
    white space -> one space; surrounding punctuation removed. GT names and model descriptions both pass
    here, so "crème brûlée" matches whether either side was stored composed or decomposed."""
    return _SEP_RE.sub(" ", codec.clean_desc(desc).lower()).strip(_STRIP).strip()


class AmbiguousCategoriesError(ValueError):
    """Two or more annotated categories share a description; the message names their ids."""


def distinct_descriptions(descs: Mapping[Any, str], annotated: Collection, names: Optional[Mapping[Any, str]] = None,
                          what: str = "description") -> Dict[str, Any]:
    """``normalize_desc(description) -> category id`` with one id per description.

    ``descs``: category id -> the description the model writes for it (its name, or a description map's
    phrase), in the file's category order; ``annotated``: the ids that have at least one annotation;
    ``names``: category id -> name, only for the message. Where several categories share a normalised
    description, the annotated one wins; none annotated: the first. Raises ``AmbiguousCategoriesError``
    naming every group of two or more annotated categories with one description (``what`` names it).
    """
    groups: Dict[str, List[Any]] = {}
    for cid, desc in descs.items():
        groups.setdefault(normalize_desc(desc), []).append(cid)
    out, clashes = {}, []
    for key, cids in groups.items():
        owners = [c for c in cids if c in annotated]
        if len(owners) > 1:
            clashes.append(" and ".join(f"id {c!r}" + (f" ({names[c]!r})" if names and c in names else "")
                                        for c in owners) + f" share the {what} {key!r}")
        out[key] = owners[0] if owners else cids[0]
    if clashes:
        raise AmbiguousCategoriesError(
            f"annotated categories the evaluator cannot tell apart (case, spacing and punctuation are ignored): "
            f"{'; '.join(clashes)}. A detection would always go to one of them. Merge them, rename one, or give "
            "each its own phrase with --desc-map.")
    return out
