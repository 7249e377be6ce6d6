"""Placeholder: the loss types are registered here."""


def register() -> None:
    return None
