"""The loss of the spec's defaults on fixed inputs, for ``test_defaults_reproduce_the_recorded_loss``.

``tests/data/loss_baseline.json`` holds what the code gave before the order/loss switches were added (float64
inputs on CPU, groups A/B/C plus gate and weight variants, standard and lean paths): the loss, the logged metric
sums and the gradients, as numbers. It was written by ``python tests/loss_baseline.py --write`` with the
package of commit e82ca65 on the import path (``PYTHONPATH=<checkout of e82ca65>``), so the test compares
today's defaults with that code path.

The numbers were computed on one machine and are compared with a relative tolerance (``RTOL``), not bit for
bit: a float64 reduction is not bit-reproducible across the CPU kernels PyTorch dispatches to (AVX-512, AVX2,
the default kernels) nor across thread counts. What rounding can change, and why ``RTOL`` covers it yet not a
real change, is in ``docs/losses.md`` (Switches beyond the groups).

Gradients: the full gradients (475,840 float64 values over the ten case/path pairs) would make a file of
megabytes, so each gradient is recorded row by row (a row: one token position of the logits or hidden
states; one hidden unit of the output weight, i.e. a column over the vocabulary) as three numbers: the row's
L1 norm and its sums with two fixed +-1 sign vectors. These sums are added exactly (``math.fsum`` of exact
products), so the only machine dependence left is that of the gradient itself; a row mismatches when a
signed sum moves by more than ``RTOL`` times the row's L1 norm, or the norm by more than ``RTOL`` of itself.
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import VOCAB, V, make_logits, two_rows  # noqa: E402

from swift_coord_plugin.core.losses import METRIC_NAMES, LossConfig, compute_loss, compute_loss_from_hidden  # noqa: E402

PATH = Path(__file__).resolve().parent / "data" / "loss_baseline.json"
CASES = {
    "A": ("A", {}), "B": ("B", {}), "C": ("C", {}),
    "B_gate": ("B", {"lambda_gate": 0.7}),
    "C_weights": ("C", {"lambda_coord": 0.3, "lambda_coord_ce": 2.0, "alpha_l1": 5.0, "beta_giou": 2.0}),
}
HIDDEN = 24
# Relative tolerance of every recorded number. Float64 rounding stays below it: the longest reductions here
# (log-sum-exp and expectations over V = 1064 logits, sums over <= 64 positions) have a worst-case relative
# error of about n * 2**-53 = 1.2e-13, and the largest difference measured across kernels and thread counts is
# 1.4e-14 (docs/losses.md). A 1e-9 relative change of one input exceeds it (test_losses_switches.py).
RTOL = 1e-12
SIGN_SEED = 0
# The inputs a gradient is taken with respect to, per path.
INPUTS = {"standard": ("logits",), "lean": ("hidden", "weight")}

Perturb = Callable[[str, str, torch.Tensor], None]


def _signs(width: int) -> torch.Tensor:
    """``[2, width]`` fixed +-1 (CPU generator with a fixed seed: the same on every machine)."""
    gen = torch.Generator().manual_seed(SIGN_SEED)
    return (torch.randint(0, 2, (2, width), generator=gen, dtype=torch.int64) * 2 - 1).to(torch.float64)


def gradient_rows(grad: torch.Tensor) -> List[List[float]]:
    """``grad`` ``[R, D]`` (rows, values) -> per row ``[L1 norm, sum(s1 * row), sum(s2 * row)]``.

    The products with +-1 are exact and ``math.fsum`` rounds each sum once, so the numbers depend only on
    ``grad``, not on the machine that sums them.
    """
    g = grad.detach().to(torch.float64).cpu()
    signed = (g[:, None, :] * _signs(g.shape[1])[None]).tolist()  # [R, 2, D], exact
    return [[math.fsum(abs(v) for v in row)] + [math.fsum(s) for s in sv] for row, sv in zip(g.tolist(), signed)]


def _named(o) -> Dict[str, float]:
    return dict(zip(METRIC_NAMES, o.metric_sums.tolist()))


def compute(perturb: Optional[Perturb] = None, paths=tuple(INPUTS)) -> dict:
    """Case name -> path -> ``{loss, metric_sums: {name: sum}, grad: {input: gradient_rows}}`` on the current
    code, for the given ``paths`` ("standard", "lean"). ``perturb(case, input_name, tensor)``, if given, may
    change an input in place (under ``no_grad``) before the loss is computed: the tests use it to check that
    the comparison sees a small change."""
    labels, boxes = two_rows()
    out = {}
    for name, (group, overrides) in CASES.items():
        cfg = LossConfig(**{**LossConfig.preset(group).to_dict(), **overrides})
        logits = make_logits(2, labels.shape[1], seed=5, dtype=torch.float64, boxes=[(b, p) for b, p, _ in boxes])
        gen = torch.Generator().manual_seed(6)
        hidden = torch.randn(2, labels.shape[1], HIDDEN, generator=gen, dtype=torch.float64, requires_grad=True)
        weight = (0.3 * torch.randn(V, HIDDEN, generator=gen, dtype=torch.float64)).requires_grad_(True)
        if perturb is not None:
            with torch.no_grad():
                for input_name, t in (("logits", logits), ("hidden", hidden), ("weight", weight)):
                    perturb(name, input_name, t)
        res = out[name] = {}
        if "standard" in paths:
            o = compute_loss(logits, labels, VOCAB, cfg, num_items_in_batch=torch.tensor(40))
            g, = torch.autograd.grad(o.loss, logits)
            res["standard"] = {"loss": o.loss.item(), "metric_sums": _named(o),
                               "grad": {"logits": gradient_rows(g.reshape(-1, g.shape[-1]))}}
        if "lean" in paths:
            o = compute_loss_from_hidden(hidden, weight, labels, VOCAB, cfg, num_items_in_batch=torch.tensor(40),
                                         chunk_rows=16)
            gh, gw = torch.autograd.grad(o.loss, (hidden, weight))
            res["lean"] = {"loss": o.loss.item(), "metric_sums": _named(o),
                           "grad": {"hidden": gradient_rows(gh.reshape(-1, gh.shape[-1])),
                                    "weight": gradient_rows(gw.t())}}
    return out


def _off(got: float, want: float, scale: float, rtol: float) -> bool:
    return not abs(got - want) <= rtol * abs(scale)  # also true for NaN


def compare(got: dict, recorded: dict, rtol: float = RTOL) -> List[str]:
    """Every recorded number ``got`` misses by more than ``rtol``, as ``"case/path quantity: got vs recorded"``
    lines (empty: all within tolerance), for the paths ``got`` holds. Loss and metric sums: relative to the
    recorded value (a recorded 0 must be 0). Gradients: see the module docstring. Raises ``KeyError`` if
    ``got`` lacks a recorded case, metric or gradient."""
    bad = []
    for case, paths in recorded.items():
        for path, rec in paths.items():
            if path not in got[case]:
                continue
            now, where = got[case][path], f"{case}/{path}"
            if _off(now["loss"], rec["loss"], rec["loss"], rtol):
                bad.append(f"{where} loss: {now['loss']!r} vs {rec['loss']!r}")
            for name, value in rec["metric_sums"].items():
                if _off(now["metric_sums"][name], value, value, rtol):
                    bad.append(f"{where} metric_sums.{name}: {now['metric_sums'][name]!r} vs {value!r}")
            for inp, rows in rec["grad"].items():
                now_rows = now["grad"][inp]
                if len(now_rows) != len(rows):
                    bad.append(f"{where} grad.{inp}: {len(now_rows)} rows vs {len(rows)}")
                    continue
                for r, (a, b) in enumerate(zip(now_rows, rows)):
                    if _off(a[0], b[0], b[0], rtol) or any(_off(x, y, b[0], rtol) for x, y in zip(a[1:], b[1:])):
                        bad.append(f"{where} grad.{inp} row {r}: {a} vs {b}")
    return bad


def dumps(values: dict) -> str:
    """JSON with one gradient row per line."""
    text = json.dumps(values, indent=1)
    return re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + ", ".join(re.split(r",\s+", m.group(1))) + "]", text)


if __name__ == "__main__":
    values = compute()
    if "--write" in sys.argv:
        PATH.parent.mkdir(parents=True, exist_ok=True)
        PATH.write_text(dumps(values) + "\n")
    else:
        print(dumps(values))
