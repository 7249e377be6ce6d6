"""eval/shards.py: split validation samples into shards, merge and check result files (no ms-swift)."""
import json

import pytest

from swift_coord_plugin.cli.shards import main as shards_main
from swift_coord_plugin.eval.shards import ShardError, check_results, result_key, sample_key, split_samples


def _samples(tmp_path, n, with_ids=True):
    rows = []
    for i in range(n):
        row = {"image": f"images/{i:03d}.jpg", "objects": [{"desc": "dog", "bbox": [0.1, 0.1, 0.5, 0.5]}]}
        if with_ids:
            row["image_id"] = 100 + i
        rows.append(row)
    path = tmp_path / "val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n")  # a trailing blank line is ignored
    return path, rows


def _result(sample, base_dir, meta=True):
    """A result line as swift infer writes it for a coord: sample (image path absolute, ids in coord_meta)."""
    image = str(base_dir / sample["image"])
    row = {"response": "", "images": [{"bytes": None, "path": image}], "logprobs": None}
    if meta and "image_id" in sample:
        row["chat_template_kwargs"] = {"coord_meta": {"image_id": sample["image_id"]}}
    return row


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("n_rows,n_shards,sizes", [(10, 3, [4, 3, 3]), (2, 4, [1, 1]), (5, 1, [5])])
def test_split_is_contiguous_and_complete(tmp_path, n_rows, n_shards, sizes):
    val, rows = _samples(tmp_path, n_rows)
    paths = split_samples(str(val), n_shards, str(tmp_path / "shards"))
    got = [[json.loads(line) for line in open(p)] for p in paths]
    assert [len(g) for g in got] == sizes
    flat = [r for g in got for r in g]
    assert [r["image_id"] for r in flat] == [r["image_id"] for r in rows]
    # relative image paths become absolute (taken from the samples file's folder), so shards load elsewhere
    assert all(r["image"] == str(tmp_path / "images" / f"{i:03d}.jpg") for i, r in enumerate(flat))


def test_merge_keeps_order_and_lines(tmp_path):
    val, rows = _samples(tmp_path, 5)
    r0 = _write(tmp_path / "r0.jsonl", [_result(s, tmp_path) for s in rows[:3]])
    r1 = _write(tmp_path / "r1.jsonl", [_result(s, tmp_path) for s in rows[3:]])
    out = tmp_path / "merged.jsonl"
    counts = check_results([r0, r1], str(val), str(out))
    assert counts == {"requested": 5, "results": 5}
    assert out.read_text() == open(r0).read() + open(r1).read()


def test_rank0_only_file_is_an_error_naming_the_missing_ids(tmp_path):
    # what NPROC_PER_NODE=2 swift infer wrote on CPU: rank 0's contiguous half only
    val, rows = _samples(tmp_path, 9)
    half = _write(tmp_path / "infer_result.jsonl", [_result(s, tmp_path) for s in rows[:5]])
    with pytest.raises(ShardError) as e:
        check_results([half], str(val), str(tmp_path / "out.jsonl"))
    msg = str(e.value)
    assert "4 of 9 requested rows have no result" in msg
    assert all(f"image_id {100 + i}" in msg for i in range(5, 9)) and "image_id 104" not in msg
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.tmp").exists()


def test_duplicates_foreign_rows_and_missing_shard(tmp_path):
    val, rows = _samples(tmp_path, 3)
    foreign = dict(_result(rows[0], tmp_path), chat_template_kwargs={"coord_meta": {"image_id": 999}})
    bad = _write(tmp_path / "r.jsonl", [_result(s, tmp_path) for s in rows] + [_result(rows[1], tmp_path), foreign])
    with pytest.raises(ShardError) as e:
        check_results([bad], str(val))
    msg = str(e.value)
    assert "1 rows have more than one result: image_id 101 at" in msg and f"{bad}:2, {bad}:4" in msg
    assert "1 result rows are not in" in msg and "image_id 999" in msg and "have no result" not in msg
    with pytest.raises(ShardError, match="result file missing: .*nope.jsonl"):
        check_results([str(tmp_path / "nope.jsonl")], str(val))


def test_rows_without_image_id_match_by_image_path(tmp_path):
    val, rows = _samples(tmp_path, 3, with_ids=False)
    assert sample_key(rows[0], str(tmp_path)) == result_key(_result(rows[0], tmp_path))
    r = _write(tmp_path / "r.jsonl", [_result(s, tmp_path) for s in rows[:2]])
    with pytest.raises(ShardError, match=r"1 of 3 requested rows have no result: image .*002\.jpg"):
        check_results([r], str(val))


@pytest.mark.parametrize("row", [
    {"chat_template_kwargs": {"coord_meta": {"image_id": 7}}, "images": [{"path": "/a/b.jpg"}]},
    {"image_id": 8, "images": ["/a/b.jpg"]},  # no chat_template_kwargs: top-level id (row_meta)
    {"images": [{"bytes": None, "path": "/data/./img/../img/x.jpg"}]},  # unnormalised
    {"images": ["img//x.jpg "]},  # relative, doubled separator, trailing space
    {"images": [{"path": "/a/first.jpg"}, {"path": "/a/second.jpg"}]},  # several images: the first
    {"images": ["rel/first.jpg", "/a/second.jpg"]},
    {"images": []},
    {"response": ""},
])
def test_result_key_is_the_slots_row_key(row):
    """The shard check and the slots file identify a result line alike (core.samples.row_identity)."""
    from swift_coord_plugin.core.samples import row_key

    key = row_key(row)
    assert (tuple(json.loads(key)) if key is not None else ("image", None)) == result_key(row)


def test_sample_key_agrees_with_result_key_for_relative_and_multi_image(tmp_path):
    rows = [{"image": "./images//a.jpg"}, {"images": ["images/b.jpg", "images/c.jpg"]}]
    results = [{"images": [str(tmp_path / "images" / "a.jpg")]},
               {"images": [{"path": str(tmp_path / "images/./b.jpg")}, {"path": str(tmp_path / "images/c.jpg")}]}]
    for row, result in zip(rows, results):
        assert sample_key(row, str(tmp_path)) == result_key(result)
    assert sample_key(rows[1], str(tmp_path)) == ("image", str(tmp_path / "images" / "b.jpg"))
    assert result_key(results[1]) != result_key({"images": [str(tmp_path / "images" / "c.jpg")]})


def test_cli_exit_codes(tmp_path, capsys):
    val, rows = _samples(tmp_path, 4)
    assert shards_main(["split", "--val", str(val), "--n", "2", "--out-dir", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "s" / "shard_0.jsonl"), str(tmp_path / "s" / "shard_1.jsonl")]
    r = _write(tmp_path / "r.jsonl", [_result(s, tmp_path) for s in rows])
    assert shards_main(["merge", "--val", str(val), "--out", str(tmp_path / "m.jsonl"), r]) == 0
    assert "4 result rows = the 4 rows" in capsys.readouterr().out
    short = _write(tmp_path / "short.jsonl", [_result(s, tmp_path) for s in rows[:1]])
    assert shards_main(["check", "--val", str(val), short]) == 2
    assert "3 of 4 requested rows have no result" in capsys.readouterr().err
    (tmp_path / "broken.jsonl").write_text('{"response": ""}\n{not json\n')
    assert shards_main(["check", "--val", str(val), str(tmp_path / "broken.jsonl")]) == 2
    assert "broken.jsonl:2: not valid JSON" in capsys.readouterr().err


def test_progress_counts_complete_lines_across_shards(tmp_path, capsys):
    from swift_coord_plugin.eval.shards import count_rows, progress_line

    val, rows = _samples(tmp_path, 10)
    s0, s1 = split_samples(str(val), 2, str(tmp_path / "shards"))
    r0 = _write(tmp_path / "r0.jsonl", [_result(s, tmp_path) for s in rows[:5]])
    r1 = tmp_path / "r1.jsonl"
    r1.write_text(json.dumps(_result(rows[5], tmp_path)) + "\n" + '{"response": "par')  # a line being written
    assert count_rows(str(r1)) == 1 and count_rows(str(tmp_path / "none.jsonl")) == 0
    assert shards_main(["progress", "--shards", s0, s1, "--results", r0, str(r1), "--rows-done"]) == 0
    assert capsys.readouterr().out.strip() == "6"
    assert shards_main(["progress", "--shards", s0, s1, "--results", r0, str(r1), "--elapsed", "2", "--baseline", "5"]) == 0
    # 5 rows were kept from an earlier run: the rate counts this run's row only
    assert capsys.readouterr().out.strip() == \
        "[eval] shards: 6/10 rows (60.0%) | 0.50 rows/s | about 8s left | 2s elapsed"
    assert progress_line(0, 4000, 30) == \
        "[eval] shards: 0/4000 rows (0.0%) | 0.00 rows/s | time left unknown (no row yet) | 30s elapsed"
    assert progress_line(1000, 4000, 600).endswith("about 30m00s left | 10m00s elapsed")
    assert progress_line(4000, 4000, 3700).endswith("done | 1h01m elapsed")


def test_shard_kept_only_when_complete_and_made_as_asked(tmp_path, capsys):
    """A shard's result file is kept when its stamp matches the run and it holds every row of the shard."""
    from swift_coord_plugin.cli import infer_settings

    val, rows = _samples(tmp_path, 6)
    s0, s1 = split_samples(str(val), 2, str(tmp_path / "shards"))
    gt = tmp_path / "gt.json"
    gt.write_text("{}")
    ck = tmp_path / "checkpoint-3"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"w")
    settings = str(tmp_path / "infer_settings.json")
    infer_settings.main(["write", "--checkpoint", str(ck), "--out", settings, "--max-pixels", "65536",
                         "--decoding", "constrained", "--infer-backend", "transformers", "--val-data", str(val)])
    r0 = _write(tmp_path / "r0.jsonl", [_result(s, tmp_path) for s in rows[:3]])
    stamp = str(tmp_path / "r0.settings.json")
    capsys.readouterr()
    args = ["--settings", settings, "--gt", str(gt), "--shard", s0]
    assert infer_settings.main(["shard-reuse", stamp, "--result", r0, *args]) == 1
    assert "r0.settings.json: not there" in capsys.readouterr().out
    assert infer_settings.main(["shard-stamp", "--out", stamp, *args]) == 0
    assert infer_settings.main(["shard-reuse", stamp, "--result", r0, *args]) == 0
    # another shard's rows (another split), a partial file, another resolution: not kept
    capsys.readouterr()
    assert infer_settings.main(["shard-reuse", stamp, "--result", r0, "--settings", settings, "--gt", str(gt),
                                "--shard", s1]) == 1
    assert "settings.inference.val_data_sha256: recorded" in capsys.readouterr().out
    partial = _write(tmp_path / "r0.jsonl", [_result(s, tmp_path) for s in rows[:2]])
    assert infer_settings.main(["shard-reuse", stamp, "--result", partial, *args]) == 1
    assert "incomplete: 1 of 3 requested rows have no result: image_id 102" in capsys.readouterr().out
    _write(tmp_path / "r0.jsonl", [_result(s, tmp_path) for s in rows[:3]])
    infer_settings.main(["write", "--checkpoint", str(ck), "--out", settings, "--max-pixels", "32768",
                         "--decoding", "constrained", "--infer-backend", "transformers", "--val-data", str(val)])
    capsys.readouterr()
    assert infer_settings.main(["shard-reuse", stamp, "--result", r0, *args]) == 1
    assert "settings.inference.max_pixels: recorded 65536, asked 32768" in capsys.readouterr().out
