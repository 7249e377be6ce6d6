"""Bootstrap intervals for COCO AP and its differences between groups of runs (no ms-swift import).

Public: ``BOOTSTRAP_METRICS``, ``PerImageMatches``, ``resample_weights``, ``GroupReplicates``,
``two_level_interval``, ``interval_covers``, ``paired_bootstrap``. Design notes: ``docs/design/eval_bootstrap.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import norm, t as student_t

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


def resample_weights(n_images: int, n_resamples: int, seed=0) -> np.ndarray:
    """``[B, n]`` counts: each row draws ``n`` items with replacement (``Multinomial(n, 1/n)``).

    Used for images (level 2) and for the runs of a group (level 1). ``seed``: anything
    ``np.random.default_rng`` accepts (an int, or a sequence of ints for independent streams)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_resamples).astype(np.float64)


@dataclass
class GroupReplicates:
    """One group's runs (seeds) for one metric, as the two-level bootstrap sees them.

    ``values [S]``: each run's metric on the evaluated images (every image once).
    ``replicates [S, B]``: each run's metric at replicate ``b``'s image weights (the same weights for every
    run of every group: paired). ``seed_counts [B, S]``: how often replicate ``b`` draws each run
    (``resample_weights(S, B, ...)``). ``nan`` in ``replicates`` (no GT box in a replicate) propagates to
    that replicate, which the intervals then skip.
    """

    values: np.ndarray
    replicates: np.ndarray
    seed_counts: np.ndarray

    def __post_init__(self):
        self.values = np.asarray(self.values, dtype=np.float64)
        self.replicates = np.asarray(self.replicates, dtype=np.float64)
        self.seed_counts = np.asarray(self.seed_counts, dtype=np.float64)
        s = self.values.shape[0]
        if self.values.ndim != 1 or s < 1:
            raise ValueError(f"values must be [S >= 1] (one per run), got {self.values.shape}")
        if self.replicates.ndim != 2 or self.replicates.shape[0] != s:
            raise ValueError(f"replicates must be [{s}, B] (one row per run), got {self.replicates.shape}")
        if self.seed_counts.shape != (self.replicates.shape[1], s):
            raise ValueError(f"seed_counts must be [{self.replicates.shape[1]}, {s}] (replicates x runs), got "
                             f"{self.seed_counts.shape}")

    @property
    def n_seeds(self) -> int:
        return int(self.values.shape[0])

    def seed_variance(self) -> float:
        """``s^2 / S``: the unbiased variance of the group's mean over its runs (0 with one run)."""
        return float(np.var(self.values, ddof=1) / self.n_seeds) if self.n_seeds > 1 else 0.0

    def image_replicates(self) -> np.ndarray:
        """``[B]``: the mean over all runs at each replicate's image weights (level 2 only)."""
        return self.replicates.mean(axis=0)

    def seed_deviations(self) -> np.ndarray:
        """``[B]``: the mean over the runs drawn in replicate ``b`` minus the mean over all runs, both at
        ``b``'s image weights (level 1; 0 with one run)."""
        drawn = np.einsum("bs,sb->b", self.seed_counts, self.replicates) / self.n_seeds
        return drawn - self.image_replicates()


def _quantiles(x: np.ndarray, alpha: float) -> List[Optional[float]]:
    x = x[np.isfinite(x)]
    if not x.size:
        return [None, None]
    lo, hi = np.quantile(x, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def two_level_interval(terms: Sequence[Tuple[float, GroupReplicates]], alpha: float = 0.05,
                       small_sample_correction: bool = True) -> Dict[str, object]:
    """Two-level bootstrap interval of a contrast ``sum_g c_g * mean_over_seeds(metric_g)``.

    ``terms``: ``(c_g, GroupReplicates)`` pairs, e.g. ``[(1, C), (-1, A)]`` for ``C - A`` or ``[(1, A)]`` for
    A's own value; all with the same ``B`` replicates (the same image weights). Replicate ``b`` of the
    contrast is ``sum_g c_g * (image_g[b] + lam_g * k * dev_g[b])`` with ``image_g`` the all-runs mean and
    ``dev_g`` the seed-resample deviation at ``b``'s weights; ``lam_g = sqrt(S_g / (S_g - 1))`` and ``k`` are
    the small-sample correction (module doc; both 1 when ``small_sample_correction`` is False, which is the
    plain two-level bootstrap). Returns ``{"value": the contrast on all images and runs, "ci": [lo, hi]
    (images and seeds), "ci_images": [lo, hi] (image weights only, every run once), "df": nu (None without a
    seed level), "seed_scale": k, "sd_images", "sd_seeds": sqrt(v_img), sqrt(v_seed)}``; a ``ci`` is
    ``[None, None]`` when no replicate is finite. Raises ValueError for replicates of different ``B``.
    """
    if not terms:
        raise ValueError("two_level_interval needs at least one (coefficient, GroupReplicates) term")
    n_rep = {g.replicates.shape[1] for _, g in terms}
    if len(n_rep) != 1:
        raise ValueError(f"all groups need the same replicates (image weights), got B = {sorted(n_rep)}")
    value = float(sum(c * g.values.mean() for c, g in terms))
    image = sum(c * g.image_replicates() for c, g in terms)
    finite = np.isfinite(image)
    v_img = float(np.var(image[finite], ddof=1)) if finite.sum() > 1 else 0.0
    parts = [(c * c * g.seed_variance(), g.n_seeds) for c, g in terms if g.n_seeds > 1]
    v_seed = float(sum(v for v, _ in parts))
    k, nu = 1.0, None
    if parts and v_seed > 0:
        nu = (v_img + v_seed) ** 2 / sum(v * v / (s - 1) for v, s in parts)
        if small_sample_correction:
            ratio = float(student_t.ppf(1 - alpha / 2, nu) / norm.ppf(1 - alpha / 2))
            k = math.sqrt(max(1.0, (ratio ** 2 * (v_img + v_seed) - v_img) / v_seed))
    dev = sum(c * (math.sqrt(g.n_seeds / (g.n_seeds - 1)) if small_sample_correction and g.n_seeds > 1 else 1.0)
              * g.seed_deviations() for c, g in terms)
    return {"value": value, "ci": _quantiles(image + k * dev, alpha), "ci_images": _quantiles(image, alpha),
            "df": nu, "seed_scale": k, "sd_images": math.sqrt(v_img), "sd_seeds": math.sqrt(v_seed)}


def interval_covers(groups: Sequence[Tuple[str, int]]) -> str:
    """What a two-level interval over these ``(group, number of runs)`` holds: ``"images and seeds"`` (every
    group has several runs), ``"images only"`` (every group one run: no seed level), else which groups' seeds."""
    single = [g for g, n in groups if n < 2]
    if not single:
        return "images and seeds"
    if len(single) == len(groups):
        return "images only"
    several = [g for g, n in groups if n >= 2]
    return f"images, and the seeds of {', '.join(several)} only ({', '.join(single)}: one run)"


def paired_bootstrap(groups: Dict[str, Sequence[PerImageMatches]], baseline: str, n_resamples: int = 1000,
                     seed: int = 0, alpha: float = 0.05, small_sample_correction: bool = True) -> Dict[str, dict]:
    """Two-level intervals (seeds within each group, then images, paired over images) for each group's AP,
    AP50, AP75 and its differences to ``baseline`` and to every earlier group.

    ``groups``: name -> the ``PerImageMatches`` of its runs (its seeds). Every run must have been scored on
    the same image ids (else ValueError naming the groups). The image weights of replicate ``b`` are shared
    by all runs (``resample_weights(n_images, B, seed)``); group ``j``'s runs are drawn with
    ``resample_weights(S_j, B, (seed, 1, j))``. Returns ``{name: {metric: {"value", "ci", "ci_images", "df",
    ...}, "n_seeds": S, "covers": str, "diff": {metric: {..., "excludes_zero", "excludes_zero_images"}, "covers":
    str} (not for the baseline), "vs": {earlier group: the same for name - earlier}}}`` (``vs`` holds the
    groups before ``name`` other than the baseline); ``value`` is on the evaluated images, the mean over the
    group's runs; ``excludes_zero`` refers to ``ci`` (images and seeds), ``covers`` says what ``ci`` holds
    (see ``two_level_interval`` for the fields and the correction).
    """
    if baseline not in groups:
        raise ValueError(f"baseline group {baseline!r} not among {sorted(groups)}")
    ref_ids = None
    for name, runs in groups.items():
        if not runs:
            raise ValueError(f"group {name!r} has no run")
        for r in runs:
            if ref_ids is None:
                ref_ids, ref_name = r.image_ids, name
            elif r.image_ids != ref_ids:
                raise ValueError(f"paired bootstrap needs the same evaluated images: {name} has {len(r.image_ids)} "
                                 f"images, {ref_name} {len(ref_ids)} (or other ids)")
    w = resample_weights(len(ref_ids), n_resamples, seed)
    ones = np.ones((1, len(ref_ids)))
    reps: Dict[str, Dict[str, GroupReplicates]] = {}
    for j, (name, runs) in enumerate(groups.items()):
        per_run = [r.metrics(np.vstack([ones, w])) for r in runs]   # row 0: every image once
        counts = resample_weights(len(runs), n_resamples, (seed, 1, j))
        reps[name] = {m: GroupReplicates(values=[pr[m][0] for pr in per_run],
                                         replicates=np.stack([pr[m][1:] for pr in per_run]), seed_counts=counts)
                      for m in BOOTSTRAP_METRICS}

    def interval(terms):
        return {m: two_level_interval([(c, reps[g][m]) for c, g in terms], alpha, small_sample_correction)
                for m in BOOTSTRAP_METRICS}

    def diff(a, b):
        res = interval([(1.0, a), (-1.0, b)])
        for d in res.values():
            for key, ci in (("excludes_zero", d["ci"]), ("excludes_zero_images", d["ci_images"])):
                d[key] = ci[0] is not None and (ci[0] > 0 or ci[1] < 0)
        res["covers"] = interval_covers([(a, len(groups[a])), (b, len(groups[b]))])
        return res

    out = {}
    names = list(groups)
    for i, name in enumerate(names):
        out[name] = {**interval([(1.0, name)]), "n_seeds": len(groups[name]),
                     "covers": interval_covers([(name, len(groups[name]))])}
        if name != baseline:
            out[name]["diff"] = diff(name, baseline)
        # Against every earlier group other than the baseline (e.g. C - B), from the same replicates.
        out[name]["vs"] = {other: diff(name, other) for other in names[:i] if other != baseline}
    return out
