"""``coord-eval`` command line on the shipped COCO sample (no shared data needed)."""
import json

import pytest
from helpers import REPO

from swift_coord_plugin.cli.evaluate import main
from swift_coord_plugin.eval.synthetic import rows_from_boxes

GT = REPO / "assets" / "coco_sample" / "instances.json"


@pytest.fixture(scope="module")
def gt():
    return json.loads(GT.read_text())


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_writes_reports_and_prints_the_table(gt, tmp_path, capsys):
    results = write(tmp_path / "r.jsonl", rows_from_boxes(gt, gt["annotations"], logprobs=True, top_k=1))
    out = tmp_path / "eval"
    assert main(["--results", results, "--gt", str(GT), "--out", str(out), "--decode", "coordexp",
                 "--max-dets", "300", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| AP | AP50 | AP75 |" in printed and "AR300" in printed and "wrote" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert report["settings"]["max_dets"] == 300 and report["settings"]["decode"] == "coordexp"
    assert report["per_category"]["1"]["name"] == "person" and report["per_category"]["1"]["num_gt"] > 0
    dets = json.loads((out / "detections.json").read_text())
    assert len(dets) == len(gt["annotations"])
    assert set(dets[0]) == {"image_id", "category_id", "bbox", "score"}
    md = (out / "report.md").read_text()
    assert "## Per-category AP" in md and "| person |" in md


def test_errors_go_to_stderr_with_exit_code_2(gt, tmp_path, capsys):
    results = write(tmp_path / "r.jsonl", rows_from_boxes(gt, gt["annotations"], logprobs=False))
    code = main(["--results", results, "--gt", str(GT), "--out", str(tmp_path / "e"), "--decode", "coordexp"])
    assert code == 2
    err = capsys.readouterr().err
    assert "r.jsonl:1" in err and "--logprobs true --top_logprobs K" in err
    assert main(["--results", str(tmp_path / "missing.jsonl"), "--gt", str(GT), "--out", str(tmp_path)]) == 2
    assert "results file not found" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"response": ""}\n{"respo\n')
    assert main(["--results", str(tmp_path / "bad.jsonl"), "--gt", str(GT), "--out", str(tmp_path)]) == 2
    assert "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
