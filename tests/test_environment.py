"""``swift_coord_plugin.environment``: the one reader of the process environment (keys, defaults, parsing)."""
import os
import re
from pathlib import Path

import pytest

from swift_coord_plugin import environment

PACKAGE = Path(environment.__file__).parent


def test_no_other_module_reads_the_environment():
    # Handing a whole environment on (``dict(os.environ, ...)``, a subprocess) is not a read.
    read = re.compile(r"os\.environ\s*(\.get|\[|\bif\b)|os\.getenv|os\.environ\s*$|=\s*os\.environ\b(?!\s*,)")
    readers = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "environment.py" and path.parent == PACKAGE:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if read.search(code) and "``" not in code:
                readers.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()}")
    assert not readers, "\n".join(readers)


def test_defaults_and_errors():
    assert environment.data_root({}) == "" and environment.data_root({"COORD_DATA_ROOT": " /d "}) == "/d"
    assert environment.image_check_cache_dir({}) == os.path.join(os.path.expanduser("~"), ".cache",
                                                                 "swift_coord_plugin")
    assert environment.image_check_cache_dir({"COORD_IMAGE_CHECK_CACHE": "/c"}) == "/c"
    assert environment.bad_samples_policy({}) == "error"
    assert environment.bad_samples_policy({"COORD_BAD_SAMPLES": " Drop "}) == "drop"
    with pytest.raises(ValueError, match="COORD_BAD_SAMPLES must be 'error' or 'drop', got 'skip'"):
        environment.bad_samples_policy({"COORD_BAD_SAMPLES": "skip"})
    assert environment.order_policy_setting({}).name == "y1x1" and environment.order_seed_setting({}) == 0
    assert environment.slots_path({}) is None and environment.decoding_record_path({"COORD_DECODING_RECORD": ""}) is None
    assert environment.slots_path({"COORD_DECODING_SLOTS": "s.jsonl"}) == os.path.abspath("s.jsonl")
    assert environment.init_rows_settings({}) == (0, 0.01)
    assert environment.init_rows_settings({"COORD_INIT_SEED": "3", "COORD_INIT_NOISE": "0.5"}) == (3, 0.5)
    with pytest.raises(ValueError):
        environment.init_rows_settings({"COORD_INIT_SEED": "x"})


def test_the_process_environment_is_read_live(monkeypatch):
    monkeypatch.setenv("COORD_BAD_SAMPLES", "drop")
    assert environment.current() is os.environ and environment.bad_samples_policy() == "drop"
    monkeypatch.delenv("COORD_BAD_SAMPLES")
    assert environment.bad_samples_policy() == "error"
