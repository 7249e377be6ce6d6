"""Result rows in ``swift infer``'s format built from COCO boxes (no ms-swift import).

Used to check the evaluator against pycocotools on known inputs (published detections, ground truth
fed back) and to benchmark it: each box becomes one object of a coordinate-token response, quantised
with the codec, and its score is carried as the log-probability of each of its 4 coordinate tokens, so
that the ``logprob`` score (``exp`` of their mean) gives the score back.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Dict, Iterable, List, Optional

from ..core import codec
from ..core.samples import EVAL_META_KEY

END_OF_TURN = "<|im_end|>"


def _alternatives(text: str, logprob: float, n: int) -> List[dict]:
    """``n`` less likely alternatives: the neighbouring bins of a coordinate (k-1, k+1, k-2, k+2, ...,
    those inside 0..999), a newline for any other token."""
    k = codec.coord_bin_of(text)
    out = []
    for j in range(n):
        if k is None:
            alt = "\n"
        else:
            b = k + (j // 2 + 1) * (1 if j % 2 else -1)
            if not 0 <= b < codec.NUM_BINS:
                continue
            alt = codec.coord_token(b)
        out.append({"token": alt, "logprob": logprob - 2.0 - j // 2, "bytes": list(alt.encode("utf-8"))})
    return out


def _token(text: str, logprob: float, top_k: int) -> dict:
    entry = {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
    if top_k:
        entry["top_logprobs"] = [{"token": text, "logprob": logprob, "bytes": entry["bytes"]}] + \
            _alternatives(text, logprob, top_k - 1)
    return entry


def response_row(image: dict, objects: Iterable[tuple], logprobs: bool = True, by: str = "image_id",
                 top_k: int = 1) -> dict:
    """One result row for a COCO ``image`` entry; ``objects`` are ``(desc, bins, score)`` in the order
    they are to be written. ``top_k``: entries of each token's ``top_logprobs`` (0: none), the token
    itself first. ``by``: ``image_id`` (the row carries image_id/width/height as the data pipeline
    writes them) or ``file_name`` (only ``images[0].path``)."""
    pieces, lps = [], []
    for desc, bins, score in objects:
        lp = math.log(max(float(score), 1e-300))
        for p in codec.split_pieces(codec.render_object(desc, bins)):
            pieces.append(p)
            lps.append(lp if codec.coord_bin_of(p) is not None else 0.0)
    response = "".join(pieces)
    row = {"response": response, "labels": None, "logprobs": None,
           "messages": [{"role": "user", "content": "<image>" + codec.DEFAULT_PROMPT},
                        {"role": "assistant", "content": response}],
           "images": [{"bytes": None, "path": image["file_name"]}]}
    if logprobs:
        content = [_token(p, lp, top_k) for p, lp in zip(pieces, lps)] + [_token(END_OF_TURN, 0.0, top_k)]
        row["logprobs"] = {"content": content}
    if by == "image_id":  # where the data pipeline puts them (see core.samples.EVAL_META_KEY)
        meta = {"image_id": image["id"], "width": image["width"], "height": image["height"]}
        row["chat_template_kwargs"] = {EVAL_META_KEY: meta}
    elif by != "file_name":
        raise ValueError(f"by must be 'image_id' or 'file_name', got {by!r}")
    return row


def quantised_objects(gt: dict, boxes: Iterable[dict]) -> Dict[int, List[tuple]]:
    """COCO boxes (``image_id``, ``category_id``, pixel ``bbox`` xywh, optional ``score``) ->
    per image ``(desc, bins, score)`` in the codec's object order."""
    images = {i["id"]: i for i in gt["images"]}
    names = {c["id"]: c["name"] for c in gt["categories"]}
    per_image = defaultdict(list)
    for b in boxes:
        img = images[b["image_id"]]
        x, y, w, h = b["bbox"]
        norm = codec.normalize_box((x, y, x + w, y + h), img["width"], img["height"])
        per_image[b["image_id"]].append((norm, names[b["category_id"]], b.get("score", 1.0)))
    out = {}
    for iid, objs in per_image.items():
        objs = sorted(objs, key=lambda o: codec.order_key(o[0]))
        out[iid] = [(desc, codec.quantize_box(norm), score) for norm, desc, score in objs]
    return out


def rows_from_boxes(gt: dict, boxes: Iterable[dict], logprobs: bool = True, by: str = "image_id",
                    top_k: int = 1, image_ids: Optional[Iterable[int]] = None) -> List[dict]:
    """One row per GT image (empty response where it has no box), in the GT's image order."""
    objs = quantised_objects(gt, boxes)
    keep = None if image_ids is None else set(image_ids)
    return [response_row(img, objs.get(img["id"], []), logprobs=logprobs, by=by, top_k=top_k)
            for img in gt["images"] if keep is None or img["id"] in keep]
