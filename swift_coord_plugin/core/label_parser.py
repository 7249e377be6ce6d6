"""The label-sequence parser: label token ids -> coordinate positions, objects and boxes (no ms-swift import).

Public: ``IGNORE_INDEX``, ``CLOSED``, ``UNCLOSED``, ``TRUNCATED``, ``STAT_NAMES``, ``shift_labels``,
``SequenceLayout``, ``parse_targets``, ``parse_labels``. Design notes: ``docs/design/core_label_parser.md``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import torch
from torch import Tensor

from .codec import NUM_BINS

IGNORE_INDEX = -100

# Span statuses.
CLOSED = 0      # ended by <obj_end>
UNCLOSED = 1    # ended by the next <obj_start>
TRUNCATED = 2   # ended by an ignored position or the end of the row

# Counters of SequenceLayout.stats, in this order.
STAT_NAMES = (
    "labelled_tokens",     # targets != IGNORE_INDEX
    "text_tokens",         # labelled, not a coordinate token (descriptions, markers, end of turn, ...)
    "coord_tokens",        # labelled coordinate tokens
    "objects",             # spans (<obj_start> tokens)
    "boxes",               # spans that gave a box
    "unclosed_objects",    # spans without <obj_end> before the next <obj_start>
    "truncated_objects",   # spans cut by the end of the sequence or an ignored position
    "incomplete_objects",  # spans that did not give a box (not 4 consecutive coordinates)
    "stray_coords",        # coordinate tokens outside any span
    "coords_without_box",  # coordinate tokens not in a box (stray or in an incomplete span)
)


def shift_labels(labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """ms-swift labels ``[B, T]`` (unshifted) -> targets ``[B, T]`` aligned with the logits."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be [batch, seq], got shape {tuple(labels.shape)}")
    targets = torch.full_like(labels, ignore_index)
    targets[:, :-1] = labels[:, 1:]
    return targets


@dataclass
class SequenceLayout:
    """What the parser found in a ``[B, T]`` target tensor. Positions are flat (``b * T + t``).

    coord_pos    ``[n]``     positions whose target is a coordinate token, ascending
    coord_bins   ``[n]``     their target bins ``0..num_bins-1``
    coord_box    ``[n]``     index of the box each belongs to, ``-1`` if none
    box_coords   ``[m, 4]``  for each box, the indices into ``coord_pos`` of its x1, y1, x2, y2
    span_start   ``[s]``     position of each ``<obj_start>``
    span_end     ``[s]``     position of the token that ended it (``<obj_end>``, next ``<obj_start>``,
                            ignored position), ``-1`` at the end of a row
    span_status  ``[s]``     ``CLOSED`` / ``UNCLOSED`` / ``TRUNCATED``
    span_box     ``[s]``     box index of each span, ``-1`` if it gave none
    text_mask    ``[B, T]``  labelled targets that are not coordinate tokens
    desc_mask    ``[B, T]``  text targets inside a span before its first coordinate (the description)
    stats        ``[len(STAT_NAMES)]`` int64 counters, on the labels' device (reading them syncs)
    """

    shape: torch.Size
    coord_pos: Tensor
    coord_bins: Tensor
    coord_box: Tensor
    box_coords: Tensor
    span_start: Tensor
    span_end: Tensor
    span_status: Tensor
    span_box: Tensor
    text_mask: Tensor
    desc_mask: Tensor
    stats: Tensor

    @property
    def num_boxes(self) -> int:
        return int(self.box_coords.shape[0])

    @property
    def box_positions(self) -> Tensor:
        """``[m, 4]`` flat positions of each box's coordinates (for ``CoordExp``)."""
        return self.coord_pos[self.box_coords]

    @property
    def box_bins(self) -> Tensor:
        """``[m, 4]`` target bins of each box."""
        return self.coord_bins[self.box_coords]

    def report(self) -> Dict[str, int]:
        """The counters as Python ints (one host sync)."""
        return dict(zip(STAT_NAMES, self.stats.tolist()))


def parse_targets(targets: Tensor, coord_start: int, obj_start: int, obj_end: int, num_bins: int = NUM_BINS,
                  ignore_index: int = IGNORE_INDEX) -> SequenceLayout:
    """Parse targets ``[B, T]`` (already aligned with the logits, see ``shift_labels``)."""
    if targets.ndim != 2:
        raise ValueError(f"targets must be [batch, seq], got shape {tuple(targets.shape)}")
    coord_end = coord_start + num_bins
    for name, tid in (("obj_start", obj_start), ("obj_end", obj_end)):
        if coord_start <= tid < coord_end:
            raise ValueError(f"{name} id {tid} lies inside the coordinate id range {coord_start}..{coord_end - 1}")
    y = targets.long()
    B, T = y.shape
    dev = y.device
    is_ign = y == ignore_index
    is_coord = (y >= coord_start) & (y < coord_end)
    is_start = y == obj_start
    is_end = y == obj_end
    delim = is_start | is_end | is_ign
    col = torch.arange(T, device=dev).expand(B, T)
    row_base = (torch.arange(B, device=dev) * T).unsqueeze(1)

    # Latest delimiter at or before each position (-1: none in this row).
    last_delim = torch.where(delim, col, torch.full_like(col, -1)).cummax(dim=1).values
    has_delim = last_delim >= 0
    opener_is_start = is_start.gather(1, last_delim.clamp(min=0)) & has_delim
    # Inside a span: the latest delimiter is an <obj_start> (and the token is not itself a delimiter).
    in_span = opener_is_start & ~delim
    span_key = row_base + last_delim.clamp(min=0)  # flat position of the opening <obj_start>

    # First delimiter strictly after each position (T: none).
    nxt = torch.where(delim, col, torch.full_like(col, T)).flip(1).cummin(dim=1).values.flip(1)
    next_delim = torch.cat([nxt[:, 1:], torch.full_like(nxt[:, :1], T)], dim=1)

    flat_start = is_start.reshape(-1)
    span_start = flat_start.nonzero().squeeze(1)                         # [s]
    s = span_start.shape[0]
    span_index = torch.full((B * T,), -1, dtype=torch.long, device=dev)
    span_index[span_start] = torch.arange(s, device=dev)

    # Span ends and statuses.
    nd = next_delim.reshape(-1)[span_start]
    at_row_end = nd >= T
    span_row = span_start // T
    end_pos = torch.where(at_row_end, torch.full_like(nd, -1), span_row * T + nd)
    end_tok = y.reshape(-1)[end_pos.clamp(min=0)]
    span_status = torch.where(at_row_end, TRUNCATED,
                              torch.where(end_tok == obj_end, CLOSED,
                                          torch.where(end_tok == obj_start, UNCLOSED, TRUNCATED)))

    # Coordinates and the span each lies in.
    flat_coord = is_coord.reshape(-1)
    coord_pos = flat_coord.nonzero().squeeze(1)                          # [n]
    n = coord_pos.shape[0]
    coord_bins = y.reshape(-1)[coord_pos] - coord_start
    coord_in_span = in_span.reshape(-1)[coord_pos]
    coord_span = torch.where(coord_in_span, span_index[span_key.reshape(-1)[coord_pos]],
                             torch.full_like(coord_pos, -1))

    # Per span: number of coordinates and the first/last of their positions. Slot 0 of these
    # buffers collects the coordinates outside any span (no boolean indexing: no host sync).
    inside = coord_span >= 0
    slot = coord_span + 1
    big = B * T
    span_count = torch.zeros(s + 1, dtype=torch.long, device=dev).index_add_(0, slot, torch.ones_like(slot))[1:]
    first = torch.full((s + 1,), big, dtype=torch.long, device=dev).scatter_reduce_(0, slot, coord_pos, "amin")[1:]
    last = torch.full((s + 1,), -1, dtype=torch.long, device=dev).scatter_reduce_(0, slot, coord_pos, "amax")[1:]
    complete = (span_count == 4) & (last - first == 3)
    span_box = torch.where(complete, complete.long().cumsum(0) - 1, torch.full_like(span_count, -1))

    # Boxes: the 4 consecutive positions of each complete span, as indices into coord_pos.
    box_first = first[complete]                                          # [m]
    box_pos = box_first.unsqueeze(1) + torch.arange(4, device=dev)
    box_coords = torch.searchsorted(coord_pos, box_pos.reshape(-1)).reshape(-1, 4)
    coord_box = torch.cat([span_box.new_full((1,), -1), span_box])[slot]

    # Text targets and the description part of each span.
    labelled = ~is_ign
    text_mask = labelled & ~is_coord
    span_first = torch.full((B * T,), big, dtype=torch.long, device=dev)
    span_first[span_start] = first
    flat_pos = torch.arange(B * T, device=dev).reshape(B, T)
    first_coord_of_span = span_first[span_key.reshape(-1)].reshape(B, T)
    desc_mask = in_span & text_mask & (flat_pos < first_coord_of_span)

    m = box_coords.shape[0]
    stats = torch.stack([
        labelled.sum(),
        text_mask.sum(),
        torch.as_tensor(n, device=dev),
        torch.as_tensor(s, device=dev),
        torch.as_tensor(m, device=dev),
        (span_status == UNCLOSED).sum(),
        (span_status == TRUNCATED).sum(),
        (~complete).sum(),
        (~inside).sum(),
        (coord_box < 0).sum(),
    ]).long()
    return SequenceLayout(
        shape=y.shape, coord_pos=coord_pos, coord_bins=coord_bins, coord_box=coord_box, box_coords=box_coords,
        span_start=span_start, span_end=end_pos, span_status=span_status, span_box=span_box,
        text_mask=text_mask, desc_mask=desc_mask, stats=stats)


def parse_labels(labels: Tensor, coord_start: int, obj_start: int, obj_end: int, num_bins: int = NUM_BINS,
                 ignore_index: int = IGNORE_INDEX) -> SequenceLayout:
    """Parse ms-swift's unshifted labels ``[B, T]``: ``parse_targets(shift_labels(labels))``."""
    return parse_targets(shift_labels(labels, ignore_index), coord_start, obj_start, obj_end, num_bins, ignore_index)
