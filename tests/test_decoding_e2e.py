"""Decoding modes end to end on the transformers backend: swift sft (group B) -> swift infer under
free / constrained / coordexp -> coord-eval (in process, and the ``coord-eval`` command with every count checked).

A tiny model trained with B's loss (no cross-entropy at coordinate slots) learns the text of the answers
but puts almost no full-vocabulary mass on coordinate tokens, so free decoding writes no complete box.
The same checkpoint under ``constrained`` and ``coordexp`` must write only complete, parseable boxes,
with the log-probabilities of coordinate slots taken from the restricted coordinate distribution.
"""
import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, base_infer_args, base_sft_args, last_checkpoint, read_jsonl, run_swift
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from swift_coord_plugin.cli.evaluate import main as coord_eval
from swift_coord_plugin.core import codec
from swift_coord_plugin.eval.results import END_OF_TURN_TOKENS
from swift_coord_plugin.eval.scoring import METRIC_NAMES, EvalSettings, evaluate_results
from swift_coord_plugin.eval.synthetic import quantised_objects, response_row

pytestmark = pytest.mark.e2e

GT = REPO / "assets" / "coco_sample" / "instances.json"
IMAGE_IDS = (30, 92)  # two samples with two objects each: short sequences
TOP_K = 5
STEPS = 30


@pytest.fixture(scope="module")
def b_checkpoint(tiny_model_dir, sample_jsonl, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoding_b")
    data = tmp / "two.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(sample_jsonl) if r["image_id"] in IMAGE_IDS))
    out = str(tmp / "sft")
    run_swift("sft", base_sft_args(tiny_model_dir, str(data), out, steps=STEPS, loss_type="coordexp_geom", extra=[
        "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_ratio", "0", "--weight_decay", "0"]),
        tmp)
    return last_checkpoint(out), data, tmp


def infer(b_checkpoint, mode):
    ckpt, data, tmp = b_checkpoint
    result = tmp / f"{mode}.jsonl"
    run_swift("infer", base_infer_args(ckpt, str(data), str(result), max_new_tokens=48,
                                       extra=["--logprobs", "true", "--top_logprobs", str(TOP_K)]), tmp,
              env={"COORD_DECODING": mode, "COORD_DECODING_RECORD": f"{result}.decoding.json"})
    rows = read_jsonl(result)
    assert len(rows) == 2
    return rows, result


@pytest.fixture(scope="module")
def answers(b_checkpoint):
    """``infer(b_checkpoint, mode)``, run once per mode for the tests of this module."""
    made = {}

    def get(mode):
        if mode not in made:
            made[mode] = infer(b_checkpoint, mode)
        return made[mode]

    return get


def coord_eval_cli(args, cwd):
    exe = Path(sys.executable).parent / "coord-eval"
    return subprocess.run([str(exe), *args], cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=120)


def coord_slots(row):
    return [t for t in row["logprobs"]["content"] if codec.coord_bin_of(t["token"]) is not None]


def test_b_writes_boxes_only_under_the_grammar(b_checkpoint, answers, tmp_path):
    free, _ = answers("free")
    for row in free:
        res = codec.parse_objects(row["response"], dedupe=False)
        assert res.objects == [], row["response"]  # B's free answers: no complete box
    assert any(codec.OBJ_START in row["response"] for row in free)  # ... although it learned the text

    for mode in ("constrained", "coordexp"):
        rows, result = answers(mode)
        n = 0
        for row in rows:
            res = codec.parse_objects(row["response"], dedupe=False)
            assert len(res.objects) == row["response"].count(codec.OBJ_START) > 0, row["response"]
            assert set(res.counts) <= {codec.REPAIR_REVERSED}, (res.counts, row["response"])
            for slot in coord_slots(row):
                # Recorded from the restricted coordinate distribution: its top-k are coordinate tokens
                # (the raw full-vocabulary top-k of a B model hold none) and carry at most all the mass.
                top = slot["top_logprobs"]
                assert len(top) == TOP_K and all(codec.coord_bin_of(t["token"]) is not None for t in top)
                assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-5
                if mode == "constrained":  # greedy = argmax of the restricted distribution
                    assert slot["token"] == top[0]["token"] and slot["logprob"] == top[0]["logprob"]
                n += 1
        assert n >= 8
        if mode == "constrained":
            out = tmp_path / "eval"
            # Scored on the two inferred images (coord-eval's coverage rule: name the subset).
            assert coord_eval(["--results", str(result), "--gt", str(GT), "--val-data", str(b_checkpoint[1]),
                               "--out", str(out), "--no-progress"]) == 0
            report = json.loads((out / "report.json").read_text())
            s, parser = report["settings"], report["counts"]["parser"]
            assert (s["decoding"], s["infer_backend"]) == ("constrained", "transformers")
            assert s["logprobs_distribution"].startswith("grammar")
            assert parser.get(codec.DROP_INCOMPLETE, 0) == 0 and parser.get(codec.DROP_TRUNCATED, 0) == 0
            assert report["counts"]["objects"]["parsed"] >= 2


def test_exact_coordexp_slots_join_their_rows_through_batching_and_appending(b_checkpoint, tmp_path):
    """COORD_DECODING_SLOTS: every answer's line holds, per coordinate token, the exact E[k] and spread over all
    1000 bins; under coordexp the written bin is round(E[k]) of that very line (the slot and the values belong
    together); a second run appended to the same files joins row by row; coord-eval reads the exact values."""
    from swift_coord_plugin.core.grammar import round_half_up
    from swift_coord_plugin.eval.results import read_row
    from swift_coord_plugin.eval.slots import SlotIndex, slots_path

    ckpt, data, _ = b_checkpoint
    result = tmp_path / "coordexp.jsonl"
    env = {"COORD_DECODING": "coordexp", "COORD_DECODING_RECORD": f"{result}.decoding.json",
           "COORD_DECODING_SLOTS": slots_path(str(result))}
    args = base_infer_args(ckpt, str(data), str(result), max_new_tokens=48,  # both rows in one batch of 4
                           extra=["--logprobs", "true", "--top_logprobs", str(TOP_K)])
    run_swift("infer", args, tmp_path, env=env)
    run_swift("infer", args, tmp_path, env=env)  # appended to both files, as swift infer appends
    rows = read_jsonl(result)
    assert len(rows) == 4 and len(read_jsonl(slots_path(str(result)))) == 4
    index = SlotIndex(slots_path(str(result)))
    import torch

    truncated_differs = 0
    for line, row in enumerate(rows, 1):
        pred = read_row(row, line)
        line_slots = index.take(pred.row_key)
        assert line_slots is not None and line_slots.line == line  # the n-th row of an image: its n-th line
        assert pred.objects
        for obj in pred.objects:
            for tok in obj.coords:
                e, std = line_slots.at(tok.index, tok.bin, f"line {line}")
                assert int(round_half_up(torch.tensor(e, dtype=torch.float32))) == tok.bin  # the coordexp decision
                assert 0 < std < 1000 and 0 <= e <= 999
                trunc = sum(math.exp(lp) * k for k, lp in tok.top) / sum(math.exp(lp) for _, lp in tok.top)
                truncated_differs += abs(trunc - e) > 0.5
    assert truncated_differs > 0  # B's broad distributions: the top-5 expectation is not the exact one
    assert index.take(json.dumps(["image_id", IMAGE_IDS[0]])) is None  # every line used once

    # coord-eval on the first run's rows: the exact values, each box at E[k]/1000 of the image.
    first = tmp_path / "first.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    lines = read_jsonl(slots_path(str(result)))[:2]
    with open(slots_path(str(first)), "w") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "eval"
    assert coord_eval(["--results", str(first), "--gt", str(GT), "--val-data", str(data), "--out", str(out),
                       "--decode", "coordexp", "--decoding", "coordexp", "--infer-backend", "transformers",
                       "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    ce = report["counts"]["coordexp"]
    assert report["settings"]["coordexp_bins"].startswith("exact: all 1000 bins")
    assert ce["exact_positions"] == ce["coordinate_positions"] == 4 * report["counts"]["objects"]["detections"] > 0
    gt = json.loads(GT.read_text())
    width = {im["id"]: im["width"] for im in gt["images"]}
    dets = json.loads((out / "detections.json").read_text())
    pred = read_row(rows[0], 1)
    x1 = SlotIndex(slots_path(str(first))).take(pred.row_key).at(pred.objects[0].coords[0].index,
                                                                 pred.objects[0].coords[0].bin, "")[0]
    mine = [d for d in dets if d["image_id"] == pred.image_id]
    assert any(abs(d["bbox"][0] - x1 / 1000 * width[pred.image_id]) < 1e-6 for d in mine)

    # The spread score ranks by the coordinate distributions' spread.
    assert coord_eval(["--results", str(first), "--gt", str(GT), "--val-data", str(data), "--out",
                       str(tmp_path / "spread"), "--score", "spread", "--decoding", "coordexp",
                       "--infer-backend", "transformers", "--no-progress"]) == 0
    spread_dets = json.loads((tmp_path / "spread" / "detections.json").read_text())
    assert all(0 < d["score"] <= 1 for d in spread_dets) and len({d["score"] for d in spread_dets}) > 1


def test_infer_result_through_coord_eval_cli(b_checkpoint, answers, tmp_path):
    """``swift infer --logprobs true --top_logprobs K`` answers (constrained, so there are boxes) through the
    ``coord-eval`` command: rows matched through the data pipeline's image ids, logprobs read, every count
    consistent, detections re-scorable by pycocotools alone; the same result lines given ground-truth answers, in
    the format swift writes, score AP50 = 1."""
    _, result = answers("constrained")
    data = b_checkpoint[1]
    rows = read_jsonl(result)
    assert len(rows) == 2 and all(r["logprobs"]["content"] for r in rows)

    proc = coord_eval_cli(["--results", str(result), "--gt", str(GT), "--out", str(tmp_path / "eval"),
                           "--decode", "coordexp", "--plots", "--val-data", str(data)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| AP | AP50 |" in proc.stdout and "coord-eval" in proc.stderr  # the table and the progress bar
    for name in ("report.json", "report.md", "detections.json", "iou_histogram.png",
                 "coordinate_distributions.png"):
        assert (tmp_path / "eval" / name).is_file(), name
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert set(report["metrics"]) == set(METRIC_NAMES)
    s, c = report["settings"], report["counts"]
    assert s["decode"] == "coordexp" and s["score"] == "logprob" and s["max_dets"] == 100
    r = c["rows"]
    assert r["total"] == 2 and r["matched_by_image_id"] == 2 and r["with_logprobs"] == 2 and r["unmatched"] == {}
    cut = sum(1 for row in rows if row["logprobs"]["content"][-1]["token"] not in END_OF_TURN_TOKENS)
    assert r["without_end_of_turn"] == cut
    assert c["images"]["evaluated"] == 2 and c["images"]["gt_images_without_row"] == 7
    assert report["headline"].startswith("Scored 2 of 9 GT images (the images of --val-data")
    # the rows carry the real image paths: their stored pixel grids were compared with the GT's sizes
    assert r["size_differs_from_gt"] == 0 and r["image_file_not_checked"] == 0
    o = c["objects"]
    assert o["parsed"] == o["in_unmatched_rows"] + o["in_duplicate_rows"] + o["unmatched_description"] + \
        o["detections"]
    assert c["coordexp"]["coordinate_positions"] == 4 * o["detections"]
    assert c["coordexp"]["top_k"] in (0, TOP_K)
    dets = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert len(dets) == o["detections"]
    assert dets  # re-scorable by pycocotools alone
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(GT))
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.params.imgIds = list(IMAGE_IDS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert list(ev.stats) == pytest.approx([report["metrics"][n] for n in METRIC_NAMES], abs=1e-12)

    # The same real result lines with ground-truth answers written as the model would write them.
    gt_json = json.loads(GT.read_text())
    objs = quantised_objects(gt_json, gt_json["annotations"])
    images = {i["id"]: i for i in gt_json["images"]}
    for row in rows:
        iid = row["chat_template_kwargs"]["coord_meta"]["image_id"]
        fake = response_row(images[iid], objs[iid], logprobs=True, top_k=1)
        row["response"], row["logprobs"] = fake["response"], fake["logprobs"]
    perfect = tmp_path / "perfect.jsonl"
    perfect.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ev = evaluate_results(str(perfect), str(GT), EvalSettings(val_data=str(data)), progress=False)
    assert ev.report["metrics"]["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert ev.report["counts"]["rows"]["matched_by_image_id"] == 2
    assert ev.report["counts"]["objects"]["detections"] == sum(len(objs[i]) for i in IMAGE_IDS)
