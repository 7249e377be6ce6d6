"""The one place where the plugin registers itself with ms-swift. Idempotent."""
from __future__ import annotations

_REGISTERED = False


def register() -> None:
    """Register the model type, template, dataset preprocessor and losses (safe to call twice)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from . import dataset, loss, model, template

    model.register()
    template.register()
    dataset.register()
    loss.register()
    _REGISTERED = True
