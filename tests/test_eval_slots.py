"""The exact CoordExp side file (``<results>.slots.jsonl``) read by ``coord-eval``: known answers, the join by row
key in order of occurrence, and clear errors for a file of another run (the real writer: test_decoding_e2e.py)."""
import json

import pytest
import torch
from helpers import toy_gt, write_json, write_rows

from swift_coord_plugin.cli import evaluate
from swift_coord_plugin.core import codec
from swift_coord_plugin.core.coordexp import expected_bins_and_spread
from swift_coord_plugin.core.samples import row_key
from swift_coord_plugin.eval.results import read_row
from swift_coord_plugin.eval.slots import SlotIndex, slots_path
from swift_coord_plugin.eval.synthetic import quantised_objects, response_row


def test_expectation_and_spread_known_answers():
    logits = torch.full((2, 1000), float("-inf"), dtype=torch.float64)
    logits[0, 100] = logits[0, 300] = 0.0  # half at 100, half at 300: E = 200, std = 100
    logits[1, 7] = 5.0  # one bin: E = 7, std = 0
    e, s = expected_bins_and_spread(logits)
    assert e.tolist() == [200.0, 7.0] and s.tolist() == [100.0, 0.0]
    lp = torch.log_softmax(torch.randn(3, 1000, dtype=torch.float64), -1)  # log-probabilities give the same
    p = lp.exp()
    k = torch.arange(1000, dtype=torch.float64)
    e, s = expected_bins_and_spread(lp)
    assert torch.allclose(e, p @ k) and torch.allclose(s, ((p * (k - (p @ k)[:, None]) ** 2).sum(-1)).sqrt())


def _study(tmp_path, shift=0.0):
    """Toy GT, answers at the GT bins, and a slots file whose E[k] moves every coordinate by ``shift`` bins."""
    gt = toy_gt(n_images=3)
    gt_path = write_json(tmp_path / "gt.json", gt)
    objs = quantised_objects(gt, gt["annotations"])
    rows = [response_row(img, objs[img["id"]], top_k=3) for img in gt["images"]]
    results = write_rows(tmp_path / "r.jsonl", rows)
    lines = []
    for img, row in zip(gt["images"], rows):
        content = row["logprobs"]["content"]
        slots = [[t, codec.coord_bin_of(c["token"]), codec.coord_bin_of(c["token"]) + shift, 2.0 + img["id"] % 2]
                 for t, c in enumerate(content) if codec.coord_bin_of(c["token"]) is not None]
        lines.append({"key": row_key(row), "slots": slots})
    write_rows(tmp_path / "r.jsonl.slots.jsonl", lines)
    return gt, gt_path, results, rows, lines


def run_eval(tmp_path, results, gt_path, *extra):
    out = tmp_path / "eval"
    code = evaluate.main(["--results", str(results), "--gt", str(gt_path), "--out", str(out), "--no-progress",
                          "--decoding", "constrained", "--infer-backend", "transformers", *extra])
    return code, (json.loads((out / "report.json").read_text()) if code == 0 else None)


def test_coordexp_reads_the_exact_values(tmp_path):
    gt, gt_path, results, _, _ = _study(tmp_path, shift=0.4)
    code, report = run_eval(tmp_path, results, gt_path, "--decode", "coordexp")
    assert code == 0
    assert report["settings"]["coordexp_bins"].startswith("exact: all 1000 bins")
    assert report["counts"]["coordexp"]["exact_positions"] == 4 * len(gt["annotations"])
    dets = json.loads((tmp_path / "eval" / "detections.json").read_text())
    # every box at (bin + 0.4) / 1000 of the 1000 px image, not at the top-3 expectation of the row
    want = sorted(round(a["bbox"][0] + 0.4, 6) for a in gt["annotations"])
    assert sorted(round(d["bbox"][0], 6) for d in dets) == want


def test_spread_score_ranks_by_the_spread(tmp_path):
    _, gt_path, results, _, _ = _study(tmp_path)
    code, report = run_eval(tmp_path, results, gt_path, "--score", "spread")
    assert code == 0 and report["settings"]["score"] == "spread"
    dets = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert {d["image_id"] % 2: d["score"] for d in dets} == {0: 1 / 3, 1: 1 / 4}


def test_spread_without_a_slots_file_names_it(tmp_path, capsys):
    _, gt_path, results, _, _ = _study(tmp_path)
    (tmp_path / "r.jsonl.slots.jsonl").unlink()
    code, _ = run_eval(tmp_path, results, gt_path, "--score", "spread")
    assert code == 2 and f"--score spread needs {results}.slots.jsonl" in capsys.readouterr().err
    code, report = run_eval(tmp_path, results, gt_path, "--decode", "coordexp")  # without it: the top k, said
    assert code == 0 and "truncated to the top k" in report["settings"]["coordexp_bins"]


def test_rows_take_their_lines_in_order_of_occurrence(tmp_path):
    _, _, results, rows, lines = _study(tmp_path)
    # a second run appended to both files, its values moved by one bin
    later = [dict(x, slots=[[t, b, e + 1, s] for t, b, e, s in x["slots"]]) for x in lines]
    write_rows(tmp_path / "r.jsonl.slots.jsonl", lines + later)
    index = SlotIndex(slots_path(results))
    for n, row in enumerate(rows + rows):
        got = index.take(read_row(row, n + 1).row_key)
        assert got.line == n + 1
    assert index.take(row_key(rows[0])) is None


def test_a_slots_file_of_another_run_is_refused_naming_both_lines(tmp_path, capsys):
    _, gt_path, results, _, lines = _study(tmp_path)
    lines[1]["slots"][2][1] += 1  # another bin written at that position
    write_rows(tmp_path / "r.jsonl.slots.jsonl", lines)
    code, _ = run_eval(tmp_path, results, gt_path, "--decode", "coordexp")
    err = capsys.readouterr().err
    assert code == 2 and f"{results}:2: coordinate token" in err and "line 2 of the slots file" in err
    write_rows(tmp_path / "r.jsonl.slots.jsonl", [lines[0], lines[2]])  # a row without its line
    code, _ = run_eval(tmp_path, results, gt_path, "--decode", "coordexp")
    assert code == 2 and f"{results}:2: no line for this row" in capsys.readouterr().err
    (tmp_path / "r.jsonl.slots.jsonl").write_text('{"key": "x", "slots": [[0, 1, "nan", 1]]}\n')
    code, _ = run_eval(tmp_path, results, gt_path, "--decode", "coordexp")
    assert code == 2 and "r.jsonl.slots.jsonl:1: expected" in capsys.readouterr().err


@pytest.mark.parametrize("row, key", [
    ({"chat_template_kwargs": {"coord_meta": {"image_id": 42}}, "images": [{"path": "/a/b.jpg"}]}, '["image_id", 42]'),
    ({"images": [{"bytes": None, "path": "/a/./b.jpg"}]}, '["image", "/a/b.jpg"]'),
    ({"images": ["/a/b.jpg"]}, '["image", "/a/b.jpg"]'),
    ({"images": []}, None),
    ({"images": [{"path": "/a/first.jpg"}, {"path": "/a/second.jpg"}]}, '["image", "/a/first.jpg"]'),  # the first
    ({"images": [" rel//x/../b.jpg"]}, '["image", "rel/b.jpg"]'),  # relative stays relative, normalised
])
def test_row_key(row, key):
    assert row_key(row) == key
