"""``--loss_type coordexp_ce | coordexp_geom | coordexp_hybrid``: groups A, B and C as ms-swift losses.

Each class is a preset of one loss (``core.losses.compute_loss``); every flag can be overridden
with ``COORDEXP_*`` environment keys, read here through ``environment.current()`` (``--model_kwargs
'{"COORDEXP_LAMBDA_COORD": 0.5}'`` or a YAML ``ENV:`` block). The configuration is validated when ms-swift
imports the plugin (``settings.py``, before the model loads) and again when the trainer builds the loss,
written to ``<output_dir>/coordexp_config.json`` and printed once.

The components (``core.loss_metrics.METRICS``, each a ``name -> (sum, count)`` entry) are accumulated on
the device without a host sync per step and handed to ms-swift's ``trainer.custom_metrics``, which averages
them over the logging interval and writes them to the console, ``logging.jsonl``, tensorboard and
``images/`` (eval ones prefixed ``eval_``); one all-reduce and one host sync per logging event for all of them.

``COORDEXP_LEAN=1`` (``LossConfig.lean``) computes the same loss from the final hidden states and the LM
head instead of the logits (``lean.py``); ms-swift's ``token_acc`` is then computed here, from the argmax
the lean pass returns, since the trainer has no logits to take it from.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from swift.loss import loss_map
from swift.loss.base import BaseLoss
from swift.metrics import compute_acc
from swift.metrics.utils import Metric
from swift.utils import get_logger

from .. import environment
from ..environment import order_policy_setting, order_seed_setting
from ..core import codec
from ..core.loss_config import LOSS_TYPES, LossConfig, env_key
from ..core.loss_metrics import METRICS, Metrics, logged_metric_names, stack_metrics
from ..core.losses import compute_loss, compute_loss_from_hidden
from ..core.vocab import CoordVocab
from ..core.yardsticks import YARDSTICKS, yardstick_metrics
from ..provenance import write_env_settings
from . import lean as lean_path
from .settings import check_swift_options

logger = get_logger()

CONFIG_FILE = "coordexp_config.json"


class _MetricPool:
    """Sums and counts of some components of one mode (train or eval), kept on the device.

    ``add`` packs a batch's ``name -> (sum, count)`` entries (``core.loss_metrics.stack_metrics``) and adds
    them in place (no sync). The first ``value`` read of a logging event all-reduces the whole vector once
    and caches it for the other components of that event.
    """

    def __init__(self, names: List[str], kinds: List[str], device_fn):
        self.names, self.kinds = names, kinds
        self._device_fn = device_fn
        self._sums: Optional[torch.Tensor] = None
        self._counts: Optional[torch.Tensor] = None
        self._snapshot: Optional[Dict[str, Optional[float]]] = None
        self._pending: set = set()

    def add(self, metrics: Metrics) -> None:
        sums, counts = stack_metrics(metrics, self.names)
        if self._sums is None:
            self._sums, self._counts = sums.clone(), counts.clone()
        else:
            self._sums += sums
            self._counts += counts

    def value(self, name: str) -> Optional[float]:
        if self._snapshot is None:
            k = len(self.names)
            if self._sums is None:
                packed = torch.zeros(2 * k, dtype=torch.float64, device=self._device_fn())
            else:
                packed = torch.cat([self._sums, self._counts])
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(packed, op=dist.ReduceOp.SUM)
            flat = packed.tolist()
            sums, counts = flat[:k], flat[k:]
            self._snapshot = {}
            for n, kind, s, c in zip(self.names, self.kinds, sums, counts):
                # No data in the interval (e.g. no box): no value, so ms-swift drops the key from this log.
                self._snapshot[n] = (s if kind == "sum" else s / c) if c > 0 else None
            self._pending = set(self.names)
            self._sums = self._counts = None
        value = self._snapshot[name]
        self._pending.discard(name)
        if not self._pending:
            self._snapshot = None
        return value


class _PoolMetric(Metric):
    """One component as ms-swift's ``custom_metrics`` sees it (``compute`` then ``reset`` at each log)."""

    def __init__(self, pool: _MetricPool, name: str):
        super().__init__()
        self.pool, self.name = pool, name

    def update(self, *args, **kwargs):
        raise RuntimeError(f"the {self.name} metric is fed by the coordexp loss, not through update()")

    def compute(self):
        return {"value": self.pool.value(self.name)}

    def reset(self):
        pass  # the pool resets itself when the whole snapshot has been read


class CoordExpLoss(BaseLoss):
    """Base of the three registered presets; ``group`` selects the preset."""

    group = "A"
    loss_type = LOSS_TYPES["A"]
    # The coordinate vocabulary; looked up from the trainer's template on the first call unless set (e.g. to
    # use the loss outside a trainer).
    vocab: Optional[CoordVocab] = None

    def __init__(self, args, trainer):
        super().__init__(args, trainer)
        if self.is_megatron:
            raise ValueError(f"--loss_type {self.loss_type} is not supported by megatron sft, which ignores custom "
                             "causal-LM losses; use swift sft")
        # The trainer is half built here: its template and custom_metrics exist (ms-swift sets them before it
        # builds the loss), the model, accelerator and device placement are only read later, per call.
        sp = int(getattr(getattr(trainer, "template", None), "sequence_parallel_size", 1) or 1)
        if sp > 1:
            raise ValueError(f"--loss_type {self.loss_type} refuses sequence parallel (sequence_parallel_size={sp}): "
                             "ms-swift pre-shifts and shards the labels there, so object spans cannot be found; "
                             "use --sequence_parallel_size 1")
        check_swift_options(args, self.loss_type)  # options of ms-swift's own loss, which this one replaces
        self.config, self.overrides = LossConfig.from_env(self.group, environment.current())
        if self.config.lean:
            self._check_lean(args, trainer)
        self._pools: Dict[str, _MetricPool] = {}
        self._warned_acc = False
        self._lean_announced = False
        if trainer is not None and hasattr(trainer, "custom_metrics"):
            self._register_metrics(trainer)
        self._announce()

    # ------------------------------------------------------------------ set-up
    def describe(self) -> Dict[str, object]:
        return {
            "loss_type": self.loss_type,
            "group": self.group,
            "flags": self.config.to_dict(),
            "overrides": dict(sorted(self.overrides.items())),
            "env_keys": {name: env_key(name) for name in self.config.to_dict()},
            # The object order the targets were written in (core.order; COORD_ORDER, COORD_ORDER_SEED).
            "object_order": {"policy": order_policy_setting().name, "seed": order_seed_setting()},
            "normalisation": "sum over labelled targets / num_items_in_batch; each coordinate token carries its "
                             "box's geometric loss (a box weighs 4 tokens)",
            # The convention of lambda_coord (docs/losses.md, "Normalisation"): per coordinate token.
            "lambda_coord_per": "coordinate token: each box's G counts 4 times, so against a per-box sum "
                                "(lambda_box * sum_boxes G / num_items_in_batch) lambda_coord = lambda_box / 4",
        }

    def _announce(self) -> None:
        if self.args is None or int(getattr(self.args, "process_index", 0)) != 0:
            return
        info = self.describe()
        output_dir = getattr(self.args, "output_dir", None)
        if output_dir:
            os.makedirs(output_dir, exist_ok=True)
            with open(os.path.join(output_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)
            write_env_settings(output_dir)  # coord_env.json: settings args.json does not show
        logger.info(f"coordexp loss configuration: {json.dumps(info)}")

    def _register_metrics(self, trainer) -> None:
        # The components of the switches (gate, box-loss variant, soft CE, W1, order) only when they are on;
        # everything else for every group, so that the groups can be compared on the same curves.
        logged = set(logged_metric_names(self.config))
        names = [name for name, _ in METRICS if name in logged]
        kinds = [kind for name, kind in METRICS if name in logged]
        for mode in ("train", "eval"):
            pool = _MetricPool(names, kinds, lambda: trainer.args.device)
            self._pools[mode] = pool
            for name in names:
                trainer.custom_metrics[mode][name] = _PoolMetric(pool, name)
        # The common yardsticks (core.yardsticks), logged by every group the same way.
        self._yardstick_pools: Dict[str, _MetricPool] = {}
        for mode in ("train", "eval"):
            pool = _MetricPool([n for n, _ in YARDSTICKS], [k for _, k in YARDSTICKS], lambda: trainer.args.device)
            self._yardstick_pools[mode] = pool
            for name, _ in YARDSTICKS:
                trainer.custom_metrics[mode][name] = _PoolMetric(pool, name)

    def _check_lean(self, args, trainer) -> None:
        """Options under which ms-swift itself needs the logits the lean path does not produce (DFT and channel
        loss, which also do, are refused for every path by ``settings.check_swift_options``)."""
        needs_logits = []
        template = getattr(trainer, "template", None)
        if template is not None:
            binary = template.is_binary_loss_scale
            if binary is None:
                binary = template.loss_scale.is_binary_loss_scale
            if not binary:
                needs_logits.append(f"loss_scale={template._loss_scale!r} (not binary)")
        if needs_logits:
            raise lean_path.LeanPathError(
                f"{env_key('lean')}=1 (lean path) cannot run with {', '.join(needs_logits)}: ms-swift computes a "
                f"per-token loss from the logits for these, and the lean path produces none; "
                f"{lean_path.HOW_TO_LEAVE}")

    def _get_vocab(self, trainer) -> CoordVocab:
        if self.vocab is None:
            if trainer is None or getattr(trainer, "template", None) is None:
                raise ValueError(f"--loss_type {self.loss_type} needs the trainer's template to find the coordinate "
                                 "token ids (or set .vocab)")
            vocab = getattr(trainer.template, "coord_vocab", None)  # the plugin's template looked it up already
            self.vocab = vocab if vocab is not None else CoordVocab.from_tokenizer(trainer.template.tokenizer)
        return self.vocab

    # ------------------------------------------------------------------ the loss
    def __call__(self, outputs, labels, *, num_items_in_batch=None, loss_scale=None, trainer=None, **kwargs):
        trainer = trainer if trainer is not None else self.trainer
        if self.config.lean:
            out = self._lean_loss(outputs, labels, num_items_in_batch, loss_scale, trainer)
        else:
            logits = getattr(outputs, "logits", None)
            if logits is None:
                raise ValueError(f"--loss_type {self.loss_type} needs the model's logits, got none (a fused/Liger "
                                 "loss path does not produce them; drop --use_liger_kernel)")
            out = compute_loss(logits, labels, self._get_vocab(trainer), self.config,
                               num_items_in_batch=num_items_in_batch, loss_scale=loss_scale)
        if self._pools:
            mode = "train" if trainer.model.training else "eval"
            self._pools[mode].add(out.metrics)
            self._yardstick_pools[mode].add(yardstick_metrics(out.coord_logits, out.layout.coord_bins,
                                                              out.layout.box_coords))
        return out.loss

    def _lean_loss(self, outputs, labels, num_items_in_batch, loss_scale, trainer):
        lean = getattr(outputs, "coord_lean", None)
        if lean is None:
            raise lean_path.LeanPathError(
                f"{env_key('lean')}=1 but the model's outputs carry no hidden states for the lean path: it needs the "
                f"plugin's template (--template qwen3_vl_coord), whose forward provides them; "
                f"{lean_path.HOW_TO_LEAVE}")
        vocab = self._get_vocab(trainer)
        want_preds = trainer is not None and hasattr(trainer, "custom_metrics")
        result = {}

        def head_forward(weight, hidden):
            lean_path.check_gathered(weight, hidden)
            if not self._lean_announced:
                self._lean_announced = True
                zero3 = ", a DeepSpeed ZeRO-3 parameter gathered for the call" if hasattr(weight, "ds_id") else ""
                logger.info(f"coordexp lean path: loss from the hidden states and the LM head weight "
                            f"{tuple(weight.shape)} {weight.dtype}{zero3}; no [tokens, vocab] logits")
            out = compute_loss_from_hidden(hidden, weight, labels, vocab, self.config,
                                           num_items_in_batch=num_items_in_batch, loss_scale=loss_scale,
                                           mm_dtype=lean.mm_dtype, want_preds=want_preds)
            result["out"] = out
            return out.loss

        # The loss leaves the head module as its output: DeepSpeed ZeRO-3 re-gathers the head for its backward.
        loss = lean_path.run_as_forward(lean.linear, head_forward, lean.hidden)
        out = result["out"]
        out.loss = loss
        if want_preds and out.preds is not None:
            self._token_acc(trainer, out.preds, labels)
        return out

    def _token_acc(self, trainer, preds, labels) -> None:
        """ms-swift's ``token_acc`` (``Trainer._compute_acc``), which needs logits the lean path has not got."""
        args = trainer.args
        if trainer.template.padding_free and args.acc_strategy == "seq":
            if not self._warned_acc:
                logger.warning("lean path: seq_acc is not computed for padding-free batches")
                self._warned_acc = True
            return
        metrics = compute_acc(preds, labels, acc_strategy=args.acc_strategy,
                              is_encoder_decoder=trainer.template.is_encoder_decoder)
        mode = "train" if trainer.model.training else "eval"
        for k, v in metrics.items():
            trainer.custom_metrics[mode][k].update(v)


class CoordExpCELoss(CoordExpLoss):
    """Group A: cross-entropy on every token."""

    group = "A"
    loss_type = LOSS_TYPES["A"]


class CoordExpGeomLoss(CoordExpLoss):
    """Group B: CE on non-coordinate tokens; coordinates through the CoordExp geometric loss only."""

    group = "B"
    loss_type = LOSS_TYPES["B"]


class CoordExpHybridLoss(CoordExpLoss):
    """Group C: text CE + lambda_coord_ce * coordinate CE + lambda_coord * geometric loss."""

    group = "C"
    loss_type = LOSS_TYPES["C"]


LOSS_CLASSES = {cls.loss_type: cls for cls in (CoordExpCELoss, CoordExpGeomLoss, CoordExpHybridLoss)}


def register() -> None:
    """Add the three loss types to ``swift.loss.loss_map`` (idempotent: plain dict assignment)."""
    for name, cls in LOSS_CLASSES.items():
        loss_map[name] = cls
