"""The one place where the plugin registers itself with ms-swift. Idempotent."""
from __future__ import annotations

import atexit
import time

import torch.distributed as dist

from .dataset_args import check_current_arguments
from .settings import check_at_plugin_import

_REGISTERED = False


# How long the main thread gives up the GIL at exit (seconds); see ``let_comm_threads_finish``.
EXIT_GRACE_S = 0.1


def let_comm_threads_finish() -> None:
    """At exit of a multi-process run, give the collective-communication threads the GIL for a moment.

    After a synchronous collective returns, the backend's worker thread still drops its reference to
    the work's tensors, and dropping a tensor that Python has seen takes the GIL. When that happens
    while the interpreter is finalising (the last metric all-reduce of a run is milliseconds before
    exit), the thread is cancelled inside a C++ destructor and the process aborts ("terminate called
    without an active exception", SIGABRT) after the checkpoint was written; the launcher then reports
    the whole run as failed. ``swift sft`` does not destroy the process group, and destroying it would
    not join those threads while the DDP-wrapped model still holds the group (and could block a rank
    that exits on an error while its peers wait in a collective), so the handler only sleeps: the
    threads need the GIL for microseconds.
    """
    if dist.is_available() and dist.is_initialized():
        time.sleep(EXIT_GRACE_S)


def register() -> None:
    """Register the model type, template, dataset preprocessor and losses (safe to call twice).

    Every call made while ms-swift builds its arguments (the plugin import) also checks the plugin's settings
    (``settings.check_at_plugin_import``) and the dataset arguments (``dataset_args``), before anything is loaded.
    """
    global _REGISTERED
    check_at_plugin_import()
    check_current_arguments()
    if _REGISTERED:
        return
    # The modules that import ms-swift at their top: loaded here, when ms-swift imports the plugin, never earlier.
    from . import loss, swift_dataset, swift_model, swift_template

    swift_model.register()
    swift_template.register()
    swift_dataset.register()
    loss.register()
    # Registered at plugin import, so it runs after the handlers that ms-swift, DeepSpeed and torch
    # register later (atexit runs last-in first-out).
    atexit.register(let_comm_threads_finish)
    _REGISTERED = True
