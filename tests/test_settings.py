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


# ---------------------------------------------------------------------------------------------- ms-swift options
REPLACED_ON = {"enable_dft_loss": True, "label_smoothing_factor": 0.1, "enable_channel_loss": True,
               "use_liger_kernel": True, "sequence_parallel_size": 2}


def test_every_ms_swift_loss_option_is_refused_for_every_group_and_only_there():
    """Each option that acts inside ms-swift's own loss, alone, stops every plugin loss type, naming it; the
    same values with ms-swift's loss, and the options off, pass."""
    from types import SimpleNamespace

    from swift_coord_plugin.swift_ext.settings import LOSS_GROUPS, REPLACED_SWIFT_OPTIONS, check_swift_options

    assert {name for name, _, _ in REPLACED_SWIFT_OPTIONS} == set(REPLACED_ON)
    off = SimpleNamespace(enable_dft_loss=False, label_smoothing_factor=0.0, enable_channel_loss=False,
                          use_liger_kernel=False, sequence_parallel_size=1)
    for loss_type in LOSS_GROUPS:
        check_swift_options(off, loss_type)
        for name, value in REPLACED_ON.items():
            args = SimpleNamespace(**{**vars(off), name: value})
            with pytest.raises(SettingsError, match=rf"--loss_type {loss_type} .*\n  --{name} {value}:"):
                check_swift_options(args, loss_type)
            check_swift_options(args, "cross_entropy")
            check_swift_options(args, None)


def test_swift_sft_refuses_the_options_its_loss_would_replace_before_loading_the_model(sample_jsonl, tmp_path):
    """One real ``swift sft`` launch with all of them: it stops at argument parsing, listing every option, before
    any model is looked at (the model path does not even exist; about 13 s of CPU on 2 cores)."""
    import time

    from helpers import base_sft_args, run_swift

    args = base_sft_args(str(tmp_path / "no-model"), sample_jsonl, str(tmp_path / "out"), steps=1,
                         loss_type="coordexp_hybrid")
    for name, value in REPLACED_ON.items():
        args += [f"--{name}", str(value).lower()]
    t0 = time.perf_counter()
    proc = run_swift("sft", args, tmp_path, check=False)
    seconds = time.perf_counter() - t0
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert "--loss_type coordexp_hybrid replaces ms-swift's own loss" in proc.stdout, proc.stdout[-3000:]
    for name, value in REPLACED_ON.items():
        assert f"--{name} {value}:" in proc.stdout, (name, proc.stdout[-3000:])
    assert "coordexp loss configuration" not in proc.stdout and "added 1002 tokens" not in proc.stdout
    print(f"swift sft stopped after {seconds:.1f} s")


def test_coordexp_config_states_the_lambda_convention():
    from types import SimpleNamespace

    from swift.loss import loss_map

    from swift_coord_plugin.swift_ext.register import register

    register()
    info = loss_map["coordexp_geom"](SimpleNamespace(enable_dft_loss=False), None).describe()
    assert info["lambda_coord_per"].startswith("coordinate token") and "lambda_box / 4" in info["lambda_coord_per"]
