"""The plugin's settings checked at start-up (swift_ext/settings.py): every key, before the model loads."""
import hashlib
import sys

import pytest

from helpers import PLUGIN
from swift_coord_plugin.swift_ext.settings import SettingsError, check_settings


def test_check_settings_keys_values_and_group():
    env = {"COORDEXP_LEAN": "1", "COORD_ORDER": "x1y1", "COORD_ORDER_SEED": "3", "PATH": "/bin",
           "COORD_PROMPT": "Find."}
    assert check_settings(env, "coordexp_geom") == {"COORDEXP_LEAN": "1", "COORD_ORDER": "x1y1",
                                                     "COORD_ORDER_SEED": "3"}
    with pytest.raises(SettingsError, match=r"unknown loss setting\(s\) \['COORDEXP_LAMDA_W1'\]"):
        check_settings({"COORDEXP_LAMDA_W1": "1"})                       # without a loss type too (swift infer)
    with pytest.raises(SettingsError, match="COORDEXP_BOX_LOSS"):
        check_settings({"COORDEXP_BOX_LOSS": "iou"}, "cross_entropy")
    with pytest.raises(SettingsError, match="COORD_ORDER='zigzag'"):
        check_settings({"COORD_ORDER": "zigzag"})
    with pytest.raises(SettingsError, match="COORD_ORDER_SEED"):
        check_settings({"COORD_ORDER_SEED": "1.5"})
    # A contradiction needs the group: named with --loss_type B, not an error on its own.
    bad = {"COORDEXP_USE_COORDEXP_LOSS": "false"}
    check_settings(bad)
    with pytest.raises(SettingsError, match=r"--loss_type coordexp_geom.*use_geom_loss"):
        check_settings(bad, "coordexp_geom")


def test_arguments_post_init_stops_on_a_bad_model_kwarg(tiny_model_dir, sample_jsonl, monkeypatch):
    """In ms-swift's own argument post-init, where the plugin is imported: the --model_kwargs about to be
    exported are checked with the group of --loss_type, before any model or dataset is loaded."""
    from swift.arguments import SftArguments

    module = f"_swift_external_{hashlib.sha256(PLUGIN.encode()).hexdigest()}"
    monkeypatch.delitem(sys.modules, module, raising=False)  # ms-swift imports a plugin once per process
    monkeypatch.delenv("COORDEXP_USE_COORD_CE", raising=False)
    with pytest.raises(SettingsError, match=r"--loss_type coordexp_geom.*COORDEXP_USE_COORDEXP_LOSS"):
        SftArguments(model=tiny_model_dir, model_type="qwen3_vl_coord", template="qwen3_vl_coord",
                     external_plugins=[PLUGIN], dataset=[f"coord:{sample_jsonl}"], loss_type="coordexp_geom",
                     model_kwargs={"COORDEXP_USE_COORDEXP_LOSS": False}, output_dir="unused_out",
                     check_model=False)
