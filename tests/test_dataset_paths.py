"""swift_ext/dataset.py and swift_ext/swift_dataset.py: where a relative coord: path is taken from, and '#N' on a small validation file."""
import os

import pytest

from swift_coord_plugin.swift_ext.dataset import DATA_ROOT_ENV, resolve_data_path


def test_relative_paths_follow_the_data_root_then_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "root" / "data").mkdir(parents=True)
    (tmp_path / "root" / "data" / "val.jsonl").write_text("{}\n")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "root"))
    assert resolve_data_path("data/val.jsonl") == str(tmp_path / "root" / "data" / "val.jsonl")
    assert resolve_data_path(str(tmp_path / "root" / "data" / "val.jsonl")) == str(tmp_path / "root/data/val.jsonl")
    with pytest.raises(FileNotFoundError) as e:
        resolve_data_path("data/train.jsonl")
    assert f"coord:data/train.jsonl: no such file: {tmp_path / 'root' / 'data' / 'train.jsonl'}" in str(e.value)
    assert f"relative to ${DATA_ROOT_ENV}={tmp_path / 'root'}" in str(e.value)
    monkeypatch.delenv(DATA_ROOT_ENV)
    with pytest.raises(FileNotFoundError, match=r"relative to the current directory .*cwd \(\$COORD_DATA_ROOT is not set\)"):
        resolve_data_path("data/val.jsonl")
    monkeypatch.chdir(tmp_path / "root")
    assert resolve_data_path("data/val.jsonl") == os.path.join(str(tmp_path / "root"), "data", "val.jsonl")


def test_val_sample_beyond_the_file_takes_every_row(capsys):
    # ms-swift's own post_process asserts on '#N' > rows for a validation set; the coord loader takes all rows
    from datasets import Dataset
    from swift.dataset.loader import DatasetLoader

    from swift_coord_plugin.swift_ext.swift_dataset import CoordSampleLoader

    loader = object.__new__(CoordSampleLoader)
    loader._coord_source = "/x/val.jsonl"
    rows = Dataset.from_list([{"i": i} for i in range(3)])
    with pytest.raises(AssertionError, match="val_sample: 5, len"):
        DatasetLoader.post_process(rows, dataset_sample=5, split_dataset_ratio=1.0, shuffle=False)
    train, val = loader.post_process(rows, dataset_sample=5, split_dataset_ratio=1.0, shuffle=False)
    assert train is None and sorted(val["i"]) == [0, 1, 2]
    assert "'#5' asks 5 validation rows, the file has 3: using all 3" in capsys.readouterr().out
    _, val = loader.post_process(rows, dataset_sample=2, split_dataset_ratio=1.0, shuffle=False)
    assert len(val) == 2
    # a training set keeps ms-swift's meaning of '#N' > rows: the file repeated
    train, val = loader.post_process(rows, dataset_sample=5, split_dataset_ratio=0.0, shuffle=False)
    assert val is None and len(train) == 5
