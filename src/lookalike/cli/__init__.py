"""The ``lookalike`` command line: the Typer app and its entry point (:mod:`.application`).

``app`` and ``main`` are loaded on first use, so a capability's command module can import
:mod:`lookalike.cli.common` without loading the app that registers it.

Example:
    >>> from lookalike.cli import app  # doctest: +SKIP
"""

from __future__ import annotations

import importlib

__all__ = ["app", "main"]


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module("lookalike.cli.application"), name)
    raise AttributeError(f"module 'lookalike.cli' has no attribute {name!r}")
