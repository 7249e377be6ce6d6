"""``coord-eval``: score ``swift infer`` results against COCO ground truth (bbox AP with pycocotools)."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ..eval.detections import DECODES, SCORES
from ..eval.results import ResultsError
from ..eval.scoring import EvalError, EvalSettings, evaluate_results, format_markdown, write_outputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coord-eval",
        description="Parse coordinate-token detections from a swift infer result file (JSONL), map "
                    "descriptions to COCO categories and score them with pycocotools' COCOeval. Writes "
                    "report.json, report.md and detections.json (COCO results format) to --out.")
    p.add_argument("--results", required=True, help="swift infer --result_path file (JSONL)")
    p.add_argument("--gt", required=True, help="COCO instances JSON of the same images")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--decode", choices=DECODES, default="argmax",
                   help="argmax: k/1000 of the generated token; coordexp: expectation over all 1000 bins from "
                        "RESULTS.slots.jsonl when it exists (transformers backend, written by shell/eval.sh), else "
                        "over the coordinate tokens in top_logprobs (needs swift infer --logprobs true "
                        "--top_logprobs K)")
    p.add_argument("--score", choices=SCORES, default=None,
                   help="detection confidence (default: logprob when the results have logprobs, else constant; "
                        "spread: 1/(1 + mean std in bins of the 4 coordinate distributions, needs "
                        "RESULTS.slots.jsonl)")
    p.add_argument("--max-dets", type=int, default=100, help="COCOeval's maximum detections per image (default 100)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all-gt-images", action="store_true",
                       help="score every GT image, those without a result row as empty answers (a headline "
                            "warning counts them). Default: every GT image, and a GT image without a row is an error")
    which.add_argument("--subset-from-results", action="store_true",
                       help="score only the GT images that have a result row (a headline warning counts the rest)")
    which.add_argument("--val-data", metavar="VAL_JSONL",
                       help="the unified-sample JSONL that was inferred (swift infer --val_dataset coord:VAL_JSONL): "
                            "score exactly its images; the results must hold each of its rows exactly once")
    p.add_argument("--desc-map", metavar="FILE_OR_JSON",
                   help="the description map the training data was converted with (coord-prepare-coco --desc-map), "
                        "or that conversion's <out>.summary.json: its phrases map back to their categories")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep objects identical to an earlier one of the same response (default: drop, counted)")
    p.add_argument("--decoding", choices=("free", "constrained", "coordexp"), default=None,
                   help="how swift infer generated the results (COORD_DECODING); default: read from "
                        "<results>.decoding.json, else reported as unknown")
    p.add_argument("--infer-backend", choices=("transformers", "vllm"), default=None,
                   help="the swift infer backend; default as --decoding")
    p.add_argument("--plots", action="store_true", help="also write iou_histogram.png and coordinate_distributions.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    settings = EvalSettings(decode=args.decode, score=args.score, max_dets=args.max_dets,
                            all_gt_images=args.all_gt_images, dedupe=not args.keep_duplicates,
                            subset_from_results=args.subset_from_results, val_data=args.val_data,
                            desc_map=args.desc_map, decoding=args.decoding,
                            infer_backend=args.infer_backend)
    try:
        evaluation = evaluate_results(args.results, args.gt, settings, progress=not args.no_progress)
        paths = write_outputs(args.out, evaluation, plots=args.plots)
    except (EvalError, ResultsError) as e:
        print(f"coord-eval: error: {e}", file=sys.stderr)
        return 2
    if "WARNING" in evaluation.report["headline"]:
        print(f"coord-eval: {evaluation.report['headline']}", file=sys.stderr)
    print(format_markdown(evaluation.report))
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
