"""Paired bootstrap over images for COCO AP and its differences between runs (no ms-swift import).

Question answered: is run C's AP higher than run A's by more than the noise of *which images* were
evaluated? Both runs are scored on the same images; one bootstrap replicate draws ``n`` images with
replacement (image ``i`` drawn ``w_i`` times, ``w ~ Multinomial(n, 1/n)``) and recomputes each run's AP on
that sample with the **same** ``w`` (paired), giving one value of the difference. The percentile interval
of the differences over ``B`` replicates (``np.quantile`` at ``alpha/2`` and ``1 - alpha/2``; scipy's
``bootstrap(method="percentile")``) is the confidence interval; a difference whose interval excludes 0 is
larger than that noise.

**AP under resampling, exactly as COCO computes it.** pycocotools' ``COCOeval.evaluate`` matches the
detections of each (image, category) independently of every other image (``evalImgs``: per detection its
score and, per IoU threshold, matched or not and ignored or not; per GT box ignored or not), and
``accumulate`` then, per category, sorts the detections of all images by score, cumulates true and false
positives and reads the interpolated precision at 101 recall levels, with recall over the non-ignored GT
count. A resampled image set is therefore the same matches with each image *counted* ``w_i`` times: the
cumulative sums become weighted sums (``sum w_img(d) * tp_d``) and the GT count ``sum_i w_i * n_i``. This
module extracts the per-image arrays from ``evalImgs`` once (``PerImageMatches``) and re-accumulates with
weights, vectorised over replicates; no re-matching, no new ``COCOeval``. The copies of a detection sit
next to each other in the score order, and a run of ``w`` equal true (false) positives gives the same
interpolated precision as ``w`` separate ones, so this equals COCOeval run on the resampled images as new
images (tested against pycocotools with distinct scores; with tied scores the copies are kept adjacent, an
order COCOeval's stable sort would give only if the copies were adjacent image ids).

Metrics: ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, area ``all``, the evaluation's ``maxDets``.

Cost: the matching is the evaluation's own (``COCOeval.evaluate`` once per run, about what ``coord-eval``
spends on it); each replicate costs a weighted cumulative sum over the run's detections at 10 IoU
thresholds plus a search of 101 recall levels, i.e. ``O(B * 10 * D)`` for ``D`` detections. See
``docs/evaluation.md`` for measured times.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

BOOTSTRAP_METRICS = ("AP", "AP50", "AP75")
_EPS = np.spacing(1)  # pycocotools' guard in precision = tp / (tp + fp + eps)


@dataclass
class _Category:
    img: np.ndarray    # [D] image index of each detection, in COCOeval's score order
    tp: np.ndarray     # [T, D] float64 1.0 = true positive (matched, not ignored)
    fp: np.ndarray     # [T, D] float64 1.0 = false positive (unmatched, not ignored)
    npig: np.ndarray   # [I] non-ignored GT boxes per image


@dataclass
class PerImageMatches:
    """Per-image matching results of one evaluated ``COCOeval`` (area ``all``, its largest ``maxDets``).

    ``image_ids``: the evaluated image ids (``params.imgIds``, the order of the weight vectors).
    """

    image_ids: List[int]
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    categories: List[_Category]

    @classmethod
    def from_cocoeval(cls, ev) -> "PerImageMatches":
        """From a ``COCOeval`` on which ``evaluate()`` ran (``evalImgs`` filled, ``useCats`` on)."""
        p = ev.params
        if not getattr(ev, "evalImgs", None):
            raise ValueError("COCOeval.evaluate() has not run (no evalImgs)")
        n_img, n_area = len(p.imgIds), len(p.areaRng)
        max_det = p.maxDets[-1]
        cats = []
        for k in range(len(p.catIds)):
            base = k * n_area * n_img  # area index 0 = "all"
            scores, img, tp, fp = [], [], [], []
            npig = np.zeros(n_img, dtype=np.float64)
            any_entry = False
            for i in range(n_img):
                e = ev.evalImgs[base + i]
                if e is None:
                    continue
                any_entry = True
                s = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
                m = np.asarray(e["dtMatches"])[:, :max_det]
                ig = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool)
                scores.append(s)
                img.append(np.full(len(s), i, dtype=np.int64))
                tp.append(np.logical_and(m != 0, ~ig))
                fp.append(np.logical_and(m == 0, ~ig))
                npig[i] = np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
            if not any_entry:
                continue
            t = len(p.iouThrs)
            scores_all = np.concatenate(scores) if scores else np.zeros(0)
            order = np.argsort(-scores_all, kind="mergesort")  # COCOeval.accumulate's order
            cats.append(_Category(
                img=(np.concatenate(img) if img else np.zeros(0, dtype=np.int64))[order],
                tp=(np.concatenate(tp, axis=1) if tp else np.zeros((t, 0), bool))[:, order].astype(np.float64),
                fp=(np.concatenate(fp, axis=1) if fp else np.zeros((t, 0), bool))[:, order].astype(np.float64),
                npig=npig))
        return cls(image_ids=[int(i) for i in p.imgIds], iou_thrs=np.asarray(p.iouThrs, dtype=np.float64),
                   rec_thrs=np.asarray(p.recThrs, dtype=np.float64), categories=cats)

    def metrics(self, weights: Optional[np.ndarray] = None, max_elements: int = 4_000_000) -> Dict[str, np.ndarray]:
        """AP, AP50, AP75 with each image counted ``weights[b, i]`` times: ``weights [B, I]`` -> ``{name: [B]}``.

        ``weights=None``: every image once (equals COCOeval's own numbers). A metric with no category that
        has a GT box in a replicate is ``nan`` there (COCOeval's -1). ``max_elements`` bounds the size of
        the ``[b, T, D]`` work arrays (replicates are processed in chunks).
        """
        n_img = len(self.image_ids)
        w_all = np.ones((1, n_img)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w_all.ndim != 2 or w_all.shape[1] != n_img:
            raise ValueError(f"weights must be [B, {n_img}] (one column per evaluated image), got {w_all.shape}")
        B, T, R = w_all.shape[0], len(self.iou_thrs), len(self.rec_thrs)
        t50 = int(np.argmin(np.abs(self.iou_thrs - 0.5)))
        t75 = int(np.argmin(np.abs(self.iou_thrs - 0.75)))
        # Sums over valid categories of the mean precision over recall levels, per IoU threshold: [B, T].
        prec_sum = np.zeros((B, T))
        n_valid = np.zeros(B)
        for cat in self.categories:
            npig = w_all @ cat.npig                                            # [B]
            valid = npig > 0
            n_valid += valid
            D = cat.img.shape[0]
            if D == 0:
                continue  # a category with GT and no detection has precision 0 everywhere
            chunk = max(1, int(max_elements // (T * D)))
            for b0 in range(0, B, chunk):
                w = w_all[b0:b0 + chunk]
                v = valid[b0:b0 + chunk]
                if not v.any():
                    continue
                wd = w[:, cat.img][:, None, :]                                  # [b, 1, D]
                tp_sum = np.cumsum(cat.tp[None] * wd, axis=2)                   # [b, T, D]
                fp_sum = np.cumsum(cat.fp[None] * wd, axis=2)
                denom = np.where(v, npig[b0:b0 + chunk], 1.0)[:, None, None]
                rc = tp_sum / denom
                pr = tp_sum / (fp_sum + tp_sum + _EPS)
                pr = np.maximum.accumulate(pr[..., ::-1], axis=2)[..., ::-1]    # interpolated precision
                q = _precision_at(rc, pr, self.rec_thrs)                         # [b, T, R]
                prec_sum[b0:b0 + chunk] += np.where(v[:, None], q.sum(axis=2) / R, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_t = prec_sum / n_valid[:, None]                                  # [B, T], nan when no valid cat
        return {"AP": per_t.mean(axis=1), "AP50": per_t[:, t50], "AP75": per_t[:, t75]}


def _precision_at(rc: np.ndarray, pr: np.ndarray, rec_thrs: np.ndarray) -> np.ndarray:
    """``pr`` at the first index where ``rc >= r`` for each recall level (0 where never reached), as
    pycocotools' ``np.searchsorted(rc, recThrs, side='left')``, for all rows at once: ``[b, T, D]`` ->
    ``[b, T, R]``.

    Exact float comparisons: each recall is first replaced by the number of recall levels ``<=`` it (one
    ``searchsorted`` into the sorted levels); ``rc >= level[r]`` is then ``count > r``, an integer test, so
    the rows can be offset into one sorted integer array and searched together."""
    b, t, d = rc.shape
    rows, n_r = b * t, len(rec_thrs)
    count = np.searchsorted(rec_thrs, rc.reshape(rows, d), side="right").astype(np.int64)   # [rows, D]
    off = (n_r + 2) * np.arange(rows, dtype=np.int64)[:, None]
    queries = (np.arange(1, n_r + 1, dtype=np.int64)[None, :] + off).ravel()
    idx = np.searchsorted((count + off).ravel(), queries, side="left").reshape(rows, n_r)
    idx -= (np.arange(rows, dtype=np.int64) * d)[:, None]
    reached = idx < d
    flat_pr = pr.reshape(rows, d)
    q = np.where(reached, np.take_along_axis(flat_pr, np.minimum(idx, d - 1), axis=1), 0.0)
    return q.reshape(b, t, n_r)


def resample_weights(n_images: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """``[B, n]`` counts: each row draws ``n`` images with replacement (``Multinomial(n, 1/n)``)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_resamples).astype(np.float64)


def paired_bootstrap(groups: Dict[str, Sequence[PerImageMatches]], baseline: str, n_resamples: int = 1000,
                     seed: int = 0, alpha: float = 0.05) -> Dict[str, dict]:
    """Intervals for each group's AP and its difference to ``baseline``, paired over images.

    ``groups``: name -> the ``PerImageMatches`` of its runs (several seeds: their mean AP is the group's
    value in every replicate). Every run must have been scored on the same image ids (else ValueError
    naming the runs). Returns ``{name: {metric: {"value", "ci": [lo, hi]}, "diff": {metric: {"value",
    "ci", "excludes_zero"}} (not for the baseline), "vs": {earlier group: the same for name - earlier}}}``
    (``vs`` holds the groups before ``name`` other than the baseline); ``value`` is on the evaluated images.
    """
    if baseline not in groups:
        raise ValueError(f"baseline group {baseline!r} not among {sorted(groups)}")
    ref_ids = None
    for name, runs in groups.items():
        for r in runs:
            if ref_ids is None:
                ref_ids, ref_name = r.image_ids, name
            elif r.image_ids != ref_ids:
                raise ValueError(f"paired bootstrap needs the same evaluated images: {name} has {len(r.image_ids)} "
                                 f"images, {ref_name} {len(ref_ids)} (or other ids)")
    w = resample_weights(len(ref_ids), n_resamples, seed)
    point, boot = {}, {}
    for name, runs in groups.items():
        point[name] = {m: float(np.mean([r.metrics()[m][0] for r in runs])) for m in BOOTSTRAP_METRICS}
        per_run = [r.metrics(w) for r in runs]
        boot[name] = {m: np.mean([pr[m] for pr in per_run], axis=0) for m in BOOTSTRAP_METRICS}
    lo_q, hi_q = alpha / 2, 1 - alpha / 2

    def ci(x):
        x = x[np.isfinite(x)]
        return [float(np.quantile(x, lo_q)), float(np.quantile(x, hi_q))] if x.size else [None, None]

    def diff(a, b):
        res = {}
        for m in BOOTSTRAP_METRICS:
            lo, hi = ci(boot[a][m] - boot[b][m])
            res[m] = {"value": point[a][m] - point[b][m], "ci": [lo, hi],
                      "excludes_zero": lo is not None and (lo > 0 or hi < 0)}
        return res

    out = {}
    names = list(groups)
    for i, name in enumerate(names):
        out[name] = {m: {"value": point[name][m], "ci": ci(boot[name][m])} for m in BOOTSTRAP_METRICS}
        if name != baseline:
            out[name]["diff"] = diff(name, baseline)
        # Against every earlier group other than the baseline (e.g. C - B), from the same replicates.
        out[name]["vs"] = {other: diff(name, other) for other in names[:i] if other != baseline}
    return out
