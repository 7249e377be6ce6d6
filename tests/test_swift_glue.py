"""The ms-swift glue in process: vocabulary, initialisation, dataset routing and the template round trip."""
import contextlib
import json
import os

import pytest
import torch

from helpers import SHARED_DATA, read_jsonl, shared_data_or_skip
from swift_coord_plugin.core import codec
from swift_coord_plugin.core.vocab import CoordVocab
from swift_coord_plugin.swift_ext.register import register

register()
register()  # idempotent


@contextlib.contextmanager
def _env(**env):
    """Environment keys set for the block only."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update({k: str(v) for k, v in env.items()})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _load(model_dir, load_model=True, **env):
    from swift.model import get_model_processor

    with _env(**env):
        return get_model_processor(model_dir, model_type="qwen3_vl_coord", load_model=load_model,
                                   torch_dtype=torch.float32, download_model=False)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return _load(tiny_model_dir)


@pytest.fixture(scope="module")
def template(loaded):
    from swift.template import get_template

    t = get_template(loaded[1], template_type="qwen3_vl_coord", max_pixels=65536)
    t.set_mode("train")
    return t


def test_plugin_file_imports_twice():
    import importlib.util

    from helpers import PLUGIN

    for name in ("plugin_copy_a", "plugin_copy_b"):  # ms-swift imports it under a synthetic name
        spec = importlib.util.spec_from_file_location(name, PLUGIN)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    from swift.loss import loss_map
    from swift.template import TEMPLATE_MAPPING

    assert "qwen3_vl_coord" in TEMPLATE_MAPPING
    assert {"coordexp_ce", "coordexp_geom", "coordexp_hybrid"} <= set(loss_map)


_EXIT_PROBE = """
import atexit, os, sys, tempfile, time
import torch.distributed as dist
# atexit runs last-in first-out: this print runs after the plugin's handler, the t0 stamp below before it
atexit.register(lambda: print(f"plugin handler took {time.perf_counter() - t0[0]:.3f} s", flush=True))
if sys.argv[1] == "plugin":
    import importlib.util
    spec = importlib.util.spec_from_file_location("plugin_probe", sys.argv[2])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
t0 = [None]
atexit.register(lambda: t0.__setitem__(0, time.perf_counter()))
if sys.argv[3] == "distributed":
    store = dist.FileStore(os.path.join(tempfile.mkdtemp(), "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    dist.barrier()
"""


@pytest.mark.parametrize("with_plugin, distributed", [(False, True), (True, True), (True, False)])
def test_plugin_gives_up_the_gil_at_exit_of_a_distributed_run(with_plugin, distributed):
    """The plugin's exit handler sleeps ``EXIT_GRACE_S`` (the GIL released) when a process group is open,
    and does nothing otherwise; without the plugin nothing waits."""
    import re
    import subprocess
    import sys

    from helpers import PLUGIN
    from swift_coord_plugin.swift_ext.register import EXIT_GRACE_S

    proc = subprocess.run([sys.executable, "-c", _EXIT_PROBE, "plugin" if with_plugin else "bare", PLUGIN,
                           "distributed" if distributed else "single"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    took = float(re.search(r"plugin handler took ([0-9.]+) s", proc.stdout).group(1))
    if with_plugin and distributed:
        assert EXIT_GRACE_S <= took < EXIT_GRACE_S + 5, took
    else:
        assert took < EXIT_GRACE_S, took


# Two ranks; the model wrapper keeps the group alive (as DDP does in ``swift sft``); the last all-reduce
# is right before exit, as the last metric sync of a run is. The handler alone: the probe above shows that
# the plugin installs it, and importing ms-swift would make each launch three times slower.
_LAST_ALLREDUCE = """
import atexit
import torch, torch.distributed as dist
from swift_coord_plugin.swift_ext.register import let_comm_threads_finish
atexit.register(let_comm_threads_finish)
dist.init_process_group("gloo")
held = dist.group.WORLD
t = torch.ones(8)
dist.all_reduce(t)
assert t.tolist() == [2.0] * 8
"""


def test_two_rank_launch_exits_cleanly_after_a_last_all_reduce(tmp_path):
    """Without the plugin's exit handler a gloo worker thread is cancelled in a destructor during
    finalisation in about a third of these launches (SIGABRT, "terminate called without an active
    exception"); eight clean launches in a row are what the handler gives (a test that fails with
    probability 1 - 0.7**8 = 94% without it)."""
    import socket
    import subprocess
    import sys

    script = tmp_path / "last_all_reduce.py"
    script.write_text(_LAST_ALLREDUCE)
    for attempt in range(8):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                               "--master_port", str(port), str(script)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        assert proc.returncode == 0, (attempt, proc.stdout[-3000:])


def test_vocabulary_added_contiguous_and_padded(loaded):
    model, processor = loaded
    vocab = CoordVocab.from_tokenizer(processor.tokenizer)
    assert vocab.coord_start == 151669 and vocab.obj_start == 152669 and vocab.obj_end == 152670
    tok = processor.tokenizer
    assert len(tok) == 151669 + 1002
    ids = tok.encode("<obj_start> dog <|coord_0|><|coord_999|><|coord_5|><|coord_6|> <obj_end>", add_special_tokens=False)
    assert ids[0] == vocab.obj_start and ids[-1] == vocab.obj_end
    assert vocab.coord_start in ids and vocab.coord_start + 999 in ids
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == 152704 and rows % 64 == 0 and rows >= len(tok)
    assert model.get_output_embeddings().weight.shape[0] == rows


def test_new_rows_uniform_and_seeded(tiny_model_dir, tiny_model_untied_dir, loaded):
    model, _ = loaded
    w = model.get_input_embeddings().weight.detach()
    base = w[:151669]
    new = w[151669:]  # the 1002 new tokens and the padding rows after them
    # Every new row (also those that were unused padding rows before) is the base mean plus small noise.
    assert torch.allclose(new.mean(0), base.mean(0), atol=5 * 0.01 * base.std(0).max().item())
    assert (new - base.mean(0)).abs().max() < 0.1 * base.std(0).max()
    assert new.std(0).mean() < 0.05 * base.std(0).mean()
    again, _ = _load(tiny_model_dir)
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    other, _ = _load(tiny_model_dir, COORD_INIT_SEED=7)
    assert not torch.equal(other.get_input_embeddings().weight[151669:], new)
    assert torch.equal(other.get_input_embeddings().weight[:151669], base)
    untied, _ = _load(tiny_model_untied_dir)
    head = untied.get_output_embeddings().weight.detach()
    emb = untied.get_input_embeddings().weight.detach()
    assert head.data_ptr() != emb.data_ptr() and head.shape == emb.shape == (152704, 64)
    assert torch.allclose(head[151669:].mean(0), head[:151669].mean(0), atol=1e-3)
    torch.manual_seed(1234)  # the global RNG (used by ms-swift's own resize) must not matter
    untied2, _ = _load(tiny_model_untied_dir)
    assert torch.equal(untied2.get_output_embeddings().weight, untied.get_output_embeddings().weight)
    assert torch.equal(untied2.get_input_embeddings().weight, untied.get_input_embeddings().weight)


def test_loading_a_checkpoint_adds_nothing(tmp_path, loaded):
    model, processor = loaded
    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    for f in ("chat_template.jinja",):
        pass
    again, proc2 = _load(str(out), COORD_INIT_SEED=99)  # a different seed must not touch saved rows
    assert len(proc2.tokenizer) == len(processor.tokenizer)
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)


def _load_rows(path, **env):
    from swift.dataset import load_dataset

    with _env(**env):
        train, _ = load_dataset([f"coord:{path}"], load_from_cache_file=False)
    return train


def test_dataset_routing_and_rows(sample_jsonl, capsys):
    rows = _load_rows(sample_jsonl)
    assert "[swift-coord] dataset" in capsys.readouterr().out  # the plugin's preprocessor ran
    samples = read_jsonl(sample_jsonl)
    assert len(rows) == len(samples)
    for row, s in zip(rows, samples):
        ordered = codec.order_objects(codec.DetObject(o["desc"], tuple(o["bbox"])) for o in s["objects"])
        assert row["objects"]["bbox"] == [list(o.bins) for o in ordered]
        assert row["objects"]["ref"] == [o.desc for o in ordered]
        assert row["chat_template_kwargs"]["coord_meta"] == {"image_id": s["image_id"], "width": s["width"],
                                                            "height": s["height"]}


def test_relative_image_paths_resolve_from_the_file(tmp_path):
    from helpers import SAMPLE_JSONL

    rows = _load_rows(str(SAMPLE_JSONL))  # the shipped file uses paths relative to its folder
    assert all(os.path.isfile(r["images"][0]["path"]) for r in rows)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture()
def bad_jsonl(tmp_path, sample_jsonl):
    good = read_jsonl(sample_jsonl)[:3]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    img = good[0]["image"]
    bad = [
        {"image": str(tmp_path / "nope.jpg"), "objects": []},                                   # line 4
        {"image": img, "objects": [{"desc": "dog", "bbox": [0.1, 0.1, 1.2, 0.5]}]},             # line 5
        {"image": img, "objects": [{"desc": "dog", "bbox": [0.6, 0.1, 0.2, 0.5]}]},             # line 6
        {"image": img, "objects": [{"desc": "  ", "bbox": [0.1, 0.1, 0.2, 0.5]}]},              # line 7
        {"image": str(broken), "objects": [{"desc": "dog", "bbox": [0.1, 0.1, 0.2, 0.5]}]},     # line 8
    ]
    return _write(tmp_path / "bad.jsonl", good + bad)


def test_bad_samples_error_names_each(bad_jsonl):
    with pytest.raises(Exception) as e:
        _load_rows(bad_jsonl)
    msg = str(e.value)
    assert "5 bad sample(s)" in msg
    for line, what in [(4, "image file not found"), (5, "outside [0, 1]"), (6, "x2 < x1"), (7, "desc is empty"),
                       (8, "image cannot be read")]:
        assert f"bad.jsonl:{line}: " in msg and what in msg


def test_bad_samples_dropped_and_counted(bad_jsonl, capsys):
    rows = _load_rows(bad_jsonl, COORD_BAD_SAMPLES="drop")
    assert len(rows) == 3
    out = capsys.readouterr().out
    assert "8 samples, 3 kept" in out
    assert "'missing_image': 1" in out and "'bad_bbox': 2" in out and "'bad_desc': 1" in out
    assert "'unreadable_image': 1" in out


def test_template_renders_prompt_and_masks(template, sample_jsonl):
    row = dict(_load_rows(sample_jsonl)[0])
    enc = template.encode(row)
    tok = template.tokenizer
    ids, labels = enc["input_ids"], enc["labels"]
    text = tok.decode(ids)
    assert codec.DEFAULT_PROMPT in text
    first = next(i for i, l in enumerate(labels) if l != -100)
    assert ids[first] == template.coord_vocab.obj_start  # prompt and image tokens are masked
    assert 151655 not in [l for l in labels if l != -100]
    label_text = tok.decode([l for l in labels if l != -100])
    n_objects = len(row["objects"]["ref"])
    coords = [l for l in labels if template.coord_vocab.is_coord(l)]
    assert len(coords) == 4 * n_objects  # every coordinate is one label token
    assert label_text.rstrip("\n").endswith("<obj_end><|im_end|>")  # end of turn is a text target


def test_prompt_is_configurable(loaded, sample_jsonl, monkeypatch):
    from swift.template import get_template

    monkeypatch.setenv("COORD_PROMPT", "Find every object.")
    t = get_template(loaded[1], template_type="qwen3_vl_coord", max_pixels=65536)
    t.set_mode("train")
    text = t.tokenizer.decode(t.encode(dict(_load_rows(sample_jsonl)[1]))["input_ids"])
    assert "Find every object." in text and codec.DEFAULT_PROMPT not in text


def test_template_orders_swift_grounding_rows(template, sample_jsonl):
    # A stock ms-swift grounding row (pixel boxes, any order) is normalised, quantised and ordered.
    s = read_jsonl(sample_jsonl)[0]
    row = {"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "<ref-object><bbox>" * 2}],
           "images": [s["image"]],
           "objects": {"ref": ["low", "high"], "bbox": [[64, 240, 128, 480], [320, 48, 640, 96]], "bbox_type": "real"}}
    labels = template.encode(row)["labels"]
    got = codec.parse_objects(template.tokenizer.decode([l for l in labels if l != -100]))
    assert [(o.desc, o.bins) for o in got.objects] == [("high", (500, 100, 999, 200)), ("low", (100, 500, 200, 999))]


def test_round_trip_every_coco128_image(template, tmp_path):
    """Render, tokenize with the template, decode the labels, parse: the quantised objects come back."""
    ann = shared_data_or_skip("coco128", "annotations", "instances_train2017.json")
    from swift_coord_plugin.data.coco import ConvertOptions, prepare_coco

    out = str(tmp_path / "coco128.jsonl")
    prepare_coco(str(ann), str(SHARED_DATA / "coco128" / "images"), out, ConvertOptions(max_objects=0))
    samples = read_jsonl(out)
    assert len(samples) == 128
    rows = _load_rows(out)
    assert len(rows) == 128
    n_obj = 0
    for row, s in zip(rows, samples):
        enc = template.encode(dict(row))
        labels = [l for l in enc["labels"] if l != -100]
        text = template.tokenizer.decode(labels)
        assert text.rstrip("\n").endswith("<|im_end|>")
        parsed = codec.parse_objects(text.rstrip("\n")[: -len("<|im_end|>")], dedupe=False)
        want = [(codec.clean_desc(o["desc"]), codec.quantize_box(o["bbox"])) for o in s["objects"]]
        assert [(o.desc, o.bins) for o in parsed.objects] == want, s["image"]
        assert parsed.counts == {}
        n_obj += len(want)
    assert n_obj > 900


# ---------------------------------------------------------------------------------------------- object order
def _label_objects(t, row):
    labels = [l for l in t.encode(dict(row))["labels"] if l != -100]
    return [(o.desc, o.bins) for o in codec.parse_objects(t.tokenizer.decode(labels)).objects]


def _template_with(loaded, **env):
    from swift.template import get_template

    with _env(**env):
        t = get_template(loaded[1], template_type="qwen3_vl_coord", max_pixels=65536)
    t.set_mode("train")
    return t


def test_order_policy_reaches_rows_and_template(loaded, sample_jsonl):
    """COORD_ORDER=x1y1: the preprocessor's rows and the template's grounding rows both follow it."""
    rows = _load_rows(sample_jsonl, COORD_ORDER="x1y1")
    x1y1 = codec.order_policy("x1y1")
    for row, s in zip(rows, read_jsonl(sample_jsonl)):
        ordered = codec.order_objects((codec.DetObject(o["desc"], tuple(o["bbox"])) for o in s["objects"]), x1y1)
        assert row["objects"]["bbox"] == [list(o.bins) for o in ordered]
    t = _template_with(loaded, COORD_ORDER="x1y1")
    s = read_jsonl(sample_jsonl)[0]
    row = {"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "<ref-object><bbox>" * 2}],
           "images": [s["image"]],
           "objects": {"ref": ["right", "left"], "bbox": [[320, 48, 640, 96], [64, 240, 128, 480]], "bbox_type": "real"}}
    assert _label_objects(t, row) == [("left", (100, 500, 200, 999)), ("right", (500, 100, 999, 200))]
    with pytest.raises(ValueError, match="COORD_ORDER"):
        _template_with(loaded, COORD_ORDER="spiral")


def test_random_order_is_redrawn_per_epoch_and_reproducible(loaded, sample_jsonl):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    rows = [r for r in _load_rows(sample_jsonl, COORD_ORDER="random") if len(r["objects"]["ref"]) >= 4]
    assert rows
    t = _template_with(loaded, COORD_ORDER="random", COORD_ORDER_SEED="7")
    t2 = _template_with(loaded, COORD_ORDER="random", COORD_ORDER_SEED="7")
    t3 = _template_with(loaded, COORD_ORDER="random", COORD_ORDER_SEED="8")
    by_epoch = {}
    for epoch in (0, 1, 2):
        t.coord_order_epoch = t2.coord_order_epoch = t3.coord_order_epoch = epoch
        by_epoch[epoch] = [_label_objects(t, r) for r in rows]
        assert by_epoch[epoch] == [_label_objects(t2, r) for r in rows]  # same seed, same epoch: same order
        assert by_epoch[epoch] != [_label_objects(t3, r) for r in rows]  # another seed: another draw
        for got, row in zip(by_epoch[epoch], rows):  # a permutation of the objects
            assert sorted(got) == sorted(zip(row["objects"]["ref"], map(tuple, row["objects"]["bbox"])))
    assert by_epoch[0] != by_epoch[1] != by_epoch[2]

    # The epoch arrives through the callback the template adds to the trainer at its first step.
    class _Trainer:  # what the template uses of a trainer: its arguments and add_callback
        args = TrainingArguments(output_dir="unused", report_to=[])
        callbacks = []

        def add_callback(self, cb):
            self.callbacks.append(cb)

    trainer = _Trainer()
    t._watch_epochs(trainer)
    t._watch_epochs(trainer)
    assert len(trainer.callbacks) == 1
    state = TrainerState()
    state.epoch = 2.0
    trainer.callbacks[0].on_epoch_begin(trainer.args, state, TrainerControl())
    assert t.coord_order_epoch == 2
    trainer.args = TrainingArguments(output_dir="unused", report_to=[], dataloader_num_workers=2,
                                     dataloader_persistent_workers=True)
    t._coord_epochs_watched = False
    with pytest.raises(ValueError, match="persistent"):
        t._watch_epochs(trainer)
