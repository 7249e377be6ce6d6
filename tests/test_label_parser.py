"""The label-sequence parser: boxes, spans and the report of incomplete objects."""
import random

import pytest
import torch

from swift_coord_plugin.core import codec
from swift_coord_plugin.core.label_parser import (CLOSED, IGNORE_INDEX, TRUNCATED, UNCLOSED, parse_labels,
                                                  parse_targets, shift_labels)

# A small synthetic vocabulary: the parser only needs the id ranges.
CS, S, E = 100, 1, 2
DESC, SPACE, EOT = 5, 6, 7
I = IGNORE_INDEX
PIECE = {S: codec.OBJ_START, E: codec.OBJ_END, DESC: " cat", SPACE: " ", EOT: "<|im_end|>"}


def c(k):
    return CS + k


def parse(rows):
    return parse_targets(torch.tensor(rows), CS, S, E)


def obj(bins, close=True):
    return [S, DESC, *[c(k) for k in bins], SPACE] + ([E] if close else [])


def test_complete_objects_and_positions():
    row = [I, I] + obj([1, 2, 3, 4]) + obj([10, 20, 30, 40]) + [EOT]
    L = parse([row])
    assert L.num_boxes == 2
    assert L.box_bins.tolist() == [[1, 2, 3, 4], [10, 20, 30, 40]]
    assert L.box_positions.tolist() == [[4, 5, 6, 7], [12, 13, 14, 15]]
    assert L.span_status.tolist() == [CLOSED, CLOSED]
    assert L.span_start.tolist() == [2, 10] and L.span_end.tolist() == [9, 17]
    assert L.desc_mask[0].nonzero().squeeze(1).tolist() == [3, 11]
    # Text = every labelled non-coordinate token: markers, descriptions, spaces, end of turn.
    assert L.text_mask.sum().item() == len(row) - 2 - 8
    rep = L.report()
    assert rep["boxes"] == 2 and rep["incomplete_objects"] == 0 and rep["coords_without_box"] == 0


def test_incomplete_objects_are_reported_not_paired():
    row = (obj([1, 2, 3]) +                      # 3 coordinates
           obj([1, 2, 3, 4, 5]) +                # 5 coordinates
           [S, DESC, c(1), c(2), DESC, c(3), c(4), E] +  # text between coordinates
           [c(9)] +                              # stray coordinate outside any span
           obj([5, 6, 7, 8], close=False) +      # 4 coordinates, no <obj_end>: kept (next <obj_start>)
           obj([11, 12, 13, 14]) +
           [S, DESC, c(7), c(8)])                # truncated at the end of the row
    L = parse([row])
    assert L.box_bins.tolist() == [[5, 6, 7, 8], [11, 12, 13, 14]]
    rep = L.report()
    assert rep["objects"] == 6 and rep["boxes"] == 2
    assert rep["incomplete_objects"] == 4
    assert rep["stray_coords"] == 1
    assert rep["unclosed_objects"] == 1 and rep["truncated_objects"] == 1
    assert rep["coords_without_box"] == 3 + 5 + 4 + 1 + 2
    assert L.span_status.tolist() == [CLOSED, CLOSED, CLOSED, UNCLOSED, CLOSED, TRUNCATED]
    assert L.span_box.tolist() == [-1, -1, -1, 0, 1, -1]
    # Every coordinate token is still found (for the per-token terms), with its bin.
    assert L.coord_pos.numel() == 3 + 5 + 4 + 1 + 4 + 4 + 2
    assert (L.coord_box >= 0).sum().item() == 8


def test_ignored_position_ends_an_object():
    # A -100 inside an object (a sequence boundary in a padding-free row): the object is truncated.
    row = [S, DESC, c(1), c(2), I, c(3), c(4), E]
    L = parse([row])
    assert L.num_boxes == 0
    assert L.report()["truncated_objects"] == 1 and L.report()["stray_coords"] == 2


def test_batch_rows_are_independent():
    a = [I] + obj([1, 2, 3, 4]) + [EOT]
    b = [I, I, I] + obj([7, 8, 9, 10])[:5] + [I] * 2  # truncated, then padding
    assert len(a) == len(b)
    L = parse([a, b])
    assert L.box_bins.tolist() == [[1, 2, 3, 4]]
    assert L.report()["truncated_objects"] == 1
    T = len(a)
    assert (L.coord_pos[L.coord_box < 0] >= T).all()


def test_shift_labels_matches_the_logits():
    labels = torch.tensor([[I, I, S, DESC, c(5)], [I, S, c(1), c(2), E]])
    t = shift_labels(labels)
    assert t.tolist() == [[I, S, DESC, c(5), I], [S, c(1), c(2), E, I]]
    L = parse_labels(labels, CS, S, E)
    assert L.coord_pos.tolist() == [3, 6, 7]  # logits[0, 3] predicts <|coord_5|>


def test_trimmed_batch_of_one_gives_the_same_boxes():
    """ms-swift trims a batch of one to the labelled positions (logits_to_keep); boxes must not change."""
    prompt = [I] * 7
    labels = torch.tensor([prompt + [S] + [DESC, c(1), c(2), c(3), c(4), SPACE, E] + obj([5, 6, 7, 8]) + [EOT]])
    full = parse_labels(labels, CS, S, E)
    keep = labels[0] != I
    trimmed = torch.nn.functional.pad(labels[:, keep], (1, 0), value=I)
    tr = parse_labels(trimmed, CS, S, E)
    assert tr.box_bins.tolist() == full.box_bins.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert tr.report() == full.report()


def test_padding_free_row_equals_separate_rows():
    s1 = [I] * 4 + obj([1, 2, 3, 4]) + obj([9, 9, 9]) + [EOT]
    s2 = [I] * 6 + obj([5, 6, 7, 8]) + [EOT]
    packed = parse_labels(torch.tensor([s1 + s2]), CS, S, E)
    sep1 = parse_labels(torch.tensor([s1]), CS, S, E)
    sep2 = parse_labels(torch.tensor([s2]), CS, S, E)
    assert packed.box_bins.tolist() == sep1.box_bins.tolist() + sep2.box_bins.tolist()
    r, r1, r2 = packed.report(), sep1.report(), sep2.report()
    assert r == {k: r1[k] + r2[k] for k in r}


def _random_sequence(rng):
    seq = [I] * rng.randint(0, 3)
    for _ in range(rng.randint(0, 5)):
        if rng.random() < 0.2 and (not seq or seq[-1] in (E, I)):
            seq.append(c(rng.randrange(1000)))  # stray coordinate (after an unclosed object it would join it)
        n = rng.choice([4, 4, 4, 4, 0, 1, 2, 3, 5, 6])
        x1, x2 = sorted(rng.randrange(1000) for _ in range(2))
        y1, y2 = sorted(rng.randrange(1000) for _ in range(2))
        bins = ([x1, y1, x2, y2] + [rng.randrange(1000) for _ in range(2)])[:n]
        seq += [S, DESC] + [c(k) for k in bins]
        if rng.random() < 0.8:
            seq.append(SPACE)
        if rng.random() < 0.8:
            seq.append(E)
    # End of turn only after a closed object: in a response, text after the coordinates of an object that
    # is never closed makes the codec drop it, while in labels those 4 coordinates are still a valid target.
    if not seq or seq[-1] in (E, I):
        seq.append(EOT)
    if rng.random() < 0.5:
        seq = seq[:rng.randint(1, len(seq))]  # cut anywhere
    return seq + [I] * rng.randint(0, 3)


def test_agrees_with_the_codec_response_parser_on_random_sequences():
    """The codec's robust parser is an independent oracle for which objects are complete boxes."""
    rng = random.Random(0)
    for _ in range(300):
        seq = _random_sequence(rng)
        pieces = [codec.coord_token(t - CS) if t >= CS else PIECE[t] for t in seq if t != I]
        expected = [list(o.bins) for o in codec.parse_pieces(pieces, dedupe=False).objects]
        got = parse([seq]).box_bins.tolist()
        assert got == expected, (seq, got, expected)


def test_no_coordinates_no_objects_and_all_ignored():
    L = parse([[I, DESC, EOT, I]])
    assert L.num_boxes == 0 and L.coord_pos.numel() == 0 and L.box_coords.shape == (0, 4)
    L = parse([[I] * 6, [I] * 6])
    assert L.report()["labelled_tokens"] == 0 and L.span_start.numel() == 0


def test_marker_inside_coordinate_range_is_an_error():
    with pytest.raises(ValueError, match="obj_start id"):
        parse_targets(torch.tensor([[I]]), CS, CS + 3, E)
