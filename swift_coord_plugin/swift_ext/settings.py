"""The plugin's settings checked at start-up, before the model loads.

The settings are environment keys: ``COORDEXP_*`` (the loss, ``core.loss_config.LossConfig``) and ``COORD_ORDER`` /
``COORD_ORDER_SEED`` (the object order, ``core.codec``). They arrive in one of four ways; when a key is given
more than once, the later step of a run's start wins:

1. a YAML configuration's ``ENV:`` block (``swift sft config.yaml``): exported by the ``swift`` command only
   for keys *not already set*;
2. the shell's environment (including what a launch script such as ``shell/train.sh`` exports): beats the
   YAML (ms-swift warns "already set in environment");
3. ``--model_kwargs '{"KEY": value}'``: exported during argument post-init, over both of the above.

``check_at_plugin_import`` runs when ms-swift imports the plugin (inside the arguments' post-init, just before
``--model_kwargs`` are exported): it validates the environment as it will be once those are exported, and, when
``--loss_type`` is one of the plugin's, the whole loss configuration of that group, so a misspelt key or a
contradiction stops the run in seconds; ``check_swift_options`` refuses there, too, the ms-swift options that
a plugin loss type would silently replace (``REPLACED_SWIFT_OPTIONS``). The loss class checks both again when the
trainer builds it (the one authoritative check, which also covers a run started in-process without argument
parsing).
"""
from __future__ import annotations

import sys
from typing import Dict, Mapping, Optional

from .. import environment
from ..environment import order_policy_setting, order_seed_setting
from ..core import codec, input_noise
from ..core.loss_config import ENV_PREFIX, GROUP_OF_LOSS_TYPE, LossConfig, LossConfigError

# --loss_type -> loss group (``core.loss_config.LOSS_TYPES``, read without an ms-swift import).
LOSS_GROUPS = GROUP_OF_LOSS_TYPE


class SettingsError(ValueError):
    """A plugin setting is unknown, unparsable or contradictory; the message names the key(s)."""


# ms-swift 4.6 options that act inside ms-swift's own loss (``Seq2SeqTrainer.compute_loss``,
# ``trainers.utils.per_token_loss_func``, transformers' label smoother). With a plugin ``--loss_type`` ms-swift
# calls the plugin's loss instead (``compute_loss_func``), so each of these would do nothing, or measure a loss
# that is not trained. (name, is it on, what it would have done). ``--loss_scale`` is not here: the plugin's
# loss applies ms-swift's per-token ``loss_scale`` itself (``s_t`` in docs/losses.md).
REPLACED_SWIFT_OPTIONS = (
    ("enable_dft_loss", lambda v: bool(v),
     "DFT re-weights ms-swift's per-token cross-entropy by the target probability; ms-swift computes it (a "
     "full-vocabulary pass) and then discards it for the plugin's loss"),
    ("label_smoothing_factor", lambda v: bool(v),
     "transformers' label smoother replaces ms-swift's cross-entropy only when no loss_type is set"),
    ("enable_channel_loss", lambda v: bool(v),
     "the per-channel losses ms-swift logs are its own cross-entropy, not the loss the plugin trains"),
    ("use_liger_kernel", lambda v: bool(v),
     "Liger's fused cross-entropy returns no logits, and ms-swift skips it for a custom loss"),
    ("sequence_parallel_size", lambda v: int(v or 1) > 1,
     "ms-swift pre-shifts and shards the labels, so the plugin cannot find the object spans"),
)


def replaced_swift_options(args) -> list:
    """``REPLACED_SWIFT_OPTIONS`` that are on in ``args`` (ms-swift's arguments, or the trainer's training
    arguments), as ``--name value: why`` strings; options ``args`` does not have count as off."""
    found = []
    for name, is_on, why in REPLACED_SWIFT_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and is_on(value):
            found.append(f"--{name} {value}: {why}")
    return found


def check_swift_options(args, loss_type: Optional[str]) -> None:
    """Refuse ms-swift options that a plugin ``loss_type`` would silently replace (``SettingsError`` listing
    every one that is on); nothing for another loss type."""
    if loss_type not in LOSS_GROUPS:
        return
    found = replaced_swift_options(args)
    if found:
        listed = "\n  ".join(found)
        raise SettingsError(
            f"swift-coord: --loss_type {loss_type} replaces ms-swift's own loss, so these options would do "
            f"nothing:\n  {listed}\nDrop them (or use ms-swift's --loss_type cross_entropy).")


def check_settings(environ: Optional[Mapping[str, str]] = None, loss_type: Optional[str] = None) -> Dict[str, str]:
    """Validate the plugin's keys in ``environ`` (default: the process environment, ``environment.current()``); returns the ones that are set.

    ``loss_type``: a plugin loss type checks the whole configuration of its group; anything else (another
    loss, or None as in ``swift infer``) checks each key and value on its own. Raises ``SettingsError``.
    """
    environ = environment.current(environ)
    try:
        LossConfig.check_env(environ, LOSS_GROUPS.get(loss_type or ""))
        order_policy_setting(environ)
        order_seed_setting(environ)
        input_noise.noise_settings(environ)
    except (LossConfigError, ValueError) as e:
        where = f" (--loss_type {loss_type})" if loss_type in LOSS_GROUPS else ""
        raise SettingsError(f"swift-coord settings{where}: {e}") from None
    return {k: v for k, v in environ.items()
            if k.startswith(ENV_PREFIX) or k in (codec.ORDER_ENV, codec.ORDER_SEED_ENV, input_noise.BINS_ENV,
                                                 input_noise.PROB_ENV)}


def arguments_being_built():
    """The ms-swift arguments object whose post-init is importing the plugin, or None.

    ms-swift 4.6 imports ``--external_plugins`` from ``BaseArguments.__post_init__`` (``_import_external_plugins``)
    and exports ``--model_kwargs`` right after; that object is on the call stack. Nothing else gives a plugin
    the arguments at that point (the extension point ms-swift lacks: a hook after argument post-init).
    """
    try:
        from swift.arguments import BaseArguments
    except ImportError:  # pragma: no cover
        return None
    frame = sys._getframe(1)
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, BaseArguments):
            return obj
        frame = frame.f_back
    return None


def check_at_plugin_import() -> None:
    """The start-up check (see the module docstring); a no-op when no ms-swift arguments are being built."""
    args = arguments_being_built()
    if args is None:
        return
    environ = dict(environment.current())
    model_kwargs = getattr(args, "model_kwargs", None)
    if model_kwargs:
        from swift.utils import json_parse_to_dict

        # What BaseArguments._init_model_kwargs is about to export (upper-cased keys, str values).
        environ.update({str(k).upper(): str(v) for k, v in json_parse_to_dict(model_kwargs).items()})
    check_settings(environ, getattr(args, "loss_type", None))
    check_swift_options(args, getattr(args, "loss_type", None))
