"""Coordinate input noise (``core.input_noise``, ``COORD_INPUT_NOISE_BINS`` / ``COORD_INPUT_NOISE_PROB``): only
coordinate tokens of the input move, by 1..max_shift bins, with the given probability; the plugin's model sees
the moved ids in training mode only."""
import pytest
import torch

from swift_coord_plugin.core.codec import NUM_BINS
from swift_coord_plugin.core.input_noise import BINS_ENV, PROB_ENV, noise_settings, perturb_coord_inputs
from swift_coord_plugin.swift_ext.settings import SettingsError, check_settings

START = 151669


def test_only_coordinate_tokens_move_by_one_to_max_shift_bins():
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, START, (64, 40), generator=g)
    bins = torch.randint(50, NUM_BINS - 50, (64, 40), generator=g)  # away from the clamp
    is_coord = torch.rand(64, 40, generator=g) < 0.5
    ids = torch.where(is_coord, bins + START, text)
    out = perturb_coord_inputs(ids, START, 5, 1.0, generator=g)
    assert torch.equal(out[~is_coord], ids[~is_coord])
    shift = (out - ids)[is_coord]
    assert shift.abs().min() >= 1 and shift.abs().max() <= 5
    assert set(shift.tolist()) == set(range(-5, 0)) | set(range(1, 6))  # every non-zero shift is drawn


def test_probability_clamp_and_off():
    g = torch.Generator().manual_seed(1)
    ids = torch.full((200, 50), START + 500)
    moved = (perturb_coord_inputs(ids, START, 3, 0.25, generator=g) != ids).float().mean().item()
    assert 0.22 < moved < 0.28
    edge = torch.tensor([START, START + NUM_BINS - 1] * 500)
    out = perturb_coord_inputs(edge, START, 4, 1.0, generator=g)
    assert int(out.min()) >= START and int(out.max()) <= START + NUM_BINS - 1
    assert perturb_coord_inputs(ids, START, 0, 1.0) is ids


@pytest.mark.parametrize("env, key", [({BINS_ENV: "two"}, BINS_ENV), ({BINS_ENV: "1000"}, BINS_ENV),
                                      ({BINS_ENV: "-1"}, BINS_ENV), ({BINS_ENV: "4", PROB_ENV: "0"}, PROB_ENV),
                                      ({BINS_ENV: "4", PROB_ENV: "1.5"}, PROB_ENV),
                                      ({BINS_ENV: "4", PROB_ENV: "half"}, PROB_ENV)])
def test_bad_settings_are_refused_at_start_up(env, key):
    with pytest.raises(ValueError, match=key):
        noise_settings(env)
    with pytest.raises(SettingsError, match=key):
        check_settings(env)


def test_defaults_and_recorded_settings():
    assert noise_settings({}) == (0, 0.5)
    assert noise_settings({BINS_ENV: "8", PROB_ENV: "0.3"}) == (8, 0.3)
    assert check_settings({BINS_ENV: "8", "OTHER": "x"}) == {BINS_ENV: "8"}


def test_the_plugin_model_sees_moved_ids_in_training_only(tiny_model_dir, monkeypatch):
    """Loaded as ``--model_type qwen3_vl_coord`` loads it (ms-swift's ``get_model_processor``): the embedding
    receives moved coordinate ids under ``model.train()`` and the given ids under ``model.eval()``."""
    from swift.model import get_model_processor

    from swift_coord_plugin.swift_ext.register import register

    monkeypatch.setenv(BINS_ENV, "3")
    monkeypatch.setenv(PROB_ENV, "1")
    register()
    model, processor = get_model_processor(tiny_model_dir, model_type="qwen3_vl_coord", torch_dtype=torch.float32,
                                           download_model=False)
    seen = []
    handle = model.get_input_embeddings().register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    tok = processor.tokenizer
    ids = torch.tensor([tok.encode("<obj_start> dog <|coord_10|><|coord_20|><|coord_300|><|coord_400|> <obj_end>")])
    is_coord = (ids >= START) & (ids < START + NUM_BINS)
    assert int(is_coord.sum()) == 4
    try:
        model.train()
        model(input_ids=ids)
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    trained, evaluated = seen
    assert torch.equal(evaluated, ids)
    assert torch.equal(trained[~is_coord], ids[~is_coord])
    d = (trained - ids)[is_coord].abs()
    assert int(d.min()) >= 1 and int(d.max()) <= 3
