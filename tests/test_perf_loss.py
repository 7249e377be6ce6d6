"""What the loss stage allocates, counted op by op (a dispatch mode sees every tensor each aten op returns,
forward and backward): the standard path allocates one ``[tokens, vocab]``-sized buffer fewer than ms-swift's
stock ``cross_entropy`` on the same logits (no second full-vocabulary pass, no boolean-mask copy of full rows,
no softmax over the coordinate slice at every position), and the lean path allocates none at all.
Timing and peak memory are measured by ``bench/bench_loss.py`` (results in ``bench/results_loss.md``).
"""
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from helpers import CS, K, VOCAB, build_row
from swift_coord_plugin.core.losses import LossConfig, compute_loss, compute_loss_from_hidden

V = CS + K + 24
H = 16


class Allocations(TorchDispatchMode):
    """Records every new tensor of at least ``min_numel`` elements returned by an aten op (views and in-place
    results excluded)."""

    def __init__(self, min_numel):
        super().__init__()
        self.min_numel = min_numel
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if (isinstance(t, torch.Tensor) and t.numel() >= self.min_numel and not t._is_view()
                    and t.untyped_storage().data_ptr() not in ins):
                self.seen.append((str(func), tuple(t.shape), t.dtype))
        return out


def _labels():
    rows = [build_row([[100, 200, 600, 700], [10, 20, 30, 40], [5, 6, 7, 8]] * 3, prompt=4, total=128)[0]
            for _ in range(4)]
    return torch.tensor(rows)


def _record(fn, min_numel):
    mode = Allocations(min_numel)
    with mode:
        loss = fn()
        loss.backward()
    return mode.seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_standard_path_allocates_no_more_full_vocabulary_buffers_than_stock(dtype):
    from swift.loss import loss_map

    from swift_coord_plugin.swift_ext import loss as coord_loss

    coord_loss.register()
    labels = _labels()
    B, T = labels.shape
    N = B * T
    base = torch.randn(B, T, V, dtype=dtype)

    def run(name):
        fn = loss_map[name](None, None)
        if name != "cross_entropy":
            fn.vocab = VOCAB
        logits = base.clone().requires_grad_(True)
        return _record(lambda: fn(SimpleNamespace(logits=logits), labels), N * K)

    stock = run("cross_entropy")
    assert stock and all(s[1] in ((N, V), (B, T, V)) for s in stock)
    for name in ("coordexp_ce", "coordexp_geom", "coordexp_hybrid"):
        mine = run(name)
        # Every buffer of N x 1000 elements or more is a full [tokens, vocab] one, and there is one fewer of them
        # than the stock loss allocates (the backward writes over the saved log-softmax).
        assert all(s[1] in ((N, V), (B, T, V)) for s in mine), (name, mine)
        assert len(mine) == len(stock) - 1, (name, mine, stock)
        nbytes = lambda seen: sum(torch.Size(s).numel() * torch.empty(0, dtype=d).element_size() for _, s, d in seen)
        assert nbytes(mine) < nbytes(stock), name


def test_standard_path_backward_runs_once():
    """The reused buffer makes a second backward through the same graph an error, not a wrong gradient."""
    labels = _labels()
    logits = torch.randn(*labels.shape, V, requires_grad=True)
    out = compute_loss(logits, labels, VOCAB, LossConfig.preset("C"))
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.loss.backward()


@pytest.mark.parametrize("group", "ABC")
def test_lean_path_never_holds_full_vocabulary_logits(group):
    labels = _labels()
    B, T = labels.shape
    N = B * T
    g = torch.Generator().manual_seed(0)
    h = torch.randn(B, T, H, generator=g).requires_grad_(True)
    w = torch.randn(V, H, generator=g).requires_grad_(True)
    cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), "lambda_gate": 0.1})
    chunk = 64
    seen = _record(lambda: compute_loss_from_hidden(h, w, labels, VOCAB, cfg, chunk_rows=chunk).loss, chunk * K)
    n_coord = int(((labels[:, 1:] >= CS) & (labels[:, 1:] < CS + K)).sum())
    assert chunk < n_coord < N
    # Only chunk-sized logits ([chunk, vocab]), the head gradient ([vocab, hidden]) and the coordinate logits of
    # the coordinate positions ([n_coord, 1000]) reach that size.
    assert seen and all(s[1] in ((chunk, V), (V, H), (n_coord, K)) for s in seen), seen
    assert not any(torch.Size(s).numel() >= N * V for _, s, _ in seen)
    # ... and the standard path on the same problem does hold them.
    std = _record(lambda: compute_loss(h @ w.t(), labels, VOCAB, cfg).loss, N * V)
    assert len(std) >= 3


SWITCHES = dict(lambda_soft_ce=0.5, lambda_w1=1.0, lambda_box_order=1.0, box_loss="ciou")


@pytest.mark.parametrize("group", "AB")
def test_switches_add_no_full_vocabulary_buffer(group):
    """Soft CE, W1, box order and CIoU work on the [n_coord, 1000] coordinate logits: the standard path allocates
    the same full-size buffers with them as without, the lean path still none."""
    labels = _labels()
    B, T = labels.shape
    N = B * T
    base = LossConfig.preset(group)
    on = LossConfig(**{**base.to_dict(), **SWITCHES})
    z = torch.randn(B, T, V)
    seen = {}
    for name, cfg in (("off", base), ("on", on)):
        logits = z.clone().requires_grad_(True)
        seen[name] = _record(lambda: compute_loss(logits, labels, VOCAB, cfg).loss, N * K)
    assert seen["on"] == seen["off"] and all(s[1] in ((N, V), (B, T, V)) for s in seen["on"])
    g = torch.Generator().manual_seed(1)
    h = torch.randn(B, T, H, generator=g).requires_grad_(True)
    w = torch.randn(V, H, generator=g).requires_grad_(True)
    chunk = 64
    lean = _record(lambda: compute_loss_from_hidden(h, w, labels, VOCAB, on, chunk_rows=chunk).loss, chunk * K)
    n_coord = int(((labels[:, 1:] >= CS) & (labels[:, 1:] < CS + K)).sum())
    assert all(s[1] in ((chunk, V), (V, H), (n_coord, K)) for s in lean), lean
