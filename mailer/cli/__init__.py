"""The ``mailer`` command.

Each module in this package adds its own commands or groups to :data:`main` (see
:mod:`mailer.cli.base`); they are discovered here, so a new capability adds a module
and touches nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from mailer.cli.base import main

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod != "base" and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["main"]
