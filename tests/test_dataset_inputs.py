"""The ``coord:`` dataset and the template on real-world inputs: a row the check keeps is a row the model
trains on, and every other way of getting it wrong stops with what to do. Images are made here from the
shipped COCO images with PIL."""
import json
import os

import numpy as np
import pytest
import torch
from helpers import base_sft_args, read_jsonl, run_swift
from PIL import Image

from swift_coord_plugin.core import images
from swift_coord_plugin.swift_ext import dataset_args
from swift_coord_plugin.swift_ext.register import register

register()


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _load_rows(spec, **env):
    from swift.dataset import load_dataset

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        train, _ = load_dataset([spec], load_from_cache_file=False)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return train


@pytest.fixture()
def odd_jsonl(tmp_path, sample_jsonl):
    """3 good samples, then a truncated JPEG (line 4) and an image whose annotation is in the EXIF-rotated
    frame (line 5)."""
    good = read_jsonl(sample_jsonl)[:3]
    src = good[0]["image"]
    data = open(src, "rb").read()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with Image.open(src) as im:
        w, h = im.size
        exif = Image.Exif()
        exif[images.EXIF_ORIENTATION] = 6
        rot = tmp_path / "rot.jpg"
        im.save(rot, exif=exif)
    box = [{"desc": "dog", "bbox": [0.1, 0.1, 0.2, 0.3]}]
    rows = good + [{"image": str(cut), "objects": box, "width": w, "height": h},
                   {"image": str(rot), "objects": box, "width": h, "height": w}]
    return _write(tmp_path / "odd.jsonl", rows)


def test_truncated_and_rotated_images_stop_the_run_naming_file_and_line(odd_jsonl):
    with pytest.raises(Exception) as e:
        _load_rows(f"coord:{odd_jsonl}")
    msg = str(e.value)
    assert "2 bad sample(s)" in msg
    assert "odd.jsonl:4: image " in msg and "truncated" in msg
    assert "odd.jsonl:5: " in msg and "EXIF-rotated view" in msg and "fields width, height" in msg


def test_truncated_and_rotated_images_dropped_and_counted(odd_jsonl, capsys):
    rows = _load_rows(f"coord:{odd_jsonl}", COORD_BAD_SAMPLES="drop")
    assert len(rows) == 3
    out = capsys.readouterr().out
    assert "5 samples, 3 kept" in out
    assert "'unreadable_image': 1" in out and "'image_size_mismatch': 1" in out


def test_a_coco_json_or_nothing_kept_is_an_error_that_says_what_to_do(tmp_path):
    from helpers import SAMPLE_DIR

    coco_json = str(SAMPLE_DIR / "instances.json")
    for policy in ("error", "drop"):
        with pytest.raises(Exception, match="is a COCO instances JSON.*coord-prepare-coco"):
            _load_rows(f"coord:{coco_json}", COORD_BAD_SAMPLES=policy)
    missing = _write(tmp_path / "missing.jsonl", [{"image": str(tmp_path / f"{i}.jpg"), "objects": []}
                                                  for i in range(3)])
    with pytest.raises(Exception, match=r"no sample of .*missing.jsonl was kept \(3 rows"):
        _load_rows(f"coord:{missing}", COORD_BAD_SAMPLES="drop")


def test_hash_in_a_coord_path(tmp_path, sample_jsonl):
    folder = tmp_path / "run#3"
    folder.mkdir()
    path = folder / "train.jsonl"
    path.write_text(open(sample_jsonl).read())
    problem = dataset_args.dataset_spec_problem(f"coord:{path}")
    assert "reads what follows the last '#' as a sample count" in problem and "run%233" in problem
    assert dataset_args.dataset_spec_problem(f"coord:{path}#2") is None  # a real sample count
    numbered = tmp_path / "train.jsonl#5"  # a file whose name ends like a sample count
    numbered.write_text(open(sample_jsonl).read())
    assert "%23" in dataset_args.dataset_spec_problem(f"coord:{numbered}")
    escaped = str(path).replace("#", "%23")
    assert dataset_args.dataset_spec_problem(f"coord:{escaped}") is None
    assert len(_load_rows(f"coord:{escaped}")) == len(read_jsonl(sample_jsonl))
    assert len(_load_rows(f"coord:{escaped}#2")) == 2


def test_files_given_the_wrong_way(tmp_path, sample_jsonl):
    from helpers import SAMPLE_DIR

    assert "--dataset coord:" in dataset_args.dataset_spec_problem(sample_jsonl)
    assert "coord-prepare-coco" in dataset_args.dataset_spec_problem(str(SAMPLE_DIR / "instances.json"))
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + (SAMPLE_DIR / "instances.json").read_bytes())
    assert "coord-prepare-coco" in dataset_args.dataset_spec_problem(f"coord:{bom}")
    assert dataset_args.dataset_spec_problem(f"coord:{sample_jsonl}") is None
    assert dataset_args.dataset_spec_problem("AI-ModelScope/coco#100") is None  # not a file: ms-swift's


@pytest.fixture(scope="module")
def template(tiny_model_dir):
    from swift.model import get_model_processor
    from swift.template import get_template

    _, processor = get_model_processor(tiny_model_dir, model_type="qwen3_vl_coord", load_model=False,
                                       torch_dtype=torch.float32, download_model=False)
    t = get_template(processor, template_type="qwen3_vl_coord", max_pixels=65536)
    t.set_mode("train")
    return t


def _row(image):
    return {"messages": [{"role": "user", "content": "<image>"},
                         {"role": "assistant", "content": "<ref-object><bbox>"}],
            "images": [image],
            "objects": {"ref": ["dog"], "bbox": [[100, 100, 200, 300]], "bbox_type": "coord_bins"}}


def test_the_model_sees_transparent_and_16_bit_images_as_a_person_does(template, sample_jsonl, tmp_path):
    src = read_jsonl(sample_jsonl)[0]["image"]
    with Image.open(src) as im:
        rgba = np.asarray(im.convert("RGBA")).copy()
    rgba[: rgba.shape[0] // 2, :, 3] = 0
    rgba_path = tmp_path / "t.png"
    Image.fromarray(rgba, "RGBA").save(rgba_path)
    seen_path = tmp_path / "seen.png"  # what a person sees: the top half white
    images.to_rgb(Image.fromarray(rgba, "RGBA")).save(seen_path)
    dropped_alpha = tmp_path / "dropped.png"  # what convert("RGB") would give
    Image.fromarray(rgba, "RGBA").convert("RGB").save(dropped_alpha)
    pix = lambda p: template.encode(_row(str(p)))["pixel_values"]  # noqa: E731
    assert torch.equal(pix(rgba_path), pix(seen_path))
    assert not torch.equal(pix(rgba_path), pix(dropped_alpha))
    grey16 = (np.asarray(Image.open(src).convert("L")).astype(np.uint16) * 257)
    g16_path = tmp_path / "g16.png"
    Image.fromarray(grey16).save(g16_path)
    grey8 = tmp_path / "g8.png"
    Image.open(src).convert("L").convert("RGB").save(grey8)
    assert torch.equal(pix(g16_path), pix(grey8))  # 16-bit scaled, not clipped to white


def test_an_encode_failure_while_training_is_never_silent(template, sample_jsonl, tmp_path, monkeypatch, capsys):
    from swift_coord_plugin.swift_ext import template as tmpl

    data = open(read_jsonl(sample_jsonl)[0]["image"], "rb").read()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])  # as if the file broke after the dataset check
    monkeypatch.delenv("COORD_BAD_SAMPLES", raising=False)
    with pytest.raises(tmpl.EncodeFailure, match=r"cut.jpg.*truncated.*the run stops"):
        template.encode(_row(str(cut)))
    # ms-swift's lazy dataset catches Exception and substitutes a random row: EncodeFailure gets through
    from swift.dataset.utils import LazyLLMDataset

    lazy = LazyLLMDataset([_row(str(cut)), _row(read_jsonl(sample_jsonl)[0]["image"])], template.encode,
                          random_state=0)
    with pytest.raises(tmpl.EncodeFailure):
        lazy[0]
    monkeypatch.setenv("COORD_BAD_SAMPLES", "drop")
    before = tmpl.REPLACED_ROWS.get("encode_error", 0)
    assert "input_ids" in lazy[0]  # ms-swift replaced the row ...
    assert tmpl.REPLACED_ROWS["encode_error"] == before + 1  # ... and it was counted
    assert "cut.jpg not encoded (encode_error" in capsys.readouterr().out  # ... and reported


@pytest.mark.e2e
def test_swift_sft_stops_with_what_to_do(tiny_model_dir, sample_jsonl, tmp_path):
    """Through the real CLI: the wrong ways of naming data stop before anything is read (one run for
    four of them: a bare path, a COCO JSON, a '#' in the path, a UTF-16 file), and a coord: file of which nothing is kept stops with the reasons (no ZeroDivisionError)."""
    from helpers import SAMPLE_DIR

    hashed = tmp_path / "run#3"
    hashed.mkdir()
    (hashed / "val.jsonl").write_text(open(sample_jsonl).read())
    utf16 = tmp_path / "utf16.jsonl"  # what Windows PowerShell 5.1's '>' writes
    utf16.write_bytes(open(sample_jsonl, encoding="utf-8").read().encode("utf-16"))
    args = base_sft_args(tiny_model_dir, sample_jsonl, str(tmp_path / "o1"), steps=1)
    i = args.index("--dataset")
    args[i + 1:i + 2] = [sample_jsonl, f"coord:{SAMPLE_DIR / 'instances.json'}", f"coord:{utf16}"]
    args += ["--val_dataset", f"coord:{hashed / 'val.jsonl'}"]
    proc = run_swift("sft", args, tmp_path, env={"COORD_BAD_SAMPLES": "drop"}, check=False)
    assert proc.returncode != 0 and "ZeroDivisionError" not in proc.stdout
    assert f"{sample_jsonl}: a file of unified samples given as a bare path" in proc.stdout
    assert "--dataset coord:" in proc.stdout and "is a COCO instances JSON" in proc.stdout
    assert "run%233" in proc.stdout
    assert f"coord:{utf16}: {utf16}: the file is UTF-16 LE (with a byte-order mark) text, not UTF-8" in proc.stdout

    lost = _write(tmp_path / "lost.jsonl", [{"image": str(tmp_path / f"{k}.jpg"), "objects": []} for k in range(2)])
    proc = run_swift("sft", base_sft_args(tiny_model_dir, lost, str(tmp_path / "o2"), steps=1), tmp_path,
                     env={"COORD_BAD_SAMPLES": "drop"}, check=False)
    assert proc.returncode != 0 and "ZeroDivisionError" not in proc.stdout
    assert "no sample of" in proc.stdout and "lost.jsonl was kept (2 rows" in proc.stdout
    assert "'missing_image': 2" in proc.stdout


def test_ms_swift_rows_given_as_a_bare_path_are_left_to_ms_swift(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "<image>hi"}], "images": ["/x.jpg"]},
            {"image": "/x.jpg", "messages": []}]
    for i, row in enumerate(rows):
        path = _write(tmp_path / f"swift{i}.jsonl", [row])
        assert dataset_args.dataset_spec_problem(path) is None


def test_boxes_narrower_than_a_bin_are_widened_and_counted(template, sample_jsonl, tmp_path, capsys):
    """A box whose x1 and x2 fall into one bin would be a zero-area target: the preprocessor writes it one bin
    wide and counts it; the template does the same for boxes it quantises itself (``norm1``) and for bins."""
    row = read_jsonl(sample_jsonl)[0]
    row["objects"] = [{"desc": "pole", "bbox": [0.1561, 0.1, 0.1564, 0.3]},
                      {"desc": "wire", "bbox": [0.2, 0.5002, 0.6, 0.5004]},
                      {"desc": "dog", "bbox": [0.3, 0.6, 0.5, 0.9]}]
    rows = _load_rows(f"coord:{_write(tmp_path / 'narrow.jsonl', [row])}")
    assert rows[0]["objects"]["bbox"] == [[156, 100, 157, 300], [200, 500, 600, 501], [300, 600, 500, 900]]
    assert "boxes narrower than a bin, widened to one bin: 2" in capsys.readouterr().out
    coord0 = template.tokenizer.convert_tokens_to_ids("<|coord_0|>")
    for objects in ({"ref": ["pole"], "bbox": [[0.1561, 0.1, 0.1564, 0.3]], "bbox_type": "norm1"},
                    {"ref": ["pole"], "bbox": [[156, 100, 156, 300]], "bbox_type": "coord_bins"}):
        enc = template.encode({**_row(row["image"]), "objects": objects})
        bins = [t - coord0 for t in enc["labels"] if coord0 <= t < coord0 + 1000]
        assert bins == [156, 100, 157, 300], objects
