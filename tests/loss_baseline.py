"""The loss of the spec's defaults on fixed inputs, for the bit-for-bit check of ``test_loss_switches``.

``python tests/loss_baseline.py --write`` records ``tests/data/loss_baseline.json``; it was run on the code
before the order/loss switches were added, so the test compares today's defaults with that code path.
Float64 inputs on CPU: the loss and metric sums are stored as ``float.hex``, the gradients as SHA-256 of
their bytes.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_losses import VOCAB, V, make_logits, two_rows  # noqa: E402

from swift_coord_plugin.core.losses import METRIC_NAMES, LossConfig, compute_loss, compute_loss_from_hidden  # noqa: E402

PATH = Path(__file__).resolve().parent / "data" / "loss_baseline.json"
CASES = {
    "A": ("A", {}), "B": ("B", {}), "C": ("C", {}),
    "B_gate": ("B", {"lambda_gate": 0.7}),
    "C_weights": ("C", {"lambda_coord": 0.3, "lambda_coord_ce": 2.0, "alpha_l1": 5.0, "beta_giou": 2.0}),
}
HIDDEN = 24


def _named(o) -> dict:
    return {n: v.hex() for n, v in zip(METRIC_NAMES, o.metric_sums.tolist())}


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest()


def compute(config_for=lambda group, overrides: LossConfig(**{**LossConfig.preset(group).to_dict(), **overrides})):
    """Case name -> {path: {loss, metric_sums, grad sha256}} on the current code."""
    labels, boxes = two_rows()
    out = {}
    for name, (group, overrides) in CASES.items():
        cfg = config_for(group, overrides)
        res = {}
        logits = make_logits(2, labels.shape[1], seed=5, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
        o = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=torch.tensor(40))
        g, = torch.autograd.grad(o.loss, logits)
        res["standard"] = {"loss": o.loss.item().hex(), "metric_sums": _named(o),
                           "grad": _sha(g)}
        gen = torch.Generator().manual_seed(6)
        hidden = torch.randn(2, labels.shape[1], HIDDEN, generator=gen, dtype=torch.float64, requires_grad=True)
        weight = (0.3 * torch.randn(V, HIDDEN, generator=gen, dtype=torch.float64)).requires_grad_(True)
        o = compute_loss_from_hidden(hidden, weight, labels, VOCAB, cfg, num_items_in_batch=torch.tensor(40),
                                     chunk_rows=16)
        gh, gw = torch.autograd.grad(o.loss, (hidden, weight))
        res["lean"] = {"loss": o.loss.item().hex(), "metric_sums": _named(o),
                       "grad": _sha(gh) + ":" + _sha(gw)}
        out[name] = res
    return out


if __name__ == "__main__":
    values = compute()
    if "--write" in sys.argv:
        PATH.parent.mkdir(parents=True, exist_ok=True)
        PATH.write_text(json.dumps(values, indent=1) + "\n")
    print(json.dumps(values, indent=1))
