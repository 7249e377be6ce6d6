"""Entry for ``swift ... --external_plugins <path of this file>``.

ms-swift imports this file under a synthetic module name (relative imports fail, and a second import
of the package under its real name must not register twice), so it only imports the installed package
and calls its idempotent ``register()``.
"""
from swift_coord_plugin.swift_ext.register import register

register()
