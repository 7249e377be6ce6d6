"""Description -> COCO category, by a fixed, documented rule (no ms-swift import).

Public: ``plural``, ``CategoryMapper``. Design notes: ``docs/design/eval_categories.md``.
"""
from __future__ import annotations

from typing import Any, Collection, Dict, Iterable, List, Mapping, Optional, Tuple

from ..data.coco_reader import category_descs
from ..data.descriptions import AmbiguousCategoriesError, distinct_descriptions, normalize_desc

# COCO category name -> other names a model may write for it. Plurals of everything here are added by
# ``plural``; only irregular plurals are listed.
SYNONYMS: Mapping[str, Tuple[str, ...]] = {
    "person": ("people", "persons", "man", "men", "woman", "women", "boy", "girl", "child", "children",
               "kid", "human", "pedestrian"),
    "bicycle": ("bike", "cycle"),
    "car": ("automobile",),
    "motorcycle": ("motorbike", "motor bike", "scooter"),
    "airplane": ("aeroplane", "plane", "aircraft", "jet"),
    "truck": ("lorry",),
    "boat": ("ship",),
    "traffic light": ("traffic signal", "stoplight"),
    "fire hydrant": ("hydrant",),
    "cow": ("cattle",),
    "backpack": ("back pack", "rucksack"),
    "handbag": ("purse", "hand bag"),
    "tie": ("necktie",),
    "suitcase": ("luggage",),
    "skis": ("ski", "pair of skis"),
    "sports ball": ("ball", "soccer ball", "football", "tennis ball", "baseball"),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "tennis racket": ("racket", "racquet", "tennis racquet"),
    "cup": ("mug",),
    "knife": ("knives",),
    "hot dog": ("hotdog",),
    "donut": ("doughnut",),
    "couch": ("sofa",),
    "potted plant": ("pottedplant", "houseplant", "plant"),
    "dining table": ("diningtable", "table"),
    "tv": ("television", "tv monitor", "tvmonitor", "tv set"),
    "mouse": ("mice", "computer mouse"),
    "remote": ("remote control",),
    "cell phone": ("cellphone", "mobile phone", "phone", "smartphone"),
    "refrigerator": ("fridge",),
    "teddy bear": ("teddy",),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
}

def plural(name: str) -> str:
    """Regular English plural of the last word: ``+es`` after s/x/z/ch/sh, ``y`` -> ``ies`` after a
    consonant, else ``+s``."""
    head, _, last = name.rpartition(" ")
    if last.endswith(("s", "x", "z", "ch", "sh")):
        last = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last = last + "s"
    return f"{head} {last}" if head else last


class CategoryMapper:
    """Maps descriptions to category ids of one ground truth's ``categories`` list."""

    def __init__(self, categories: Iterable[Mapping], desc_map: Optional[Mapping[Any, str]] = None,
                 annotated: Optional[Collection[int]] = None):
        """``desc_map``: the converter's description map (category id or name -> phrase the model was
        trained on, see ``data.coco_reader.category_descs``); each phrase then maps to its category exactly,
        before any category name. ``annotated``: the category ids with annotations (None: every one),
        for the rule on categories that share a description (``distinct_descriptions``, which raises
        ``AmbiguousCategoriesError``)."""
        cats = list(categories)
        self.names: Dict[int, str] = {int(c["id"]): str(c["name"]) for c in cats}
        annotated = set(self.names) if annotated is None else set(annotated)
        self.exact: Dict[str, int] = {}
        self.aliases: Dict[str, int] = {}
        if desc_map:
            trained = {int(cid): phrase for cid, phrase in category_descs(cats, desc_map, "the ground truth").items()}
            self.exact.update(distinct_descriptions(trained, annotated, self.names, "description (after --desc-map)"))
        else:
            self.exact.update(distinct_descriptions(self.names, annotated, self.names, "name"))
        for cid, name in self.names.items():  # names replaced by a phrase still match, after every phrase
            self.exact.setdefault(normalize_desc(name), cid)
        by_name = dict(self.exact)
        for name, cid in by_name.items():
            self.aliases.setdefault(plural(name), cid)
        for name, others in SYNONYMS.items():
            cid = by_name.get(normalize_desc(name))
            if cid is None:
                continue
            for other in others:
                other = normalize_desc(other)
                for form in (other, plural(other)):
                    if form not in self.exact:
                        self.aliases.setdefault(form, cid)
        self._cache: Dict[str, Optional[Tuple[int, bool]]] = {}

    def lookup(self, desc: str) -> Optional[Tuple[int, bool]]:
        """``(category_id, via_alias)`` for a description, or None when it matches nothing."""
        hit = self._cache.get(desc, False)
        if hit is not False:
            return hit
        key = normalize_desc(desc)
        if key in self.exact:
            hit = (self.exact[key], False)
        elif key in self.aliases:
            hit = (self.aliases[key], True)
        else:
            hit = None
        self._cache[desc] = hit
        return hit

    def category_id(self, desc: str) -> Optional[int]:
        hit = self.lookup(desc)
        return None if hit is None else hit[0]

    def alias_table(self) -> List[Tuple[str, str]]:
        """Every accepted non-exact spelling with the category name it maps to (sorted)."""
        return sorted((alias, self.names[cid]) for alias, cid in self.aliases.items())
