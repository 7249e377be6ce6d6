"""CoordExp: restricted softmax expectation and argmax decoding."""
import torch

from swift_coord_plugin.core import codec
from swift_coord_plugin.core.coordexp import (CoordExp, argmax_bins, argmax_boxes, argmax_coords, coord_logits_at,
                                              coord_mass_log, dequantize_bins, expected_bins, expected_boxes,
                                              expected_coords)

K = codec.NUM_BINS


def test_tensor_dequantize_is_the_codec_rule():
    k = torch.arange(K)
    got = dequantize_bins(k).tolist()
    assert got == [torch.tensor(codec.dequantize(i), dtype=torch.float32).item() for i in range(K)]
    for c in (0.0, 0.0004, 0.0005, 0.25, 0.5, 0.9994, 1.0):
        b = codec.quantize(c)
        assert argmax_coords(torch.nn.functional.one_hot(torch.tensor([b]), K).float() * 50).item() == \
            torch.tensor(codec.dequantize(b), dtype=torch.float32).item()


def test_expectation_peaked_uniform_and_two_point():
    peaked = torch.full((1, K), -1e4)
    peaked[0, 437] = 0.0
    assert abs(expected_bins(peaked).item() - 437) < 1e-3
    uniform = torch.zeros(1, K)
    assert abs(expected_coords(uniform).item() - (K - 1) / 2 / K) < 1e-6
    # Equal mass on bins 100 and 300: the mean is bin 200, the argmax the first of the two.
    two = torch.full((1, K), -1e4)
    two[0, [100, 300]] = 0.0
    assert abs(expected_bins(two).item() - 200) < 1e-3
    assert argmax_bins(two).item() == 100


def test_softmax_is_restricted_to_the_coordinate_columns():
    torch.manual_seed(0)
    V, cs = 1200, 150
    logits = torch.randn(2, 5, V)
    pos = torch.tensor([1, 3, 6, 9])
    before = expected_coords(coord_logits_at(logits, pos, cs))
    # A huge logit on a non-coordinate token changes the full softmax, not the restricted one.
    logits[..., 10] = 100.0
    logits[..., cs + K] = 100.0
    after = expected_coords(coord_logits_at(logits, pos, cs))
    torch.testing.assert_close(before, after)
    # Gather-then-slice equals slice-then-gather (reference: plain indexing of the full tensor).
    ref = logits.reshape(-1, V)[pos][:, cs:cs + K]
    torch.testing.assert_close(coord_logits_at(logits, pos, cs), ref)


def test_coordexp_module_on_batch_logits():
    torch.manual_seed(1)
    B, T, V, cs = 2, 8, 1100, 60
    logits = torch.randn(B, T, V, requires_grad=True)
    # Two objects: the second in row 1 (flat index 8 + t).
    box_pos = torch.tensor([[1, 2, 3, 4], [9, 10, 11, 12]])
    mod = CoordExp(cs)
    boxes = mod(logits, box_pos)
    assert boxes.shape == (2, 4)
    # Independent reference: softmax of the coordinate slice of each row, expectation k / NUM_BINS.
    rows = logits.detach()[[0, 0, 0, 0, 1, 1, 1, 1], [1, 2, 3, 4, 1, 2, 3, 4]][:, cs:cs + K]
    ref = (torch.softmax(rows, -1) * torch.arange(K) / K).sum(-1).reshape(2, 4)
    torch.testing.assert_close(boxes.detach(), ref)
    boxes.sum().backward()
    g = logits.grad
    assert g[..., :cs].abs().sum() == 0 and g[..., cs + K:].abs().sum() == 0
    assert g[0, 1, cs:cs + K].abs().sum() > 0 and g[0, 0].abs().sum() == 0
    am = mod.decode_argmax(logits, box_pos)
    torch.testing.assert_close(am, rows.argmax(-1).reshape(2, 4).float() / K)
    torch.testing.assert_close(argmax_boxes(coord_logits_at(logits, box_pos.reshape(-1), cs),
                                            torch.arange(8).reshape(2, 4)), am)


def test_bf16_logits_are_upcast():
    torch.manual_seed(2)
    z = torch.randn(6, K)
    e32 = expected_boxes(z, torch.tensor([[0, 1, 2, 3]]))
    e16 = expected_boxes(z.bfloat16(), torch.tensor([[0, 1, 2, 3]]))
    assert e16.dtype == torch.float32
    torch.testing.assert_close(e16, e32, atol=2e-3, rtol=0)


def test_coordinate_mass():
    torch.manual_seed(3)
    full = torch.randn(4, 1500)
    cs = 200
    coord = full[:, cs:cs + K]
    mass = coord_mass_log(coord, torch.logsumexp(full, -1)).exp()
    ref = torch.softmax(full, -1)[:, cs:cs + K].sum(-1)
    torch.testing.assert_close(mass, ref)


def test_vocabulary_too_small_is_an_error():
    try:
        coord_logits_at(torch.zeros(1, 2, 900), torch.tensor([0]), 0)
    except ValueError as e:
        assert "do not fit" in str(e)
    else:
        raise AssertionError("expected a ValueError")
